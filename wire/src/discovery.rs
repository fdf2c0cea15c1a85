//! Waiting for a service to appear: the backoff of the retries, and the Micro discovery
//! ping `$SRV.PING.<name>` that tells whether any instance of a service runs now.
//!
//! NATS says nothing when a subscriber arrives, so "wait until service X is there" is a
//! question asked again: each try is one request that the server answers **at once**
//! (a reply from an instance, or the `503` no-responders status when nobody is
//! subscribed), never a wait on a timeout. [`Backoff`] spaces the tries: 20 ms, 40 ms,
//! 80 ms … up to a cap, with ±20 % jitter so that many waiters do not ask in step.
//! With the app library's cap of 250 ms a service that appears is seen within a quarter
//! of a second, at the cost of at most four requests a second while it is missing.
//!
//! Users: `narun::Client::wait_for_responder` (retries the call itself on no
//! responders), and narund's spec `after = [...]` (pings the named services before it
//! starts an app, [`answers`]).
//!
//! ```no_run
//! # async fn demo(nats: async_nats::Client) {
//! use narun_wire::discovery::{Backoff, answers};
//! use std::time::Duration;
//! let mut backoff = Backoff::services();
//! while !answers(&nats, "db", Duration::from_secs(2)).await {
//!     tokio::time::sleep(backoff.next().unwrap()).await;
//! }
//! # }
//! ```

use std::time::Duration;

/// The subject that every instance of service `name` answers with its ping document.
pub fn ping_subject(name: &str) -> String {
    format!("$SRV.PING.{name}")
}

/// Delays between tries: `first`, doubling up to `cap`, each with ±20 % jitter.
/// A pure iterator (the jitter comes from a seed), unit-tested.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
    seed: u64,
}

impl Backoff {
    /// From `first` up to `cap`; `seed` drives the jitter (use a random one).
    pub fn new(first: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            next: first.min(cap),
            cap,
            seed: seed | 1,
        }
    }

    /// The app library's: 20 ms up to 250 ms (a call waits on it).
    pub fn calls() -> Backoff {
        Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(250),
            random_seed(),
        )
    }

    /// narund's `after`: 50 ms up to 2 s (an app start waits on it; many apps may wait on
    /// one missing service for minutes).
    pub fn services() -> Backoff {
        Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
            random_seed(),
        )
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        // xorshift64: jitter of -20 %..+20 %.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let permille = (self.seed % 401) as u32; // 0..=400
        Some(base * (800 + permille) / 1000)
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// Whether at least one instance of service `name` answers `$SRV.PING.<name>` now
/// (within `timeout`; with no instance the server answers "no responders" at once).
pub async fn answers(client: &async_nats::Client, name: &str, timeout: Duration) -> bool {
    let req = async_nats::Request::new()
        .payload(bytes::Bytes::new())
        .timeout(Some(timeout));
    matches!(client.send_request(ping_subject(name), req).await, Ok(m) if !m.payload.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let first = Duration::from_millis(20);
        let cap = Duration::from_millis(250);
        let delays: Vec<Duration> = Backoff::new(first, cap, 42).take(12).collect();
        let bases = [20u64, 40, 80, 160, 250, 250, 250, 250, 250, 250, 250, 250];
        for (d, b) in delays.iter().zip(bases) {
            let b = Duration::from_millis(b);
            assert!(*d >= b * 8 / 10 && *d <= b * 12 / 10, "{d:?} vs {b:?}");
        }
        // Jitter differs between seeds (waiters do not ask in step).
        let other: Vec<Duration> = Backoff::new(first, cap, 7).take(12).collect();
        assert_ne!(delays, other);
        // Never zero, even from a zero seed or a first delay above the cap.
        assert!(
            Backoff::new(cap * 4, cap, 0)
                .take(100)
                .all(|d| d >= cap * 8 / 10)
        );
    }

    #[test]
    fn ping_subjects() {
        assert_eq!(ping_subject("db"), "$SRV.PING.db");
    }
}
