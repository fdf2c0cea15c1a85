//! Per-client rate limits of a route (`[gateway.routes.rate_limit]`): a token bucket per
//! client address, refilled at `rate` requests per second up to `burst`.
//!
//! ```toml
//! [gateway.routes.rate_limit]
//! rate = 5.0          # requests per second, sustained
//! burst = 20          # requests at once after an idle spell
//! max_clients = 4096  # client addresses remembered (memory bound)
//! ```
//!
//! * **The client is the TCP peer**, never `X-Forwarded-For` or any other header a client
//!   can write. An IPv6 client is its /64 (one host usually owns a whole /64, so rotating
//!   addresses inside it gains nothing); an IPv4-mapped IPv6 address is its IPv4 address.
//! * **Bounded memory against address rotation.** The table holds at most `max_clients`
//!   buckets (about 40 bytes each plus the map's overhead). When it is full, buckets that
//!   have refilled completely (idle clients: forgetting them loses nothing) are swept, at
//!   most once a second; if it is still full, a client not in the table shares one
//!   **overflow bucket** with every other such client. Rotating addresses therefore never
//!   buys a fresh burst and never evicts a limited client: the rotating clients together
//!   get one bucket's worth of requests.
//! * Over the limit: **429** with `Retry-After` (whole seconds until a token is back),
//!   counted in `gateway_rate_limited_total{path}`, before authorization (a password
//!   guess costs a token) and before the body is read.
//!
//! [`Table`] is the pure state machine (time passed in), unit-tested without sockets.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default number of client addresses a route's table remembers.
pub const DEFAULT_MAX_CLIENTS: u32 = 4096;
/// Largest `max_clients` accepted.
pub const MAX_MAX_CLIENTS: u32 = 1_000_000;
const KEYS: &str = "rate, burst, max_clients";

/// `[gateway.routes.rate_limit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client (> 0; e.g. 0.5 = one every 2 s).
    pub rate: f64,
    /// Requests a client may send at once (≥ 1).
    pub burst: u32,
    /// Client addresses remembered; more share one overflow bucket.
    pub max_clients: u32,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            rate: 0.0,
            burst: 0,
            max_clients: DEFAULT_MAX_CLIENTS,
            unknown: BTreeMap::new(),
        }
    }
}

impl RateLimitConfig {
    /// Problems as (key path, reason); `key` is the table's path.
    pub(crate) fn problems(&self, key: &str) -> Vec<(String, String)> {
        let mut e = Vec::new();
        for k in self.unknown.keys() {
            e.push((
                format!("{key}.{k}"),
                format!("unknown key (known keys: {KEYS})"),
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1e6) {
            e.push((
                format!("{key}.rate"),
                "is required: requests per second, more than 0 and at most 1000000 (e.g. 0.5 or 10)"
                    .into(),
            ));
        }
        if self.burst == 0 {
            e.push((
                format!("{key}.burst"),
                "is required: requests a client may send at once, at least 1".into(),
            ));
        }
        if self.max_clients == 0 || self.max_clients > MAX_MAX_CLIENTS {
            e.push((
                format!("{key}.max_clients"),
                format!("must be 1 to {MAX_MAX_CLIENTS}"),
            ));
        }
        e
    }
}

/// The client a bucket belongs to: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6Net(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(u32::from(v4)),
                None => ClientKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Refill to `now`, then take one token or say how long until one is back.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn full_at(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * rate >= burst
    }
}

/// A route's buckets (pure: the caller passes the time).
#[derive(Debug)]
pub struct Table {
    rate: f64,
    burst: f64,
    max: usize,
    clients: HashMap<ClientKey, Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl Table {
    pub fn new(rate: f64, burst: u32, max_clients: u32) -> Table {
        Table {
            rate,
            burst: f64::from(burst),
            max: max_clients as usize,
            clients: HashMap::new(),
            overflow: None,
            last_sweep: None,
        }
    }

    /// Clients remembered (for tests and the docs' memory bound).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// One request of `client` at `now`: `Err(retry_after)` when over the limit.
    pub fn check(&mut self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.clients.get_mut(&client) {
            return b.take(now, rate, burst);
        }
        if self.clients.len() >= self.max
            && self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.last_sweep = Some(now);
            self.clients.retain(|_, b| !b.full_at(now, rate, burst));
        }
        let fresh = Bucket {
            tokens: burst,
            last: now,
        };
        if self.clients.len() < self.max {
            return self
                .clients
                .entry(client)
                .or_insert(fresh)
                .take(now, rate, burst);
        }
        self.overflow.get_or_insert(fresh).take(now, rate, burst)
    }
}

/// A route's limiter: the table behind a mutex (held for a hash lookup).
#[derive(Debug)]
pub struct Limiter {
    table: Mutex<Table>,
}

impl Limiter {
    pub fn new(cfg: &RateLimitConfig) -> Limiter {
        Limiter {
            table: Mutex::new(Table::new(cfg.rate, cfg.burst, cfg.max_clients)),
        }
    }

    /// `Err(retry_after_secs)` (≥ 1) when `ip` is over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let r = self
            .table
            .lock()
            .expect("rate table")
            .check(ClientKey::of(ip), Instant::now());
        r.map_err(|d| d.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientKey {
        ClientKey::of(s.parse().unwrap())
    }

    #[test]
    fn buckets_refill_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut t = Table::new(2.0, 3, 100);
        for _ in 0..3 {
            assert!(t.check(ip("10.0.0.1"), t0).is_ok());
        }
        let wait = t.check(ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another client is not affected.
        assert!(t.check(ip("10.0.0.2"), t0).is_ok());
        // Half a second later one token is back, not more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(t.check(ip("10.0.0.1"), t1).is_ok());
        assert!(t.check(ip("10.0.0.1"), t1).is_err());
        // A long pause refills to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(t.check(ip("10.0.0.1"), t2).is_ok());
        }
        assert!(t.check(ip("10.0.0.1"), t2).is_err());
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_v4_is_v4() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn rotating_addresses_share_one_overflow_bucket_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut t = Table::new(1.0, 2, 4);
        // A real client, limited.
        assert!(t.check(ip("192.0.2.1"), t0).is_ok());
        assert!(t.check(ip("192.0.2.1"), t0).is_ok());
        assert!(t.check(ip("192.0.2.1"), t0).is_err());
        // An attacker rotates through 10 000 addresses at the same instant.
        let mut passed = 0;
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            if t.check(ClientKey::V4(u32::from(a)), t0).is_ok() {
                passed += 1;
            }
        }
        // One request per address for the 3 free table slots, then the overflow
        // bucket's burst of 2 for the other 9 997 together.
        assert_eq!(passed, 3 + 2);
        assert_eq!(t.len(), 4);
        // The limited client was not evicted: still limited.
        assert!(t.check(ip("192.0.2.1"), t0).is_err());
        // Once the idle buckets have refilled, a sweep makes room for new clients.
        let later = t0 + Duration::from_secs(10);
        assert!(t.check(ip("198.51.100.7"), later).is_ok());
        assert!(t.len() <= 4);
    }
}
