//! The metrics ring: per app on this node, one CPU/memory sample every `sample_sec`
//! (`[dashboard]`, default 10 s), the last [`KEEP`] kept (an hour at the default), for the
//! dashboard's sparklines. Bounded in both directions: at most [`KEEP`] samples per app,
//! and an app that no longer runs here loses its series at the next sample.
//!
//! [`Ring`] is pure (readings and times are given); narund's sampler (`narund::dashboard`)
//! reads the instance cgroups (`cpu.stat` usage, `memory.current`, the same files as its
//! `/metrics`) and, without the memory controller, the resident memory of the cgroup's
//! processes (`VmRSS`).

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

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
