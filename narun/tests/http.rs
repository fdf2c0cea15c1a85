//! The narun app library against a real nats-server: BHTTP requests in, responses out.

use axum::{Router, routing::get};
use bytes::Bytes;
use narun::{Options, Server};
use narun_test_support::{NatsServer, T, wait_for};
use narun_wire::bhttp;
use narun_wire::connect::NatsSettings;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

fn opts(server: &NatsServer, name: &str) -> Options {
    Options::new(name).nats(NatsSettings {
        url: server.url(),
        ..Default::default()
    })
}

/// Send an HTTP request to `service` the way the gateway does.
async fn call(
    client: &async_nats::Client,
    service: &str,
    req: http::Request<&'static [u8]>,
) -> Result<http::Response<Bytes>, async_nats::Message> {
    let (parts, body) = req.into_parts();
    let payload = bhttp::encode_request(&parts, body);
    let msg = tokio::time::timeout(T, client.request(service.to_owned(), payload.into()))
        .await
        .expect("request timed out")
        .expect("request failed");
    bhttp::decode_response(&msg.payload).map_err(|_| msg)
}

fn get_req(uri: &str) -> http::Request<&'static [u8]> {
    http::Request::get(uri)
        .header("host", "gw.test")
        .body(&b""[..])
        .unwrap()
}

#[tokio::test]
async fn routes_query_headers_and_bodies() {
    let server = NatsServer::start();
    let app = Router::new().route(
        "/hello/{name}",
        get(
            |axum::extract::Path(n): axum::extract::Path<String>,
             q: axum::extract::RawQuery,
             h: http::HeaderMap| async move {
                format!(
                    "hi {n} q={} host={}",
                    q.0.unwrap_or_default(),
                    h.get("host").and_then(|v| v.to_str().ok()).unwrap_or("")
                )
            },
        )
        .post(|body: Bytes| async move { ([("x-len", body.len().to_string())], body) }),
    );
    let srv = Server::start(opts(&server, "hello"), app).await.unwrap();
    let client = server.connect().await;

    let resp = call(&client, "hello", get_req("/hello/bob?a=1&b=2"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body().as_ref(), b"hi bob q=a=1&b=2 host=gw.test");

    let post = http::Request::post("/hello/x")
        .body(&b"payload!"[..])
        .unwrap();
    let resp = call(&client, "hello", post).await.unwrap();
    assert_eq!(resp.headers()["x-len"], "8");
    assert_eq!(resp.body().as_ref(), b"payload!");

    let resp = call(&client, "hello", get_req("/nope")).await.unwrap();
    assert_eq!(resp.status(), 404);
    srv.shutdown().await;
}

#[tokio::test]
async fn handler_panic_and_error_become_500_and_garbage_gets_micro_error() {
    let server = NatsServer::start();
    let app = Router::new().route(
        "/panic",
        get(|| async {
            if true {
                panic!("boom");
            }
            "unreachable"
        }),
    );
    let srv = Server::start(opts(&server, "fragile"), app).await.unwrap();
    let client = server.connect().await;
    let resp = call(&client, "fragile", get_req("/panic")).await.unwrap();
    assert_eq!(resp.status(), 500);
    // The service is still alive after the panic.
    let resp = call(&client, "fragile", get_req("/other")).await.unwrap();
    assert_eq!(resp.status(), 404);

    let msg = tokio::time::timeout(T, client.request("fragile", "not bhttp at all".into()))
        .await
        .unwrap()
        .unwrap();
    let h = msg.headers.expect("micro error headers");
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "400");
    assert!(
        h.get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .contains("BHTTP")
    );
    assert!(msg.payload.is_empty());
    srv.shutdown().await;

    // A tower service whose future fails: 500, not a crash.
    let failing = tower::service_fn(|_req: http::Request<http_body_util::Full<Bytes>>| async {
        Err::<http::Response<http_body_util::Full<Bytes>>, std::io::Error>(std::io::Error::other(
            "db down",
        ))
    });
    let srv = Server::start(opts(&server, "failing"), failing)
        .await
        .unwrap();
    let resp = call(&client, "failing", get_req("/")).await.unwrap();
    assert_eq!(resp.status(), 500);
    srv.shutdown().await;
}

/// A router whose `/work` handler reports its arrival and then blocks until the
/// test adds a permit to `gate`; `peak` records how many ran at once.
struct Gated {
    peak: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    arrived: mpsc::UnboundedReceiver<()>,
}

fn gated_app() -> (Router, Gated) {
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (tx, arrived) = mpsc::unbounded_channel();
    let (p, g) = (peak.clone(), gate.clone());
    let app = Router::new().route(
        "/work",
        get(move || {
            let (active, peak, gate, tx) = (active.clone(), p.clone(), g.clone(), tx.clone());
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let _ = tx.send(());
                gate.acquire().await.unwrap().forget();
                active.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        }),
    );
    (
        app,
        Gated {
            peak,
            gate,
            arrived,
        },
    )
}

#[tokio::test]
async fn requests_are_concurrent_up_to_the_inflight_limit() {
    let server = NatsServer::start();
    let (app, mut g) = gated_app();
    let srv = Server::start(opts(&server, "conc").max_inflight(3), app)
        .await
        .unwrap();
    let client = server.connect().await;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { call(&client, "conc", get_req("/work")).await.unwrap() })
        })
        .collect();
    // Three handlers run at once (concurrency), and no more (the limit).
    for _ in 0..3 {
        tokio::time::timeout(T, g.arrived.recv())
            .await
            .expect("handlers did not start");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), g.arrived.recv())
            .await
            .is_err(),
        "a 4th handler started although max_inflight is 3"
    );
    // Release everything; the waiting requests run and every request completes.
    g.gate.add_permits(6);
    for c in calls {
        let resp = tokio::time::timeout(T, c).await.unwrap().unwrap();
        assert_eq!(resp.body().as_ref(), b"done");
    }
    assert_eq!(g.peak.load(Ordering::SeqCst), 3);
    srv.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_inflight_and_refuses_new() {
    let server = NatsServer::start();
    let (app, mut g) = gated_app();
    let srv = Server::start(opts(&server, "graceful"), app).await.unwrap();
    let client = server.connect().await;
    let inflight = {
        let client = client.clone();
        tokio::spawn(async move { call(&client, "graceful", get_req("/work")).await.unwrap() })
    };
    tokio::time::timeout(T, g.arrived.recv()).await.unwrap();
    let stopping = tokio::spawn(srv.shutdown());
    // Once the endpoint is drained, new requests find nobody (fast 503 at a gateway).
    // The probe uses a path that answers at once in case it is still served.
    wait_for("endpoint to unsubscribe", T, || {
        let client = client.clone();
        async move {
            let payload = bhttp::encode_request(&get_req("/probe").into_parts().0, b"");
            match client.request("graceful", payload.into()).await {
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Some(()),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "shutdown returned before the in-flight request finished"
    );
    g.gate.add_permits(1);
    let resp = tokio::time::timeout(T, inflight).await.unwrap().unwrap();
    assert_eq!(resp.body().as_ref(), b"done");
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn serves_once_nats_comes_up_later() {
    let server = NatsServer::start();
    server.stop();
    let app = Router::new().route("/", get(|| async { "late" }));
    // Starting while NATS is down must not fail.
    let srv = tokio::time::timeout(T, Server::start(opts(&server, "late"), app))
        .await
        .expect("start must not wait for NATS")
        .unwrap();
    server.restart();
    let client = server.connect().await;
    let resp = wait_for("service to answer after NATS started", T, || {
        let client = client.clone();
        async move {
            let payload = bhttp::encode_request(&get_req("/").into_parts().0, b"");
            let m = client.request("late", payload.into()).await.ok()?;
            bhttp::decode_response(&m.payload).ok()
        }
    })
    .await;
    assert_eq!(resp.body().as_ref(), b"late");
    srv.shutdown().await;
}

#[tokio::test]
async fn shutdown_while_nats_is_down_does_not_wait_for_the_drain() {
    let server = NatsServer::start();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let srv = Server::start(
        opts(&server, "offline-stop").shutdown_timeout(Duration::from_secs(30)),
        app,
    )
    .await
    .unwrap();
    server.stop();
    // Without NATS the unsubscribe is never confirmed; shutdown must not sit out
    // the 30 s shutdown timeout waiting for it (this bound is the check: well below 30 s).
    tokio::time::timeout(Duration::from_secs(10), srv.shutdown())
        .await
        .expect("shutdown waited for a drain that cannot complete");
}
