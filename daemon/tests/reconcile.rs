//! The real `narund` binary: label-selected deploy, heartbeat in `node-runner-states`,
//! clean SIGTERM shutdown; and a tampered object digest refused while the old version runs.

mod common;

use async_nats::jetstream::{self, kv};
use common::alive;
use futures_util::StreamExt;
use narun_test_support::{NatsServer, wait_for, workspace_bin};
use narun_wire::events::NodeState;
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SLEEPER: &str = "#!/bin/sh\necho \"hello from $NARUN_INSTANCE_ID\"\nexec sleep 1000\n";

async fn setup(server: &NatsServer) -> (kv::Store, jetstream::object_store::ObjectStore) {
    let b = common::buckets(server).await;
    (b.configs, b.binaries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_binary_heartbeats_and_shuts_down_cleanly() {
    let server = NatsServer::start();
    let (configs, store) = setup(&server).await;
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    let states = narun_wire::jetstream::ensure_kv(
        &js,
        names::NODE_STATES_BUCKET,
        "heartbeats",
        1,
        Some(Duration::from_secs(45)),
    )
    .await
    .unwrap();

    let name = names::binary_object_name("lbl", "v1", names::go_os(), names::go_arch());
    store
        .put(
            name.as_str(),
            &mut std::io::Cursor::new(SLEEPER.as_bytes().to_vec()),
        )
        .await
        .unwrap();
    let spec =
        json!({"name": "lbl", "tag": "v1", "nodes": [{"labels": {"role": "edge"}, "replicas": 1}]});
    configs
        .put("lbl", serde_json::to_vec(&spec).unwrap().into())
        .await
        .unwrap();

    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = data.path().join("narund.toml");
    std::fs::write(
        &conf,
        format!(
            "node_id = \"bin-node\"\ndata_dir = \"{d}\"\nruntime_dir = \"{d}/run\"\n\
             [labels]\nrole = \"edge\"\n[nats]\nurl = \"{url}\"\n\
             [apps]\ndefault_user = \"nobody\"\n[cgroup]\nroot = \"narun-test-bin-{pid}\"\n",
            d = data.path().display(),
            url = server.url(),
            pid = std::process::id()
        ),
    )
    .unwrap();
    let mut watch = states.watch("bin-node").await.unwrap();
    let bin = workspace_bin("narund", "narund", &[]);
    let mut narund = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&conf)
        .env("NARUND_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The heartbeat shows the instance running, with the node's facts.
    let state = common::heartbeat(&mut watch, "lbl-0 running", |s| {
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
    unsafe { libc::kill(narund.id().unwrap() as i32, libc::SIGTERM) };
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
    let status = tokio::time::timeout(T, narund.wait())
        .await
        .expect("narund exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!alive(pid), "app stopped with narund");
    let _ = std::fs::remove_dir(format!(
        "/sys/fs/cgroup/unified/narun-test-bin-{}",
        std::process::id()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_digest_is_refused_while_the_old_version_runs() {
    use narund::node::{Supervisor, SupervisorConfig};
    let _ = narund::node::become_subreaper();
    let server = NatsServer::start();
    let (configs, store) = setup(&server).await;
    let client = server.connect().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = SupervisorConfig {
        node_id: "dig".into(),
        data_dir: data.path().to_path_buf(),
        labels: Default::default(),
        nats: Default::default(),
        default_user: "nobody".into(),
        allow_root: false,
        restart_backoff_max: Duration::from_secs(1),
        keep_versions: 3,
        cgroup_root: Some(format!("narun-test-digest-{}", std::process::id()).into()),
        log_spool_bytes: 1 << 20,
        ..Default::default()
    };
    let (sup, _l) = Supervisor::new(cfg, client.clone(), narund::uring::UringHandle::start()).await;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(narund::node::reconcile::run(
        sup.clone(),
        client.clone(),
        None,
        stop_rx,
    ));

    let put = |tag: &'static str| {
        let store = store.clone();
        async move {
            let name = names::binary_object_name("dig", tag, names::go_os(), names::go_arch());
            store
                .put(
                    name.as_str(),
                    &mut std::io::Cursor::new(SLEEPER.as_bytes().to_vec()),
                )
                .await
                .unwrap()
        }
    };
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
    assert!(
        narun_wire::connect::sync_with_server(&client, std::time::Duration::from_secs(10)).await,
        "nats-server did not confirm the subscriptions"
    );
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
    assert!(alive(pid), "v1 keeps running");
    let snap = sup.snapshot("dig", 0).unwrap();
    assert_eq!((snap.status.as_str(), snap.pid), ("running", Some(pid)));
    sup.shutdown().await;
    assert!(!alive(pid));
    if let Some(r) = sup.cgroup_root() {
        let _ = std::fs::remove_dir(r.path());
    }
}
