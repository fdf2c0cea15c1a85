//! Following `app-configs`: narund's control loop.
//!
//! [`run`] never gives up: while NATS is unreachable it retries (250 ms, doubling to 30 s)
//! and the apps keep running as they are. The first session opens (or creates)
//! `app-configs` and `app-binaries`, stops the local apps that no longer have a spec, then
//! watches `app-configs` with history and hands every entry to [`Node::handle_entry`]; a
//! later session reuses the opened buckets and only starts a new watch.
//!
//! narund does not trust the watch to mend itself (async-nats re-creates its consumer
//! lazily, ~10 s after a reconnect, and a request in flight on a dead connection waits
//! for its timeout): a session ends, and the next starts as soon as the client is
//! connected again (to the same server or another one of the list), from the revision
//! after the last one seen (no replay of what was applied), when
//!
//! * **the connection was lost**: the client's
//!   [`ConnectionEvents`](narun_wire::connect::ConnectionEvents) say so at once, also in
//!   the middle of opening the buckets or starting the watch; or
//! * **the watch stalled**: every [`STALL_CHECK`] narund asks the bucket for its first
//!   revision after the last one the watch delivered (a direct get, answered "not found"
//!   while the watch is up to date); behind twice in a row with no progress between, the
//!   watch is dead. Once per revision: a renewed watch that still does not deliver it is
//!   not taken for a stall again.
//!
//! Both are logged (warn), with the revision the new watch starts from.

use super::Node;
use crate::liveness::Beat;
use futures_util::StreamExt;
use narun_wire::connect::ConnectionEvents;
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
    events: ConnectionEvents,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let beat = node.liveness().register("reconciler");
    let mut delay = Duration::from_millis(250);
    // The last revision of app-configs handed to the node (0: none yet).
    let mut seen = 0u64;
    // The revision the watch was last renewed for as stalled: a renewed watch that still
    // does not deliver it is not taken for a stall again (renewing cannot help).
    let mut stall_floor = 0u64;
    // `app-configs`, once opened: a handle stays valid across reconnects, so a renewed
    // session does not ask for the stream again (one request less while a stream leader
    // may be being elected).
    let mut opened: Option<async_nats::jetstream::kv::Store> = None;
    // When the connection was last (re)established: for [`RECOVERY`] after it, failed
    // sessions are retried at least every second (a stream leader is being elected).
    let mut connected_at = std::time::Instant::now();
    let mut last_losses = 0u64;
    loop {
        if stop.is_cancelled() {
            return;
        }
        // Not connected: wait for the connection (beating: waiting for NATS is normal),
        // then start at once, without a back-off to sit out.
        if !events.link().connected {
            loop {
                tokio::select! {
                    _ = events.connected() => break,
                    _ = beat.asked() => beat.beat(),
                    _ = stop.cancelled() => return,
                }
            }
            delay = Duration::from_millis(250);
        }
        // A watch ran before: what changed since is read from a replica first (no
        // consumer needed), then the new watch starts after it.
        if seen > 0
            && let Some(configs) = &opened
        {
            tokio::select! {
                _ = catch_up(&node, &beat, configs, &mut seen) => {}
                _ = stop.cancelled() => return,
            }
        }
        let losses = events.link().losses;
        if losses != last_losses {
            last_losses = losses;
            connected_at = std::time::Instant::now();
        }
        let result = tokio::select! {
            // A lost connection ends the session while it waits (setup, next entry), never
            // in the middle of an apply: a half-done apply (a scale-down between two stops,
            // a rolling update waiting for the new run) would leave runs nobody controls.
            r = session(&node, &client, &events, &ready, &beat, &mut seen, &mut stall_floor, &mut opened) => r,
            _ = stop.cancelled() => return,
        };
        if events.link().losses > losses && !matches!(result, Err(SessionEnd::Renew(_))) {
            // A session that failed because the connection went away: the next one
            // starts as soon as it is back.
            tracing::warn!(
                from_revision = seen + 1,
                "NATS connection lost: re-creating the app-configs watch once connected"
            );
            continue;
        }
        match result {
            Ok(()) => delay = Duration::from_millis(250),
            Err(SessionEnd::Renew(why)) => {
                tracing::warn!(
                    reason = why,
                    from_revision = seen + 1,
                    "re-creating the app-configs watch"
                );
                delay = Duration::from_millis(250);
                continue;
            }
            Err(SessionEnd::Failed(e)) => {
                tracing::warn!(error = %e, retry_in = ?delay, "app-configs not available; apps keep running as they are");
            }
        }
        {
            let _waiting = beat.busy(
                "waiting to retry app-configs",
                delay + 3 * Duration::from_secs(1),
            );
            let until = tokio::time::Instant::now() + delay;
            loop {
                // A watch ran before: read what changed since from a replica meanwhile.
                if seen > 0
                    && events.link().connected
                    && let Some(configs) = &opened
                {
                    tokio::select! {
                        _ = catch_up(&node, &beat, configs, &mut seen) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep((until - now).min(CATCH_UP_EVERY)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
        let cap = if connected_at.elapsed() < RECOVERY {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        };
        delay = (delay * 2).min(cap);
    }
}

/// Longest time the start of a session (buckets, key listing, watch) may take before it
/// is retried.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// After a (re)connect, failed sessions are retried at least every second for this long
/// (then the back-off grows to 30 s).
pub const RECOVERY: Duration = Duration::from_secs(30);

/// Bound of starting a renewed watch (the consumer of a stream whose leader may be being
/// elected: asked again rather than awaited).
pub const RENEW_TIMEOUT: Duration = Duration::from_millis(1500);

/// Bound of each JetStream request of a session's start (opening the buckets, listing
/// the keys, creating the watch's consumer).
pub const JS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the watch loop compares the bucket's last revision with what it delivered
/// (one JetStream request).
pub const STALL_CHECK: Duration = Duration::from_secs(5);

/// Why a session ended.
enum SessionEnd {
    /// Start a new watch at once (the connection came back, or the watch stalled).
    Renew(&'static str),
    /// Retry after the back-off.
    Failed(String),
}

impl From<String> for SessionEnd {
    fn from(e: String) -> SessionEnd {
        SessionEnd::Failed(e)
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Renew(why) => f.write_str(why),
            SessionEnd::Failed(e) => f.write_str(e),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    node: &Node,
    client: &async_nats::Client,
    events: &ConnectionEvents,
    ready: &watch::Sender<bool>,
    beat: &Beat,
    seen: &mut u64,
    stall_floor: &mut u64,
    opened: &mut Option<async_nats::jetstream::kv::Store>,
) -> Result<(), SessionEnd> {
    use async_nats::connection::State;
    if client.connection_state() != State::Connected {
        return Err(SessionEnd::Failed("NATS is not connected".into()));
    }
    // Losses of the connection after this point end the session where it waits.
    let losses = events.link().losses;
    let lost = || SessionEnd::Renew("NATS connection lost");
    let (keys, configs) = {
        let _busy = beat.busy(
            "opening app-configs",
            SESSION_SETUP_TIMEOUT + Duration::from_secs(5),
        );
        let open = open_session(node, client, opened.clone(), *seen == 0);
        events
            .unless_lost(tokio::time::timeout(SESSION_SETUP_TIMEOUT, open))
            .await
            .map_err(|_| lost())?
            .map_err(|_| {
                format!(
                    "opening app-configs took longer than {} s",
                    SESSION_SETUP_TIMEOUT.as_secs()
                )
            })??
    };
    *opened = Some(configs.clone());
    for app in node.app_names() {
        if keys.as_ref().is_some_and(|k| !k.contains(&app)) {
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
        // The first watch replays every key's latest revision; a renewed one starts after
        // the last revision seen (a revision removed meanwhile is skipped by the server).
        let start = async {
            if *seen == 0 {
                configs.watch_with_history(">").await
            } else {
                configs.watch_from_revision(">", *seen + 1).await
            }
        };
        let bound = if *seen == 0 {
            SESSION_SETUP_TIMEOUT
        } else {
            RENEW_TIMEOUT
        };
        events
            .unless_lost(tokio::time::timeout(bound, start))
            .await
            .map_err(|_| lost())?
            .map_err(|_| format!("starting the watch of app-configs took longer than {bound:?}"))?
            .map_err(|e| format!("watching app-configs: {e}"))?
    };
    if keys.as_ref().is_none_or(HashSet::is_empty) || *seen > 0 {
        ready.send_replace(true);
    }
    let mut stall = tokio::time::interval(STALL_CHECK);
    stall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stall.reset();
    // (bucket's last revision, our last revision) at the previous stall check, if behind.
    let mut behind: Option<(u64, u64)> = None;
    // Asks are answered only while this loop waits for the next entry: an apply that never
    // returns leaves them unanswered (crate::liveness).
    loop {
        let entry = tokio::select! {
            e = watch.next() => e,
            _ = events.lost_after(losses) => return Err(lost()),
            _ = beat.asked() => {
                beat.beat();
                continue;
            }
            _ = stall.tick() => {
                if events.link().connected
                    && let Some(next) = revision_after(&configs, *seen).await
                {
                    match next {
                        Some(next) if next > *stall_floor => {
                            if behind == Some((next, *seen)) {
                                *stall_floor = next;
                                return Err(SessionEnd::Renew("the watch stalled: app-configs has newer revisions"));
                            }
                            behind = Some((next, *seen));
                        }
                        _ => behind = None,
                    }
                }
                continue;
            }
        };
        let Some(entry) = entry else { break };
        let entry = entry.map_err(|e| format!("watching app-configs: {e}"))?;
        let value = matches!(entry.operation, async_nats::jetstream::kv::Operation::Put)
            .then_some(&entry.value[..]);
        apply(node, beat, &entry.key, value, entry.revision, seen).await;
        if entry.delta == 0 {
            ready.send_replace(true);
        }
    }
    Err(SessionEnd::Failed("the app-configs watch ended".into()))
}

/// Hand one revision of `app-configs` to the node (`value` `None`: deleted or purged).
async fn apply(
    node: &Node,
    beat: &Beat,
    key: &str,
    value: Option<&[u8]>,
    revision: u64,
    seen: &mut u64,
) {
    // Parsing is bounded (super::reconcile::PARSE_TIMEOUT) and declared as such, so
    // a slow spec is progress for narund's watchdog until its bound, then refused.
    let parsed = match value {
        Some(v) => {
            let _parsing = beat.busy(
                format!("parsing the spec of {key}"),
                super::reconcile::PARSE_TIMEOUT + Duration::from_secs(1),
            );
            Some(node.parse_entry(key, v).await)
        }
        None => None,
    };
    {
        let _serial = beat.awaiting_apply();
        node.handle_parsed(key, parsed, revision).await;
    }
    *seen = (*seen).max(revision);
}

/// How often the revisions after the last one seen are read while no watch runs.
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(250);

/// Apply the revisions of `app-configs` after `seen`, read one by one with JetStream's
/// direct get (`next_by_subj`), which every replica of the stream answers by itself: used
/// while no watch runs after a lost connection. A new watch needs a new consumer, and
/// creating one needs JetStream's meta leader: when the server that died was the meta
/// leader, that takes the cluster's re-election (about 5-10 s on nats-server 2.9), while a
/// spec written meanwhile is readable at once. Returns how many revisions were applied.
async fn catch_up(
    node: &Node,
    beat: &Beat,
    configs: &async_nats::jetstream::kv::Store,
    seen: &mut u64,
) -> usize {
    let prefix = format!("$KV.{}.", configs.name);
    let mut applied = 0;
    loop {
        let next = configs
            .stream
            .direct_get_next_for_subject(format!("{prefix}>"), Some(*seen + 1));
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(1), next).await else {
            return applied;
        };
        let Some(key) = msg.subject.strip_prefix(prefix.as_str()) else {
            return applied;
        };
        let deleted = msg
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let value = (!deleted).then_some(&msg.payload[..]);
        tracing::info!(
            key,
            revision = msg.sequence,
            "app-configs revision read while the watch is down"
        );
        apply(node, beat, key, value, msg.sequence, seen).await;
        applied += 1;
    }
}

/// The first revision of `app-configs` after `seen` (`Some(None)`: there is none), bounded;
/// `None` when unknown. A direct get of the next message (any replica answers it): when
/// the watch is up to date the answer is a header-only "not found", far cheaper for narund
/// and the server than the stream's info, which an idle narund would ask for every
/// [`STALL_CHECK`].
async fn revision_after(
    configs: &async_nats::jetstream::kv::Store,
    seen: u64,
) -> Option<Option<u64>> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    let next = configs
        .stream
        .direct_get_next_for_subject(format!("$KV.{}.>", configs.name), Some(seen + 1));
    match tokio::time::timeout(Duration::from_secs(2), next)
        .await
        .ok()?
    {
        Ok(msg) => Some(Some(msg.sequence)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Some(None),
        Err(_) => None,
    }
}

/// `app-configs` (`cached`, else opened or created), the object store (once: a handle
/// outlives reconnects) and, when `list_keys` (the first session: apps started from the
/// local state whose spec was deleted meanwhile), the set of keys in `app-configs`. A
/// renewed session needs no listing: its watch starts after the last revision seen and so
/// delivers the deletions since.
async fn open_session(
    node: &Node,
    client: &async_nats::Client,
    cached: Option<async_nats::jetstream::kv::Store>,
    list_keys: bool,
) -> Result<(Option<HashSet<String>>, async_nats::jetstream::kv::Store), String> {
    let mut js = async_nats::jetstream::new(client.clone());
    // A JetStream request with no answer (a stream whose leader just died, during its
    // election) is retried by the next session rather than awaited for long.
    js.set_timeout(JS_REQUEST_TIMEOUT);
    let replicas = node.settings().nats.stream_replicas;
    let configs = match cached {
        Some(c) => c,
        None => jetstream::APP_CONFIGS
            .ensure_replicas(&js, replicas)
            .await
            .map_err(|e| e.to_string())?,
    };
    if !node.has_object_store() {
        // The store downloads binaries later: its requests keep the default bound.
        let store_js = async_nats::jetstream::new(client.clone());
        let store = jetstream::APP_BINARIES
            .ensure_replicas(&store_js, replicas)
            .await
            .map_err(|e| e.to_string())?;
        node.set_object_store(Some(crate::fetch::Bucket::new(
            &store_js,
            narun_wire::names::APP_BINARIES_BUCKET,
            store,
        )));
    }
    if !list_keys {
        return Ok((None, configs));
    }
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
    Ok((Some(keys), configs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stall check's question against a real server: the first revision after the
    /// last one seen, "none" while the watch is up to date (puts, deletes and other keys
    /// alike; a purged revision is skipped).
    #[tokio::test]
    async fn revision_after_names_the_first_revision_not_seen() {
        let server = narun_test_support::NatsServer::start();
        let b = narun_test_support::buckets(&server).await;
        let c = &b.configs;
        assert_eq!(revision_after(c, 0).await, Some(None), "empty bucket");
        let r1 = c.put("a", "1".into()).await.unwrap();
        assert_eq!(revision_after(c, 0).await, Some(Some(r1)));
        assert_eq!(revision_after(c, r1).await, Some(None), "up to date");
        let r2 = c.put("b", "2".into()).await.unwrap();
        c.delete("a").await.unwrap();
        assert_eq!(revision_after(c, r1).await, Some(Some(r2)));
        assert_eq!(
            revision_after(c, r2).await,
            Some(Some(r2 + 1)),
            "a deletion"
        );
        c.purge("b").await.unwrap();
        assert_eq!(revision_after(c, r1).await, Some(Some(r2 + 1)), "r2 purged");
        assert_eq!(revision_after(c, r2 + 2).await, Some(None));
    }
}
