#!/usr/bin/env bash
# End-to-end smoke test of the cross-built narund under qemu-user: deploy an app, then
# send it a request.
#
# For each target (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf) and each
# narund build (without and with --features gateway):
#
#   1. a native nats-server with JetStream (one for the whole run);
#   2. the cross-built narund, started through qemu-user (qemu-aarch64-static /
#      qemu-arm-static with -L pointing at Debian's cross sysroot);
#   3. the native narunctl deploys the cross-built examples/hello to that node
#      (narunctl reads the ELF header: the object is hello-<tag>-linux-arm64 / -arm, the
#      one narund picks for its own architecture); narund downloads it, verifies the
#      SHA-256, creates the instance cgroup and starts it as user `nobody`;
#   4. without gateway: `narunctl request <app> /hello/smoke` must answer
#      "Hello, smoke! (from <app>-0)"; with gateway: the same through
#      `curl http://<gateway>/hello/smoke` (narund's embedded gateway, route /hello/);
#   5. the node's heartbeat (`narunctl nodes info`) is printed: it shows which fallbacks
#      narund took under emulation (io_uring, cgroup layout);
#   6. `narunctl apps delete` must stop the instance (requests then fail), and SIGTERM
#      must stop narund with exit status 0.
#
# How apps run: narund (an emulated process) starts the app with a plain fork+execve.
# qemu-user passes execve to the host kernel, which cannot run an arm64/arm ELF on its
# own. Build machines usually have no binfmt_misc registration for qemu, and registering
# one system-wide would change how the whole host runs foreign binaries. So each narund
# runs in its own user + mount namespace with a private binfmt_misc instance (Linux >=
# 6.7 gives every user namespace its own binfmt_misc) in which the target's ELF magic is
# registered to a wrapper `qemu-<arch>-static -L <sysroot>`. The namespace maps uids
# and gids 0-65535 onto themselves, so root stays root (cgroups, setuid) and apps run
# as `nobody` as on a device. Nothing outside the namespace changes.
#
# Builds are debug builds, exactly the ones scripts/packaging/cross-check.sh makes (run
# after it, nothing is rebuilt). hello is stripped before the upload (a debug build is
# ~100 MB with debug info; stripped ~15 MB).
#
# Usage: scripts/packaging/qemu-smoke.sh          (CROSS_TARGETS and SMOKE_FEATURES
#        narrow the matrix: SMOKE_FEATURES="default" or "gateway")
# Exit status: 0 = every case passed, 1 = a case failed (named), 2 = the machine cannot
# run the test (no user namespaces or no namespaced binfmt_misc; the reason is printed).
set -euo pipefail

cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
TARGETS=${CROSS_TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
FEATURES=${SMOKE_FEATURES:-"default gateway"}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Generous: everything below runs under instruction emulation on a shared machine.
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-180}
failures=0
start_all=$(date +%s)

log() { printf '[qemu-smoke] %s\n' "$*"; }
fail() { printf '[qemu-smoke] FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
elapsed() { echo $(($(date +%s) - $1)); }

# --- prerequisites -----------------------------------------------------------------
need_pkgs=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_pkgs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v qemu-arm-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v nats-server >/dev/null || need_pkgs+=(nats-server)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
for t in $TARGETS; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done

WORK=$(mktemp -d /tmp/narun-qemu-smoke.XXXXXX)
chmod 755 "$WORK" # apps run as nobody and must reach their binaries below data_dir
NATS_PID=""
NARUND_PID=""
CGROUP_NAME="narun-qemu-smoke-$$"
cleanup() {
    local rc=$?
    set +e
    [ -n "$NARUND_PID" ] && kill -KILL "$NARUND_PID" 2>/dev/null
    [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null && wait "$NATS_PID" 2>/dev/null
    # App cgroups narund did not remove (only after a failure): kill and remove them.
    local cg
    for cg in /sys/fs/cgroup/unified/"$CGROUP_NAME" /sys/fs/cgroup/"$CGROUP_NAME"; do
        [ -d "$cg" ] || continue
        find "$cg" -depth -type d | while read -r d; do
            [ -w "$d/cgroup.kill" ] && echo 1 >"$d/cgroup.kill" 2>/dev/null
            rmdir "$d" 2>/dev/null || true
        done
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# Probe: a user namespace with its own binfmt_misc (see the header).
if ! probe=$(unshare --user --map-root-user --mount --propagation private -- \
    sh -c 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && test -w /proc/sys/fs/binfmt_misc/register && echo ok' 2>&1) ||
    [ "$probe" != ok ]; then
    log "cannot run apps under qemu here: a user namespace with its own binfmt_misc is needed"
    log "(Linux >= 6.7, unprivileged user namespaces allowed, mount permitted): $probe"
    exit 2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- builds (debug; the same commands as cross-check.sh, so its artifacts are reused) --
t0=$(date +%s)
log "building native narunctl"
cargo build --locked -q -p narunctl
NARUNCTL="$TARGET_DIR/debug/narunctl"
for t in $TARGETS; do
    mkdir -p "$WORK/bin/$t"
    log "building $t: hello, narund, narund --features gateway"
    nice cargo build --locked -q -p hello --target "$t"
    case "$t" in
        aarch64-unknown-linux-gnu) strip=aarch64-linux-gnu-strip ;;
        armv7-unknown-linux-gnueabihf) strip=arm-linux-gnueabihf-strip ;;
    esac
    "$strip" -o "$WORK/bin/$t/hello" "$TARGET_DIR/$t/debug/hello"
    for feat in $FEATURES; do
        if [ "$feat" = gateway ]; then
            nice cargo build --locked -q -p narund --features gateway --target "$t"
        else
            nice cargo build --locked -q -p narund --target "$t"
        fi
        cp "$TARGET_DIR/$t/debug/narund" "$WORK/bin/$t/narund-$feat"
    done
done
log "builds took $(elapsed "$t0") s"

# --- NATS --------------------------------------------------------------------------
NATS_PORT=$(free_port)
mkdir -p "$WORK/js"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
NATS_URL="nats://127.0.0.1:$NATS_PORT"
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
ctl() { "$NARUNCTL" --nats "$NATS_URL" --timeout 10s "$@"; }

# Runs the narund binary $1 for target $2 under qemu, in a user + mount namespace with
# binfmt_misc for the target's ELF files (see the header). Sets NARUND_PID.
start_narund() {
    local bin=$1 t=$2 conf=$3 logf=$4 qemu sysroot magic mask wrapper
    case "$t" in
        aarch64-unknown-linux-gnu)
            qemu=qemu-aarch64-static sysroot=/usr/aarch64-linux-gnu
            magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
            mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
        armv7-unknown-linux-gnueabihf)
            qemu=qemu-arm-static sysroot=/usr/arm-linux-gnueabihf
            magic='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
            mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
    esac
    wrapper="$WORK/$qemu-wrapper"
    printf '#!/bin/sh\nexec %s -L %s "$@"\n' "$(command -v "$qemu")" "$sysroot" >"$wrapper"
    chmod 755 "$wrapper"
    rm -f "$WORK/go"
    mkfifo "$WORK/go"
    # The namespace's uid/gid maps are written from here (we are root outside), then the
    # fifo lets the inner shell continue.
    # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
    unshare --user --mount --propagation private -- bash -c '
        read -r _ <"$1"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        printf ":narun-smoke:M::%s:%s:%s:\n" "$2" "$3" "$4" >/proc/sys/fs/binfmt_misc/register
        NO_COLOR=1 exec "$5" -L "$6" "$7" --config "$8"
    ' smoke "$WORK/go" "$magic" "$mask" "$wrapper" "$(command -v "$qemu")" "$sysroot" "$bin" "$conf" \
        >"$logf" 2>&1 &
    NARUND_PID=$!
    local own
    own=$(readlink /proc/self/ns/user)
    for _ in $(seq 100); do
        [ "$(readlink "/proc/$NARUND_PID/ns/user" 2>/dev/null)" != "$own" ] && break
        sleep 0.05
    done
    echo '0 0 65536' >"/proc/$NARUND_PID/uid_map"
    echo '0 0 65536' >"/proc/$NARUND_PID/gid_map"
    echo go >"$WORK/go"
}

# Polls `$@` (a command) every second until it succeeds or $READY_TIMEOUT passes.
until_ok() {
    local deadline=$(($(date +%s) + READY_TIMEOUT))
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        if [ -n "$NARUND_PID" ] && ! kill -0 "$NARUND_PID" 2>/dev/null; then return 1; fi
        sleep 1
    done
}

expect_reply() { # expect_reply APP: narunctl request answers the greeting from APP-0
    local out
    out=$(ctl request "$1" /hello/smoke 2>/dev/null) || return 1
    grep -q "Hello, smoke! (from $1-0)" <<<"$out"
}
expect_gateway() { # expect_gateway PORT APP
    local out
    out=$(curl -fsS --max-time 10 "http://127.0.0.1:$1/hello/smoke") || return 1
    grep -q "Hello, smoke! (from $2-0)" <<<"$out"
}
request_fails() { ! ctl --timeout 3s request "$1" /hello/smoke >/dev/null 2>&1; }

run_case() {
    local t=$1 feat=$2 arch app node conf data http_port metrics_port rc t_case t_step
    case "$t" in aarch64-*) arch=arm64 ;; armv7-*) arch=arm ;; esac
    app="hello-$arch-$feat" node="smoke-$arch-$feat"
    data="$WORK/$node"
    mkdir -p "$data"
    chmod 755 "$data"
    conf="$data/narund.toml"
    cat >"$conf" <<EOF
node_id = "$node"
data_dir = "$data/data"
runtime_dir = "$data/run"
[nats]
url = "$NATS_URL"
[apps]
default_user = "nobody"
[cgroup]
root = "$CGROUP_NAME/$node"
EOF
    if [ "$feat" = gateway ]; then
        http_port=$(free_port) metrics_port=$(free_port)
        cat >>"$conf" <<EOF
[gateway]
enabled = true
http_addr = "127.0.0.1:$http_port"
metrics_addr = "127.0.0.1:$metrics_port"
[[gateway.routes]]
path = "/hello/"
service = "$app"
EOF
    fi
    t_case=$(date +%s)
    log "=== $t / narund $feat: node $node, app $app"
    start_narund "$WORK/bin/$t/narund-$feat" "$t" "$conf" "$data/narund.log"

    t_step=$(date +%s)
    if ! ctl deploy --name "$app" --tag smoke --node "$node" "$WORK/bin/$t/hello" >"$data/deploy.log" 2>&1; then
        fail "$t/$feat: narunctl deploy failed: $(tr '\n' ' ' <"$data/deploy.log")"
    fi
    local ok=1
    if [ "$feat" = gateway ]; then
        until_ok expect_gateway "$http_port" "$app" || ok=0
        [ $ok = 1 ] && log "$t/$feat: curl through narund's gateway answered after $(elapsed "$t_step") s:" &&
            curl -fsS --max-time 10 "http://127.0.0.1:$http_port/hello/smoke" | sed 's/^/    /'
        # The embedded gateway's own readiness endpoint, too.
        curl -fsS --max-time 10 "http://127.0.0.1:$metrics_port/readyz" >/dev/null ||
            fail "$t/$feat: gateway /readyz did not answer 200"
    else
        until_ok expect_reply "$app" || ok=0
        [ $ok = 1 ] && log "$t/$feat: narunctl request answered after $(elapsed "$t_step") s:" &&
            ctl request "$app" /hello/smoke | sed 's/^/    /'
    fi
    if [ $ok = 0 ]; then
        fail "$t/$feat: no answer from $app within ${READY_TIMEOUT} s (narund log follows)"
        tail -n 40 "$data/narund.log" | sed 's/^/    /' >&2
    fi
    # What narund reports about itself under emulation (fallbacks included), and where
    # the instance runs: its own cgroup below the configured root, as user nobody.
    local pid
    pid=$(ctl nodes info "$node" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("    node:", {k: s.get(k) for k in ("status", "arch", "cgroup_layout", "io_uring")},
      "instances:", [(i.get("instance_id"), i.get("status")) for i in s.get("instances", [])], file=sys.stderr)
print(next((i["pid"] for i in s.get("instances", []) if i.get("pid")), ""))') ||
        fail "$t/$feat: narunctl nodes info $node failed"
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
        local uid cg
        uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
        cg=$(grep '^0::' "/proc/$pid/cgroup" | cut -d: -f3)
        log "$t/$feat: instance pid $pid uid $uid cgroup $cg: $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-120)"
        [ "$uid" = 65534 ] || fail "$t/$feat: instance runs as uid $uid, expected nobody (65534)"
        case "$cg" in */"$CGROUP_NAME/$node"/*) ;; *) fail "$t/$feat: instance cgroup $cg is not below $CGROUP_NAME/$node" ;; esac
    elif [ $ok = 1 ]; then
        fail "$t/$feat: the heartbeat shows no live instance pid"
    fi
    grep -iE "io_uring|uring|fallback" "$data/narund.log" | head -n 3 | sed 's/^/    narund log: /' || true

    # Delete the app: narund stops the instance.
    t_step=$(date +%s)
    ctl apps delete "$app" -y >/dev/null || fail "$t/$feat: apps delete failed"
    if until_ok request_fails "$app"; then
        log "$t/$feat: instance stopped $(elapsed "$t_step") s after the delete"
    else
        fail "$t/$feat: $app still answers after the delete"
    fi

    # SIGTERM: narund exits 0.
    kill -TERM "$NARUND_PID"
    local waited=0
    while kill -0 "$NARUND_PID" 2>/dev/null && [ $waited -lt 300 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    set +e
    if kill -0 "$NARUND_PID" 2>/dev/null; then
        fail "$t/$feat: narund still running 30 s after SIGTERM"
        kill -KILL "$NARUND_PID"
        wait "$NARUND_PID" 2>/dev/null
    else
        wait "$NARUND_PID"
        rc=$?
        [ $rc -eq 0 ] || fail "$t/$feat: narund exited with status $rc after SIGTERM"
    fi
    set -e
    NARUND_PID=""
    log "$t/$feat: case took $(elapsed "$t_case") s"
}

for t in $TARGETS; do
    for feat in $FEATURES; do
        run_case "$t" "$feat"
    done
done

log "total $(elapsed "$start_all") s"
if [ $failures -ne 0 ]; then
    log "$failures check(s) FAILED"
    exit 1
fi
log "all cases passed"
