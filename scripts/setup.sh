#!/usr/bin/env bash
# Install everything the build and the test suite need on a fresh Debian 12 machine:
# apt packages (nats-server, cross gcc, qemu-user, systemd for unit checks, wrk, hyperfine,
# prometheus for the tests' `promtool check metrics`; its service is not started in a
# container without an init, and nothing needs it running),
# rustup toolchain 1.88 (MSRV) and the aarch64/armv7 targets, and the third-party
# interop peers (Python nats-py + nats-micro, npm @nats-io/*), the packaging linters
# (oelint-adv, kas; pinned: a new oelint-adv release may add rules); chromium and
# chromium-driver for the dashboard's headless-browser test (daemon/tests/dashboard.rs). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi

APT_PKGS=(nats-server gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
          qemu-user-static systemd shellcheck wrk hyperfine curl protobuf-compiler prometheus
          chromium chromium-driver pebble)  # pebble: the ACME test CA of gateway/tests/acme.rs
command -v node >/dev/null && command -v npm >/dev/null || APT_PKGS+=(nodejs npm)
command -v pip3 >/dev/null || python3 -m pip --version >/dev/null 2>&1 || APT_PKGS+=(python3-pip)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== systemd-analyze >= 254 for scripts/packaging/check-systemd.sh (Debian 12 has 252)"
bash scripts/packaging/systemd-analyze.sh --version | head -n1 || echo "   not available: check-systemd.sh will tolerate newer directives"

echo "== cargo-deb for scripts/packaging/check-deb.sh (built once, ~13 min on 2 cores; then cached in ~/.cargo/bin)"
command -v cargo-deb >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ] \
  || env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-deb@3.8.0 \
  || echo "   cargo-deb could not be installed: check-deb.sh will be skipped"

echo "== rust toolchains and targets"
rustup toolchain list | grep -q '^1.88' || rustup toolchain install 1.88 --profile minimal -c clippy,rustfmt
for tc in stable 1.88; do
  rustup target add --toolchain "$tc" aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >/dev/null 2>&1
done
rustup component add clippy rustfmt >/dev/null 2>&1 || true

echo "== packaging linters (oelint-adv for meta-narun, kas for its kas file)"
python3 -c 'import oelint_adv, kas' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check 'oelint-adv==9.11.2' 'kas==5.5'

echo "== interop peers"
python3 -c 'import nats, nats_contrib.micro, grpc, grpc_tools' 2>/dev/null && command -v micro >/dev/null \
  || python3 -m pip install -q -r interop/requirements.txt
if [ ! -d interop/node_modules/@nats-io/services ]; then
  (cd interop && npm install --no-audit --no-fund --silent)
fi
echo "== setup done"
