#!/usr/bin/env bash
# One-command demo: nats-server + narund (with the HTTP gateway) + the `hello` app.
# Installs nats-server with apt when missing, builds, starts everything on loopback,
# prints a working curl, and stops everything on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/narun-target}"

if ! command -v nats-server >/dev/null; then
  echo "== installing nats-server (apt)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nats-server
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

echo "== building narund (gateway feature) and the hello example"
cargo build --release -q -p narund --features gateway -p hello
BIN="$CARGO_TARGET_DIR/release"

WORK=$(mktemp -d /tmp/narun-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

NATS_PORT=${NATS_PORT:-14222}
HTTP_PORT=${HTTP_PORT:-18080}
METRICS_PORT=${METRICS_PORT:-19090}
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 & PIDS+=($!)

cat >"$WORK/narund.toml" <<TOML
node_id = "demo"
data_dir = "$WORK/data"
runtime_dir = "$WORK/run"
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[gateway]
enabled = true
http_addr = "127.0.0.1:$HTTP_PORT"
metrics_addr = "127.0.0.1:$METRICS_PORT"
[[gateway.routes]]
path = "/hello/"
methods = ["GET", "POST"]
service = "hello"
TOML

NARUND_LOG=${NARUND_LOG:-info} "$BIN/narund" --config "$WORK/narund.toml" 2>"$WORK/narund.log" & PIDS+=($!)
NATS_URL="nats://127.0.0.1:$NATS_PORT" "$BIN/hello" >"$WORK/hello.log" 2>&1 & PIDS+=($!)

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$HTTP_PORT/hello/world" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
echo
echo "== narun demo is up (logs in $WORK). Try:"
echo "   curl 'http://127.0.0.1:$HTTP_PORT/hello/world?greeting=Hi'"
echo "   curl -d 'some body' http://127.0.0.1:$HTTP_PORT/hello/echo"
echo "   curl http://127.0.0.1:$METRICS_PORT/metrics"
echo
echo "\$ curl 'http://127.0.0.1:$HTTP_PORT/hello/world?greeting=Hi'"
curl -sS "http://127.0.0.1:$HTTP_PORT/hello/world?greeting=Hi"
if [ "${DEMO_ONESHOT:-0}" = 1 ]; then exit 0; fi
echo "(Ctrl-C to stop)"
wait
