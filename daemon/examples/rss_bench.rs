//! Memory of an idle narund supervising 10 apps, vs the same narund supervising none, in one run.
//!
//! ```text
//! cargo run --release -p narund --example rss_bench [-- [<apps>] [--rounds <n>] [--bin-dir <dir>]]
//! ```
//! A fresh, real nats-server (narun-test-support); the release `narund` binary built from
//! this workspace (default features, i.e. **without** the gateway) as a real process with its
//! own data dir; `<apps>` (default 10) app specs of one replica each, whose binary is a shell
//! script that execs `sleep`. The bench waits until narund's heartbeat shows every instance
//! `running`, lets narund idle for 5 s (heartbeats, no log traffic), then reads `VmRSS`,
//! `RssAnon`, `RssFile`, `VmHWM` and `Threads` from `/proc/<narund>/status`, `Pss` and
//! `Private_Dirty` from `smaps_rollup`, the resident KiB per kind of mapping (narund's binary,
//! shared libraries, anonymous) from `smaps`, and the page faults from `stat`.
//!
//! Runs, in this order: the default config with no app specs (baseline); then `--rounds`
//! (default 3) rounds of the default config and of `[memory] exec_readaround = true` (the
//! kernel's read-ahead on narund's binary, i.e. narund before `narund::memory`), each with
//! `<apps>` apps. Per variant it prints the median of the rounds and the start-up time
//! (`ready_ms`): from the spawn to the first heartbeat that shows every instance `running`.
//!
//! Before each start the binary's pages are evicted from the page cache (`posix_fadvise`
//! DONTNEED), as after a boot; otherwise fault-around maps the whole cached binary. How much
//! of the binary a page fault reads depends on the block device's `read_ahead_kb` (8 MiB on
//! the project VM, 128 KiB on a typical eMMC): `--bin-dir <dir>` copies narund into `<dir>`
//! (e.g. a loop-mounted ext4 with its own `read_ahead_kb`, see `docs/benchmarks.md`) and runs
//! it from there.
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

/// Start narund with `extra_toml` appended to its config, wait for a heartbeat with `apps`
/// running instances, idle, measure, stop.
async fn measure(
    bin: &Path,
    server: &NatsServer,
    states: &kv::Store,
    node: &str,
    apps: usize,
    extra_toml: &str,
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
    evict_from_page_cache(bin)?;
    let started = Instant::now();
    let mut narund = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&conf)
        .env("NARUND_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
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
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(60), narund.wait()).await??;
    Ok(mem)
}

struct Args {
    apps: usize,
    rounds: usize,
    bin_dir: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        apps: 10,
        rounds: 3,
        bin_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => a.rounds = it.next().unwrap_or_default().parse()?,
            "--bin-dir" => {
                a.bin_dir = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--bin-dir needs a directory"))?
                        .into(),
                )
            }
            n => {
                a.apps = n.parse().map_err(|_| {
                    anyhow::anyhow!("usage: rss_bench [<apps>] [--rounds <n>] [--bin-dir <dir>]")
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

async fn run() -> anyhow::Result<()> {
    let args = args()?;
    let apps = args.apps;
    let mut bin = workspace_bin("narund", "narund", &[]);
    if let Some(dir) = &args.bin_dir {
        let copy = dir.join("narund");
        let tmp = dir.join(".narund.tmp");
        std::fs::copy(&bin, &tmp)?;
        std::fs::rename(&tmp, &copy)?;
        bin = copy;
    }
    let size = std::fs::metadata(&bin)?.len();
    // A freshly linked binary sits in the page cache as *dirty* pages until written back, and
    // smaps counts those as Private_Dirty of every process mapping it: write them back first.
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    let server = NatsServer::start();
    let b = narun_test_support::buckets(&server).await;

    let idle = measure(&bin, &server, &b.states, "rss-idle", 0, "").await?;

    for i in 0..apps {
        let name = format!("app{i}");
        b.upload(&name, "v1", APP).await;
        let spec = serde_json::json!({"name": name, "tag": "v1", "nodes": [{"name": "rss-apps", "replicas": 1}]});
        b.put_spec(&name, &spec).await;
    }
    let variants = [
        ("default", ""),
        ("readaround", "[memory]\nexec_readaround = true"),
    ];
    let mut runs: Vec<Vec<Mem>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        for (v, (label, toml)) in variants.iter().enumerate() {
            let m = measure(&bin, &server, &b.states, "rss-apps", apps, toml).await?;
            eprintln!(
                "round {round} {label}: VmRSS {} KiB, bin {} KiB, majflt {}, all running after {} ms",
                m.get("VmRSS"),
                m.get("bin"),
                m.get("majflt"),
                m.get("ready_ms")
            );
            runs[v].push(m);
        }
    }
    println!(
        "narund binary: {} ({:.2} MiB)",
        bin.display(),
        size as f64 / 1048576.0
    );
    print!("{:<34}", "");
    for c in COLUMNS {
        print!(" {c:>13}");
    }
    println!();
    let mut rows = vec![("no apps, default".to_string(), idle)];
    for (v, (label, _)) in variants.iter().enumerate() {
        rows.push((
            format!("{apps} apps, {label} (median of {})", args.rounds),
            Mem::median(&runs[v]),
        ));
    }
    for (label, m) in &rows {
        print!("{label:<34}");
        for c in COLUMNS {
            print!(" {:>13}", m.get(c));
        }
        println!();
    }
    let busy = &rows[1].1;
    println!(
        "RSS with {apps} apps: {:.2} MiB (target <= 6 MB = 5.72 MiB), of which {:.2} MiB clean file-backed \
         (pages of the binary and libc: shared, reclaimable) and {:.2} MiB private dirty; PSS {:.2} MiB; \
         {:+.0} KiB per app over the idle narund",
        busy.get("VmRSS") as f64 / 1024.0,
        busy.get("RssFile") as f64 / 1024.0,
        busy.get("Private_Dirty") as f64 / 1024.0,
        busy.get("Pss") as f64 / 1024.0,
        (busy.get("VmRSS") as f64 - rows[0].1.get("VmRSS") as f64) / apps.max(1) as f64
    );
    Ok(())
}
