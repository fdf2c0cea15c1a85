#!/usr/bin/env bash
# Offline checks of narun's systemd integration files (systemd need not be PID 1):
#
#   1. `systemd-analyze verify` of systemd/narund.service inside a throw-away root
#      that holds the host's unit directory, /bin/kill and a stub /usr/bin/narund
#      (verify insists that ExecStart=/ExecReload= binaries exist). verify exits 0 on
#      most parse errors ("Failed to parse ..., ignoring"), so ANY diagnostic line
#      fails the check, except "Unknown key" for the directives listed in
#      NEWER_THAN_LOCAL_SYSTEMD (valid on device systemd, unknown to older hosts).
#   2. The supervision contract: directives narund relies on have the values it
#      relies on (Type=notify, KillMode=process, Delegate=yes, ...).
#   3. CapabilityBoundingSet= equals the planned list (and each name is a capability
#      systemd knows); it must equal NARUND_CAPS in daemon/src/privileges.rs (narund's
#      own drop list) once that list exists.
#   4. sysusers.d and tmpfiles.d files applied to a throw-away root with
#      systemd-sysusers / systemd-tmpfiles: no diagnostics, expected user and dirs.
#
# Installs Debian's `systemd` package if systemd-analyze is missing.
# Exit status: 0 = all passed, 1 = at least one check failed.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
UNIT=systemd/narund.service
SYSUSERS=systemd/narun-sysusers.conf
TMPFILES=systemd/narun-tmpfiles.conf

# Directives newer than the systemd on the build host (Debian 12 has 252).
#   DelegateSubgroup= systemd 254
NEWER_THAN_LOCAL_SYSTEMD="DelegateSubgroup"

EXPECTED_CAPS="CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_ADMIN CAP_SYS_RESOURCE"

failures=0
ok() { printf '[check-systemd] ok: %s\n' "$*"; }
fail() { printf '[check-systemd] FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

if ! command -v systemd-analyze >/dev/null; then
    printf '[check-systemd] installing systemd (for systemd-analyze, systemd-sysusers, systemd-tmpfiles)\n'
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null ||
        { fail "could not install the systemd package"; exit 1; }
fi
printf '[check-systemd] %s\n' "$(systemd-analyze --version | head -n1)"

for f in "$UNIT" "$SYSUSERS" "$TMPFILES"; do
    [ -f "$f" ] || fail "$f is missing"
done
[ $failures -eq 0 ] || exit 1

ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT

# --- 1. systemd-analyze verify ----------------------------------------------------
mkdir -p "$ROOT/usr/bin" "$ROOT/usr/lib/systemd" "$ROOT/etc/systemd/system"
ln -s usr/bin "$ROOT/bin"
cp -a /usr/lib/systemd/system "$ROOT/usr/lib/systemd/" 2>/dev/null || cp -a /lib/systemd/system "$ROOT/usr/lib/systemd/"
# Every absolute binary the unit executes must exist in the root: stub the ones that are
# ours, fail on any other that is missing (it would be missing on the device too).
while read -r bin; do
    [ -e "$ROOT$bin" ] && continue
    case "$bin" in
        /usr/bin/narund | /usr/bin/narunctl)
            printf '#!/bin/sh\nexit 0\n' >"$ROOT$bin"
            chmod 0755 "$ROOT$bin"
            ;;
        *)
            if [ -x "$bin" ]; then
                mkdir -p "$(dirname "$ROOT$bin")" && cp "$bin" "$ROOT$bin"
            fi
            ;;
    esac
done < <(sed -n -E 's/^Exec[A-Za-z]+=[-@:+!]*(\/[^ ]+).*/\1/p' "$UNIT")
cp "$UNIT" "$ROOT/etc/systemd/system/narund.service"

verify_out=$(systemd-analyze verify --man=no --generators=no --root="$ROOT" narund.service 2>&1)
verify_rc=$?
unexpected=$(printf '%s\n' "$verify_out" | grep -v '^$' |
    grep -v -E "Unknown key( name)? '($(tr ' ' '|' <<<"$NEWER_THAN_LOCAL_SYSTEMD"))' in section \[Service\]" || true)
if [ $verify_rc -ne 0 ] || [ -n "$unexpected" ]; then
    fail "systemd-analyze verify (exit $verify_rc):"
    printf '    %s\n' "$verify_out" >&2
else
    ok "systemd-analyze verify $UNIT (tolerated newer keys: $NEWER_THAN_LOCAL_SYSTEMD)"
fi

# --- 2. supervision contract ------------------------------------------------------
# Last assignment wins in systemd; the unit should not assign these twice anyway.
value_of() { sed -n -E "s/^$1=(.*)$/\1/p" "$UNIT" | tail -n1; }
expect() {
    local key=$1 want=$2 got
    got=$(value_of "$key")
    if [ "$got" = "$want" ]; then
        ok "$key=$want"
    else
        fail "$key is '${got}', expected '$want'"
    fi
}
expect_set() {
    local key=$1 got
    got=$(value_of "$key")
    if [ -n "$got" ]; then ok "$key=$got"; else fail "$key= is not set"; fi
}
expect Type notify
expect NotifyAccess main
expect Delegate yes
expect DelegateSubgroup supervisor
expect KillMode process
expect Restart on-failure
expect ExecReload '/bin/kill -HUP $MAINPID'
expect StateDirectory narun
expect RuntimeDirectory narun
expect RuntimeDirectoryPreserve yes
# Soft 1024 (narund raises its own), hard 524288: the most apps may get (docs/supervisor.md).
expect LimitNOFILE 1024:524288
expect_set WatchdogSec
expect_set FileDescriptorStoreMax
expect_set ProtectSystem
expect_set ProtectHome
expect_set ReadWritePaths
if grep -q -E '^ReadWritePaths=(.*[ -])?/var/lib/narun/?( |$)' "$UNIT"; then
    ok "ReadWritePaths= includes /var/lib/narun"
else
    fail "ReadWritePaths= must include the data dir /var/lib/narun"
fi
if grep -q -E '^ExecStart=/usr/bin/narund( |$)' "$UNIT"; then
    ok "ExecStart= runs /usr/bin/narund"
else
    fail "ExecStart= must run /usr/bin/narund (the path Yocto and Buildroot install to)"
fi
# Settings that would break supervision or every app (see the comments in the unit).
for bad in ProtectControlGroups PrivateTmp ProtectKernelTunables NoNewPrivileges MemoryDenyWriteExecute; do
    v=$(value_of "$bad")
    case "$v" in
        "" | no | false | 0) ok "$bad not enabled" ;;
        *) fail "$bad=$v breaks supervision or the apps narund starts (see $UNIT)" ;;
    esac
done

# --- 3. capabilities --------------------------------------------------------------
sorted() { tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' '; }
unit_caps=$(value_of CapabilityBoundingSet | sorted)
want_caps=$(sorted <<<"$EXPECTED_CAPS")
if [ "$unit_caps" = "$want_caps" ]; then
    ok "CapabilityBoundingSet= is the planned set ($(wc -w <<<"$unit_caps") capabilities)"
else
    fail "CapabilityBoundingSet= is [$unit_caps], expected [$want_caps]"
fi
known_caps=$(systemd-analyze capability 2>/dev/null | awk '{print $1}' | grep '^cap_' | tr 'a-z' 'A-Z')
for c in $unit_caps; do
    grep -qx "$c" <<<"$known_caps" || fail "CapabilityBoundingSet= names $c, which systemd does not know"
done
# narund's own drop list: `pub const NARUND_CAPS: &[Capability] = &[Capability::CAP_..., ...];`
PRIV=daemon/src/privileges.rs
daemon_caps=""
if [ -f "$PRIV" ]; then
    daemon_caps=$(sed -n '/NARUND_CAPS: *&\[Capability\]/,/\];/p' "$PRIV" |
        grep -o -E 'Capability::CAP_[A-Z_]+' | sed 's/^Capability:://' | sorted)
fi
if [ -n "$daemon_caps" ]; then
    if [ "$daemon_caps" = "$unit_caps" ]; then
        ok "CapabilityBoundingSet= equals NARUND_CAPS in $PRIV"
    else
        fail "CapabilityBoundingSet= [$unit_caps] differs from NARUND_CAPS in $PRIV [$daemon_caps]; the two lists must be equal"
    fi
else
    printf '[check-systemd] note: no NARUND_CAPS list in %s yet; comparison with the unit skipped\n' "$PRIV"
fi

# narund must ping the watchdog, or systemd kills it WatchdogSec after READY=1.
if grep -rqs -E 'NotifyState::Watchdog|WATCHDOG=1' daemon/src; then
    ok "narund sends WATCHDOG=1 (WatchdogSec=$(value_of WatchdogSec))"
else
    printf '[check-systemd] WARNING: daemon/src never sends WATCHDOG=1, but the unit sets WatchdogSec=%s: systemd will abort and restart narund every %s until narund pings the watchdog (sd_notify::watchdog_enabled + NotifyState::Watchdog every WatchdogSec/2)\n' "$(value_of WatchdogSec)" "$(value_of WatchdogSec)"
fi

# --- 4. sysusers.d / tmpfiles.d ---------------------------------------------------
mkdir -p "$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d" "$ROOT/etc"
cp "$SYSUSERS" "$ROOT/usr/lib/sysusers.d/narun.conf"
cp "$TMPFILES" "$ROOT/usr/lib/tmpfiles.d/narun.conf"
su_out=$(systemd-sysusers --root="$ROOT" narun.conf 2>&1)
su_rc=$?
su_unexpected=$(printf '%s\n' "$su_out" | grep -v '^$' | grep -v -E '^Creating (group|user) ' || true)
if [ $su_rc -ne 0 ] || [ -n "$su_unexpected" ]; then
    fail "systemd-sysusers $SYSUSERS (exit $su_rc):"
    printf '    %s\n' "$su_out" >&2
elif ! grep -q '^narun-app:' "$ROOT/etc/passwd" || ! grep -q '^narun-app:' "$ROOT/etc/group"; then
    fail "systemd-sysusers did not create user and group narun-app"
else
    ok "systemd-sysusers creates $(grep '^narun-app:' "$ROOT/etc/passwd")"
fi
tf_out=$(systemd-tmpfiles --root="$ROOT" --create narun.conf 2>&1)
tf_rc=$?
if [ $tf_rc -ne 0 ] || [ -n "$tf_out" ]; then
    fail "systemd-tmpfiles --create $TMPFILES (exit $tf_rc):"
    printf '    %s\n' "$tf_out" >&2
else
    for d in /var/lib/narun /run/narun; do
        mode=$(stat -c '%a %U:%G' "$ROOT$d" 2>/dev/null)
        if [ "$mode" = "755 root:root" ]; then
            ok "systemd-tmpfiles creates $d ($mode)"
        else
            fail "systemd-tmpfiles: $d is '${mode:-missing}', expected '755 root:root'"
        fi
    done
fi

if [ $failures -ne 0 ]; then
    printf '[check-systemd] %d check(s) FAILED\n' "$failures" >&2
    exit 1
fi
printf '[check-systemd] all checks passed\n'
