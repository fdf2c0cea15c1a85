//! The gRPC metrics: `grpc_gateway_requests_total{grpc_method,grpc_code}` and
//! `grpc_gateway_request_duration_seconds{grpc_method}`, with a bounded set of
//! `grpc_method` label values.

use crate::metrics::Label;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::status::code_name;

/// Distinct `grpc_method` label values before further methods count as `other`.
const MAX_METHOD_LABELS: usize = 512;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    grpc_method: Label,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    grpc_method: Label,
}

pub(super) struct GrpcMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// Method labels handed out so far (bounded by [`MAX_METHOD_LABELS`]).
    methods: RwLock<HashSet<Arc<str>>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl GrpcMetrics {
    pub(super) fn new(registry: &mut Registry) -> GrpcMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "grpc_gateway_requests",
            "gRPC calls handled by the gateway, by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_gateway_request_duration_seconds",
            "Time to answer gRPC calls (until the last message for streams), by method",
            durations.clone(),
        );
        GrpcMetrics {
            requests,
            durations,
            methods: RwLock::new(HashSet::new()),
        }
    }

    /// The bounded label for `method` (`None` = unrouted).
    pub(super) fn label(&self, method: Option<&str>) -> Label {
        let Some(m) = method else {
            return Label(Arc::from("unmatched"));
        };
        if let Some(l) = self.methods.read().expect("lock").get(m) {
            return Label(l.clone());
        }
        let mut set = self.methods.write().expect("lock");
        if set.len() >= MAX_METHOD_LABELS {
            return Label(Arc::from("other"));
        }
        let l: Arc<str> = Arc::from(m);
        set.insert(l.clone());
        Label(l)
    }

    pub(super) fn record(&self, method: &Label, code: u16, took: Duration) {
        self.durations
            .get_or_create(&DurationLabels {
                grpc_method: method.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                grpc_method: method.clone(),
                grpc_code: code_name(code),
            })
            .inc();
    }
}
