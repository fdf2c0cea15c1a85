//! The few numbers narund counts as things happen (everything else in `/metrics` is read
//! at scrape time): restarts by reason, and durations (reconciles, downloads) as a count
//! and a total. A leaf: it imports none of narund's modules, so [`crate::instance`],
//! [`crate::node`] and [`crate::fetch`] can all count into it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counted events of the node (one per [`crate::instance::Host`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// Restarts per (app, reason of the exit that caused it).
    restarts: Mutex<BTreeMap<(String, String), u64>>,
    /// Spec applies and removals (`app-configs` entries, offline starts).
    pub reconciles: Durations,
}

impl Counters {
    /// One restart of an instance of `app` after an exit with `reason`.
    pub fn restart(&self, app: &str, reason: &str) {
        let mut m = self.restarts.lock().unwrap();
        *m.entry((app.to_string(), reason.to_string())).or_default() += 1;
    }

    /// Restarts per (app, reason).
    pub fn restarts(&self) -> BTreeMap<(String, String), u64> {
        self.restarts.lock().unwrap().clone()
    }
}

/// How many times something took how long, in total (a Prometheus summary without
/// quantiles: `_count` and `_sum`).
#[derive(Debug, Default)]
pub struct Durations {
    count: AtomicU64,
    micros: AtomicU64,
}

impl Durations {
    /// Count one that took `took`.
    pub fn record(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(us, Ordering::Relaxed);
    }

    /// Count the time from now until the returned guard drops.
    pub fn time(&self) -> Timer<'_> {
        Timer(self, Instant::now())
    }

    /// (how many, total seconds).
    pub fn get(&self) -> (u64, f64) {
        let us = self.micros.load(Ordering::Relaxed);
        (self.count.load(Ordering::Relaxed), us as f64 / 1e6)
    }
}

/// From [`Durations::time`]: records the elapsed time when dropped.
pub struct Timer<'a>(&'a Durations, Instant);

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.0.record(self.1.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let c = Counters::default();
        c.restart("web", "exit-code");
        c.restart("web", "exit-code");
        c.restart("web", "signal");
        let r = c.restarts();
        assert_eq!(r[&("web".into(), "exit-code".into())], 2);
        assert_eq!(r[&("web".into(), "signal".into())], 1);
        c.reconciles.record(Duration::from_millis(1500));
        drop(c.reconciles.time());
        let (n, s) = c.reconciles.get();
        assert_eq!(n, 2);
        assert!((1.5..2.0).contains(&s), "{s}");
    }
}
