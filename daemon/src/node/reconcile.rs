//! Reconciliation: from the specs in the `app-configs` KV bucket to running instances.
//!
//! [`run`] is narund's control loop. It never gives up: while NATS is unreachable it
//! retries (250 ms, doubling to 30 s) and the apps keep running as they are. Each session:
//!
//! 1. opens (or creates) `app-configs` and `app-binaries`
//!    ([`narun_wire::jetstream::APP_CONFIGS`], [`narun_wire::jetstream::APP_BINARIES`]);
//! 2. lists the keys and stops the local apps that no longer have a spec;
//! 3. watches `app-configs` with history: every current spec is replayed, then every
//!    change follows. Each entry is handled here, serially:
//!    * PUT: parse, validate, check key = name and that narund supports it
//!      ([`narun_spec::AppSpec::supported_on_narund`]). An invalid spec is reported (status
//!      `invalid_spec`, reason `invalid-spec`, on `status.<app>.<node>`, and in narund's log)
//!      and **not applied**: the instances of the last valid spec keep running.
//!      A valid one goes to [`Supervisor::apply`].
//!    * DELETE/PURGE: [`Supervisor::remove_app`] stops every instance.
//!
//! # Applying a spec ([`Supervisor::apply`])
//!
//! `target = spec.desired_replicas(node_id, labels)`, then:
//!
//! * **scale down**: instances with index ≥ target stop, highest index first;
//! * **scale up**: missing indices in `0..target` start;
//! * **changed spec** ([`crate::node::run_hash`], the `config_hash` without `nodes`,
//!   differs; a replica change alone restarts nothing): instances are replaced **one at a time**: the
//!   new run of index *i* starts next to the old one, and only once it is `running` and
//!   has stayed so for `settleSec` is the old run stopped. If the new run fails (missing
//!   binary, digest mismatch, crash while settling), it is stopped, the old run keeps
//!   running and the rollout stops there (the remaining instances keep the old spec);
//!   applying the spec again (a new KV revision) retries.
//! * an instance whose task has ended (`failed`, or exited without restart) is started
//!   again only when a new KV revision of the spec arrives, not on a replay.

use crate::liveness::{BEAT_EVERY, Beat};
use crate::node::{AppRun, InstanceHandle, Supervisor};
use futures_util::StreamExt;
use narun_spec::AppSpec;
use narun_wire::events::{RolledBack, StatusEvent, now_rfc3339};
use narun_wire::jetstream;
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason, SettleRule};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

impl Supervisor {
    /// Apply a valid spec (see the module docs). `revision` is the KV revision (0 = from
    /// local state).
    pub async fn apply(&self, spec: AppSpec, revision: u64) {
        let target = spec.desired_replicas(&self.inner.cfg.node_id, &self.inner.live().labels);
        let running = self
            .inner
            .apps
            .lock()
            .unwrap()
            .get(&spec.name)
            .map_or(0, |a| a.instances.len() as u32);
        let _serial = self
            .serial(
                format!("the apply of {}", spec.name),
                apply_budget(&spec, target + running),
            )
            .await;
        let spec = Arc::new(spec);
        let hash = spec.run_hash();
        let name = spec.name.clone();
        let target = spec.desired_replicas(&self.inner.cfg.node_id, &self.inner.live().labels);
        self.persist_spec(&spec);
        let (stop_now, new_revision) = {
            let mut apps = self.inner.apps.lock().unwrap();
            let app = apps.entry(name.clone()).or_insert_with(|| AppRun {
                spec: spec.clone(),
                hash: hash.clone(),
                instances: BTreeMap::new(),
                revision,
                rolled_back: BTreeMap::new(),
            });
            let new_revision = revision != 0 && app.revision != revision;
            app.spec = spec.clone();
            app.hash = hash.clone();
            app.revision = revision;
            let mut stop: Vec<InstanceHandle> = Vec::new();
            let extra: Vec<u32> = app.instances.range(target..).map(|(i, _)| *i).collect();
            for i in extra.into_iter().rev() {
                if let Some(h) = app.instances.remove(&i) {
                    stop.push(h);
                }
            }
            (stop, new_revision)
        };
        if !stop_now.is_empty() {
            tracing::info!(app = %name, target, "scaling down");
        }
        for h in stop_now {
            h.stop().await;
        }
        let mut rollout_failed = false;
        for index in 0..target {
            let current = self
                .inner
                .apps
                .lock()
                .unwrap()
                .get(&name)
                .and_then(|a| a.instances.get(&index).cloned());
            match current {
                None => {
                    // A verified run of the previous narund with this exact spec is taken
                    // over, not started again (crate::state::adopt).
                    let h = match self.take_adoptable(&name, index, &hash) {
                        Some(a) => self.adopt_instance(spec.clone(), index, a),
                        None => self.start_instance(spec.clone(), index),
                    };
                    self.put_instance(&name, h);
                }
                Some(old) if old.snapshot().ended => {
                    if old.hash != hash || new_revision {
                        let h = self.start_instance(spec.clone(), index);
                        self.put_instance(&name, h);
                    }
                }
                Some(old) if old.hash == hash => {}
                Some(old) => {
                    if rollout_failed {
                        continue;
                    }
                    if !new_revision
                        && self.rolled_back_hash(&name, index).as_deref() == Some(&hash)
                    {
                        // This exact spec was rolled back here already; only a new KV
                        // revision tries it again (not a replay after a reconnect).
                        rollout_failed = true;
                        continue;
                    }
                    tracing::info!(instance = %old.instance_id, "replacing with the new spec");
                    let new = self.start_instance(spec.clone(), index);
                    match wait_settled(&new, &self.inner.liveness).await {
                        Ok(()) => {
                            self.put_instance(&name, new);
                            if let Some(a) = self.inner.apps.lock().unwrap().get_mut(&name) {
                                a.rolled_back.remove(&index);
                            }
                            old.stop().await;
                        }
                        Err(why) => {
                            tracing::warn!(instance = %old.instance_id, %why, "new spec did not come up; keeping the old instance and stopping the rollout");
                            new.stop().await;
                            self.report_rollback(&old, &new, &why);
                            rollout_failed = true;
                        }
                    }
                }
            }
        }
        self.gc_binaries(&name).await;
        self.inner.changed.notify_waiters();
    }

    /// Run hash of the spec last rolled back at `index` of `app`.
    fn rolled_back_hash(&self, app: &str, index: u32) -> Option<String> {
        let apps = self.inner.apps.lock().unwrap();
        apps.get(app)?
            .rolled_back
            .get(&index)
            .map(|r| r.config_hash.clone())
    }

    /// A replacement of `old` by `new` did not become ready (`new` is stopped by now):
    /// publish `rolled_back` on `status.<app>.<node>`, keep it for the node state, and make
    /// the local state start the previous spec again after a restart of narund (unless
    /// some instance already runs the new one).
    fn report_rollback(&self, old: &InstanceHandle, new: &InstanceHandle, why: &NotReady) {
        let failed = new.snapshot();
        let info = RolledBack {
            tag: new.spec.tag.clone(),
            config_hash: new.hash.clone(),
            reason: Some(why.reason.clone()),
            error: why.error.clone(),
            time: now_rfc3339(),
        };
        let kept = old.snapshot();
        tracing::warn!(instance = %old.instance_id, failed_tag = %info.tag, reason = %why.reason, "rolled back: the previous spec keeps running");
        let ev = StatusEvent {
            instance_id: old.instance_id.clone(),
            node_id: self.inner.cfg.node_id.clone(),
            status: InstanceStatus::RolledBack,
            pid: kept.pid,
            exit_code: None,
            error: format!(
                "tag {} did not become ready ({}): {}; {} keeps running tag {}",
                info.tag, why.reason, info.error, old.instance_id, old.spec.tag
            ),
            time: info.time.clone(),
            reason: info.reason.clone(),
            app_name: new.spec.name.clone(),
            tag: info.tag.clone(),
            config_hash: new.hash.clone(),
            notify_status: failed.notify_status,
            ..Default::default()
        };
        let subject = names::status_subject(&new.spec.name, &self.inner.cfg.node_id);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.inner.publish(subject, payload);
        let nobody_runs_new = {
            let mut apps = self.inner.apps.lock().unwrap();
            match apps.get_mut(&new.spec.name) {
                Some(a) => {
                    a.rolled_back.insert(old.index, info);
                    !a.instances.values().any(|h| h.hash == new.hash)
                }
                None => false,
            }
        };
        if nobody_runs_new && !kept.digest.is_empty() {
            self.persist_spec_with_digest(&old.spec, &kept.digest);
        }
        self.inner.changed.notify_waiters();
    }

    pub(crate) fn put_instance(&self, app: &str, h: InstanceHandle) {
        if let Some(a) = self.inner.apps.lock().unwrap().get_mut(app) {
            a.instances.insert(h.index, h);
        }
    }

    /// Stop every instance of `app` (in parallel) and forget its spec.
    pub async fn remove_app(&self, app: &str) {
        let stop = self
            .inner
            .apps
            .lock()
            .unwrap()
            .get(app)
            .map_or(0, |a| a.spec.stop_timeout_sec);
        let _serial = self
            .serial(format!("the removal of {app}"), stop_budget(stop))
            .await;
        let removed = self.inner.apps.lock().unwrap().remove(app);
        self.forget_spec(app);
        if let Some(run) = removed {
            tracing::info!(app, "spec deleted: stopping all instances");
            futures_util::future::join_all(run.instances.values().map(|h| h.stop())).await;
        }
        self.inner.changed.notify_waiters();
    }

    /// Stop every instance of every app in parallel (each within its own stop timeout).
    /// The persisted specs stay: the apps come back at the next start.
    pub async fn shutdown(&self) {
        let stop = self
            .inner
            .apps
            .lock()
            .unwrap()
            .values()
            .map(|a| a.spec.stop_timeout_sec)
            .max()
            .unwrap_or(0);
        let _serial = self.serial("the shutdown".into(), stop_budget(stop)).await;
        let handles: Vec<InstanceHandle> = {
            let mut apps = self.inner.apps.lock().unwrap();
            std::mem::take(&mut *apps)
                .into_values()
                .flat_map(|a| a.instances.into_values())
                .collect()
        };
        futures_util::future::join_all(handles.iter().map(|h| h.stop())).await;
    }

    /// Start the apps persisted in the data dir (before NATS is reachable). Returns how
    /// many specs were applied.
    pub async fn start_offline(&self) -> usize {
        let specs = match self.state_file().load_specs() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no local state to start from");
                self.finish_adoption().await;
                return 0;
            }
        };
        let n = specs.len();
        for (spec, _digest) in specs {
            tracing::info!(app = %spec.name, "starting from local state");
            self.apply(spec, 0).await;
        }
        self.finish_adoption().await;
        n
    }

    /// Report a spec that is not applied.
    pub fn report_invalid(&self, key: &str, error: &str) {
        tracing::warn!(
            app = key,
            error,
            "invalid spec in app-configs: not applied, the previous spec (if any) keeps running"
        );
        let ev = StatusEvent {
            instance_id: key.to_string(),
            node_id: self.inner.cfg.node_id.clone(),
            status: InstanceStatus::InvalidSpec,
            error: error.to_string(),
            time: now_rfc3339(),
            reason: Some(Reason::InvalidSpec),
            app_name: key.to_string(),
            ..Default::default()
        };
        let subject = names::status_subject(key, &self.inner.cfg.node_id);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.inner.publish(subject, payload);
    }

    /// Handle one `app-configs` entry.
    pub async fn handle_entry(&self, key: &str, value: Option<&[u8]>, revision: u64) {
        let Some(value) = value else {
            self.remove_app(key).await;
            return;
        };
        let spec = match AppSpec::from_kv_entry(key, value) {
            Ok(s) => s,
            Err(e) => return self.report_invalid(key, &e.to_string()),
        };
        if let Err(e) = spec.supported_on_narund() {
            // A spec for Go node-runners that selects no instance here is none of our
            // business: applying it (0 replicas) runs nothing and stops nothing else.
            let here = spec.desired_replicas(&self.inner.cfg.node_id, &self.inner.live().labels);
            if here > 0 {
                return self.report_invalid(key, &format!("not supported by narund: {e}"));
            }
        }
        self.apply(spec, revision).await;
    }
}

/// Longest time one apply of `spec` may hold the apply lock when it touches `instances`
/// instance slots (scale-down stops and replacements, one at a time): per slot a fetch, the
/// start timeout, the settle time and two stops (new run stopped on failure, or the old
/// one on success), plus a margin. Only a wedge exceeds it ([`crate::liveness`]).
pub(crate) fn apply_budget(spec: &AppSpec, instances: u32) -> Duration {
    let per_slot = crate::node::FETCH_TIMEOUT
        + Duration::from_secs(spec.start_timeout_sec.saturating_add(spec.settle_sec))
        + 2 * stop_budget(spec.stop_timeout_sec);
    per_slot.saturating_mul(instances.max(1)) + Duration::from_secs(30)
}

/// Longest time a stop may take: the stop timeout, `cgroup.kill` and reaping.
pub(crate) fn stop_budget(stop_timeout_sec: u64) -> Duration {
    Duration::from_secs(stop_timeout_sec.saturating_add(30))
}

/// Why a new run did not become ready.
#[derive(Debug, Clone)]
pub(crate) struct NotReady {
    /// Short reason for `rolled_back`: `start-timeout`, `watchdog`, `crashed`, `oom-kill`,
    /// `verify`, `fetch`, `start-limit`, …
    pub(crate) reason: Reason,
    pub(crate) error: String,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.error)
    }
}

/// The short rollback reason for the state a new run ended up in.
fn not_ready(s: &crate::node::Snapshot, error: String) -> NotReady {
    let reason = match &s.reason {
        None | Some(Reason::ExitCode | Reason::Signal | Reason::Wait) => Reason::Crashed,
        Some(r) => r.clone(),
    };
    NotReady {
        reason,
        error: if s.error.is_empty() {
            error
        } else {
            format!("{error}: {}", s.error)
        },
    }
}

/// Wait until a new instance is ready: with `notify: true`, until it sent `READY=1`
/// (status `running`; the supervisor enforces `startTimeoutSec` and its
/// `EXTEND_TIMEOUT_USEC=` extensions); without, until it is `running` and stays so for
/// `settleSec`. Bounded: fetching may take [`crate::node::FETCH_TIMEOUT`], a
/// notify start its (moving) deadline plus the time to stop it.
///
/// The caller holds the apply lock; each wait's bound is added to its declared budget
/// (`liveness`), so a start the app keeps extending (`EXTEND_TIMEOUT_USEC=`) is progress
/// for narund's own watchdog, not a wedge.
pub(crate) async fn wait_settled(
    h: &InstanceHandle,
    liveness: &crate::liveness::Liveness,
) -> Result<(), NotReady> {
    let failed = |s: &crate::node::Snapshot| s.ended || s.status.is_down();
    let stop_bound = Duration::from_secs(h.spec.stop_timeout_sec) + Duration::from_secs(15);
    let s = loop {
        let s = h.snapshot();
        if s.status == InstanceStatus::Running || failed(&s) {
            break s;
        }
        let bound = match s.start_deadline {
            Some(d) => d.saturating_duration_since(tokio::time::Instant::now()) + stop_bound,
            None if s.pid.is_some() => stop_bound,
            None => {
                crate::node::FETCH_TIMEOUT + Duration::from_secs(h.spec.start_timeout_sec.max(1))
            }
        };
        liveness.extend_apply(bound + Duration::from_secs(30));
        let deadline = s.start_deadline;
        match h
            .wait_for(bound, |n| {
                n.status == InstanceStatus::Running
                    || failed(n)
                    || n.start_deadline != deadline
                    || n.pid != s.pid
            })
            .await
        {
            Ok(_) => continue,
            Err(s) => {
                return Err(NotReady {
                    reason: if h.spec.notify {
                        Reason::StartTimeout
                    } else {
                        Reason::NotRunning
                    },
                    error: format!("still {} after {bound:?}", s.status),
                });
            }
        }
    };
    if s.status != InstanceStatus::Running {
        let error = format!("{} before it was ready", s.status);
        return Err(not_ready(&s, error));
    }
    if h.spec.notify {
        return Ok(());
    }
    let pid = s.pid;
    let settle = SettleRule::new(h.spec.notify, h.spec.settle_sec).settle_time();
    if let Ok(s) = h
        .wait_for(settle, |s| !s.status.is_up() || s.pid != pid)
        .await
    {
        let error = format!("{} within settleSec ({} s)", s.status, settle.as_secs());
        return Err(not_ready(&s, error));
    }
    Ok(())
}

/// Run the reconciliation loop until `stop` becomes true. `ready` is sent after the first
/// complete replay of `app-configs`.
pub async fn run(
    sup: Supervisor,
    client: async_nats::Client,
    mut ready: Option<oneshot::Sender<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let beat = sup.liveness().register("reconciler", BEAT_EVERY);
    let mut delay = Duration::from_millis(250);
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = session(&sup, &client, &mut ready, &beat) => r,
            _ = crate::node::stopped(&mut stop) => return,
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
            _ = crate::node::stopped(&mut stop) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Longest time the start of a session (buckets, key listing, watch) may take before it
/// is retried.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

async fn session(
    sup: &Supervisor,
    client: &async_nats::Client,
    ready: &mut Option<oneshot::Sender<()>>,
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
        tokio::time::timeout(SESSION_SETUP_TIMEOUT, open_session(sup, client))
            .await
            .map_err(|_| {
                format!(
                    "opening app-configs took longer than {} s",
                    SESSION_SETUP_TIMEOUT.as_secs()
                )
            })??
    };
    for app in sup.app_names() {
        if !keys.contains(&app) {
            tracing::info!(app = %app, "no spec in app-configs any more");
            let _serial = beat.awaiting_apply();
            sup.remove_app(&app).await;
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
    if keys.is_empty()
        && let Some(r) = ready.take()
    {
        let _ = r.send(());
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
        {
            let _serial = beat.awaiting_apply();
            sup.handle_entry(&entry.key, value, entry.revision).await;
        }
        if entry.delta == 0
            && let Some(r) = ready.take()
        {
            let _ = r.send(());
        }
    }
    Err("the app-configs watch ended".into())
}

/// Buckets, object store and the set of keys in `app-configs`.
async fn open_session(
    sup: &Supervisor,
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
    sup.set_object_store(Some(store));
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
