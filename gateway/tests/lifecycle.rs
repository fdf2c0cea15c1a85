//! Starting without NATS, outages and recovery, graceful shutdown.

mod common;

use common::*;
use narun_test_support::{NatsServer, wait_for};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
[gateway]
shutdown_timeout_sec = 2

[[gateway.routes]]
path = "/hello/"
service = "hello"
timeout_sec = 10
"#;

#[tokio::test]
async fn serves_503_while_nats_is_down_and_recovers() {
    let server = NatsServer::start();
    let svc_client = server.connect().await;
    let _hello = echo_service(&svc_client, "hello").await;
    server.stop();

    // The gateway starts although NATS is unreachable.
    let gw_client = gateway_client(&server).await;
    let gw = start_gateway(gw_client.clone(), ROUTES).await;
    assert_eq!(get(&gw.metrics_url("/healthz")).await.status, 200);
    assert_eq!(get(&gw.metrics_url("/readyz")).await.status, 503);
    let t = Instant::now();
    let r = get(&gw.url("/hello/x")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "503 took {:?}",
        t.elapsed()
    );

    for round in 0..2 {
        server.restart();
        wait_for(
            "gateway /readyz to turn 200",
            Duration::from_secs(15),
            || async { (get(&gw.metrics_url("/readyz")).await.status == 200).then_some(()) },
        )
        .await;
        // The app reconnects on its own; once it has resubscribed we get through.
        wait_for(
            "a routed request to succeed",
            Duration::from_secs(15),
            || async { (get(&gw.url("/hello/x")).await.status == 200).then_some(()) },
        )
        .await;

        // Outage at runtime: ready turns 503 and requests fail fast with 503.
        server.stop();
        wait_for(
            "gateway /readyz to turn 503",
            Duration::from_secs(15),
            || async { (get(&gw.metrics_url("/readyz")).await.status == 503).then_some(()) },
        )
        .await;
        let t = Instant::now();
        let r = get(&gw.url("/hello/x")).await;
        assert_eq!(r.status, 503, "round {round}: {}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "503 took {:?}",
            t.elapsed()
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let server = NatsServer::start();
    let svc_client = server.connect().await;
    let mut hello = echo_service(&svc_client, "hello").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let mut gw = start_gateway(gw_client, ROUTES).await;

    // An idle keep-alive connection must not hold shutdown up.
    let idle = http_client();
    assert_eq!(
        send_with(
            &idle,
            http::Request::get(gw.url("/hello/idle"))
                .body(full(""))
                .unwrap()
        )
        .await
        .status,
        200
    );
    assert_eq!(hello.seen.recv().await.unwrap(), "/hello/idle");

    let url = gw.url("/hello/sleep/800");
    let slow = tokio::spawn(async move { get(&url).await });
    assert_eq!(hello.seen.recv().await.unwrap(), "/hello/sleep/800");
    let t = Instant::now();
    let done = gw.shutdown();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("run() returned within 5 s")
        .unwrap()
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    // No longer listening.
    assert!(tokio::net::TcpStream::connect(gw.http).await.is_err());
    // And unregistered from discovery.
    let ping = svc_client
        .request("$SRV.PING.narun-gateway", "".into())
        .await;
    assert!(ping.is_err(), "gateway still answers PING after shutdown");
}

#[tokio::test]
async fn shutdown_drain_is_bounded() {
    let server = NatsServer::start();
    let svc_client = server.connect().await;
    let mut hello = echo_service(&svc_client, "hello").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let mut gw = start_gateway(gw_client, ROUTES).await;
    let url = gw.url("/hello/sleep/8000");
    let _slow = tokio::spawn(async move { get(&url).await });
    assert_eq!(hello.seen.recv().await.unwrap(), "/hello/sleep/8000");
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), gw.shutdown())
        .await
        .expect("run() gave up on the slow request")
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}
