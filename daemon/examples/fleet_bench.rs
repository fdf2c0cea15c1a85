//! A simulated fleet: many real narund processes on this machine against a real 3-server
//! NATS cluster, and how deploy time, idle CPU and listing time grow with the fleet.
//!
//! ```text
//! cargo run --release -p narund --example fleet_bench [-- --nodes 10,100,300 --binary-mb 10 --idle-secs 20]
//! ```
//! For each fleet size `n`, from scratch: a fresh 3-server cluster
//! ([`narun_test_support::NatsCluster`]: routed servers, clustered JetStream); `n` release
//! `narund` processes (default features), each with its own node id (`fleet-<i>`), data dir,
//! cgroup root (`narun-bench-fleet-<pid>-<i>`) and label `fleet = "bench"`, connected to
//! member `i % 3` of the cluster (a fleet spreads over its servers); then:
//!
//! * **online**: time from the first spawn until `node-runner-states` holds every node;
//! * **idle CPU**: after a 10 s settle, user + system CPU of all narund processes over
//!   `--idle-secs`, per narund, in % of one core (heartbeats, timers, the KV watch);
//! * **deploy**: the real `narunctl deploy -f fleet.toml --wait=10m <binary>` of a
//!   `--binary-mb` MiB binary (this machine's `sleep`, padded to size, run as
//!   `sleep 100000`; one replica on every node labelled `fleet = "bench"`; `settleSec = 0`,
//!   so an instance counts as ready once running): upload, spec write, and every node fetching (SHA-256 verified),
//!   starting and reporting the instance ready; the wall time of the whole command;
//! * **nodes ls / apps ls**: the wall time of `narunctl nodes ls` and `narunctl apps ls`
//!   (median of 3).
//!
//! The figures are for one machine shared by every process (narund ×n, nats-server ×3, the
//! apps, narunctl): a real fleet has a core per device. What the bench shows is how each
//! figure grows from one fleet size to the next (the table's last columns), and the
//! per-narund idle cost. docs/benchmarks.md ("Fleet") has a run; docs/scale.md the arithmetic
//! for a fleet of 100 000 devices.
//!
//! narund runs as the invoking user (root), its apps as `nobody`; every cgroup the bench
//! creates is killed and removed at the end, also after a failed run.

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use narun_test_support::{NatsCluster, workspace_bin};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Args {
    nodes: Vec<usize>,
    binary_mb: usize,
    idle_secs: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: vec![10, 100, 300],
        binary_mb: 10,
        idle_secs: 20,
    };
    let usage = "usage: fleet_bench [--nodes 10,100,300] [--binary-mb 10] [--idle-secs 20]";
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{arg} needs a value; {usage}"));
        match arg.as_str() {
            "--nodes" => {
                a.nodes = value?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--nodes: {e}; {usage}"))?
            }
            "--binary-mb" => a.binary_mb = value?.parse()?,
            "--idle-secs" => a.idle_secs = value?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}; {usage}"),
        }
    }
    anyhow::ensure!(
        a.nodes.iter().all(|&n| n > 0),
        "--nodes: every fleet size must be at least 1"
    );
    Ok(a)
}

fn cgroup_root(i: usize) -> String {
    format!("narun-bench-fleet-{}-{i}", std::process::id())
}

/// User + system CPU time of `pid` in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
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

struct Fleet {
    children: Vec<std::process::Child>,
    _dirs: Vec<tempfile::TempDir>,
    n: usize,
}

impl Fleet {
    fn spawn(bin: &Path, cluster: &NatsCluster, n: usize) -> anyhow::Result<Fleet> {
        let mut children = Vec::with_capacity(n);
        let mut dirs = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::tempdir()?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            let conf = dir.path().join("narund.toml");
            let toml = narun_test_support::narund_toml(
                &format!("fleet-{i:03}"),
                dir.path(),
                &cluster.server(i % cluster.servers().len()).url(),
                &cgroup_root(i),
                "[labels]\nfleet = \"bench\"",
            );
            std::fs::write(&conf, toml)?;
            children.push(
                std::process::Command::new(bin)
                    .arg("--config")
                    .arg(&conf)
                    .env("NARUND_LOG", "error")
                    .stdin(std::process::Stdio::null())
                    .spawn()?,
            );
            dirs.push(dir);
        }
        Ok(Fleet {
            children,
            _dirs: dirs,
            n,
        })
    }

    fn cpu_ticks(&self) -> u64 {
        self.children.iter().map(|c| cpu_ticks(c.id())).sum()
    }

    fn stop(&mut self) {
        for c in &self.children {
            // SAFETY: kill(2) on the pid of our own child, not reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        remove_cgroups(self.n);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_cgroups(n: usize) {
    let mount = narun_test_support::cgroup2_mount();
    for i in 0..n {
        let root = mount.join(cgroup_root(i));
        if root.exists() {
            narun_test_support::kill_and_remove_cgroups(&root);
        }
    }
}

/// Wait until `node-runner-states` holds a key for each of `n` nodes.
async fn wait_online(states: &kv::Store, n: usize) -> anyhow::Result<()> {
    let mut watch = states.watch_all().await?;
    let mut seen = BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(300), async {
        while seen.len() < n {
            let e = watch
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("heartbeat watch ended"))??;
            if e.operation == kv::Operation::Put {
                seen.insert(e.key);
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("only {} of {n} nodes online after 300 s", seen.len()))?
}

async fn narunctl(url: &str, args: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = narun_test_support::narunctl(url, args).await;
    anyhow::ensure!(
        out.status.success(),
        "narunctl {} failed: {}\n{}",
        args.join(" "),
        narun_test_support::text(&out.stdout),
        narun_test_support::text(&out.stderr)
    );
    Ok(started.elapsed())
}

async fn median_of_3(url: &str, args: &[&str]) -> anyhow::Result<Duration> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(narunctl(url, args).await?);
    }
    v.sort();
    Ok(v[1])
}

struct Row {
    n: usize,
    online: Duration,
    idle_pct: f64,
    deploy: Duration,
    nodes_ls: Duration,
    apps_ls: Duration,
}

async fn one(
    bin: &Path,
    binary: &(PathBuf, PathBuf),
    n: usize,
    idle_secs: u64,
) -> anyhow::Result<Row> {
    let cluster = NatsCluster::start(3).await;
    let b = narun_test_support::buckets(cluster.server(0)).await;
    let url = cluster.server(0).url();
    let started = Instant::now();
    let mut fleet = Fleet::spawn(bin, &cluster, n)?;
    wait_online(&b.states, n).await?;
    let online = started.elapsed();
    eprintln!("{n} nodes: online after {online:?}; idling");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (t0, c0) = (Instant::now(), fleet.cpu_ticks());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (secs, ticks) = (t0.elapsed().as_secs_f64(), fleet.cpu_ticks() - c0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle_pct = ticks as f64 / hz / secs / n as f64 * 100.0;
    eprintln!("{n} nodes: idle {idle_pct:.3} % of a core per narund; deploying");
    let (binary, spec) = (binary.0.to_string_lossy(), binary.1.to_string_lossy());
    let deploy = narunctl(&url, &["deploy", "-f", &spec, "--wait=10m", &binary]).await?;
    eprintln!("{n} nodes: deployed and ready after {deploy:?}");
    let nodes_ls = median_of_3(&url, &["nodes", "ls"]).await?;
    let apps_ls = median_of_3(&url, &["apps", "ls"]).await?;
    fleet.stop();
    Ok(Row {
        n,
        online,
        idle_pct,
        deploy,
        nodes_ls,
        apps_ls,
    })
}

/// A `mb` MiB app: this machine's `sleep` binary (an ELF, as narunctl requires) padded with
/// zeros after its last byte, which the loader never maps, so every node fetches and
/// verifies `mb` MiB; and its spec: `sleep 100000`, one replica on every node labelled
/// `fleet = "bench"`, `settleSec = 0` (ready once running: the bench measures delivery,
/// not the 2 s a non-notify app must stay up by default).
fn padded_app(dir: &Path, mb: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("no sleep binary in /usr/bin or /bin"))?;
    let mut body = std::fs::read(sleep)?;
    body.resize(body.len().max(mb * 1024 * 1024), 0);
    let path = dir.join("fleet-app");
    std::fs::write(&path, body)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    let spec = dir.join("fleet.toml");
    std::fs::write(
        &spec,
        "name = \"fleet\"\ntag = \"v1\"\nargs = [\"100000\"]\nsettleSec = 0\n\
         [[nodes]]\nlabels = { fleet = \"bench\" }\nreplicas = 1\n",
    )?;
    Ok((path, spec))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let bin = workspace_bin("narund", "narund", &[]);
    let work = tempfile::tempdir()?;
    let binary = padded_app(work.path(), args.binary_mb)?;
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let row = one(&bin, &binary, n, args.idle_secs).await;
        remove_cgroups(n);
        rows.push(row?);
    }
    println!(
        "fleet of narund processes on one machine, 3-server NATS cluster, {} MiB binary",
        args.binary_mb
    );
    println!(
        "{:>6} {:>10} {:>14} {:>11} {:>11} {:>10} {:>16}",
        "nodes",
        "online_s",
        "idle_%core/nd",
        "deploy_s",
        "nodes_ls_s",
        "apps_ls_s",
        "deploy_vs_prev"
    );
    let mut prev: Option<&Row> = None;
    for r in &rows {
        let growth = prev
            .map(|p| {
                format!(
                    "{:.2}x for {:.1}x nodes",
                    r.deploy.as_secs_f64() / p.deploy.as_secs_f64(),
                    r.n as f64 / p.n as f64
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>6} {:>10.2} {:>14.3} {:>11.2} {:>11.3} {:>10.3} {:>16}",
            r.n,
            r.online.as_secs_f64(),
            r.idle_pct,
            r.deploy.as_secs_f64(),
            r.nodes_ls.as_secs_f64(),
            r.apps_ls.as_secs_f64(),
            growth
        );
        prev = Some(r);
    }
    Ok(())
}
