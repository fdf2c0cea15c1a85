//! narund keeps only `NARUND_CAPS` in its bounding set; `SIGHUP` reloads narund's
//! configuration while apps keep running: new labels move the label-selected instances
//! (start where the selection now matches, stop where it no longer does), an invalid file
//! changes nothing, and systemd sees `RELOADING=1` … `READY=1`.
//! The test plays systemd by binding `NOTIFY_SOCKET` itself and drives the real `narund`.

mod common;

use common::{alive, heartbeat};
use narun_test_support::{NatsServer, workspace_bin};
use narun_wire::events::NodeState;
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::net::UnixDatagram;

const T: Duration = Duration::from_secs(30);
const SLEEPER: &str = "#!/bin/sh\nexec sleep 1000\n";

fn write_config(conf: &Path, data: &Path, url: &str, role: &str) {
    std::fs::write(
        conf,
        format!(
            "node_id = \"reload-node\"\ndata_dir = \"{d}\"\nruntime_dir = \"{d}/run\"\n\
             [labels]\nrole = \"{role}\"\n[nats]\nurl = \"{url}\"\n\
             [apps]\ndefault_user = \"nobody\"\n[cgroup]\nroot = \"narun-test-reload-{pid}\"\n",
            d = data.display(),
            pid = std::process::id()
        ),
    )
    .unwrap();
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
    let common::Buckets {
        configs,
        binaries: store,
        states,
    } = common::buckets(&server).await;
    let object = names::binary_object_name("gw", "v1", names::go_os(), names::go_arch());
    store
        .put(
            object.as_str(),
            &mut std::io::Cursor::new(SLEEPER.as_bytes().to_vec()),
        )
        .await
        .unwrap();
    let spec = json!({"name": "gw", "tag": "v1", "nodes": [{"labels": {"role": "gateway"}, "replicas": 1}]});
    configs
        .put("gw", serde_json::to_vec(&spec).unwrap().into())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("narund.toml");
    write_config(&conf, dir.path(), &server.url(), "edge");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut watch = states.watch("reload-node").await.unwrap();
    let mut narund = tokio::process::Command::new(workspace_bin("narund", "narund", &[]))
        .arg("--config")
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let narund_pid = narund.id().unwrap() as i32;
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
    write_config(&conf, dir.path(), &server.url(), "gateway");
    unsafe { libc::kill(narund_pid, libc::SIGHUP) };
    datagram_with(&sock, "RELOADING=1").await;
    let ready = datagram_with(&sock, "READY=1").await;
    assert!(ready.contains("STATUS=configuration reloaded"), "{ready}");
    let s = heartbeat(&mut watch, "gw-0 runs with role=gateway", |s| {
        running_pid(s, "gw-0").is_some()
            && s.labels.get("role").map(String::as_str) == Some("gateway")
    })
    .await;
    let pid = running_pid(&s, "gw-0").unwrap();

    // An invalid file changes nothing: same instance, same labels, the reason in STATUS.
    std::fs::write(&conf, "node_id = [\n").unwrap();
    unsafe { libc::kill(narund_pid, libc::SIGHUP) };
    let ready = datagram_with(&sock, "READY=1").await;
    assert!(ready.contains("STATUS=reload failed"), "{ready}");
    assert!(ready.contains("narund.toml"), "names the file: {ready}");
    // The reload is finished (READY=1 came after it): the instance was left alone.
    assert!(alive(pid), "gw-0 (pid {pid}) must survive a failed reload");

    // Back to edge: the instance stops, narund keeps running.
    write_config(&conf, dir.path(), &server.url(), "edge");
    unsafe { libc::kill(narund_pid, libc::SIGHUP) };
    datagram_with(&sock, "STATUS=configuration reloaded").await;
    heartbeat(&mut watch, "gw-0 is gone", |s| {
        s.instances.iter().all(|i| i.instance_id != "gw-0")
    })
    .await;
    assert!(narund.try_wait().unwrap().is_none(), "narund still runs");

    unsafe { libc::kill(narund_pid, libc::SIGTERM) };
    let status = tokio::time::timeout(T, narund.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir(format!(
        "/sys/fs/cgroup/unified/narun-test-reload-{}",
        std::process::id()
    ));
}
