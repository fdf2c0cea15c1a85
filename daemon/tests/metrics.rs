//! narund's own `/metrics` (`[metrics] addr`), against a real nats-server, a real narund
//! binary and an app deployed with the real narunctl: the address in the heartbeat, the
//! exposition `promtool check metrics` accepts, the app's state, restarts by reason, CPU
//! from its cgroup, logs and downloads; and the listener's bounds against hostile clients.

use narun_test_support::apps::sleeper_saying;
use narun_test_support::http1::{get, metric_value, promtool_check, read_response};
use narun_test_support::{
    Narund, NatsServer, T, deploy_file, heartbeat, narunctl, text, upload_script, wait_for,
};
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRICS: &str = "[metrics]\naddr = \"127.0.0.1:0\"\n";

/// `GET /metrics` on a new connection.
async fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let r = get(&mut s, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.head
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.head
    );
    r.text()
}

/// A narund with `[metrics]` and the address its heartbeat announces.
async fn narund_with_metrics(server: &NatsServer, node: &str) -> (Narund, String) {
    let narund = Narund::start(server, node, METRICS);
    let js = async_nats::jetstream::new(server.connect().await);
    let states = wait_for("node-runner-states", T, || async {
        js.get_key_value(names::NODE_STATES_BUCKET).await.ok()
    })
    .await;
    let mut watch = states.watch_with_history(node).await.unwrap();
    let state = heartbeat(&mut watch, "a metrics address", |s| {
        s.metrics_addr.is_some()
    })
    .await;
    let addr = state.metrics_addr.unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    (narund, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_serves_metrics_that_promtool_accepts() {
    let server = NatsServer::start();
    let url = server.url();
    let node = "metrics-node";
    let (narund, addr) = narund_with_metrics(&server, node).await;

    // Before any app: the node's metrics, valid.
    let t = scrape(&addr).await;
    promtool_check(&t);
    assert_eq!(metric_value(&t, "narun_nats_connected"), 1.0, "{t}");
    assert!(
        metric_value(&t, "narun_node_memory_total_bytes") > 0.0,
        "{t}"
    );
    assert!(
        metric_value(&t, "narun_node_data_dir_size_bytes") > 0.0,
        "{t}"
    );
    assert!(t.contains("narun_node_load1 "), "{t}");
    assert!(
        t.contains(&format!("narun_node_info{{node_id=\"{node}\",version=")),
        "{t}"
    );

    // An app deployed with narunctl.
    upload_script(&server, "web", "v1", sleeper_saying("web says hi")).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("web.toml");
    std::fs::write(
        &spec,
        format!("name = \"web\"\ntag = \"v1\"\n[[nodes]]\nname = \"{node}\"\nreplicas = 1\n"),
    )
    .unwrap();
    let out = deploy_file(&url, &spec, "30s").await;
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));

    let up = r#"narun_instance_up{app="web",instance="web-0"}"#;
    let t = wait_for("web-0 up with its log line counted", T, || async {
        let t = scrape(&addr).await;
        (metric_value(&t, up) == 1.0 && metric_value(&t, "narun_log_lines_total") >= 1.0)
            .then_some(t)
    })
    .await;
    promtool_check(&t);
    for series in [
        r#"narun_app_desired_instances{app="web"} 1"#,
        r#"narun_app_instances{app="web",state="running"} 1"#,
        r#"narun_instance_restarts_total{app="web",instance="web-0"} 0"#,
        r#"narun_fetch_duration_seconds_count 1"#,
    ] {
        assert!(t.contains(series), "missing {series} in\n{t}");
    }
    assert!(
        t.contains(r#"narun_instance_state{app="web",instance="web-0",state="running""#),
        "{t}"
    );
    assert!(metric_value(&t, "narun_fetch_bytes_total") > 0.0, "{t}");
    assert!(metric_value(&t, "narun_log_bytes_total") >= 11.0, "{t}");
    assert!(
        metric_value(&t, "narun_reconcile_duration_seconds_count") >= 1.0,
        "{t}"
    );
    // CPU from the instance cgroup's cpu.stat, when the kernel has it (it is core in cgroup
    // v2); memory.* only with the memory controller: exposed when present, else absent.
    let cg = narund.cgroup_root();
    let run_cgroup = std::fs::read_dir(&cg)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().contains("web-0"))
        .expect("the instance cgroup")
        .path();
    let cpu = r#"narun_instance_cpu_seconds_total{app="web",instance="web-0"}"#;
    assert_eq!(
        t.contains(cpu),
        run_cgroup.join("cpu.stat").exists(),
        "cpu.stat and the series go together\n{t}"
    );
    let mem = r#"narun_instance_memory_bytes{app="web",instance="web-0"}"#;
    assert_eq!(
        t.contains(mem),
        run_cgroup.join("memory.current").exists(),
        "{t}"
    );

    // A crash: restarted, counted by reason.
    let js = async_nats::jetstream::new(server.connect().await);
    let states = js.get_key_value(names::NODE_STATES_BUCKET).await.unwrap();
    let mut watch = states.watch_with_history(node).await.unwrap();
    let s = heartbeat(&mut watch, "web-0 running", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "web-0" && i.status == InstanceStatus::Running)
    })
    .await;
    let pid = s.instances[0].pid.unwrap();
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = wait_for("the restart counted", T, || async {
        let t = scrape(&addr).await;
        (metric_value(&t, r#"narun_app_restarts_total{app="web",reason="signal"}"#) == 1.0
            && metric_value(&t, up) == 1.0)
            .then_some(t)
    })
    .await;
    assert!(
        t.contains(r#"narun_instance_restarts_total{app="web",instance="web-0"} 1"#),
        "{t}"
    );
    promtool_check(&t);

    // HEAD: the head only.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\n"), "a body after HEAD: {all}");

    // narunctl still sees the app (the listener changes nothing else).
    let out = narunctl(&url, &["apps", "ls"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Answer of one raw request on a new connection (the server closes after it).
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let r = read_response(&mut s).await;
    (r.status, r.head)
}

/// Read until the peer closes; panics if it does not within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_bounds_hostile_clients() {
    let server = NatsServer::start();
    let (_narund, addr) = narund_with_metrics(&server, "metrics-hostile").await;

    assert_eq!(raw(&addr, b"GET /other HTTP/1.1\r\n\r\n").await.0, 404);
    let (status, head) = raw(
        &addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    assert_eq!(raw(&addr, b"\x16\x03\x01\x02\x00\x01\r\n\r\n").await.0, 400);
    // A head that never ends: 431 once it reaches the 8 KiB bound, not an endless read.
    // (Exactly 8 KiB: the server has read all of it when it answers, so no reset races
    // the answer.)
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut head = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    head.resize(8 * 1024, b'a');
    s.write_all(&head).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 431, "{}", r.head);
    closed_within(&mut s, T).await;

    // Idle connections that send nothing hold a slot at most READ_TIMEOUT (5 s); beyond
    // MAX_CONNECTIONS (8) they are closed at once, and a scrape works again once the idle
    // ones are gone.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The ninth is closed at accept: well before the 5 s an idle one may wait.
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    closed_within(&mut extra, Duration::from_secs(3)).await;
    for s in &mut idle {
        closed_within(s, Duration::from_secs(5) + T).await;
    }
    drop(idle);
    let t = wait_for("a scrape after the idle connections", T, || async {
        let mut s = TcpStream::connect(&addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.ok()?;
        let mut all = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut all))
            .await
            .ok()?
            .ok()?;
        let all = String::from_utf8(all).ok()?;
        all.starts_with("HTTP/1.1 200").then_some(all)
    })
    .await;
    assert!(t.contains("narun_nats_connected 1"), "{t}");
}

#[tokio::test]
async fn a_bad_metrics_address_is_refused_naming_the_key() {
    let server = NatsServer::start();
    let mut narund = Narund::builder(&server, "metrics-bad")
        .config("[metrics]\naddr = \"localhost:9101\"\n")
        .stderr_piped()
        .start();
    let status = narund.wait().await;
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut narund.take_stderr().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("metrics.addr: \"localhost:9101\" is not an ip:port"),
        "{err}"
    );
}
