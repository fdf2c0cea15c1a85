//! narun benchmarks. Each prints the measurement *and* baselines measured in the
//! same run, alternating, and the ratios between them, so numbers from different
//! machines compare.
//!
//! ```text
//! cargo run --release -p narun-bench -- gateway [--secs 2] [--rounds 5] [--payload 128]
//! cargo run --release -p narun-bench -- grpc [--secs 2] [--rounds 5]
//! cargo run --release -p narun-bench -- all [--secs 2] [--rounds 5]
//! ```
//!
//! The comparison is against what a user would write instead of narun (the
//! "hand-written gateway", issue 18): an axum server forwarding each request to NATS
//! with async-nats `request`, answered by a raw async-nats responder; for gRPC a tonic
//! service forwarding the same way. Every server runs in its own process
//! (see [`roles`]): a private nats-server, the narun gateway, the narun apps, the
//! hand-written gateway and the raw responders; the load generator is this process.
//!
//! Paths (`gateway`): narun gateway → narun app (BHTTP), hand-written axum → raw
//! responder, narun gateway raw route → the same raw responder,
//! an unrouted path answered 404 by the gateway itself (the HTTP-only ceiling), raw async-nats request-reply (the NATS limit)
//! and the narun app called directly over NATS (what the app library costs), and
//! the hand-written axum server answering itself (its own HTTP-only ceiling).
//! `grpc`: narun gateway → narun `GrpcServer` app, hand-written tonic forwarder → raw
//! responder, raw request-reply, the narun gRPC app called directly (Go form),
//! tonic answering `SayHello` itself (the gRPC ceiling: no NATS), and the generated
//! client on `narun::grpc::channel` calling the narun gRPC app (no gateway).
//!
//! Each round runs every path at 64 concurrent requests, then every path at 1 in
//! slices that alternate between the paths (the order reversed every other round);
//! the report gives medians over rounds of req/s at 64, p50/p99 at
//! 1 and CPU per request (user + system time of every process involved: client,
//! gateway, app, nats-server, from `/proc/<pid>/stat`), and per-round ratios.
#![forbid(unsafe_code)]

mod roles;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use narun_test_support::NatsServer;
use roles::{HAND_ECHO, HAND_HELLO, NARUN_APP, NARUN_GRPC_APP, Proc, Role, cpu_us};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Alternating rounds (every path, both concurrencies, per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Concurrent requests of the throughput runs.
    #[arg(long, default_value_t = 64)]
    conc: usize,
    /// Only the paths whose name contains this text (for profiling one path).
    #[arg(long)]
    only: Option<String>,
}

#[derive(Subcommand)]
enum Bench {
    /// HTTP: narun gateway (bhttp and raw routes) vs a hand-written axum → NATS gateway.
    Gateway {
        #[command(flatten)]
        common: Common,
        /// Request and response body size in bytes.
        #[arg(long, default_value_t = 128)]
        payload: usize,
    },
    /// Unary gRPC: narun gateway vs a hand-written tonic → NATS forwarder.
    Grpc {
        #[command(flatten)]
        common: Common,
    },
    /// `gateway` then `grpc`, with the same processes.
    All {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 128)]
        payload: usize,
    },
    /// Internal: serve one role of the comparison (the bench starts these itself).
    #[command(hide = true)]
    Serve {
        role: Role,
        #[arg(long)]
        nats: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every process (load generator, gateways, apps) on the same runtime narund and
    // `#[tokio::main]` apps use: multi-thread, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.bench {
            Bench::Serve { role, nats } => roles::serve(role, nats).await,
            Bench::Gateway { common, payload } => {
                let s = Setup::start()?;
                http_bench(&s, &common, payload).await
            }
            Bench::Grpc { common } => {
                let s = Setup::start()?;
                grpc_bench(&s, &common).await
            }
            Bench::All { common, payload } => {
                let s = Setup::start()?;
                http_bench(&s, &common, payload).await?;
                grpc_bench(&s, &common).await
            }
        }
    })
}

/// nats-server and every role, each in its own process.
struct Setup {
    server: NatsServer,
    narun_gw: Proc,
    hand_gw: Proc,
    narun_app: Proc,
    narun_grpc_app: Proc,
    raw: Proc,
}

/// Whose CPU time a measurement adds up.
#[derive(Clone, Copy)]
enum Group {
    Client,
    Gateway,
    App,
    Nats,
}
const GROUPS: usize = 4;

impl Setup {
    fn start() -> anyhow::Result<Setup> {
        let server = NatsServer::start();
        let url = server.url();
        Ok(Setup {
            raw: Proc::spawn(Role::RawResponders, &url)?,
            narun_app: Proc::spawn(Role::NarunApp, &url)?,
            narun_grpc_app: Proc::spawn(Role::NarunGrpcApp, &url)?,
            narun_gw: Proc::spawn(Role::NarunGateway, &url)?,
            hand_gw: Proc::spawn(Role::HandGateway, &url)?,
            server,
        })
    }

    fn pids(&self) -> Vec<(Group, u32)> {
        vec![
            (Group::Client, std::process::id()),
            (Group::Gateway, self.narun_gw.pid()),
            (Group::Gateway, self.hand_gw.pid()),
            (Group::App, self.narun_app.pid()),
            (Group::App, self.narun_grpc_app.pid()),
            (Group::App, self.raw.pid()),
            (Group::Nats, self.server.pid().unwrap_or(0)),
        ]
    }

    fn cpu(&self) -> [u64; GROUPS] {
        let mut out = [0; GROUPS];
        for (g, pid) in self.pids() {
            out[g as usize] += cpu_us(pid);
        }
        out
    }

    fn print_processes(&self) {
        println!(
            "processes: client {} | narun gateway {} | hand-written gateway {} | narun app {} | narun gRPC app {} | raw responders {} | nats-server {}",
            std::process::id(),
            self.narun_gw.pid(),
            self.hand_gw.pid(),
            self.narun_app.pid(),
            self.narun_grpc_app.pid(),
            self.raw.pid(),
            self.server.pid().unwrap_or(0),
        );
        println!(
            "every process: tokio multi-thread runtime, {} worker threads (one per core); every server process: one NATS connection",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
    }
}

type Call = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// One path of the comparison.
struct Path {
    name: &'static str,
    call: Call,
}

/// One measurement of one path.
#[derive(Clone)]
struct Sample {
    rps: f64,
    p50: u64,
    p99: u64,
    /// CPU µs per request, by [`Group`].
    cpu: [f64; GROUPS],
}

impl Sample {
    fn cpu_total(&self) -> f64 {
        self.cpu.iter().sum()
    }
}

/// What one load run saw: latencies, wall time, CPU time by [`Group`].
#[derive(Default)]
struct Raw {
    lat: Vec<u64>,
    elapsed: Duration,
    cpu: [u64; GROUPS],
}

impl Raw {
    fn merge(&mut self, other: Raw) {
        self.lat.extend(other.lat);
        self.elapsed += other.elapsed;
        for (mine, theirs) in self.cpu.iter_mut().zip(other.cpu) {
            *mine += theirs;
        }
    }

    fn sample(mut self) -> Sample {
        self.lat.sort_unstable();
        let lat = &self.lat;
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let n = lat.len().max(1) as f64;
        let cpu = self.cpu.map(|us| us as f64 / n);
        Sample {
            rps: lat.len() as f64 / self.elapsed.as_secs_f64(),
            p50: pct(0.5),
            p99: pct(0.99),
            cpu,
        }
    }
}

/// Run `concurrency` workers calling `call` in a loop for `dur`.
async fn load(
    setup: &Setup,
    concurrency: usize,
    dur: Duration,
    call: &Call,
) -> anyhow::Result<Raw> {
    let cpu0 = setup.cpu();
    let start = Instant::now();
    let deadline = start + dur;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let call = call.clone();
        workers.spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let t = Instant::now();
                call().await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = workers.join_next().await {
        lat.extend(r??);
    }
    let elapsed = start.elapsed();
    let cpu1 = setup.cpu();
    let mut cpu = [0; GROUPS];
    for ((d, a), b) in cpu.iter_mut().zip(cpu1).zip(cpu0) {
        *d = a.saturating_sub(b);
    }
    Ok(Raw { lat, elapsed, cpu })
}

/// Latency runs (concurrency 1) of a round are cut into this many slices, the
/// paths alternating slice by slice: single requests are sensitive to what else
/// the machine does, so the paths share those moments.
const LATENCY_SLICES: u32 = 4;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `samples[path][round]` at the throughput concurrency and at 1.
struct Results {
    high: Vec<Vec<Sample>>,
    one: Vec<Vec<Sample>>,
}

/// Warm up every path, then run the alternating rounds.
async fn measure(setup: &Setup, paths: &[Path], c: &Common) -> anyhow::Result<Results> {
    for p in paths {
        if c.only
            .as_ref()
            .is_some_and(|o| !p.name.contains(o.as_str()))
        {
            continue;
        }
        for _ in 0..200 {
            (p.call)()
                .await
                .with_context(|| format!("warm-up of {}", p.name))?;
        }
    }
    let dur = Duration::from_secs_f64(c.secs);
    let mut r = Results {
        high: vec![Vec::new(); paths.len()],
        one: vec![Vec::new(); paths.len()],
    };
    for round in 0..c.rounds {
        let mut order: Vec<usize> = (0..paths.len())
            .filter(|&i| {
                c.only
                    .as_ref()
                    .is_none_or(|o| paths[i].name.contains(o.as_str()))
            })
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            let high = load(setup, c.conc, dur, &paths[i].call).await?.sample();
            eprintln!(
                "round {}: {:<44} @{} {:>8.0} req/s {:>6.1} µs CPU/req",
                round + 1,
                paths[i].name,
                c.conc,
                high.rps,
                high.cpu_total(),
            );
            r.high[i].push(high);
        }
        let mut one: Vec<Raw> = (0..paths.len()).map(|_| Raw::default()).collect();
        for _ in 0..LATENCY_SLICES {
            for &i in &order {
                one[i].merge(load(setup, 1, dur / LATENCY_SLICES, &paths[i].call).await?);
            }
        }
        for (i, raw) in one.into_iter().enumerate() {
            if order.contains(&i) {
                let s = raw.sample();
                eprintln!(
                    "round {}: {:<44} @1 p50 {:>4} µs",
                    round + 1,
                    paths[i].name,
                    s.p50
                );
                r.one[i].push(s);
            }
        }
    }
    Ok(r)
}

fn print_table(paths: &[Path], r: &Results, c: &Common) {
    println!(
        "\n{:<46} {:>9} {:>17} {:>9} {:>7} {:>7} {:>7} {:>7} | {:>6} {:>6} {:>8}",
        "path (medians of rounds)",
        format!("req/s@{}", c.conc),
        "(min–max)",
        "CPU µs/r",
        "client",
        "gw",
        "app",
        "nats",
        "p50@1",
        "p99@1",
        "CPU µs/r@1"
    );
    for (i, p) in paths.iter().enumerate() {
        let h = &r.high[i];
        let o = &r.one[i];
        let rps: Vec<f64> = h.iter().map(|s| s.rps).collect();
        let lo = rps.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rps.iter().copied().fold(0.0, f64::max);
        let g = |k: usize| median(h.iter().map(|s| s.cpu[k]).collect());
        println!(
            "{:<46} {:>9.0} {:>17} {:>9.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} | {:>6.0} {:>6.0} {:>8.1}",
            p.name,
            median(rps.clone()),
            format!("{lo:.0}–{hi:.0}"),
            median(h.iter().map(Sample::cpu_total).collect()),
            g(Group::Client as usize),
            g(Group::Gateway as usize),
            g(Group::App as usize),
            g(Group::Nats as usize),
            median(o.iter().map(|s| s.p50 as f64).collect()),
            median(o.iter().map(|s| s.p99 as f64).collect()),
            median(o.iter().map(Sample::cpu_total).collect()),
        );
    }
}

/// Per-round ratio of throughput and p50 difference of path `a` against path `b`.
fn print_ratio(label: &str, r: &Results, a: usize, b: usize, c: &Common) {
    let ratios: Vec<f64> = r.high[a]
        .iter()
        .zip(&r.high[b])
        .map(|(x, y)| x.rps / y.rps)
        .collect();
    let p50d: Vec<f64> = r.one[a]
        .iter()
        .zip(&r.one[b])
        .map(|(x, y)| x.p50 as f64 - y.p50 as f64)
        .collect();
    let cpu: Vec<f64> = r.high[a]
        .iter()
        .zip(&r.high[b])
        .map(|(x, y)| x.cpu_total() / y.cpu_total())
        .collect();
    let list = |v: &[f64], prec: usize| {
        v.iter()
            .map(|x| format!("{x:.prec$}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{label}: req/s@{} ratio median {:.2} (rounds: {}); p50@1 difference median {:+.0} µs (rounds: {}); CPU/request ratio median {:.2}",
        c.conc,
        median(ratios.clone()),
        list(&ratios, 2),
        median(p50d.clone()),
        list(&p50d, 0),
        median(cpu),
    );
}

/// Median over rounds of the app processes' CPU µs per request at the throughput
/// concurrency, and its per-round difference between paths `a` and `b`.
fn print_app_cost(label: &str, r: &Results, a: usize, b: usize) {
    let app = |i: usize| -> Vec<f64> {
        r.high[i]
            .iter()
            .map(|s| s.cpu[Group::App as usize])
            .collect()
    };
    let d: Vec<f64> = app(a).iter().zip(app(b)).map(|(x, y)| x - y).collect();
    println!(
        "{label}: app process {:.1} vs {:.1} µs CPU/request, difference median {:+.1} µs (rounds: {})",
        median(app(a)),
        median(app(b)),
        median(d.clone()),
        d.iter()
            .map(|x| format!("{x:+.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http::<Full<Bytes>>()
}

fn http_post(url: hyper::Uri, body: Bytes) -> Call {
    let http = http_client();
    let size = body.len();
    call(move || {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let req = hyper::Request::post(url).body(Full::new(body))?;
            let resp = http.request(req).await?;
            anyhow::ensure!(resp.status() == 200, "answered {}", resp.status());
            let b = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(b.len() == size, "returned {} bytes", b.len());
            Ok(())
        }
    })
}

async fn http_bench(s: &Setup, c: &Common, size: usize) -> anyhow::Result<()> {
    let body = Bytes::from(vec![b'x'; size]);
    let narun_http = s.narun_gw.addr("http")?;
    let hand_http = s.hand_gw.addr("http")?;
    let caller = async_nats::connect(s.server.url()).await?;
    caller.flush().await?;

    let http_only = {
        let http = http_client();
        // A path no route serves: the routed listener answers 404 itself, no NATS.
        // (Not /healthz: the metrics listener takes 32 connections, the load 64.)
        let url: hyper::Uri = format!("http://{narun_http}/_no_route").parse()?;
        call(move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
                let resp = http.request(req).await?;
                anyhow::ensure!(
                    resp.status() == 404,
                    "the unrouted path answered {}",
                    resp.status()
                );
                resp.into_body().collect().await?;
                Ok(())
            }
        })
    };
    let raw_nats = {
        let (caller, body) = (caller.clone(), body.clone());
        call(move || {
            let (caller, body) = (caller.clone(), body.clone());
            async move {
                let m = caller.request(HAND_ECHO, body).await?;
                anyhow::ensure!(
                    m.payload.len() == size,
                    "raw echo returned {} bytes",
                    m.payload.len()
                );
                Ok(())
            }
        })
    };
    let app_direct = {
        let caller = caller.clone();
        // What the gateway sends for this request (the same headers as the HTTP client's).
        let (parts, ()) = hyper::Request::post("/bench/echo")
            .header("host", narun_http.to_string())
            .header("x-forwarded-for", "127.0.0.1")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", narun_http.to_string())
            .header("x-request-id", "ZBnG5dVSpQ7xwbkD3w8kXq")
            .body(())?
            .into_parts();
        let payload = Bytes::from(narun_wire::bhttp::encode_request(&parts, &body));
        call(move || {
            let (caller, payload) = (caller.clone(), payload.clone());
            async move {
                let m = caller.request(NARUN_APP, payload).await?;
                let r = narun_wire::bhttp::decode_response(&m.payload)?;
                anyhow::ensure!(
                    r.body().len() == size,
                    "app returned {} bytes",
                    r.body().len()
                );
                Ok(())
            }
        })
    };
    let paths = [
        Path {
            name: "narun gateway → narun app (bhttp)",
            call: http_post(
                format!("http://{narun_http}/bench/echo").parse()?,
                body.clone(),
            ),
        },
        Path {
            name: "hand-written axum → raw responder",
            call: http_post(
                format!("http://{hand_http}/bench/echo").parse()?,
                body.clone(),
            ),
        },
        Path {
            name: "narun gateway raw route → raw responder",
            call: http_post(
                format!("http://{narun_http}/raw/echo").parse()?,
                body.clone(),
            ),
        },
        Path {
            name: "HTTP only (narun gateway, unrouted path: 404, no NATS)",
            call: http_only,
        },
        Path {
            name: "raw NATS request-reply → raw responder",
            call: raw_nats,
        },
        Path {
            name: "NATS → narun app (bhttp, no gateway)",
            call: app_direct,
        },
        Path {
            name: "hand-written axum answering itself (no NATS)",
            call: http_post(
                format!("http://{hand_http}/direct/echo").parse()?,
                body.clone(),
            ),
        },
    ];
    println!(
        "narun-bench gateway: {size} B POST bodies, keep-alive HTTP/1.1, {} s per run, {} rounds, nats-server {}",
        c.secs,
        c.rounds,
        s.server.url()
    );
    s.print_processes();
    let r = measure(s, &paths, c).await?;
    print_table(&paths, &r, c);
    println!();
    print_ratio("narun bhttp / hand-written", &r, 0, 1, c);
    print_ratio("narun raw / hand-written", &r, 2, 1, c);
    print_ratio("hand-written / HTTP-only ceiling", &r, 1, 3, c);
    print_ratio(
        "hand-written / its own HTTP-only ceiling (axum answering)",
        &r,
        1,
        6,
        c,
    );
    print_app_cost(
        "app library (narun app vs raw responder, through the gateways)",
        &r,
        0,
        1,
    );
    print_app_cost(
        "app library (direct over NATS: narun app vs raw responder)",
        &r,
        5,
        4,
    );
    Ok(())
}

async fn grpc_bench(s: &Setup, c: &Common) -> anyhow::Result<()> {
    use grpc_hello::pb::greeter_client::GreeterClient;
    use grpc_hello::pb::{HelloReply, HelloRequest};
    use prost::Message;

    let name = "bench";
    let request = Bytes::from(HelloRequest { name: name.into() }.encode_to_vec());
    let reply = Bytes::from(
        HelloReply {
            message: format!("Hello, {name}"),
        }
        .encode_to_vec(),
    );
    let caller = async_nats::connect(s.server.url()).await?;
    caller.flush().await?;
    // One HTTP/2 connection per gateway, multiplexed by every worker (what a gRPC client does).
    let channel = |addr: std::net::SocketAddr| async move {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("h2c connection to {addr}"))?;
        anyhow::Ok(GreeterClient::new(ch))
    };
    let via = |client: GreeterClient<tonic::transport::Channel>| {
        let expect = format!("Hello, {name}");
        call(move || {
            let (mut client, expect) = (client.clone(), expect.clone());
            async move {
                let r = client
                    .say_hello(HelloRequest { name: name.into() })
                    .await?
                    .into_inner();
                anyhow::ensure!(r.message == expect, "answered {:?}", r.message);
                Ok(())
            }
        })
    };
    // The generated client on a NATS channel (no gateway, no HTTP/2).
    let via_nats = |client: GreeterClient<narun::grpc::Channel>| {
        let expect = format!("Hello, {name}");
        call(move || {
            let (mut client, expect) = (client.clone(), expect.clone());
            async move {
                let r = client
                    .say_hello(HelloRequest { name: name.into() })
                    .await?
                    .into_inner();
                anyhow::ensure!(r.message == expect, "answered {:?}", r.message);
                Ok(())
            }
        })
    };
    let raw = {
        let (caller, request, expect) = (caller.clone(), request.clone(), reply.clone());
        call(move || {
            let (caller, request, expect) = (caller.clone(), request.clone(), expect.clone());
            async move {
                let m = caller.request(HAND_HELLO, request).await?;
                anyhow::ensure!(
                    m.payload == expect,
                    "raw responder answered {:?}",
                    m.payload
                );
                Ok(())
            }
        })
    };
    let app_direct = {
        let (caller, request, expect) = (caller.clone(), request.clone(), reply.clone());
        call(move || {
            let (caller, request, expect) = (caller.clone(), request.clone(), expect.clone());
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    narun_wire::names::GRPC_METHOD_HEADER,
                    "/hello.v1.Greeter/SayHello",
                );
                let m = caller
                    .request_with_headers(NARUN_GRPC_APP, headers, request)
                    .await?;
                anyhow::ensure!(m.payload == expect, "app answered {:?}", m.payload);
                Ok(())
            }
        })
    };
    let paths = [
        Path {
            name: "narun gateway → narun gRPC app",
            call: via(channel(s.narun_gw.addr("grpc")?).await?),
        },
        Path {
            name: "hand-written tonic → raw responder",
            call: via(channel(s.hand_gw.addr("grpc")?).await?),
        },
        Path {
            name: "raw NATS request-reply → raw responder",
            call: raw,
        },
        Path {
            name: "NATS → narun gRPC app (Go form, no gateway)",
            call: app_direct,
        },
        Path {
            name: "tonic answering itself (no NATS): ceiling",
            call: via(channel(s.hand_gw.addr("grpc_direct")?).await?),
        },
        Path {
            name: "narun::grpc::channel → narun gRPC app",
            call: via_nats(GreeterClient::new(narun::grpc::channel(
                &caller,
                NARUN_GRPC_APP,
            ))),
        },
    ];
    println!(
        "\nnarun-bench grpc: unary SayHello, request {} B, reply {} B, one h2c connection per gateway, {} s per run, {} rounds",
        request.len(),
        reply.len(),
        c.secs,
        c.rounds,
    );
    s.print_processes();
    let r = measure(s, &paths, c).await?;
    print_table(&paths, &r, c);
    println!();
    print_ratio("narun gRPC / hand-written tonic", &r, 0, 1, c);
    print_ratio(
        "hand-written tonic / gRPC ceiling (tonic answering)",
        &r,
        1,
        4,
        c,
    );
    print_ratio("narun gRPC / gRPC ceiling (tonic answering)", &r, 0, 4, c);
    print_ratio(
        "narun::grpc::channel (no gateway) / narun gateway",
        &r,
        5,
        0,
        c,
    );
    print_app_cost(
        "app library (narun gRPC app vs raw responder, through the gateways)",
        &r,
        0,
        1,
    );
    print_app_cost(
        "app library (direct over NATS: narun gRPC app vs raw responder)",
        &r,
        3,
        2,
    );
    Ok(())
}
