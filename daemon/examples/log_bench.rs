//! Log forwarding throughput, end to end, vs raw async-nats publishing, in the same run.
//!
//! ```text
//! cargo run --release -p narund --example log_bench [-- <lines>]
//! ```
//! * forwarder: a writer thread writes `<lines>` lines of 100 bytes (99 + `\n`) into a pipe →
//!   `LogSink::attach` (io_uring pipe reads) → line splitting → JSON `LogLine` → spool → publisher →
//!   nats-server → a subscriber on a second connection. Timed until the subscriber has every line.
//! * raw: the same number of 100-byte messages published with `client.publish` in a loop, to a
//!   subscriber on a second connection, timed the same way.
//!
//! Both runs use a fresh, real nats-server (narun-test-support). Zero loss is checked.
//!
//! Each round also prints its own times (stderr), so the ratio within one round can be compared
//! on a machine where other work makes the best-of-3 numbers come from different moments.
//!
//! For profiling one path only: `LOG_BENCH_ONLY=forwarder` (or `raw`: both raw sizes, `raw100`,
//! `raw-json`) skips the other runs, e.g.
//! `cargo build --profile bench-prof -p narund --example log_bench` and then
//! `LOG_BENCH_ONLY=forwarder perf record -a -g -- target/bench-prof/examples/log_bench`.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use narund::logs::{LogForwarder, LogForwarderConfig};
use narund::uring::UringHandle;

/// The receiving side gets a deep buffer: async-nats drops messages for a subscription whose
/// channel (65 536 by default) is full, which would be measured as loss.
async fn subscriber_client(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(url)
        .await?)
}

async fn drain(mut sub: async_nats::Subscriber, n: usize) -> anyhow::Result<Instant> {
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => got += 1,
            _ => anyhow::bail!("only {got} of {n} messages arrived"),
        }
    }
    Ok(Instant::now())
}

async fn forwarder_run(url: &str, lines: usize) -> anyhow::Result<(Duration, bool)> {
    let pub_client = async_nats::connect(url).await?;
    let sub_client = subscriber_client(url).await?;
    let sub = sub_client.subscribe("logs.bench.node-1").await?;
    sub_client.flush().await?;
    let uring = UringHandle::start();
    let mut cfg = LogForwarderConfig::new("node-1");
    cfg.spool_bytes = 1 << 30; // the writer outruns NATS; keep everything for a zero-loss run
    let (fwd, _task) = LogForwarder::with_config(pub_client, cfg, uring.clone());
    let sink = fwd.sink("bench", "bench-0");

    let (reader, mut writer) = std::io::pipe()?;
    let receiver = tokio::spawn(drain(sub, lines));
    let start = Instant::now();
    let attach = sink.attach("stdout", reader.into());
    let w = std::thread::spawn(move || -> std::io::Result<()> {
        let line = [b"x".repeat(99), b"\n".to_vec()].concat();
        let block: Vec<u8> = line.repeat(640); // 64000 bytes per write
        let mut left = lines;
        while left > 0 {
            let n = left.min(640);
            writer.write_all(&block[..n * 100])?;
            left -= n;
        }
        Ok(())
    });
    let end = receiver.await??;
    w.join().expect("writer thread")?;
    attach.await?;
    let stats = fwd.stats();
    Ok((
        end - start,
        stats.dropped == 0 && fwd.flush(Duration::from_secs(10)).await,
    ))
}

async fn raw_run(url: &str, lines: usize, size: usize) -> anyhow::Result<Duration> {
    let pub_client = async_nats::connect(url).await?;
    let sub_client = subscriber_client(url).await?;
    let sub = sub_client.subscribe("raw.bench").await?;
    sub_client.flush().await?;
    let payload = Bytes::from(b"x".repeat(size));
    let receiver = tokio::spawn(drain(sub, lines));
    let start = Instant::now();
    for _ in 0..lines {
        pub_client.publish("raw.bench", payload.clone()).await?;
    }
    pub_client.flush().await?;
    let end = receiver.await??;
    Ok(end - start)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let lines: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(300_000);
    let mut best_fwd = Duration::MAX;
    let mut best_raw = Duration::MAX;
    let mut best_raw_json = Duration::MAX;
    // Size of one forwarded message: the Go-shaped JSON envelope around the 99-byte line.
    let json_size = serde_json::to_vec(&narun_wire::events::LogLine {
        instance_id: "bench-0".into(),
        app_name: "bench".into(),
        node_id: "node-1".into(),
        stream: "stdout".into(),
        message: "x".repeat(99),
        timestamp: narun_wire::events::now_rfc3339(),
        partial: false,
        dropped_before: 0,
    })?
    .len();
    let only = std::env::var("LOG_BENCH_ONLY").unwrap_or_default();
    let run_fwd = only.is_empty() || only == "forwarder";
    let run_raw100 = only.is_empty() || only == "raw" || only == "raw100";
    let run_raw_json = only.is_empty() || only == "raw" || only == "raw-json";
    let mut lossless = true;
    for round in 1..=3 {
        let mut this_round = format!("round {round}:");
        if run_fwd {
            let server = narun_test_support::NatsServer::start();
            let (d, ok) = forwarder_run(&server.url(), lines)
                .await
                .map_err(|e| e.context("forwarder run"))?;
            best_fwd = best_fwd.min(d);
            lossless &= ok;
            drop(server);
            this_round += &format!(" forwarder {:.0} ms", d.as_secs_f64() * 1e3);
        }
        // A raw publisher outruns the subscriber; nats-server then drops messages for the slow
        // consumer. Such a run is not a valid reference: retry it.
        for (size, best, run) in [
            (100, &mut best_raw, run_raw100),
            (json_size, &mut best_raw_json, run_raw_json),
        ] {
            if !run {
                continue;
            }
            for attempt in 1..=5 {
                let server = narun_test_support::NatsServer::start();
                match raw_run(&server.url(), lines, size).await {
                    Ok(d) => {
                        *best = (*best).min(d);
                        this_round += &format!(", raw {size} B {:.0} ms", d.as_secs_f64() * 1e3);
                        break;
                    }
                    Err(e) => eprintln!("raw run ({size} B) attempt {attempt} invalid: {e}"),
                }
            }
        }
        eprintln!("{this_round}");
    }
    // A path that was not run (LOG_BENCH_ONLY) prints as 0.
    let rate = |d: Duration| {
        if d == Duration::MAX {
            0.0
        } else {
            lines as f64 / d.as_secs_f64()
        }
    };
    let ms = |d: Duration| {
        if d == Duration::MAX {
            0.0
        } else {
            d.as_secs_f64() * 1e3
        }
    };
    println!(
        "{lines} lines of 100 B, best of 3, io_uring={}",
        UringHandle::start().available()
    );
    println!(
        "forwarder end-to-end : {:>10.0} lines/s ({:.0} ms)",
        rate(best_fwd),
        ms(best_fwd)
    );
    println!(
        "raw async-nats       : {:>10.0} msgs/s  ({:.0} ms)",
        rate(best_raw),
        ms(best_raw)
    );
    println!(
        "raw async-nats {json_size} B: {:>10.0} msgs/s  ({:.0} ms)  (the size of one forwarded JSON line)",
        rate(best_raw_json),
        ms(best_raw_json)
    );
    println!(
        "ratio forwarder/raw 100 B: {:.2} (target >= 0.7); zero loss: {lossless}",
        rate(best_fwd) / rate(best_raw)
    );
    println!(
        "ratio forwarder/raw {json_size} B: {:.2}",
        rate(best_fwd) / rate(best_raw_json)
    );
    anyhow::ensure!(lossless, "lines were lost");
    Ok(())
}
