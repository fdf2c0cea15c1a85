//! Memory of narund (with its gateway) while async jobs pile up and drain: RSS over time
//! next to the depth of the `narun-jobs` queue (issue 22: "100 000 queued requests of
//! 10 KB, and 2 000 of 1 MB, must not grow the gateway or narund beyond a small fixed
//! bound").
//!
//! ```text
//! cargo run -p narund --example jobs_bench [--release] -- [--small N] [--small-bytes B]
//!     [--large N] [--large-bytes B] [--clients C] [--workers W] [--every-ms MS]
//! ```
//! A fresh, real nats-server (narun-test-support, file storage in a temp dir), the `narund`
//! binary of this build (`--features gateway`, the profile of the bench) as a real process,
//! and the `hello` example as the service, run directly with `NATS_URL`. One async route:
//! `GET /hello/slow?ms=1` (`async = true`). Two phases, one after the other: `--small`
//! (default 100 000) requests with a body of `--small-bytes` (10 000), then `--large`
//! (2 000) of `--large-bytes` (1 000 000), sent by `--clients` (32) keep-alive HTTP/1.1
//! connections as fast as the gateway answers `202`; the gateway's `--workers` (16) run
//! them meanwhile and after. Every `--every-ms` (1000) it prints one line: seconds since
//! the phase began, jobs accepted so far, the queue depth (messages in `narun-jobs`), and
//! narund's `VmRSS`/`RssAnon`. A phase ends when every job is accepted and the queue is
//! empty; its summary line has narund's RSS before, the peak while it ran, and after, with
//! the peak depth.
//!
//! So that the queue really fills, hello is stopped (`SIGSTOP`) while the jobs are sent
//! (`--no-hold`: it keeps running): the workers' attempts then wait for the route's 5 s
//! timeout and are retried later (`max_attempts = 100`); once every job is accepted, hello
//! continues (`SIGCONT`) and the queue drains.

use narun_test_support::http1::read_response;
use narun_test_support::{Narund, NatsServer, free_ports, wait_for, workspace_bin};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
        .unwrap_or(default)
}

/// `VmRSS` and `RssAnon` of `pid`, KiB.
fn rss(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn depth(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream(narun_wire::jobs::STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// One phase: `n` jobs with bodies of `bytes`.
#[allow(clippy::too_many_arguments)]
async fn phase(
    name: &str,
    gw: SocketAddr,
    pid: i32,
    js: &async_nats::jetstream::Context,
    n: u64,
    bytes: usize,
    clients: u64,
    every: Duration,
    hold: Option<i32>,
) {
    if let Some(app) = hold {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(app, libc::SIGSTOP) };
    }
    let accepted = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let body = Arc::new(vec![b'x'; bytes]);
    let (before, _) = rss(pid);
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..clients {
        let (accepted, next, body) = (accepted.clone(), next.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
            let head = format!(
                "GET /hello/slow?ms=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            while next.fetch_add(1, Ordering::Relaxed) < n {
                loop {
                    s.write_all(head.as_bytes()).await.unwrap();
                    s.write_all(&body).await.unwrap();
                    let r = read_response(&mut s).await;
                    if r.status == 202 {
                        break;
                    }
                    // 503 (budget, queue): the gateway asks to come back; the same job again.
                    assert_eq!(r.status, 503, "{}{}", r.head, r.text());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if r.head.contains("connection: close") {
                        s = tokio::net::TcpStream::connect(gw).await.unwrap();
                    }
                }
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    println!("== {name}: {n} jobs of {bytes} bytes, {clients} clients");
    println!("   t_s  accepted  queue_depth  rss_mib  anon_mib");
    let (mut peak, mut peak_depth) = (before, 0);
    loop {
        tokio::time::sleep(every).await;
        let d = depth(js).await;
        let (r, anon) = rss(pid);
        let a = accepted.load(Ordering::Relaxed);
        peak = peak.max(r);
        peak_depth = peak_depth.max(d);
        println!(
            "{:>6.1}  {a:>8}  {d:>11}  {:>7.1}  {:>8.1}",
            start.elapsed().as_secs_f64(),
            mib(r),
            mib(anon)
        );
        if a >= n
            && let Some(app) = hold
        {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(app, libc::SIGCONT) };
        }
        if a >= n && d == 0 {
            break;
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    let (after, _) = rss(pid);
    println!(
        "== {name} summary: {n} x {bytes} B in {:.0} s; narund RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; peak queue depth {peak_depth} ({:.0} MiB of bodies)",
        start.elapsed().as_secs_f64(),
        mib(before),
        mib(peak),
        mib(after),
        (peak_depth as f64 * bytes as f64) / (1024.0 * 1024.0)
    );
}

#[tokio::main]
async fn main() {
    let small = arg("--small", 100_000);
    let small_bytes = arg("--small-bytes", 10_000) as usize;
    let large = arg("--large", 2_000);
    let large_bytes = arg("--large-bytes", 1_000_000) as usize;
    let clients = arg("--clients", 32);
    let workers = arg("--workers", 16);
    let every = Duration::from_millis(arg("--every-ms", 1000));
    let no_hold = std::env::args().any(|a| a == "--no-hold");

    let server = NatsServer::start();
    let client = server.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    let hello = workspace_bin("hello", "hello", &[]);
    let mut app = tokio::process::Command::new(hello)
        .env("NATS_URL", server.url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start hello");
    let [http_port, metrics_port] = free_ports();
    let narund = Narund::builder(&server, "bench")
        .features(&["gateway"])
        .config(&format!(
            "[gateway]\nenabled = true\n\
             http_addr = \"127.0.0.1:{http_port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             max_body_bytes = 1048576\nmemory_budget_bytes = 33554432\n\
             [gateway.jobs]\nworkers = {workers}\nmax_queue_bytes = 4294967296\n\
             [[gateway.routes]]\npath = \"/hello/slow\"\nservice = \"hello\"\nasync = true\n\
             timeout_sec = 5\nmax_attempts = 100\nretry_backoff_ms = 1000\n"
        ))
        .start();
    let gw: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    wait_for(
        "the gateway to queue a job",
        Duration::from_secs(60),
        || async {
            let mut s = tokio::net::TcpStream::connect(gw).await.ok()?;
            s.write_all(b"GET /hello/slow?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .ok()?;
            (read_response(&mut s).await.status == 202).then_some(())
        },
    )
    .await;
    wait_for(
        "the first job to drain",
        Duration::from_secs(60),
        || async { (depth(&js).await == 0).then_some(()) },
    )
    .await;
    let pid = narund.pid();
    let hold = (!no_hold).then(|| app.id().expect("hello runs") as i32);
    println!(
        "narund pid {pid} ({}), hello pid {:?}, nats-server {}",
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "release build"
        },
        app.id(),
        server.url()
    );
    if small > 0 {
        phase(
            "small",
            gw,
            pid,
            &js,
            small,
            small_bytes,
            clients,
            every,
            hold,
        )
        .await;
    }
    if large > 0 {
        phase(
            "large",
            gw,
            pid,
            &js,
            large,
            large_bytes,
            clients,
            every,
            hold,
        )
        .await;
    }
    let _ = app.kill().await;
}
