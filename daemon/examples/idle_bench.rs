//! What an idle narund costs: CPU and wake-ups of narund processes that have nothing to do,
//! this build side by side with a baseline build, in the same run.
//!
//! ```text
//! cargo build --release -p narund            # in a checkout of the baseline; copy its narund
//! cargo run --release -p narund --example idle_bench -- --baseline /path/to/baseline/narund \
//!     [--secs 180] [--windows 6] [--apps 0,10]
//! ```
//!
//! One real nats-server (JetStream). For every count of apps in `--apps` and for both
//! binaries, a real narund process (its own node id, data dir and cgroup root; log level
//! `error`) with that many idle apps (this machine's `sleep 100000`, one spec per app, one
//! replica on that node): all of them run **at the same time**, so whatever else the machine
//! does hits both builds alike. Once every node's heartbeat shows its apps running, and after
//! a settle of `--settle` seconds, the bench samples each narund over `--secs` seconds cut into
//! `--windows` windows:
//!
//! * **CPU, total**: user + system time of the process (`/proc/<pid>/stat`, dead threads
//!   included) over the whole measurement, in % of one core;
//! * **CPU, median window**: the run time of its threads (`/proc/<pid>/task/*/schedstat`, ns
//!   resolution) per window, the median window in % of one core;
//! * **wake-ups/s**: voluntary context switches of its threads (`/proc/<pid>/task/*/status`:
//!   each is a thread going to sleep, so one wake-up later) per second over the whole
//!   measurement;
//! * the threads it runs at the end.
//!
//! narund runs as the invoking user (root), its apps as `nobody`; every cgroup the bench
//! creates is removed at the end (the `Narund` harness of `narun-test-support`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use narun_test_support::{Narund, NatsServer, buckets, heartbeat, workspace_bin};
use narun_wire::status::InstanceStatus;
use serde_json::json;

struct Args {
    baseline: PathBuf,
    secs: u64,
    windows: u32,
    settle: u64,
    apps: Vec<usize>,
}

fn args() -> anyhow::Result<Args> {
    let usage = "usage: idle_bench --baseline NARUND [--secs 180] [--windows 6] [--settle 15] [--apps 0,10]";
    let mut baseline = None;
    let mut a = Args {
        baseline: PathBuf::new(),
        secs: 180,
        windows: 6,
        settle: 15,
        apps: vec![0, 10],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{arg} needs a value; {usage}"));
        match arg.as_str() {
            "--baseline" => baseline = Some(PathBuf::from(value?)),
            "--secs" => a.secs = value?.parse()?,
            "--windows" => a.windows = value?.parse()?,
            "--settle" => a.settle = value?.parse()?,
            "--apps" => {
                a.apps = value?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--apps: {e}; {usage}"))?
            }
            other => anyhow::bail!("unknown argument {other:?}; {usage}"),
        }
    }
    a.baseline = baseline.ok_or_else(|| anyhow::anyhow!("--baseline is required; {usage}"))?;
    anyhow::ensure!(
        a.baseline.is_file(),
        "--baseline {}: no such file",
        a.baseline.display()
    );
    anyhow::ensure!(
        a.windows > 0 && a.secs >= u64::from(a.windows),
        "--secs must be at least --windows"
    );
    Ok(a)
}

/// User + system CPU time of `pid`, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
fn cpu_ticks(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    tick(11) + tick(12)
}

/// The live threads of `pid`: their run time in ns, voluntary context switches, count.
fn threads(pid: i32) -> (u64, u64, usize) {
    let (mut run, mut switches, mut n) = (0, 0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0, 0);
    };
    for t in dir.flatten() {
        let p = t.path();
        let Ok(sched) = std::fs::read_to_string(p.join("schedstat")) else {
            continue;
        };
        n += 1;
        run += sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (run, switches, n)
}

struct Sample {
    at: Instant,
    ticks: u64,
    run_ns: u64,
    switches: u64,
    threads: usize,
}

fn sample(pid: i32) -> Sample {
    let (run_ns, switches, threads) = threads(pid);
    Sample {
        at: Instant::now(),
        ticks: cpu_ticks(pid),
        run_ns,
        switches,
        threads,
    }
}

/// One narund of the run.
struct Subject {
    build: &'static str,
    apps: usize,
    narund: Narund,
    samples: Vec<Sample>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let candidate = workspace_bin("narund", "narund", &[]);
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("no sleep binary in /usr/bin or /bin"))?;
    let sleep = std::fs::read(sleep)?;

    let mut subjects = Vec::new();
    for &apps in &args.apps {
        for (build, bin) in [("baseline", &args.baseline), ("this", &candidate)] {
            let node = format!("idle-{build}-{apps}");
            let narund = Narund::builder(&server, &node)
                .binary(bin.clone())
                .env("NARUND_LOG", "error")
                .start();
            for j in 0..apps {
                let name = format!("idle-{build}-{apps}-{j}");
                b.upload(&name, "v1", &sleep).await;
                let spec = json!({
                    "name": name, "tag": "v1", "args": ["100000"],
                    "nodes": [{"name": node, "replicas": 1}],
                });
                b.put_spec(&name, &spec).await;
            }
            subjects.push(Subject {
                build,
                apps,
                narund,
                samples: Vec::new(),
            });
        }
    }
    for s in &subjects {
        let node = format!("idle-{}-{}", s.build, s.apps);
        let mut watch = b.states.watch_with_history(&node).await?;
        let want = s.apps;
        heartbeat(
            &mut watch,
            &format!("{want} apps running on {node}"),
            |st| {
                st.instances
                    .iter()
                    .filter(|i| i.status == InstanceStatus::Running)
                    .count()
                    == want
            },
        )
        .await;
    }
    eprintln!(
        "{} narunds up with their apps; settling {} s, then measuring {} s",
        subjects.len(),
        args.settle,
        args.secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let window = Duration::from_secs(args.secs) / args.windows;
    let server_pid = server.pid().map(|p| p as i32);
    let server_ticks0 = server_pid.map(cpu_ticks).unwrap_or(0);
    let started = Instant::now();
    for i in 0..=args.windows {
        if i > 0 {
            tokio::time::sleep_until((started + window * i).into()).await;
        }
        for s in &mut subjects {
            s.samples.push(sample(s.narund.pid()));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_ticks = server_pid.map(cpu_ticks).unwrap_or(0) - server_ticks0;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    println!(
        "idle narund, {} s in {} windows, one nats-server; load average at the end: {}",
        args.secs,
        args.windows,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<9} {:>4} {:>15} {:>16} {:>11} {:>8}",
        "build", "apps", "%core total", "%core med.win", "wakeups/s", "threads"
    );
    let mut rows = Vec::new();
    for s in &subjects {
        let (first, last) = (&s.samples[0], s.samples.last().expect("samples"));
        let total = (last.ticks - first.ticks) as f64 / hz / elapsed * 100.0;
        let per_window = s
            .samples
            .windows(2)
            .map(|w| {
                let secs = w[1].at.duration_since(w[0].at).as_secs_f64();
                w[1].run_ns.saturating_sub(w[0].run_ns) as f64 / 1e9 / secs * 100.0
            })
            .collect();
        let med = median(per_window);
        let wakeups = last.switches.saturating_sub(first.switches) as f64 / elapsed;
        println!(
            "{:<9} {:>4} {:>15.4} {:>16.4} {:>11.2} {:>8}",
            s.build, s.apps, total, med, wakeups, last.threads
        );
        rows.push((s.build, s.apps, total, med, wakeups));
    }
    for &apps in &args.apps {
        let of = |build: &str| {
            rows.iter()
                .find(|r| r.0 == build && r.1 == apps)
                .expect("both builds ran")
        };
        let (b, t) = (of("baseline"), of("this"));
        println!(
            "{apps} apps: this / baseline: CPU total {:.2}, CPU median window {:.2}, wake-ups {:.2}",
            t.2 / b.2,
            t.3 / b.3,
            t.4 / b.4
        );
    }
    println!(
        "nats-server (serving all {} narunds): {:.4} % of a core",
        subjects.len(),
        server_ticks as f64 / hz / elapsed * 100.0
    );
    Ok(())
}
