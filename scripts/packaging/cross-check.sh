#!/usr/bin/env bash
# Cross-build narund for the device architectures and run code under qemu-user.
#
#   (a) cargo build (debug) -p narund, with and without --features gateway,
#       for aarch64-unknown-linux-gnu and armv7-unknown-linux-gnueabihf;
#   (b) run each built narund with --version under qemu: proves the binary links,
#       loads with the target glibc and starts; it must exit 0 and print "narund <version>";
#   (c) cargo test --lib -p narun-wire -p narun-spec for both targets, run under qemu
#       through the runners in .cargo/config.toml.
#
# Slow (minutes per target on 2 cores), hence separate from check-all.sh; builds run
# under `nice` so they do not starve other work on the machine. The end-to-end
# deploy-and-request test under qemu is scripts/packaging/qemu-smoke.sh (same builds). --locked:
# a Cargo.lock that does not match the manifests fails here, as it would in Yocto
# (--frozen) and Buildroot (--locked). Installs the
# Debian cross compilers, qemu-user-static and the rustup targets if they are missing.
# Exit status: 0 = all steps passed, 1 = a step failed (the failing step is named).
#
# Environment: CARGO_TARGET_DIR is honoured (defaults to cargo's own default);
# CROSS_TARGETS overrides the target list (space separated).
set -euo pipefail

cd "$(dirname "$0")/../.." || exit 1

TARGETS=${CROSS_TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
failures=0
start_all=$(date +%s)

log() { printf '[cross-check] %s\n' "$*"; }
fail() { printf '[cross-check] FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

# --- prerequisites -----------------------------------------------------------------
need_pkgs=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_pkgs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v qemu-arm-static >/dev/null || need_pkgs+=(qemu-user-static)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in $TARGETS; do
    if ! grep -qx "$t" <<<"$installed_targets"; then
        log "rustup target add $t"
        rustup target add "$t"
    fi
done

qemu_for() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
        armv7-unknown-linux-gnueabihf) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
        *) echo "unknown target $1" >&2; return 1 ;;
    esac
}

timed() { # timed LABEL CMD... : runs CMD, logs its duration, records failure
    local label=$1; shift
    local t0 rc
    t0=$(date +%s)
    log "START $label: $*"
    set +e
    "$@"
    rc=$?
    set -e
    log "END   $label: exit $rc after $(( $(date +%s) - t0 )) s"
    [ $rc -eq 0 ] || fail "$label (exit $rc)"
    return 0
}

# Runs a built narund with --version under qemu: it must exit 0 and print
# "narund <version>". The failure message says whether the binary could not execute
# at all (126/127, exec format error, missing dynamic loader, glibc symbol versions the
# target sysroot lacks, a crash inside qemu) or ran and misbehaved.
run_version() {
    local t=$1 feat=$2 bin out rc
    bin="$TARGET_DIR/$t/debug/narund"
    if [ ! -x "$bin" ]; then
        fail "$t/$feat: $bin missing (build failed?)"
        return 0
    fi
    set +e
    # shellcheck disable=SC2046 # the runner string is split on purpose
    out=$(timeout 20 $(qemu_for "$t") "$bin" --version 2>&1)
    rc=$?
    set -e
    printf '[cross-check]   %s/%s: narund --version -> exit %s: %s\n' "$t" "$feat" "$rc" "$(head -c 300 <<<"$out" | tr '\n' ' ')"
    if [ $rc -eq 126 ] || [ $rc -eq 127 ] ||
        grep -qiE "exec format error|cannot execute|qemu-[a-z0-9]+-static: Could not open|error while loading shared libraries|GLIBC_[0-9.]+' not found|qemu: uncaught target signal" <<<"$out"; then
        fail "$t/$feat: narund did not execute under qemu (exit $rc)"
    elif [ $rc -eq 124 ]; then
        fail "$t/$feat: narund --version still running after 20 s under qemu"
    elif [ $rc -ne 0 ] || ! grep -q '^narund [0-9]' <<<"$out"; then
        fail "$t/$feat: narund --version exited $rc without printing its version"
    fi
}

for t in $TARGETS; do
    for feat in default gateway; do
        # A binary left by an earlier build must not pass step (b) when this build fails.
        rm -f "$TARGET_DIR/$t/debug/narund"
        if [ "$feat" = gateway ]; then
            timed "build $t narund --features gateway" nice cargo build --locked -p narund --features gateway --target "$t"
        else
            timed "build $t narund" nice cargo build --locked -p narund --target "$t"
        fi
        # Run right after building: the next build overwrites target/<t>/debug/narund.
        run_version "$t" "$feat"
    done
    timed "test $t narun-wire narun-spec (qemu)" nice cargo test --locked --target "$t" -p narun-wire -p narun-spec --lib
done

log "total $(( $(date +%s) - start_all )) s"
if [ $failures -ne 0 ]; then
    log "$failures step(s) FAILED"
    exit 1
fi
log "all steps passed"
