//! Reconciliation: from the specs in the `app-configs` KV bucket to running instances.
//!
//! [`run`] is narund's control loop. It never gives up: while NATS is unreachable it
//! retries (250 ms, doubling to 30 s) and the apps keep running as they are. Each session:
//!
//! 1. opens (or creates) `app-configs` and `app-binaries`
//!    ([`narun_wire::jetstream::ensure_kv`]);
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
//! * **changed spec** ([`crate::supervisor::run_hash`], the `config_hash` without `nodes`,
//!   differs; a replica change alone restarts nothing): instances are replaced **one at a time**: the
//!   new run of index *i* starts next to the old one, and only once it is `running` and
//!   has stayed so for `settleSec` is the old run stopped. If the new run fails (missing
//!   binary, digest mismatch, crash while settling), it is stopped, the old run keeps
//!   running and the rollout stops there (the remaining instances keep the old spec);
//!   applying the spec again (a new KV revision) retries.
//! * an instance whose task has ended (`failed`, or exited without restart) is started
//!   again only when a new KV revision of the spec arrives, not on a replay.

use crate::supervisor::{AppRun, InstanceHandle, Supervisor};
use futures_util::StreamExt;
use narun_spec::AppSpec;
use narun_wire::events::{StatusEvent, now_rfc3339};
use narun_wire::jetstream::{ensure_kv, ensure_object_store};
use narun_wire::names;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Description of `app-configs` (Go's text).
pub const APP_CONFIGS_DESCRIPTION: &str =
    "Stores application service specifications for node runners.";
/// Description of `app-binaries` (Go's text).
pub const APP_BINARIES_DESCRIPTION: &str = "Stores application binaries.";

impl Supervisor {
    /// Apply a valid spec (see the module docs). `revision` is the KV revision (0 = from
    /// local state).
    pub async fn apply(&self, spec: AppSpec, revision: u64) {
        let _serial = self.inner.apply_lock.lock().await;
        let spec = Arc::new(spec);
        let hash = crate::supervisor::run_hash(&spec);
        let name = spec.name.clone();
        let target = spec.desired_replicas(&self.inner.cfg.node_id, &self.inner.cfg.labels);
        self.persist_spec(&spec);
        let (stop_now, new_revision) = {
            let mut apps = self.inner.apps.lock().unwrap();
            let app = apps.entry(name.clone()).or_insert_with(|| AppRun {
                spec: spec.clone(),
                hash: hash.clone(),
                instances: BTreeMap::new(),
                revision,
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
                    let h = self.start_instance(spec.clone(), index);
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
                    tracing::info!(instance = %old.instance_id, "replacing with the new spec");
                    let new = self.start_instance(spec.clone(), index);
                    match wait_settled(&new).await {
                        Ok(()) => {
                            self.put_instance(&name, new);
                            old.stop().await;
                        }
                        Err(why) => {
                            tracing::warn!(instance = %old.instance_id, %why, "new spec did not come up; keeping the old instance and stopping the rollout");
                            new.stop().await;
                            rollout_failed = true;
                        }
                    }
                }
            }
        }
        self.gc_binaries(&name).await;
        self.inner.changed.notify_waiters();
    }

    fn put_instance(&self, app: &str, h: InstanceHandle) {
        if let Some(a) = self.inner.apps.lock().unwrap().get_mut(app) {
            a.instances.insert(h.index, h);
        }
    }

    /// Stop every instance of `app` (in parallel) and forget its spec.
    pub async fn remove_app(&self, app: &str) {
        let _serial = self.inner.apply_lock.lock().await;
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
        let _serial = self.inner.apply_lock.lock().await;
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
                return 0;
            }
        };
        let n = specs.len();
        for (spec, _digest) in specs {
            tracing::info!(app = %spec.name, "starting from local state");
            self.apply(spec, 0).await;
        }
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
            status: "invalid_spec".into(),
            error: error.to_string(),
            time: now_rfc3339(),
            reason: "invalid-spec".into(),
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
            let here = spec.desired_replicas(&self.inner.cfg.node_id, &self.inner.cfg.labels);
            if here > 0 {
                return self.report_invalid(key, &format!("not supported by narund: {e}"));
            }
        }
        self.apply(spec, revision).await;
    }
}

/// Wait until a new instance is `running` and has stayed running for `settleSec`.
async fn wait_settled(h: &InstanceHandle) -> Result<(), String> {
    let start_timeout = Duration::from_secs(h.spec.start_timeout_sec.max(1));
    let s = h
        .wait_for(start_timeout, |s| {
            s.status == "running" || s.ended || s.status == "crashed" || s.status == "failed"
        })
        .await
        .map_err(|s| format!("not running after {start_timeout:?} (status {})", s.status))?;
    if s.status != "running" {
        return Err(format!("{} ({})", s.status, s.reason));
    }
    let pid = s.pid;
    let settle = Duration::from_secs(h.spec.settle_sec);
    if let Ok(s) = h
        .wait_for(settle, |s| s.status != "running" || s.pid != pid)
        .await
    {
        return Err(format!("{} while settling ({})", s.status, s.reason));
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
    let mut delay = Duration::from_millis(250);
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = session(&sup, &client, &mut ready) => r,
            _ = crate::supervisor::stopped(&mut stop) => return,
        };
        match result {
            Ok(()) => delay = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "app-configs not available; apps keep running as they are");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::supervisor::stopped(&mut stop) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn session(
    sup: &Supervisor,
    client: &async_nats::Client,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<(), String> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err("NATS is not connected".into());
    }
    let js = async_nats::jetstream::new(client.clone());
    let configs = ensure_kv(
        &js,
        names::APP_CONFIGS_BUCKET,
        APP_CONFIGS_DESCRIPTION,
        1,
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let store = ensure_object_store(&js, names::APP_BINARIES_BUCKET, APP_BINARIES_DESCRIPTION)
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
    for app in sup.app_names() {
        if !keys.contains(&app) {
            tracing::info!(app = %app, "no spec in app-configs any more");
            sup.remove_app(&app).await;
        }
    }
    let mut watch = configs
        .watch_with_history(">")
        .await
        .map_err(|e| format!("watching app-configs: {e}"))?;
    if keys.is_empty()
        && let Some(r) = ready.take()
    {
        let _ = r.send(());
    }
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| format!("watching app-configs: {e}"))?;
        let value = matches!(entry.operation, async_nats::jetstream::kv::Operation::Put)
            .then_some(&entry.value[..]);
        sup.handle_entry(&entry.key, value, entry.revision).await;
        if entry.delta == 0
            && let Some(r) = ready.take()
        {
            let _ = r.send(());
        }
    }
    Err("the app-configs watch ended".into())
}
