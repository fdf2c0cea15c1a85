//! Helpers shared by narund's integration tests (each test file is its own crate and
//! includes this module with `mod common;`; not every file uses every helper).
#![allow(dead_code)]

use async_nats::jetstream::{self, kv, object_store::ObjectStore};
use futures_util::StreamExt;
use narun_test_support::{NatsServer, wait_for};
use narun_wire::names;
use narund::node::Supervisor;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Bound of every wait in these tests.
pub const T: Duration = Duration::from_secs(30);

/// Whether `pid` exists and is not a zombie (not every test file uses it).
#[allow(unused_imports)]
pub use narun_test_support::alive;

/// The next node state on `watch` (a watch of the node's key in `node-runner-states`) for
/// which `pred` holds, at most [`T`] from now; panics naming `what` otherwise.
pub async fn heartbeat(
    watch: &mut kv::Watch,
    what: &str,
    mut pred: impl FnMut(&narun_wire::events::NodeState) -> bool,
) -> narun_wire::events::NodeState {
    tokio::time::timeout(T, async {
        loop {
            let e = watch.next().await.unwrap().unwrap();
            if e.operation != kv::Operation::Put {
                continue;
            }
            let s: narun_wire::events::NodeState = serde_json::from_slice(&e.value).unwrap();
            if pred(&s) {
                return s;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for a heartbeat with {what}"))
}

/// Wait (at most [`T`]) until `pid` is gone.
pub async fn wait_gone(pid: i32) {
    wait_for(&format!("pid {pid} to be gone"), T, || async move {
        (!alive(pid)).then_some(())
    })
    .await
}

/// The buckets narund works with, created the way narund creates them.
pub struct Buckets {
    pub configs: kv::Store,
    pub binaries: ObjectStore,
    pub states: kv::Store,
}

pub async fn buckets(server: &NatsServer) -> Buckets {
    let js = jetstream::new(server.connect().await);
    let configs =
        narun_wire::jetstream::ensure_kv(&js, names::APP_CONFIGS_BUCKET, "specs", 1, None)
            .await
            .unwrap();
    let binaries =
        narun_wire::jetstream::ensure_object_store(&js, names::APP_BINARIES_BUCKET, "binaries")
            .await
            .unwrap();
    let states = narun_wire::jetstream::ensure_kv(
        &js,
        names::NODE_STATES_BUCKET,
        "heartbeats",
        1,
        Some(Duration::from_secs(45)),
    )
    .await
    .unwrap();
    Buckets {
        configs,
        binaries,
        states,
    }
}

/// Subscribe to `subject` and collect every message, parsed as `M`, from now on (the
/// subscription is confirmed by the server before this returns).
pub async fn collect<M: DeserializeOwned + Send + 'static>(
    client: &async_nats::Client,
    subject: &str,
) -> Arc<Mutex<Vec<M>>> {
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    assert!(
        narun_wire::connect::sync_with_server(client, Duration::from_secs(10)).await,
        "nats-server did not confirm the subscription to {subject}"
    );
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice::<M>(&m.payload).unwrap());
        }
    });
    out
}

/// Run narund's reconciler for `sup` and wait (at most [`T`]) for its first complete
/// replay of `app-configs`. Sending `true` on the returned sender stops it.
pub async fn start_reconciler(
    sup: &Supervisor,
    client: &async_nats::Client,
) -> watch::Sender<bool> {
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(narund::node::reconcile::run(
        sup.clone(),
        client.clone(),
        Some(ready_tx),
        stop_rx,
    ));
    tokio::time::timeout(T, ready_rx)
        .await
        .expect("first reconcile")
        .unwrap();
    stop
}

/// Kill every instance cgroup below `root` (`cgroup.kill`), remove them and `root`. For
/// harness `Drop`s: also runs when a test panics, so no app or cgroup outlives a test.
pub fn kill_and_remove_cgroups(root: &std::path::Path) {
    if root.as_os_str().is_empty() {
        return;
    }
    if let Ok(dir) = std::fs::read_dir(root) {
        for e in dir
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
            for _ in 0..100 {
                if std::fs::remove_dir(e.path()).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = std::fs::remove_dir(root);
}
