//! `wait_for_responder_ms` (gateway/src/responders.rs, docs/gateway.md "Waiting for a
//! responder") against a real nats-server: a request that finds no responder waits for
//! the service to appear, by its announcement or by discovery pings, within the route's
//! deadline, its body charged to the memory budget while it waits; and it is sent once.

mod common;

use common::*;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use narun_test_support::http1::metric_value as value;
use narun_test_support::{NatsServer, T, wait_for};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
[gateway]
request_timeout_sec = 10
wait_for_responder_ms = 5000
memory_budget_bytes = 1000000
max_body_bytes = 500000

[[gateway.routes]]
path = "/late/"
service = "late"

[[gateway.routes]]
path = "/told/"
subject = "told"
mode = "raw"

[[gateway.routes]]
path = "/short/"
service = "short"
timeout_sec = 1

[[gateway.routes]]
path = "/never/"
service = "never"
"#;

async fn used_budget(gw: &GatewayRun) -> f64 {
    let m = get(&gw.metrics_url("/metrics")).await.text();
    value(&m, "gateway_memory_budget_used_bytes")
}

#[tokio::test]
async fn a_post_waits_for_the_service_and_is_sent_once() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // A POST with a 200 000-byte body finds no service: it waits, its body charged to the
    // memory budget meanwhile …
    let url = gw.url("/late/x");
    let pending = tokio::spawn(async move {
        send(Request::post(url).body(full(vec![b'p'; 200_000])).unwrap()).await
    });
    wait_for("the waiting body to be charged", T, || async {
        (used_budget(&gw).await == 200_000.0).then_some(())
    })
    .await;
    // … and is answered once the service is there (found by a discovery ping: this
    // service does not announce itself), sent once.
    let late = echo_service(&client, "late").await;
    let r = tokio::time::timeout(T, pending).await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(late.count(), 1, "the service got the POST once");
    assert_eq!(used_budget(&gw).await, 0.0);
}

#[tokio::test]
async fn an_announcement_ends_the_wait_at_once() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // A plain NATS responder that answers no discovery ping: only its announcement on
    // narun.svc.up.told can tell the waiting gateway it is there.
    let url = gw.url("/told/x");
    let pending =
        tokio::spawn(async move { send(Request::post(url).body(full("hi")).unwrap()).await });
    // Past the first pings (25, 50, … ms): the watch now pings once a second at most.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!pending.is_finished());
    let mut requests = client.subscribe("told").await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, "raw answer".into()).await;
            }
        }
    });
    client.flush().await.unwrap();
    let told = Instant::now();
    client
        .publish(narun_wire::micro::announce_subject("told"), "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let r = tokio::time::timeout(T, pending).await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "raw answer");
    // Sooner than the next ping could have found it (pings are ≥ 800 ms apart by now).
    assert!(
        told.elapsed() < Duration::from_millis(600),
        "{:?}",
        told.elapsed()
    );
}

#[tokio::test]
async fn the_wait_is_bounded_by_the_deadline_and_the_setting() {
    let server = NatsServer::start();
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // The route's 1 s timeout ends the 5 s wait.
    let t = Instant::now();
    let r = send(Request::post(gw.url("/short/x")).body(full("x")).unwrap()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Without a service, a request waits wait_for_responder_ms (5 s), not the route's 10 s.
    let t = Instant::now();
    let r = get(&gw.url("/never/x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        r.text().contains("No backend service available"),
        "{}",
        r.text()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(4900),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(used_budget(&gw).await, 0.0);
}
