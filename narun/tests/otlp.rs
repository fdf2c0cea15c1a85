//! OpenTelemetry export (feature `otlp`): handler spans reach a real OTLP/gRPC receiver
//! (tonic serving the collector's generated `TraceService` on a loopback port, in this
//! test) with the W3C ids that travelled: service A calls service B through
//! `narun::Client`, and the collector can join caller → A → B into one trace.
//! Real nats-server; both services served by the library in this process.
//!
//! `cargo test -p narun --features otlp --test otlp`

use axum::{Json, Router, routing::post};
use narun::trace::{TraceContext, TraceParent};
use narun::{Client, Options, Server};
use narun_test_support::{NatsServer, T};
use narun_wire::connect::NatsSettings;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;

/// Hands every export request it receives to the test.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn opts(server: &NatsServer, name: &str) -> Options {
    Options::new(name).nats(NatsSettings {
        url: server.url(),
        ..Default::default()
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_spans_are_exported_with_the_ids_that_travelled() {
    let port = narun_test_support::free_port();
    let (tx, mut exported) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve(([127, 0, 0, 1], port).into()),
    );
    narun::trace::otlp::install(&format!("http://127.0.0.1:{port}"), "otlp-test").unwrap();

    let server = NatsServer::start();
    let b = Server::start(
        opts(&server, "otlp-b"),
        Router::new().route("/b", post(|| async { Json(serde_json::json!({})) })),
    )
    .await
    .unwrap();
    let calls = Client::new(server.connect().await).with_timeout(T);
    let a = Server::start(
        opts(&server, "otlp-a"),
        Router::new().route(
            "/a",
            post(move || {
                let calls = calls.clone();
                async move {
                    let _: serde_json::Value = calls.call("otlp-b", "/b", &()).await.unwrap();
                    narun::trace::current().unwrap().span_id.to_string()
                }
            }),
        ),
    )
    .await
    .unwrap();

    let parent =
        TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let caller = TraceContext::child_of(&parent, None);
    let client = Client::new(server.connect().await).with_timeout(T);
    let req = http::Request::post("/a").body(bytes::Bytes::new()).unwrap();
    let r = narun::trace::in_context(caller.clone(), client.request("otlp-a", req))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a_span = String::from_utf8(r.body().to_vec()).unwrap();
    assert!(narun::trace::otlp::flush(T).await, "export finished");

    // Both handler spans, from the receiver's point of view.
    let mut spans = Vec::new();
    while spans.len() < 2 {
        let req = tokio::time::timeout(T, exported.recv())
            .await
            .expect("spans exported in time")
            .unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value);
            assert!(
                format!("{service:?}").contains("otlp-test"),
                "service.name: {service:?}"
            );
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    assert_eq!(spans.len(), 2, "{spans:?}");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for s in &spans {
        assert_eq!(hex(&s.trace_id), trace);
        assert_eq!(s.name, "request");
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    let a_rec = spans
        .iter()
        .find(|s| hex(&s.span_id) == a_span)
        .expect("A's span");
    assert_eq!(hex(&a_rec.parent_span_id), caller.span_id.to_string());
    let b_span = spans
        .iter()
        .find(|s| hex(&s.span_id) != a_span)
        .expect("B's span");
    assert_eq!(hex(&b_span.parent_span_id), a_span, "B is a child of A");

    a.shutdown().await;
    b.shutdown().await;
}
