//! Prometheus metrics with the Go narun names, but bounded labels.
//!
//! * `http_gateway_requests_total{method,path,status_code}`
//! * `http_gateway_request_duration_seconds{method,path}` (Go's default buckets)
//! * `gateway_nats_requests_total{subject,status}`, `status` ∈ `success|timeout|error`
//!
//! `path` is the *route* path (`unmatched` for 404s), never the request path, and
//! `method` is one of the standard methods or `OTHER`, so a client cannot grow
//! the label space.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
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
    unmatched: Label,
}

/// The bounded `method` label.
pub(crate) fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "OTHER",
    }
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
        Metrics {
            registry,
            requests,
            durations,
            nats,
            unmatched: Label(Arc::from(UNMATCHED)),
        }
    }

    /// Count one answered HTTP request; `route` = the route path, `None` = unmatched.
    pub fn http(
        &self,
        method: &'static str,
        route: Option<&Arc<str>>,
        status: u16,
        took: Duration,
    ) {
        let path = match route {
            Some(p) => Label(p.clone()),
            None => self.unmatched.clone(),
        };
        self.durations
            .get_or_create(&DurationLabels {
                method,
                path: path.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&HttpLabels {
                method,
                path,
                status_code: status,
            })
            .inc();
    }

    pub fn nats(&self, subject: &Arc<str>, status: NatsStatus) {
        let status = match status {
            NatsStatus::Success => "success",
            NatsStatus::Timeout => "timeout",
            NatsStatus::Error => "error",
        };
        self.nats
            .get_or_create(&NatsLabels {
                subject: Label(subject.clone()),
                status,
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
