//! narun benchmarks. Each prints the measurement *and* a baseline measured in the
//! same run, and the ratio between them, so numbers from different machines compare.
//!
//! ```text
//! cargo run --release -p narun-bench -- gateway [--secs 5] [--payload 128]
//! cargo run --release -p narun-bench -- grpc [--secs 5]
//! ```
//!
//! `gateway`: raw async-nats request-reply to an echo service (the baseline) vs the
//! full path HTTP keep-alive client → narun gateway → NATS → `narun` app, with the
//! same payload, at concurrency 1 and 64. Everything runs on this machine: a
//! private nats-server, the app and the gateway in this process, the HTTP client
//! on its own connections.
//!
//! `grpc`: raw async-nats request-reply (the baseline) vs unary gRPC
//! (`hello.v1.Greeter/SayHello`) from a tonic client over h2c → gateway → NATS →
//! `narun::GrpcServer` → the `examples/grpc-hello` tonic service, with the same
//! protobuf request and an equally long reply, at concurrency 1 and 64. An
//! attribution baseline calls the app over NATS directly, the way Go's gateway
//! does (raw protobuf + `X-Original-Grpc-Method`, one reply).
#![forbid(unsafe_code)]

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
    /// Unary gRPC through the gateway vs raw NATS request-reply.
    Grpc {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
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
        Bench::Grpc { secs } => grpc(Duration::from_secs(secs)).await,
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

/// Print one table row.
fn row(name: &str, conc: usize, r: &Run) {
    println!(
        "{:<36} {:>11.0} {:>9} {:>9}",
        format!("{name} @{conc}"),
        r.rps(),
        r.pct(0.5),
        r.pct(0.99)
    );
}

async fn grpc(dur: Duration) -> anyhow::Result<()> {
    use grpc_hello::pb::greeter_client::GreeterClient;
    use grpc_hello::pb::{HelloReply, HelloRequest};
    use prost::Message;

    let server = NatsServer::start();
    let settings = NatsSettings {
        url: server.url(),
        ..Default::default()
    };
    let name = "bench";
    let request = Bytes::from(HelloRequest { name: name.into() }.encode_to_vec());
    // What grpc-hello answers, so the baseline moves the same bytes.
    let reply = Bytes::from(
        HelloReply {
            message: format!("Hello, {name}"),
        }
        .encode_to_vec(),
    );

    // Baseline: a raw responder answering that reply.
    let echo_client = settings.connect("bench raw responder").await?;
    let echo = Service::start(&echo_client, ServiceConfig::new("rawhello", "1.0.0")).await?;
    let mut ep = echo
        .add_endpoint(EndpointConfig::new("hello", "rawhello"))
        .await?;
    let canned = reply.clone();
    tokio::spawn(async move {
        while let Some(req) = ep.next().await {
            let _ = req.respond(canned.clone(), None).await;
        }
    });

    // The app: examples/grpc-hello served over NATS by the narun library.
    let app = narun::GrpcServer::start(
        narun::Options::new("grpc-hello").nats(settings.clone()),
        grpc_hello::server(),
    )
    .await?;

    // The gateway with one gRPC route, h2c.
    let gw_config: narun_gateway::GatewayConfig = toml::from_str(
        r#"
        enabled = true
        http_addr = "127.0.0.1:0"
        grpc_addr = "127.0.0.1:0"
        metrics_addr = "127.0.0.1:0"
        [[routes]]
        grpc = "hello.v1.Greeter"
        service = "grpc-hello"
        "#,
    )
    .context("gateway config")?;
    let gw_client = settings.connect("bench gateway").await?;
    anyhow::ensure!(
        narun_wire::connect::sync_with_server(&gw_client, Duration::from_secs(10)).await,
        "nats-server did not answer the gateway's connection"
    );
    let gateway = narun_gateway::Gateway::bind(gw_config, gw_client).await?;
    let grpc_addr = gateway
        .grpc_addr()
        .context("gateway has no gRPC listener")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw_task = tokio::spawn(gateway.run(async move {
        let _ = stop_rx.await;
    }));

    let caller = settings.connect("bench caller").await?;
    anyhow::ensure!(
        narun_wire::connect::sync_with_server(&caller, Duration::from_secs(10)).await,
        "nats-server did not answer the caller's connection"
    );
    // One HTTP/2 connection, multiplexed by every worker (what a gRPC client does).
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))?
        .connect()
        .await
        .context("h2c connection to the gateway")?;
    let client = GreeterClient::new(channel);

    let raw = {
        let (caller, request, reply_len) = (caller.clone(), request.clone(), reply.len());
        move |_w: usize| {
            let (caller, request) = (caller.clone(), request.clone());
            async move {
                let m = caller.request("rawhello", request).await?;
                anyhow::ensure!(
                    m.payload.len() == reply_len,
                    "raw reply of {} bytes",
                    m.payload.len()
                );
                Ok(())
            }
        }
    };
    let app_direct = {
        let (caller, request, expect) = (caller.clone(), request.clone(), reply.clone());
        move |_w: usize| {
            let (caller, request, expect) = (caller.clone(), request.clone(), expect.clone());
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    narun_wire::names::GRPC_METHOD_HEADER,
                    "/hello.v1.Greeter/SayHello",
                );
                let m = caller
                    .request_with_headers("grpc-hello", headers, request)
                    .await?;
                anyhow::ensure!(m.payload == expect, "app answered {:?}", m.payload);
                Ok(())
            }
        }
    };
    let via_gateway = {
        let client = client.clone();
        let expect = format!("Hello, {name}");
        move |_w: usize| {
            let (mut client, expect) = (client.clone(), expect.clone());
            async move {
                let r = client
                    .say_hello(HelloRequest { name: name.into() })
                    .await?
                    .into_inner();
                anyhow::ensure!(r.message == expect, "gateway answered {:?}", r.message);
                Ok(())
            }
        }
    };
    // Warm up (and check) every path.
    for _ in 0..200 {
        raw(0).await.context("raw warm-up")?;
        app_direct(0).await.context("app-direct warm-up")?;
        via_gateway(0).await.context("gRPC warm-up")?;
    }

    println!(
        "narun-bench grpc: unary SayHello, request {} B, reply {} B, {} s per run, nats-server {}",
        request.len(),
        reply.len(),
        dur.as_secs(),
        server.url()
    );
    println!(
        "{:<36} {:>11} {:>9} {:>9}",
        "path @ concurrency", "calls/s", "p50 µs", "p99 µs"
    );
    for conc in [1usize, 64] {
        let base = load(conc, dur, raw.clone()).await?;
        let direct = load(conc, dur, app_direct.clone()).await?;
        let gw = load(conc, dur, via_gateway.clone()).await?;
        row("raw NATS request-reply", conc, &base);
        row("NATS → serve_grpc app (Go form)", conc, &direct);
        row("gRPC h2c → gateway → app", conc, &gw);
        println!(
            "  ratio @{conc}: throughput gRPC/raw = {:.2}, p50 gRPC/raw = {:.2}, added p50 = {} µs; app-direct/raw = {:.2}",
            gw.rps() / base.rps(),
            gw.pct(0.5) as f64 / base.pct(0.5).max(1) as f64,
            gw.pct(0.5) as i64 - base.pct(0.5) as i64,
            direct.rps() / base.rps(),
        );
    }
    let _ = stop_tx.send(());
    gw_task.await??;
    app.shutdown().await;
    Ok(())
}
