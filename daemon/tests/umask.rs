//! Issue 20, "the first five minutes": apps (users of their own, here `nobody`) start from
//! what narund creates, whatever umask narund was started with. From a root shell with
//! umask 077, the binary cache and the runtime dir came out 0700 and every app failed to
//! start (`spawn: … Permission denied`); narund now sets systemd's service umask (022)
//! itself, which apps then start with too.
//!
//! The real `narund` binary started with umask 077, a real nats-server, a plain app and an
//! sd_notify app (whose socket is below the runtime dir).

use narun_test_support::apps::{SILENT_SLEEPER, py_notify};
use narun_test_support::{Narund, NatsServer, buckets, heartbeat};
use narun_wire::status::InstanceStatus;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

/// `Umask:` of `/proc/<pid>/status`.
fn umask_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask: in /proc/<pid>/status");
    u32::from_str_radix(v.trim(), 8).unwrap()
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_start_when_narund_was_started_with_umask_077() {
    const NODE: &str = "umask";
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let mut states = b.states.watch_with_history(NODE).await.unwrap();
    let narund = Narund::builder(&server, NODE).umask(0o077).start();

    let spec = |app: &str, notify: bool| {
        json!({"name": app, "tag": "v1", "notify": notify,
               "nodes": [{"name": NODE, "replicas": 1}]})
    };
    b.upload("plain", "v1", SILENT_SLEEPER).await;
    b.put_spec("plain", &spec("plain", false)).await;
    b.upload(
        "ready",
        "v1",
        py_notify("notify('READY=1')\ntime.sleep(1000)\n"),
    )
    .await;
    b.put_spec("ready", &spec("ready", true)).await;

    let state = heartbeat(&mut states, "plain-0 and ready-0 running", |s| {
        ["plain-0", "ready-0"].iter().all(|id| {
            s.instances
                .iter()
                .any(|i| i.instance_id == *id && i.status == InstanceStatus::Running)
        })
    })
    .await;

    assert_eq!(umask_of(narund.pid() as u32), 0o022, "narund's umask");
    for i in &state.instances {
        let pid = i.pid.expect("a running instance has a pid");
        assert_eq!(
            umask_of(pid as u32),
            0o022,
            "the umask {} starts with",
            i.instance_id
        );
    }
    // Searchable by the apps' users, whose binaries are below.
    let cache = narund.data_dir().join("binaries");
    for dir in [
        cache.clone(),
        cache.join("plain"),
        narund.data_dir().join("run"),
    ] {
        assert_eq!(
            mode_of(&dir) & 0o011,
            0o011,
            "{} is searchable",
            dir.display()
        );
    }
}
