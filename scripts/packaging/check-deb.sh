#!/usr/bin/env bash
# Builds the Debian packages narund and narunctl with cargo-deb (metadata:
# [package.metadata.deb] in daemon/Cargo.toml and narunctl/Cargo.toml; maintainer scripts
# in daemon/debian/) and checks them:
#   * control fields (name, architecture, Depends from the binary's libraries), conffiles
#     (/etc/narun/narund.toml), every file at its path with its mode; the unit, config,
#     sysusers and tmpfiles files are byte-equal to the repository's;
#   * the packaged binaries run (`--version`);
#   * narund's maintainer scripts, run as dpkg would (`configure`, `remove`, `purge`) on
#     the unpacked package in a throw-away root (DPKG_ROOT) with stub deb-systemd-helper/
#     deb-systemd-invoke/systemctl that log their calls: the user narun-app and the
#     directories are created, the unit is enabled, the drop-in for systemd < 253 is
#     written only there and removed on purge;
#   * lintian, when installed (not installed by setup.sh: its findings are printed, not
#     fatal).
#
# Cost: the packages wrap the debug builds the test suite already made (cargo build -p
# narund -p narunctl; `--profile dev`, not stripped: this checks the packaging, not the
# binaries; cargo-deb warns that it prefers release builds). `NARUN_DEB_PROFILE=release`
# packages release builds instead (LTO: minutes). cargo-deb itself is built once by
# scripts/setup.sh (`cargo install cargo-deb --locked`, ~13 min on the 2-core project
# machine, then cached in ~/.cargo/bin); without it this check is skipped (exit 0, says so).
#
# Exit status: 0 = passed or skipped, 1 = a check failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

failures=0
ok() { printf '[check-deb] ok: %s\n' "$*"; }
fail() { printf '[check-deb] FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

CARGO_DEB=$(command -v cargo-deb || true)
[ -z "$CARGO_DEB" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ] && CARGO_DEB="${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb"
if [ -z "$CARGO_DEB" ]; then
    printf '[check-deb] SKIPPED: cargo-deb is not installed (scripts/setup.sh installs it: cargo install cargo-deb --locked)\n'
    exit 0
fi
printf '[check-deb] %s\n' "$("$CARGO_DEB" --version)"

PROFILE=${NARUN_DEB_PROFILE:-dev}
deb_args=(--no-build --fast --profile "$PROFILE")
if [ "$PROFILE" = dev ]; then
    cargo build -q -p narund -p narunctl || { fail "cargo build -p narund -p narunctl"; exit 1; }
    deb_args+=(--no-strip)
else
    cargo build -q --profile "$PROFILE" -p narund -p narunctl || { fail "cargo build --profile $PROFILE"; exit 1; }
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for pkg in narund narunctl; do
    if ! "$CARGO_DEB" -q -p "$pkg" "${deb_args[@]}" -o "$WORK/$pkg.deb" 2>"$WORK/$pkg.err"; then
        fail "cargo deb -p $pkg:"
        sed 's/^/    /' "$WORK/$pkg.err" >&2
    fi
done
[ $failures -eq 0 ] || exit 1

# --- control and contents -------------------------------------------------------------
field() { dpkg-deb -f "$WORK/$1.deb" "$2"; }
arch=$(dpkg --print-architecture)
for pkg in narund narunctl; do
    [ "$(field "$pkg" Package)" = "$pkg" ] && [ "$(field "$pkg" Architecture)" = "$arch" ] &&
        grep -q 'libc6' <<<"$(field "$pkg" Depends)" &&
        ok "$pkg: Package, Architecture $arch, Depends: $(field "$pkg" Depends)" ||
        fail "$pkg control: $(dpkg-deb -f "$WORK/$pkg.deb")"
done
[ "$(field narund Version)" = "$(field narunctl Version)" ] || fail "narund and narunctl versions differ"

# mode path, one per line
expect_files() {
    local pkg=$1
    shift
    local listing
    listing=$(dpkg-deb -c "$WORK/$pkg.deb" | awk '{print $1, $6}')
    for want in "$@"; do
        if grep -qx -- "${want% *} ./${want#* }" <<<"$listing"; then
            ok "$pkg contains ${want#* } (${want% *})"
        else
            fail "$pkg lacks ${want#* } with mode ${want% *}; it has: $(grep -F "${want#* }" <<<"$listing" || echo nothing)"
        fi
    done
}
expect_files narund \
    "-rwxr-xr-x usr/bin/narund" \
    "-rw-r--r-- etc/narun/narund.toml" \
    "-rw-r--r-- usr/lib/systemd/system/narund.service" \
    "-rw-r--r-- usr/lib/sysusers.d/narun.conf" \
    "-rw-r--r-- usr/lib/tmpfiles.d/narun.conf" \
    "-rw-r--r-- usr/share/doc/narund/copyright"
expect_files narunctl "-rwxr-xr-x usr/bin/narunctl"

ROOT=$WORK/root
mkdir -p "$ROOT"
dpkg-deb -x "$WORK/narund.deb" "$ROOT"
dpkg-deb -x "$WORK/narunctl.deb" "$ROOT"
for pair in "systemd/narund.service usr/lib/systemd/system/narund.service" \
    "daemon/config/narund.toml etc/narun/narund.toml" \
    "systemd/narun-sysusers.conf usr/lib/sysusers.d/narun.conf" \
    "systemd/narun-tmpfiles.conf usr/lib/tmpfiles.d/narun.conf"; do
    src=${pair% *} dst=${pair#* }
    cmp -s "$src" "$ROOT/$dst" && ok "/$dst is $src" || fail "/$dst differs from $src"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$WORK/narund.deb" | tar -xO ./conffiles 2>/dev/null)
[ "$conffiles" = "/etc/narun/narund.toml" ] && ok "conffiles: $conffiles" ||
    fail "conffiles is '$conffiles', expected /etc/narun/narund.toml"
for bin in narund narunctl; do
    v=$("$ROOT/usr/bin/$bin" --version 2>&1) && ok "packaged $bin runs: $v" || fail "packaged $bin --version: $v"
done

# --- maintainer scripts -----------------------------------------------------------------
CTRL=$WORK/ctrl
mkdir -p "$CTRL"
dpkg-deb --ctrl-tarfile "$WORK/narund.deb" | tar -x -C "$CTRL"
for s in postinst prerm postrm; do
    if [ -x "$CTRL/$s" ] && sh -n "$CTRL/$s"; then ok "$s: executable, valid sh"; else fail "$s missing, not executable or not valid sh"; fi
done
STUB=$WORK/stub
mkdir -p "$STUB"
for tool in deb-systemd-helper deb-systemd-invoke; do
    printf '#!/bin/sh\necho "%s $*" >>"%s/calls"\nexit 0\n' "$tool" "$WORK" >"$STUB/$tool"
done
# `systemctl --version` answers $SYSTEMD_VERSION; everything else is logged.
printf '#!/bin/sh\n[ "$1" = --version ] && { echo "systemd $SYSTEMD_VERSION (stub)"; exit 0; }\necho "systemctl $*" >>"%s/calls"\n' "$WORK" >"$STUB/systemctl"
chmod 0755 "$STUB"/*
maint() { # <systemd version> <script> <args...>
    local v=$1 s=$2
    shift 2
    DPKG_ROOT=$ROOT SYSTEMD_VERSION=$v PATH="$STUB:$PATH" sh "$CTRL/$s" "$@"
}
DROPIN=$ROOT/etc/systemd/system/narund.service.d/10-systemd-before-253.conf
mkdir -p "$ROOT/etc"
: >"$WORK/calls"
if maint 252 postinst configure ""; then
    grep -q '^narun-app:' "$ROOT/etc/passwd" 2>/dev/null && ok "postinst: user narun-app created" ||
        fail "postinst did not create narun-app in DPKG_ROOT/etc/passwd"
    [ -d "$ROOT/var/lib/narun" ] && ok "postinst: /var/lib/narun created" || fail "postinst did not create /var/lib/narun"
    grep -q '^deb-systemd-helper enable narund.service' "$WORK/calls" && ok "postinst: narund.service enabled on first install" ||
        fail "postinst did not enable narund.service: $(cat "$WORK/calls")"
    grep -q '^Type=notify$' "$DROPIN" 2>/dev/null && grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$DROPIN" &&
        ok "postinst on systemd 252: drop-in with Type=notify + ExecReload" ||
        fail "postinst on systemd 252 wrote no valid drop-in at ${DROPIN#"$ROOT"}"
else
    fail "postinst configure exited non-zero"
fi
rm -f "$DROPIN"
maint 257 postinst configure "0.0.9" || fail "postinst configure (upgrade) exited non-zero"
[ ! -e "$DROPIN" ] && ok "postinst on systemd 257: no drop-in" || fail "postinst wrote the drop-in on systemd 257"
maint 252 postinst configure "" >/dev/null
maint 252 prerm remove || fail "prerm remove exited non-zero"
maint 252 postrm purge || fail "postrm purge exited non-zero"
[ ! -e "$DROPIN" ] && ok "postrm purge: drop-in removed" || fail "postrm purge left ${DROPIN#"$ROOT"}"
grep -q '^deb-systemd-helper purge narund.service' "$WORK/calls" && ok "postrm purge: systemd state purged" ||
    fail "postrm purge did not purge narund.service's state"

# --- lintian (optional) -----------------------------------------------------------------
if command -v lintian >/dev/null; then
    printf '[check-deb] lintian (informational):\n'
    lintian --no-tag-display-limit "$WORK/narund.deb" "$WORK/narunctl.deb" | sed 's/^/    /'
else
    printf '[check-deb] note: lintian not installed; skipped\n'
fi

if [ $failures -ne 0 ]; then
    printf '[check-deb] %d check(s) FAILED\n' "$failures" >&2
    exit 1
fi
printf '[check-deb] all checks passed\n'
