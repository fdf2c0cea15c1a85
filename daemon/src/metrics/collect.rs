//! What `/metrics` shows, read at scrape time (narund runs no timer for it): the instance
//! table, the counters ([`super::counters`], the log forwarder, the binary cache), the
//! instance cgroups' `cpu.stat`, `memory.current`, `memory.peak`, `memory.events`, and the
//! node's `/proc/loadavg`, `/proc/meminfo`, `/proc/uptime` and the data dir's file system.
//!
//! A file that is absent (no memory controller, a run that just ended, no cgroups at all)
//! leaves its series out: a scrape never fails. Every metric is listed with its meaning
//! in docs/metrics.md. The file parsers are pure functions, unit-tested below.

use super::text::{Exposition, Kind};
use crate::node::Node;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// What a scrape reads from. Cheap to clone.
#[derive(Clone)]
pub struct Scrape {
    pub node: Node,
    pub client: async_nats::Client,
    /// The instance cgroups' parent (`None`: apps run without cgroups).
    pub cgroup_root: Option<PathBuf>,
    /// When narund started.
    pub started: Instant,
    pub started_unix: SystemTime,
}

/// Per instance, what its cgroups' files say (summed over its runs: two overlap during a
/// rolling replace).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CgroupFacts {
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// (`oom`, `oom_kill`) of `memory.events`.
    pub oom: Option<(u64, u64)>,
}

/// `a + b` of two readings that may be absent (`None` only when both are).
pub fn sum<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl CgroupFacts {
    pub fn add(&mut self, o: CgroupFacts) {
        self.cpu_seconds = sum(self.cpu_seconds, o.cpu_seconds);
        self.memory_bytes = sum(self.memory_bytes, o.memory_bytes);
        self.memory_peak_bytes = sum(self.memory_peak_bytes, o.memory_peak_bytes);
        self.oom = match (self.oom, o.oom) {
            (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
            (a, b) => a.or(b),
        };
    }

    /// Read the files of the cgroup directory `dir` (absent files: `None`).
    pub fn read(dir: &Path) -> CgroupFacts {
        let text = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let number = |f: &str| text(f).and_then(|t| t.trim().parse().ok());
        CgroupFacts {
            cpu_seconds: text("cpu.stat").and_then(|t| cpu_usage_seconds(&t)),
            memory_bytes: number("memory.current"),
            memory_peak_bytes: number("memory.peak"),
            oom: text("memory.events").map(|t| {
                let e = crate::cgroup::MemoryEvents::parse(&t);
                (e.oom, e.oom_kill)
            }),
        }
    }
}

/// `usage_usec` of a `cpu.stat`, in seconds.
pub fn cpu_usage_seconds(cpu_stat: &str) -> Option<f64> {
    cpu_stat.lines().find_map(|l| {
        let v = l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok()?;
        Some(v as f64 / 1e6)
    })
}

/// The three load averages of `/proc/loadavg` (`None` unless all three are finite
/// numbers ≥ 0: `"nan"` and `"inf"` parse as `f64` but are no load).
pub fn loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().ok().filter(|l| l.is_finite() && *l >= 0.0));
    Some([it.next()??, it.next()??, it.next()??])
}

/// (`MemTotal`, `MemAvailable`) of `/proc/meminfo`, in bytes.
pub fn meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let kib = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            let v = v.trim().strip_suffix("kB").unwrap_or(v).trim();
            v.parse::<u64>().ok()?.checked_mul(1024)
        })
    };
    (kib("MemTotal"), kib("MemAvailable"))
}

/// The first number of `/proc/uptime` (seconds since boot).
pub fn uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `VmRSS` of `/proc/self/status`, in bytes.
pub fn resident(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix("VmRSS:")?.trim();
        v.strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}

/// The resident memory of the processes in the cgroup `dir`.
pub fn cgroup_rss(dir: &Path) -> Option<u64> {
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

/// Per instance (app, instance id), what the cgroups of its recorded runs say now, under
/// `root`. With `rss_fallback`, a cgroup without `memory.current` (no memory controller)
/// counts the resident memory of its processes instead. cgroupfs and procfs files: read
/// in place (they never wait for a disk).
pub fn instance_facts(
    node: &Node,
    root: &Path,
    rss_fallback: bool,
) -> BTreeMap<(String, String), CgroupFacts> {
    let mut facts: BTreeMap<(String, String), CgroupFacts> = BTreeMap::new();
    for rec in node.host().local.records().values() {
        if rec.cgroup.is_empty() || rec.cgroup.contains('/') || rec.cgroup.starts_with('.') {
            continue;
        }
        let dir = root.join(&rec.cgroup);
        let mut f = CgroupFacts::read(&dir);
        if rss_fallback && f.memory_bytes.is_none() {
            f.memory_bytes = cgroup_rss(&dir);
        }
        facts
            .entry((rec.app.clone(), rec.instance_id.clone()))
            .or_default()
            .add(f);
    }
    facts
}

impl Scrape {
    /// The exposition as of now; the file reads run off the runtime.
    pub async fn render(&self) -> String {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.render_now())
            .await
            .unwrap_or_else(|e| format!("# metrics failed: {e}\n"))
    }

    /// The exposition as of now (blocking: reads files).
    pub fn render_now(&self) -> String {
        let mut e = Exposition::default();
        self.node_metrics(&mut e);
        self.instance_metrics(&mut e);
        self.work_metrics(&mut e);
        e.finish()
    }

    fn node_metrics(&self, e: &mut Exposition) {
        let s = self.node.settings();
        let (node_id, version) = (s.node_id.as_str(), crate::node::heartbeat::VERSION);
        e.family(
            "narun_node_info",
            Kind::Gauge,
            "Always 1: the node id and narund's version as labels.",
        )
        .sample(&[("node_id", node_id), ("version", version)], 1.0);
        let started = self
            .started_unix
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        e.family(
            "narun_daemon_start_time_seconds",
            Kind::Gauge,
            "When narund started, in seconds since the Unix epoch.",
        )
        .sample(&[], started);
        e.family(
            "narun_daemon_uptime_seconds",
            Kind::Gauge,
            "Seconds since narund started.",
        )
        .sample(&[], self.started.elapsed().as_secs_f64());
        if let Some(rss) = read("/proc/self/status").as_deref().and_then(resident) {
            e.family(
                "narun_daemon_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory of narund itself (VmRSS).",
            )
            .sample(&[], rss as f64);
        }
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        e.family(
            "narun_nats_connected",
            Kind::Gauge,
            "1 while narund's NATS connection is up, else 0.",
        )
        .sample(&[], if connected { 1.0 } else { 0.0 });
        if let Some(up) = read("/proc/uptime").as_deref().and_then(uptime) {
            e.family(
                "narun_node_uptime_seconds",
                Kind::Gauge,
                "Seconds since the machine booted (/proc/uptime).",
            )
            .sample(&[], up);
        }
        if let Some(l) = read("/proc/loadavg").as_deref().and_then(loadavg) {
            for (name, help, v) in [
                (
                    "narun_node_load1",
                    "Load average over 1 minute (/proc/loadavg).",
                    l[0],
                ),
                (
                    "narun_node_load5",
                    "Load average over 5 minutes (/proc/loadavg).",
                    l[1],
                ),
                (
                    "narun_node_load15",
                    "Load average over 15 minutes (/proc/loadavg).",
                    l[2],
                ),
            ] {
                e.family(name, Kind::Gauge, help).sample(&[], v);
            }
        }
        let (total, available) = read("/proc/meminfo")
            .as_deref()
            .map_or((None, None), meminfo);
        if let Some(v) = total {
            e.family(
                "narun_node_memory_total_bytes",
                Kind::Gauge,
                "Memory of the machine (MemTotal of /proc/meminfo).",
            )
            .sample(&[], v as f64);
        }
        if let Some(v) = available {
            e.family(
                "narun_node_memory_available_bytes",
                Kind::Gauge,
                "Memory available for new work without swapping (MemAvailable of /proc/meminfo).",
            )
            .sample(&[], v as f64);
        }
        if let Ok((size, avail)) = crate::sys::fs::space(&s.data_dir) {
            e.family(
                "narun_node_data_dir_size_bytes",
                Kind::Gauge,
                "Size of the file system holding narund's data_dir.",
            )
            .sample(&[], size as f64);
            e.family(
                "narun_node_data_dir_available_bytes",
                Kind::Gauge,
                "Free bytes of the file system holding narund's data_dir (for unprivileged users).",
            )
            .sample(&[], avail as f64);
        }
    }

    fn instance_metrics(&self, e: &mut Exposition) {
        let instances = self.node.instances();
        let desired = self.node.desired_replicas();
        {
            let mut f = e.family(
                "narun_app_desired_instances",
                Kind::Gauge,
                "Instances the app's spec asks of this node.",
            );
            for (app, n) in &desired {
                f.sample(&[("app", app)], f64::from(*n));
            }
        }
        let mut per_state: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for i in &instances {
            *per_state
                .entry((i.app_name.as_str(), i.status.as_str()))
                .or_default() += 1;
        }
        {
            let mut f = e.family(
                "narun_app_instances",
                Kind::Gauge,
                "Instances of the app on this node, by state (only states that have some).",
            );
            for ((app, state), n) in &per_state {
                f.sample(&[("app", app), ("state", state)], f64::from(*n));
            }
        }
        {
            let mut f = e.family(
                "narun_instance_state",
                Kind::Gauge,
                "1 for the state each instance is in (starting, running, backoff, failed, ...).",
            );
            for i in &instances {
                let labels = [
                    ("app", i.app_name.as_str()),
                    ("instance", i.instance_id.as_str()),
                    ("state", i.status.as_str()),
                    ("reason", i.reason.as_ref().map_or("", |r| r.as_str())),
                ];
                f.sample(&labels, 1.0);
            }
        }
        {
            let mut f = e.family(
                "narun_instance_up",
                Kind::Gauge,
                "1 while the instance serves (running or reloading), else 0.",
            );
            for i in &instances {
                let up = if i.status.is_up() { 1.0 } else { 0.0 };
                f.sample(&[("app", &i.app_name), ("instance", &i.instance_id)], up);
            }
        }
        {
            let mut f = e.family(
                "narun_instance_restarts_total",
                Kind::Counter,
                "Restarts of the instance by its restart policy since it was last started by a spec.",
            );
            for i in &instances {
                f.sample(
                    &[("app", &i.app_name), ("instance", &i.instance_id)],
                    f64::from(i.restarts),
                );
            }
        }
        {
            let restarts = self.node.host().counters.restarts();
            let mut f = e.family(
                "narun_app_restarts_total",
                Kind::Counter,
                "Restarts of the app's instances since narund started, by the reason of the exit (exit-code, signal, oom-kill, watchdog, start-timeout, ...).",
            );
            for ((app, reason), n) in &restarts {
                f.sample(&[("app", app), ("reason", reason)], *n as f64);
            }
        }
        // The cgroups of the runs narund recorded (running processes), per instance.
        let Some(root) = &self.cgroup_root else {
            return;
        };
        let facts = instance_facts(&self.node, root, false);
        type Pick = fn(&CgroupFacts) -> Option<f64>;
        let families: [(&str, Kind, &str, Pick); 5] = [
            (
                "narun_instance_cpu_seconds_total",
                Kind::Counter,
                "CPU time used by the instance's cgroup (usage_usec of cpu.stat); starts again at 0 with each run.",
                |f| f.cpu_seconds,
            ),
            (
                "narun_instance_memory_bytes",
                Kind::Gauge,
                "Memory used by the instance's cgroup (memory.current; needs the memory controller).",
                |f| f.memory_bytes.map(|v| v as f64),
            ),
            (
                "narun_instance_memory_peak_bytes",
                Kind::Gauge,
                "Highest memory use of the instance's current run (memory.peak; kernel 5.19+, memory controller).",
                |f| f.memory_peak_bytes.map(|v| v as f64),
            ),
            (
                "narun_instance_oom_events_total",
                Kind::Counter,
                "Times the instance's cgroup hit memory.max and the OOM killer was invoked (oom of memory.events), current run.",
                |f| f.oom.map(|o| o.0 as f64),
            ),
            (
                "narun_instance_oom_kills_total",
                Kind::Counter,
                "Processes of the instance killed by the OOM killer (oom_kill of memory.events), current run.",
                |f| f.oom.map(|o| o.1 as f64),
            ),
        ];
        for (name, kind, help, pick) in families {
            let mut f = e.family(name, kind, help);
            for ((app, instance), facts) in &facts {
                if let Some(v) = pick(facts) {
                    f.sample(&[("app", app), ("instance", instance)], v);
                }
            }
        }
    }

    fn work_metrics(&self, e: &mut Exposition) {
        let host = self.node.host();
        let (lines, bytes) = host.logs.received();
        let stats = host.logs.stats();
        for (name, help, v) in [
            (
                "narun_log_lines_total",
                "Log lines read from the apps' stdout and stderr.",
                lines,
            ),
            (
                "narun_log_bytes_total",
                "Bytes of the log lines read from the apps.",
                bytes,
            ),
            (
                "narun_log_lines_published_total",
                "Log lines published to NATS and confirmed by the server.",
                stats.published,
            ),
            (
                "narun_log_lines_dropped_total",
                "Log lines dropped: the offline spool was full, or a line could not be published.",
                stats.dropped,
            ),
        ] {
            e.family(name, Kind::Counter, help).sample(&[], v as f64);
        }
        e.family(
            "narun_log_spool_lines",
            Kind::Gauge,
            "Log lines waiting in the spool for NATS.",
        )
        .sample(&[], stats.spooled_lines as f64);
        e.family(
            "narun_log_spool_bytes",
            Kind::Gauge,
            "Bytes accounted in the log spool (bounded by logs.spool_bytes).",
        )
        .sample(&[], stats.spooled_bytes as f64);

        let fetch = host.cache.stats();
        let (n, secs) = fetch.downloads.get();
        e.family(
            "narun_fetch_duration_seconds",
            Kind::Summary,
            "Verified downloads of app binaries from the object store and the time they took (retries included).",
        )
        .suffixed("_sum", &[], secs)
        .suffixed("_count", &[], n as f64);
        for (name, help, v) in [
            (
                "narun_fetch_bytes_total",
                "Bytes of app binaries downloaded and verified.",
                fetch.bytes.load(Ordering::Relaxed),
            ),
            (
                "narun_fetch_failures_total",
                "Downloads of app binaries that failed (after their retries).",
                fetch.failed.load(Ordering::Relaxed),
            ),
            (
                "narun_fetch_cache_hits_total",
                "Starts whose binary was already in the cache (verified, not downloaded).",
                fetch.cache_hits.load(Ordering::Relaxed),
            ),
        ] {
            e.family(name, Kind::Counter, help).sample(&[], v as f64);
        }
        let (n, secs) = host.counters.reconciles.get();
        e.family(
            "narun_reconcile_duration_seconds",
            Kind::Summary,
            "Specs applied or removed (app-configs entries, offline starts) and the time each took, waits for the apply lock and rollouts included.",
        )
        .suffixed("_sum", &[], secs)
        .suffixed("_count", &[], n as f64);
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            cpu_usage_seconds("usage_usec 2500000\nuser_usec 1\nsystem_usec 2\n"),
            Some(2.5)
        );
        assert_eq!(cpu_usage_seconds("user_usec 1\n"), None);
        assert_eq!(cpu_usage_seconds(""), None);
        assert_eq!(
            loadavg("0.52 1.00 0.25 2/345 6789\n"),
            Some([0.52, 1.0, 0.25])
        );
        assert_eq!(loadavg("0.5 x"), None);
        assert_eq!(
            meminfo("MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    8192 kB\n"),
            (Some(16384 * 1024), Some(8192 * 1024))
        );
        assert_eq!(meminfo("garbage"), (None, None));
        // Hostile or truncated files: no panic, no nonsense.
        for bad in [
            "",
            "nan nan nan",
            "inf 1 1",
            "-1 0 0",
            "1 2",
            "\0\u{fffd} 1 2 3",
        ] {
            assert_eq!(loadavg(bad), None, "{bad:?}");
        }
        assert_eq!(
            meminfo("MemTotal: 18446744073709551615 kB\nMemAvailable: -5 kB\nMemTotal"),
            (None, None)
        );
        assert_eq!(meminfo("MemTotal:\nMemAvailable: kB"), (None, None));
        assert_eq!(uptime("123.45 678.9\n"), Some(123.45));
        assert_eq!(uptime(""), None);
        assert_eq!(
            resident("Name: narund\nVmRSS:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
    }

    #[test]
    fn facts_of_absent_files_are_none_and_sum_over_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CgroupFacts::read(dir.path()), CgroupFacts::default());
        assert_eq!(
            CgroupFacts::read(&dir.path().join("gone")),
            CgroupFacts::default()
        );
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 1000000\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 2\noom_kill 1\n",
        )
        .unwrap();
        let one = CgroupFacts::read(dir.path());
        assert_eq!(
            one,
            CgroupFacts {
                cpu_seconds: Some(1.0),
                memory_bytes: Some(4096),
                memory_peak_bytes: None,
                oom: Some((2, 1)),
            }
        );
        let mut two = one;
        two.add(one);
        assert_eq!(two.cpu_seconds, Some(2.0));
        assert_eq!(two.oom, Some((4, 2)));
        assert_eq!(two.memory_peak_bytes, None);
    }
}
