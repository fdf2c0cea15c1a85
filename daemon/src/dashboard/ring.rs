//! The metrics ring: per app and node, CPU/memory samples for the dashboard's sparklines,
//! the last [`KEEP`] of each series (an hour at the default `sample_sec` of 10 s).
//!
//! * **This node**: one sample of every app every `sample_sec` (`[dashboard]`), read from
//!   the instance cgroups (`cpu.stat` usage, `memory.current`; without the memory
//!   controller the resident memory of the cgroup's processes), the files `/metrics`
//!   reads ([`crate::metrics::collect::instance_facts`]).
//! * **Every other node**: one sample per heartbeat, from the CPU time and memory each
//!   instance carries in it (`cpu_usec`, `memory_bytes`, docs/protocol.md), at the time
//!   the node stamped it (`last_seen`). A watch of `node-runner-states` delivers the
//!   heartbeats as they are put: no polling, nothing asked of the other nodes, and nodes
//!   without the dashboard (or the gateway) need nothing but their heartbeat. A node
//!   heart-beats every 15 s and on every instance change: ~90 minutes per series.
//!
//! Bounded in every direction: at most [`KEEP`] samples per series, at most
//! [`MAX_SERIES`] series (a flood of made-up node states adds no more), an app that no
//! longer runs on a node loses that node's series at the node's next sample, and a series
//! with no sample for [`STALE`] is dropped (a node gone for good).
//!
//! [`Ring`] is pure (readings and times are given); [`sample_loop`] and [`follow_nodes`]
//! feed it.

use crate::node::Node;
use futures_util::StreamExt;
use narun_wire::events::NodeState;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Samples kept per series (app, node).
pub const KEEP: usize = 360;
/// Most series kept (apps × nodes).
pub const MAX_SERIES: usize = 4096;
/// A series with no sample for this long is dropped (seconds).
pub const STALE: f64 = 2.0 * 3600.0;

/// What an app's cgroups on one node said at one moment (summed over its instances).
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

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    /// The previous reading's CPU seconds and time.
    last_cpu: Option<(f64, f64)>,
    /// Time of the newest sample (Unix seconds, the reading's own clock).
    last: f64,
    /// When it was recorded (Unix seconds, this node's clock: staleness is measured on it,
    /// so a node's skewed clock cannot age out other series).
    touched: f64,
}

/// The samples of every app on every node (see the module doc).
#[derive(Debug, Default)]
pub struct Ring {
    /// By (app, node).
    series: BTreeMap<(String, String), Series>,
}

/// Add `b` to `a` (`None` only when both are).
fn sum<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl Ring {
    /// Add the readings of `node` taken at `now` (Unix seconds, the node's clock), at
    /// `local` (this node's clock): the node's apps not in `readings` lose their series;
    /// series not recorded for [`STALE`] are dropped. A reading not newer than the
    /// series' newest sample is ignored (a heartbeat seen twice).
    pub fn record(
        &mut self,
        node: &str,
        now: f64,
        local: f64,
        readings: &BTreeMap<String, Reading>,
    ) {
        self.series.retain(|(app, n), s| {
            (n != node || readings.contains_key(app)) && local - s.touched <= STALE
        });
        for (app, r) in readings {
            let key = (app.clone(), node.to_string());
            if !self.series.contains_key(&key) && self.series.len() >= MAX_SERIES {
                continue;
            }
            let s = self.series.entry(key).or_default();
            if !s.samples.is_empty() && now <= s.last {
                continue;
            }
            let cpu_pct = match (r.cpu_seconds, s.last_cpu) {
                (Some(c), Some((c0, t0))) if c >= c0 && now > t0 => {
                    Some((c - c0) / (now - t0) * 100.0)
                }
                _ => None,
            };
            s.last_cpu = r.cpu_seconds.map(|c| (c, now));
            (s.last, s.touched) = (now, local);
            if s.samples.len() == KEEP {
                s.samples.pop_front();
            }
            s.samples.push_back(Sample {
                t: now as u64,
                cpu_pct,
                mem_bytes: r.memory_bytes,
            });
        }
    }

    /// The samples of `app`, by node, oldest first.
    pub fn series(&self, app: &str) -> BTreeMap<String, Vec<Sample>> {
        self.series
            .iter()
            .filter(|((a, _), _)| a == app)
            .map(|((_, node), s)| (node.clone(), s.samples.iter().copied().collect()))
            .collect()
    }
}

/// The readings of one heartbeat, per app, and its time (Unix seconds; `None` when
/// `last_seen` is no RFC 3339 time).
pub fn heartbeat_readings(state: &NodeState) -> Option<(f64, BTreeMap<String, Reading>)> {
    let t = time::OffsetDateTime::parse(
        &state.last_seen,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    let mut out: BTreeMap<String, Reading> = BTreeMap::new();
    for i in &state.instances {
        if i.cpu_usec.is_none() && i.memory_bytes.is_none() {
            continue;
        }
        let e = out.entry(i.app_name.clone()).or_default();
        e.cpu_seconds = sum(e.cpu_seconds, i.cpu_usec.map(|u| u as f64 / 1e6));
        e.memory_bytes = sum(e.memory_bytes, i.memory_bytes);
    }
    Some((t.unix_timestamp_nanos() as f64 / 1e9, out))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Sample this node's apps every `every` into `ring` until `stop` (nothing without cgroups).
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
    let me = node.settings().node_id.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut readings: BTreeMap<String, Reading> = BTreeMap::new();
        for ((app, _), f) in crate::metrics::collect::instance_facts(&node, &root, true) {
            let e = readings.entry(app).or_default();
            e.cpu_seconds = sum(e.cpu_seconds, f.cpu_seconds);
            e.memory_bytes = sum(e.memory_bytes, f.memory_bytes);
        }
        let now = unix_now();
        ring.lock().unwrap().record(&me, now, now, &readings);
    }
}

/// Record the heartbeats of the other nodes into `ring` as they are put, until `stop`: a
/// watch of `node-runner-states`, opened again (250 ms doubling to 30 s) when it ends or
/// the bucket is not there yet.
pub async fn follow_nodes(
    client: async_nats::Client,
    me: String,
    ring: Arc<Mutex<Ring>>,
    stop: CancellationToken,
) {
    let js = async_nats::jetstream::new(client);
    let mut delay = Duration::from_millis(250);
    loop {
        let watch = async {
            let store = narun_wire::jetstream::NODE_STATES.open(&js).await.ok()??;
            store.watch_all().await.ok()
        };
        let watch = tokio::select! {
            w = tokio::time::timeout(Duration::from_secs(10), watch) => w.ok().flatten(),
            _ = stop.cancelled() => return,
        };
        if let Some(mut watch) = watch {
            loop {
                let entry = tokio::select! {
                    e = watch.next() => e,
                    _ = stop.cancelled() => return,
                };
                let Some(Ok(entry)) = entry else { break };
                delay = Duration::from_millis(250);
                if entry.key == me || entry.operation != async_nats::jetstream::kv::Operation::Put {
                    continue;
                }
                let Ok(state) = serde_json::from_slice::<NodeState>(&entry.value) else {
                    continue;
                };
                if state.node_id != entry.key {
                    continue;
                }
                if let Some((t, readings)) = heartbeat_readings(&state) {
                    ring.lock()
                        .unwrap()
                        .record(&entry.key, t, unix_now(), &readings);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::events::InstanceState;

    fn reading(cpu: f64, mem: u64) -> Reading {
        Reading {
            cpu_seconds: Some(cpu),
            memory_bytes: Some(mem),
        }
    }

    fn one(app: &str, r: Reading) -> BTreeMap<String, Reading> {
        [(app.to_string(), r)].into()
    }

    #[test]
    fn cpu_percent_from_deltas_bounded_and_dropped_apps() {
        let mut r = Ring::default();
        r.record("n1", 100.0, 100.0, &one("a", reading(1.0, 10)));
        r.record("n1", 110.0, 110.0, &one("a", reading(6.0, 20)));
        let s = &r.series("a")["n1"];
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].cpu_pct, None, "no previous reading");
        assert_eq!(s[1].cpu_pct, Some(50.0));
        assert_eq!(s[1].mem_bytes, Some(20));
        // A restarted instance (its counter went back): no percentage, then again.
        r.record("n1", 120.0, 120.0, &one("a", reading(0.5, 20)));
        assert_eq!(r.series("a")["n1"][2].cpu_pct, None);
        for i in 0..(KEEP as u32 + 5) {
            r.record(
                "n1",
                130.0 + f64::from(i),
                130.0 + f64::from(i),
                &one("a", reading(1.0, 1)),
            );
        }
        assert_eq!(r.series("a")["n1"].len(), KEEP);
        r.record("n1", 999.0, 999.0, &one("b", Reading::default()));
        assert!(r.series("a").is_empty(), "a no longer runs on n1");
        assert_eq!(r.series("b")["n1"].len(), 1);
    }

    #[test]
    fn nodes_have_their_own_series_stale_ones_go_and_the_count_is_bounded() {
        let mut r = Ring::default();
        r.record("n1", 100.0, 100.0, &one("a", reading(1.0, 10)));
        r.record("n2", 100.0, 100.0, &one("a", reading(3.0, 30)));
        r.record("n2", 115.0, 115.0, &one("a", reading(6.0, 30)));
        // A heartbeat seen twice (or older than the newest sample) adds nothing.
        r.record("n2", 115.0, 115.0, &one("a", reading(9.0, 30)));
        r.record("n2", 101.0, 101.0, &one("a", reading(9.0, 30)));
        let s = r.series("a");
        assert_eq!(s["n1"].len(), 1, "n2's readings leave n1's series alone");
        assert_eq!(s["n2"].len(), 2);
        assert_eq!(s["n2"][1].cpu_pct, Some(20.0));
        // A node whose clock is far ahead ages no other series out.
        r.record("n3", 1e12, 116.0, &one("a", reading(1.0, 1)));
        assert_eq!(r.series("a").len(), 3);
        // n1 says nothing for longer than STALE (by this node's clock): its series goes.
        let later = 100.0 + STALE + 1.0;
        r.record("n2", later, later, &one("a", reading(9.0, 30)));
        assert_eq!(r.series("a").keys().collect::<Vec<_>>(), ["n2", "n3"]);
        // Made-up nodes cannot grow the ring without bound.
        for i in 0..(MAX_SERIES + 50) {
            r.record(
                &format!("fake-{i}"),
                9000.0,
                9000.0,
                &one("a", reading(1.0, 1)),
            );
        }
        assert_eq!(r.series("a").len(), MAX_SERIES);
    }

    #[test]
    fn heartbeats_give_readings_per_app_at_their_own_time() {
        let inst = |app: &str, id: &str, cpu: Option<u64>, mem: Option<u64>| InstanceState {
            app_name: app.into(),
            instance_id: id.into(),
            cpu_usec: cpu,
            memory_bytes: mem,
            ..Default::default()
        };
        let state = NodeState {
            node_id: "n2".into(),
            last_seen: "2026-01-01T00:00:10.5Z".into(),
            instances: vec![
                inst("a", "a-0", Some(1_000_000), Some(100)),
                inst("a", "a-1", Some(500_000), None),
                inst("b", "b-0", None, None),
            ],
            ..Default::default()
        };
        let (t, readings) = heartbeat_readings(&state).unwrap();
        assert_eq!(t, 1_767_225_610.5);
        assert_eq!(readings.len(), 1, "b carries no reading (an older narund)");
        assert_eq!(readings["a"], reading(1.5, 100));
        let bad = NodeState {
            last_seen: "yesterday".into(),
            ..state
        };
        assert!(heartbeat_readings(&bad).is_none());
    }
}
