//! `Supervisor::restart_app` (the handler behind `narun.control.<node>.restart`) in
//! process, against a real nats-server, real `/bin/sh` apps and real cgroups: a spec
//! change that arrives during a restart waits for it (the apply lock), so an index never
//! gets two runs; the restart itself answers with what it restarted.
//! (The request/reply path through the real narund binary is tested by
//! `narunctl/tests/apps_restart.rs`.)

mod common;

use common::Harness;
use narun_test_support::apps::sleeper_saying;
use narun_test_support::{T, wait_for};
use narun_wire::events::StatusEvent;
use narun_wire::status::InstanceStatus;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_during_a_restart_waits_for_it() {
    let h = Harness::builder("control")
        .node("ctl-node")
        .config(|c| c.logs.spool_bytes = 1 << 20)
        .start()
        .await;
    let (sup, events, node) = (&h.sup, &h.events, h.node.as_str());
    for tag in ["v1", "v2"] {
        h.upload("ser", tag, &sleeper_saying("up: $NARUN_INSTANCE_ID"))
            .await;
    }
    let spec = |tag: &str| {
        serde_json::to_vec(&json!({"name": "ser", "tag": tag, "settleSec": 2,
            "nodes": [{"name": node, "replicas": 1}]}))
        .unwrap()
    };
    h.configs.put("ser", spec("v1").into()).await.unwrap();
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
    h.configs.put("ser", spec("v2").into()).await.unwrap();
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
    h.finish().await;
}
