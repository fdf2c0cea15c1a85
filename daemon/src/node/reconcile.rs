//! Reconciliation: from the specs in the `app-configs` KV bucket to running instances.
//!
//! [`super::watch::run`] follows `app-configs` and hands each entry to
//! [`Node::handle_entry`], serially:
//!    * PUT: parse, validate, check key = name and that narund supports it
//!      ([`narun_spec::AppSpec::supported_on_narund`]). Parsing and validation run on a
//!      blocking thread, at most [`PARSERS`] at once and each within [`PARSE_TIMEOUT`]
//!      (the spec's own limits make it linear; the bound is the backstop), so the
//!      reconciler, the heartbeat and narund's `WATCHDOG=1` never wait on one spec.
//!      An invalid spec is reported (status `invalid_spec`, reason `invalid-spec`, on
//!      `status.<app>.<node>`, and in narund's log) and **not applied**: the instances of
//!      the last valid spec keep running. A valid one goes to [`Node::apply`].
//!    * A spec asking for more instances here than `apps.max_replicas_per_node` is
//!      refused the same way by [`Node::apply`] (whether it comes from `app-configs`,
//!      the local state at start-up, or a reload that changed the labels).
//!    * DELETE/PURGE: [`Node::remove_app`] stops every instance.
//!
//! # Applying a spec ([`Node::apply`])
//!
//! `target = spec.desired_replicas(node_id, labels)`, then:
//!
//! * **scale down**: instances with index ≥ target stop, highest index first;
//! * **scale up**: missing indices in `0..target` start;
//! * **changed spec** ([`AppSpec::run_hash`], the `config_hash` without `nodes`,
//!   differs; a replica change alone restarts nothing): instances are replaced **one at a time**: the
//!   new run of index *i* starts next to the old one, and only once it is `running` and
//!   has stayed so for `settleSec` is the old run stopped. If the new run fails (missing
//!   binary, digest mismatch, crash while settling), it is stopped, the old run keeps
//!   running and the rollout stops there (the remaining instances keep the old spec);
//!   applying the spec again (a new KV revision) retries.
//! * an instance whose task has ended (`failed`, or exited without restart) is started
//!   again only when a new KV revision of the spec arrives, not on a replay.

use super::rollout::{NotReady, apply_budget, stop_budget, wait_settled};
use super::{AppRun, Node};
use crate::instance::InstanceHandle;
use narun_spec::AppSpec;
use narun_wire::events::{RolledBack, StatusEvent, now_rfc3339};
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest time parsing and validating one `app-configs` entry may take; a slower one is
/// refused. Within the limits of `narun_spec` it takes milliseconds.
pub const PARSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most specs parsed at once. A parse that overran [`PARSE_TIMEOUT`] keeps its slot until
/// its thread finishes, so runaway parses never pile up threads.
pub const PARSERS: usize = 2;

/// Parse and validate an `app-configs` entry off the runtime thread, bounded in time and
/// in how many run at once (see the module docs). The error is the reason to report.
pub(crate) async fn parse_entry(
    slots: &Arc<tokio::sync::Semaphore>,
    key: &str,
    value: &[u8],
) -> Result<AppSpec, String> {
    if value.len() > narun_spec::MAX_SPEC_BYTES {
        // Not even copied.
        return Err(narun_spec::ParseError::TooLarge {
            bytes: value.len(),
            max: narun_spec::MAX_SPEC_BYTES,
        }
        .to_string());
    }
    let too_slow = || {
        format!(
            "spec took longer than {} s to parse and validate: refused (a spec is at most {} bytes and {} levels deep)",
            PARSE_TIMEOUT.as_secs(),
            narun_spec::MAX_SPEC_BYTES,
            narun_spec::MAX_NESTING_DEPTH
        )
    };
    let (key, value) = (key.to_string(), value.to_vec());
    let slots = slots.clone();
    // The time bound starts once a parse slot is free: waiting behind another spec's
    // parse does not count against this one (that wait is bounded too: every parse ends
    // or is given up within PARSE_TIMEOUT, though its thread keeps the slot until done).
    let slot = tokio::time::timeout(PARSE_TIMEOUT, slots.acquire_owned())
        .await
        .map_err(|_| {
            format!(
                "no parse slot became free within {} s (earlier specs are still being parsed): refused; put the spec again",
                PARSE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|_| "narund is shutting down".to_string())?;
    let parse = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        AppSpec::from_kv_entry(&key, &value).map_err(|e| e.to_string())
    });
    tokio::time::timeout(PARSE_TIMEOUT, parse)
        .await
        .map_err(|_| too_slow())?
        .map_err(|e| format!("parsing the spec failed: {e}"))?
}

impl Node {
    /// Apply a valid spec (see the module docs). `revision` is the KV revision (0 = from
    /// local state).
    pub async fn apply(&self, spec: AppSpec, revision: u64) {
        if spec.is_job() {
            return self.apply_job(spec, revision).await;
        }
        #[cfg(not(feature = "command-units"))]
        if spec.mode == narun_spec::Mode::Command {
            // Nothing changes: what ran under the previous spec keeps running.
            return self.report_invalid(
                &spec.name,
                "mode = \"command\": this narund was built without command units; build narund with the `command-units` cargo feature (docs/jobs.md)",
            );
        }
        if self.inner.jobs.has(&spec.name) {
            // A job became a service.
            self.inner.jobs.remove(&spec.name).await;
        }
        let _timer = self.inner.host.counters.reconciles.time();
        let target = spec.desired_replicas(
            &self.inner.host.settings.node_id,
            &self.inner.host.live().labels,
        );
        let max = self.inner.host.settings.max_replicas_per_node;
        if target > max {
            // Nothing changes: the instances of the previous spec (if any) keep running.
            return self.report_invalid(
                &spec.name,
                &format!(
                    "the spec asks for {target} instances on this node, more than apps.max_replicas_per_node = {max} (narund.toml); lower replicas or raise the setting"
                ),
            );
        }
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
        let target = spec.desired_replicas(
            &self.inner.host.settings.node_id,
            &self.inner.host.live().labels,
        );
        self.inner.host.local.persist_spec(&spec);
        let (stop_now, new_revision) = {
            let mut apps = self.inner.apps.lock().unwrap();
            let app = apps.entry(name.clone()).or_insert_with(|| AppRun {
                spec: spec.clone(),
                hash: hash.clone(),
                instances: BTreeMap::new(),
                revision,
                rolled_back: BTreeMap::new(),
                asleep: false,
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
        self.inner.host.changed.notify_waiters();
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
            node_id: self.inner.host.settings.node_id.clone(),
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
        let subject = names::status_subject(&new.spec.name, &self.inner.host.settings.node_id);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.inner.host.publish(subject, payload);
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
            self.inner
                .host
                .local
                .persist_spec_with_digest(&old.spec, &kept.digest);
        }
        self.inner.host.changed.notify_waiters();
    }

    pub(crate) fn put_instance(&self, app: &str, h: InstanceHandle) {
        if let Some(a) = self.inner.apps.lock().unwrap().get_mut(app) {
            a.instances.insert(h.index, h);
            // A started instance wakes a sleeping app (a new revision, a restart).
            a.asleep = false;
        }
    }

    /// Stop every instance of `app` (in parallel) and forget its spec.
    pub async fn remove_app(&self, app: &str) {
        let _timer = self.inner.host.counters.reconciles.time();
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
        self.inner.host.local.forget_spec(app);
        self.inner.jobs.remove(app).await;
        if let Some(run) = removed {
            tracing::info!(app, "spec deleted: stopping all instances");
            futures_util::future::join_all(run.instances.values().map(|h| h.stop())).await;
        }
        self.inner.host.changed.notify_waiters();
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
        self.inner.jobs.shutdown().await;
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
            node_id: self.inner.host.settings.node_id.clone(),
            status: InstanceStatus::InvalidSpec,
            error: error.to_string(),
            time: now_rfc3339(),
            reason: Some(Reason::InvalidSpec),
            app_name: key.to_string(),
            ..Default::default()
        };
        let subject = names::status_subject(key, &self.inner.host.settings.node_id);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.inner.host.publish(subject, payload);
        self.inner.invalid.lock().unwrap().insert(
            key.to_string(),
            narun_wire::events::InvalidSpec {
                app_name: key.to_string(),
                error: error.to_string(),
                time: ev.time,
            },
        );
        self.inner.host.changed.notify_waiters();
    }

    /// The app got a valid spec or was deleted: it is no longer reported as refused.
    fn clear_invalid(&self, key: &str) {
        if self.inner.invalid.lock().unwrap().remove(key).is_some() {
            self.inner.host.changed.notify_waiters();
        }
    }

    /// Handle one `app-configs` entry (`None`: deleted).
    pub async fn handle_entry(&self, key: &str, value: Option<&[u8]>, revision: u64) {
        let parsed = match value {
            Some(v) => Some(self.parse_entry(key, v).await),
            None => None,
        };
        self.handle_parsed(key, parsed, revision).await
    }

    /// Parse and validate an entry's value ([`parse_entry`], bounded, off the runtime).
    pub async fn parse_entry(&self, key: &str, value: &[u8]) -> Result<AppSpec, String> {
        parse_entry(&self.inner.parsers, key, value).await
    }

    /// Handle an entry parsed by [`Node::parse_entry`] (`None`: deleted).
    pub async fn handle_parsed(
        &self,
        key: &str,
        parsed: Option<Result<AppSpec, String>>,
        revision: u64,
    ) {
        let Some(parsed) = parsed else {
            self.clear_invalid(key);
            self.remove_app(key).await;
            return;
        };
        let spec = match parsed {
            Ok(s) => s,
            Err(e) => return self.report_invalid(key, &e),
        };
        if let Err(e) = spec.supported_on_narund() {
            // A spec for Go node-runners that selects no instance here is none of our
            // business: applying it (0 replicas) runs nothing and stops nothing else.
            let here = spec.desired_replicas(
                &self.inner.host.settings.node_id,
                &self.inner.host.live().labels,
            );
            if here > 0 {
                return self.report_invalid(key, &format!("not supported by narund: {e}"));
            }
        }
        self.clear_invalid(key);
        self.apply(spec, revision).await;
    }
}
