#!/usr/bin/env bash
# Checks of the Buildroot br2-external tree buildroot-external/ that run without a
# Buildroot checkout:
#
#   1. file layout and external.desc (name NARUN); S90narund committed 0644 (Buildroot
#      installs it 0755; its check-package warns about executable files);
#   2. required variables/macros in package/narun/narun.mk, licence and hashes (narun.hash
#      has the source archive and LICENSE lines, no BR_NO_CHECK_HASH_FOR, defconfigs
#      with BR2_DOWNLOAD_FORCE_CHECK_HASHES; check-pins.sh verifies the hash values);
#   3. every BR2_* symbol used in the .mk files, Config.in files and defconfigs is
#      defined in a Config.in of this tree or is one of the Buildroot symbols listed
#      below (KNOWN_BUILDROOT_SYMBOLS; extend it when a new one is used); defconfig
#      lines are well formed;
#   4. narun.mk evaluated by GNU make against stub Buildroot variables: the cargo build
#      options per option set, and the install commands run for real into a
#      temporary target dir (binaries, config, unit, tmpfiles, sysusers, init script);
#   5. shellcheck of S90narund (installs Debian's shellcheck if missing);
#   6. S90narund start/start again/reload/stop/stop again exercised against a stub narund
#      in a temporary cgroup, then start twice/stop against a REAL narund binary when one
#      is at hand ($NARUND_BIN, or the one check-pins.sh built); needs root, a cgroup2
#      mount and start-stop-daemon (skipped otherwise);
#   7. the board overlay's narund.toml against daemon/config/narund.toml (a note only:
#      the overlay is where integrators customise it);
#   8. Buildroot's own utils/check-package -b over the tree, when a Buildroot tree is at
#      hand ($BUILDROOT_DIR; CI has none: Buildroot's servers are out of its reach, so this
#      is a note there; it was clean with Buildroot 2026.02.3's check-package).
#
# Exit status: 0 = all passed, 1 = at least one check failed.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
EXT=buildroot-external
PKG=$EXT/package/narun

failures=0
ok() { printf '[check-buildroot] ok: %s\n' "$*"; }
fail() { printf '[check-buildroot] FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
note() { printf '[check-buildroot] note: %s\n' "$*"; }

# Buildroot symbols this tree may use (defined by Buildroot itself, >= 2025.08).
KNOWN_BUILDROOT_SYMBOLS="
BR2_aarch64 BR2_cortex_a53 BR2_arm BR2_cortex_a9 BR2_ARM_ENABLE_NEON BR2_ARM_ENABLE_VFP
BR2_ARM_FPU_VFPV3D16 BR2_TOOLCHAIN_BUILDROOT_GLIBC BR2_TOOLCHAIN_HAS_THREADS BR2_USE_MMU
BR2_INIT_SYSTEMD BR2_SYSTEM_DHCP BR2_TARGET_GENERIC_GETTY_PORT BR2_ROOTFS_OVERLAY
BR2_LINUX_KERNEL BR2_LINUX_KERNEL_USE_ARCH_DEFAULT_CONFIG BR2_LINUX_KERNEL_NEEDS_HOST_OPENSSL
BR2_LINUX_KERNEL_DEFCONFIG BR2_LINUX_KERNEL_DTS_SUPPORT BR2_LINUX_KERNEL_INTREE_DTS_NAME
BR2_TARGET_ROOTFS_EXT2 BR2_TARGET_ROOTFS_EXT2_4 BR2_TARGET_ROOTFS_EXT2_SIZE BR2_TARGET_ROOTFS_TAR
BR2_PACKAGE_HOST_RUSTC BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS BR2_ENABLE_DEBUG
BR2_DOWNLOAD_FORCE_CHECK_HASHES
"
# Make variables with a BR2_ prefix that are not Kconfig symbols.
NOT_KCONFIG="BR2_EXTERNAL_NARUN_PATH"

# --- 1. layout ---------------------------------------------------------------------
for f in external.desc Config.in external.mk package/narun/Config.in package/narun/narun.mk \
    package/narun/narun.hash package/narun/S90narund configs/narun_qemu_aarch64_virt_defconfig \
    configs/narun_qemu_arm_vexpress_defconfig board/narun/rootfs-overlay/etc/narun/narund.toml; do
    if [ -f "$EXT/$f" ]; then ok "$EXT/$f exists"; else fail "$EXT/$f is missing"; fi
done
if [ -x "$PKG/S90narund" ] || [ "$(git ls-files -s "$PKG/S90narund" | cut -c1-6)" != 100644 ]; then
    fail "$PKG/S90narund must be committed 0644 (narun.mk installs it with -m 0755)"
else
    ok "$PKG/S90narund is 0644"
fi
grep -qx 'name: NARUN' "$EXT/external.desc" && ok "external.desc: name: NARUN" || fail "external.desc must say 'name: NARUN'"
grep -q '^desc: ..*' "$EXT/external.desc" || fail "external.desc needs a desc: line"
grep -q 'source "\$BR2_EXTERNAL_NARUN_PATH/package/narun/Config.in"' "$EXT/Config.in" ||
    fail "$EXT/Config.in must source package/narun/Config.in via \$BR2_EXTERNAL_NARUN_PATH"
grep -q 'include $(sort $(wildcard $(BR2_EXTERNAL_NARUN_PATH)/package/\*/\*.mk))' "$EXT/external.mk" ||
    fail "$EXT/external.mk must include package/*/*.mk via \$(BR2_EXTERNAL_NARUN_PATH)"

# --- 2. narun.mk content ----------------------------------------------------------
for v in NARUN_VERSION NARUN_SITE NARUN_SITE_METHOD NARUN_LICENSE NARUN_LICENSE_FILES NARUN_CARGO_BUILD_OPTS; do
    grep -q -E "^$v (=|\+=)" "$PKG/narun.mk" && ok "narun.mk sets $v" || fail "narun.mk does not set $v"
done
for m in NARUN_INSTALL_TARGET_CMDS NARUN_INSTALL_INIT_SYSTEMD NARUN_INSTALL_INIT_SYSV NARUN_USERS; do
    grep -q "^define $m\$" "$PKG/narun.mk" && ok "narun.mk defines $m" || fail "narun.mk does not define $m"
done
grep -qx 'NARUN_LICENSE = Apache-2.0' "$PKG/narun.mk" && grep -qx 'NARUN_LICENSE_FILES = LICENSE' "$PKG/narun.mk" &&
    [ -f LICENSE ] && ok "narun.mk: NARUN_LICENSE = Apache-2.0, NARUN_LICENSE_FILES = LICENSE" ||
    fail "narun.mk must say NARUN_LICENSE = Apache-2.0 and NARUN_LICENSE_FILES = LICENSE (the repository's LICENSE)"
grep -q BR_NO_CHECK_HASH_FOR "$PKG/narun.mk" && fail "narun.mk must not skip the hash check (BR_NO_CHECK_HASH_FOR)"
nv=$(sed -n 's/^NARUN_VERSION = //p' "$PKG/narun.mk")
grep -qE "^sha256  [0-9a-f]{64}  narun-$nv-git4-cargo4\.tar\.gz\$" "$PKG/narun.hash" && ok "narun.hash has the archive of NARUN_VERSION" ||
    fail "narun.hash has no sha256 line for narun-$nv-git4-cargo4.tar.gz (scripts/packaging/bump-pin.sh writes it)"
grep -qE '^sha256  [0-9a-f]{64}  LICENSE$' "$PKG/narun.hash" && ok "narun.hash has the LICENSE hash" ||
    fail "narun.hash has no sha256 line for LICENSE"
for d in "$EXT"/configs/*_defconfig; do
    grep -qx 'BR2_DOWNLOAD_FORCE_CHECK_HASHES=y' "$d" || fail "$d must set BR2_DOWNLOAD_FORCE_CHECK_HASHES=y"
done
grep -q '^\$(eval \$(cargo-package))$' "$PKG/narun.mk" && ok "narun.mk uses cargo-package" ||
    fail "narun.mk must end its definitions with \$(eval \$(cargo-package))"
grep -q 'BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS' "$PKG/Config.in" ||
    fail "package/narun/Config.in must depend on BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS"

# --- 3. Kconfig symbols -----------------------------------------------------------
mapfile -t cfg_files < <(find "$EXT" -name 'Config.in*')
mapfile -t mk_files < <(find "$EXT" -name '*.mk')
defined=$(grep -h -o -E '^(menu)?config BR2_[A-Za-z0-9_]+' "${cfg_files[@]}" | awk '{print $2}' | sort -u)
used=$( (grep -h -v -E '^[[:space:]]*#' "${mk_files[@]}" "$EXT"/configs/*_defconfig | grep -o -E 'BR2_[A-Za-z0-9_]+'
    grep -h -o -E '^# BR2_[A-Za-z0-9_]+ is not set' "$EXT"/configs/*_defconfig | grep -o -E 'BR2_[A-Za-z0-9_]+'
    grep -h -E '^[[:space:]]*(depends on|select|default|if|comment)' "${cfg_files[@]}" |
        grep -o -E 'BR2_[A-Za-z0-9_]+') | sort -u)
unknown=0
for s in $used; do
    grep -qx "$s" <<<"$defined" && continue
    grep -qw -- "$s" <<<"$KNOWN_BUILDROOT_SYMBOLS $NOT_KCONFIG" && continue
    fail "symbol $s is neither defined in a Config.in of $EXT nor a known Buildroot symbol (KNOWN_BUILDROOT_SYMBOLS in $0)"
    unknown=1
done
[ $unknown -eq 0 ] && ok "all $(wc -w <<<"$used") BR2_* symbols used are defined ($(wc -w <<<"$defined") in this tree)"
for d in "$EXT"/configs/*_defconfig; do
    bad=$(grep -n -v -E '^(#.*|BR2_[A-Za-z0-9_]+=(y|"[^"]*"|[0-9]+)|)$' "$d" || true)
    if [ -n "$bad" ]; then fail "$d: malformed lines: $bad"; else ok "$(basename "$d") is well formed"; fi
    grep -q '^BR2_PACKAGE_NARUN=y$' "$d" || fail "$d does not enable BR2_PACKAGE_NARUN"
done
# Kconfig indentation as Buildroot's check-package wants it: tab, help text tab+2 spaces.
cfg_bad=$(grep -n -v -E '^(config |menuconfig |if |endif|comment |source |menu |endmenu|$|	[a-z]|	  .|#)' "$PKG/Config.in" || true)
[ -z "$cfg_bad" ] && ok "package/narun/Config.in indentation" || fail "package/narun/Config.in: bad indentation: $cfg_bad"

# --- 4. narun.mk evaluated with stub Buildroot variables ----------------------------
if ! command -v make >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq make >/dev/null
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
SRC=$TMP/build/narun-src
mkdir -p "$SRC/target/aarch64-unknown-linux-gnu/release" "$SRC/daemon/config"
cp -r systemd "$SRC/"
cp daemon/config/narund.toml "$SRC/daemon/config/"
for b in narund narunctl; do printf '#!/bin/sh\n' >"$SRC/target/aarch64-unknown-linux-gnu/release/$b"; done
cat >"$TMP/harness.mk" <<'MK'
# Minimal stand-ins for what Buildroot provides to a package .mk file.
INSTALL := install
RUSTC_TARGET_NAME := aarch64-unknown-linux-gnu
cargo-package :=
include $(NARUN_MK)
NARUN_PKGDIR := $(dir $(NARUN_MK))
.PHONY: opts users
opts: ; @echo '$(strip $(NARUN_CARGO_BUILD_OPTS))'
users: ; @echo '$(strip $(NARUN_USERS))'
$(SRC)/.install:
	$(NARUN_INSTALL_TARGET_CMDS)
	$(NARUN_INSTALL_INIT_SYSTEMD)
	$(NARUN_INSTALL_INIT_SYSV)
MK
mkrun() { make -s --no-print-directory -f "$TMP/harness.mk" NARUN_MK="$REPO/$PKG/narun.mk" SRC="$SRC" "$@"; }
check_opts() { # check_opts EXPECTED MAKE_VARS...
    local want=$1 got; shift
    got=$(mkrun opts "$@" 2>&1)
    if [ "$got" = "$want" ]; then ok "NARUN_CARGO_BUILD_OPTS with [$*] = '$got'"; else fail "NARUN_CARGO_BUILD_OPTS with [$*] = '$got', expected '$want'"; fi
}
# The device profiles' settings on top of --release (echo drops the quotes): the crates
# Cargo.toml's [profile.firmware.package.*] (without the gateway) or
# [profile.firmware-gateway.package.*] (with it) put at "z", in its order (so a crate added
# there and not in narun.mk fails this check), and panic = "abort" only without the gateway.
zlist() {
    python3 - "$REPO/Cargo.toml" "$1" <<'PY'
import sys, tomllib
pkgs = tomllib.load(open(sys.argv[1], "rb"))["profile"][sys.argv[2]]["package"]
print(" ".join(f"--config profile.release.package.{c}.opt-level={v['opt-level']}"
               for c, v in pkgs.items() if "opt-level" in v))
PY
}
STRIP="--config profile.release.package.narund.strip=true"
FW="$(zlist firmware) $STRIP"
FWG="$(zlist firmware-gateway) $STRIP"
ABORT="--config profile.release.panic=abort"
J="--features narund/scheduled-runs --features narund/command-units"
check_opts "-p narund --no-default-features $ABORT $FW" BR2_PACKAGE_NARUN_GATEWAY= BR2_PACKAGE_NARUN_NARUNCTL=
check_opts "-p narund --no-default-features $J $ABORT $FW -p narunctl" BR2_PACKAGE_NARUN_SCHEDULED_RUNS=y BR2_PACKAGE_NARUN_COMMAND_UNITS=y BR2_PACKAGE_NARUN_NARUNCTL=y
check_opts "-p narund --no-default-features --features narund/command-units --features narund/gateway $FWG -p narunctl" BR2_PACKAGE_NARUN_COMMAND_UNITS=y BR2_PACKAGE_NARUN_GATEWAY=y BR2_PACKAGE_NARUN_NARUNCTL=y
check_opts "-p narund --no-default-features --features narund/gateway --features narund/dashboard --features narund/acme $FWG" BR2_PACKAGE_NARUN_GATEWAY=y BR2_PACKAGE_NARUN_DASHBOARD=y BR2_PACKAGE_NARUN_ACME=y
users=$(mkrun users)
grep -q '^narun-app -1 narun-app -1 \* ' <<<"$users" && ok "NARUN_USERS creates narun-app ($users)" || fail "NARUN_USERS is '$users'"
TGT=$TMP/target
if out=$(mkrun "$SRC/.install" TARGET_DIR="$TGT" BR2_PACKAGE_NARUN_NARUNCTL=y 2>&1); then
    for f in usr/bin/narund usr/bin/narunctl etc/narun/narund.toml usr/lib/systemd/system/narund.service \
        usr/lib/tmpfiles.d/narun.conf usr/lib/sysusers.d/narun.conf etc/init.d/S90narund; do
        [ -e "$TGT/$f" ] && ok "install commands put /$f" || fail "install commands did not install /$f"
    done
    [ -x "$TGT/usr/bin/narund" ] && [ -x "$TGT/etc/init.d/S90narund" ] || fail "installed narund/S90narund are not executable"
    cmp -s "$TGT/usr/lib/systemd/system/narund.service" systemd/narund.service || fail "installed unit differs from systemd/narund.service"
else
    fail "narun.mk install commands failed: $out"
fi
rm -rf "$TGT"
if mkrun "$SRC/.install" TARGET_DIR="$TGT" BR2_PACKAGE_NARUN_NARUNCTL= >/dev/null 2>&1 && [ ! -e "$TGT/usr/bin/narunctl" ]; then
    ok "without BR2_PACKAGE_NARUN_NARUNCTL narunctl is not installed"
else
    fail "narunctl installed (or install failed) with BR2_PACKAGE_NARUN_NARUNCTL unset"
fi

# --- 5. shellcheck ----------------------------------------------------------------
if ! command -v shellcheck >/dev/null; then
    printf '[check-buildroot] installing shellcheck\n'
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq shellcheck || { apt-get update -qq && apt-get install -y -qq shellcheck; }; } >/dev/null 2>&1
fi
if command -v shellcheck >/dev/null; then
    if out=$(shellcheck -s sh "$PKG/S90narund" 2>&1); then ok "shellcheck S90narund"; else fail "shellcheck S90narund:"; printf '%s\n' "$out" >&2; fi
else
    fail "shellcheck is not installed and could not be installed"
fi

# --- 6. S90narund against a stub narund -------------------------------------------
CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
SSD=$(command -v start-stop-daemon || true)
if [ "$(id -u)" != 0 ] || [ -z "$CG2" ] || [ -z "$SSD" ]; then
    note "S90narund functional test skipped (needs root, a cgroup2 mount and start-stop-daemon)"
else
    T=$TMP/init
    mkdir -p "$T/etc/default" "$T/log" "$T/run"
    CGT="$CG2/narun-check-$$"
    cat >"$T/narund" <<STUB
#!/bin/sh
# Stand-in for narund: records its arguments, cgroup and the signals it gets.
echo "\$*" > "$T/args"
grep '^Max open files' /proc/self/limits > "$T/nofile"
cat /proc/self/cgroup > "$T/cgroup"
trap 'echo HUP >> "$T/signals"' HUP
trap 'echo TERM >> "$T/signals"; exit 0' TERM
trap 'echo USR2 >> "$T/signals"; exit 0' USR2
echo started > "$T/ready"
while :; do sleep 0.1; done
STUB
    chmod +x "$T/narund"
    # The script under test, with its paths pointed into the temporary directory.
    sed -e "s|/usr/bin/\$DAEMON|$T/narund|" -e "s|/var/run/|$T/run/|" -e "s|/var/log/|$T/log/|" \
        -e "s|/etc/default/|$T/etc/default/|g" -e "s|^CGROUP_ROOT=.*|CGROUP_ROOT=\"$CG2\"|" \
        -e "s|^CGROUP=.*|CGROUP=\"$CGT\"|" -e "s|/var/lib/narun|$T/lib/narun|g" -e "s|/run/narun|$T/run/narun|g" \
        "$PKG/S90narund" >"$T/S90narund"
    printf '%s\n' 'NARUND_ARGS="--config /etc/narun/narund.toml --extra"' 'NARUND_NOFILE=4096' >"$T/etc/default/narund"
    wait_file() { local i=0; while [ ! -s "$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done; [ -s "$1" ]; }
    # The stub is a shell: a shell cannot trap a signal that was ignored when it started
    # (POSIX), and a check run under nohup ignores SIGHUP. Start it with SIGHUP at its
    # default, as an init system does (narund itself installs its handlers either way).
    s90() { env --default-signal=HUP sh "$T/S90narund" "$@"; }
    if out=$(s90 start 2>&1) && wait_file "$T/ready"; then
        ok "S90narund start: $out"
        pid=$(cat "$T/run/narund.pid" 2>/dev/null)
        grep -q -- "--config /etc/narun/narund.toml --extra" "$T/args" && ok "narund got the arguments from /etc/default/narund" ||
            fail "narund arguments were '$(cat "$T/args")'"
        grep -q "^0::${CGT#"$CG2"}/supervisor\$" "$T/cgroup" && ok "narund runs in the supervisor cgroup ${CGT#"$CG2"}/supervisor" ||
            fail "narund cgroup is '$(grep '^0::' "$T/cgroup")', expected ${CGT#"$CG2"}/supervisor"
        grep -q -E '^Max open files +4096 +4096 ' "$T/nofile" && ok "narund got the open files limit NARUND_NOFILE from /etc/default/narund" ||
            fail "narund's open files limit was '$(cat "$T/nofile")', expected 4096 (NARUND_NOFILE)"
        [ -d "$T/lib/narun" ] && [ -d "$T/run/narun" ] && ok "start created the data and runtime dirs" || fail "start did not create the data/runtime dirs"
        # A second start must not start a second narund.
        narunds() { # number of processes named narund in the supervisor cgroup
            local n=0 p
            for p in $(cat "$CGT/supervisor/cgroup.procs"); do
                [ "$(cat "/proc/$p/comm" 2>/dev/null)" = narund ] && n=$((n + 1))
            done
            echo "$n"
        }
        out2=$(s90 start 2>&1)
        sleep 0.3 # a second narund, if the script started one, has exec'd by now
        if [ "$(cat "$T/run/narund.pid" 2>/dev/null)" = "$pid" ] && grep -q 'already running' <<<"$out2" &&
            [ "$(narunds)" = 1 ]; then
            ok "S90narund start while running: '$out2', still one narund (pid $pid)"
        else
            fail "S90narund start while running: '$out2', pid file $(cat "$T/run/narund.pid" 2>/dev/null) (was $pid)," \
                "$(narunds) narund process(es) in the supervisor cgroup"
            for p in $(cat "$CGT/supervisor/cgroup.procs"); do [ "$p" != "$pid" ] && kill -9 "$p" 2>/dev/null; done
        fi
        out=$(s90 reload 2>&1)
        wait_file "$T/signals" && grep -q HUP "$T/signals" && ok "reload sends SIGHUP" ||
            fail "reload did not deliver SIGHUP within 5 s: '$out', signals: $(tr '\n' ' ' <"$T/signals" 2>/dev/null)"
        # restart: SIGTERM only (the apps keep running), then a new narund.
        rm -f "$T/ready"
        if out=$(s90 restart 2>&1) && ! kill -0 "$pid" 2>/dev/null && grep -q TERM "$T/signals" &&
            ! grep -q USR2 "$T/signals" && wait_file "$T/ready" && [ "$(cat "$T/run/narund.pid" 2>/dev/null)" != "$pid" ]; then
            ok "S90narund restart: SIGTERM delivered (apps kept), a new narund started"
            pid=$(cat "$T/run/narund.pid")
        else
            fail "S90narund restart: '$out', signals: $(tr '\n' ' ' <"$T/signals" 2>/dev/null)"
        fi
        if out=$(sh "$T/S90narund" stop 2>&1) && ! kill -0 "$pid" 2>/dev/null && grep -q USR2 "$T/signals" && [ ! -e "$T/run/narund.pid" ]; then
            ok "S90narund stop: SIGUSR2 delivered (narund stops its apps too: shutdown), narund exited, pid file removed"
        else
            fail "S90narund stop: '$out', signals: $(tr '\n' ' ' <"$T/signals" 2>/dev/null)"
            [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
        fi
    else
        fail "S90narund start failed: $out $(cat "$T/log/narund.log" 2>/dev/null)"
        [ -s "$T/run/narund.pid" ] && kill -9 "$(cat "$T/run/narund.pid")" 2>/dev/null
    fi
    if out=$(sh "$T/S90narund" stop 2>&1) && grep -q 'not running' <<<"$out"; then
        ok "S90narund stop while stopped: '$out' (exit 0)"
    else
        fail "S90narund stop while stopped: '$out'"
    fi
    # A stub that ignores SIGTERM and SIGUSR2: stop gives up after NARUND_STOP_TIMEOUT, keeps the pid file.
    sed -i -e "s|trap 'echo TERM >> \"$T/signals\"; exit 0' TERM|trap '' TERM|" \
        -e "s|trap 'echo USR2 >> \"$T/signals\"; exit 0' USR2|trap '' USR2|" "$T/narund"
    rm -f "$T/ready"
    echo 'NARUND_STOP_TIMEOUT=2' >>"$T/etc/default/narund"
    if s90 start >/dev/null 2>&1 && wait_file "$T/ready"; then
        pid=$(cat "$T/run/narund.pid")
        t0=$(date +%s)
        out=$(sh "$T/S90narund" stop 2>&1)
        rc=$?
        if [ $rc -ne 0 ] && grep -q 'still running after 2 s' <<<"$out" && [ -s "$T/run/narund.pid" ] &&
            [ $(($(date +%s) - t0)) -le 5 ]; then
            ok "S90narund stop of a narund that does not exit: '$out' (exit $rc, bounded, pid file kept)"
        else
            fail "S90narund stop of a narund ignoring its stop signal: '$out' (exit $rc after $(($(date +%s) - t0)) s)"
        fi
        kill -9 "$pid" 2>/dev/null
    else
        fail "S90narund: could not start the signal-ignoring stub"
    fi
    # Clean up the temporary cgroups (empty once the stub exited).
    sleep 0.2
    rmdir "$CGT/supervisor" "$CGT" 2>/dev/null || note "could not remove $CGT (still populated?)"

    # The same script with a REAL narund (offline: its NATS URL points at a closed port,
    # narund keeps retrying): start, start again, stop.
    NB=${NARUND_BIN:-}
    if [ -z "$NB" ]; then
        for c in "${NARUN_PIN_TARGET_DIR:-$HOME/.cache/narun-pin-target}/debug/narund" "${CARGO_TARGET_DIR:-target}/debug/narund"; do
            if [ -x "$c" ]; then NB=$c; break; fi
        done
    fi
    if [ -z "$NB" ]; then
        note "S90narund with a real narund skipped: no narund binary (set NARUND_BIN; check-pins.sh builds one)"
    else
        R=$TMP/real
        mkdir -p "$R/etc/default" "$R/log" "$R/run" "$R/data"
        CGR="$CG2/narun-check-real-$$"
        sed -e "s|/usr/bin/\$DAEMON|$NB|" -e "s|/var/run/|$R/run/|" -e "s|/var/log/|$R/log/|" \
            -e "s|/etc/default/|$R/etc/default/|g" -e "s|^CGROUP_ROOT=.*|CGROUP_ROOT=\"$CG2\"|" \
            -e "s|^CGROUP=.*|CGROUP=\"$CGR\"|" -e "s|/var/lib/narun|$R/lib/narun|g" -e "s|/run/narun|$R/run/narun|g" \
            "$PKG/S90narund" >"$R/S90narund"
        printf 'node_id = "s90-check"\ndata_dir = "%s/data"\nruntime_dir = "%s/data/run"\n[nats]\nurl = "nats://127.0.0.1:9"\n' \
            "$R" "$R" >"$R/narund.toml"
        printf 'NARUND_ARGS="--config %s/narund.toml"\nNARUND_NOFILE=4096\nNARUND_STOP_TIMEOUT=20\n' "$R" >"$R/etc/default/narund"
        real_narunds() {
            local n=0 p
            for p in $(cat "$CGR/supervisor/cgroup.procs" 2>/dev/null); do
                [ "$(cat "/proc/$p/comm" 2>/dev/null)" = narund ] && n=$((n + 1))
            done
            echo "$n"
        }
        wait_log() { local i=0; until grep -q "$1" "$R/log/narund.log" 2>/dev/null; do
            [ $i -ge 100 ] && return 1; sleep 0.1; i=$((i + 1)); done; }
        if out=$(sh "$R/S90narund" start 2>&1) && wait_log 'narund starting'; then
            rpid=$(cat "$R/run/narund.pid")
            ok "S90narund start of $NB: '$out' (pid $rpid, logging to narund.log)"
            out=$(sh "$R/S90narund" start 2>&1)
            sleep 0.3
            if grep -q 'already running' <<<"$out" && [ "$(cat "$R/run/narund.pid")" = "$rpid" ] && [ "$(real_narunds)" = 1 ] &&
                [ "$(grep -c 'narund starting' "$R/log/narund.log")" = 1 ]; then
                ok "S90narund start again with a real narund: '$out', one narund"
            else
                fail "S90narund start again with a real narund: '$out', $(real_narunds) narund process(es)," \
                    "$(grep -c 'narund starting' "$R/log/narund.log") start(s) logged"
            fi
            t0=$(date +%s)
            if out=$(sh "$R/S90narund" stop 2>&1) && ! kill -0 "$rpid" 2>/dev/null && [ ! -e "$R/run/narund.pid" ] &&
                grep -q 'asked to stop the apps too (SIGUSR2)' "$R/log/narund.log"; then
                ok "S90narund stop of a real narund: '$out' in $(($(date +%s) - t0)) s (SIGUSR2: apps stopped too, exited, pid file removed)"
            else
                fail "S90narund stop of a real narund: '$out' after $(($(date +%s) - t0)) s"
            fi
        else
            fail "S90narund start of $NB failed: $out $(tail -5 "$R/log/narund.log" 2>/dev/null)"
        fi
        for p in $(cat "$CGR/supervisor/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        sleep 0.2
        rmdir "$CGR/supervisor" "$CGR" 2>/dev/null || note "could not remove $CGR (still populated?)"
    fi
fi

# --- 7. overlay config ------------------------------------------------------------
if cmp -s daemon/config/narund.toml "$EXT/board/narun/rootfs-overlay/etc/narun/narund.toml"; then
    ok "board overlay narund.toml equals daemon/config/narund.toml"
else
    note "board overlay narund.toml differs from daemon/config/narund.toml (fine if customised on purpose;" \
        "otherwise: cp daemon/config/narund.toml $EXT/board/narun/rootfs-overlay/etc/narun/)"
fi

# --- 8. Buildroot's check-package ---------------------------------------------------
if [ -n "${BUILDROOT_DIR:-}" ] && [ -f "$BUILDROOT_DIR/utils/check-package" ]; then
    # It imports python-magic and flake8 (Debian: python3-magic, flake8).
    mapfile -t ext_files < <(find "$EXT" -type f)
    if out=$(python3 "$BUILDROOT_DIR/utils/check-package" -b "${ext_files[@]}" 2>&1) &&
        grep -q '^0 warnings generated$' <<<"$out"; then
        ok "Buildroot's check-package ($BUILDROOT_DIR): $(tail -1 <<<"$out")"
    else
        fail "Buildroot's check-package ($BUILDROOT_DIR):"
        printf '%s\n' "$out" >&2
    fi
else
    note "Buildroot's utils/check-package not run: no Buildroot tree (set BUILDROOT_DIR=/path/to/buildroot)"
fi

if [ $failures -ne 0 ]; then
    printf '[check-buildroot] %d check(s) FAILED\n' "$failures" >&2
    exit 1
fi
printf '[check-buildroot] all checks passed\n'
