//! Memory of an idle narund supervising 10 apps, vs the same narund supervising none, in one run.
//!
//! ```text
//! cargo run --release -p narund --example rss_bench [-- <apps>]
//! ```
//! A fresh, real nats-server (narun-test-support); the release `narund` binary built from
//! this workspace (default features, i.e. **without** the gateway) as a real process with its
//! own data dir; `<apps>` (default 10) app specs of one replica each, whose binary is a shell
//! script that execs `sleep`. The bench waits until narund's heartbeat shows every instance
//! `running`, lets narund idle for 5 s (heartbeats, no log traffic), then reads `VmRSS`,
//! `RssAnon`, `RssFile`, `VmHWM` and `Threads` from `/proc/<narund>/status`. The baseline is the
//! same binary with the same config and no app specs, measured first in the same run.
//!
//! Before each start the binary's pages are evicted from the page cache (`posix_fadvise`
//! DONTNEED), as after a boot; otherwise fault-around maps the whole cached binary.
//!
//! narund runs as the invoking user with the cgroup root `narun-bench-rss-<pid>` (created below
//! narund's own cgroup, removed at the end).

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use narun_test_support::{NatsServer, workspace_bin};
use narun_wire::events::NodeState;
use narun_wire::names;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const APP: &str = "#!/bin/sh\nexec sleep 100000\n";

#[derive(Debug, Default)]
struct Mem {
    fields: BTreeMap<&'static str, u64>,
}

impl Mem {
    fn read(pid: u32) -> anyhow::Result<Mem> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let mut m = Mem::default();
        for key in ["VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {key}"))?;
            m.fields.insert(key, v);
        }
        // Memory only this process uses and that cannot be dropped under pressure.
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let dirty = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Private_Dirty:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/smaps_rollup has no Private_Dirty"))?;
        m.fields.insert("Private_Dirty", dirty);
        Ok(m)
    }
    fn kib(&self, k: &str) -> u64 {
        self.fields[k]
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

/// Start narund, wait for a heartbeat with `apps` running instances, idle, measure, stop.
async fn measure(
    bin: &Path,
    server: &NatsServer,
    states: &kv::Store,
    node: &str,
    apps: usize,
) -> anyhow::Result<Mem> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("narund.toml");
    std::fs::write(
        &conf,
        format!(
            "node_id = \"{node}\"\ndata_dir = \"{d}/data\"\nruntime_dir = \"{d}/run\"\n\
             [nats]\nurl = \"{url}\"\n[apps]\ndefault_user = \"nobody\"\n\
             [cgroup]\nroot = \"narun-bench-rss-{pid}\"\n",
            d = dir.path().display(),
            url = server.url(),
            pid = std::process::id()
        ),
    )?;
    let mut watch = states.watch(node).await?;
    evict_from_page_cache(bin)?;
    let mut narund = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&conf)
        .env("NARUND_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = narund.id().expect("narund pid");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = watch.next().await.expect("watch ended")?;
            if e.operation != kv::Operation::Put {
                continue;
            }
            let s: NodeState = serde_json::from_slice(&e.value)?;
            let running = s.instances.iter().filter(|i| i.status == "running").count();
            if s.status == "running" && running == apps {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("narund did not report {apps} running instances within 60 s"))??;
    // Idle: what a device sits at between deploys (the measurement is of that state, so a
    // fixed wait is what we want here).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem = Mem::read(pid)?;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(60), narund.wait()).await??;
    Ok(mem)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let apps: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let bin = workspace_bin("narund", "narund", &[]);
    let size = std::fs::metadata(&bin)?.len();
    // A freshly linked binary sits in the page cache as *dirty* pages until written back, and
    // smaps counts those as Private_Dirty of every process mapping it: write them back first.
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    let server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    let configs =
        narun_wire::jetstream::ensure_kv(&js, names::APP_CONFIGS_BUCKET, "specs", 1, None).await?;
    let store =
        narun_wire::jetstream::ensure_object_store(&js, names::APP_BINARIES_BUCKET, "bins").await?;
    let states = narun_wire::jetstream::ensure_kv(
        &js,
        names::NODE_STATES_BUCKET,
        "heartbeats",
        1,
        Some(Duration::from_secs(45)),
    )
    .await?;

    let idle = measure(&bin, &server, &states, "rss-idle", 0).await?;

    for i in 0..apps {
        let name = format!("app{i}");
        let object = names::binary_object_name(&name, "v1", names::go_os(), names::go_arch());
        store
            .put(
                object.as_str(),
                &mut std::io::Cursor::new(APP.as_bytes().to_vec()),
            )
            .await?;
        let spec = serde_json::json!({"name": name, "tag": "v1", "nodes": [{"name": "rss-apps", "replicas": 1}]});
        configs
            .put(&name, serde_json::to_vec(&spec)?.into())
            .await?;
    }
    let busy = measure(&bin, &server, &states, "rss-apps", apps).await?;
    let _ = std::fs::remove_dir(format!(
        "/sys/fs/cgroup/unified/narun-bench-rss-{}",
        std::process::id()
    ));

    println!(
        "narund binary: {} ({:.2} MiB)",
        bin.display(),
        size as f64 / 1048576.0
    );
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>14} {:>10} {:>8}",
        "", "VmRSS", "RssAnon", "RssFile", "Private_Dirty", "VmHWM", "threads"
    );
    for (label, m) in [
        ("no apps".to_string(), &idle),
        (format!("{apps} apps running"), &busy),
    ] {
        println!(
            "{:<20} {:>6} KiB {:>6} KiB {:>6} KiB {:>10} KiB {:>6} KiB {:>8}",
            label,
            m.kib("VmRSS"),
            m.kib("RssAnon"),
            m.kib("RssFile"),
            m.kib("Private_Dirty"),
            m.kib("VmHWM"),
            m.kib("Threads")
        );
    }
    let per_app = (busy.kib("VmRSS") as f64 - idle.kib("VmRSS") as f64) / apps.max(1) as f64;
    println!(
        "RSS with {apps} apps: {:.2} MiB (target <= 6 MB = 5.72 MiB), of which {:.2} MiB clean file-backed \
         (pages of the binary and libc: shared, reclaimable) and {:.2} MiB private dirty; {:+.0} KiB per app over the idle narund",
        busy.kib("VmRSS") as f64 / 1024.0,
        busy.kib("RssFile") as f64 / 1024.0,
        busy.kib("Private_Dirty") as f64 / 1024.0,
        per_app
    );
    Ok(())
}
