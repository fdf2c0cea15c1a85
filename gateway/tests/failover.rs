//! The gateway's retry rules (`gateway/src/failover.rs`, docs/gateway.md "NATS failover")
//! against a real nats-server: an idempotent request that finds no responders is sent
//! again while a service comes up; any other method never is.

mod common;

use common::*;
use http::{Request, StatusCode};
use narun_test_support::NatsServer;
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
[gateway]
request_timeout_sec = 10

[[gateway.routes]]
path = "/late/"
service = "late"
"#;

#[tokio::test]
async fn a_get_waits_for_a_service_coming_up_and_a_post_is_never_sent_twice() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;

    // No service: a POST is refused at once (it is never sent again) …
    let t = Instant::now();
    let r = send(Request::post(gw.url("/late/x")).body(full("once")).unwrap()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // … a GET is tried again for 500 ms, then refused.
    let t = Instant::now();
    let r = get(&gw.url("/late/x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A GET sent while the service is not there yet is answered once it is (the service
    // appears 150 ms later, as an app reconnecting to another server does).
    let url = gw.url("/late/y");
    let pending = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let late = echo_service(&client, "late").await;
    let r = pending.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(late.count(), 1, "the service got the GET once");
}
