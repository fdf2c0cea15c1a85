#!/bin/sh
# Run cargo-fuzz targets one after another (docs/fuzzing.md), each until RUNS executions,
# with one job, nice'd. New inputs go to fuzz/work/<target> (git-ignored); the committed
# seeds fuzz/corpus/<target> are read only. Crashes land in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                      # every target, 10 M executions each
#   RUNS=1000000 scripts/fuzz.sh spec    # one target
#   SANITIZER=none scripts/fuzz.sh ...   # without ASan (2-3x faster; safe Rust code)
#   FUZZ_ARGS=-max_total_time=600 scripts/fuzz.sh spec   # more libFuzzer flags
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or stable with
# RUSTC_BOOTSTRAP=1 (set TOOLCHAIN= to use the default one).
set -eu
cd "$(dirname "$0")/../fuzz"
RUNS=${RUNS:-10000000}
SANITIZER=${SANITIZER:-address}
TOOLCHAIN=${TOOLCHAIN-+nightly}
# Keep the builds of both sanitizers apart (each is a full rebuild).
TARGET_DIR=${FUZZ_TARGET_DIR:-target/$SANITIZER}
unset CARGO_TARGET_DIR
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock
targets=${*:-$(cargo $TOOLCHAIN fuzz list)}
for t in $targets; do
    mkdir -p "work/$t"
    start=$(date +%s)
    echo "== $t: cargo $TOOLCHAIN fuzz run -s $SANITIZER --target-dir $TARGET_DIR $t work/$t corpus/$t -- -runs=$RUNS ${FUZZ_ARGS:-}"
    nice cargo $TOOLCHAIN fuzz run -s "$SANITIZER" --target-dir "$TARGET_DIR" "$t" "work/$t" "corpus/$t" -- \
        -runs="$RUNS" -print_final_stats=1 ${FUZZ_ARGS:-} >"work/$t.log" 2>&1 || echo "!! $t failed: see fuzz/work/$t.log"
    end=$(date +%s)
    echo "$t: $(grep -E '^Done|stat::number_of_executed_units|stat::average_exec_per_sec' "work/$t.log" | tr '\n' ' ') wall seconds incl. build: $((end - start))"
done
