//! narund keeps only `NARUND_CAPS` in its bounding set; `SIGHUP` reloads narund's
//! configuration while apps keep running: new labels move the label-selected instances
//! (start where the selection now matches, stop where it no longer does), an invalid file
//! changes nothing, and systemd sees `RELOADING=1` with `MONOTONIC_USEC=` … `READY=1` (the
//! `Type=notify-reload` protocol).
//! The test plays systemd by binding `NOTIFY_SOCKET` itself and drives the real `narund`.

use narun_test_support::apps::SILENT_SLEEPER;
use narun_test_support::{Narund, NatsServer, T, alive, buckets, heartbeat};
use narun_wire::events::NodeState;
use narun_wire::status::InstanceStatus;
use serde_json::json;
use tokio::net::UnixDatagram;

/// narund's `[labels]`: `role = <role>`.
fn labels(role: &str) -> String {
    format!("[labels]\nrole = \"{role}\"\n")
}

/// Datagrams from narund until one contains `want`; returns that one.
async fn datagram_with(sock: &UnixDatagram, want: &str) -> String {
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(T, async {
        loop {
            let n = sock.recv(&mut buf).await.unwrap();
            let d = String::from_utf8_lossy(&buf[..n]).into_owned();
            if d.contains(want) {
                return d;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no sd_notify datagram with {want} from narund"))
}

/// CLOCK_MONOTONIC in microseconds (what systemd compares MONOTONIC_USEC= with).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The next heartbeat for which `pred` holds.
fn running_pid(s: &NodeState, id: &str) -> Option<i32> {
    s.instances
        .iter()
        .find(|i| i.instance_id == id && i.status == InstanceStatus::Running)
        .and_then(|i| i.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_labels_and_keeps_running_config_when_invalid() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    b.upload("gw", "v1", SILENT_SLEEPER).await;
    let spec = json!({"name": "gw", "tag": "v1", "nodes": [{"labels": {"role": "gateway"}, "replicas": 1}]});
    b.put_spec("gw", &spec).await;

    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut watch = b.states.watch("reload-node").await.unwrap();
    let mut narund = Narund::builder(&server, "reload-node")
        .config(&labels("edge"))
        .env("NOTIFY_SOCKET", &sock_path)
        .start();
    let narund_pid = narund.pid();
    datagram_with(&sock, "READY=1").await;
    // narund (started as root) keeps exactly NARUND_CAPS in its bounding set.
    // (A container may already lack some of them: compare with what this process has.)
    if unsafe { libc::geteuid() } == 0 {
        let cap_bnd = |pid: &str| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        let ours = cap_bnd("self");
        let want = narund::privileges::NARUND_CAPS
            .iter()
            .fold(0u64, |m, c| m | (1u64 << c.index()))
            & ours;
        let bnd = cap_bnd(&narund_pid.to_string());
        assert_eq!(
            bnd, want,
            "narund CapBnd {bnd:#x}, want NARUND_CAPS ∩ {ours:#x} = {want:#x}"
        );
    }
    // role=edge: the spec selects no instance here.
    let s = heartbeat(&mut watch, "the node is up", |s| {
        s.status == narun_wire::status::NodeStatus::Running
    })
    .await;
    assert!(s.instances.is_empty(), "{:?}", s.instances);

    // The device becomes a gateway: SIGHUP starts the instance.
    // Type=notify-reload: RELOADING=1 comes with MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>
    // taken when the reload began (systemd ignores a RELOADING=1 without it), then READY=1.
    narund.write_config(&labels("gateway"));
    let before = monotonic_usec();
    narund.signal(libc::SIGHUP);
    let reloading = datagram_with(&sock, "RELOADING=1").await;
    let after = monotonic_usec();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC=: {reloading:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC is not a number ({e}): {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC between the signal ({before}) and the datagram ({after})"
    );
    assert!(!reloading.contains("READY=1"), "{reloading:?}");
    let ready = datagram_with(&sock, "READY=1").await;
    assert!(ready.contains("STATUS=configuration reloaded"), "{ready}");
    let s = heartbeat(&mut watch, "gw-0 runs with role=gateway", |s| {
        running_pid(s, "gw-0").is_some()
            && s.labels.get("role").map(String::as_str) == Some("gateway")
    })
    .await;
    let pid = running_pid(&s, "gw-0").unwrap();

    // An invalid file changes nothing: same instance, same labels, the reason in STATUS.
    std::fs::write(narund.config_path(), "node_id = [\n").unwrap();
    narund.signal(libc::SIGHUP);
    let ready = datagram_with(&sock, "READY=1").await;
    assert!(ready.contains("STATUS=reload failed"), "{ready}");
    assert!(ready.contains("narund.toml"), "names the file: {ready}");
    // The reload is finished (READY=1 came after it): the instance was left alone.
    assert!(alive(pid), "gw-0 (pid {pid}) must survive a failed reload");

    // Back to edge: the instance stops, narund keeps running.
    narund.write_config(&labels("edge"));
    narund.signal(libc::SIGHUP);
    datagram_with(&sock, "STATUS=configuration reloaded").await;
    heartbeat(&mut watch, "gw-0 is gone", |s| {
        s.instances.iter().all(|i| i.instance_id != "gw-0")
    })
    .await;
    assert!(narund.is_running(), "narund still runs");

    let status = narund.terminate().await;
    assert!(status.success(), "{status:?}");
}
