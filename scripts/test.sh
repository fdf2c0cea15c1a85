#!/usr/bin/env bash
# The whole test suite: unit, integration (real nats-server, real processes, real
# cgroups) and interop tests, for every crate, with narund's `gateway` feature on.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/narun-target}"
# Installs nats-server, toolchains and interop peers when missing (idempotent, ~2 s when done).
bash scripts/setup.sh
exec cargo test --workspace --all-features --no-fail-fast "$@"
