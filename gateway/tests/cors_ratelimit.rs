//! CORS and per-client rate limits of routes, attacked through a real gateway, a real
//! nats-server and a real app.

mod common;

use common::*;
use http::{Request, StatusCode};
use narun_test_support::NatsServer;
use narun_test_support::http1::{RawResponse, read_response};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

const ROUTES: &str = r#"
[gateway]
request_timeout_sec = 10

[[gateway.routes]]
path = "/api/"
service = "api"
methods = ["GET", "POST"]
[gateway.routes.cors]
allow_origins = ["https://app.example"]
allow_headers = ["content-type", "authorization"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age_sec = 120
[gateway.routes.auth]
bearer = { ci = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }

[[gateway.routes]]
path = "/public/"
service = "api"
[gateway.routes.cors]
allow_origins = ["*"]

[[gateway.routes]]
path = "/limited/"
service = "api"
[gateway.routes.rate_limit]
rate = 0.2
burst = 3

[[gateway.routes]]
path = "/open/"
service = "api"
"#;

struct Setup {
    _server: NatsServer,
    gw: GatewayRun,
    api: EchoService,
}

async fn setup() -> Setup {
    let server = NatsServer::start();
    let client = server.connect().await;
    let api = echo_service(&client, "api").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;
    Setup {
        _server: server,
        gw,
        api,
    }
}

async fn call(s: &Setup, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::builder().method(method).uri(s.gw.url(path));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send(b.body(full("")).unwrap()).await
}

fn cors_headers(r: &Reply) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("access-control-"))
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_and_origins_never_reflected() {
    let s = setup().await;
    let pre = |origin: &'static str, method: &'static str, hdrs: &'static str| {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if !hdrs.is_empty() {
            h.push(("access-control-request-headers", hdrs));
        }
        h
    };
    // Allowed: 204 from the gateway (no credential needed on a preflight), nothing forwarded.
    let r = call(
        &s,
        "OPTIONS",
        "/api/items",
        &pre("https://app.example", "POST", "Content-Type, Authorization"),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        cors_headers(&r),
        [
            "access-control-allow-origin: https://app.example",
            "access-control-allow-methods: GET, POST",
            "access-control-allow-headers: content-type, authorization",
            "access-control-allow-credentials: true",
            "access-control-max-age: 120",
        ]
    );
    assert_eq!(r.headers["vary"], "Origin");
    // Refused: another origin (look-alikes included), a method or header not allowed.
    for (o, m, h) in [
        ("https://evil.example", "POST", ""),
        ("https://app.example.evil.example", "GET", ""),
        ("http://app.example", "GET", ""),
        ("null", "GET", ""),
        ("https://app.example", "DELETE", ""),
        ("https://app.example", "POST", "x-admin"),
    ] {
        let r = call(&s, "OPTIONS", "/api/items", &pre(o, m, h)).await;
        // 405 for a method the route does not serve at all (the preflight finds no route).
        let want = if m == "DELETE" {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status, want, "{o} {m} {h}");
        assert!(cors_headers(&r).is_empty(), "{o}: {:?}", cors_headers(&r));
    }
    assert_eq!(s.api.count(), 0, "no preflight reached the app");

    // Actual requests: the allowed origin gets the headers, on the gateway's 401 too...
    let r = call(
        &s,
        "GET",
        "/api/items",
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let ok = [
        ("origin", "https://app.example"),
        ("authorization", "Bearer password"),
    ];
    let r = call(&s, "GET", "/api/items", &ok).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        cors_headers(&r),
        [
            "access-control-allow-origin: https://app.example",
            "access-control-allow-credentials: true",
            "access-control-expose-headers: x-request-id",
        ]
    );
    // ...an origin that is not allowed is never reflected.
    let r = call(
        &s,
        "GET",
        "/api/items",
        &[
            ("origin", "https://evil.example"),
            ("authorization", "Bearer password"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    assert_eq!(r.headers["vary"], "Origin");
    // "*" without credentials: any origin, answered with "*".
    let r = call(&s, "GET", "/public/x", &[("origin", "https://any.example")]).await;
    assert_eq!(cors_headers(&r), ["access-control-allow-origin: *"]);
    // A route without cors forwards OPTIONS to the app like any method.
    let before = s.api.count();
    let r = call(
        &s,
        "OPTIONS",
        "/open/x",
        &pre("https://app.example", "GET", ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.api.count(), before + 1);
}

/// One request from `local` (a loopback address of our choice) on a fresh connection.
async fn from(local: &str, gw: SocketAddr, extra: &str) -> RawResponse {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut c = sock.connect(gw).await.unwrap();
    c.write_all(format!("GET /limited/x HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    read_response(&mut c).await
}

#[tokio::test]
async fn rate_limits_are_per_client_address_and_ignore_forwarding_headers() {
    let s = setup().await;
    let gw = s.gw.http;
    // burst = 3 at 0.2/s: three pass, the fourth gets 429 + Retry-After (5 s for a token).
    for i in 0..3 {
        let r = from("127.0.0.1", gw, "").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
    }
    let r = from("127.0.0.1", gw, "").await;
    assert_eq!(r.status, 429, "{}", r.head);
    let retry: u64 = r
        .head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // Claiming to be someone else in headers changes nothing: the peer address counts.
    for h in [
        "X-Forwarded-For: 203.0.113.9\r\n",
        "X-Real-IP: 203.0.113.10\r\n",
        "Forwarded: for=203.0.113.11\r\n",
        "X-Forwarded-For: 127.0.0.2\r\n",
    ] {
        let r = from("127.0.0.1", gw, h).await;
        assert_eq!(r.status, 429, "{h}: {}", r.head);
    }
    // Another client address has its own bucket; other routes are not limited.
    let r = from("127.0.0.2", gw, "").await;
    assert_eq!(r.status, 200, "{}", r.head);
    let r = get(&s.gw.url("/open/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.api.count(), 5, "no refused request reached the app");
    let m = get(&s.gw.metrics_url("/metrics")).await.text();
    assert!(
        m.contains("gateway_rate_limited_total{path=\"/limited/\"} 5"),
        "{m}"
    );
}
