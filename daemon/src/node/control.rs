//! Operator requests to this node: core NATS request-reply on
//! `narun.control.<node_id>.<verb>` ([`narun_wire::names::control_subject`]).
//!
//! The specs in `app-configs` say *what* runs; some operator actions are not a change of
//! the spec and need the node itself to act. The only one so far is **restart**
//! (`narunctl apps restart NAME`), which means what `systemctl restart` means:
//!
//! ```text
//! request  narun.control.node-1.restart   {"app": "hello"}            ("instance": "hello-1" optional)
//! reply                                   {"node_id": "node-1", "app": "hello",
//!                                          "restarted": ["hello-0", "hello-1"]}   (+ "error": "…")
//! ```
//!
//! For each instance of the app on this node, in index order and **one at a time**:
//!
//! 1. an intentional stop through the instance's ordinary stop path ([`InstanceHandle::stop`]:
//!    `stopSignal`, `stopTimeoutSec`, then `cgroup.kill`), published as `stopping`/`stopped`;
//! 2. a fresh start of the same spec at the same index (a new instance run: new run id,
//!    new pid, new cgroup), published as `starting`/`running`;
//! 3. a wait until the new run is ready, with the rule the rolling replace uses
//!    (`READY=1` with `notify = true`, else `running` for `settleSec`), before the next
//!    instance is touched, so an app with two replicas always has one serving.
//!
//! A restart is not a crash: the new run starts with a clean restart counter, backoff
//! and start-limit window (it is a new run of the instance task). If an instance does
//! not come back, the remaining ones are left alone and the reply's `error` says which
//! one and why (its own restart policy still applies to it). The restart holds the
//! node's apply lock, so it never interleaves with a spec being applied, a delete
//! or narund's shutdown; two restarts of the same app run one after the other.
//!
//! Errors are answers, never crashes: an unknown app, an app with no instance here, an
//! unknown instance or a request that is not JSON each get a reply with `error` set.

use super::Node;
use crate::instance::InstanceHandle;
use futures_util::StreamExt;
use narun_wire::events::{RestartReply, RestartRequest};
use narun_wire::names;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Node {
    /// Restart the instances of `app` on this node (only `instance` when given), one at
    /// a time, each stopped and started again and waited for until ready (see the
    /// module docs). Serialised with [`Node::apply`].
    pub async fn restart_app(&self, app: &str, instance: Option<&str>) -> RestartReply {
        let mut reply = RestartReply {
            node_id: self.inner.host.settings.node_id.clone(),
            app: app.to_string(),
            ..Default::default()
        };
        let budget = {
            let apps = self.inner.apps.lock().unwrap();
            apps.get(app).map_or(Duration::from_secs(30), |a| {
                super::rollout::apply_budget(&a.spec, a.instances.len() as u32)
            })
        };
        let _serial = self.serial(format!("the restart of {app}"), budget).await;
        let handles: Vec<InstanceHandle> = {
            let apps = self.inner.apps.lock().unwrap();
            match apps.get(app) {
                None => {
                    reply.error = format!(
                        "app {app} is not deployed on node {} (no spec selects this node)",
                        reply.node_id
                    );
                    return reply;
                }
                Some(a) => a.instances.values().cloned().collect(),
            }
        };
        let all: Vec<String> = handles.iter().map(|h| h.instance_id.clone()).collect();
        let handles: Vec<InstanceHandle> = match instance {
            Some(id) => handles
                .into_iter()
                .filter(|h| h.instance_id == id)
                .collect(),
            None => handles,
        };
        if handles.is_empty() {
            reply.error = match instance {
                Some(id) => format!(
                    "{id} is not an instance of {app} on node {} (it has: {})",
                    reply.node_id,
                    if all.is_empty() {
                        "none".to_string()
                    } else {
                        all.join(", ")
                    }
                ),
                None => format!(
                    "app {app} has no instances on node {} (its spec selects no replica here)",
                    reply.node_id
                ),
            };
            return reply;
        }
        tracing::info!(app, instances = ?handles.iter().map(|h| &h.instance_id).collect::<Vec<_>>(), "restart requested");
        let count = handles.len();
        for (n, old) in handles.into_iter().enumerate() {
            old.stop().await;
            // The spec this instance ran (after a rolled-back rollout it may be older than
            // the app's current spec): a restart changes nothing but the run.
            let new = self.start_instance(old.spec.clone(), old.index);
            self.put_instance(app, new.clone());
            self.inner.host.changed.notify_waiters();
            match super::rollout::wait_settled(&new, &self.inner.liveness).await {
                Ok(()) => {
                    tracing::info!(instance = %new.instance_id, "restarted");
                    reply.restarted.push(new.instance_id.clone());
                }
                Err(why) => {
                    tracing::warn!(instance = %new.instance_id, %why, "did not come back after a restart");
                    let left = count - n - 1;
                    reply.error = format!(
                        "{} did not come back after the restart ({why}){}",
                        new.instance_id,
                        if left > 0 {
                            format!("; {left} later instance(s) were not restarted")
                        } else {
                            String::new()
                        }
                    );
                    break;
                }
            }
        }
        self.inner.host.changed.notify_waiters();
        reply
    }

    /// Answer one `restart` request payload.
    async fn answer_restart(&self, payload: &[u8]) -> RestartReply {
        match serde_json::from_slice::<RestartRequest>(payload) {
            Ok(req) if !req.app.is_empty() => {
                let instance = (!req.instance.is_empty()).then_some(req.instance.as_str());
                self.restart_app(&req.app, instance).await
            }
            Ok(_) => RestartReply {
                node_id: self.inner.host.settings.node_id.clone(),
                error: "bad restart request: \"app\" is empty".into(),
                ..Default::default()
            },
            Err(e) => RestartReply {
                node_id: self.inner.host.settings.node_id.clone(),
                error: format!("bad restart request: {e} (expected {{\"app\": \"NAME\"}})"),
                ..Default::default()
            },
        }
    }
}

/// Serve the restart requests of this node (`narun.control.<node>.restart`) until `stop`
/// ([`serve_requests`]): a restart may take as long as its instances need to stop and
/// become ready again.
pub async fn run(node: Node, client: async_nats::Client, stop: CancellationToken) {
    let subject = names::control_subject(&node.settings().node_id, names::CONTROL_RESTART);
    serve_requests(
        node,
        client,
        subject,
        "restart",
        stop,
        |node, payload| async move {
            let reply = node.answer_restart(&payload).await;
            if !reply.error.is_empty() {
                tracing::warn!(app = %reply.app, error = %reply.error, "restart request failed");
            }
            reply
        },
    )
    .await
}

/// Requests of one kind (restart, run, wake) handled at once on a node; more are refused
/// with a "busy" reply until one ends (a flood of requests cannot grow narund's tasks).
pub const IN_FLIGHT: usize = 64;

/// The reply to a request refused because [`IN_FLIGHT`] are being handled (JSON that
/// every reply type of `narun.control` reads: `node_id`, an empty `app` and `error`).
pub fn busy_reply(node_id: &str, what: &str) -> Vec<u8> {
    refusal(
        node_id,
        format!(
            "node {node_id} is busy: {IN_FLIGHT} {what} requests are in progress; try again when they end"
        ),
    )
}

/// A reply that every reply type of `narun.control` reads, saying `error`.
fn refusal(node_id: &str, error: String) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"node_id": node_id, "app": "", "error": error}))
        .unwrap_or_default()
}

/// Serve the requests on `subject` (operator requests to this node: restart, run) until
/// `stop` is cancelled. Subscribing is retried (250 ms, doubling to 30 s); once subscribed,
/// async-nats re-subscribes by itself after reconnects. Each request is handled by
/// `answer` in its own task, at most [`IN_FLIGHT`] at once (others get [`busy_reply`]),
/// and its reply (JSON) sent to the request's reply subject; requests without one are
/// handled and not answered. `what` names them in the log.
///
/// Generic only in this wrapper: the loop ([`serve_answers`]) is compiled once for all
/// request kinds (binary size: docs/benchmarks.md, "Binary size, s32").
pub(crate) fn serve_requests<R, F, Fut>(
    node: Node,
    client: async_nats::Client,
    subject: String,
    what: &'static str,
    stop: CancellationToken,
    answer: F,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    R: serde::Serialize + Send + 'static,
    F: Fn(Node, bytes::Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let answer: Answer = Arc::new(move |node, payload| {
        let reply = answer(node, payload);
        Box::pin(async move { serde_json::to_vec(&reply.await).unwrap_or_default() })
    });
    serve_answers(node, client, subject, what, stop, answer)
}

/// An answer to one request: its reply, as JSON.
type Answer = Arc<dyn Fn(Node, bytes::Bytes) -> crate::BoxedTask<Vec<u8>> + Send + Sync>;

/// [`serve_requests`]' loop.
async fn serve_answers(
    node: Node,
    client: async_nats::Client,
    subject: String,
    what: &'static str,
    stop: CancellationToken,
    answer: Answer,
) {
    let mut delay = Duration::from_millis(250);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let sub = tokio::select! {
            s = client.subscribe(subject.clone()) => s,
            _ = stop.cancelled() => return,
        };
        match sub {
            Ok(mut sub) => {
                tracing::debug!(%subject, "serving {what} requests");
                delay = Duration::from_millis(250);
                loop {
                    let msg = tokio::select! {
                        m = sub.next() => m,
                        _ = stop.cancelled() => return,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%subject, "{IN_FLIGHT} {what} requests in progress: refusing another");
                        if let Some(to) = msg.reply {
                            let body = busy_reply(&node.settings().node_id, what);
                            let _ = client.publish(to, body.into()).await;
                        }
                        continue;
                    };
                    let node_id = node.settings().node_id.clone();
                    let (node, client, stop) = (node.clone(), client.clone(), stop.clone());
                    let reply = answer(node, msg.payload);
                    crate::spawn(async move {
                        let _slot = slot;
                        // narund's shutdown does not wait for requests queued behind the
                        // apply lock (a restart waiting for its turn gives up).
                        let body = tokio::select! {
                            body = reply => body,
                            _ = stop.cancelled() => refusal(
                                &node_id,
                                format!("narund on node {node_id} is shutting down: the {what} request was not carried out (or not to its end)"),
                            ),
                        };
                        if let Some(to) = msg.reply
                            && let Err(e) = client.publish(to, body.into()).await
                        {
                            tracing::warn!(error = %e, "cannot send the {what} reply");
                        }
                    });
                }
                tracing::warn!(%subject, "{what} subscription ended; subscribing again");
            }
            Err(e) => {
                tracing::warn!(%subject, error = %e, retry_in = ?delay, "cannot subscribe to {what} requests");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use narun_wire::events::{RestartReply, WakeReply};
    use narun_wire::runs::RunReply;

    #[test]
    fn the_busy_reply_reads_as_every_reply_type() {
        let b = super::busy_reply("n1", "restart");
        let r: RestartReply = serde_json::from_slice(&b).unwrap();
        assert_eq!(r.node_id, "n1");
        assert!(
            r.error.contains("node n1 is busy: 64 restart requests"),
            "{r:?}"
        );
        let w: WakeReply = serde_json::from_slice(&b).unwrap();
        assert!(w.error.contains("busy"), "{w:?}");
        let run: RunReply = serde_json::from_slice(&b).unwrap();
        assert!(
            run.error.contains("busy") && run.job_id.is_empty(),
            "{run:?}"
        );
    }
}
