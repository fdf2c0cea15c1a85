//! The metrics ring: per app and node, CPU/memory samples for the dashboard's sparklines,
//! the last [`KEEP`] of each series (an hour at the default `sample_sec` of 10 s).
//!
//! * **This node**: one sample of every app every `sample_sec` (`[dashboard]`), read from
//!   the instance cgroups (`cpu.stat` usage, `memory.current`; without the memory
//!   controller the resident memory of the cgroup's processes), the files `/metrics`
//!   reads ([`crate::metrics::collect::instance_facts`]).
//! * **Every other node**: one sample per heartbeat, from the CPU time and memory each
//!   instance carries in it (`cpu_usec`, `memory_bytes`, docs/protocol.md), at the time
//!   the node stamped it (`last_seen`). The heartbeats are read from `node-runner-states`
//!   every `sample_sec` (what the nodes view reads): nothing is asked of the other nodes,
//!   and nodes without the dashboard (or the gateway) need nothing but their heartbeat.
//!   A node heart-beats every 15 s and on every instance change: ~90 minutes per series.
//!
//! Bounded in every direction: at most [`KEEP`] samples per series, at most
//! [`MAX_SERIES`] series (a flood of made-up node states adds no more), an app that no
//! longer runs on a node loses that node's series at the node's next sample, and a series
//! with no sample for [`STALE`] is dropped (a node gone for good).
//!
//! [`Ring`] is pure (readings and times are given); [`sample_loop`] feeds it.

use crate::metrics::collect::sum;
use crate::node::Node;
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_pct: Option<f64>,
    pub mem_bytes: Option<u64>,
}

#[derive(Debug)]
struct Series {
    app: String,
    node: String,
    samples: VecDeque<Sample>,
    /// The previous reading's CPU seconds and time.
    last_cpu: Option<(f64, f64)>,
    /// Time of the newest sample (Unix seconds, the reading's own clock).
    last: f64,
    /// When it was recorded (Unix seconds, this node's clock: staleness is measured on it,
    /// so a node's skewed clock cannot age out other series).
    touched: f64,
}

/// The samples of every app on every node (see the module doc). A plain list searched
/// from end to end (at most [`MAX_SERIES`], each step a string compare): no map's code
/// in narund for it.
#[derive(Debug, Default)]
pub struct Ring {
    series: Vec<Series>,
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
        self.series.retain(|s| {
            (s.node != node || readings.contains_key(&s.app)) && local - s.touched <= STALE
        });
        for (app, r) in readings {
            let i = match self
                .series
                .iter()
                .position(|s| s.app == *app && s.node == node)
            {
                Some(i) => i,
                None if self.series.len() >= MAX_SERIES => continue,
                None => {
                    self.series.push(Series {
                        app: app.clone(),
                        node: node.to_string(),
                        samples: VecDeque::new(),
                        last_cpu: None,
                        last: 0.0,
                        touched: local,
                    });
                    self.series.len() - 1
                }
            };
            let s = &mut self.series[i];
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

    /// The samples of `app` as JSON, `{"<node>": [{"t", "cpu_pct", "mem_bytes"}, …]}`,
    /// oldest first (written by hand: a map of typed series would add its serializer's
    /// code to narund).
    pub fn series_json(&self, app: &str) -> String {
        use std::fmt::Write;
        let mut out = String::from("{");
        for s in self.series.iter().filter(|s| s.app == app) {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(s.node.as_str()).to_string());
            out.push_str(":[");
            for (i, x) in s.samples.iter().enumerate() {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
                let _ = write!(
                    out,
                    "{}{{\"t\":{},\"cpu_pct\":{},\"mem_bytes\":{}}}",
                    if i == 0 { "" } else { "," },
                    x.t,
                    opt(x
                        .cpu_pct
                        .filter(|c| c.is_finite())
                        .map(|c| format!("{c:.3}"))),
                    opt(x.mem_bytes.map(|m| m.to_string())),
                );
            }
            out.push(']');
        }
        out.push('}');
        out
    }

    /// The samples of `app`, by node, oldest first.
    #[cfg(test)]
    pub fn series(&self, app: &str) -> BTreeMap<String, Vec<Sample>> {
        self.series
            .iter()
            .filter(|s| s.app == app)
            .map(|s| (s.node.clone(), s.samples.iter().copied().collect()))
            .collect()
    }
}

/// The readings of one heartbeat (a `NodeState` as JSON), per app, and its time (Unix
/// seconds; `None` when `last_seen` is no RFC 3339 time). Read from the JSON value (the
/// dashboard decodes heartbeats as values already): no decoder of its own.
pub fn heartbeat_readings(state: &serde_json::Value) -> Option<(f64, BTreeMap<String, Reading>)> {
    let t = time::OffsetDateTime::parse(
        state["last_seen"].as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    let mut out: BTreeMap<String, Reading> = BTreeMap::new();
    for i in state["instances"].as_array().into_iter().flatten() {
        let (cpu, mem) = (i["cpu_usec"].as_u64(), i["memory_bytes"].as_u64());
        let Some(app) = i["app_name"].as_str().filter(|_| cpu.or(mem).is_some()) else {
            continue;
        };
        let e = out.entry(app.to_string()).or_default();
        e.cpu_seconds = sum(e.cpu_seconds, cpu.map(|u| u as f64 / 1e6));
        e.memory_bytes = sum(e.memory_bytes, mem);
    }
    Some((t.unix_timestamp_nanos() as f64 / 1e9, out))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Every `every` until `stop`: sample this node's apps (with cgroups) and read the other
/// nodes' heartbeats (`node-runner-states`, each bounded by the API's timeout) into `ring`.
/// A heartbeat read again adds nothing (its `last_seen` is not newer); at the default
/// 10 s every heartbeat (15 s apart) is seen.
pub async fn sample_loop(
    node: Node,
    js: async_nats::jetstream::Context,
    cgroup_root: Option<PathBuf>,
    ring: Arc<Mutex<Ring>>,
    every: Duration,
    stop: CancellationToken,
) {
    let me = node.settings().node_id.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(root) = &cgroup_root {
            let mut readings: BTreeMap<String, Reading> = BTreeMap::new();
            for ((app, _), f) in crate::metrics::collect::instance_facts(&node, root, true) {
                let e = readings.entry(app).or_default();
                e.cpu_seconds = sum(e.cpu_seconds, f.cpu_seconds);
                e.memory_bytes = sum(e.memory_bytes, f.memory_bytes);
            }
            let now = unix_now();
            ring.lock().unwrap().record(&me, now, now, &readings);
        }
        let states = tokio::select! {
            s = super::api::json_entries(&js, &narun_wire::jetstream::NODE_STATES) => s,
            _ = stop.cancelled() => return,
        };
        for (key, state) in states.unwrap_or_default() {
            // A value stored under another node's key is not that node's heartbeat.
            if key == me || state["node_id"].as_str() != Some(key.as_str()) {
                continue;
            }
            if let Some((t, readings)) = heartbeat_readings(&state) {
                ring.lock().unwrap().record(&key, t, unix_now(), &readings);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::events::{InstanceState, NodeState};

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
    fn series_as_json_by_node() {
        let mut r = Ring::default();
        assert_eq!(r.series_json("a"), "{}");
        r.record("n\"1", 100.0, 100.0, &one("a", reading(1.0, 10)));
        r.record("n\"1", 110.0, 110.0, &one("a", reading(2.0, 20)));
        r.record("n2", 100.0, 100.0, &one("a", Reading::default()));
        r.record("n2", 100.0, 100.0, &one("b", reading(1.0, 1)));
        let v: serde_json::Value = serde_json::from_str(&r.series_json("a")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "n\"1": [
                    {"t": 100, "cpu_pct": null, "mem_bytes": 10},
                    {"t": 110, "cpu_pct": 10.0, "mem_bytes": 20},
                ],
            })
        );
        let v: serde_json::Value = serde_json::from_str(&r.series_json("b")).unwrap();
        assert_eq!(v["n2"][0]["mem_bytes"], 1);
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
        let json = |s: &NodeState| serde_json::to_value(s).unwrap();
        let (t, readings) = heartbeat_readings(&json(&state)).unwrap();
        assert_eq!(t, 1_767_225_610.5);
        assert_eq!(readings.len(), 1, "b carries no reading (an older narund)");
        assert_eq!(readings["a"], reading(1.5, 100));
        let bad = NodeState {
            last_seen: "yesterday".into(),
            ..state
        };
        assert!(heartbeat_readings(&json(&bad)).is_none());
        assert!(heartbeat_readings(&serde_json::json!("junk")).is_none());
    }
}
