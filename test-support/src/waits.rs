//! The bound of every wait, and the waits the tests of several crates share.

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use narun_wire::events::NodeState;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{alive, wait_for};

/// The bound of every wait in the tests: for something that is expected to happen (a
/// process to run, an event to arrive, a heartbeat to show a state), never for a check that
/// something does *not* happen or happens quickly (those keep their own, shorter bounds).
///
/// The longest of the bounds the test files used to spell out each on their own.
pub const T: Duration = Duration::from_secs(40);

/// Wait (at most [`T`]) until `pid` is gone (exited and reaped, or a zombie).
pub async fn wait_gone(pid: i32) {
    wait_for(&format!("pid {pid} to be gone"), T, || async move {
        (!alive(pid)).then_some(())
    })
    .await
}

/// Wait (at most [`T`]) until `client` is connected to its server.
pub async fn wait_connected(client: &async_nats::Client) {
    wait_for("the NATS client to connect", T, || async {
        (client.connection_state() == async_nats::connection::State::Connected).then_some(())
    })
    .await;
}

/// Wait (at most [`T`]) until nats-server has processed everything `client` sent so far
/// (subscriptions, publishes, unsubscriptions): [`narun_wire::connect::sync_with_server`],
/// which must succeed.
pub async fn synced(client: &async_nats::Client) {
    assert!(
        narun_wire::connect::sync_with_server(client, T).await,
        "nats-server did not confirm what the client sent (subscriptions)"
    );
}

/// Subscribe to `subject` and collect every message, parsed as `M`, from now on, in the
/// order they arrive (the subscription is confirmed by the server before this returns).
pub async fn collect<M: DeserializeOwned + Send + 'static>(
    client: &async_nats::Client,
    subject: &str,
) -> Arc<Mutex<Vec<M>>> {
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    synced(client).await;
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

/// The next node state on `watch` (a watch of the node's key in `node-runner-states`) for
/// which `pred` holds, at most [`T`] from now; panics naming `what` otherwise.
pub async fn heartbeat(
    watch: &mut kv::Watch,
    what: &str,
    mut pred: impl FnMut(&NodeState) -> bool,
) -> NodeState {
    tokio::time::timeout(T, async {
        loop {
            let e = watch.next().await.unwrap().unwrap();
            if e.operation != kv::Operation::Put {
                continue;
            }
            let s: NodeState = serde_json::from_slice(&e.value).unwrap();
            if pred(&s) {
                return s;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for a heartbeat with {what}"))
}
