//! Memory of an idle narund supervising 10 apps deployed with narunctl, vs the same narund
//! supervising none, with and without the gateway, and the floor (`bench/floor`), in one run.
//!
//! ```text
//! cargo run --release -p narund --example rss_bench [-- [<apps>] [--rounds <n>] [--bin-dir <dir>]
//!     [--gateway] [--floor] [--cold] [--readaround] [--extra <label>=<narund binary>]...
//!     [--extra-gateway <label>=<narund binary>]... [--env <label>=<VAR>=<value>]...
//!     [--smaps <dir>]]
//! ```
//! A fresh, real nats-server (narun-test-support); the release `narund` binary built from
//! this workspace (default features, i.e. **without** the gateway; with `--gateway` also
//! built with `--features gateway` and run with `[gateway] enabled = true`) as a real process
//! with its own data dir; `<apps>` (default 10) app specs of one replica each, deployed with
//! the release `narunctl` (`narunctl deploy -f <app>.json --no-binary`; the binary, a shell
//! script that execs `sleep`, is put in the object store first). The bench waits until
//! narund's heartbeat shows every instance `running`, lets narund idle past its settle trim
//! and 5 s more (heartbeats, no log traffic), then reads `VmRSS`, `RssAnon`, `RssFile`,
//! `VmHWM` and `Threads` from `/proc/<narund>/status`, `Pss` and `Private_Dirty` from
//! `smaps_rollup`, the resident KiB per kind of mapping (narund's binary, shared libraries,
//! anonymous) from `smaps`, and the page faults from `stat`.
//!
//! Runs, in this order: each build with no app specs (baseline); then `--rounds` (default 3)
//! rounds, each measuring every build with `<apps>` apps (and, with `--readaround`, narund
//! with `[memory] exec_readaround = true`: the kernel's read-ahead on narund's binary, i.e.
//! narund before `narund::memory`), alternating. `--floor` adds `narun-size-floor`
//! (bench/floor: async-nats connected, watching `app-configs`, nothing else) to every round.
//! `--extra <label>=<path>` adds another narund binary (e.g. the firmware build, or a build of
//! an older commit) to every round; `--extra-gateway <label>=<path>` likewise, run with the
//! gateway enabled as `--gateway` runs it (e.g. the `firmware-gateway` build);
//! `--env <label>=<VAR>=<value>` the workspace's narund with an environment variable set
//! (e.g. `MALLOC_ARENA_MAX=1`); all three repeatable. `--smaps <dir>`
//! keeps each measurement's `/proc/<pid>/smaps` as `<dir>/<label>-<round>.smaps`.
//! Per variant it prints the median of the rounds and the start-up time (`ready_ms`): from the
//! spawn to the first heartbeat that shows every instance `running`.
//!
//! Before each start the binary's pages are evicted from the page cache (`posix_fadvise`
//! DONTNEED), as after a boot; otherwise fault-around maps the whole cached binary. `--cold`
//! drops the whole page cache instead (`echo 3 > /proc/sys/vm/drop_caches`, root): then libc
//! and ld.so are read again too, unless other processes keep them mapped. How much of the
//! binary a page fault reads depends on the block device's `read_ahead_kb` (8 MiB on the
//! project VM, 128 KiB on a typical eMMC): `--bin-dir <dir>` runs the binaries from copies in
//! `<dir>` (e.g. a loop-mounted ext4 with its own `read_ahead_kb`, see `docs/benchmarks.md`).
//!
//! narund runs as the invoking user with the cgroup root `narun-bench-rss-<pid>` (created below
//! narund's own cgroup, removed at the end).

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use narun_test_support::{NatsServer, workspace_bin};
use narun_wire::events::NodeState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const APP: &str = "#!/bin/sh\nexec sleep 100000\n";

/// Fields printed per variant, in this order (all KiB but `Threads`, `majflt`, `ready_ms`).
const COLUMNS: [&str; 10] = [
    "VmRSS",
    "RssFile",
    "RssAnon",
    "Pss",
    "Private_Dirty",
    "bin",
    "libs",
    "anon",
    "majflt",
    "ready_ms",
];

#[derive(Debug, Default, Clone)]
struct Mem {
    fields: BTreeMap<&'static str, u64>,
}

/// The number after `key` (and a `:`) on the line of `text` that starts with it.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl Mem {
    fn read(pid: u32, bin: &Path) -> anyhow::Result<Mem> {
        let mut m = Mem::default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        for key in ["VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"] {
            let v = field(&status, key)
                .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {key}"))?;
            m.fields.insert(key, v);
        }
        // Pss: shared pages divided by their mappers; Private_Dirty: memory only this
        // process uses and that cannot be dropped under pressure.
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        for key in ["Pss", "Private_Dirty"] {
            let v = field(&rollup, key)
                .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/smaps_rollup has no {key}"))?;
            m.fields.insert(key, v);
        }
        // Resident KiB by kind of mapping: the binary, other files (libc, libm, ld.so,
        // libgcc_s), everything else (heap, stacks, malloc arenas, io_uring rings).
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        let bin = bin.to_string_lossy();
        let (mut kind, mut sums) = (
            "anon",
            BTreeMap::from([("bin", 0), ("libs", 0), ("anon", 0)]),
        );
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            match (f.next(), f.next(), f.nth(1), f.next(), f.next()) {
                (Some(range), Some(_perms), Some(_dev), Some(inode), path)
                    if range.contains('-') && inode.parse::<u64>().is_ok() =>
                {
                    kind = match path {
                        Some(p) if inode != "0" && p == bin => "bin",
                        Some(p) if inode != "0" && p.starts_with('/') => "libs",
                        _ => "anon",
                    };
                }
                _ => {
                    if let Some(v) = line.strip_prefix("Rss:") {
                        *sums.get_mut(kind).unwrap() +=
                            v.split_whitespace().next().unwrap_or("0").parse::<u64>()?;
                    }
                }
            }
        }
        m.fields.extend(sums);
        // Major faults (pages read from storage) since the start: after the last ')' of
        // `comm`, field 12 of stat is the 10th.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let majflt = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(9)?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no majflt"))?;
        m.fields.insert("majflt", majflt);
        Ok(m)
    }
    fn get(&self, k: &str) -> u64 {
        self.fields[k]
    }
    /// Per field, the median of `runs`.
    fn median(runs: &[Mem]) -> Mem {
        let mut m = Mem::default();
        for k in runs[0].fields.keys() {
            let mut v: Vec<u64> = runs.iter().map(|r| r.fields[k]).collect();
            v.sort_unstable();
            m.fields.insert(k, v[v.len() / 2]);
        }
        m
    }
}

/// Drop the (clean) pages of `bin` from the page cache, so narund starts like after a boot:
/// only the pages it touches (plus readahead) become resident. Without this, the kernel's
/// fault-around maps every cached neighbour page of the binary and RssFile ≈ file size.
fn evict_from_page_cache(bin: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(bin)?;
    // SAFETY: fdatasync and posix_fadvise on a valid, open fd.
    let rc = unsafe {
        libc::fdatasync(f.as_raw_fd());
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
    };
    anyhow::ensure!(rc == 0, "posix_fadvise(DONTNEED) failed: {rc}");
    Ok(())
}

/// Empty the whole page cache (clean pages only; `sync` first), as after a boot.
fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|e| anyhow::anyhow!("--cold: cannot write /proc/sys/vm/drop_caches: {e}"))
}

/// What runs in one measurement.
#[derive(Clone)]
struct Variant {
    label: String,
    /// Index into the binaries: narund, narund with gateway, the floor, then the `--extra` ones.
    build: usize,
    /// Appended to narund's config.
    toml: &'static str,
    /// Set in narund's environment.
    env: Option<(String, String)>,
}

const NARUND: usize = 0;
const GATEWAY: usize = 1;
const FLOOR: usize = 2;

/// The gateway on free ports, no routes (the listeners, the route watch, the metrics).
const GATEWAY_TOML: &str = "[gateway]\nenabled = true\nhttp_addr = \"127.0.0.1:0\"\n\
                            metrics_addr = \"127.0.0.1:0\"\n";

/// Start the floor binary against `server`, wait until it has read every spec of
/// `app-configs` (one line per entry on stdout), idle as long as narund does, measure, stop.
async fn measure_floor(
    bin: &Path,
    server: &NatsServer,
    apps: usize,
    cold: bool,
) -> anyhow::Result<Mem> {
    use tokio::io::AsyncBufReadExt;
    if cold {
        drop_caches()?;
    }
    evict_from_page_cache(bin)?;
    let started = Instant::now();
    let mut floor = tokio::process::Command::new(bin)
        .env("NATS_URL", server.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = floor.id().expect("floor pid");
    let mut lines = tokio::io::BufReader::new(floor.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..apps {
            lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the floor binary exited"))?;
        }
        anyhow::Ok(started.elapsed())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the floor binary did not read {apps} specs within 60 s"))??;
    tokio::time::sleep(Duration::from_secs(
        narund::memory::DEFAULT_SETTLE_TRIM_SECS + 5,
    ))
    .await;
    let mut mem = Mem::read(pid, bin)?;
    mem.fields.insert("ready_ms", ready.as_millis() as u64);
    floor.kill().await?;
    Ok(mem)
}

/// Start narund with `extra_toml` appended to its config, wait for a heartbeat with `apps`
/// running instances, idle, measure, stop.
#[allow(clippy::too_many_arguments)]
async fn measure(
    bin: &Path,
    server: &NatsServer,
    states: &kv::Store,
    node: &str,
    apps: usize,
    extra_toml: &str,
    env: Option<&(String, String)>,
    cold: bool,
    smaps: Option<&Path>,
) -> anyhow::Result<Mem> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("narund.toml");
    let toml = narun_test_support::narund_toml(
        node,
        &dir.path().join("data"),
        &server.url(),
        &format!("narun-bench-rss-{}", std::process::id()),
        extra_toml,
    );
    std::fs::write(&conf, toml)?;
    let mut watch = states.watch(node).await?;
    if cold {
        drop_caches()?;
    }
    evict_from_page_cache(bin)?;
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--config")
        .arg(&conf)
        .env("NARUND_LOG", "warn")
        .kill_on_drop(true);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut narund = cmd.spawn()?;
    let pid = narund.id().expect("narund pid");
    let mut last = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = watch.next().await.expect("watch ended")?;
            if e.operation != kv::Operation::Put {
                continue;
            }
            last = String::from_utf8_lossy(&e.value).into_owned();
            let s: NodeState = serde_json::from_slice(&e.value)?;
            let running = s
                .instances
                .iter()
                .filter(|i| i.status == narun_wire::status::InstanceStatus::Running)
                .count();
            if s.status == narun_wire::status::NodeStatus::Running && running == apps {
                return anyhow::Ok(started.elapsed());
            }
        }
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "narund did not report {apps} running instances within 60 s; last heartbeat: {last}"
        )
    })??;
    // Idle: what a device sits at between deploys (the measurement is of that state, so a
    // fixed wait is what we want here): past the settle trim (`[memory] settle_trim_secs`
    // after the last start), then 5 s of heartbeats and timers.
    tokio::time::sleep(Duration::from_secs(
        narund::memory::DEFAULT_SETTLE_TRIM_SECS + 5,
    ))
    .await;
    let mut mem = Mem::read(pid, bin)?;
    mem.fields.insert("ready_ms", ready.as_millis() as u64);
    if let Some(path) = smaps {
        std::fs::copy(format!("/proc/{pid}/smaps"), path)?;
    }
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(60), narund.wait()).await??;
    Ok(mem)
}

struct Args {
    /// Label, binary, and whether it runs with the gateway enabled.
    extra: Vec<(String, PathBuf, bool)>,
    env: Vec<(String, String, String)>,
    smaps: Option<PathBuf>,
    apps: usize,
    rounds: usize,
    bin_dir: Option<PathBuf>,
    gateway: bool,
    floor: bool,
    cold: bool,
    readaround: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        extra: Vec::new(),
        env: Vec::new(),
        smaps: None,
        apps: 10,
        rounds: 3,
        bin_dir: None,
        gateway: false,
        floor: false,
        cold: false,
        readaround: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => a.rounds = it.next().unwrap_or_default().parse()?,
            "--gateway" => a.gateway = true,
            "--floor" => a.floor = true,
            "--cold" => a.cold = true,
            "--readaround" => a.readaround = true,
            "--extra" | "--extra-gateway" => {
                let v = it.next().unwrap_or_default();
                let (label, path) = v
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{arg} needs <label>=<path>, got '{v}'"))?;
                a.extra
                    .push((label.to_string(), path.into(), arg == "--extra-gateway"));
            }
            "--env" => {
                let v = it.next().unwrap_or_default();
                let bad = || anyhow::anyhow!("--env needs <label>=<VAR>=<value>, got '{v}'");
                let (label, kv) = v.split_once('=').ok_or_else(bad)?;
                let (k, val) = kv.split_once('=').ok_or_else(bad)?;
                a.env
                    .push((label.to_string(), k.to_string(), val.to_string()));
            }
            "--smaps" => {
                a.smaps = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--smaps needs a directory"))?
                        .into(),
                )
            }
            "--bin-dir" => {
                a.bin_dir = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--bin-dir needs a directory"))?
                        .into(),
                )
            }
            n => {
                a.apps = n.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "usage: rss_bench [<apps>] [--rounds <n>] [--bin-dir <dir>] \
                         [--gateway] [--floor] [--cold] [--readaround] \
                         [--extra <label>=<path>]... [--extra-gateway <label>=<path>]... \
                         [--env <label>=<VAR>=<value>]... \
                         [--smaps <dir>]"
                    )
                })?
            }
        }
    }
    anyhow::ensure!(a.rounds > 0, "--rounds must be at least 1");
    Ok(a)
}

/// Kill whatever is left in the bench's cgroup root (the apps of a narund that did not stop
/// them, e.g. after a failed run) and remove it.
fn remove_cgroup_root() {
    narun_test_support::kill_and_remove_cgroups(
        &narun_test_support::cgroup2_mount()
            .join(format!("narun-bench-rss-{}", std::process::id())),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let result = run().await;
    remove_cgroup_root();
    result
}

/// Copy `bin` to `<dir>/<name>` (atomically), or to a private temp dir: each build gets its
/// own file (cargo writes both narund builds to the same path), and smaps tells them apart.
fn place(bin: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let copy = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(bin, &tmp)?;
    std::fs::rename(&tmp, &copy)?;
    Ok(copy)
}

/// Deploy `apps` specs with narunctl (binaries uploaded first), as an operator does.
async fn deploy(
    server: &NatsServer,
    b: &narun_test_support::Buckets,
    apps: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for i in 0..apps {
        let name = format!("app{i}");
        b.upload(&name, "v1", APP).await;
        let spec = serde_json::json!({"name": name, "tag": "v1", "nodes": [{"name": "rss-apps", "replicas": 1}]});
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&spec)?)?;
        let out = narun_test_support::narunctl(
            &server.url(),
            &[
                "deploy",
                "-f",
                file.to_str().expect("utf-8 path"),
                "--no-binary",
                // Written before the node starts: narund is started per measurement.
                "--allow-offline",
            ],
        )
        .await;
        anyhow::ensure!(
            out.status.success(),
            "narunctl deploy {name}: {}",
            narun_test_support::text(&out.stderr)
        );
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let args = args()?;
    let apps = args.apps;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    // Built (and copied) one after the other: both narund builds land on the same path.
    let mut bins: Vec<Option<PathBuf>> = vec![None, None, None];
    bins[NARUND] = Some(place(
        &workspace_bin("narund", "narund", &[]),
        &dir,
        "narund",
    )?);
    if args.gateway {
        let b = workspace_bin("narund", "narund", &["--features", "gateway"]);
        bins[GATEWAY] = Some(place(&b, &dir, "narund-gateway")?);
    }
    if args.floor {
        let b = workspace_bin("narun-size-floor", "narun-size-floor", &[]);
        bins[FLOOR] = Some(place(&b, &dir, "narun-size-floor")?);
    }
    for (label, path, _) in &args.extra {
        bins.push(Some(place(path, &dir, &format!("narund-{label}"))?));
    }
    // Built now, not in the middle of the measurements.
    narun_test_support::narunctl_bin();
    // A freshly written binary sits in the page cache as *dirty* pages until written back, and
    // smaps counts those as Private_Dirty of every process mapping it: write them back first.
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    let server = NatsServer::start();
    let b = narun_test_support::buckets(&server).await;

    let variant = |label: &str, build, toml| Variant {
        label: label.to_string(),
        build,
        toml,
        env: None,
    };
    let mut variants = vec![variant("narund", NARUND, "")];
    if args.readaround {
        variants.push(variant(
            "narund, exec_readaround",
            NARUND,
            "[memory]\nexec_readaround = true",
        ));
    }
    if args.gateway {
        variants.push(variant("narund+gateway", GATEWAY, GATEWAY_TOML));
    }
    if args.floor {
        variants.push(variant("floor", FLOOR, ""));
    }
    for (i, (label, _, gateway)) in args.extra.iter().enumerate() {
        let toml = if *gateway { GATEWAY_TOML } else { "" };
        variants.push(variant(label, FLOOR + 1 + i, toml));
    }
    for (label, k, v) in &args.env {
        variants.push(Variant {
            env: Some((k.clone(), v.clone())),
            ..variant(label, NARUND, "")
        });
    }
    if let Some(d) = &args.smaps {
        std::fs::create_dir_all(d)?;
    }
    let smaps_of = |v: &Variant, round: &str| {
        args.smaps.as_ref().map(|d| {
            d.join(format!(
                "{}-{round}.smaps",
                v.label.replace([' ', ','], "_")
            ))
        })
    };
    let bin_of = |v: &Variant| bins[v.build].clone().expect("built");

    // No apps: each build once.
    let mut rows: Vec<(String, Mem)> = Vec::new();
    for (i, v) in variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.label != "narund, exec_readaround")
    {
        let m = if v.build == FLOOR {
            measure_floor(&bin_of(v), &server, 0, args.cold).await?
        } else {
            measure(
                &bin_of(v),
                &server,
                &b.states,
                &format!("rss-idle-{i}"),
                0,
                v.toml,
                v.env.as_ref(),
                args.cold,
                smaps_of(v, "idle").as_deref(),
            )
            .await?
        };
        eprintln!("no apps {}: VmRSS {} KiB", v.label, m.get("VmRSS"));
        rows.push((format!("{}, no apps", v.label), m));
    }

    deploy(&server, &b, apps).await?;
    let mut runs: Vec<Vec<Mem>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        for (i, v) in variants.iter().enumerate() {
            let m = if v.build == FLOOR {
                measure_floor(&bin_of(v), &server, apps, args.cold).await?
            } else {
                measure(
                    &bin_of(v),
                    &server,
                    &b.states,
                    "rss-apps",
                    apps,
                    v.toml,
                    v.env.as_ref(),
                    args.cold,
                    smaps_of(v, &round.to_string()).as_deref(),
                )
                .await?
            };
            eprintln!(
                "round {round} {}: VmRSS {} KiB, bin {} KiB, majflt {}, ready after {} ms",
                v.label,
                m.get("VmRSS"),
                m.get("bin"),
                m.get("majflt"),
                m.get("ready_ms")
            );
            runs[i].push(m);
        }
    }
    for v in &variants {
        let bin = bin_of(v);
        let size = std::fs::metadata(&bin)?.len();
        println!(
            "{}: {} ({size} B, {:.2} MiB)",
            v.label,
            bin.display(),
            size as f64 / 1048576.0
        );
    }
    println!(
        "page cache before each start: {}",
        if args.cold {
            "dropped (drop_caches)"
        } else {
            "binary evicted (fadvise)"
        }
    );
    print!("{:<44}", "");
    for c in COLUMNS {
        print!(" {c:>13}");
    }
    println!();
    for (i, v) in variants.iter().enumerate() {
        let what = if v.build == FLOOR {
            "specs watched"
        } else {
            "apps"
        };
        rows.push((
            format!("{}, {apps} {what} (median of {})", v.label, args.rounds),
            Mem::median(&runs[i]),
        ));
    }
    for (label, m) in &rows {
        print!("{label:<44}");
        for c in COLUMNS {
            print!(" {:>13}", m.get(c));
        }
        println!();
    }
    let n_idle = rows.len() - variants.len();
    for (i, v) in variants.iter().enumerate() {
        let busy = &rows[n_idle + i].1;
        let target = match v.build {
            NARUND => " (target <= 4 MB = 3.81 MiB)",
            GATEWAY => " (target <= 6 MB = 5.72 MiB)",
            _ => "",
        };
        println!(
            "{}: VmRSS {:.2} MiB{target}, of which {:.2} MiB clean file-backed (pages of the \
             binary and libc: shared, reclaimable) and {:.2} MiB private dirty; PSS {:.2} MiB",
            v.label,
            busy.get("VmRSS") as f64 / 1024.0,
            busy.get("RssFile") as f64 / 1024.0,
            busy.get("Private_Dirty") as f64 / 1024.0,
            busy.get("Pss") as f64 / 1024.0,
        );
    }
    Ok(())
}
