//! Crash → restarted latency of narund above its announced backoff, side by side with the
//! floor (a plain loop restarting the same binary), and how late status events are.
//!
//! ```text
//! cargo run --release -p narund --example restart_bench [-- [--rounds <n>] [--restarts <n>]]
//! ```
//! A fresh, real nats-server (narun-test-support) and two real release `narund` processes
//! (default features): one starting apps with `clone3(CLONE_INTO_CGROUP)` (the default),
//! one forced onto the `fork` + `cgroup.procs` fallback (`NARUND_SPAWN=fork`). The app is
//! this bench's own executable: started with `RESTART_BENCH_SOCK` set, it sends its pid and
//! `CLOCK_MONOTONIC` (the first thing its `main` does) to the bench's unix socket and exits
//! with status 1 (a crash). So "running" is the app's own first instruction, and "crash"
//! is its last.
//!
//! Variants, in alternating rounds (`--rounds`, default 3, of `--restarts` restarts, default
//! 10, each: ≥ 30 restarts per variant):
//! * `floor`: a loop in this process that spawns the same binary (std `Command`), waits for
//!   it, sleeps 100 ms and spawns it again; latency = next start − crash − sleep;
//! * `narund clone3` and `narund fork`: the app deployed with `restart = "on-failure"` and
//!   no start limit; latency = next start − crash − the backoff narund announced for that
//!   restart (`backoff` event: "restart N in X ms").
//!
//! Printed per variant: median and p90 latency above the backoff (or the floor's sleep), and
//! the CPU per restart: narund's (all its threads, `/proc/<pid>/task/*/schedstat`) for the
//! narund variants, the spawning thread's for the floor; the app's own CPU is in neither.
//! Then the status-event delays measured on the same runs, from the moment the event is
//! about to the moment the bench receives it from NATS: `running` (from the app's first
//! instruction; it waits for the run's record on disk), `crashed` (from the app's exit),
//! and `failed` with reason `start-limit` (from the crash that decides it; `--restarts`
//! deployments with `startLimitBurst = 3`).
//!
//! narund runs as the invoking user (root: cgroups) with cgroup roots
//! `narun-bench-restart-<pid>-<variant>` (removed at the end).
//!
//! `RESTART_BENCH_BASELINE=<path>` adds a node `baseline` running that narund binary (e.g. a
//! release build of the main branch, unchanged otherwise: clone3), measured in the same
//! alternating rounds: a before/after comparison under the same load.

use futures_util::StreamExt;
use narun_test_support::{NatsServer, workspace_bin};
use narun_wire::events::StatusEvent;
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `CLOCK_MONOTONIC` in ns (the clock of the app's timestamps and the bench's receipts).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The app: report the start, crash.
fn app(sock: &str) -> ! {
    let t = mono_ns();
    if let Ok(s) = UnixDatagram::unbound() {
        let _ = s.send_to(format!("{} {t}", std::process::id()).as_bytes(), sock);
    }
    std::process::exit(1)
}

/// Nanoseconds on CPU of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Nanoseconds on CPU of the calling thread.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// App starts as the bench receives them: `(pid, CLOCK_MONOTONIC ns)`.
struct Starts {
    sock: PathBuf,
    rx: tokio::sync::mpsc::UnboundedReceiver<(u32, u64)>,
}

impl Starts {
    fn bind(dir: &Path, name: &str) -> anyhow::Result<Starts> {
        use std::os::unix::fs::PermissionsExt;
        let sock = dir.join(format!("{name}.sock"));
        let s = UnixDatagram::bind(&sock)?;
        // The app runs as `nobody`.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                let mut w = text.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
                if tx
                    .send((w.next().unwrap_or(0) as u32, w.next().unwrap_or(0)))
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Starts { sock, rx })
    }

    async fn next(&mut self) -> anyhow::Result<(u32, u64)> {
        tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no app start within 60 s"))?
            .ok_or_else(|| anyhow::anyhow!("socket closed"))
    }

    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// Status events of one app as they arrive, with `CLOCK_MONOTONIC` of the receipt.
type Events = Arc<Mutex<Vec<(u64, StatusEvent)>>>;

async fn subscribe(client: &async_nats::Client, app: &str, node: &str) -> anyhow::Result<Events> {
    let mut sub = client.subscribe(names::status_subject(app, node)).await?;
    let events: Events = Default::default();
    let out = events.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let t = mono_ns();
            if let Ok(ev) = serde_json::from_slice::<StatusEvent>(&m.payload) {
                out.lock().unwrap().push((t, ev));
            }
        }
    });
    Ok(events)
}

/// One narund of the bench.
struct Node {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    _dir: tempfile::TempDir,
}

fn cgroup_root(variant: &str) -> String {
    format!("narun-bench-restart-{}-{variant}", std::process::id())
}

fn start_narund(
    bin: &Path,
    server: &NatsServer,
    name: &'static str,
    fork: bool,
) -> anyhow::Result<Node> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let conf = dir.path().join("narund.toml");
    let toml = narun_test_support::narund_toml(
        name,
        &dir.path().join("data"),
        &server.url(),
        &cgroup_root(name),
        "restart_backoff_max_sec = 1",
    );
    std::fs::write(&conf, toml)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--config")
        .arg(&conf)
        .env("NARUND_LOG", "warn")
        .kill_on_drop(true);
    if fork {
        cmd.env("NARUND_SPAWN", "fork");
    }
    let child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    Ok(Node {
        name,
        child,
        pid,
        _dir: dir,
    })
}

fn spec(app: &str, node: &str, sock: &Path, round: usize, burst: u32) -> serde_json::Value {
    serde_json::json!({
        "name": app, "tag": "v1",
        "nodes": [{"name": node, "replicas": 1}],
        "restart": "on-failure",
        "startLimitBurst": burst.max(1),
        "startLimitIntervalSec": if burst == 0 { 0 } else { 60 },
        "env": [{"name": "RESTART_BENCH_SOCK", "value": sock.display().to_string()},
                {"name": "ROUND", "value": round.to_string()}],
    })
}

/// The `X` of "restart N in X ms".
fn announced_ms(ev: &StatusEvent) -> Option<u64> {
    let rest = ev.error.split(" in ").nth(1)?;
    rest.strip_suffix(" ms")?.parse().ok()
}

#[derive(Default)]
struct Figures {
    /// Latency above the backoff, ns.
    above: Vec<u64>,
    /// CPU per restart, ns.
    cpu: Vec<u64>,
    /// `running` event delay after the app's first instruction, ns.
    running: Vec<u64>,
    /// `crashed` event delay after the app's exit, ns.
    crashed: Vec<u64>,
    /// `failed` (start-limit) event delay after the deciding crash, ns.
    failed: Vec<u64>,
}

/// One round of `restarts` restarts of `app` on `node`.
#[allow(clippy::too_many_arguments)]
async fn narund_round(
    b: &narun_test_support::Buckets,
    node: &Node,
    app: &str,
    starts: &mut Starts,
    events: &Events,
    round: usize,
    restarts: usize,
    f: &mut Figures,
) -> anyhow::Result<()> {
    starts.drain();
    events.lock().unwrap().clear();
    b.put_spec(app, &spec(app, node.name, &starts.sock, round, 0))
        .await;
    // CPU from the first start on: the restarts, not the deployment (download, hash).
    let mut t = vec![starts.next().await?];
    let cpu0 = cpu_ns(node.pid);
    for _ in 0..restarts {
        t.push(starts.next().await?);
    }
    let cpu = cpu_ns(node.pid) - cpu0;
    b.configs.delete(app).await?;
    // Until the instance stopped (its events are all in).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = events
            .lock()
            .unwrap()
            .iter()
            .any(|(_, e)| e.status == InstanceStatus::Stopped);
        if done {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{app} did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ev = events.lock().unwrap().clone();
    let by_status = |st: InstanceStatus| -> Vec<(u64, StatusEvent)> {
        ev.iter().filter(|(_, e)| e.status == st).cloned().collect()
    };
    let backoffs = by_status(InstanceStatus::Backoff);
    let running = by_status(InstanceStatus::Running);
    let crashed = by_status(InstanceStatus::Crashed);
    for i in 0..restarts {
        let crash = t[i].1;
        let next = t[i + 1].1;
        let Some(ms) = backoffs.get(i).and_then(|(_, e)| announced_ms(e)) else {
            anyhow::bail!("no backoff event for restart {}", i + 1);
        };
        f.above.push((next - crash).saturating_sub(ms * 1_000_000));
    }
    for (i, (at, e)) in running.iter().enumerate() {
        if let Some((pid, t0)) = t.get(i)
            && e.pid == Some(*pid as i32)
        {
            f.running.push(at.saturating_sub(*t0));
        }
    }
    for (i, (at, _)) in crashed.iter().enumerate() {
        if let Some((_, t0)) = t.get(i) {
            f.crashed.push(at.saturating_sub(*t0));
        }
    }
    f.cpu.push(cpu / restarts as u64);
    Ok(())
}

/// Deploy `app` with a start limit of 3 and measure the `failed` event after the third crash.
async fn start_limit_round(
    b: &narun_test_support::Buckets,
    node: &Node,
    app: &str,
    starts: &mut Starts,
    events: &Events,
    round: usize,
    f: &mut Figures,
) -> anyhow::Result<()> {
    starts.drain();
    events.lock().unwrap().clear();
    b.put_spec(app, &spec(app, node.name, &starts.sock, 1000 + round, 3))
        .await;
    let mut last = 0;
    for _ in 0..3 {
        last = starts.next().await?.1;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed = events
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| e.status == InstanceStatus::Failed)
            .map(|(t, _)| *t);
        if let Some(t) = failed {
            f.failed.push(t.saturating_sub(last));
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{app} did not fail");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.configs.delete(app).await?;
    Ok(())
}

/// The floor: spawn, wait, sleep 100 ms, `restarts` times.
fn floor_round(
    bin: &Path,
    starts: &mut Starts,
    restarts: usize,
    f: &mut Figures,
) -> anyhow::Result<()> {
    starts.drain();
    let sleep = Duration::from_millis(100);
    let mut crashes = Vec::new();
    let cpu0 = thread_cpu_ns();
    let spawn = || -> anyhow::Result<()> {
        let st = std::process::Command::new(bin)
            .env_clear()
            .env("RESTART_BENCH_SOCK", &starts.sock)
            .status()?;
        anyhow::ensure!(st.code() == Some(1), "app exited with {st}");
        Ok(())
    };
    for i in 0..=restarts {
        spawn()?;
        if i < restarts {
            std::thread::sleep(sleep);
        }
    }
    let cpu = thread_cpu_ns() - cpu0;
    for _ in 0..=restarts {
        match starts.rx.try_recv() {
            Ok(s) => crashes.push(s.1),
            Err(_) => anyhow::bail!("a start of the floor was not reported"),
        }
    }
    for w in crashes.windows(2) {
        f.above
            .push((w[1] - w[0]).saturating_sub(sleep.as_nanos() as u64));
    }
    f.cpu.push(cpu / restarts as u64);
    Ok(())
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i] as f64 / 1e6
}

fn arg(name: &str, default: usize) -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{name} needs a number")),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    if let Some(sock) = std::env::var_os("RESTART_BENCH_SOCK") {
        app(&sock.to_string_lossy());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(run());
    for v in ["clone3", "fork", "baseline"] {
        narun_test_support::kill_and_remove_cgroups(
            &narun_test_support::cgroup2_mount().join(cgroup_root(v)),
        );
    }
    result
}

async fn run() -> anyhow::Result<()> {
    let rounds = arg("--rounds", 3)?;
    let restarts = arg("--restarts", 10)?.max(1);
    let bin = workspace_bin("narund", "narund", &[]);
    let me = std::env::current_exe()?;
    let server = NatsServer::start();
    let b = narun_test_support::buckets(&server).await;
    let client = server.connect().await;
    let dir = tempfile::tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let image = std::fs::read(&me)?;
    let mut nodes = Vec::new();
    // RESTART_BENCH_BASELINE=<path of another narund build>: a third node runs that binary
    // (clone3), in the same alternating rounds: a before/after comparison in one run.
    let baseline = std::env::var_os("RESTART_BENCH_BASELINE").map(PathBuf::from);
    let mut variants = vec![("clone3", false, bin.clone()), ("fork", true, bin.clone())];
    if let Some(b) = baseline {
        variants.push(("baseline", false, b));
    }
    for (name, fork, bin) in variants {
        let node = start_narund(&bin, &server, name, fork)?;
        let app = format!("crash-{name}");
        b.upload(&app, "v1", &image).await;
        let events = subscribe(&client, &app, name).await?;
        let starts = Starts::bind(dir.path(), name)?;
        nodes.push((node, app, events, starts, Figures::default()));
    }
    let mut floor_starts = Starts::bind(dir.path(), "floor")?;
    let mut floor = Figures::default();
    for round in 0..rounds {
        floor_round(&me, &mut floor_starts, restarts, &mut floor)?;
        eprintln!(
            "round {round} floor: median {:.2} ms above the sleep",
            pct(&floor.above, 0.5)
        );
        for (node, app, events, starts, f) in nodes.iter_mut() {
            narund_round(&b, node, app, starts, events, round, restarts, f).await?;
            eprintln!(
                "round {round} narund {}: median {:.2} ms above the backoff",
                node.name,
                pct(&f.above, 0.5)
            );
        }
    }
    for round in 0..restarts.min(10) {
        for (node, app, events, starts, f) in nodes.iter_mut() {
            start_limit_round(&b, node, app, starts, events, round, f).await?;
        }
    }
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11}",
        "variant",
        "restarts",
        "median",
        "p90",
        "cpu/restart",
        "running ev",
        "crashed ev",
        "failed ev"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:<16} {:>9} {:>6.2} ms {:>6.2} ms {:>8.2} ms {:>8.2} ms {:>8.2} ms {:>8.2} ms",
            name,
            f.above.len(),
            pct(&f.above, 0.5),
            pct(&f.above, 0.9),
            pct(&f.cpu, 0.5),
            pct(&f.running, 0.5),
            pct(&f.crashed, 0.5),
            pct(&f.failed, 0.5),
        );
    };
    row("floor (loop)", &floor);
    for (node, _, _, _, f) in &nodes {
        row(&format!("narund {}", node.name), f);
    }
    println!(
        "(median/p90: crash → next start above the announced backoff, or the floor's 100 ms sleep; \
         event columns: medians of the delay from the transition to the bench receiving the event; \
         failed = start-limit over {} deployments)",
        restarts.min(10)
    );
    for (mut node, ..) in nodes {
        let _ = node.child.start_kill();
        let _ = node.child.wait().await;
    }
    Ok(())
}
