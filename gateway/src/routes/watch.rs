//! The routes task: looks for declared routes every `service_routes_interval_ms`, follows
//! the gateway's KV route set (and SIGHUP), and swaps the router after each change.
//!
//! **A look** is one `$SRV.PING` to every service, answers gathered for [`window`]. An
//! answer is only a claim: anyone who can publish to the gateway's inbox can answer with
//! any service name. So an instance new to the gateway (or with a new declaration) is
//! served only after it answered the same declaration on `$SRV.PING.<name>.<id>`, a
//! subject only that service's instances may subscribe to when apps have their own NATS
//! users (narund's minted users: docs/security.md). A look made while NATS is not
//! connected changes nothing.
//!
//! **The KV set** is followed with a KV watch of `gateway.<name>.routes` (the current value
//! first, then each change), re-opened after an error; SIGHUP reads the key again and
//! re-applies it even when unchanged (key files may have changed). The outcome of each set
//! is logged and published on `narun.gateway.<name>.routes.status`.

use super::{Sources, kvset};
use crate::Shared;
use bytes::Bytes;
use futures_util::StreamExt;
use narun_wire::micro::{PingResponse, valid_name};
use narun_wire::routes::{self as wire, RoutesStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Answers of one look read at most.
const MAX_ANSWERS: usize = 10_000;
/// Bytes read per look, all answers together (hostile answers cannot grow narund).
const MAX_LOOK_BYTES: usize = 8 * 1024 * 1024;
/// A ping answer larger than this is skipped unparsed.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Instances of one service kept per look (more are skipped: a service cannot fill the
/// registry with invented instance ids).
const MAX_INSTANCES_PER_SERVICE: usize = 16;
/// New instances checked per look at most (the others wait for the next look).
const MAX_CHECKS: usize = 64;
/// Time an instance has to answer the check on its own subject.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before following the KV key again after an error.
const KV_RETRY: Duration = Duration::from_secs(2);

/// How long a look gathers answers: half the interval, at most 500 ms.
fn window(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_millis(500))
}

/// A value of the KV key (`None`: absent or deleted).
struct KvEvent {
    revision: u64,
    value: Option<Bytes>,
    /// SIGHUP: apply even when the revision is the one in service.
    forced: bool,
    /// The key's older values, newest first (only with the first value after the key is
    /// followed anew): a gateway that starts on a refused set serves the newest valid one.
    older: Vec<(u64, Option<Bytes>)>,
}

/// Run until `stop` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut sources: Sources,
    instance: String,
    mut stop: watch::Receiver<bool>,
) {
    let client = shared.client.clone();
    let (tx, mut kv_rx) = mpsc::channel::<KvEvent>(8);
    let follower = sources
        .config
        .name
        .clone()
        .map(|name| tokio::spawn(follow_kv(client.clone(), name, tx)));
    let interval = sources.interval();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let declared = sources.config.service_routes;
    let mut last_revision = None;
    enum Next {
        Stop,
        Look,
        Kv(KvEvent),
    }
    loop {
        let next = tokio::select! {
            _ = stop.wait_for(|s| *s) => Next::Stop,
            _ = tick.tick(), if declared => Next::Look,
            Some(ev) = kv_rx.recv() => Next::Kv(ev),
        };
        match next {
            Next::Stop => break,
            Next::Look => {
                if let Some(seen) = look(&client, &sources.declared, window(interval)).await
                    && sources.declared.observe(&seen)
                {
                    let router = sources.rebuild();
                    shared.router.store(router);
                }
            }
            Next::Kv(ev) => {
                if !ev.forced && last_revision == Some(ev.revision) {
                    continue;
                }
                last_revision = Some(ev.revision);
                apply_kv(&shared, &mut sources, &instance, ev).await;
            }
        }
    }
    if let Some(f) = follower {
        f.abort();
    }
}

/// Apply one value of the KV key: serve it, or keep the set in service and say why.
async fn apply_kv(shared: &Shared, sources: &mut Sources, instance: &str, ev: KvEvent) {
    let name = sources.config.name.clone().unwrap_or_default();
    let parse = |revision: u64, value: &Option<Bytes>| match value {
        None => Ok(kvset::KvSet {
            revision,
            ..Default::default()
        }),
        Some(v) => kvset::parse(v, revision, &sources.config, sources.jobs),
    };
    let mut parsed = parse(ev.revision, &ev.value);
    if let Err(errs) = &mut parsed
        && !sources.kv_in_service
    {
        // Nothing served from KV yet (a start on a refused set): the newest valid one.
        if let Some(set) = ev.older.iter().find_map(|(r, v)| parse(*r, v).ok()) {
            errs.push(format!(
                "serving revision {} instead, the newest valid set",
                set.revision
            ));
            sources.kv = set;
            sources.kv_in_service = true;
            let router = sources.rebuild();
            shared.router.store(router);
        }
    }
    let status = match parsed {
        Ok(set) => {
            let routes = set.routes.len();
            sources.kv = set;
            sources.kv_in_service = true;
            let router = sources.rebuild();
            shared.router.store(router);
            tracing::info!(gateway = %name, revision = ev.revision, routes, "KV route set in service");
            RoutesStatus {
                gateway: name.clone(),
                instance: instance.to_owned(),
                revision: ev.revision,
                accepted: true,
                routes,
                error: None,
            }
        }
        Err(errs) => {
            let why = errs.join("\n");
            tracing::error!(
                gateway = %name,
                revision = ev.revision,
                kept = sources.kv.revision,
                "KV route set refused, the previous set stays in service:\n{why}"
            );
            RoutesStatus {
                gateway: name.clone(),
                instance: instance.to_owned(),
                revision: ev.revision,
                accepted: false,
                routes: 0,
                error: Some(why),
            }
        }
    };
    if let Ok(json) = serde_json::to_vec(&status) {
        let _ = shared
            .client
            .publish(wire::status_subject(&name), json.into())
            .await;
    }
}

/// Follow `gateway.<name>.routes`: each value, and the current one again on SIGHUP.
async fn follow_kv(client: async_nats::Client, name: String, tx: mpsc::Sender<KvEvent>) {
    use async_nats::jetstream::kv::Operation;
    use tokio::signal::unix::{SignalKind, signal};
    let key = wire::kv_key(&name);
    let js = async_nats::jetstream::new(client);
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; KV routes reload on change only");
            None
        }
    };
    let event = |revision, op: Operation, value: Bytes, forced| KvEvent {
        revision,
        value: (op == Operation::Put).then_some(value),
        forced,
        older: Vec::new(),
    };
    let mut warned = false;
    loop {
        let opened = match wire::GATEWAY_ROUTES.ensure(&js).await {
            Ok(store) => store
                .watch_with_history(&key)
                .await
                .map(|w| (store, w))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (store, mut changes) = match opened {
            Ok(o) => o,
            Err(e) => {
                if !warned {
                    tracing::warn!(key, error = %e, "cannot follow the KV route set; retrying");
                    warned = true;
                }
                tokio::time::sleep(KV_RETRY).await;
                continue;
            }
        };
        warned = false;
        let mut first = true;
        loop {
            let ev = tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(e)) => event(e.revision, e.operation, e.value, false),
                    Some(Err(e)) => {
                        tracing::warn!(key, error = %e, "KV route set watch failed; following it again");
                        break;
                    }
                    None => break,
                },
                Some(()) = hangup(&mut hup) => match store.entry(&key).await {
                    Ok(Some(e)) => event(e.revision, e.operation, e.value, true),
                    Ok(None) => event(0, Operation::Delete, Bytes::new(), true),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "SIGHUP: cannot read the KV route set");
                        continue;
                    }
                },
            };
            let mut ev = ev;
            if std::mem::take(&mut first) {
                ev.older = older(&store, &key, ev.revision).await;
            }
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(KV_RETRY).await;
    }
}

/// The values of `key` older than `revision`, newest first (the bucket keeps a few).
async fn older(
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    revision: u64,
) -> Vec<(u64, Option<Bytes>)> {
    use async_nats::jetstream::kv::Operation;
    let Ok(mut history) = store.history(key).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(CHECK_TIMEOUT, history.next()).await {
        if e.revision < revision {
            out.push((
                e.revision,
                (e.operation == Operation::Put).then_some(e.value),
            ));
        }
        if out.len() > 64 {
            break;
        }
    }
    out.reverse();
    out
}

async fn hangup(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// One look: the (service, instance, declaration) of every instance that declares routes,
/// checked when new; `None` when NATS is not connected (nothing can be concluded).
async fn look(
    client: &async_nats::Client,
    registry: &super::declared::Registry,
    window: Duration,
) -> Option<Vec<(String, String, String)>> {
    use async_nats::connection::State;
    if client.connection_state() != State::Connected {
        return None;
    }
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.ok()?;
    client
        .publish_with_reply("$SRV.PING", inbox, Bytes::new())
        .await
        .ok()?;
    let deadline = tokio::time::Instant::now() + window;
    let mut found: Vec<(String, String, String)> = Vec::new();
    let mut per_service: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut read, mut bytes) = (0, 0usize);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
        read += 1;
        bytes += m.payload.len();
        if read > MAX_ANSWERS || bytes > MAX_LOOK_BYTES {
            break;
        }
        // Answers are untrusted (anyone may reply to the ping): a bounded size, a bounded
        // declaration, a bounded number of instances per service.
        if m.payload.len() > MAX_ANSWER_BYTES {
            continue;
        }
        let Ok(p) = serde_json::from_slice::<PingResponse>(&m.payload) else {
            continue;
        };
        let Some(v) = p.metadata.get(wire::METADATA_KEY) else {
            continue;
        };
        if v.len() > wire::MAX_METADATA_BYTES || !valid_name(&p.name) || !valid_name(&p.id) {
            continue;
        }
        let n = per_service.entry(p.name.clone()).or_default();
        if *n >= MAX_INSTANCES_PER_SERVICE {
            continue;
        }
        *n += 1;
        found.push((p.name, p.id, v.clone()));
    }
    drop(answers);
    if client.connection_state() != State::Connected {
        return None;
    }
    found.sort();
    found.dedup();
    let (mut known, new): (Vec<_>, Vec<_>) = found
        .into_iter()
        .partition(|(s, i, v)| registry.knows(s, i, v));
    let checks = new
        .into_iter()
        .take(MAX_CHECKS)
        .map(|(s, i, v)| async move { check(client, &s, &i, &v).await.then_some((s, i, v)) });
    known.extend(
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten(),
    );
    Some(known)
}

/// Whether instance `id` of `service` answers `value` on its own PING subject.
async fn check(client: &async_nats::Client, service: &str, id: &str, value: &str) -> bool {
    let subject = format!("$SRV.PING.{service}.{id}");
    match tokio::time::timeout(CHECK_TIMEOUT, client.request(subject, Bytes::new())).await {
        Ok(Ok(m)) => serde_json::from_slice::<PingResponse>(&m.payload).is_ok_and(|p| {
            p.name == service
                && p.id == id
                && p.metadata.get(wire::METADATA_KEY).map(String::as_str) == Some(value)
        }),
        _ => {
            tracing::debug!(
                service,
                id,
                "declared routes: the instance did not confirm on its own subject"
            );
            false
        }
    }
}
