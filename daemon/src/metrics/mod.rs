//! narund's own Prometheus endpoint: `GET /metrics` on `[metrics] addr` (off by default),
//! no gateway needed.
//!
//! ```text
//!  Prometheus ──GET /metrics──▶ server.rs ──▶ collect.rs ──▶ text.rs
//!                              (bounded       (instance table,   (HELP, TYPE,
//!                               HTTP/1.x)      cgroup files,      escaping)
//!                                              /proc, counters)
//! ```
//!
//! Everything is computed when a scrape comes (narund keeps no timer for metrics); the
//! only numbers counted as things happen live in [`counters`] (restarts by reason,
//! reconcile durations), the log forwarder and the binary cache. The address is put in
//! the node's heartbeat (`metrics_addr`), from which the gateway builds a Prometheus HTTP
//! service-discovery document (docs/gateway.md). Every metric: docs/metrics.md.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`MetricsConfig`] (`[metrics]`), the advertised address |
//! | `counters.rs` | what is counted as it happens (a leaf: instance, node and fetch count into it) |
//! | `collect.rs` | the scrape: what is read and how it is named |
//! | `text.rs` | the text exposition format, written by hand (no metrics library in narund) |
//! | `server.rs` | the minimal, bounded HTTP/1.x listener |

pub mod collect;
pub mod counters;
pub mod server;
pub mod text;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[metrics]`: narund's `/metrics` listener.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ip:port` to serve `/metrics` on (e.g. `127.0.0.1:9101`, `0.0.0.0:9101`); empty (the
    /// default): no listener. The metrics show app names, states and resource use: bind a
    /// public address only on a network you trust with that.
    pub addr: String,
    /// `host:port` Prometheus should scrape, put in the heartbeat for the gateway's
    /// service-discovery document. Empty (the default): the address bound, with an
    /// unspecified IP (`0.0.0.0`, `[::]`) replaced by the host name.
    pub advertise: String,
}

impl MetricsConfig {
    /// Problems, one per line, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.addr.is_empty() && self.addr.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "metrics.addr: {:?} is not an ip:port address (e.g. \"127.0.0.1:9101\", \
                 \"[::]:9101\"); leave it empty to serve no metrics",
                self.addr
            ));
        }
        if !self.advertise.is_empty() && !valid_target(&self.advertise) {
            p.push(format!(
                "metrics.advertise: {:?} is not a host:port target (e.g. \"node-1.lan:9101\")",
                self.advertise
            ));
        }
        if self.addr.is_empty() && !self.advertise.is_empty() {
            p.push("metrics.advertise: is set, but metrics.addr is empty (no listener)".into());
        }
        p
    }

    /// The target to announce for the listener bound at `bound`.
    pub fn advertised(&self, bound: SocketAddr, hostname: &str) -> String {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        if bound.ip().is_unspecified() {
            format!("{hostname}:{}", bound.port())
        } else {
            bound.to_string()
        }
    }
}

/// `host:port` with a port number and a host of letters, digits, `.`, `-`, `_`, or a
/// bracketed IPv6 address.
fn valid_target(t: &str) -> bool {
    if t.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_problems_name_the_key() {
        assert!(MetricsConfig::default().problems().is_empty());
        let c = |addr: &str, advertise: &str| MetricsConfig {
            addr: addr.into(),
            advertise: advertise.into(),
        };
        assert!(c("127.0.0.1:9101", "").problems().is_empty());
        assert!(c("[::]:0", "node-1.lan:9101").problems().is_empty());
        let p = c("localhost:9101", "").problems();
        assert!(
            p[0].starts_with("metrics.addr: \"localhost:9101\""),
            "{p:?}"
        );
        let p = c("0.0.0.0:9101", "no port").problems();
        assert!(p[0].starts_with("metrics.advertise: "), "{p:?}");
        let p = c("0.0.0.0:9101", "a b:1").problems();
        assert_eq!(p.len(), 1, "{p:?}");
        let p = c("", "n:1").problems();
        assert!(p[0].contains("metrics.addr is empty"), "{p:?}");
    }

    #[test]
    fn advertised_address() {
        let c = MetricsConfig {
            addr: "0.0.0.0:9101".into(),
            advertise: String::new(),
        };
        assert_eq!(
            c.advertised("0.0.0.0:9101".parse().unwrap(), "host-a"),
            "host-a:9101"
        );
        assert_eq!(
            c.advertised("10.0.0.5:9101".parse().unwrap(), "host-a"),
            "10.0.0.5:9101"
        );
        let c = MetricsConfig {
            advertise: "n1.lan:9101".into(),
            ..c
        };
        assert_eq!(
            c.advertised("0.0.0.0:9101".parse().unwrap(), "host-a"),
            "n1.lan:9101"
        );
    }
}
