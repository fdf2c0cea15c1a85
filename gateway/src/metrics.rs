//! Prometheus metrics with the Go narun names, but bounded labels.
//!
//! * `http_gateway_requests_total{method,path,status_code}`
//! * `http_gateway_request_duration_seconds{method,path}` (Go's default buckets)
//! * `gateway_nats_requests_total{subject,status}`, `status` ∈ `success|timeout|error`
//!
//! Served in the Prometheus text format 0.0.4 ([`prometheus_text`]), which
//! `promtool check metrics` accepts.
//!
//! `path` is the *route* path (`unmatched` for 404s), never the request path, and
//! `method` is one of the standard methods or `OTHER`, so a client cannot grow
//! the label space.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Label value for requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// A cheaply clonable label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    path: Label,
    status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: &'static str,
    path: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    path: Label,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NatsLabels {
    subject: Label,
    status: &'static str,
}

/// Outcome of a NATS request, as `gateway_nats_requests_total` counts it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NatsStatus {
    Success,
    Timeout,
    Error,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

pub(crate) struct Metrics {
    /// Also holds the gRPC gateway's metrics (`grpc.rs` registers them).
    pub(crate) registry: Registry,
    requests: Family<HttpLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    nats: Family<NatsLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    rate_limited: Family<PathLabels, Counter>,
    unmatched: Label,
    /// The handles of requests no route matched.
    unmatched_handles: RouteMetrics,
}

/// The bounded `method` label values; [`method_index`] indexes them.
const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// The bounded `method` label, as an index into [`METHOD_LABELS`].
pub(crate) fn method_index(m: &http::Method) -> usize {
    use http::Method as M;
    match *m {
        M::GET => 0,
        M::POST => 1,
        M::PUT => 2,
        M::DELETE => 3,
        M::PATCH => 4,
        M::HEAD => 5,
        M::OPTIONS => 6,
        M::CONNECT => 7,
        M::TRACE => 8,
        _ => 9,
    }
}

/// One route's metric series, looked up in their families on first use and
/// kept, so that a request touches no label hash map or family lock: the
/// duration histogram per method, per method the request counter of the first
/// status code answered (the usual one; other codes go through the family), and
/// the NATS success counter. A series appears in the exposition when it is
/// first used, as with the families alone.
#[derive(Default)]
pub(crate) struct RouteMetrics {
    durations: [OnceLock<Histogram>; METHOD_LABELS.len()],
    requests: [OnceLock<(u16, Counter)>; METHOD_LABELS.len()],
    nats_success: OnceLock<Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let durations: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let nats = Family::<NatsLabels, Counter>::default();
        registry.register(
            "http_gateway_requests",
            "HTTP requests handled by the gateway, by route path and status code",
            requests.clone(),
        );
        registry.register(
            "http_gateway_request_duration_seconds",
            "Time to answer HTTP requests, by route path",
            durations.clone(),
        );
        registry.register(
            "gateway_nats_requests",
            "NATS requests sent by the gateway, by subject and outcome (success, timeout, error)",
            nats.clone(),
        );
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register(
            "gateway_auth_failures",
            "Requests refused by a route's auth, by route path and reason \
             (missing, malformed, invalid, expired, forbidden)",
            auth_failures.clone(),
        );
        let rate_limited = Family::<PathLabels, Counter>::default();
        registry.register(
            "gateway_rate_limited",
            "Requests refused (429) by a route's per-client rate limit, by route path",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            nats,
            auth_failures,
            rate_limited,
            unmatched: Label(Arc::from(UNMATCHED)),
            unmatched_handles: RouteMetrics::default(),
        }
    }

    /// Count one answered HTTP request: `method` from [`method_index`], `route` = the
    /// route path (`None` = unmatched) and its kept series (`None`: look them up).
    pub fn http(
        &self,
        method: usize,
        route: Option<&Arc<str>>,
        handles: Option<&RouteMetrics>,
        status: u16,
        took: Duration,
    ) {
        let method_label = METHOD_LABELS[method];
        let path = || match route {
            Some(p) => Label(p.clone()),
            None => self.unmatched.clone(),
        };
        let duration_of = || {
            self.durations
                .get_or_create(&DurationLabels {
                    method: method_label,
                    path: path(),
                })
                .clone()
        };
        let counter_of = |status_code| {
            self.requests
                .get_or_create(&HttpLabels {
                    method: method_label,
                    path: path(),
                    status_code,
                })
                .clone()
        };
        let handles = match route {
            None => Some(&self.unmatched_handles),
            Some(_) => handles,
        };
        let Some(h) = handles else {
            duration_of().observe(took.as_secs_f64());
            counter_of(status).inc();
            return;
        };
        h.durations[method]
            .get_or_init(duration_of)
            .observe(took.as_secs_f64());
        let (kept, counter) = h.requests[method].get_or_init(|| (status, counter_of(status)));
        if *kept == status {
            counter.inc();
        } else {
            counter_of(status).inc();
        }
    }

    /// Count one request refused by a route's `auth` (`reason`: [`crate::auth::Denial`]).
    pub fn auth_failure(&self, path: &Arc<str>, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                path: Label(path.clone()),
                reason,
            })
            .inc();
    }

    /// Count one request refused by a route's rate limit.
    pub fn rate_limited(&self, path: &Arc<str>) {
        self.rate_limited
            .get_or_create(&PathLabels {
                path: Label(path.clone()),
            })
            .inc();
    }

    /// Count one NATS request to `subject`; `handles` keeps the success counter.
    pub fn nats(&self, subject: &Arc<str>, status: NatsStatus, handles: Option<&RouteMetrics>) {
        let status = match status {
            NatsStatus::Success => "success",
            NatsStatus::Timeout => "timeout",
            NatsStatus::Error => "error",
        };
        let counter_of = || {
            self.nats
                .get_or_create(&NatsLabels {
                    subject: Label(subject.clone()),
                    status,
                })
                .clone()
        };
        match handles {
            Some(h) if status == "success" => h.nats_success.get_or_init(counter_of).inc(),
            _ => counter_of().inc(),
        };
    }

    /// The Prometheus text exposition (version 0.0.4, [`prometheus_text`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        prometheus_text(&out)
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// prometheus-client's OpenMetrics text as the Prometheus text format 0.0.4, which every
/// scraper and `promtool check metrics` read: a counter family is named after its samples
/// (`# TYPE x counter` + `x_total 1` becomes `# TYPE x_total counter`, otherwise
/// `x_total` has no HELP nor TYPE), `# UNIT` and `# EOF` go, and `\"` in a help text
/// becomes `"` (0.0.4 escapes only `\\` and `\n` there).
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, String)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let family = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == name) {
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP c Things \\\"counted\\\".\n# TYPE c counter\nc_total{a=\"x\"} 1\n\
                  # HELP d_seconds Durations.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\n\
                  d_seconds_sum 1.0\nd_seconds_count 1\n\
                  # HELP g_total Odd but kept.\n# TYPE g_total counter\ng_total 2\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP c_total Things \"counted\".\n# TYPE c_total counter\nc_total{a=\"x\"} 1\n\
             # HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_sum 1.0\nd_seconds_count 1\n\
             # HELP g_total Odd but kept.\n# TYPE g_total counter\ng_total 2\n"
        );
    }

    /// The kept series count exactly what the families alone would: the first
    /// status code through the kept counter, others through the family, and
    /// unmatched requests under `unmatched`.
    #[test]
    fn kept_series_count_like_the_families() {
        let m = Metrics::new();
        let route: Arc<str> = Arc::from("/r/");
        let handles = RouteMetrics::default();
        let post = method_index(&http::Method::POST);
        let took = Duration::from_millis(1);
        for status in [200, 200, 503, 200] {
            m.http(post, Some(&route), Some(&handles), status, took);
        }
        // The same series without handles (a 405 is counted so).
        m.http(post, Some(&route), None, 200, took);
        m.http(method_index(&http::Method::GET), None, None, 404, took);
        m.nats(&route, NatsStatus::Success, Some(&handles));
        m.nats(&route, NatsStatus::Success, None);
        m.nats(&route, NatsStatus::Timeout, Some(&handles));
        let text = m.encode();
        for line in [
            r#"http_gateway_requests_total{method="POST",path="/r/",status_code="200"} 4"#,
            r#"http_gateway_requests_total{method="POST",path="/r/",status_code="503"} 1"#,
            r#"http_gateway_requests_total{method="GET",path="unmatched",status_code="404"} 1"#,
            r#"http_gateway_request_duration_seconds_count{method="POST",path="/r/"} 5"#,
            r#"http_gateway_request_duration_seconds_count{method="GET",path="unmatched"} 1"#,
            r#"gateway_nats_requests_total{subject="/r/",status="success"} 2"#,
            r#"gateway_nats_requests_total{subject="/r/",status="timeout"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"method="PUT""#),
            "series appear only when used:\n{text}"
        );
    }
}
