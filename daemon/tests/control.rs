//! `Supervisor::restart_app` (the handler behind `narun.control.<node>.restart`) in
//! process, against a real nats-server, real `/bin/sh` apps and real cgroups: a spec
//! change that arrives during a restart waits for it (the apply lock), so an index never
//! gets two runs; the restart itself answers with what it restarted.
//! (The request/reply path through the real narund binary is tested by
//! `narunctl/tests/apps_restart.rs`.)

mod common;

use common::{T, kill_and_remove_cgroups};
use narun_test_support::{NatsServer, wait_for};
use narun_wire::events::StatusEvent;
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use narund::node::{Supervisor, SupervisorConfig};
use narund::uring::UringHandle;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

const SLEEPER: &str = "#!/bin/sh\necho \"up: $NARUN_INSTANCE_ID\"\nexec sleep 1000\n";

/// Kills what the test started even when it panics.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_and_remove_cgroups(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_during_a_restart_waits_for_it() {
    let _ = narund::node::become_subreaper();
    let server = NatsServer::start();
    let client = server.connect().await;
    let b = common::buckets(&server).await;
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = "ctl-node";
    let (sup, _logs) = Supervisor::new(
        SupervisorConfig {
            node_id: node.into(),
            data_dir: data.path().to_path_buf(),
            nats: narun_wire::connect::NatsSettings {
                url: server.url(),
                ..Default::default()
            },
            default_user: "nobody".into(),
            cgroup_root: Some(PathBuf::from(format!(
                "narun-test-control-{}",
                std::process::id()
            ))),
            log_spool_bytes: 1 << 20,
            ..Default::default()
        },
        client.clone(),
        UringHandle::start(),
    )
    .await;
    let _cleanup = Cleanup(
        sup.cgroup_root()
            .map(|r| r.path().to_path_buf())
            .unwrap_or_default(),
    );
    for tag in ["v1", "v2"] {
        let object = names::binary_object_name("ser", tag, names::go_os(), names::go_arch());
        b.binaries
            .put(
                object.as_str(),
                &mut std::io::Cursor::new(SLEEPER.as_bytes().to_vec()),
            )
            .await
            .unwrap();
    }
    let events = common::collect::<StatusEvent>(&client, "status.>").await;
    let _stop = common::start_reconciler(&sup, &client).await;
    let spec = |tag: &str| {
        serde_json::to_vec(&json!({"name": "ser", "tag": tag, "settleSec": 2,
            "nodes": [{"name": node, "replicas": 1}]}))
        .unwrap()
    };
    b.configs.put("ser", spec("v1").into()).await.unwrap();
    let first = wait_for("ser-0 running v1", T, || async {
        sup.snapshot("ser", 0)
            .filter(|s| s.status == InstanceStatus::Running)
            .and_then(|s| s.pid)
    })
    .await;

    // Unknown apps and instances are answers, not crashes.
    let r = sup.restart_app("nope", None).await;
    assert!(
        r.error
            .contains("app nope is not deployed on node ctl-node"),
        "{r:?}"
    );
    let r = sup.restart_app("ser", Some("ser-3")).await;
    assert!(r.error.contains("ser-3 is not an instance of ser"), "{r:?}");

    // Restart; while it runs (after its stop), v2 is written to app-configs.
    let restart = tokio::spawn({
        let sup = sup.clone();
        async move { sup.restart_app("ser", None).await }
    });
    let mark = wait_for("the restart's stop of ser-0", T, || async {
        events
            .lock()
            .unwrap()
            .iter()
            .position(|e| e.instance_id == "ser-0" && e.status == InstanceStatus::Stopped)
    })
    .await;
    b.configs.put("ser", spec("v2").into()).await.unwrap();
    let reply = tokio::time::timeout(T, restart).await.unwrap().unwrap();
    assert_eq!(reply.restarted, ["ser-0"], "{reply:?}");
    assert!(reply.error.is_empty(), "{reply:?}");

    // v2 replaces the restarted run afterwards, as an ordinary rolling replace (the
    // restarted v1 run is stopped once v2 has settled).
    wait_for("ser-0 running v2 and the v1 run stopped", T, || async {
        let evs = events.lock().unwrap();
        let v2 = evs[mark..].iter().position(|e| {
            e.instance_id == "ser-0" && e.status == InstanceStatus::Running && e.tag == "v2"
        })?;
        evs[mark + v2..]
            .iter()
            .any(|e| {
                e.instance_id == "ser-0" && e.status == InstanceStatus::Stopped && e.tag == "v1"
            })
            .then_some(())
    })
    .await;
    let evs: Vec<StatusEvent> = events.lock().unwrap()[mark..]
        .iter()
        .filter(|e| e.instance_id == "ser-0")
        .cloned()
        .collect();
    let order: Vec<String> = evs
        .iter()
        .map(|e| format!("{} {}", e.tag, e.status))
        .collect();
    let v1_running = evs
        .iter()
        .position(|e| e.tag == "v1" && e.status == InstanceStatus::Running)
        .unwrap_or_else(|| panic!("the restarted v1 run never ran: {order:?}"));
    let v2_first = evs.iter().position(|e| e.tag == "v2").unwrap();
    assert!(
        v1_running < v2_first,
        "the apply of v2 interleaved with the restart: {order:?}"
    );
    let restarted_pid = evs[v1_running].pid.unwrap();
    assert_ne!(restarted_pid, first);
    // The restarted run was then stopped by the replace (not crashed), and only one v2 run.
    assert!(
        evs[v2_first..]
            .iter()
            .any(|e| e.tag == "v1" && e.status == InstanceStatus::Stopped),
        "{order:?}"
    );
    assert_eq!(
        evs.iter()
            .filter(|e| e.tag == "v2" && e.status == InstanceStatus::Starting)
            .count(),
        1,
        "{order:?}"
    );
    sup.shutdown().await;
}
