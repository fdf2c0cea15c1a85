//! The gRPC metrics: `grpc_gateway_requests_total{grpc_method,grpc_code}` and
//! `grpc_gateway_request_duration_seconds{grpc_method}`, with a bounded set of
//! `grpc_method` label values.

use crate::metrics::Label;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
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
    /// Method labels handed out so far (bounded by [`MAX_METHOD_LABELS`]), with
    /// their series.
    methods: RwLock<HashMap<Arc<str>, MethodLabel>>,
    unmatched: MethodLabel,
    other: MethodLabel,
}

/// A bounded `grpc_method` label and its series, kept after their first use so
/// that a call touches one map (this one) instead of a family per metric.
pub(super) struct MethodMetrics {
    label: Label,
    duration: OnceLock<Histogram>,
    /// `grpc_code="OK"`, the usual outcome; the other codes go through the family.
    ok: OnceLock<Counter>,
}

pub(super) type MethodLabel = Arc<MethodMetrics>;

fn method_label(name: Arc<str>) -> MethodLabel {
    Arc::new(MethodMetrics {
        label: Label(name),
        duration: OnceLock::new(),
        ok: OnceLock::new(),
    })
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
            methods: RwLock::new(HashMap::new()),
            unmatched: method_label(Arc::from("unmatched")),
            other: method_label(Arc::from("other")),
        }
    }

    /// The bounded label for `method` (`None` = unrouted).
    pub(super) fn label(&self, method: Option<&str>) -> MethodLabel {
        let Some(m) = method else {
            return self.unmatched.clone();
        };
        if let Some(l) = self.methods.read().expect("lock").get(m) {
            return l.clone();
        }
        let mut map = self.methods.write().expect("lock");
        if let Some(l) = map.get(m) {
            return l.clone();
        }
        if map.len() >= MAX_METHOD_LABELS {
            return self.other.clone();
        }
        let l = method_label(Arc::from(m));
        map.insert(l.label.0.clone(), l.clone());
        l
    }

    pub(super) fn record(&self, method: &MethodLabel, code: u16, took: Duration) {
        method
            .duration
            .get_or_init(|| {
                self.durations
                    .get_or_create(&DurationLabels {
                        grpc_method: method.label.clone(),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
        let counter_of = || {
            self.requests
                .get_or_create(&RequestLabels {
                    grpc_method: method.label.clone(),
                    grpc_code: code_name(code),
                })
                .clone()
        };
        if code == super::code::OK {
            method.ok.get_or_init(counter_of).inc();
        } else {
            counter_of().inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_series_count_like_the_families_and_labels_stay_bounded() {
        let mut registry = Registry::default();
        let m = GrpcMetrics::new(&mut registry);
        let took = Duration::from_millis(1);
        let a = m.label(Some("/a.S/M"));
        assert!(
            Arc::ptr_eq(&a, &m.label(Some("/a.S/M"))),
            "one label per method"
        );
        m.record(&a, super::super::code::OK, took);
        m.record(&m.label(Some("/a.S/M")), super::super::code::OK, took);
        m.record(&a, super::super::code::UNAVAILABLE, took);
        m.record(&m.label(None), super::super::code::UNIMPLEMENTED, took);
        for i in 0..MAX_METHOD_LABELS + 3 {
            m.label(Some(&format!("/x.S/M{i}")));
        }
        m.record(&m.label(Some("/y.S/New")), super::super::code::OK, took);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"grpc_gateway_requests_total{grpc_method="/a.S/M",grpc_code="OK"} 2"#,
            r#"grpc_gateway_requests_total{grpc_method="/a.S/M",grpc_code="UNAVAILABLE"} 1"#,
            r#"grpc_gateway_requests_total{grpc_method="unmatched",grpc_code="UNIMPLEMENTED"} 1"#,
            r#"grpc_gateway_requests_total{grpc_method="other",grpc_code="OK"} 1"#,
            r#"grpc_gateway_request_duration_seconds_count{grpc_method="/a.S/M"} 3"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
