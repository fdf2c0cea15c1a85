#!/usr/bin/env bash
# Offline checks of narun's systemd integration files (systemd need not be PID 1):
#
#   1. `systemd-analyze verify` of systemd/narund.service inside a throw-away root
#      that holds the host's unit directory, /bin/kill, /bin/sh and a stub /usr/bin/narund
#      (verify insists that Exec*= binaries exist), with a systemd-analyze >= 254 (the
#      unit uses Type=notify-reload, RestartSteps=, DelegateSubgroup=):
#      scripts/packaging/systemd-analyze.sh runs the host's if it is new enough, else an
#      unpacked copy of Debian 12's backport. verify exits 0 on most parse errors
#      ("Failed to parse ..., ignoring"), so ANY diagnostic line fails the check. Only if
#      no systemd >= 254 can be had (offline), the host's older one runs and diagnostics
#      about the directives in NEWER_THAN_LOCAL_SYSTEMD are tolerated, with a warning.
#   2. The supervision contract: directives narund relies on have the values it
#      relies on (Type=notify-reload, KillMode=process, Delegate=yes, Restart=always, no
#      network-online wait, ...), and the ExecStop= command, run against a stand-in for
#      narund with a stub `systemctl`: SIGUSR2 and a wait for the exit when the system is
#      shutting down, nothing otherwise.
#   3. CapabilityBoundingSet= equals the planned list (and each name is a capability
#      systemd knows); it must equal NARUND_CAPS in daemon/src/privileges/mod.rs (narund's
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

# Used only when no systemd-analyze >= 254 is available: diagnostics about these are then
# tolerated (valid on device systemd, unknown to older hosts).
#   Type=notify-reload systemd 253; DelegateSubgroup=, RestartSteps=, RestartMaxDelaySec= 254
NEWER_THAN_LOCAL_SYSTEMD="DelegateSubgroup RestartSteps RestartMaxDelaySec"
NEWER_TYPES="notify-reload"

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

SA=(bash scripts/packaging/systemd-analyze.sh)
tolerate='^$'
if ! sa_version=$("${SA[@]}" --version 2>/dev/null | head -n1); then
    printf '[check-systemd] WARNING: no systemd-analyze >= 254 (offline?); verifying with the host'"'"'s %s and tolerating diagnostics about %s and Type=%s\n' \
        "$(systemd-analyze --version | head -n1)" "$NEWER_THAN_LOCAL_SYSTEMD" "$NEWER_TYPES" >&2
    SA=(systemd-analyze)
    tolerate="Unknown key( name)? '($(tr ' ' '|' <<<"$NEWER_THAN_LOCAL_SYSTEMD"))' in section \[Service\]|Failed to parse service type, ignoring: ($(tr ' ' '|' <<<"$NEWER_TYPES"))\$"
    sa_version="$(systemd-analyze --version | head -n1) (with tolerances)"
fi
verify_out=$("${SA[@]}" verify --man=no --generators=no --root="$ROOT" narund.service 2>&1)
verify_rc=$?
unexpected=$(printf '%s\n' "$verify_out" | grep -v '^$' | grep -v -E "$tolerate" || true)
if [ $verify_rc -ne 0 ] || [ -n "$unexpected" ]; then
    fail "systemd-analyze verify (exit $verify_rc, $sa_version):"
    printf '    %s\n' "$verify_out" >&2
else
    ok "systemd-analyze verify $UNIT: no diagnostics ($sa_version)"
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
expect Type notify-reload
expect NotifyAccess main
expect Delegate yes
expect DelegateSubgroup supervisor
expect KillMode process
# Never dead on a device: restart whatever the exit, never hit a start limit.
expect Restart always
expect StartLimitIntervalSec 0
expect_set RestartSec
expect_set RestartMaxDelaySec
# notify-reload sends SIGHUP itself; an ExecReload= would be run as well (two reloads).
if grep -q -E '^ExecReload=' "$UNIT"; then
    fail "ExecReload= is set: with Type=notify-reload systemd also sends SIGHUP (a double reload)"
else
    ok "no ExecReload= (Type=notify-reload signals narund itself)"
fi
# narund works offline: no wait for network-online.target at boot.
if grep -E '^(After|Wants|Requires)=' "$UNIT" | grep -q 'network-online'; then
    fail "the unit waits for network-online.target, but narund works offline"
else
    ok "no network-online.target dependency ($(value_of After))"
fi
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

# ExecStop=: stops the apps (SIGUSR2, then waits for narund) only while the system shuts
# down. Run the command as systemd would ($$ -> $, $MAINPID in the environment) against a
# stand-in for narund, with a stub systemctl that reports the system state.
execstop=$(value_of ExecStop)
script=$(sed -n -E "s|^/bin/sh -c '(.*)'\$|\1|p" <<<"$execstop" | sed 's/\$\$/$/g')
if [ -z "$script" ]; then
    fail "ExecStop= is not a /bin/sh -c '...' command: '$execstop'"
else
    mkdir -p "$ROOT/stub"
    printf '#!/bin/sh\n[ "$1" = is-system-running ] && echo "$SYSTEM_STATE"\n' >"$ROOT/stub/systemctl"
    chmod 0755 "$ROOT/stub/systemctl"
    run_execstop() { # <system state> <MAINPID>: the command's exit status (124: hung)
        SYSTEM_STATE=$1 MAINPID=$2 PATH="$ROOT/stub:$PATH" timeout 10 /bin/sh -c "$script"
    }
    standin() { # a "narund" that records SIGUSR2 in $1 and then exits
        # shellcheck disable=SC2016
        sh -c 'trap "echo usr2 >$0; sleep 0.3; exit 0" USR2; while :; do sleep 0.05; done' "$1" </dev/null >/dev/null 2>&1 &
        echo $!
    }
    pid=$(standin "$ROOT/usr2-a")
    sleep 0.2
    t0=$(date +%s%N)
    run_execstop stopping "$pid"
    rc=$?
    waited=$((($(date +%s%N) - t0) / 1000000))
    if [ $rc -eq 0 ] && [ -s "$ROOT/usr2-a" ] && ! kill -0 "$pid" 2>/dev/null && [ $waited -ge 250 ]; then
        ok "ExecStop= at system shutdown: SIGUSR2 to narund, returns after it exited (${waited} ms)"
    else
        fail "ExecStop= at system shutdown: exit $rc, SIGUSR2 $([ -s "$ROOT/usr2-a" ] && echo sent || echo 'NOT sent'), returned after ${waited} ms (narund took 300 ms to exit)"
    fi
    kill "$pid" 2>/dev/null
    for state in running degraded starting maintenance; do
        pid=$(standin "$ROOT/usr2-b")
        sleep 0.1
        run_execstop "$state" "$pid"
        rc=$?
        if [ $rc -eq 0 ] && [ ! -e "$ROOT/usr2-b" ] && kill -0 "$pid" 2>/dev/null; then
            ok "ExecStop= while the system is $state (stop/restart): no signal, narund left to SIGTERM"
        else
            fail "ExecStop= while the system is $state: exit $rc, SIGUSR2 $([ -e "$ROOT/usr2-b" ] && echo sent || echo 'not sent')"
        fi
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if run_execstop stopping ""; then
        ok "ExecStop= with narund already dead (empty MAINPID): exits 0"
    else
        fail "ExecStop= with an empty MAINPID fails"
    fi
fi

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
PRIV=daemon/src/privileges/mod.rs
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
