#!/usr/bin/env bash
# The first five minutes of narun, in one command, the way it runs in production:
#
#   1. nats-server with JetStream on loopback;
#   2. narund with the HTTP gateway (a route /hello/ -> NATS Micro service `hello`);
#   3. `narunctl nodes ls` once the node is online, then `narunctl deploy --wait`: uploads
#      the hello binary to the object store, writes its spec, and waits until narund runs
#      it and it is ready (as its own dynamic user: no account to create);
#   4. curl through the gateway, `narunctl apps ls`, `narunctl logs hello`;
#   5. keeps running until Ctrl-C, then stops everything and removes what it made.
#
# Usage: scripts/demo.sh [--check]
#   --check   run steps 1-4, verify each (the answer, hello running, a log line), then stop
#             everything and exit: 0 = the whole path works (CI, the test suite)
# Environment:
#   NARUN_BIN_DIR   take narund (built with --features gateway), narunctl and hello from this
#                   directory instead of building them (cargo build --release)
#   NATS_PORT, HTTP_PORT, METRICS_PORT   loopback ports (14222, 18080, 19090)
#   NATS_SERVER_BIN nats-server binary (default: nats-server from PATH; installed with apt when missing)
#
# narund runs as root (through sudo when you are not root): it creates the app's cgroup
# and switches the app to a user of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo.sh: unknown argument ${1:?} (usage: scripts/demo.sh [--check])" >&2; exit 2 ;;
esac

if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
as_root() { "${SUDO[@]}" "$@"; }
NATS_SERVER=${NATS_SERVER_BIN:-nats-server}
MISSING=()
command -v "$NATS_SERVER" >/dev/null || MISSING+=(nats-server)
command -v curl >/dev/null || MISSING+=(curl)
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "== installing ${MISSING[*]} (apt)"
  as_root apt-get update -qq && as_root apt-get install -y -qq "${MISSING[@]}"
fi

if [ -n "${NARUN_BIN_DIR:-}" ]; then
  BIN=$NARUN_BIN_DIR
else
  command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/narun-target}"
  echo "== building narund (gateway feature), narunctl and the hello example (release)"
  cargo build --release -q -p narund --features narund/gateway -p narunctl -p hello
  BIN="$CARGO_TARGET_DIR/release"
fi
for b in narund narunctl hello; do
  [ -x "$BIN/$b" ] || { echo "demo.sh: $BIN/$b is missing (NARUN_BIN_DIR needs narund, narunctl and hello)" >&2; exit 1; }
done

NATS_PORT=${NATS_PORT:-14222}
HTTP_PORT=${HTTP_PORT:-18080}
METRICS_PORT=${METRICS_PORT:-19090}
NATS_URL="nats://127.0.0.1:$NATS_PORT"
NODE=demo
CGROUP_ROOT="narun-demo-$$"   # below the cgroup2 mount; one per demo run
# What narund creates (data dir, binary cache) must be reachable by the app's user, as
# under systemd (UMask=0022), also from a shell with a stricter umask.
umask 022
WORK=$(mktemp -d -t narun-demo.XXXXXX)
# The app runs as its own dynamic user: it must be able to reach its work dir below WORK.
chmod 0711 "$WORK"

NATS_PID=
NARUND_PID=
stop() {
  trap - EXIT INT TERM
  local code=${1:-0}
  if [ "$code" != 0 ] && [ -f "$WORK/narund.log" ]; then
    echo "== narund's last log lines ($WORK/narund.log):" >&2
    tail -n 30 "$WORK/narund.log" >&2 || true
  fi
  # narund stops its apps on SIGTERM; give it 20 s, then SIGKILL.
  if [ -n "$NARUND_PID" ]; then
    as_root kill -TERM "$NARUND_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do as_root kill -0 "$NARUND_PID" 2>/dev/null || break; sleep 0.1; done
    as_root kill -KILL "$NARUND_PID" 2>/dev/null || true
    wait "$NARUND_PID" 2>/dev/null || true
  fi
  if [ -n "$NATS_PID" ]; then
    kill -TERM "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
  fi
  # Whatever narund left in its cgroup root (nothing, normally): kill it, remove the cgroups.
  local mount root
  mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
  root="$mount/$CGROUP_ROOT"
  if [ -n "$mount" ] && [ -d "$root" ]; then
    # shellcheck disable=SC2016 # the inner shell expands $1
    as_root sh -c '
      for g in "$1"/*/; do [ -e "$g/cgroup.kill" ] && echo 1 >"$g/cgroup.kill"; done
      for _ in $(seq 1 50); do
        find "$1" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$1" ] || break
        sleep 0.1
      done' _ "$root" || true
  fi
  as_root rm -rf "$WORK"
  exit "$code"
}
trap 'stop $?' EXIT
trap 'stop 130' INT
trap 'stop 143' TERM

fail() { echo "demo.sh: $*" >&2; exit 1; }
# Print a command the way a newcomer would type it, then run it.
show() { echo; echo "\$ $*"; "$@"; }
narunctl() { "$BIN/narunctl" --nats "$NATS_URL" "$@"; }

echo "== starting nats-server (JetStream) on 127.0.0.1:$NATS_PORT"
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; then break; fi
  kill -0 "$NATS_PID" 2>/dev/null || fail "nats-server exited: $(tail -n 5 "$WORK/nats.log")"
  sleep 0.1
done

cat >"$WORK/narund.toml" <<TOML
node_id = "$NODE"
data_dir = "$WORK/data"
runtime_dir = "$WORK/run"

[nats]
url = "$NATS_URL"

[cgroup]
root = "$CGROUP_ROOT"

[logs]
stream = true          # keep log history on the server: narunctl logs --since

[gateway]
enabled = true
http_addr = "127.0.0.1:$HTTP_PORT"
metrics_addr = "127.0.0.1:$METRICS_PORT"

[[gateway.routes]]
path = "/hello/"
methods = ["GET", "POST"]
service = "hello"
TOML

echo "== starting narund (node $NODE, gateway on 127.0.0.1:$HTTP_PORT; config $WORK/narund.toml)"
"${SUDO[@]}" env "NARUND_LOG=${NARUND_LOG:-info}" "$BIN/narund" --config "$WORK/narund.toml" 2>"$WORK/narund.log" &
NARUND_PID=$!

# The node is online once its first heartbeat is in the node-runner-states bucket (a
# deploy to nodes that are not online is refused).
NODES=
UNTIL=$((SECONDS + 20))
while [ "$SECONDS" -lt "$UNTIL" ]; do
  NODES=$(narunctl --timeout 2s nodes ls 2>/dev/null || true)
  grep -Eq "^$NODE +running " <<<"$NODES" && break
  kill -0 "$NARUND_PID" 2>/dev/null || as_root kill -0 "$NARUND_PID" 2>/dev/null || fail "narund exited"
  sleep 0.1
done
grep -Eq "^$NODE +running " <<<"$NODES" || fail "node $NODE did not come online within 20 s"
echo; echo "\$ narunctl nodes ls"; echo "$NODES"

show narunctl deploy --name hello --tag v1 --node "$NODE" --wait=60s "$BIN/hello" \
  || fail "deploy --wait failed"

# The gateway learns of the service when the app registers it: a few retries at most.
echo
echo "\$ curl 'http://127.0.0.1:$HTTP_PORT/hello/world?greeting=Hi'"
ANSWER=
for _ in $(seq 1 100); do
  if ANSWER=$(curl -fsS --max-time 5 "http://127.0.0.1:$HTTP_PORT/hello/world?greeting=Hi" 2>/dev/null); then break; fi
  ANSWER=
  sleep 0.1
done
[ -n "$ANSWER" ] || fail "no answer from the gateway at http://127.0.0.1:$HTTP_PORT/hello/world"
echo "$ANSWER"
[[ $ANSWER == "Hi, world! (from hello-"* ]] || fail "unexpected answer: $ANSWER"

APPS=$(narunctl apps ls) || fail "narunctl apps ls failed"
echo; echo "\$ narunctl apps ls"; echo "$APPS"

# Who hello runs as: the first process of its instance cgroup.
CGROUP_MOUNT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
HELLO_PID=$(cat "$CGROUP_MOUNT/$CGROUP_ROOT"/narun-hello-0-*/cgroup.procs 2>/dev/null | head -n 1 || true)
if [ -n "$HELLO_PID" ]; then
  HELLO_UID=$(awk '/^Uid:/ { print $2 }' "/proc/$HELLO_PID/status")
  echo
  echo "== hello runs as uid $HELLO_UID ($(getent passwd "$HELLO_UID" >/dev/null && echo "user $(getent passwd "$HELLO_UID" | cut -d: -f1)" || echo "its own dynamic user: no account was created"))"
fi

# The log history (the narun-logs stream), then stop: bounded, also with a narunctl whose
# `logs` follows by default.
LOGS_ARGS=(logs hello --since 10m)
LOGS_HELP=$("$BIN/narunctl" logs --help)
if grep -q -- '--no-follow' <<<"$LOGS_HELP"; then LOGS_ARGS+=(--no-follow); fi
LOGS=
UNTIL=$((SECONDS + 20))
while [ "$SECONDS" -lt "$UNTIL" ]; do
  LOGS=$(timeout 5 "$BIN/narunctl" --nats "$NATS_URL" "${LOGS_ARGS[@]}" 2>&1 || true)
  grep -q 'hello-0' <<<"$LOGS" && break
  sleep 0.2
done
echo; echo "\$ narunctl ${LOGS_ARGS[*]}"; echo "$LOGS"

if [ "$CHECK" = 1 ]; then
  grep -Eq '^hello +v1 ' <<<"$APPS" || fail "apps ls does not list hello v1"
  # The counts from the JSON form (one app: its keys are hello's).
  APPS_JSON=$(narunctl apps ls --json) || fail "narunctl apps ls --json failed"
  if ! grep -q '"running": 1,\?$' <<<"$APPS_JSON" || ! grep -q '"desired_on_live_nodes": 1,\?$' <<<"$APPS_JSON"; then
    fail "apps ls --json does not show hello running 1 of 1: $APPS_JSON"
  fi
  grep -q 'hello-0' <<<"$LOGS" || fail "narunctl logs hello printed no line of hello-0"
  echo
  echo "== demo check passed"
  exit 0
fi

echo
echo "== narun is up (files in $WORK). Try:"
echo "   curl 'http://127.0.0.1:$HTTP_PORT/hello/world?greeting=Hi'"
echo "   curl -d 'some body' http://127.0.0.1:$HTTP_PORT/hello/echo"
echo "   curl http://127.0.0.1:$METRICS_PORT/metrics"
echo "   $BIN/narunctl --nats $NATS_URL nodes ls"
echo "   $BIN/narunctl --nats $NATS_URL logs hello        # follows; Ctrl-C to stop"
echo "(Ctrl-C stops the demo)"
wait "$NARUND_PID"
