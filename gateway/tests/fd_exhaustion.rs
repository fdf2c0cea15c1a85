//! When the process is out of fds (`EMFILE`), the gateway's accept loop backs off
//! instead of spinning, counts the failures, and serves the waiting client once fds
//! are free again. Alone in its test binary: it lowers this process's soft
//! RLIMIT_NOFILE and fills the fd table.

mod common;

use common::*;
use narun_test_support::NatsServer;
use narun_test_support::http1::{self, metric_value as value};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `GET /metrics` on the kept-alive connection `s`.
async fn metrics(s: &mut TcpStream) -> String {
    http1::get(s, "/metrics").await.text()
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_fds_the_accept_loop_backs_off_and_recovers() {
    let nats = NatsServer::start();
    let client = gateway_client(&nats).await;
    wait_connected(&client).await;
    let _echo = echo_service(&client, "echo").await;
    let gw = start_gateway(
        client,
        "[gateway]\n[[gateway.routes]]\npath = \"/echo/\"\nservice = \"echo\"\n",
    )
    .await;
    assert_eq!(get(&gw.url("/echo/x")).await.status, 200);
    // A metrics connection kept alive throughout (no fd needed to read it later),
    // and no other connection left to close (closing would free an fd).
    let mut m = TcpStream::connect(gw.metrics).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while value(
        &metrics(&mut m).await,
        "gateway_connections_open{listener=\"http\"}",
    ) != 0.0
    {
        assert!(Instant::now() < until, "the client connection never closed");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a gauge
    }

    // A socket made now (fd taken), connected once the fd table is full.
    let waiting = TcpSocket::new_v4().unwrap();
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_fds() + 32),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }
    assert!(!filler.is_empty());

    // The kernel completes the handshake; the gateway's accept fails with EMFILE.
    let mut s = tokio::time::timeout(Duration::from_secs(10), waiting.connect(gw.http))
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"GET /echo/y HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The measurement window: a spinning loop would fail accept() millions of times.
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(filler);
    let window = window.elapsed();
    setrlimit(Resource::Nofile, old).unwrap();

    // The waiting client is served.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("served after fds came back")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    let text = metrics(&mut m).await;
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("gateway_accept_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "DEBUG errors {errors} window {window:?} {}",
        text.lines()
            .filter(|l| l.contains("accept"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // One failure per 50 ms pause at most (plus one), over the window.
    let most = (window.as_millis() / 50 + 2) as f64;
    assert!(
        errors >= 1.0 && errors <= most,
        "{errors} accept errors in {window:?} (at most {most}):\n{text}"
    );
}
