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
    /// `--baseline DIR`: compare mode (see [`compare`]); DIR holds the baseline build's
    /// `narund` and `narunctl`.
    baseline: Option<PathBuf>,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: vec![10, 100, 300],
        binary_mb: 10,
        idle_secs: 20,
        baseline: None,
        rounds: 5,
    };
    let usage = "usage: fleet_bench [--nodes 10,100,300] [--binary-mb 10] [--idle-secs 20] \
                 [--baseline DIR --rounds 5]";
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
            "--baseline" => a.baseline = Some(PathBuf::from(value?)),
            "--rounds" => a.rounds = value?.parse()?,
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

/// Node ids, cgroup roots and labels of one fleet: the sweep's single fleet is
/// `fleet-<i>` labelled `fleet = "bench"`; compare mode runs two (`base`, `new`).
#[derive(Clone, Copy)]
struct Variant {
    /// Label value `fleet = "<name>"`, node id prefix.
    name: &'static str,
    /// Offset of this fleet's cgroup roots, so two fleets never share one.
    offset: usize,
}

const SWEEP: Variant = Variant {
    name: "bench",
    offset: 0,
};

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
    /// This fleet's cgroup roots: `cgroup_root(i)` for `i` in this range.
    roots: std::ops::Range<usize>,
}

impl Fleet {
    fn spawn(bin: &Path, cluster: &NatsCluster, n: usize, v: Variant) -> anyhow::Result<Fleet> {
        let mut children = Vec::with_capacity(n);
        let mut dirs = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::tempdir()?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            let conf = dir.path().join("narund.toml");
            let node = match v.name {
                "bench" => format!("fleet-{i:03}"),
                name => format!("{name}-{i:03}"),
            };
            let toml = narun_test_support::narund_toml(
                &node,
                dir.path(),
                &cluster.server(i % cluster.servers().len()).url(),
                &cgroup_root(v.offset + i),
                &format!("[labels]\nfleet = \"{}\"", v.name),
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
            roots: v.offset..v.offset + n,
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
        remove_cgroups(self.roots.clone());
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_cgroups(roots: std::ops::Range<usize>) {
    let mount = narun_test_support::cgroup2_mount();
    for i in roots {
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
    let mut fleet = Fleet::spawn(bin, &cluster, n, SWEEP)?;
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
    if let Some(base) = &args.baseline {
        return compare::run(&args, &bin, base).await;
    }
    let work = tempfile::tempdir()?;
    let binary = padded_app(work.path(), args.binary_mb)?;
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let row = one(&bin, &binary, n, args.idle_secs).await;
        remove_cgroups(0..n);
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

/// Compare mode (`--baseline DIR`): this build against a baseline build and against the
/// ceiling, in one run, alternating rounds.
///
/// One 3-server cluster; two fleets of `n` narund processes at once (`base-<i>` run the
/// baseline's `narund`, labelled `fleet = "base"`; `new-<i>` this build's, `fleet = "new"`),
/// and `n` in-process "zero-cost narunds": plain async-nats clients, client `i` connected to
/// member `i % 3` like node `i`, each watching a key of a `fleet-ceiling` KV bucket. Each
/// round, in turn:
///
/// * **core**: one publisher on member 0 sends the binary's size in 128 KiB core-NATS
///   messages to a subject all `n` clients subscribe: the time until the last client has
///   every byte. What nats-server moves out on this machine with no JetStream at all.
/// * **ceiling**: the bench uploads the same-size object to `app-binaries`
///   (`upload_s`) and puts its name into the ceiling key; each client, on the watch's
///   delivery, `get`s the object and reads it to the end (async-nats hashes every chunk
///   with SHA-256 and checks the object's digest at the end: the one hash a node must do),
///   into a reused buffer, nothing written. The time from the KV put until the last client
///   is done.
/// * **base** and **new** (their order alternates per round): the real
///   `narunctl deploy -f fleet-<v>.toml --wait=10m <binary>` of that build, a new tag and a
///   new binary content every round (so every node downloads it; the previous round's
///   instance is replaced). Besides narunctl's wall time, the bench timestamps what it sees
///   on NATS: the spec's KV put (`spec`), the first and last `starting` status event and
///   the last `running` one of the round's tag. `running - spec` is what compares with
///   the ceiling's KV put → last client done; `wall - running` is narunctl noticing.
mod compare {
    use super::*;
    use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
    use narun_wire::events::StatusEvent;
    use narun_wire::status::InstanceStatus;
    use tokio::io::AsyncReadExt;
    use tokio::sync::mpsc;

    const BASE: Variant = Variant {
        name: "base",
        offset: 0,
    };
    const NEW: Variant = Variant {
        name: "new",
        offset: 10_000,
    };
    /// Core-NATS fan-out message size (the object store's default chunk).
    const PIECE: usize = 128 * 1024;

    /// The in-process "zero-cost narunds".
    struct Ceiling {
        trigger: kv::Store,
        done: mpsc::UnboundedReceiver<(usize, Instant, Result<u64, String>)>,
        core: mpsc::UnboundedReceiver<Instant>,
        publisher: async_nats::Client,
        n: usize,
    }

    impl Ceiling {
        async fn start(cluster: &NatsCluster, n: usize, size: u64) -> anyhow::Result<Ceiling> {
            let publisher = cluster.server(0).connect().await;
            let js = async_nats::jetstream::new(publisher.clone());
            // Created the way narund creates its buckets (async-nats' own create
            // sends a config nats-server 2.9 answers in a form it cannot parse).
            let trigger = narun_wire::jetstream::KvBucket {
                name: "fleet-ceiling",
                description: "fleet_bench: the ceiling clients' start signal",
                history: 1,
                max_age: None,
            }
            .ensure(&js)
            .await
            .map_err(|e| anyhow::anyhow!("creating the fleet-ceiling bucket: {e}"))?;
            let (tx, done) = mpsc::unbounded_channel();
            let (core_tx, core) = mpsc::unbounded_channel();
            for i in 0..n {
                let client = cluster.server(i % cluster.servers().len()).connect().await;
                let js = async_nats::jetstream::new(client.clone());
                let store = js
                    .get_object_store(narun_wire::names::APP_BINARIES_BUCKET)
                    .await
                    .map_err(|e| anyhow::anyhow!("ceiling client {i}: app-binaries: {e}"))?;
                let kv = js
                    .get_key_value("fleet-ceiling")
                    .await
                    .map_err(|e| anyhow::anyhow!("ceiling client {i}: fleet-ceiling: {e}"))?;
                let mut watch = kv.watch("go").await?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; PIECE];
                    while let Some(Ok(e)) = watch.next().await {
                        let name = String::from_utf8_lossy(&e.value).into_owned();
                        let got = fetch(&store, &name, &mut buf).await;
                        let _ = tx.send((i, Instant::now(), got));
                    }
                });
                let mut sub = client.subscribe("fleet.fanout").await?;
                let core_tx = core_tx.clone();
                tokio::spawn(async move {
                    let mut got = 0u64;
                    while let Some(m) = sub.next().await {
                        got += m.payload.len() as u64;
                        if got >= size {
                            got = 0;
                            let _ = core_tx.send(Instant::now());
                        }
                    }
                });
                // Both subscriptions exist at the server before the first round.
                client.flush().await?;
            }
            Ok(Ceiling {
                trigger,
                done,
                core,
                publisher,
                n,
            })
        }

        /// Core NATS: `size` bytes to every client; seconds until the last has them all.
        async fn core_fanout(&mut self, size: u64) -> anyhow::Result<f64> {
            let piece = bytes::Bytes::from(vec![7u8; PIECE]);
            let t0 = Instant::now();
            let mut sent = 0u64;
            while sent < size {
                let len = PIECE.min((size - sent) as usize);
                self.publisher
                    .publish("fleet.fanout", piece.slice(..len))
                    .await?;
                sent += len as u64;
            }
            self.publisher.flush().await?;
            let mut last = t0;
            for k in 0..self.n {
                last = tokio::time::timeout(Duration::from_secs(60), self.core.recv())
                    .await
                    .map_err(|_| anyhow::anyhow!("core fan-out: {k} of {} clients done", self.n))?
                    .ok_or_else(|| anyhow::anyhow!("core fan-out receivers ended"))?;
            }
            Ok((last - t0).as_secs_f64())
        }

        /// Upload `binary` as `name`, put the name into the ceiling key: (upload seconds,
        /// seconds from the KV put until the last client read and verified it).
        async fn object_fanout(
            &mut self,
            store: &ObjectStore,
            name: &str,
            binary: &Path,
            chunk: Option<usize>,
        ) -> anyhow::Result<(f64, f64)> {
            let t_up = Instant::now();
            let mut file = tokio::fs::File::open(binary).await?;
            let meta = ObjectMetadata {
                name: name.to_string(),
                chunk_size: chunk,
                ..Default::default()
            };
            store.put(meta, &mut file).await?;
            let upload = t_up.elapsed().as_secs_f64();
            let t0 = Instant::now();
            self.trigger.put("go", name.to_string().into()).await?;
            let mut last = t0;
            for k in 0..self.n {
                let (i, at, got) = tokio::time::timeout(Duration::from_secs(120), self.done.recv())
                    .await
                    .map_err(|_| anyhow::anyhow!("ceiling: {k} of {} clients done", self.n))?
                    .ok_or_else(|| anyhow::anyhow!("ceiling clients ended"))?;
                got.map_err(|e| anyhow::anyhow!("ceiling client {i}: {e}"))?;
                last = last.max(at);
            }
            Ok((upload, (last - t0).as_secs_f64()))
        }
    }

    /// A zero-cost node's download: every byte read, SHA-256 checked by async-nats.
    async fn fetch(store: &ObjectStore, name: &str, buf: &mut [u8]) -> Result<u64, String> {
        let mut obj = store.get(name).await.map_err(|e| e.to_string())?;
        let size = obj.info().size as u64;
        let mut got = 0u64;
        loop {
            match obj.read(buf).await {
                Ok(0) => break,
                Ok(k) => got += k as u64,
                Err(e) => return Err(e.to_string()),
            }
        }
        if got != size {
            return Err(format!("read {got} of {size} bytes"));
        }
        Ok(got)
    }

    /// What the bench saw of one `narunctl deploy --wait`, in seconds from its start.
    #[derive(Default, Clone, Copy)]
    struct Deploy {
        wall: f64,
        spec: f64,
        first_starting: f64,
        last_starting: f64,
        last_running: f64,
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy(
        client: &async_nats::Client,
        configs: &kv::Store,
        url: &str,
        ctl: &Path,
        v: Variant,
        round: usize,
        n: usize,
        dir: &Path,
        binary_mb: usize,
    ) -> anyhow::Result<Deploy> {
        let app = format!("fleet-{}", v.name);
        let tag = format!("r{round}");
        let binary = dir.join(format!("{app}-{tag}"));
        write_binary(&binary, binary_mb, round as u32 * 2 + (v.offset > 0) as u32)?;
        let spec = dir.join(format!("{app}.toml"));
        std::fs::write(
            &spec,
            format!(
                "name = \"{app}\"\ntag = \"{tag}\"\nargs = [\"100000\"]\nsettleSec = 0\n\
                 [[nodes]]\nlabels = {{ fleet = \"{}\" }}\nreplicas = 1\n",
                v.name
            ),
        )?;
        let mut status = client.subscribe(format!("status.{app}.*")).await?;
        let mut watch = configs.watch(&app).await?;
        client.flush().await?;
        let home = tempfile::tempdir()?;
        let mut cmd = tokio::process::Command::new(ctl);
        for var in [
            "NATS_URL",
            "NARUN_CONTEXT",
            "NARUNCTL_CONFIG",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", home.path())
            .arg("--nats")
            .arg(url)
            .args(["deploy", "-f"])
            .arg(&spec)
            .arg("--wait=10m")
            .arg(&binary)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let t0 = Instant::now();
        let out = cmd.output();
        tokio::pin!(out);
        // A figure whose event the bench missed (a core-NATS subscriber dropping
        // messages on a loaded machine) stays NaN and is left out of the medians.
        let mut d = Deploy {
            first_starting: f64::NAN,
            last_starting: f64::NAN,
            last_running: f64::NAN,
            ..Deploy::default()
        };
        let (mut starting, mut running) = (BTreeSet::new(), BTreeSet::new());
        let since = |t0: Instant| t0.elapsed().as_secs_f64();
        let out = tokio::time::timeout(Duration::from_secs(600), async {
            loop {
                tokio::select! {
                    out = &mut out => break out,
                    Some(Ok(_)) = watch.next(), if d.spec == 0.0 => d.spec = since(t0),
                    Some(m) = status.next() => {
                        let Ok(e) = serde_json::from_slice::<StatusEvent>(&m.payload) else { continue };
                        if e.tag != tag { continue }
                        match e.status {
                            InstanceStatus::Starting if starting.insert(e.node_id.clone()) => {
                                if starting.len() == 1 { d.first_starting = since(t0) }
                                if starting.len() == n { d.last_starting = since(t0) }
                            }
                            InstanceStatus::Running
                                if running.insert(e.node_id.clone()) && running.len() == n =>
                            {
                                d.last_running = since(t0)
                            }
                            _ => {}
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("{app} {tag}: narunctl did not finish in 600 s"))??;
        d.wall = since(t0);
        anyhow::ensure!(
            out.status.success(),
            "{app} {tag}: narunctl deploy failed: {}\n{}",
            narun_test_support::text(&out.stdout),
            narun_test_support::text(&out.stderr)
        );
        Ok(d)
    }

    /// [`padded_app`]'s binary with `marker` in its last 4 bytes: every round and fleet
    /// has its own content, so no node finds it in its cache.
    fn write_binary(path: &Path, mb: usize, marker: u32) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (app, _) = padded_app(dir.path(), mb)?;
        let mut body = std::fs::read(app)?;
        let len = body.len();
        body[len - 4..].copy_from_slice(&marker.to_le_bytes());
        std::fs::write(path, body)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// One round: core fan-out, ceiling upload, ceiling fan-out, base, new, ceiling fan-out
    /// with 512 KiB chunks.
    type Row5 = (f64, f64, f64, Deploy, Deploy, f64);

    fn median(v: Vec<f64>) -> f64 {
        let mut v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            l if l % 2 == 1 => v[l / 2],
            l => (v[l / 2 - 1] + v[l / 2]) / 2.0,
        }
    }

    pub async fn run(args: &Args, bin: &Path, base_dir: &Path) -> anyhow::Result<()> {
        let n = args.nodes[0];
        let size = (args.binary_mb * 1024 * 1024) as u64;
        let base_ctl = base_dir.join("narunctl");
        let new_ctl = narun_test_support::narunctl_bin();
        let cluster = NatsCluster::start(3).await;
        let b = narun_test_support::buckets(cluster.server(0)).await;
        let client = cluster.server(0).connect().await;
        let url = cluster.server(0).url();
        let work = tempfile::tempdir()?;
        let fleets = async {
            let base = Fleet::spawn(&base_dir.join("narund"), &cluster, n, BASE)?;
            let new = Fleet::spawn(bin, &cluster, n, NEW)?;
            wait_online(&b.states, 2 * n).await?;
            anyhow::Ok((base, new))
        }
        .await;
        let (mut base, mut new) = match fleets {
            Ok(f) => f,
            Err(e) => {
                remove_cgroups(BASE.offset..BASE.offset + n);
                remove_cgroups(NEW.offset..NEW.offset + n);
                return Err(e);
            }
        };
        eprintln!("{n} + {n} narunds online; starting {n} ceiling clients");
        let mut ceiling = Ceiling::start(&cluster, n, size).await?;
        eprintln!("{n} + {n} narunds and {n} ceiling clients up; settling 5 s");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ceiling_bin = work.path().join("ceiling-app");
        let mut rows = Vec::new();
        for r in 0..args.rounds {
            let core = ceiling.core_fanout(size).await?;
            write_binary(&ceiling_bin, args.binary_mb, 0xc0de_0000 + r as u32)?;
            let (upload, fan) = ceiling
                .object_fanout(&b.binaries, &format!("ceiling-r{r}"), &ceiling_bin, None)
                .await?;
            // The same with 512 KiB chunks (async-nats' default is 128 KiB): what the
            // chunk size narunctl uploads with is worth.
            let (_, fan512) = ceiling
                .object_fanout(
                    &b.binaries,
                    &format!("ceiling512-r{r}"),
                    &ceiling_bin,
                    Some(512 * 1024),
                )
                .await?;
            let one = |v: Variant, ctl: PathBuf| {
                let (client, configs, url, work) = (&client, &b.configs, &url, work.path());
                async move { deploy(client, configs, url, &ctl, v, r, n, work, args.binary_mb).await }
            };
            let (bd, nd) = if r % 2 == 0 {
                let bd = one(BASE, base_ctl.clone()).await?;
                (bd, one(NEW, new_ctl.clone()).await?)
            } else {
                let nd = one(NEW, new_ctl.clone()).await?;
                (one(BASE, base_ctl.clone()).await?, nd)
            };
            eprintln!(
                "round {r}: core {core:.2} s, ceiling upload {upload:.2} + fan-out {fan:.2} s \
                 (512 KiB chunks {fan512:.2}); \
                 base wall {:.2} (spec {:.2}, starting {:.2}..{:.2}, running {:.2}); \
                 new wall {:.2} (spec {:.2}, starting {:.2}..{:.2}, running {:.2})",
                bd.wall,
                bd.spec,
                bd.first_starting,
                bd.last_starting,
                bd.last_running,
                nd.wall,
                nd.spec,
                nd.first_starting,
                nd.last_starting,
                nd.last_running
            );
            rows.push((core, upload, fan, bd, nd, fan512));
        }
        base.stop();
        new.stop();
        let col = |f: &dyn Fn(&Row5) -> f64| median(rows.iter().map(f).collect());
        let (core, upload, fan) = (col(&|r| r.0), col(&|r| r.1), col(&|r| r.2));
        println!(
            "{n} nodes, 3-server cluster, {} MiB binary, {} alternating rounds, medians (s)",
            args.binary_mb, args.rounds
        );
        println!(
            "core NATS fan-out of {n} x {} MiB: {core:.2}",
            args.binary_mb
        );
        println!(
            "ceiling: upload {upload:.2}, KV put -> {n} clients fetched + SHA-256 verified {fan:.2}, \
             upload + fan-out {:.2}; with 512 KiB chunks: fan-out {:.2}",
            upload + fan,
            col(&|r| r.5)
        );
        println!(
            "{:>5} {:>8} {:>8} {:>10} {:>10} {:>10} {:>14} {:>14}",
            "build",
            "wall",
            "spec",
            "starting0",
            "startingN",
            "runningN",
            "spec->running",
            "vs_ceiling"
        );
        for (name, pick) in [
            ("base", &(|r: &Row5| r.3) as &dyn Fn(&_) -> Deploy),
            ("new", &|r: &Row5| r.4),
        ] {
            let m = |f: &dyn Fn(Deploy) -> f64| col(&|r| f(pick(r)));
            let to_running = m(&|d| d.last_running - d.spec);
            println!(
                "{:>5} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2} {:>14.2} {:>13.2}x",
                name,
                m(&|d| d.wall),
                m(&|d| d.spec),
                m(&|d| d.first_starting),
                m(&|d| d.last_starting),
                m(&|d| d.last_running),
                to_running,
                to_running / fan
            );
        }
        println!(
            "per round, medians: new wall / base wall {:.2}; wall / (ceiling upload + fan-out): \
             base {:.2}, new {:.2}",
            col(&|r| r.4.wall / r.3.wall),
            col(&|r| r.3.wall / (r.1 + r.2)),
            col(&|r| r.4.wall / (r.1 + r.2))
        );
        Ok(())
    }
}
