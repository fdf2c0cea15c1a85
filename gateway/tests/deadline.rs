//! The gateway's deadline travels with each NATS request (`Narun-Timeout-Ms`,
//! the route timeout in milliseconds), a client cannot set it, and the narun app
//! library drops a handler once it has passed, freeing the handler's slot.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::Request;
use http_body_util::Full;
use narun::{NatsSettings, Options, STAT_DEADLINE_EXCEEDED, Server};
use narun_test_support::{NatsServer, T};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const ROUTES: &str = r#"
[gateway]
request_timeout_sec = 10

[[gateway.routes]]
path = "/app/"
service = "slowapp"
timeout_sec = 1

[[gateway.routes]]
path = "/raw/"
subject = "rawsvc"
mode = "raw"
timeout_sec = 2

[[gateway.routes]]
path = "/echo/"
service = "echo"
"#;

/// Sends a message when dropped: shows that a handler future was cancelled.
struct DropGuard(mpsc::UnboundedSender<&'static str>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_travels_with_the_request_and_the_app_drops_the_handler() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let echo = echo_service(&client, "echo").await;

    // A raw-mode service that reports the deadline headers it receives.
    let mut sub = client.subscribe("rawsvc").await.unwrap();
    synced(&client).await;
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let values: Vec<String> = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .filter(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case("narun-timeout-ms"))
                .flat_map(|(_, v)| v.iter().map(|v| v.as_str().to_owned()))
                .collect();
            let body = serde_json::to_vec(&values).unwrap();
            let _ = responder.publish(m.reply.unwrap(), body.into()).await;
        }
    });

    // The narun app: one slot; /app/slow never finishes on its own.
    let (tx, mut events) = mpsc::unbounded_channel();
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let events = tx.clone();
        async move {
            if req.uri().path() == "/app/slow" {
                let _guard = DropGuard(events.clone());
                let _ = events.send("slow started");
                std::future::pending::<()>().await;
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"quick",
            ))))
        }
    });
    let settings = NatsSettings {
        url: server.url(),
        ..Default::default()
    };
    let app = Server::start(Options::new("slowapp").nats(settings).max_inflight(1), svc)
        .await
        .unwrap();

    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // BHTTP route: the service sees the route timeout (10 s) in milliseconds.
    let r = get(&gw.url("/echo/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["nats_headers"]["Narun-Timeout-Ms"], "10000");

    // Raw route: a client's own header is replaced, not passed on.
    let r = send(
        Request::get(gw.url("/raw/x"))
            .header("narun-timeout-ms", "999999")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!(["2000"]));

    // The gateway gives up after 1 s (504); the app drops the handler then.
    let sent = Instant::now();
    let slow = tokio::spawn(get_owned(gw.url("/app/slow")));
    assert_eq!(recv(&mut events).await, "slow started");
    assert_eq!(recv(&mut events).await, "dropped");
    let dropped = sent.elapsed();
    assert!(
        dropped >= Duration::from_millis(900),
        "dropped after {dropped:?}"
    );
    let r = tokio::time::timeout(T, slow).await.unwrap().unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    // Its only slot is free again.
    let r = get(&gw.url("/app/quick")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "quick");
    let e = &app.service().stats().endpoints[0];
    assert_eq!(e.data[STAT_DEADLINE_EXCEEDED], 1, "{e:?}");
    drop(echo);
    app.shutdown().await;
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

async fn recv(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(T, events.recv())
        .await
        .expect("no handler event within T")
        .expect("events channel open")
}
