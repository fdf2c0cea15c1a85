#!/usr/bin/env python3
"""narund's memory while clients trickle large bodies to its gateway (issue 18).

Starts a nats-server and a narund (built with the `gateway` feature) on free loopback
ports, then N clients each POST a body of SIZE bytes: all but the last 1000 bytes at once,
then one byte per second, so every body stays in flight. Prints narund's peak RSS
(VmHWM), the answers the clients got, and the gateway's budget gauge; once with the
default memory budget, once with the budget and in-flight limit out of the way
(`memory_budget_bytes` = 4 GiB), alternating ROUNDS times, medians.

    sudo scripts/gateway-flood-rss.py target/release/narund [N] [SIZE] [ROUNDS]

Needs root (narund manages a cgroup) and `nats-server` on PATH.
"""
import os, socket, statistics, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def vm(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def metric(port, name):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_listening(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def wait_ready(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
            if s.recv(12)[9:12] == b"200":
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("the gateway did not get ready (NATS connection)")


def round_(narund, n, size, limits):
    tmp = tempfile.mkdtemp()
    nats_port, http_port, metrics_port = free_port(), free_port(), free_port()
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js",
                             "-sd", f"{tmp}/js"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_listening(nats_port)
    conf = f"""node_id = "rss"
data_dir = "{tmp}/data"
runtime_dir = "{tmp}/data/run"
[nats]
url = "nats://127.0.0.1:{nats_port}"
[cgroup]
root = "narun-rss-{os.getpid()}"
[gateway]
enabled = true
http_addr = "127.0.0.1:{http_port}"
metrics_addr = "127.0.0.1:{metrics_port}"
{limits}
[[gateway.routes]]
path = "/up/"
service = "up"
"""
    open(f"{tmp}/narund.toml", "w").write(conf)
    d = subprocess.Popen([narund, "--config", f"{tmp}/narund.toml"],
                         env={**os.environ, "NARUND_LOG": "warn"})
    try:
        wait_listening(http_port)
        wait_ready(metrics_port)
        base = vm(d.pid, "VmRSS")
        socks = []
        head = f"POST /up/x HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
        body = b"b" * (size - 1000)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", http_port), timeout=30)
            s.sendall(head)
            socks.append(s)
        for s in socks:
            try:
                s.sendall(body)
            except OSError:
                pass  # answered and closed already (503)
        time.sleep(3)  # let the gateway read what it will (the measurement, not a sync)
        for s in socks:
            try:
                s.sendall(b"b")
            except OSError:
                pass
        time.sleep(1)
        peak = vm(d.pid, "VmHWM")
        used = metric(metrics_port, "gateway_memory_budget_used_bytes")
        answers = {}
        for s in socks:
            s.setblocking(False)
            try:
                a = s.recv(12)[9:12].decode() or "closed"
            except BlockingIOError:
                a = "pending"
            except OSError:
                a = "reset"
            answers[a] = answers.get(a, 0) + 1
            s.close()
        return base, peak, used, answers
    finally:
        d.terminate()
        d.wait()
        nats.terminate()
        nats.wait()


def main():
    narund = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 900_000
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    configs = {"default limits": "",
               "no budget": "memory_budget_bytes = 4294967296\nmax_inflight_requests = 100000\n"}
    peaks = {k: [] for k in configs}
    for r in range(rounds):
        for name, limits in configs.items():
            base, peak, used, answers = round_(narund, n, size, limits)
            peaks[name].append(peak)
            print(f"round {r + 1} {name:15} RSS before {base / 1024:6.1f} MiB, peak "
                  f"{peak / 1024:6.1f} MiB, budget in use {used / 2**20:6.1f} MiB, "
                  f"answers {answers}", flush=True)
    for name, p in peaks.items():
        print(f"median peak RSS, {name}: {statistics.median(p) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
