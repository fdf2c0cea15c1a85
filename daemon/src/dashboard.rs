//! The web dashboard in narund (features `gateway` + `dashboard`): the handler, views,
//! tokens and page live in the `narun-dashboard` crate (built at opt-level "z": cold code);
//! this module mounts it on the gateway and feeds its metrics ring ([`sample_loop`]): per
//! app on this node, one sample every `[dashboard] sample_sec` of the instance cgroups'
//! `cpu.stat` usage and `memory.current` (the files of `/metrics`,
//! [`crate::metrics::collect::CgroupFacts`]) or, without the memory controller, the
//! resident memory of the cgroup's processes (`VmRSS`). docs/dashboard.md.

use crate::metrics::collect::{CgroupFacts, resident};
use crate::node::Node;
use narun_dashboard::ring::{Reading, Ring};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use narun_dashboard::config::DashboardConfig;

/// Mount the dashboard on `gateway` (when `[dashboard] enabled`) and start its metrics
/// sampler; nothing happens when it is disabled.
pub fn mount(
    gateway: &narun_gateway::Gateway,
    config: &DashboardConfig,
    client: &async_nats::Client,
    node: &Node,
    cgroup_root: Option<PathBuf>,
    stop: CancellationToken,
) {
    if !config.enabled {
        return;
    }
    let ring = Arc::new(Mutex::new(Ring::default()));
    tokio::spawn(sample_loop(
        node.clone(),
        cgroup_root,
        ring.clone(),
        Duration::from_secs(config.sample_sec),
        stop,
    ));
    if config.admin_tokens.is_empty() && config.read_tokens.is_empty() {
        tracing::warn!(path = %config.path, "dashboard: no tokens configured ([dashboard] admin_tokens, read_tokens): it shows nothing");
    }
    tracing::info!(path = %config.path, "serving the dashboard");
    let handler = narun_dashboard::Dashboard::new(config, client, ring);
    gateway.set_mount(&config.path, Arc::new(handler));
}

/// The resident memory of the processes in the cgroup `dir`.
fn rss_of(dir: &Path) -> Option<u64> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let mut sum = None;
    for pid in procs.split_whitespace() {
        if let Some(r) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| resident(&s))
        {
            sum = Some(sum.unwrap_or(0) + r);
        }
    }
    sum
}

fn sum<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// Read every app's cgroups now.
fn read_all(node: &Node, root: &Path) -> BTreeMap<String, Reading> {
    let mut out: BTreeMap<String, Reading> = BTreeMap::new();
    for rec in node.host().local.records().values() {
        if rec.cgroup.is_empty() || rec.cgroup.contains('/') || rec.cgroup.starts_with('.') {
            continue;
        }
        let dir = root.join(&rec.cgroup);
        let f = CgroupFacts::read(&dir);
        let mem = f.memory_bytes.or_else(|| rss_of(&dir));
        let e = out.entry(rec.app.clone()).or_default();
        e.cpu_seconds = sum(e.cpu_seconds, f.cpu_seconds);
        e.memory_bytes = sum(e.memory_bytes, mem);
    }
    out
}

/// Sample every `every` into `ring` until `stop` (nothing without cgroups).
pub async fn sample_loop(
    node: Node,
    cgroup_root: Option<PathBuf>,
    ring: Arc<Mutex<Ring>>,
    every: Duration,
    stop: CancellationToken,
) {
    let Some(root) = cgroup_root else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (n, r) = (node.clone(), root.clone());
        let Ok(readings) = tokio::task::spawn_blocking(move || read_all(&n, &r)).await else {
            continue;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        ring.lock().unwrap().record(now, &readings);
    }
}
