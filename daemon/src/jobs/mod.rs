//! Scheduled runs: apps with `runMode = "job"` run to completion, on their `schedule` and
//! on `narunctl run`, instead of running continuously.
//!
//! **Owns** the jobs of this node: one task per job app ([`runner`]) that waits for the
//! next occurrence, decides what it does ([`plan`]: `concurrency`, missed runs at boot
//! with `startingDeadlineSec`), runs its attempts as instances (through
//! [`crate::instance::Host::spawn_instance`], so a job run gets everything a service run
//! gets: fetched and verified binary, user, capabilities, cgroup and limits, logs), and
//! reports every attempt as a status event with a [`narun_wire::runs::JobRun`]. A
//! `scope = "fleet"` occurrence first takes its KV lock ([`lock`]).
//!
//! **May call** [`crate::instance`] (a [`Host`] and its instances), [`crate::config`].
//! The node ([`crate::node`]) hands it specs and `narunctl run` requests; it never calls
//! the node.
//!
//! | file | what it holds |
//! |---|---|
//! | `plan.rs` | the pure decisions: next occurrence in a zone, missed runs, concurrency, retry backoff |
//! | `tz.rs` | time zones from the system's TZif files and POSIX TZ rules |
//! | `lock.rs` | the fleet lock of an occurrence (create-if-absent, renew, take over) |
//! | `runner.rs` | the task of one job app and the runs of its occurrences |
//!
//! # A run
//!
//! An attempt is an instance `<app>-<slot>` of the spec with `restart = "no"` and the
//! environment `NARUN_JOB_ID`, `NARUN_JOB_SCHEDULED_AT` and `NARUN_JOB_ATTEMPT`. Exit 0
//! is success; anything else (an exit code, a signal, a binary that cannot be fetched)
//! fails the attempt, and the next one starts after [`plan::retry_delay`] up to
//! `maxAttempts`. Slots are reused: a run takes the lowest slot no running run holds.
//!
//! The occurrence narund handled last is kept in `<data_dir>/jobs/<app>.last` (Unix
//! seconds), so an occurrence missed while narund was down runs once at its start if it
//! is at most `startingDeadlineSec` old. narund stopping (or a spec change) stops the
//! runs going on; they are not resumed.
//!
//! Built without the `scheduled-runs` feature, narund keeps this type (so the node needs
//! no `cfg`) but [`Jobs::apply`] refuses every job spec, naming the feature.

#[cfg(feature = "scheduled-runs")]
pub mod lock;
#[cfg(feature = "scheduled-runs")]
pub mod plan;
#[cfg(feature = "scheduled-runs")]
pub mod runner;
#[cfg(feature = "scheduled-runs")]
pub mod tz;

use crate::instance::Host;
use narun_spec::AppSpec;
use narun_wire::runs::{RunReply, RunRequest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The job apps of a node.
pub struct Jobs {
    client: async_nats::Client,
    apps: Mutex<BTreeMap<String, JobApp>>,
}

/// One job app's task.
#[cfg_attr(not(feature = "scheduled-runs"), allow(dead_code))]
struct JobApp {
    hash: String,
    requests: mpsc::UnboundedSender<(RunRequest, oneshot::Sender<RunReply>)>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl JobApp {
    async fn end(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl Jobs {
    pub fn new(client: async_nats::Client) -> Jobs {
        Jobs {
            client,
            apps: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether `app` is a job app here.
    pub fn has(&self, app: &str) -> bool {
        self.apps.lock().unwrap().contains_key(app)
    }

    /// Run the job `spec` here (`revision`: its KV revision). The same spec again changes
    /// nothing; another one stops the runs of the previous one first. Errors (a
    /// `timezone` this node does not have) are for the caller to report as an invalid spec.
    pub async fn apply(
        &self,
        host: &Arc<Host>,
        spec: Arc<AppSpec>,
        revision: u64,
    ) -> Result<(), String> {
        #[cfg(not(feature = "scheduled-runs"))]
        {
            let _ = (host, revision, &self.client);
            Err(format!(
                "runMode = \"job\" ({}): this narund was built without scheduled runs; \
                 build narund with the `scheduled-runs` cargo feature (docs/jobs.md)",
                spec.name
            ))
        }
        #[cfg(feature = "scheduled-runs")]
        {
            // A small file read (once per spec), off the runtime thread all the same.
            let name = spec.timezone.clone();
            let zone = tokio::task::spawn_blocking(move || tz::Zone::load(&name))
                .await
                .map_err(|e| format!("timezone: reading the zone failed: {e}"))?
                .map_err(|e| format!("timezone: {e}"))?;
            let hash = spec.run_hash();
            if self
                .apps
                .lock()
                .unwrap()
                .get(&spec.name)
                .is_some_and(|a| a.hash == hash)
            {
                return Ok(());
            }
            self.remove(&spec.name).await;
            let stop = CancellationToken::new();
            let (tx, rx) = mpsc::unbounded_channel();
            let r = runner::Runner::new(
                host.clone(),
                self.client.clone(),
                spec.clone(),
                revision,
                zone,
                stop.clone(),
            );
            tracing::info!(app = %spec.name, schedule = %spec.schedule, "job scheduled");
            let task = crate::spawn(r.run(rx));
            self.apps.lock().unwrap().insert(
                spec.name.clone(),
                JobApp {
                    hash,
                    requests: tx,
                    stop,
                    task,
                },
            );
            Ok(())
        }
    }

    /// Stop the job `app` (its runs going on are stopped) and forget it.
    pub async fn remove(&self, app: &str) {
        let old = self.apps.lock().unwrap().remove(app);
        if let Some(old) = old {
            old.end().await;
        }
    }

    /// Stop every job (narund's shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<JobApp> = std::mem::take(&mut *self.apps.lock().unwrap())
            .into_values()
            .collect();
        futures_util::future::join_all(all.into_iter().map(JobApp::end)).await;
    }

    /// `narunctl run`: start a run of `req.app` now; the reply says which, or why not.
    pub async fn run_now(&self, node_id: &str, req: RunRequest) -> RunReply {
        let mut reply = RunReply {
            node_id: node_id.to_string(),
            app: req.app.clone(),
            ..Default::default()
        };
        let valid_id = !req.id.is_empty()
            && req.id.len() <= 64
            && req
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_id {
            reply.error = format!(
                "bad run request: id {:?} must be 1 to 64 characters A-Z a-z 0-9 - _",
                req.id
            );
            return reply;
        }
        let tx = self
            .apps
            .lock()
            .unwrap()
            .get(&req.app)
            .map(|a| a.requests.clone());
        let Some(tx) = tx else {
            reply.error = format!(
                "app {} is not a job on node {node_id} (no spec with runMode = \"job\" selects this node)",
                req.app
            );
            return reply;
        };
        let (answer, rx) = oneshot::channel();
        if tx.send((req, answer)).is_err() {
            reply.error = "the job is being stopped".into();
            return reply;
        }
        rx.await.unwrap_or_else(|_| RunReply {
            error: "the job was stopped before it answered".into(),
            ..reply
        })
    }
}

/// `<data_dir>/jobs/<app>.last`.
pub fn last_path(data_dir: &Path, app: &str) -> PathBuf {
    data_dir
        .join("jobs")
        .join(format!("{}.last", crate::fetch::sanitize(app)))
}

/// The occurrence handled last, if recorded.
pub fn read_last(data_dir: &Path, app: &str) -> Option<i64> {
    std::fs::read_to_string(last_path(data_dir, app))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Record the occurrence handled last (write to a temporary file, then rename: a crash
/// leaves the old value or the new one).
pub fn write_last(data_dir: &Path, app: &str, secs: i64) {
    let path = last_path(data_dir, app);
    let tmp = path.with_extension("last.tmp");
    let res = std::fs::create_dir_all(path.parent().expect("a file in a directory"))
        .and_then(|_| std::fs::write(&tmp, format!("{secs}\n")))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        tracing::warn!(app, path = %path.display(), error = %e, "cannot record the last job run");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_run_round_trips() {
        let dir = std::env::temp_dir().join(format!("narun-jobs-last-{}", std::process::id()));
        assert_eq!(read_last(&dir, "a"), None);
        write_last(&dir, "a", 1_700_000_000);
        assert_eq!(read_last(&dir, "a"), Some(1_700_000_000));
        write_last(&dir, "a", 1_700_000_060);
        assert_eq!(read_last(&dir, "a"), Some(1_700_000_060));
        std::fs::write(last_path(&dir, "b"), "garbage").unwrap();
        assert_eq!(read_last(&dir, "b"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
