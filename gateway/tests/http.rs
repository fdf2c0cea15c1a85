//! The HTTP side of the gateway against a real nats-server and real services.

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use narun_test_support::NatsServer;
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
[gateway]
request_timeout_sec = 10

[[gateway.routes]]
path = "/hello/"
service = "hello"

[[gateway.routes]]
path = "/hello/exact"
methods = ["GET"]
service = "exact"

[[gateway.routes]]
path = "/hello/exact"
methods = ["POST", "PUT"]
service = "exactpost"

[[gateway.routes]]
path = "/hello/deeper/"
service = "deeper"

[[gateway.routes]]
path = "/slow/"
service = "silent"
timeout_sec = 1

[[gateway.routes]]
path = "/nobody/"
service = "nobody"

[[gateway.routes]]
path = "/only-get"
methods = ["GET", "HEAD"]
service = "hello"
"#;

struct Setup {
    _server: NatsServer,
    gw: GatewayRun,
    hello: EchoService,
    client: async_nats::Client,
}

async fn setup() -> Setup {
    let server = NatsServer::start();
    let client = server.connect().await;
    let hello = echo_service(&client, "hello").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;
    Setup {
        _server: server,
        gw,
        hello,
        client,
    }
}

#[tokio::test]
async fn routing_exact_prefix_longest_and_methods() {
    let s = setup().await;
    for name in ["exact", "exactpost", "deeper"] {
        // Keep the services alive for the whole test.
        std::mem::forget(echo_service(&s.client, name).await);
    }
    let r = get(&s.gw.url("/nothing-here")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.text(), "404 page not found\n");

    // Prefix route; the query string travels inside :path.
    let r = get(&s.gw.url("/hello/x/y?a=1&b=%20")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-app"], "echo");
    assert_eq!(r.json()["uri"], "/hello/x/y?a=1&b=%20");
    assert_eq!(r.json()["method"], "GET");

    // "/hello" is not under the prefix "/hello/" (no Go-style redirect).
    assert_eq!(get(&s.gw.url("/hello")).await.status, 404);

    // Exact beats prefix; same path, different methods, different services.
    let probe = async |method: &str, path: &str| {
        let r = send(
            Request::builder()
                .method(method)
                .uri(s.gw.url(path))
                .body(full(""))
                .unwrap(),
        )
        .await;
        (
            r.status,
            r.headers
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned()),
            r,
        )
    };
    // Which service answered is visible in the NATS subject: ask each echo
    // service's stats afterwards instead; simpler: the app sees the request.
    let (st, _, _) = probe("GET", "/hello/exact").await;
    assert_eq!(st, 200);
    let (st, _, _) = probe("PUT", "/hello/exact").await;
    assert_eq!(st, 200);
    let (st, allow, r) = probe("DELETE", "/hello/exact").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text());
    assert_eq!(allow.as_deref(), Some("GET, POST, PUT"));
    // Longest prefix wins.
    let (st, _, _) = probe("GET", "/hello/deeper/x").await;
    assert_eq!(st, 200);
    let (st, allow, _) = probe("POST", "/only-get").await;
    assert_eq!(st, 405);
    assert_eq!(allow.as_deref(), Some("GET, HEAD"));

    // Each request reached the service its route names: check their STATS.
    let stats = |name: &'static str| {
        let c = s.client.clone();
        async move {
            let m = c
                .request(format!("$SRV.STATS.{name}"), "".into())
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            v["endpoints"][0]["num_requests"].as_u64().unwrap()
        }
    };
    assert_eq!(stats("exact").await, 1, "GET /hello/exact -> exact");
    assert_eq!(stats("exactpost").await, 1, "PUT /hello/exact -> exactpost");
    assert_eq!(stats("deeper").await, 1, "/hello/deeper/x -> deeper");
    assert_eq!(s.hello.count(), 1, "only /hello/x/y reached hello");

    // Dot segments that climb out of the route are refused before routing.
    let r = get(&s.gw.url("/hello/../secret")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn encoded_dot_segments_and_separators_never_reach_the_app() {
    let s = setup().await;
    let before = s.hello.count();
    for (path, why) in [
        (
            "/hello/%2e%2e/secret",
            "encoded dot segments climbing out of /hello/",
        ),
        ("/hello/%2E%2e/%2e%2E/x", "twice"),
        ("/hello/.%2e/secret", "half encoded"),
        ("/hello/x/../../secret", "above the route"),
        (
            "/hello/a%2f..%2f..%2fsecret",
            "an encoded '/' the app could decode",
        ),
        ("/hello/a%5c..%5csecret", "an encoded '\\'"),
        ("/hello/a%00", "an encoded NUL"),
        ("/hello/a%zz", "a bad escape"),
        ("/hello/..\\secret", "a literal '\\' some apps take for '/'"),
    ] {
        let r = get(&s.gw.url(path)).await;
        assert_eq!(r.status, 400, "{path} ({why}): {}", r.text());
        assert!(r.text().starts_with("Invalid path: "), "{}", r.text());
    }
    assert_eq!(s.hello.count(), before, "a refused path reached the app");
    // Inside the route, the app receives the normalised path (and the query as sent).
    for (path, seen) in [
        ("/hello/a/%2E/b/../c?q=%2e%2e", "/hello/a/c?q=%2e%2e"),
        ("/hello/%7euser/%41", "/hello/~user/A"),
        ("/hello/caf%c3%a9", "/hello/caf%C3%A9"),
        ("/hello/a//b", "/hello/a//b"),
    ] {
        let r = get(&s.gw.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["uri"], seen, "{path}");
    }
}

#[tokio::test]
async fn connection_tokens_never_remove_what_the_gateway_sets() {
    let s = setup().await;
    let r = send(
        Request::get(s.gw.url("/hello/h"))
            .header(
                "connection",
                "x-forwarded-for, X-Request-Id, x-forwarded-proto, x-forwarded-host, host",
            )
            .header("x-forwarded-for", "10.9.9.9")
            .header("x-forwarded-proto", "https")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    // The client's own X-Forwarded-* were hop-by-hop (it said so): the gateway's remain.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], s.gw.http.to_string(), "{h}");
    let rid = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(h["x-request-id"], rid, "{h}");
    assert!(h.get("connection").is_none(), "{h}");
}

#[tokio::test]
async fn backend_failures_map_to_statuses() {
    let s = setup().await;
    // A subscriber that never answers -> 504 after the route's 1 s timeout.
    let _silent = s.client.subscribe("silent").await.unwrap();
    synced(&s.client).await;
    let t = Instant::now();
    let r = get(&s.gw.url("/slow/x")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        r.text(),
        "Request timed out waiting for backend processor\n"
    );

    // Nobody subscribed -> 503, not after the 10 s timeout: a GET is retried for the
    // gateway's short no-responders window (docs/gateway.md, "NATS failover"), then
    // answered.
    let t = Instant::now();
    let r = get(&s.gw.url("/nobody/x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        t.elapsed() < Duration::from_millis(3000),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");

    // A reply that is not BHTTP -> 502.
    let r = get(&s.gw.url("/hello/garbage")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.text(), "Failed to decode backend response\n");

    // Micro errors: 400..=599 keep their code, others are 502; body = error text.
    for (code, want) in [(404, 404), (429, 429), (503, 503), (7, 502), (600, 502)] {
        let r = get(&s.gw.url(&format!("/hello/error/{code}"))).await;
        assert_eq!(r.status.as_u16(), want, "micro error {code}");
        assert_eq!(r.text(), format!("failed {code}\n"));
    }

    // App statuses pass through untouched.
    let r = get(&s.gw.url("/hello/status/418")).await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.headers["x-app"], "echo");
}

#[tokio::test]
async fn hop_by_hop_forwarded_and_request_id_headers() {
    let s = setup().await;
    let r = send(
        Request::get(s.gw.url("/hello/h"))
            .header("connection", "x-private")
            .header("x-private", "secret")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic abc")
            .header("x-keep", "1")
            .header("x-forwarded-for", "10.0.0.1")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    let h = &seen["headers"];
    for gone in ["connection", "x-private", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-keep"], "1");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], s.gw.http.to_string());
    // A generated request id: echoed to the client and given to the app in the
    // BHTTP headers; the only NATS header is the BHTTP content type (as Go sends).
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(rid.len() >= 16, "{rid}");
    assert_eq!(h["x-request-id"], rid.as_str());
    assert_eq!(seen["nats_headers"]["Content-Type"], "application/bhttp");
    assert!(
        seen["nats_headers"].get("X-Request-Id").is_none(),
        "the request id is sent once, inside the BHTTP message: {}",
        seen["nats_headers"]
    );

    // A valid incoming id is propagated; an invalid one is replaced.
    let r = send(
        Request::get(s.gw.url("/hello/h"))
            .header("x-request-id", "abc-123_x.y")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "abc-123_x.y");
    assert_eq!(r.json()["headers"]["x-request-id"], "abc-123_x.y");
    let r = send(
        Request::get(s.gw.url("/hello/h"))
            .header("x-request-id", "bad id with spaces")
            .body(full(""))
            .unwrap(),
    )
    .await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(r.json()["headers"]["x-request-id"], id);
    // Errors generated by the gateway carry the id too.
    let r = get(&s.gw.url("/nothing")).await;
    assert!(r.headers.contains_key("x-request-id"));

    // Hop-by-hop headers from the app are stripped on the way back.
    let r = get(&s.gw.url("/hello/hop")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hop");
    assert_eq!(r.headers["x-kept"], "yes");
    for gone in [
        "x-hop-private",
        "keep-alive",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !r.headers.contains_key(gone),
            "{gone} came back: {:?}",
            r.headers
        );
    }
}

#[tokio::test]
async fn body_limit_413_before_anything_reaches_nats() {
    let server = NatsServer::start_with_config("max_payload: 65536");
    let client = server.connect().await;
    let mut hello = echo_service(&client, "hello").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // Within the limit: fine.
    let r = send(
        Request::post(gw.url("/hello/up"))
            .body(full(vec![b'a'; 30_000]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 30_000);
    assert_eq!(hello.seen.recv().await.unwrap(), "/hello/up");

    // Content-Length above max_payload: refused up front.
    let r = send(
        Request::post(gw.url("/hello/big"))
            .body(full(vec![b'a'; 70_000]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(
        r.text().starts_with("Request body too large"),
        "{}",
        r.text()
    );

    // Chunked upload (no Content-Length) that grows past the limit.
    let chunks = (0..20).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![b'b'; 8192])))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let r = send(Request::post(gw.url("/hello/chunked")).body(body).unwrap()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_eq!(hello.count(), 1, "the app received an oversized request");
    drop(gw);

    // The configured max_body_bytes applies when it is smaller.
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        &format!("{ROUTES}\n").replace(
            "request_timeout_sec = 10",
            "request_timeout_sec = 10\nmax_body_bytes = 100",
        ),
    )
    .await;
    let r = send(
        Request::post(gw.url("/hello/x"))
            .body(full(vec![b'a'; 101]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    let r = send(
        Request::post(gw.url("/hello/x"))
            .body(full(vec![b'a'; 100]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(hello.count(), 2);
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let s = setup().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let r = send_with(
        &client,
        Request::get(s.gw.url("/hello/h2")).body(full("")).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/hello/h2");
}

/// An absolute-form request target without a path (`GET http://host?query`, which HTTP/1.1
/// servers accept) is routed on `/` and reaches the app as `/?query`; it used to become the
/// BHTTP `:path` `?query`, which apps refused (found by the `bhttp_request` fuzz target).
#[tokio::test]
async fn absolute_form_target_without_path_reaches_the_app() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = NatsServer::start();
    let client = server.connect().await;
    let mut root = echo_service(&client, "root").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        "[gateway]\n[[gateway.routes]]\npath = \"/\"\nservice = \"root\"\n",
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(
        b"GET http://gw.example?x=1 HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(narun_test_support::T, tcp.read_to_end(&mut answer))
        .await
        .expect("the gateway answers within T")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(root.seen.try_recv().as_deref(), Ok("/"));
}
