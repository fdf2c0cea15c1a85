#!/usr/bin/env bash
# Stripped release sizes of narund (with and without the gateway) and narunctl per
# device architecture, and which crates dominate narund (scripts/packaging/bloat.py).
#
#   scripts/packaging/size-report.sh            # both targets, all three binaries
#   CROSS_TARGETS=aarch64-unknown-linux-gnu SIZE_BINS="narund" scripts/packaging/size-report.sh
#   SIZE_BINS="narund-min" ...   # narund --no-default-features: services only, without
#                                # scheduled runs and command units (daemon/Cargo.toml)
#   SIZE_BINS="floor" ...   # bench/floor: async-nats + tokio + serde_json watching the
#                           # app-configs bucket, the floor under any narund
#
# narund and narunctl are built with the `firmware` profile (what devices ship: release
# with panic = "abort", Cargo.toml), narund with the gateway with `firmware-gateway` (the
# same opt-levels, unwinding), the floor with `release` (SIZE_PROFILE=release builds all
# with `release`, for comparisons). Symbols are kept
# (CARGO_PROFILE_<P>_STRIP=false), so bloat.py can attribute them; the size reported is
# that of a copy stripped with <triple>-strip, which equals what `strip = true` produces.
# Extra `CARGO_PROFILE_RELEASE_*` variables in the environment (e.g.
# CARGO_PROFILE_RELEASE_OPT_LEVEL=z) are honoured, for experiments (firmware inherits them).
# Builds run under `nice`; a cold build takes 5-8 minutes per target on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
TARGETS=${CROSS_TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
BINS=${SIZE_BINS:-"narund narund+gateway narunctl"}
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
OUT=$(mktemp -d /tmp/narun-size.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
FIRMWARE=${SIZE_PROFILE:-firmware}
GATEWAY_PROFILE=${SIZE_PROFILE:-firmware-gateway}
export CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_FIRMWARE_STRIP=false CARGO_PROFILE_FIRMWARE_GATEWAY_STRIP=false
# The package overrides of the binaries' own crates strip again (Cargo.toml): not here, the
# symbol listing below needs the symbols (the sizes are of the stripped copies).
NOSTRIP=(--config profile.firmware.package.narund.strip=false --config profile.firmware-gateway.package.narund.strip=false
    --config profile.release.package.narunctl.strip=false)

prefix_of() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) echo "unknown target $1" >&2; return 1 ;;
    esac
}

printf '%-32s %-14s %-9s %12s %9s\n' target binary profile bytes MiB
for t in $TARGETS; do
    p=$(prefix_of "$t")
    for b in $BINS; do
        case "$b" in
            narund) profile=$FIRMWARE; nice cargo build --locked -q --profile "$profile" -p narund --target "$t" "${NOSTRIP[@]}" ;;
            narund-min) profile=$FIRMWARE; nice cargo build --locked -q --profile "$profile" -p narund --no-default-features --target "$t" "${NOSTRIP[@]}" ;;
            narund+gateway) profile=$GATEWAY_PROFILE; nice cargo build --locked -q --profile "$profile" -p narund --features gateway --target "$t" "${NOSTRIP[@]}" ;;
            narunctl) profile=$FIRMWARE; nice cargo build --locked -q --profile "$profile" -p narunctl --target "$t" "${NOSTRIP[@]}" ;;
            floor) profile=release; nice cargo build --locked -q --release -p narun-size-floor --target "$t" ;;
            *) echo "unknown binary $b" >&2; exit 2 ;;
        esac
        case "$b" in
            floor) src="$TARGET_DIR/$t/$profile/narun-size-floor" ;;
            narund-min) src="$TARGET_DIR/$t/$profile/narund" ;;
            *) src="$TARGET_DIR/$t/$profile/${b%%+*}" ;;
        esac
        "$p-strip" -o "$OUT/$t-$b" "$src"
        cp "$src" "$OUT/$t-$b.unstripped"
        size=$(stat -c %s "$OUT/$t-$b")
        printf '%-32s %-14s %-9s %12s %9.2f\n' "$t" "$b" "$profile" "$size" "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')"
    done
done
for t in $TARGETS; do
    for b in $BINS; do
        echo
        echo "== $t $b: largest crates (symbol sizes, unstripped build)"
        python3 scripts/packaging/bloat.py --nm "$(prefix_of "$t")-nm" --top 15 "$OUT/$t-$b.unstripped"
    done
done
