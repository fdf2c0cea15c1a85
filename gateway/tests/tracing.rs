//! W3C trace context end to end (real nats-server, the real gateway on loopback ports,
//! services served by the narun library in this process): one trace followed from an HTTP
//! client through the gateway to service A and from A, through `narun::Client`, to service
//! B; the gateway starts, continues or refuses the client's `traceparent`; raw and gRPC
//! routes carry the checked value too.

mod common;

use axum::{Json, Router, routing::get, routing::post};
use common::*;
use futures_util::StreamExt;
use http::Request;
use narun::trace::{TraceContext, TraceParent};
use narun::{Client, NatsSettings, Options, Server};
use narun_test_support::{NatsServer, T};
use serde_json::{Value, json};

const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

const ROUTES: &str = r#"
[gateway]
request_timeout_sec = 10

[[gateway.routes]]
path = "/a/"
service = "trace-a"

[[gateway.routes]]
path = "/echo/"
service = "echo"

[[gateway.routes]]
path = "/raw/"
subject = "trace-raw"
mode = "raw"
"#;

/// What a handler knows of its trace.
fn me() -> Value {
    let c = narun::trace::current().expect("a handler runs in a trace context");
    json!({
        "trace_id": c.trace_id.to_string(),
        "span_id": c.span_id.to_string(),
        "parent_id": c.parent_id.map(|p| p.to_string()),
        "state": c.state,
    })
}

fn opts(server: &NatsServer, name: &str) -> Options {
    Options::new(name).nats(NatsSettings {
        url: server.url(),
        ..Default::default()
    })
}

async fn send_traced(url: &str, traceparent: Option<&str>, tracestate: Option<&str>) -> Value {
    let mut b = Request::get(url);
    if let Some(v) = traceparent {
        b = b.header("traceparent", v);
    }
    if let Some(v) = tracestate {
        b = b.header("tracestate", v);
    }
    let r = send(b.body(full("")).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_gateway_through_service_a_to_service_b() {
    let server = NatsServer::start();
    // B answers with its own trace context.
    let b = Server::start(
        opts(&server, "trace-b"),
        Router::new().route("/b", post(|| async { Json(me()) })),
    )
    .await
    .unwrap();
    // A answers with its context, the traceparent HTTP header it saw, and what B answered.
    let calls = Client::new(server.connect().await).with_timeout(T);
    let a_router = Router::new().route(
        "/a/x",
        get(move |headers: http::HeaderMap| {
            let calls = calls.clone();
            async move {
                let from_b: Value = calls.call("trace-b", "/b", &json!({})).await.unwrap();
                let mut out = me();
                out["http_traceparent"] = json!(headers["traceparent"].to_str().unwrap());
                out["b"] = from_b;
                Json(out)
            }
        }),
    );
    let a = Server::start(opts(&server, "trace-a"), a_router)
        .await
        .unwrap();
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // The client's trace is continued: same trace id at A and at B; the gateway's span is
    // A's parent, A's span is B's parent; the tracestate travels along.
    let r = send_traced(&gw.url("/a/x"), Some(GOOD), Some("congo=t61rcWkgMzE")).await;
    let gateway_span = TraceParent::parse(r["http_traceparent"].as_str().unwrap())
        .expect("A sees a valid traceparent")
        .parent_id
        .to_string();
    assert_eq!(r["trace_id"], TRACE, "{r}");
    assert_eq!(r["parent_id"], gateway_span.as_str(), "{r}");
    assert_ne!(
        gateway_span,
        &GOOD[36..52],
        "the gateway has a span of its own"
    );
    assert_eq!(r["b"]["trace_id"], TRACE, "{r}");
    assert_eq!(
        r["b"]["parent_id"], r["span_id"],
        "A's span is B's parent: {r}"
    );
    assert_ne!(r["b"]["span_id"], r["span_id"]);
    assert_eq!(r["state"], "congo=t61rcWkgMzE");
    assert_eq!(r["b"]["state"], "congo=t61rcWkgMzE");

    // No traceparent: the gateway starts a trace, which A and B share.
    let r1 = send_traced(&gw.url("/a/x"), None, Some("congo=x")).await;
    let r2 = send_traced(&gw.url("/a/x"), None, None).await;
    for r in [&r1, &r2] {
        let t = r["trace_id"].as_str().unwrap();
        assert!(TraceParent::parse(&format!("00-{t}-00f067aa0ba902b7-01")).is_ok());
        assert_ne!(t, TRACE);
        assert_eq!(r["b"]["trace_id"], t);
        assert_eq!(r["b"]["parent_id"], r["span_id"]);
        assert_eq!(
            r["state"],
            Value::Null,
            "no tracestate without the client's trace"
        );
    }
    assert_ne!(r1["trace_id"], r2["trace_id"], "a fresh trace per request");

    // Malformed values are ignored: a fresh trace, the tracestate dropped with it.
    for bad in [
        GOOD.to_uppercase(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
        GOOD.replacen("00", "ff", 1),
        format!("{GOOD}-00"),
        "garbage".into(),
    ] {
        let r = send_traced(&gw.url("/a/x"), Some(&bad), Some("congo=t61rcWkgMzE")).await;
        assert_ne!(r["trace_id"], TRACE, "{bad}: {r}");
        assert_eq!(r["state"], Value::Null, "{bad}: {r}");
        assert_eq!(r["b"]["trace_id"], r["trace_id"], "{bad}: {r}");
        assert_ne!(r["http_traceparent"], bad.as_str());
    }

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bhttp_and_raw_routes_carry_the_checked_traceparent_as_nats_headers() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let _echo = echo_service(&client, "echo").await;
    // A raw-mode service that answers with the NATS headers it received.
    let mut sub = client.subscribe("trace-raw").await.unwrap();
    synced(&client).await;
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let headers: Vec<(String, String)> = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .flat_map(|(k, v)| {
                    v.iter()
                        .map(move |v| (AsRef::<str>::as_ref(k).to_owned(), v.as_str().to_owned()))
                })
                .collect();
            let body = serde_json::to_vec(&headers).unwrap();
            let _ = responder.publish(m.reply.unwrap(), body.into()).await;
        }
    });
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // BHTTP: the NATS header and the HTTP header the app sees are the same checked value.
    let r = send_traced(&gw.url("/echo/x"), Some(GOOD), Some("a=b")).await;
    let nats = r["nats_headers"]["traceparent"].as_str().unwrap();
    assert_eq!(r["headers"]["traceparent"], nats, "{r}");
    let p = TraceParent::parse(nats).unwrap();
    assert_eq!(p.trace_id.to_string(), TRACE);
    assert_ne!(nats, GOOD);
    assert_eq!(r["nats_headers"]["tracestate"], "a=b");
    let ctx = TraceContext::from_headers(Some(nats), Some("a=b")).unwrap();
    assert_eq!(ctx.trace_id.to_string(), TRACE);

    // Raw: one `traceparent` NATS header (the checked one), never the client's verbatim.
    for (tp, continued) in [(GOOD, true), ("00-bad", false)] {
        let r = send(
            Request::get(gw.url("/raw/x"))
                .header("traceparent", tp)
                .header("tracestate", "a=b")
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let headers: Vec<(String, String)> = serde_json::from_slice(&r.body).unwrap();
        let tps: Vec<&(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .collect();
        assert_eq!(tps.len(), 1, "{headers:?}");
        assert_eq!(tps[0].0, "traceparent");
        let p = TraceParent::parse(&tps[0].1).unwrap();
        assert_eq!(p.trace_id.to_string() == TRACE, continued, "{headers:?}");
        let states: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("tracestate"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            states,
            if continued { vec!["a=b"] } else { vec![] },
            "{headers:?}"
        );
    }
}

const GRPC_ROUTES: &str = r#"
[gateway]
grpc_addr = "127.0.0.1:0"
request_timeout_sec = 10

[[gateway.routes]]
grpc = "hello.v1.Greeter"
service = "trace-grpc"
"#;

/// gRPC: the gateway forwards the checked trace as NATS headers, and `serve_grpc` runs the
/// tonic handler in it (the trace context, and `traceparent` metadata = the gateway's span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_carry_the_trace_into_the_handler() {
    use grpc_hello::pb::{HelloRequest, greeter_client::GreeterClient};
    use tower::ServiceExt;
    let server = NatsServer::start();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let inner = grpc_hello::server();
    let svc = tower::service_fn(
        move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let metadata = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            let _ = tx.send((narun::trace::current(), metadata));
            inner.clone().oneshot(req)
        },
    );
    let app = narun::GrpcServer::start(opts(&server, "trace-grpc"), svc)
        .await
        .unwrap();
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, GRPC_ROUTES).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.grpc.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = GreeterClient::new(channel);
    let hello = |tp: &str| {
        let mut r = tonic::Request::new(HelloRequest {
            name: "trace".into(),
        });
        r.metadata_mut().insert("traceparent", tp.parse().unwrap());
        r
    };

    c.say_hello(hello(GOOD)).await.expect("SayHello");
    let (ctx, metadata) = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    let ctx = ctx.expect("the handler runs in a trace context");
    let metadata = TraceParent::parse(&metadata.expect("traceparent metadata")).unwrap();
    assert_eq!(ctx.trace_id.to_string(), TRACE);
    assert_eq!(metadata.trace_id.to_string(), TRACE);
    assert_eq!(
        ctx.parent_id,
        Some(metadata.parent_id),
        "the gateway's span"
    );
    assert_ne!(metadata.parent_id.to_string(), &GOOD[36..52]);

    c.say_hello(hello(&GOOD.to_uppercase()))
        .await
        .expect("SayHello");
    let (ctx, metadata) = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    let ctx = ctx.unwrap();
    assert_ne!(
        ctx.trace_id.to_string(),
        TRACE,
        "a malformed value starts a trace"
    );
    assert_eq!(
        TraceParent::parse(&metadata.unwrap()).unwrap().trace_id,
        ctx.trace_id
    );
    app.shutdown().await;
}
