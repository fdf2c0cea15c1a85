//! Job apps (`runMode = "job"`) on this node, and `narunctl run` requests.
//!
//! A job spec is not scaled into instances: [`Node::apply`] hands it to
//! [`crate::jobs::Jobs`], which runs it on its schedule (see `docs/jobs.md`). `nodes`
//! selects where it runs; `replicas` does not matter (one run per occurrence per node,
//! more only with `concurrency = "allow"`).
//!
//! `narunctl run APP` is a core NATS request on `narun.control.<node>.run`
//! ([`narun_wire::runs::CONTROL_RUN`]) with a [`RunRequest`]; the reply is a
//! [`narun_wire::runs::RunReply`]. Like `restart`, who may send it is a matter of the
//! NATS account's permissions on `narun.control.>`.

use super::Node;
use narun_spec::AppSpec;
use narun_wire::names;
use narun_wire::runs::{CONTROL_RUN, RunReply, RunRequest};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Node {
    /// Apply a job spec: stop the instances of a service of that name, then schedule the
    /// job here if the spec selects this node (or stop it if it no longer does).
    pub(crate) async fn apply_job(&self, spec: AppSpec, revision: u64) {
        let _timer = self.inner.host.counters.reconciles.time();
        let name = spec.name.clone();
        let here = spec.desired_replicas(
            &self.inner.host.settings.node_id,
            &self.inner.host.live().labels,
        );
        let stop = self
            .inner
            .apps
            .lock()
            .unwrap()
            .get(&name)
            .map_or(spec.stop_timeout_sec, |a| a.spec.stop_timeout_sec);
        let _serial = self
            .serial(
                format!("the apply of job {name}"),
                super::rollout::stop_budget(stop.max(spec.stop_timeout_sec)),
            )
            .await;
        self.inner.host.local.persist_spec(&spec);
        let service = self.inner.apps.lock().unwrap().remove(&name);
        if let Some(run) = service {
            tracing::info!(app = %name, "the service became a job: stopping its instances");
            futures_util::future::join_all(run.instances.values().map(|h| h.stop())).await;
        }
        if here == 0 {
            self.inner.jobs.remove(&name).await;
        } else if let Err(e) = self
            .inner
            .jobs
            .apply(&self.inner.host, Arc::new(spec), revision)
            .await
        {
            self.report_invalid(&name, &e);
        }
        self.inner.host.changed.notify_waiters();
    }

    /// Answer one `run` request payload.
    pub async fn answer_run(&self, payload: &[u8]) -> RunReply {
        let node_id = &self.inner.host.settings.node_id;
        match serde_json::from_slice::<RunRequest>(payload) {
            Ok(req) if !req.app.is_empty() => self.inner.jobs.run_now(node_id, req).await,
            Ok(_) => RunReply {
                node_id: node_id.clone(),
                error: "bad run request: \"app\" is empty".into(),
                ..Default::default()
            },
            Err(e) => RunReply {
                node_id: node_id.clone(),
                error: format!(
                    "bad run request: {e} (expected {{\"app\": \"NAME\", \"id\": \"ID\"}})"
                ),
                ..Default::default()
            },
        }
    }
}

/// Serve `narun.control.<node>.run` until `stop` (`control::serve_requests`: subscribing
/// retried, each request answered in its own task).
pub async fn serve(node: Node, client: async_nats::Client, stop: CancellationToken) {
    let subject = names::control_subject(&node.settings().node_id, CONTROL_RUN);
    super::control::serve_requests(
        node,
        client,
        subject,
        "run",
        stop,
        |node, payload| async move {
            let reply = node.answer_run(&payload).await;
            if !reply.error.is_empty() {
                tracing::info!(app = %reply.app, error = %reply.error, "run request refused");
            }
            reply
        },
    )
    .await
}
