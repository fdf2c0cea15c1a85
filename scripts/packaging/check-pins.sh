#!/usr/bin/env bash
# The pins build: the commit that meta-narun (SRCREV) and the Buildroot package
# (NARUN_VERSION) build is checked the way their builds will use it (scripts/packaging/pins.py
# has the details):
#   1. SRCREV == NARUN_VERSION, an ancestor of HEAD;
#   2. narun-crates.inc == `git show SRCREV:Cargo.lock` (names, versions, checksums;
#      nothing extra, nothing missing) in cargo-update-recipe-crates' format;
#   3. `cargo build --locked --offline -p narund -p narunctl --features narund/gateway` of
#      `git archive SRCREV`, with crates.io replaced by a vendor dir made from the .crate
#      files narun-crates.inc lists (sha256-verified), as bitbake builds it;
#   4. narun-crate-licenses.inc == the licences `cargo metadata` of SRCREV gives;
#   5. narun.hash: the LICENSE line and the archive line, the archive rebuilt the way
#      Buildroot 2026.02 LTS makes it (br-source-hash.sh; cached per commit);
#   6. the cargo profiles the recipe's BUILD_MODE names exist in SRCREV's Cargo.toml.
# Cost: the build's target dir is $NARUN_PIN_TARGET_DIR (default ~/.cache/narun-pin-target)
# and the crates/archive cache $NARUN_PIN_CACHE (default ~/.cache/narun-pin), so only the
# first run on a machine builds the dependencies (a debug build, no debug info) and
# downloads crates for the archive hash.
# Fix every failure with scripts/packaging/bump-pin.sh [COMMIT].
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
t0=$(date +%s)
failures=0

python3 scripts/packaging/pins.py check || failures=$((failures + 1))

version=$(sed -n 's/^NARUN_VERSION = //p' buildroot-external/package/narun/narun.mk)
if git rev-parse --verify --quiet "$version^{commit}" >/dev/null; then
    if line=$(bash scripts/packaging/br-source-hash.sh "$version"); then
        if grep -qxF "sha256  $line" buildroot-external/package/narun/narun.hash; then
            printf '[pins] narun.hash has the Buildroot archive hash of NARUN_VERSION: %s\n' "$line"
        else
            printf '[pins] FAIL: narun.hash lacks "sha256  %s" (run scripts/packaging/bump-pin.sh)\n' "$line" >&2
            failures=$((failures + 1))
        fi
    else
        printf '[pins] FAIL: could not build the Buildroot source archive of %s\n' "$version" >&2
        failures=$((failures + 1))
    fi
fi
# 6. The cargo profiles the recipe builds with (BUILD_MODE: `firmware`, `firmware-gateway`)
#    exist in the pinned commit's Cargo.toml: a profile added after the pin fails the build.
if git rev-parse --verify --quiet "$version^{commit}" >/dev/null; then
    for prof in $(grep -o -- "--profile [a-z0-9-]*" meta-narun/recipes-narun/narun/narun_*.bb | awk '{print $2}' | sort -u); do
        if git show "$version:Cargo.toml" | grep -qxF "[profile.$prof]"; then
            printf '[pins] the pinned Cargo.toml defines the profile the recipe uses: %s\n' "$prof"
        else
            printf '[pins] FAIL: the recipe builds with --profile %s, which %s does not define (run scripts/packaging/bump-pin.sh)\n' "$prof" "$version" >&2
            failures=$((failures + 1))
        fi
    done
fi
printf '[pins] check-pins.sh took %s s\n' "$(($(date +%s) - t0))"
[ "$failures" -eq 0 ]
