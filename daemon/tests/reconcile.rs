//! The real `narund` binary: label-selected deploy, heartbeat in `node-runner-states`,
//! clean SIGTERM shutdown; and a tampered object digest refused while the old version runs.

mod common;

use async_nats::jetstream::{self, kv};
use common::Harness;
use futures_util::StreamExt;
use narun_test_support::apps::SLEEPER;
use narun_test_support::{Narund, NatsServer, T, alive, buckets, heartbeat, wait_for};
use narun_wire::events::NodeState;
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_binary_heartbeats_and_shuts_down_cleanly() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    b.upload("lbl", "v1", SLEEPER).await;
    let spec =
        json!({"name": "lbl", "tag": "v1", "nodes": [{"labels": {"role": "edge"}, "replicas": 1}]});
    b.put_spec("lbl", &spec).await;

    let mut watch = b.states.watch("bin-node").await.unwrap();
    let mut narund = Narund::builder(&server, "bin-node")
        .config("[labels]\nrole = \"edge\"\n")
        .env("NARUND_LOG", "info")
        .start();

    // The heartbeat shows the instance running, with the node's facts.
    let state = heartbeat(&mut watch, "lbl-0 running", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "lbl-0" && i.status == InstanceStatus::Running)
    })
    .await;
    assert_eq!(state.status, narun_wire::status::NodeStatus::Running);
    assert_eq!(state.managed_instances, ["lbl-0"]);
    assert_eq!(state.labels.get("role").map(String::as_str), Some("edge"));
    assert_eq!(state.os, "linux");
    assert!(!state.cgroup_layout.is_empty());
    assert!(state.io_uring.is_some());
    let pid = state.instances[0].pid.expect("pid");
    assert!(alive(pid));
    assert_eq!(state.instances[0].digest.len(), 64);

    // SIGTERM: shutting_down, the app stops, the key is deleted, narund exits 0.
    narund.signal(libc::SIGTERM);
    let mut saw_shutting_down = false;
    tokio::time::timeout(T, async {
        loop {
            let e = watch.next().await.unwrap().unwrap();
            match e.operation {
                kv::Operation::Put => {
                    let s: NodeState = serde_json::from_slice(&e.value).unwrap();
                    saw_shutting_down |= s.status == narun_wire::status::NodeStatus::ShuttingDown;
                }
                _ => return,
            }
        }
    })
    .await
    .expect("node key deleted");
    assert!(saw_shutting_down);
    let status = narund.wait().await;
    assert!(status.success(), "{status:?}");
    assert!(!alive(pid), "app stopped with narund");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_digest_is_refused_while_the_old_version_runs() {
    let h = Harness::builder("digest")
        .node("dig")
        .config(|c| {
            c.apps.restart_backoff_max_sec = 1;
            c.logs.spool_bytes = 1 << 20;
        })
        .start()
        .await;
    let (configs, store, client, sup) = (&h.configs, &h.binaries, &h.client, &h.sup);
    let put = |tag: &'static str| h.upload("dig", tag, SLEEPER);
    put("v1").await;
    let spec = |tag: &str| {
        serde_json::to_vec(&json!({"name": "dig", "tag": tag, "settleSec": 1,
            "nodes": [{"name": "dig", "replicas": 1}]}))
        .unwrap()
    };
    configs.put("dig", spec("v1").into()).await.unwrap();
    let pid = wait_for("dig-0 running", T, || {
        let s = sup.snapshot("dig", 0);
        async move {
            s.filter(|s| s.status == InstanceStatus::Running)
                .and_then(|s| s.pid)
        }
    })
    .await;

    // v2's metadata claims another content: rewrite its info message with a wrong digest
    // (what a corrupted or tampered upload looks like to a node).
    let info = put("v2").await;
    let mut meta = serde_json::to_value(&info).unwrap();
    let wrong = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE.encode([7u8; 32])
    };
    meta["digest"] = json!(format!("SHA-256={wrong}"));
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE.encode(info.name.as_bytes())
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    let js = jetstream::new(client.clone());
    js.publish_with_headers(
        format!("$O.{}.M.{encoded}", names::APP_BINARIES_BUCKET),
        headers,
        serde_json::to_vec(&meta).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let seen = store
        .info(&info.name)
        .await
        .expect("tampered info readable");
    assert_eq!(
        seen.digest.as_deref(),
        Some(format!("SHA-256={wrong}").as_str())
    );
    let mut status = client
        .subscribe(names::status_subject("dig", "dig"))
        .await
        .unwrap();
    narun_test_support::synced(client).await;
    configs.put("dig", spec("v2").into()).await.unwrap();
    let failed = tokio::time::timeout(T, async {
        loop {
            let m = status.next().await.unwrap();
            let e: narun_wire::events::StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            if e.tag == "v2" && e.status == InstanceStatus::Failed {
                return e;
            }
        }
    })
    .await
    .expect("v2 refused");
    assert_eq!(failed.reason, Some(Reason::Verify), "{failed:?}");
    // The error names the object, the expected and the actual digest, and does not blame NATS.
    for part in [
        info.name.clone(),
        format!("SHA-256={wrong}"),
        info.digest.clone().unwrap(),
    ] {
        assert!(failed.error.contains(&part), "{part} in {}", failed.error);
    }
    assert!(!failed.error.contains("reachable"), "{}", failed.error);
    assert!(alive(pid), "v1 keeps running");
    let snap = sup.snapshot("dig", 0).unwrap();
    assert_eq!((snap.status.as_str(), snap.pid), ("running", Some(pid)));
    h.finish().await;
    assert!(!alive(pid));
}
