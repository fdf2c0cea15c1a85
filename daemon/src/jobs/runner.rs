//! The task of one job app: it waits for the next occurrence (or a `narunctl run`),
//! applies `concurrency`, and runs each occurrence's attempts in a task of its own.

use super::lock::{self, Acquired, Held};
use super::plan::{self, Decision};
use super::tz::Zone;
use crate::instance::{Host, InstanceHandle};
use narun_spec::{AppSpec, Cron, EnvVar, RestartPolicy, Scope};
use narun_wire::events::{StatusEvent, now_rfc3339};
use narun_wire::names;
use narun_wire::runs::{JOB_LOCKS, JobRun, LOCK_TTL, RunReply, RunRequest, Trigger};
use narun_wire::status::{InstanceStatus, Reason};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// `NARUN_JOB_ID`: the run's id ([`JobRun::id`]).
pub const ENV_JOB_ID: &str = "NARUN_JOB_ID";
/// `NARUN_JOB_SCHEDULED_AT`: the occurrence, RFC 3339 UTC.
pub const ENV_JOB_SCHEDULED_AT: &str = "NARUN_JOB_SCHEDULED_AT";
/// `NARUN_JOB_ATTEMPT`: 1-based.
pub const ENV_JOB_ATTEMPT: &str = "NARUN_JOB_ATTEMPT";

/// An occurrence this late (the wall clock jumped, the node was suspended) is a missed
/// one: it runs only within `startingDeadlineSec`, and only the latest.
const LATE_SEC: i64 = 60;
/// The longest sleep between two looks at the wall clock (it may be set at any time).
const RECHECK: Duration = Duration::from_secs(30);

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What every run of the app shares.
struct Ctx {
    host: Arc<Host>,
    client: async_nats::Client,
    spec: Arc<AppSpec>,
    hash: String,
    revision: u64,
    /// The runner's stop (the spec changed, narund stops): the runs' tokens are its children.
    parent: CancellationToken,
}

pub struct Runner {
    ctx: Arc<Ctx>,
    zone: Zone,
    cron: Option<Cron>,
    stop: CancellationToken,
    runs: JoinSet<u32>,
    /// Running runs by slot: the token that stops each.
    active: BTreeMap<u32, CancellationToken>,
}

impl Runner {
    pub fn new(
        host: Arc<Host>,
        client: async_nats::Client,
        spec: Arc<AppSpec>,
        revision: u64,
        zone: Zone,
        stop: CancellationToken,
    ) -> Runner {
        Runner {
            cron: spec.job_cron(),
            ctx: Arc::new(Ctx {
                host,
                client,
                hash: spec.run_hash(),
                spec,
                revision,
                parent: stop.clone(),
            }),
            zone,
            stop,
            runs: JoinSet::new(),
            active: BTreeMap::new(),
        }
    }

    fn app(&self) -> &str {
        &self.ctx.spec.name
    }

    /// The task: until stopped, run the occurrences and the requests.
    pub async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<(RunRequest, oneshot::Sender<RunReply>)>,
    ) {
        let data_dir = self.ctx.host.settings.data_dir.clone();
        let now = unix_now_ms().div_euclid(1000);
        let last = super::read_last(&data_dir, self.app());
        let mut after = now;
        if let Some(cron) = &self.cron {
            match plan::missed(
                cron,
                &self.zone,
                last,
                now,
                self.ctx.spec.starting_deadline_sec,
            ) {
                Some(t) => {
                    tracing::info!(app = self.app(), occurrence = %plan::rfc3339(t), "running an occurrence missed while narund was down");
                    super::write_last(&data_dir, self.app(), now);
                    self.occurrence(t, Trigger::Missed).await;
                }
                None => super::write_last(&data_dir, self.app(), now),
            }
        }
        loop {
            let next = self
                .cron
                .as_ref()
                .and_then(|c| plan::next_occurrence(c, &self.zone, after));
            let wait = next.map_or(RECHECK, |n| {
                Duration::from_millis((n * 1000 - unix_now_ms()).max(0) as u64).min(RECHECK)
            });
            tokio::select! {
                _ = self.stop.cancelled() => break,
                req = requests.recv() => {
                    let Some((req, answer)) = req else { break };
                    let reply = self.run_now(req).await;
                    let _ = answer.send(reply);
                }
                Some(done) = self.runs.join_next(), if !self.runs.is_empty() => {
                    if let Ok(slot) = done {
                        self.active.remove(&slot);
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    let now_ms = unix_now_ms();
                    let Some(n) = next.filter(|n| n * 1000 <= now_ms) else { continue };
                    let now = now_ms.div_euclid(1000);
                    super::write_last(&data_dir, self.app(), n.max(now));
                    if now - n > LATE_SEC {
                        // The clock jumped or the node slept: the occurrences in between
                        // are missed ones.
                        let cron = self.cron.clone().expect("a next occurrence has a cron");
                        after = now;
                        if let Some(t) = plan::missed(&cron, &self.zone, Some(n - 1), now, self.ctx.spec.starting_deadline_sec) {
                            self.occurrence(t, Trigger::Missed).await;
                        } else {
                            tracing::warn!(app = self.app(), occurrence = %plan::rfc3339(n), "occurrence skipped: the wall clock is past it by more than startingDeadlineSec");
                        }
                    } else {
                        after = n;
                        self.occurrence(n, Trigger::Schedule).await;
                    }
                }
            }
        }
        for t in self.active.values() {
            t.cancel();
        }
        while self.runs.join_next().await.is_some() {}
    }

    /// An occurrence of the schedule (or a missed one).
    async fn occurrence(&mut self, t: i64, trigger: Trigger) {
        let job = JobRun {
            id: t.to_string(),
            scheduled_at: plan::rfc3339(t),
            trigger,
            max_attempts: self.ctx.spec.job_max_attempts(),
            ..Default::default()
        };
        if let Err(e) = self.start(job).await {
            tracing::info!(app = self.app(), occurrence = %plan::rfc3339(t), "{e}");
        }
    }

    /// `narunctl run`.
    async fn run_now(&mut self, req: RunRequest) -> RunReply {
        let now = unix_now_ms().div_euclid(1000);
        let job = JobRun {
            id: req.id.clone(),
            scheduled_at: plan::rfc3339(now),
            trigger: Trigger::Manual,
            max_attempts: self.ctx.spec.job_max_attempts(),
            ..Default::default()
        };
        let mut reply = RunReply {
            node_id: self.ctx.host.settings.node_id.clone(),
            app: req.app,
            ..Default::default()
        };
        match self.start(job).await {
            Ok(()) => reply.job_id = req.id,
            Err(e) => reply.error = e,
        }
        reply
    }

    /// Apply `concurrency` and start a run of `job`; `Err` says why it does not run.
    async fn start(&mut self, mut job: JobRun) -> Result<(), String> {
        // Runs that ended since the last look no longer count.
        while let Some(Ok(slot)) = self.runs.try_join_next() {
            self.active.remove(&slot);
        }
        match plan::decide(self.ctx.spec.job_concurrency(), self.active.len()) {
            Decision::Skip => {
                job.outcome = "skipped".into();
                let why = format!(
                    "skipped: a run is still going and concurrency = forbid ({} running)",
                    self.active.len()
                );
                self.ctx.event(
                    &self.ctx.instance_id(self.lowest_free_slot()),
                    InstanceStatus::Stopped,
                    None,
                    None,
                    &why,
                    job,
                );
                return Err(why);
            }
            Decision::ReplaceThenStart => {
                for t in self.active.values() {
                    t.cancel();
                }
                while let Some(done) = self.runs.join_next().await {
                    if let Ok(slot) = done {
                        self.active.remove(&slot);
                    }
                }
                self.active.clear();
            }
            Decision::Start => {}
        }
        let slot = self.lowest_free_slot();
        let token = self.stop.child_token();
        self.active.insert(slot, token.clone());
        let ctx = self.ctx.clone();
        self.runs.spawn(async move {
            ctx.run(slot, job, token).await;
            slot
        });
        Ok(())
    }

    fn lowest_free_slot(&self) -> u32 {
        (0..).find(|s| !self.active.contains_key(s)).unwrap_or(0)
    }
}

impl Ctx {
    fn instance_id(&self, slot: u32) -> String {
        format!("{}-{slot}", self.spec.name)
    }

    /// Publish a job event on `status.<app>.<node>`.
    fn event(
        &self,
        instance: &str,
        status: InstanceStatus,
        exit_code: Option<i32>,
        reason: Option<Reason>,
        error: &str,
        mut job: JobRun,
    ) {
        let node = &self.host.settings.node_id;
        job.log_subject = names::log_subject(&self.spec.name, node);
        job.instance = instance.to_string();
        tracing::info!(app = %self.spec.name, job = %job.id, attempt = job.attempt, outcome = %job.outcome, exit_code, "job run");
        let ev = StatusEvent {
            instance_id: instance.to_string(),
            node_id: node.clone(),
            status,
            exit_code,
            error: error.to_string(),
            time: now_rfc3339(),
            reason,
            app_name: self.spec.name.clone(),
            tag: self.spec.tag.clone(),
            config_hash: self.hash.clone(),
            job: Some(job),
            ..Default::default()
        };
        let subject = names::status_subject(&self.spec.name, node);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.host.publish(subject, payload);
    }

    /// The spec one attempt runs: no restart, the job's environment.
    fn attempt_spec(&self, job: &JobRun) -> Arc<AppSpec> {
        let mut s = (*self.spec).clone();
        s.restart = RestartPolicy::No;
        for (name, value) in [
            (ENV_JOB_ID, job.id.clone()),
            (ENV_JOB_SCHEDULED_AT, job.scheduled_at.clone()),
            (ENV_JOB_ATTEMPT, job.attempt.to_string()),
        ] {
            s.env.retain(|e| e.name != name);
            s.env.push(EnvVar {
                name: name.into(),
                value,
                value_from_secret: String::new(),
            });
        }
        Arc::new(s)
    }

    /// One run: the fleet lock (scope = fleet), then the attempts.
    async fn run(self: Arc<Self>, slot: u32, mut job: JobRun, stop: CancellationToken) {
        let node = self.host.settings.node_id.clone();
        let mut held: Option<(async_nats::jetstream::kv::Store, Held)> = None;
        let mut first = 1;
        if self.spec.job_scope() == Scope::Fleet {
            let js = async_nats::jetstream::new(self.client.clone());
            let kv = tokio::select! {
                kv = async {
                    loop {
                        match JOB_LOCKS.ensure(&js).await {
                            Ok(kv) => break kv,
                            Err(e) => {
                                tracing::warn!(app = %self.spec.name, error = %e, "job lock bucket; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                } => kv,
                _ = stop.cancelled() => return,
            };
            let key = narun_wire::runs::lock_key(&self.spec.name, &job.id);
            let got = tokio::select! {
                a = lock::acquire(&kv, &key, &node) => a,
                _ = stop.cancelled() => return,
            };
            match got {
                Acquired::Theirs => {
                    tracing::debug!(app = %self.spec.name, job = %job.id, "another node ran this occurrence");
                    return;
                }
                Acquired::Mine(h) => {
                    first = h.first_attempt;
                    held = Some((kv, h));
                }
            }
        }
        let instance = self.instance_id(slot);
        let max = job.max_attempts.max(1);
        if first > max {
            job.attempt = first - 1;
            job.outcome = "failed".into();
            self.event(
                &instance,
                InstanceStatus::Failed,
                None,
                None,
                "the node that ran the last attempt stopped before it ended",
                job,
            );
            self.release(&mut held, &node, first - 1).await;
            return;
        }
        for attempt in first..=max {
            job.attempt = attempt;
            job.duration_ms = None;
            if let Some((kv, h)) = held.as_mut() {
                lock::write(kv, h, &node, attempt, false).await;
            }
            job.outcome = "started".into();
            self.event(
                &instance,
                InstanceStatus::Running,
                None,
                None,
                "",
                job.clone(),
            );
            let began = Instant::now();
            let h = self
                .host
                .spawn_instance(self.attempt_spec(&job), slot, self.revision, None);
            let ended = self
                .wait(&mut held, &node, attempt, &stop, wait_ended(&h))
                .await;
            job.duration_ms = Some(began.elapsed().as_millis() as u64);
            let Some(()) = ended else {
                h.stop().await;
                job.duration_ms = Some(began.elapsed().as_millis() as u64);
                // Only a `replace` cancels a run without cancelling the runner.
                let replaced = !self.parent.is_cancelled();
                job.outcome = if replaced { "replaced" } else { "stopped" }.into();
                let snap = h.snapshot();
                self.event(
                    &instance,
                    InstanceStatus::Stopped,
                    snap.exit_code,
                    snap.reason,
                    "stopped before it ended",
                    job,
                );
                if replaced {
                    self.release(&mut held, &node, attempt).await;
                }
                return;
            };
            let snap = h.snapshot();
            let ok = snap.exit_code == Some(0);
            if ok {
                job.outcome = "succeeded".into();
                self.event(
                    &instance,
                    InstanceStatus::Stopped,
                    Some(0),
                    snap.reason,
                    "",
                    job.clone(),
                );
                break;
            }
            let error = if snap.error.is_empty() {
                "the run failed".to_string()
            } else {
                snap.error.clone()
            };
            if attempt == max {
                job.outcome = "failed".into();
                self.event(
                    &instance,
                    InstanceStatus::Failed,
                    snap.exit_code,
                    snap.reason,
                    &format!("{error} (attempt {attempt} of {max}: no attempt left)"),
                    job.clone(),
                );
                break;
            }
            let delay = plan::retry_delay(attempt);
            job.outcome = "retrying".into();
            self.event(
                &instance,
                InstanceStatus::Backoff,
                snap.exit_code,
                snap.reason,
                &format!(
                    "{error} (attempt {attempt} of {max}; next in {} s)",
                    delay.as_secs()
                ),
                job.clone(),
            );
            let slept = self
                .wait(&mut held, &node, attempt, &stop, tokio::time::sleep(delay))
                .await;
            if slept.is_none() {
                return;
            }
        }
        self.release(&mut held, &node, job.attempt).await;
    }

    /// Wait for `fut` while renewing the fleet lock; `None` when `stop` came first.
    async fn wait<F: std::future::Future>(
        &self,
        held: &mut Option<(async_nats::jetstream::kv::Store, Held)>,
        node: &str,
        attempt: u32,
        stop: &CancellationToken,
        fut: F,
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        let mut renew = tokio::time::interval(LOCK_TTL / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = stop.cancelled() => return None,
                _ = renew.tick(), if held.is_some() => {
                    if let Some((kv, h)) = held.as_mut() {
                        lock::write(kv, h, node, attempt, false).await;
                    }
                }
            }
        }
    }

    /// The occurrence is over: mark its fleet lock `done`.
    async fn release(
        &self,
        held: &mut Option<(async_nats::jetstream::kv::Store, Held)>,
        node: &str,
        attempt: u32,
    ) {
        if let Some((kv, h)) = held.as_mut() {
            lock::write(kv, h, node, attempt, true).await;
        }
    }
}

/// Until the instance's task has ended (the attempt's process exited or never started).
async fn wait_ended(h: &InstanceHandle) {
    // An attempt may run for ever: no bound here, the runner's stop ends it.
    while h
        .wait_for(Duration::from_secs(3600), |s| s.ended)
        .await
        .is_err()
    {}
}
