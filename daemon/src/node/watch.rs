//! Following `app-configs`: narund's control loop.
//!
//! [`run`] never gives up: while NATS is unreachable it retries (250 ms, doubling to 30 s)
//! and the apps keep running as they are. Each session opens (or creates) `app-configs`
//! and `app-binaries`, stops the local apps that no longer have a spec, then watches
//! `app-configs` with history and hands every entry to [`Node::handle_entry`].

use super::Node;
use crate::liveness::{BEAT_EVERY, Beat};
use futures_util::StreamExt;
use narun_wire::jetstream;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Run the reconciliation loop until `stop` is cancelled. `ready` turns true after the
/// first complete replay of `app-configs`.
pub async fn run(
    node: Node,
    client: async_nats::Client,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let beat = node.liveness().register("reconciler", BEAT_EVERY);
    let mut delay = Duration::from_millis(250);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let result = tokio::select! {
            r = session(&node, &client, &ready, &beat) => r,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(()) => delay = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "app-configs not available; apps keep running as they are");
            }
        }
        let _waiting = beat.busy("waiting to retry app-configs", delay + BEAT_EVERY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Longest time the start of a session (buckets, key listing, watch) may take before it
/// is retried.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

async fn session(
    node: &Node,
    client: &async_nats::Client,
    ready: &watch::Sender<bool>,
    beat: &Beat,
) -> Result<(), String> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err("NATS is not connected".into());
    }
    let (keys, configs) = {
        let _busy = beat.busy(
            "opening app-configs",
            SESSION_SETUP_TIMEOUT + Duration::from_secs(5),
        );
        tokio::time::timeout(SESSION_SETUP_TIMEOUT, open_session(node, client))
            .await
            .map_err(|_| {
                format!(
                    "opening app-configs took longer than {} s",
                    SESSION_SETUP_TIMEOUT.as_secs()
                )
            })??
    };
    for app in node.app_names() {
        if !keys.contains(&app) {
            tracing::info!(app = %app, "no spec in app-configs any more");
            let _serial = beat.awaiting_apply();
            node.remove_app(&app).await;
        }
    }
    let mut watch = {
        let _busy = beat.busy(
            "watching app-configs",
            SESSION_SETUP_TIMEOUT + Duration::from_secs(5),
        );
        tokio::time::timeout(SESSION_SETUP_TIMEOUT, configs.watch_with_history(">"))
            .await
            .map_err(|_| "starting the watch of app-configs timed out".to_string())?
            .map_err(|e| format!("watching app-configs: {e}"))?
    };
    if keys.is_empty() {
        ready.send_replace(true);
    }
    // The tick runs only while this loop waits for the next entry: an apply that never
    // returns stops the beats (crate::liveness).
    let mut tick = tokio::time::interval(BEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let entry = tokio::select! {
            e = watch.next() => e,
            _ = tick.tick() => {
                beat.beat();
                continue;
            }
        };
        let Some(entry) = entry else { break };
        let entry = entry.map_err(|e| format!("watching app-configs: {e}"))?;
        let value = matches!(entry.operation, async_nats::jetstream::kv::Operation::Put)
            .then_some(&entry.value[..]);
        // Parsing is bounded (super::reconcile::PARSE_TIMEOUT) and declared as such, so
        // a slow spec is progress for narund's watchdog until its bound, then refused.
        let parsed = match value {
            Some(v) => {
                let _parsing = beat.busy(
                    format!("parsing the spec of {}", entry.key),
                    super::reconcile::PARSE_TIMEOUT + BEAT_EVERY,
                );
                Some(node.parse_entry(&entry.key, v).await)
            }
            None => None,
        };
        {
            let _serial = beat.awaiting_apply();
            node.handle_parsed(&entry.key, parsed, entry.revision).await;
        }
        if entry.delta == 0 {
            ready.send_replace(true);
        }
    }
    Err("the app-configs watch ended".into())
}

/// Buckets, object store and the set of keys in `app-configs`.
async fn open_session(
    node: &Node,
    client: &async_nats::Client,
) -> Result<(HashSet<String>, async_nats::jetstream::kv::Store), String> {
    let js = async_nats::jetstream::new(client.clone());
    let configs = jetstream::APP_CONFIGS
        .ensure(&js)
        .await
        .map_err(|e| e.to_string())?;
    let store = jetstream::APP_BINARIES
        .ensure(&js)
        .await
        .map_err(|e| e.to_string())?;
    node.set_object_store(Some(store));
    let keys: HashSet<String> = {
        let mut keys = configs
            .keys()
            .await
            .map_err(|e| format!("listing app-configs: {e}"))?;
        let mut set = HashSet::new();
        while let Some(k) = keys.next().await {
            set.insert(k.map_err(|e| format!("listing app-configs: {e}"))?);
        }
        set
    };
    Ok((keys, configs))
}
