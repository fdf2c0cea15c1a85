//! Route table: built once from the config, read-only on the request path.
//!
//! Matching, in order:
//! 1. an **exact** route whose path equals the request path;
//! 2. else the **longest prefix** route (path ending in `/`) that the request path starts with;
//! 3. else no route (404).
//!
//! The method is checked only after the path picked its routes: several routes
//! may share a path with different `methods`; if none accepts the method the
//! answer is 405 with `Allow` listing the methods of that path.
//!
//! Before any of that, the path is normalised ([`crate::path`], RFC 3986: unreserved
//! escapes decoded, dot segments removed); a bad escape, an encoded `/`, `\` or control
//! character, or a `..` that climbs out of a route is refused (400). The router matches the
//! normalised path and the app receives exactly that path, so the path an app sees is the
//! path that was routed. `fuzz/fuzz_targets/gateway_path.rs` checks both.

use crate::config::{GatewayConfig, RouteMode};
use crate::path::{self, PathError};
use http::{HeaderValue, Method};
use narun_wire::micro::EndpointStats;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything the request path needs to forward to one route's backend.
pub(crate) struct Target {
    /// The route's configured path (the bounded `path` metric label).
    pub path: Arc<str>,
    pub mode: RouteMode,
    /// NATS subject (service name for bhttp routes).
    pub subject: Arc<str>,
    /// The same, pre-built for async-nats (cheap to clone).
    pub nats_subject: async_nats::Subject,
    pub timeout: Duration,
    /// `$SRV.STATS` counters of this route's endpoint.
    pub stats: Arc<EndpointStats>,
    /// The route's metric series, kept after their first use.
    pub metrics: crate::metrics::RouteMetrics,
    /// The NATS headers every request of this route carries, built once:
    /// `Narun-Timeout-Ms` (the route's timeout) and, on bhttp routes,
    /// `Content-Type: application/bhttp`.
    pub nats_headers: async_nats::HeaderMap,
    /// How the route runs requests as jobs (`async` routes only).
    pub jobs: Option<crate::jobs::JobRoute>,
    /// The route's `auth` ([`crate::auth`]); `None` = open.
    pub auth: Option<Arc<crate::auth::Policy>>,
    /// The route's CORS rules ([`crate::cors`]).
    pub cors: Option<crate::cors::Cors>,
    /// The route's per-client rate limit ([`crate::ratelimit`]).
    pub rate: Option<crate::ratelimit::Limiter>,
    /// Reverse-proxy route: the HTTP service instead of NATS ([`crate::upstream`]).
    pub upstream: Option<crate::upstream::Upstream>,
}

impl Target {
    pub fn new(
        path: &str,
        mode: RouteMode,
        subject: &str,
        timeout: Duration,
        stats: Arc<EndpointStats>,
    ) -> Target {
        use narun_wire::names::{BHTTP_CONTENT_TYPE, TIMEOUT_MS, timeout_ms_value};
        let mut nats_headers = async_nats::HeaderMap::new();
        if mode == RouteMode::Bhttp {
            nats_headers.insert(
                async_nats::HeaderName::from_static("Content-Type"),
                async_nats::HeaderValue::from(BHTTP_CONTENT_TYPE),
            );
        }
        nats_headers.insert(TIMEOUT_MS, timeout_ms_value(timeout).as_str());
        Target {
            path: Arc::from(path),
            mode,
            subject: Arc::from(subject),
            nats_subject: async_nats::Subject::from(subject.to_owned()),
            timeout,
            stats,
            metrics: Default::default(),
            nats_headers,
            jobs: None,
            auth: None,
            cors: None,
            rate: None,
            upstream: None,
        }
    }
}

struct MethodRoute {
    /// `None` = any method.
    methods: Option<Vec<Method>>,
    target: Arc<Target>,
}

/// All routes of one configured path.
pub(crate) struct PathRoutes {
    routes: Vec<MethodRoute>,
    /// Value of `Allow` for 405 answers (union of the methods).
    allow: HeaderValue,
    /// Route path for metrics when the method does not match.
    pub path: Arc<str>,
}

pub(crate) enum Match<'a> {
    /// The path is refused (400).
    BadPath(PathError),
    Found(&'a Arc<Target>),
    MethodNotAllowed(&'a PathRoutes),
    NotFound,
}

impl PathRoutes {
    pub fn allow(&self) -> &HeaderValue {
        &self.allow
    }
}

/// The routes of one virtual host (or of every host).
pub(crate) struct Table {
    exact: HashMap<Box<str>, PathRoutes>,
    /// Longest first.
    prefix: Vec<(Box<str>, PathRoutes)>,
}

/// Virtual hosts: a request's `Host` (or `:authority`) picks the routes with that `host`
/// (exact, else the longest `*.suffix`), then the routes without `host` serve what they
/// do not match.
pub(crate) struct Router {
    default: Table,
    hosts: HashMap<Box<str>, Table>,
    /// `(".example.com", routes)` for `*.example.com`, longest first.
    wildcards: Vec<(Box<str>, Table)>,
}

/// A request's host as routes name it: lower case, without port or trailing dot.
pub(crate) fn normalize_host(h: &str) -> String {
    let h = if h.starts_with('[') {
        // [v6]:port
        h.split_once(']').map_or(h, |(a, _)| &h[..a.len() + 1])
    } else {
        h.rsplit_once(':').map_or(h, |(a, _)| a)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// A route with its stats endpoint, before grouping.
pub(crate) struct RouteSpec {
    /// Virtual host (`api.example.com`, `*.example.com`), lower case; `None` = every host.
    pub host: Option<String>,
    pub path: String,
    pub methods: Option<Vec<Method>>,
    pub target: Arc<Target>,
}

/// A routing decision and the (normalised) path it was made on.
pub(crate) struct Routed<'r, 'p> {
    pub m: Match<'r>,
    /// The path to forward: the request's own when normalising changed nothing.
    pub path: Cow<'p, str>,
}

/// The ADR-32 endpoint name of a route: methods and path, `[A-Za-z0-9_-]` only.
pub(crate) fn endpoint_name(methods: Option<&[Method]>, path: &str) -> String {
    let mut name = match methods {
        None => "ANY".to_owned(),
        Some(m) => m.iter().map(Method::as_str).collect::<Vec<_>>().join("_"),
    };
    let mut last_us = false;
    name.push('_');
    for c in path.chars().skip(1) {
        if c.is_ascii_alphanumeric() || c == '-' {
            name.push(c);
            last_us = false;
        } else if !last_us {
            name.push('_');
            last_us = true;
        }
    }
    name.retain(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let trimmed = name.trim_end_matches('_');
    if trimmed.is_empty() {
        "ANY".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Parse the configured methods (validated before) into `http::Method`s.
pub(crate) fn parse_methods(m: &Option<Vec<String>>) -> Option<Vec<Method>> {
    m.as_ref().map(|list| {
        list.iter()
            .filter_map(|m| Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).ok())
            .collect()
    })
}

impl Router {
    pub fn new(specs: Vec<RouteSpec>) -> Router {
        let mut by_host: Vec<(Option<String>, Vec<RouteSpec>)> = Vec::new();
        for s in specs {
            match by_host.iter_mut().find(|(h, _)| *h == s.host) {
                Some((_, v)) => v.push(s),
                None => by_host.push((s.host.clone(), vec![s])),
            }
        }
        let mut router = Router {
            default: Table::new(Vec::new()),
            hosts: HashMap::new(),
            wildcards: Vec::new(),
        };
        for (host, specs) in by_host {
            let table = Table::new(specs);
            match host {
                None => router.default = table,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => router.wildcards.push((suffix.into(), table)),
                    None => {
                        router.hosts.insert(h.into_boxed_str(), table);
                    }
                },
            }
        }
        router
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        router
    }

    /// The table of `host`'s own routes, if it has any.
    fn host_table(&self, host: Option<&str>) -> Option<&Table> {
        // No virtual host configured (the usual case): no per-request work.
        if self.hosts.is_empty() && self.wildcards.is_empty() {
            return None;
        }
        let host = normalize_host(host?);
        self.hosts.get(host.as_str()).or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| host.ends_with(&**suffix) && host.len() > suffix.len())
                .map(|(_, t)| t)
        })
    }

    /// The routes of the exact or longest prefix route of `path`: `host`'s first.
    fn lookup<'a>(&'a self, host: Option<&'a Table>, path: &str) -> Option<&'a PathRoutes> {
        host.and_then(|t| t.lookup(path))
            .or_else(|| self.default.lookup(path))
    }

    /// Find the route for the request path `raw` (no query) and `method`, any host.
    pub fn find<'r, 'p>(&'r self, method: &Method, raw: &'p str) -> Routed<'r, 'p> {
        self.find_on(method, None, raw)
    }

    /// Find the route for `host` (the request's `Host`), `raw` and `method`.
    pub fn find_on<'r, 'p>(
        &'r self,
        method: &Method,
        host: Option<&str>,
        raw: &'p str,
    ) -> Routed<'r, 'p> {
        let n = match path::normalize(raw) {
            Ok(n) => n,
            Err(e) => {
                return Routed {
                    m: Match::BadPath(e),
                    path: Cow::Borrowed(raw),
                };
            }
        };
        let table = self.host_table(host);
        let m = self.choose(method, table, &n);
        Routed { m, path: n.path }
    }

    fn choose<'a>(
        &'a self,
        method: &Method,
        host: Option<&'a Table>,
        n: &path::Normalized<'_>,
    ) -> Match<'a> {
        let routes = self.lookup(host, &n.path);
        if n.climb.is_some() {
            // A `..` may remove no segment of the route the path was sent through, nor of
            // the route it ends up in.
            let through = self
                .lookup(host, &n.through)
                .map_or(0, |r| path::depth(&r.path));
            let into = routes.map_or(0, |r| path::depth(&r.path));
            if n.climbs_out_of(through.max(into)) {
                return Match::BadPath(PathError::Climbs);
            }
        }
        let Some(routes) = routes else {
            return Match::NotFound;
        };
        for r in &routes.routes {
            match &r.methods {
                None => return Match::Found(&r.target),
                Some(ms) if ms.contains(method) => return Match::Found(&r.target),
                Some(_) => {}
            }
        }
        Match::MethodNotAllowed(routes)
    }
}

impl Table {
    fn new(specs: Vec<RouteSpec>) -> Table {
        let mut grouped: Vec<(String, Vec<MethodRoute>)> = Vec::new();
        for s in specs {
            let route = MethodRoute {
                methods: s.methods,
                target: s.target,
            };
            match grouped.iter_mut().find(|(p, _)| *p == s.path) {
                Some((_, v)) => v.push(route),
                None => grouped.push((s.path, vec![route])),
            }
        }
        let mut exact = HashMap::new();
        let mut prefix = Vec::new();
        for (path, routes) in grouped {
            let mut allow: Vec<&str> = Vec::new();
            for r in &routes {
                if let Some(ms) = &r.methods {
                    for m in ms {
                        if !allow.contains(&m.as_str()) {
                            allow.push(m.as_str());
                        }
                    }
                }
            }
            let allow =
                HeaderValue::from_str(&allow.join(", ")).unwrap_or(HeaderValue::from_static(""));
            let pr = PathRoutes {
                path: routes[0].target.path.clone(),
                routes,
                allow,
            };
            if path.ends_with('/') {
                prefix.push((path.into_boxed_str(), pr));
            } else {
                exact.insert(path.into_boxed_str(), pr);
            }
        }
        prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Table { exact, prefix }
    }

    /// The routes of the exact or longest prefix route of `path`.
    fn lookup(&self, path: &str) -> Option<&PathRoutes> {
        self.exact.get(path).or_else(|| {
            self.prefix
                .iter()
                .find(|(p, _)| path.starts_with(&**p))
                .map(|(_, r)| r)
        })
    }
}

/// Route specs of the HTTP routes in `config` (gRPC routes are skipped).
/// The stats handles come from `stats_for(endpoint_name, subject)`.
pub(crate) fn specs(
    config: &GatewayConfig,
    policies: &HashMap<usize, Arc<crate::auth::Policy>>,
    mut stats_for: impl FnMut(&str, &str, &crate::config::RouteConfig) -> Arc<EndpointStats>,
) -> Vec<RouteSpec> {
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let Some(path) = &r.path else { continue };
        let Some(subject) = r.target_subject() else {
            continue;
        };
        let methods = parse_methods(&r.methods);
        let base = endpoint_name(methods.as_deref(), path);
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        let stats = stats_for(&name, subject, r);
        let host = r.host.as_ref().map(|h| h.trim().to_ascii_lowercase());
        // The metric label and discovery name of a virtual host's route carry the host.
        let label = match &host {
            Some(h) => format!("{h}{path}"),
            None => path.clone(),
        };
        let mut target = Target::new(
            &label,
            r.mode.unwrap_or_default(),
            subject,
            config.route_timeout(r),
            stats,
        );
        target.jobs = crate::jobs::JobRoute::of(r);
        target.auth = policies.get(&i).cloned();
        target.cors = r
            .cors
            .as_ref()
            .map(|c| crate::cors::Cors::new(c, r.methods.as_deref()));
        target.rate = r.rate_limit.as_ref().map(crate::ratelimit::Limiter::new);
        target.upstream = r
            .proxy
            .as_deref()
            .and_then(|u| crate::upstream::Upstream::parse(u).ok());
        out.push(RouteSpec {
            host,
            path: path.clone(),
            methods,
            target: Arc::new(target),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, Option<&[&str]>, &str)]) -> Router {
        let specs = routes
            .iter()
            .map(|(p, m, s)| RouteSpec {
                host: None,
                path: p.to_string(),
                methods: m.map(|m| {
                    m.iter()
                        .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                        .collect()
                }),
                target: Arc::new(Target::new(
                    p,
                    RouteMode::Bhttp,
                    s,
                    Duration::from_secs(1),
                    Default::default(),
                )),
            })
            .collect();
        Router::new(specs)
    }

    fn subject(r: &Router, m: &str, p: &str) -> String {
        match r.find(&Method::from_bytes(m.as_bytes()).unwrap(), p).m {
            Match::Found(t) => t.subject.to_string(),
            Match::MethodNotAllowed(pr) => format!("405 {}", pr.allow().to_str().unwrap()),
            Match::NotFound => "404".into(),
            Match::BadPath(_) => "400".into(),
        }
    }

    fn forwarded(r: &Router, p: &str) -> String {
        let routed = r.find(&Method::GET, p);
        match routed.m {
            Match::Found(t) => format!("{} {}", t.subject, routed.path),
            _ => "-".into(),
        }
    }

    #[test]
    fn exact_prefix_longest_and_methods() {
        let r = router(&[
            ("/", None, "root"),
            ("/a/", None, "a"),
            ("/a/b/", None, "ab"),
            ("/a/b/c", Some(&["GET"]), "abc-get"),
            ("/a/b/c", Some(&["POST", "PUT"]), "abc-post"),
            ("/x", Some(&["GET"]), "x"),
        ]);
        assert_eq!(subject(&r, "GET", "/zzz"), "root");
        assert_eq!(subject(&r, "GET", "/a/"), "a");
        assert_eq!(subject(&r, "GET", "/a"), "root");
        assert_eq!(subject(&r, "GET", "/a/b/x/y"), "ab");
        assert_eq!(subject(&r, "GET", "/a/b/c"), "abc-get");
        assert_eq!(subject(&r, "PUT", "/a/b/c"), "abc-post");
        assert_eq!(subject(&r, "DELETE", "/a/b/c"), "405 GET, POST, PUT");
        assert_eq!(subject(&r, "GET", "/a/b/c/d"), "ab");
        assert_eq!(subject(&r, "POST", "/x"), "405 GET");
        let r = router(&[("/only", None, "o")]);
        assert_eq!(subject(&r, "GET", "/only/"), "404");
    }

    #[test]
    fn paths_are_normalised_and_may_not_climb_out_of_a_route() {
        let r = router(&[
            ("/", None, "root"),
            ("/a/", None, "a"),
            ("/a/b/", None, "ab"),
            ("/x", None, "x"),
        ]);
        for fine in ["/a/.b", "/a/..b", "/a/b..", "/a//b"] {
            assert_eq!(forwarded(&r, fine), format!("a {fine}"), "{fine}");
        }
        assert_eq!(forwarded(&r, "/a/./c"), "a /a/c");
        assert_eq!(forwarded(&r, "/a/c/../d"), "a /a/d");
        assert_eq!(forwarded(&r, "/a/c/%2E%2e/d"), "a /a/d");
        assert_eq!(forwarded(&r, "/%61/c"), "a /a/c");
        assert_eq!(forwarded(&r, "/q/../r"), "root /r");
        for bad in [
            "/a/../b",     // out of /a/ into /
            "/a/%2e%2e/x", // the same, encoded
            "/a/b/../c",   // out of /a/b/
            "/a/c/../b/z", // into /a/b/, but the `..` was at /a/b/'s depth
            "/a/..",       // out of /a/
            "/q/../x",     // into the exact route /x
            "/..",         // above the root
            "/a/%2fb",     // encoded separator
            "/a/%zz",      // bad escape
        ] {
            assert_eq!(subject(&r, "GET", bad), "400", "{bad}");
        }
    }

    #[test]
    fn virtual_hosts_first_then_routes_for_every_host() {
        let spec = |host: Option<&str>, p: &str, s: &str| RouteSpec {
            host: host.map(str::to_owned),
            path: p.to_string(),
            methods: None,
            target: Arc::new(Target::new(
                s,
                RouteMode::Bhttp,
                s,
                Duration::from_secs(1),
                Default::default(),
            )),
        };
        let r = Router::new(vec![
            spec(None, "/", "root"),
            spec(None, "/shared/", "shared"),
            spec(Some("api.example.com"), "/", "api"),
            spec(Some("*.example.com"), "/v/", "wild"),
            spec(Some("*.b.example.com"), "/v/", "wild-b"),
        ]);
        let at = |host: Option<&str>, p: &str| match r.find_on(&Method::GET, host, p).m {
            Match::Found(t) => t.subject.to_string(),
            Match::NotFound => "404".into(),
            _ => "other".into(),
        };
        assert_eq!(at(Some("api.example.com"), "/x"), "api");
        assert_eq!(at(Some("API.Example.com:8443"), "/x"), "api");
        assert_eq!(at(Some("api.example.com."), "/x"), "api");
        assert_eq!(at(Some("other.example.com"), "/x"), "root");
        assert_eq!(at(Some("other.example.com"), "/v/1"), "wild");
        assert_eq!(at(Some("x.b.example.com"), "/v/1"), "wild-b");
        assert_eq!(at(Some("example.com"), "/v/1"), "root");
        assert_eq!(at(Some("evil.com"), "/v/1"), "root");
        assert_eq!(at(Some("api.example.com.evil.com"), "/x"), "root");
        assert_eq!(at(None, "/x"), "root");
        // The host's own `/` wins over the shared prefix only if it matches longer:
        // the host's routes are looked up first as a whole.
        assert_eq!(at(Some("api.example.com"), "/shared/x"), "api");
        assert_eq!(at(Some("[::1]:8080"), "/x"), "root");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    }

    #[test]
    fn endpoint_names_are_sanitised() {
        let get = [Method::GET, Method::POST];
        assert_eq!(endpoint_name(Some(&get), "/hello/"), "GET_POST_hello");
        assert_eq!(endpoint_name(None, "/"), "ANY");
        assert_eq!(endpoint_name(None, "/a.b/c%20d"), "ANY_a_b_c_20d");
    }
}
