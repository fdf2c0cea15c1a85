//! Issue 17, findings 6 and 7: specs that would stall or bloat narund are refused with
//! reasons, while narund stays responsive and a healthy app keeps running. The real
//! `narund` binary against a real nats-server; the test plays systemd's watchdog by
//! binding NOTIFY_SOCKET itself.

use futures_util::StreamExt;
use narun_test_support::apps::SLEEPER;
use narun_test_support::{Narund, NatsServer, T, alive, buckets, heartbeat};
use narun_wire::events::StatusEvent;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;

/// Peak resident memory of `pid` in KiB (`VmHWM`).
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_specs_are_refused_while_narund_stays_responsive() {
    const NODE: &str = "lim";
    let server = NatsServer::start();
    let b = buckets(&server).await;
    b.upload("healthy", "v1", SLEEPER).await;
    let healthy = json!({"name": "healthy", "tag": "v1", "nodes": [{"name": NODE, "replicas": 1}]});
    b.put_spec("healthy", &healthy).await;

    let client = server.connect().await;
    let mut events = client.subscribe(format!("status.*.{NODE}")).await.unwrap();
    let mut states = b.states.watch_with_history(NODE).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let narund = Narund::builder(&server, NODE)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .start();

    let state = heartbeat(&mut states, "healthy-0 running", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "healthy-0" && i.status == InstanceStatus::Running)
    })
    .await;
    let pid = state.instances[0].pid.expect("pid of healthy-0");

    // The hostile specs: 100 KB of nested YAML flow sequences (a minute of libyaml
    // before), 4294967295 replicas (gigabytes before), more replicas than the node allows,
    // and a giant update of the healthy app (which must keep running).
    let nested = format!("name: nested\ntag: v1\nargs: {}", "[".repeat(100_000));
    assert!(nested.len() > 100_000);
    b.configs
        .put("nested", nested.into_bytes().into())
        .await
        .unwrap();
    let huge = |app: &str| json!({"name": app, "tag": "v1", "nodes": [{"name": NODE, "replicas": 4_294_967_295u64}]});
    b.put_spec("huge", &huge("huge")).await;
    b.put_spec(
        "many",
        &json!({"name": "many", "tag": "v1", "nodes": [{"name": NODE, "replicas": 100}]}),
    )
    .await;
    b.put_spec("healthy", &huge("healthy")).await;
    let put_at = Instant::now();

    // narund refuses each with a reason naming the limit, and keeps pinging systemd's
    // watchdog meanwhile (every 500 ms; a gap of 5 s would be a stall).
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut last_ping = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(T, async {
        while refused.len() < 4 {
            tokio::select! {
                Some(m) = events.next() => {
                    let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
                    if ev.status == InstanceStatus::InvalidSpec {
                        assert_eq!(ev.reason, Some(Reason::InvalidSpec), "{ev:?}");
                        refused.insert(ev.app_name.clone(), ev.error.clone());
                    }
                }
                n = sock.recv(&mut buf) => {
                    if String::from_utf8_lossy(&buf[..n.unwrap()]).contains("WATCHDOG=1") {
                        longest_gap = longest_gap.max(last_ping.elapsed());
                        last_ping = Instant::now();
                    }
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("narund refused only {refused:?} within {T:?}"));
    eprintln!("refused within {:?}: {refused:#?}", put_at.elapsed());
    let nested = &refused["nested"];
    assert!(
        nested.contains("nests 100001 levels deep, more than the limit of 64 levels"),
        "{nested}"
    );
    for app in ["huge", "healthy"] {
        let e = &refused[app];
        assert!(
            e.contains("nodes[0].replicas: must be at most 1024") && e.contains("got 4294967295"),
            "{app}: {e}"
        );
    }
    let many = &refused["many"];
    assert!(
        many.contains("asks for 100 instances on this node")
            && many.contains("apps.max_replicas_per_node = 64"),
        "{many}"
    );

    // Pings go on after the refusals too.
    let mut pings = 0;
    tokio::time::timeout(T, async {
        while pings < 3 {
            let n = sock.recv(&mut buf).await.unwrap();
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                longest_gap = longest_gap.max(last_ping.elapsed());
                last_ping = Instant::now();
                pings += 1;
            }
        }
    })
    .await
    .expect("WATCHDOG=1 pings after the hostile specs");
    assert!(
        longest_gap < Duration::from_secs(5),
        "WATCHDOG=1 stalled for {longest_gap:?}"
    );

    // The heartbeat keeps coming, the healthy app runs on with the same pid, nothing of
    // the refused apps runs, and narund stayed small.
    drop(states);
    let mut fresh = b.states.watch(NODE).await.unwrap();
    let state = heartbeat(&mut fresh, "a heartbeat after the refusals", |_| true).await;
    assert_eq!(state.managed_instances, ["healthy-0"], "{state:?}");
    assert_eq!(state.instances[0].pid, Some(pid));
    assert_eq!(state.instances[0].status, InstanceStatus::Running);
    assert!(alive(pid));
    let peak = peak_rss_kib(narund.pid());
    assert!(peak < 100 * 1024, "narund's peak RSS is {peak} KiB");
}
