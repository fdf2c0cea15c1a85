//! Scale to zero: the latency a client sees when its request wakes a scaled-to-zero app
//! (a cold start), against warm requests to the same app, in the same run.
//!
//! ```text
//! cargo run --release -p narund --features gateway --example cold_start_bench -- [--rounds 10] [--warm 20]
//! ```
//!
//! One real nats-server (JetStream), one real narund with its gateway (route `/hello/` →
//! service `hello`), and the real hello app (`examples/hello`, the `narun` library) deployed
//! with `scaleToZero = { idleSec = 1 }`, one replica. Each round:
//!
//! 1. waits until the heartbeat reports `hello-0` `scaled_to_zero` and its process is gone;
//! 2. **cold**: one `GET /hello/world` on a new connection, timed from the connect to the
//!    last byte of the answer: the gateway finds no responder, reads the heartbeats, asks
//!    narund to wake hello, narund starts it (binary from its cache, cgroup, spawn), hello
//!    connects to NATS, registers and announces itself, the gateway sends the request;
//! 3. **warm**: `--warm` requests the same way (new connection each), right after.
//!
//! Reported: median, p90 and max of the cold requests; median of the warm ones (all rounds);
//! the cold / warm ratio; narund's CPU (its threads' run time, gateway included) per cold and
//! per warm request, and the CPU the new hello process used up to its first answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use narun_test_support::{
    Narund, NatsServer, alive, buckets, free_ports, heartbeat, workspace_bin,
};
use narun_wire::events::NodeState;
use narun_wire::status::InstanceStatus;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "cold";

/// CPU time of `pid`'s live threads in microseconds (`/proc/<pid>/task/*/schedstat`, ns
/// resolution: a short start-up is below the 10 ms clock tick of `/proc/<pid>/stat`).
fn cpu_us(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>()
        / 1000
}

/// One `GET path` on a new connection; the status and the time to the whole answer.
async fn get(http: SocketAddr, path: &str) -> anyhow::Result<(u16, Duration)> {
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await??;
    let took = t.elapsed();
    let head = String::from_utf8_lossy(&out);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, took))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn hello_pid(s: &NodeState) -> Option<i32> {
    s.instances
        .iter()
        .find(|i| i.instance_id == "hello-0" && i.status == InstanceStatus::Running)
        .and_then(|i| i.pid)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: cold_start_bench [--rounds 10] [--warm 20]";
    let (mut rounds, mut warm) = (10usize, 20usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{a} needs a number; {usage}"))?;
        match a.as_str() {
            "--rounds" => rounds = v.max(1),
            "--warm" => warm = v.max(1),
            _ => anyhow::bail!("unknown argument {a}; {usage}"),
        }
    }
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let hello = std::fs::read(workspace_bin("hello", "hello", &[]))?;
    b.upload("hello", "v1", &hello).await;
    b.put_spec(
        "hello",
        &json!({"name": "hello", "tag": "v1", "scaleToZero": {"idleSec": 1},
            "nodes": [{"name": NODE, "replicas": 1}]}),
    )
    .await;
    let client = server.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    let states = narun_wire::jetstream::NODE_STATES.ensure(&js).await?;
    let mut beats = states.watch(NODE).await?;
    let [http_port, metrics_port] = free_ports();
    let narund = Narund::builder(&server, NODE)
        .features(&["gateway"])
        .env("NARUND_LOG", "error")
        .config(&format!(
            "[gateway]\nenabled = true\n\
             http_addr = \"127.0.0.1:{http_port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             [[gateway.routes]]\npath = \"/hello/\"\nservice = \"hello\"\n"
        ))
        .start();
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
    let up = Instant::now();
    loop {
        if let Ok((200, _)) = get(http, "/hello/world").await {
            break;
        }
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(120),
            "hello never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "hello {} bytes; narund pid {}; {} CPUs; load {}",
        hello.len(),
        narund.pid(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let (mut cold, mut warms) = (Vec::new(), Vec::new());
    let (mut cold_cpu, mut warm_cpu, mut app_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let asleep = heartbeat(&mut beats, "hello-0 scaled_to_zero", |s| {
            s.instances
                .iter()
                .any(|i| i.instance_id == "hello-0" && i.status == InstanceStatus::ScaledToZero)
        })
        .await;
        let _ = asleep;
        let c0 = cpu_us(narund.pid());
        let (status, took) = get(http, "/hello/world").await?;
        let c1 = cpu_us(narund.pid());
        anyhow::ensure!(
            status == 200,
            "round {round}: the cold request got {status}"
        );
        let awake = heartbeat(&mut beats, "hello-0 running", |s| hello_pid(s).is_some()).await;
        let pid = hello_pid(&awake).unwrap_or(0);
        app_cpu.push(cpu_us(pid) as f64 / 1000.0);
        cold.push(took.as_secs_f64() * 1000.0);
        cold_cpu.push((c1 - c0) as f64 / 1000.0);
        let mut round_warm = Vec::new();
        let w0 = cpu_us(narund.pid());
        for _ in 0..warm {
            let (status, took) = get(http, "/hello/world").await?;
            anyhow::ensure!(status == 200, "round {round}: a warm request got {status}");
            round_warm.push(took.as_secs_f64() * 1000.0);
        }
        warm_cpu.push((cpu_us(narund.pid()) - w0) as f64 / 1000.0 / warm as f64);
        let rw = pct(&mut round_warm.clone(), 0.5);
        println!(
            "round {round}: cold {:.1} ms, warm median {rw:.2} ms, hello pid {pid} ({})",
            took.as_secs_f64() * 1000.0,
            if alive(pid) { "running" } else { "gone" }
        );
        warms.extend(round_warm);
    }
    let (c50, c90, cmax) = (
        pct(&mut cold, 0.5),
        pct(&mut cold, 0.9),
        pct(&mut cold, 1.0),
    );
    let w50 = pct(&mut warms, 0.5);
    println!();
    println!("| requests | count | median | p90 | max | narund CPU / request |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| cold (wakes hello) | {} | {c50:.1} ms | {c90:.1} ms | {cmax:.1} ms | {:.2} ms |",
        cold.len(),
        pct(&mut cold_cpu, 0.5)
    );
    println!(
        "| warm | {} | {w50:.2} ms | {:.2} ms | {:.2} ms | {:.3} ms |",
        warms.len(),
        pct(&mut warms, 0.9),
        pct(&mut warms, 1.0),
        pct(&mut warm_cpu, 0.5)
    );
    println!(
        "cold / warm (medians): {:.0}x; hello's own CPU from its start to its first answer (median): {:.1} ms",
        c50 / w50,
        pct(&mut app_cpu, 0.5)
    );
    Ok(())
}
