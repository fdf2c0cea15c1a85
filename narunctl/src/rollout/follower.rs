//! [`Follower`]: the NATS side of `deploy --wait`. It subscribes to the app's status
//! events and log lines before the spec is written, watches the node heartbeats, feeds
//! a [`Tracker`] and draws it on a [`Screen`] until the verdict is in or time runs out.

use super::screen::Screen;
use super::tracker::{Tracker, Verdict};
use crate::session::Session;
use anyhow::{Result, anyhow};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use narun_spec::AppSpec;
use narun_wire::events::{LogLine, NodeState, StatusEvent};
use narun_wire::jetstream::NODE_STATES;
use narun_wire::names;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// After a failure, how long to wait for narund's own log line about it (published on
/// another path than the status event, so it may arrive a little later).
const LOG_GRACE: Duration = Duration::from_secs(1);

/// Subscriptions opened before the spec is written.
pub struct Follower {
    js: jetstream::Context,
    /// `--timeout`, for opening the heartbeat watch.
    op_timeout: Duration,
    /// `--stream-replicas`, for creating `narun-releases`.
    replicas: Option<usize>,
    status: async_nats::Subscriber,
    logs: async_nats::Subscriber,
    app: String,
}

impl Follower {
    /// Subscribe to `status.<app>.*` and `logs.<app>.*` and make sure the server has
    /// registered both (a round trip) before the caller writes the spec.
    pub async fn subscribe(session: &Session, app: &str) -> Result<Follower> {
        let (client, timeout) = (&session.client, session.timeout);
        let status_subject = names::status_subject(app, "*");
        let log_subject = names::log_subject(app, "*");
        let status = client
            .subscribe(status_subject.clone())
            .await
            .map_err(|e| anyhow!("subscribing to {status_subject}: {e}"))?;
        let logs = client
            .subscribe(log_subject.clone())
            .await
            .map_err(|e| anyhow!("subscribing to {log_subject}: {e}"))?;
        if !narun_wire::connect::sync_with_server(client, timeout).await {
            return Err(anyhow!(
                "the NATS server did not confirm the subscriptions to {status_subject} within {timeout:?}"
            ));
        }
        Ok(Follower {
            js: session.js.clone(),
            op_timeout: timeout,
            replicas: session.replicas,
            status,
            logs,
            app: app.to_string(),
        })
    }

    /// Follow the rollout of `spec` (as written to `app-configs` by `verb`: deploy, scale,
    /// rollback) for at most `timeout`.
    pub async fn wait(mut self, verb: &str, spec: AppSpec, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut tracker = Tracker::new(spec);
        let tag = tracker.spec().tag.clone();
        let mut screen = Screen::new(std::io::stdout().is_terminal());
        screen.title(format!(
            "waiting up to {timeout:?} for {}:{tag} (spec {}) to be ready",
            self.app,
            tracker.hash()
        ));
        let mut watch = open_node_watch(&self.js, self.op_timeout).await;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_open = Instant::now();
        let mut failed_at: Option<Instant> = None;
        loop {
            tokio::select! {
                m = self.status.next() => {
                    let Some(m) = m else { return Err(anyhow!("the NATS subscription to status.{}.* ended", self.app)) };
                    if let Ok(ev) = serde_json::from_slice::<StatusEvent>(&m.payload) {
                        tracker.on_status(ev, Instant::now());
                    }
                }
                m = self.logs.next() => {
                    let Some(m) = m else { return Err(anyhow!("the NATS subscription to logs.{}.* ended", self.app)) };
                    if let Ok(l) = serde_json::from_slice::<LogLine>(&m.payload) {
                        tracker.on_log(&l);
                    }
                }
                e = next_entry(&mut watch) => match e {
                    Some(Ok(e)) => {
                        let state = (e.operation == kv::Operation::Put)
                            .then(|| serde_json::from_slice::<NodeState>(&e.value).ok())
                            .flatten();
                        tracker.on_node(&e.key, state);
                    }
                    // The watch broke (reconnect, bucket deleted): open it again on a tick.
                    _ => watch = None,
                },
                _ = tick.tick() => {
                    if watch.is_none() && last_open.elapsed() >= Duration::from_secs(1) {
                        last_open = Instant::now();
                        watch = open_node_watch(&self.js, self.op_timeout).await;
                    }
                }
            }
            let now = Instant::now();
            screen.draw(&tracker.rows(now), now.duration_since(started));
            match tracker.verdict(now) {
                Verdict::Ready => {
                    screen.finish();
                    let n = tracker.selected().len();
                    println!(
                        "{}:{tag} is ready on {n} instance(s) after {:.2}s",
                        self.app,
                        started.elapsed().as_secs_f64()
                    );
                    // Remembered for `apps rollback` (crate::releases); a failure to
                    // write it does not undo a good rollout.
                    if let Err(e) = crate::releases::record(
                        &self.js,
                        tracker.spec(),
                        self.op_timeout,
                        self.replicas,
                    )
                    .await
                    {
                        eprintln!(
                            "warning: could not remember {}:{tag} as a good release: {e:#}",
                            self.app
                        );
                    }
                    return Ok(());
                }
                Verdict::Failed => {
                    let since = *failed_at.get_or_insert(now);
                    if tracker.failures_logged() || now.duration_since(since) >= LOG_GRACE {
                        screen.finish();
                        return Err(anyhow!(
                            "{verb} of {}:{tag} failed:\n{}",
                            self.app,
                            tracker.report(now, None)
                        ));
                    }
                }
                Verdict::Pending => {}
            }
            if now >= deadline {
                screen.finish();
                return Err(anyhow!(
                    "{verb} of {}:{tag} is not ready:\n{}",
                    self.app,
                    tracker.report(now, Some(timeout))
                ));
            }
        }
    }
}

type NodeWatch = kv::Watch;

async fn open_node_watch(js: &jetstream::Context, timeout: Duration) -> Option<NodeWatch> {
    let store = tokio::time::timeout(timeout, NODE_STATES.open(js))
        .await
        .ok()?
        .ok()??;
    tokio::time::timeout(timeout, store.watch_with_history(">"))
        .await
        .ok()?
        .ok()
}

async fn next_entry(watch: &mut Option<NodeWatch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
