//! OpenTelemetry export from the gateway (feature `otlp`): the span of a forwarded request
//! reaches a real OTLP/gRPC receiver (tonic serving the collector's generated
//! `TraceService` on a loopback port, in this test) with the ids that travelled: the
//! client's trace id, the client's span as parent, and as its own id the parent id the
//! service received in `traceparent`.
//!
//! `cargo test -p narun-gateway --features otlp --test otlp`

mod common;

use common::*;
use http::Request;
use narun_test_support::{NatsServer, T};
use narun_wire::trace::TraceParent;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_span_is_exported_with_the_ids_that_travelled() {
    let port = narun_test_support::free_port();
    let (tx, mut exported) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve(([127, 0, 0, 1], port).into()),
    );
    // What the gateway reads at start (this test binary is its only user of the variable).
    // SAFETY: no other thread of this test reads or writes the environment.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
    };

    let server = NatsServer::start();
    let client = server.connect().await;
    let _echo = echo_service(&client, "echo").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        "[gateway]\n[[gateway.routes]]\npath = \"/echo/\"\nservice = \"echo\"\n",
    )
    .await;
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        Request::get(gw.url("/echo/x"))
            .header("traceparent", good)
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen =
        TraceParent::parse(r.json()["nats_headers"]["traceparent"].as_str().unwrap()).unwrap();

    let req = tokio::time::timeout(T, exported.recv())
        .await
        .expect("the gateway's span is exported in time")
        .unwrap();
    let spans: Vec<_> = req
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let s = &spans[0];
    assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        hex(&s.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span"
    );
    assert_eq!(
        hex(&s.span_id),
        seen.parent_id.to_string(),
        "the service's parent"
    );
    assert_eq!(s.name, "GET /echo/");
}
