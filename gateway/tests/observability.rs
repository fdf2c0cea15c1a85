//! /metrics, /healthz, /readyz and the gateway's own ADR-32 service.

mod common;

use common::*;
use narun_test_support::NatsServer;
use narun_wire::micro::{InfoResponse, StatsResponse};

const ROUTES: &str = r#"
[[gateway.routes]]
path = "/hello/"
service = "hello"

[[gateway.routes]]
path = "/hello/del"
methods = ["DELETE"]
service = "hello"

[[gateway.routes]]
path = "/nobody"
methods = ["GET"]
service = "nobody"

[[gateway.routes]]
path = "/slow/"
service = "silent"
timeout_sec = 1
"#;

#[tokio::test]
async fn metrics_health_and_service_discovery() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let _hello = echo_service(&client, "hello").await;
    let _silent = client.subscribe("silent").await.unwrap();
    synced(&client).await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    assert_eq!(get(&gw.metrics_url("/healthz")).await.status, 200);
    assert_eq!(get(&gw.metrics_url("/readyz")).await.status, 200);
    assert_eq!(get(&gw.metrics_url("/other")).await.status, 404);
    // The admin endpoints are not on the routed listener.
    assert_eq!(get(&gw.url("/metrics")).await.status, 404);

    assert_eq!(get(&gw.url("/hello/a")).await.status, 200);
    assert_eq!(get(&gw.url("/hello/b?q=1")).await.status, 200);
    assert_eq!(get(&gw.url("/hello/error/429")).await.status, 429);
    for i in 0..3 {
        assert_eq!(get(&gw.url(&format!("/random-{i}-xyz"))).await.status, 404);
    }
    assert_eq!(get(&gw.url("/nobody")).await.status, 503);
    assert_eq!(get(&gw.url("/slow/x")).await.status, 504);
    let r = send(
        http::Request::post(gw.url("/nobody"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);

    let m = get(&gw.metrics_url("/metrics")).await;
    assert_eq!(m.status, 200);
    let text = m.text();
    for line in [
        r#"http_gateway_requests_total{method="GET",path="/hello/",status_code="200"} 2"#,
        r#"http_gateway_requests_total{method="GET",path="/hello/",status_code="429"} 1"#,
        r#"http_gateway_requests_total{method="GET",path="unmatched",status_code="404"} 4"#,
        r#"http_gateway_requests_total{method="GET",path="/nobody",status_code="503"} 1"#,
        r#"http_gateway_requests_total{method="POST",path="/nobody",status_code="405"} 1"#,
        r#"http_gateway_requests_total{method="GET",path="/slow/",status_code="504"} 1"#,
        r#"http_gateway_request_duration_seconds_count{method="GET",path="/hello/"} 3"#,
        r#"http_gateway_request_duration_seconds_bucket{le="0.005",method="GET",path="/hello/"}"#,
        r#"gateway_nats_requests_total{subject="hello",status="success"} 3"#,
        r#"gateway_nats_requests_total{subject="nobody",status="error"} 1"#,
        r#"gateway_nats_requests_total{subject="silent",status="timeout"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    // Valid Prometheus text: HELP and TYPE for every family, conventions kept.
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        m.headers
    );
    narun_test_support::http1::promtool_check(&text);
    // Bounded labels: request paths and queries never become label values.
    for leak in ["random-", "/hello/a", "q=1"] {
        assert!(!text.contains(leak), "{leak} leaked into metrics\n{text}");
    }

    // $SRV.INFO / $SRV.STATS of the gateway itself.
    let info: InfoResponse = serde_json::from_slice(
        &client
            .request("$SRV.INFO.narun-gateway", "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(info.id, gw.service_id);
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.metadata["http_addr"], gw.http.to_string());
    // The routes it serves (over HTTP): no NATS subject of their own, the subject they
    // forward to as `target`.
    let eps: Vec<(&str, &str, &str)> = info
        .endpoints
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.subject.as_str(),
                e.metadata["target"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("ANY_hello", "", "hello"),
            ("DELETE_hello_del", "", "hello"),
            ("GET_nobody", "", "nobody"),
            ("ANY_slow", "", "silent")
        ]
    );
    assert_eq!(info.endpoints[0].metadata["path"], "/hello/");
    assert_eq!(info.endpoints[0].metadata["kind"], "http");
    assert!(info.endpoints.iter().all(|e| e.queue_group.is_empty()));

    let stats: StatsResponse = serde_json::from_slice(
        &client
            .request("$SRV.STATS.narun-gateway", "".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    let ep = |name: &str| {
        stats
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
            .clone()
    };
    let hello = ep("ANY_hello");
    assert_eq!((hello.num_requests, hello.num_errors), (3, 1));
    assert_eq!(hello.last_error, "429:failed 429");
    assert!(hello.processing_time > 0);
    let nobody = ep("GET_nobody");
    // The 405 did not reach a route's endpoint; the 503 did.
    assert_eq!((nobody.num_requests, nobody.num_errors), (1, 1));
    assert_eq!(nobody.last_error, "503:No backend service available");
    assert_eq!(ep("ANY_slow").num_errors, 1);
    assert_eq!(ep("DELETE_hello_del").num_requests, 0);
}

/// The INFO of a gateway with HTTP and gRPC routes lists exactly those routes: the gRPC
/// routes too, and no subject the gateway does not serve. Its /metrics, with gRPC calls
/// counted, still passes promtool.
#[tokio::test]
async fn info_lists_exactly_the_served_routes_grpc_included() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        r#"
[gateway]
grpc_addr = "127.0.0.1:0"
[[gateway.routes]]
path = "/api/"
methods = ["GET", "POST"]
service = "api"
[[gateway.routes]]
grpc = "hello.v1.Greeter"
service = "grpc-hello"
[[gateway.routes]]
grpc = "other.v1.Thing"
service = "thing"
"#,
    )
    .await;
    // The service's subscriptions reach the server in the background.
    let info: InfoResponse =
        narun_test_support::wait_for("$SRV.INFO answered", narun_test_support::T, || async {
            let r = client
                .request("$SRV.INFO.narun-gateway", "".into())
                .await
                .ok()?;
            serde_json::from_slice(&r.payload).ok()
        })
        .await;
    let eps: Vec<(String, String, String, String)> = info
        .endpoints
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.subject.clone(),
                e.metadata["kind"].clone(),
                e.metadata["target"].clone(),
            )
        })
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        eps,
        [
            (s("GET_POST_api"), s(""), s("http"), s("api")),
            (
                s("grpc_hello_v1_Greeter"),
                s(""),
                s("grpc"),
                s("grpc-hello")
            ),
            (s("grpc_other_v1_Thing"), s(""), s("grpc"), s("thing")),
        ]
    );
    assert_eq!(info.endpoints[1].metadata["grpc"], "hello.v1.Greeter");
    // The gateway does not answer the subjects it forwards to: nobody serves `api`.
    let r = client.request("api", "".into()).await;
    assert!(r.is_err(), "the gateway answered its target subject: {r:?}");

    // A gRPC call (no app: UNAVAILABLE) shows in the metrics, which stay valid.
    {
        use http_body_util::BodyExt;
        let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::post(format!(
            "http://{}/hello.v1.Greeter/SayHello",
            gw.grpc.unwrap()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
        let resp = tokio::time::timeout(narun_test_support::T, h2.request(req))
            .await
            .unwrap()
            .unwrap();
        let _ = resp.into_body().collect().await;
    }
    let m = get(&gw.metrics_url("/metrics")).await;
    let text = m.text();
    assert!(
        text.contains(r#"grpc_gateway_requests_total{grpc_method="/hello.v1.Greeter/SayHello",grpc_code="UNAVAILABLE"} 1"#),
        "{text}"
    );
    narun_test_support::http1::promtool_check(&text);
}
