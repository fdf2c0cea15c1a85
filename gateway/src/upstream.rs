//! Reverse-proxy routes: `proxy = "http://127.0.0.1:8080"` sends the route's requests
//! to an HTTP/1.1 service on the device instead of NATS — what Go narun left to Caddy.
//!
//! ```toml
//! [[gateway.routes]]
//! path = "/grafana/"
//! proxy = "http://127.0.0.1:3000"
//! timeout_sec = 30
//! ```
//!
//! * The request is the client's, with the normalised path and query, the client's `Host`,
//!   hop-by-hop headers removed (`Connection` and what it names, `Keep-Alive`, `TE`,
//!   `Upgrade`, `Proxy-*`, `Transfer-Encoding`, …), `X-Forwarded-For/-Proto/-Host` and
//!   `X-Request-Id` set as for NATS routes; the route's `auth`, `cors` and `rate_limit`
//!   apply first.
//! * Limits as for NATS routes: the body limit (`max_body_bytes`), the memory budget and
//!   the in-flight slots; the route timeout bounds connect + answer (504), and the answer's
//!   body is read up to `max_body_bytes` (more: 502). One connection per request (a local
//!   service: no pool to leak or go stale).
//! * Upgrades (WebSocket) and streaming answers are not supported: the answer is buffered.

use std::collections::BTreeMap;

/// A parsed `proxy` URL: where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub authority: String,
    /// The URL as configured (discovery metadata, metrics).
    pub url: String,
}

impl Upstream {
    /// `http://host[:port]` (port 80 by default), nothing after the authority but `/`.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| "is not a URL (e.g. \"http://127.0.0.1:8080\")".to_string())?;
        if uri.scheme_str() != Some("http") {
            return Err(
                "must start with http:// (the service on the device speaks plain HTTP/1.1)".into(),
            );
        }
        let Some(a) = uri.authority() else {
            return Err("has no host (e.g. \"http://127.0.0.1:8080\")".into());
        };
        if a.as_str().contains('@') {
            return Err("may not carry user:password".into());
        }
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            return Err(
                "must be only scheme://host:port: requests keep their own path and query".into(),
            );
        }
        let authority = match a.port_u16() {
            Some(_) => a.as_str().to_owned(),
            None => format!("{}:80", a.host()),
        };
        Ok(Upstream {
            authority,
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

pub(crate) fn problems(
    url: &str,
    key: &str,
    route: &crate::config::RouteConfig,
) -> Vec<(String, String)> {
    let mut e = Vec::new();
    if let Err(why) = Upstream::parse(url) {
        e.push((format!("{key}.proxy"), format!("{url:?} {why}")));
    }
    let mut clash = BTreeMap::new();
    clash.insert("service", route.service.is_some());
    clash.insert("subject", route.subject.is_some());
    clash.insert("mode", route.mode.is_some());
    for (k, set) in clash {
        if set {
            e.push((
                format!("{key}.{k}"),
                "is not used by proxy routes (they send to `proxy`, not NATS)".into(),
            ));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Upstream::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(
            Upstream::parse("http://localhost/").unwrap().authority,
            "localhost:80"
        );
        assert_eq!(
            Upstream::parse("http://[::1]:81").unwrap().authority,
            "[::1]:81"
        );
        for bad in [
            "https://127.0.0.1:8443",
            "127.0.0.1:8080",
            "http://127.0.0.1:8080/base",
            "http://127.0.0.1:8080/?a=b",
            "http://u:p@127.0.0.1:8080",
            "not a url",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
