//! A quick load measurement, not a pass/fail test: HTTP through the gateway vs
//! raw NATS request-reply to the same service.
//!
//! ```text
//! cargo test -p narun-gateway --release --test throughput -- --ignored --nocapture
//! ```

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use narun_test_support::NatsServer;
use narun_wire::micro::{EndpointConfig, Service, ServiceConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
[[gateway.routes]]
path = "/fast/"
service = "fast"
"#;

async fn fast_service(client: &async_nats::Client) -> Service {
    let svc = Service::start(client, ServiceConfig::new("fast", "1.0.0"))
        .await
        .unwrap();
    let mut ep = svc
        .add_endpoint(EndpointConfig::new("handler", "fast"))
        .await
        .unwrap();
    let (parts, ()) = http::Response::builder()
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts();
    let reply = Bytes::from(narun_wire::bhttp::encode_response(&parts, b"hello"));
    tokio::spawn(async move {
        while let Some(req) = ep.next().await {
            let _ = req.respond(reply.clone(), None).await;
        }
    });
    synced(client).await;
    svc
}

async fn run_load<F, Fut>(concurrency: usize, dur: Duration, op: F) -> (f64, Duration)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..concurrency {
        let (op, stop, count, lat) = (op.clone(), stop.clone(), count.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                op().await;
                local.push(t.elapsed());
                count.fetch_add(1, Ordering::Relaxed);
            }
            lat.lock().unwrap().extend(local);
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort();
    let p50 = l[l.len() / 2];
    (
        count.load(Ordering::Relaxed) as f64 / dur.as_secs_f64(),
        p50,
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load measurement; run with --release --ignored --nocapture"]
async fn gateway_vs_raw_nats() {
    let server = NatsServer::start();
    let svc_client = server.connect().await;
    let _svc = fast_service(&svc_client).await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, ROUTES).await;
    let nats = server.connect().await;
    let (parts, ()) = http::Request::get("/fast/x").body(()).unwrap().into_parts();
    let payload = Bytes::from(narun_wire::bhttp::encode_request(&parts, b""));
    let http = http_client();
    let url: http::Uri = gw.url("/fast/x").parse().unwrap();
    let dur = Duration::from_secs(3);

    for conc in [1usize, 64] {
        let (n, p) = (nats.clone(), payload.clone());
        let (raw_rps, raw_p50) = run_load(conc, dur, move || {
            let (n, p) = (n.clone(), p.clone());
            async move {
                n.request("fast", p).await.unwrap();
            }
        })
        .await;
        let (h, u) = (http.clone(), url.clone());
        let (gw_rps, gw_p50) = run_load(conc, dur, move || {
            let (h, u) = (h.clone(), u.clone());
            async move {
                let r = h
                    .request(http::Request::get(u).body(full("")).unwrap())
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                http_body_util::BodyExt::collect(r.into_body())
                    .await
                    .unwrap();
            }
        })
        .await;
        // Ceiling of the in-process HTTP client + hyper server alone (no NATS):
        // the admin /healthz endpoint.
        let (h, u) = (
            http.clone(),
            gw.metrics_url("/healthz").parse::<http::Uri>().unwrap(),
        );
        let (http_rps, _) = run_load(conc, dur, move || {
            let (h, u) = (h.clone(), u.clone());
            async move {
                let r = h
                    .request(http::Request::get(u).body(full("")).unwrap())
                    .await
                    .unwrap();
                http_body_util::BodyExt::collect(r.into_body())
                    .await
                    .unwrap();
            }
        })
        .await;
        println!("concurrency {conc:>2}: HTTP only (no NATS) {http_rps:>8.0} req/s");
        println!(
            "concurrency {conc:>2}: raw NATS {raw_rps:>8.0} req/s p50 {raw_p50:?} | gateway {gw_rps:>8.0} req/s p50 {gw_p50:?} | ratio {:.0} % | added p50 {:?}",
            100.0 * gw_rps / raw_rps,
            gw_p50.saturating_sub(raw_p50)
        );
    }
}
