//! The metrics ring: per app on this node, one CPU/memory sample every `sample_sec`
//! (`[dashboard]`, default 10 s), the last [`KEEP`] kept (an hour at the default), for the
//! dashboard's sparklines. Bounded in both directions: at most [`KEEP`] samples per app,
//! and an app that no longer runs here loses its series at the next sample.
//!
//! [`Ring`] is pure (readings and times are given); [`sample_loop`] reads the instance
//! cgroups (`cpu.stat` usage, `memory.current`, the same files as `/metrics`,
//! [`crate::metrics::collect::CgroupFacts`]) and, without the memory controller, the
//! resident memory of the cgroup's processes (`VmRSS`).

use crate::metrics::collect::{CgroupFacts, resident};
use crate::node::Node;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Samples kept per app.
pub const KEEP: usize = 360;

/// What an app's cgroups said at one moment (summed over its instances).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Cumulative CPU seconds.
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// One point of a sparkline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_pct: Option<f64>,
    pub mem_bytes: Option<u64>,
}

/// The samples of every app (see the module doc).
#[derive(Debug, Default)]
pub struct Ring {
    series: BTreeMap<String, VecDeque<Sample>>,
    /// The previous reading's CPU seconds and time, per app.
    last_cpu: BTreeMap<String, (f64, f64)>,
}

impl Ring {
    /// Add the readings taken at `now` (Unix seconds); apps not in `readings` are dropped.
    pub fn record(&mut self, now: f64, readings: &BTreeMap<String, Reading>) {
        self.series.retain(|app, _| readings.contains_key(app));
        self.last_cpu.retain(|app, _| readings.contains_key(app));
        for (app, r) in readings {
            let cpu_pct = match (r.cpu_seconds, self.last_cpu.get(app)) {
                (Some(c), Some(&(c0, t0))) if c >= c0 && now > t0 => {
                    Some((c - c0) / (now - t0) * 100.0)
                }
                _ => None,
            };
            match r.cpu_seconds {
                Some(c) => {
                    self.last_cpu.insert(app.clone(), (c, now));
                }
                None => {
                    self.last_cpu.remove(app);
                }
            }
            let s = self.series.entry(app.clone()).or_default();
            if s.len() == KEEP {
                s.pop_front();
            }
            s.push_back(Sample {
                t: now as u64,
                cpu_pct,
                mem_bytes: r.memory_bytes,
            });
        }
    }

    /// The samples of `app`, oldest first.
    pub fn series(&self, app: &str) -> Vec<Sample> {
        self.series
            .get(app)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
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
        // cgroupfs and procfs files: read in place (they never wait for a disk).
        let readings = read_all(&node, &root);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        ring.lock().unwrap().record(now, &readings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cpu: f64, mem: u64) -> Reading {
        Reading {
            cpu_seconds: Some(cpu),
            memory_bytes: Some(mem),
        }
    }

    #[test]
    fn cpu_percent_from_deltas_bounded_and_dropped_apps() {
        let mut r = Ring::default();
        r.record(100.0, &[("a".to_string(), reading(1.0, 10))].into());
        r.record(110.0, &[("a".to_string(), reading(6.0, 20))].into());
        let s = r.series("a");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].cpu_pct, None, "no previous reading");
        assert_eq!(s[1].cpu_pct, Some(50.0));
        assert_eq!(s[1].mem_bytes, Some(20));
        // A restarted instance (its counter went back): no percentage, then again.
        r.record(120.0, &[("a".to_string(), reading(0.5, 20))].into());
        assert_eq!(r.series("a")[2].cpu_pct, None);
        for i in 0..(KEEP as u32 + 5) {
            r.record(
                130.0 + f64::from(i),
                &[("a".to_string(), reading(1.0, 1))].into(),
            );
        }
        assert_eq!(r.series("a").len(), KEEP);
        r.record(9999.0, &[("b".to_string(), Reading::default())].into());
        assert!(r.series("a").is_empty(), "a no longer runs here");
        assert_eq!(r.series("b").len(), 1);
    }
}
