//! narun benchmarks. Each prints the measurement *and* a baseline measured in the
//! same run, and the ratio between them, so numbers from different machines compare.
//!
//! ```text
//! cargo run --release -p narun-bench -- gateway [--secs 5] [--payload 128]
//! ```
//!
//! `gateway`: raw async-nats request-reply to an echo service (the baseline) vs the
//! full path HTTP keep-alive client → narun gateway → NATS → `narun` app, with the
//! same payload, at concurrency 1 and 64. Everything runs on this machine: a
//! private nats-server, the app and the gateway in this process, the HTTP client
//! on its own connections.

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use narun_test_support::NatsServer;
use narun_wire::connect::NatsSettings;
use narun_wire::micro::{EndpointConfig, Service, ServiceConfig};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Gateway path vs raw NATS request-reply.
    Gateway {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Request and response body size in bytes.
        #[arg(long, default_value_t = 128)]
        payload: usize,
    },
}

/// Result of one load run.
struct Run {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> u64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }
}

/// Run `concurrency` workers calling `call` in a loop for `dur`.
async fn load<F, Fut>(concurrency: usize, dur: Duration, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let call = call.clone();
        workers.spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let t = Instant::now();
                call(w).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        });
    }
    let mut latencies_us = Vec::new();
    while let Some(r) = workers.join_next().await {
        latencies_us.extend(r??);
    }
    Ok(Run {
        requests: latencies_us.len() as u64,
        elapsed: start.elapsed(),
        latencies_us,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Gateway { secs, payload } => gateway(Duration::from_secs(secs), payload).await,
    }
}

async fn gateway(dur: Duration, size: usize) -> anyhow::Result<()> {
    let server = NatsServer::start();
    let settings = NatsSettings {
        url: server.url(),
        ..Default::default()
    };
    let body = Bytes::from(vec![b'x'; size]);

    // Baseline: a raw echo responder on its own connection, called with plain request-reply.
    let echo_client = settings.connect("bench echo").await?;
    let echo = Service::start(&echo_client, ServiceConfig::new("rawecho", "1.0.0")).await?;
    let mut ep = echo
        .add_endpoint(EndpointConfig::new("echo", "rawecho"))
        .await?;
    tokio::spawn(async move {
        while let Some(req) = ep.next().await {
            let p = req.message.payload.clone();
            let _ = req.respond(p, None).await;
        }
    });

    // The app: an axum router served with the narun library, echoing the body.
    let app = axum::Router::new().route(
        "/bench/echo",
        axum::routing::post(|b: Bytes| async move { b }),
    );
    let app_server =
        narun::Server::start(narun::Options::new("benchapp").nats(settings.clone()), app).await?;

    // The gateway, in this process, on a free port.
    let gw_config: narun_gateway::GatewayConfig = toml::from_str(
        r#"
        enabled = true
        http_addr = "127.0.0.1:0"
        metrics_addr = "127.0.0.1:0"
        [[routes]]
        path = "/bench/"
        methods = ["POST"]
        service = "benchapp"
        "#,
    )
    .context("gateway config")?;
    let gw_client = settings.connect("bench gateway").await?;
    gw_client.flush().await?;
    let gateway = narun_gateway::Gateway::bind(gw_config, gw_client).await?;
    let http_addr = gateway.http_addr();
    let metrics_addr = gateway.metrics_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.run(async move {
        let _ = stop_rx.await;
    }));

    let caller = settings.connect("bench caller").await?;
    caller.flush().await?;
    // Warm up both paths and check they work.
    let r = caller.request("rawecho", body.clone()).await?;
    anyhow::ensure!(
        r.payload.len() == size,
        "raw echo returned {} bytes",
        r.payload.len()
    );
    let url: hyper::Uri = format!("http://{http_addr}/bench/echo").parse()?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http::<Full<Bytes>>();
    let post = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        move |_w: usize| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            async move {
                let req = hyper::Request::post(url).body(Full::new(body))?;
                let resp = http.request(req).await?;
                anyhow::ensure!(resp.status() == 200, "gateway answered {}", resp.status());
                let b = resp.into_body().collect().await?.to_bytes();
                anyhow::ensure!(b.len() == size, "gateway returned {} bytes", b.len());
                Ok(())
            }
        }
    };
    post(0).await.context("gateway warm-up request")?;
    let raw = {
        let (caller, body) = (caller.clone(), body.clone());
        move |_w: usize| {
            let (caller, body) = (caller.clone(), body.clone());
            async move {
                caller.request("rawecho", body).await?;
                Ok(())
            }
        }
    };

    // Attribution baselines: the same app called over NATS without the gateway,
    // and the same HTTP client against an endpoint that does not touch NATS.
    let app_direct = {
        let (caller, body) = (caller.clone(), body.clone());
        let (parts, ()) = hyper::Request::post("/bench/echo")
            .body(())
            .unwrap()
            .into_parts();
        let payload = Bytes::from(narun_wire::bhttp::encode_request(&parts, &body));
        move |_w: usize| {
            let (caller, payload) = (caller.clone(), payload.clone());
            async move {
                let m = caller.request("benchapp", payload).await?;
                let r = narun_wire::bhttp::decode_response(&m.payload)?;
                anyhow::ensure!(
                    r.body().len() == size,
                    "app returned {} bytes",
                    r.body().len()
                );
                Ok(())
            }
        }
    };
    let health_url: hyper::Uri = format!("http://{metrics_addr}/healthz").parse()?;
    let http_only = {
        let (http, url) = (http.clone(), health_url);
        move |_w: usize| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
                let resp = http.request(req).await?;
                anyhow::ensure!(resp.status() == 200, "healthz answered {}", resp.status());
                resp.into_body().collect().await?;
                Ok(())
            }
        }
    };

    println!(
        "narun-bench gateway: {size} B bodies, {} s per run, nats-server {}",
        dur.as_secs(),
        server.url()
    );
    println!(
        "{:<28} {:>11} {:>9} {:>9}",
        "path @ concurrency", "req/s", "p50 µs", "p99 µs"
    );
    for conc in [1usize, 64] {
        let base = load(conc, dur, raw.clone()).await?;
        let direct = load(conc, dur, app_direct.clone()).await?;
        let plain_http = load(conc, dur, http_only.clone()).await?;
        let gw = load(conc, dur, post.clone()).await?;
        for (name, r) in [
            ("raw NATS request-reply", &base),
            ("NATS → narun app (BHTTP)", &direct),
            ("HTTP only (/healthz)", &plain_http),
            ("HTTP → gateway → app", &gw),
        ] {
            println!(
                "{:<32} {:>11.0} {:>9} {:>9}",
                format!("{name} @{conc}"),
                r.rps(),
                r.pct(0.5),
                r.pct(0.99)
            );
        }
        println!(
            "  ratio @{conc}: throughput gateway/raw = {:.2}, added p50 = {} µs; app-direct/raw = {:.2}",
            gw.rps() / base.rps(),
            gw.pct(0.5) as i64 - base.pct(0.5) as i64,
            direct.rps() / base.rps(),
        );
    }
    let _ = stop_tx.send(());
    app_server.shutdown().await;
    Ok(())
}
