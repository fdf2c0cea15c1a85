//! The node: what should run here, and the table of what does.
//!
//! **Owns** the instance table (every app with a spec for this node, each instance's
//! [`InstanceHandle`]), the apply lock that serialises applies, removals and restarts,
//! the runs of a previous narund waiting to be re-adopted, and the node's reloadable
//! settings. It turns specs into instances ([`reconcile`]: scale, replace one at a time,
//! roll back), follows `app-configs` ([`watch`]), heart-beats ([`heartbeat`]) and answers
//! operator requests ([`control`]).
//!
//! **May call** [`crate::instance`] (start, stop, adopt instances through its [`Host`]),
//! [`crate::state`], [`crate::fetch`] (binary cache GC), [`crate::liveness`],
//! [`crate::config`].
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Node`]: the table, the apply lock, adoption, reload |
//! | `reconcile.rs` | applying a spec: scale, rolling replace, **rollback**, removal, shutdown, offline start |
//! | `rollout.rs` | when a new run counts as ready (`wait_settled`) and the budgets of the apply lock |
//! | `watch.rs` | the `app-configs` watch: sessions, retries, invalid specs |
//! | `heartbeat.rs` | the node state in `node-runner-states`, `STATUS=` for systemd |
//! | `control.rs` | operator requests on `narun.control.<node>.*` (restart) |
//! | `history.rs` | the optional JetStream stream `narun-status` of the status events (`[events]`) |
//! | `sleep.rs` | scale to zero: idle apps (`$SRV.STATS` counts) stop, `narun.control.<node>.wake` starts them |
//! | `runs.rs` | job apps (`runMode = "job"`) handed to [`crate::jobs`], and `narunctl run` requests |

pub mod control;
pub mod heartbeat;
pub mod history;
pub mod reconcile;
pub mod rollout;
pub mod runs;
pub mod sleep;
pub mod watch;

use crate::cgroup::Cgroups;
use crate::config::{Reloadable, Settings};
use crate::fetch::Sha256Digest;
use crate::instance::adopt::Adoptable;
use crate::instance::process::Processes;
use crate::instance::{Host, HostParts, InstanceHandle, Snapshot};
use crate::liveness::Liveness;
use crate::logs::LogForwarder;
use crate::state::{InstanceRecord, Local, StateFile};
use crate::uring::UringHandle;
use narun_spec::AppSpec;
use narun_wire::events::InstanceState;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a [`Node`] is built from.
pub struct NodeParts {
    pub settings: Settings,
    /// Publishes status events and log lines (it may still be connecting).
    pub client: async_nats::Client,
    pub uring: UringHandle,
    pub processes: Arc<dyn Processes>,
    /// `None`: no usable cgroup v2; instances run in process groups only.
    pub cgroups: Option<Arc<dyn Cgroups>>,
}

/// Shared state of the node.
pub(crate) struct Inner {
    pub(crate) host: Arc<Host>,
    pub(crate) apps: Mutex<BTreeMap<String, AppRun>>,
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    /// Progress of the reconciler, heartbeat and reaper (gates narund's `WATCHDOG=1`).
    pub(crate) liveness: Arc<Liveness>,
    /// Verified runs of a previous narund, taken by `apply` for their app and index.
    pub(crate) adoptable: Mutex<BTreeMap<(String, u32), Adoptable>>,
    /// Slots for parsing `app-configs` entries off the runtime ([`reconcile::PARSERS`]).
    pub(crate) parsers: Arc<tokio::sync::Semaphore>,
    /// Specs refused by app name, reported in the node state until the app gets a valid
    /// spec or is deleted.
    pub(crate) invalid: Mutex<BTreeMap<String, narun_wire::events::InvalidSpec>>,
    /// Where Prometheus scrapes this node (`[metrics]`), told in the heartbeat.
    pub(crate) metrics_addr: std::sync::OnceLock<String>,
    /// Where the instance cgroups live (the heartbeat reads their CPU and memory).
    pub(crate) cgroup_root: std::sync::OnceLock<std::path::PathBuf>,
    /// The job apps (`runMode = "job"`, [`crate::jobs`]).
    pub(crate) jobs: crate::jobs::Jobs,
}

/// Holder of the apply lock ([`Node::serial`]). Fields drop in order: the declared
/// holder goes first, then the lock is released.
pub struct Serial<'a> {
    _hold: crate::liveness::ApplyHold<'a>,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

/// The instances of one app on this node.
pub(crate) struct AppRun {
    pub(crate) spec: Arc<AppSpec>,
    pub(crate) hash: String,
    pub(crate) instances: BTreeMap<u32, InstanceHandle>,
    /// KV revision of the spec (0 = from local state).
    pub(crate) revision: u64,
    /// Per index: the last replacement that did not become ready (reported in the node
    /// state until a later replacement of that index succeeds).
    pub(crate) rolled_back: BTreeMap<u32, narun_wire::events::RolledBack>,
    /// Scaled to zero ([`sleep`]): its instances were stopped for being idle.
    pub(crate) asleep: bool,
}

/// The node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl Node {
    /// A node publishing with `client`. Verifies the runs a previous narund recorded
    /// ([`crate::instance::adopt`]: those become adoptable, their cgroups stay) and removes
    /// every other instance cgroup it left behind. Returns the node and the log publisher
    /// task.
    pub async fn new(p: NodeParts) -> (Node, tokio::task::JoinHandle<()>) {
        let settings = p.settings;
        let (logs, log_task) = LogForwarder::with_config(
            p.client.clone(),
            crate::logs::LogForwarderConfig {
                node_id: settings.node_id.clone(),
                spool_bytes: settings.log_spool_bytes,
                max_line_bytes: settings.log_max_line_bytes,
            },
            p.uring.clone(),
        );
        let (local, records) = Local::load(&settings.data_dir);
        let (adoptable, rejected) = {
            let specs: Vec<AppSpec> = local.specs().into_iter().map(|(s, _)| s).collect();
            crate::instance::adopt::select(
                records,
                &specs,
                |s| s.desired_replicas(&settings.node_id, &settings.labels),
                p.processes.as_ref(),
                p.cgroups.as_deref(),
            )
        };
        for (rec, why) in &rejected {
            tracing::warn!(instance = %rec.instance_id, run = %rec.run_id, pid = rec.pid, %why, "not re-adopting a run of the previous narund");
        }
        for a in adoptable.values() {
            tracing::info!(instance = %a.record.instance_id, run = %a.record.run_id, pid = a.record.pid, "re-adoptable run of the previous narund");
        }
        let kept: BTreeMap<String, InstanceRecord> = adoptable
            .values()
            .map(|a| (a.record.run_id.clone(), a.record.clone()))
            .collect();
        let keep: HashSet<String> = kept
            .values()
            .filter(|r| !r.cgroup.is_empty())
            .map(|r| r.cgroup.clone())
            .collect();
        local.keep_records(kept);
        if let Some(cgroups) = &p.cgroups {
            match cgroups.cleanup_stale(&keep, Duration::from_secs(5)).await {
                Ok(removed) if !removed.is_empty() => {
                    tracing::warn!(?removed, "removed instance cgroups of a previous narund")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cleaning stale instance cgroups"),
            }
        }
        let events = crate::instance::spawn_publisher(p.client.clone(), local.durable());
        let host = Host::new(HostParts {
            inputs: crate::fetch::inputs::AppInputs::new(p.client.clone()),
            settings,
            logs,
            uring: p.uring,
            local,
            processes: p.processes,
            cgroups: p.cgroups,
            events,
            client: p.client.clone(),
        });
        let inner = Inner {
            host: Arc::new(host),
            apps: Mutex::new(BTreeMap::new()),
            apply_lock: tokio::sync::Mutex::new(()),
            liveness: Arc::new(Liveness::default()),
            adoptable: Mutex::new(adoptable),
            parsers: Arc::new(tokio::sync::Semaphore::new(reconcile::PARSERS)),
            invalid: Mutex::new(BTreeMap::new()),
            metrics_addr: Default::default(),
            cgroup_root: Default::default(),
            jobs: crate::jobs::Jobs::new(p.client.clone()),
        };
        (
            Node {
                inner: Arc::new(inner),
            },
            log_task,
        )
    }

    /// Progress of narund's loops; [`Liveness::check`] gates `WATCHDOG=1`.
    pub fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }

    /// Take the apply lock that serialises applies, removals and restarts, declaring what
    /// the holder does and how long it may take at most (see [`crate::liveness`]): while
    /// the guard lives no spec is applied.
    pub async fn serial(&self, what: String, budget: Duration) -> Serial<'_> {
        let lock = self.inner.apply_lock.lock().await;
        Serial {
            _hold: self.inner.liveness.hold_apply(what, budget),
            _lock: lock,
        }
    }

    /// The settings narund started with.
    pub fn settings(&self) -> &Settings {
        &self.inner.host.settings
    }

    /// The current reloadable settings (labels, default user, …).
    pub fn live(&self) -> Arc<Reloadable> {
        self.inner.host.live()
    }

    /// What instances get from the node (settings, services, kernel seams).
    pub fn host(&self) -> &Arc<Host> {
        &self.inner.host
    }

    /// Apply a reloaded configuration (SIGHUP). The reloadable part ([`Reloadable`])
    /// takes effect now: new labels re-evaluate every known spec (instances start or stop
    /// where the selection changed; nothing else restarts), the user and backoff settings
    /// apply to the next start. Returns one line per setting that changed but needs a
    /// restart of narund, so the caller can say so.
    pub async fn reload(&self, new: Settings) -> Vec<String> {
        let old = &self.inner.host.settings;
        let mut needs_restart = Vec::new();
        let mut check = |key: &str, same: bool| {
            if !same {
                needs_restart.push(format!("{key} changed: restart narund to apply it"));
            }
        };
        check("node_id", old.node_id == new.node_id);
        check("data_dir", old.data_dir == new.data_dir);
        check("cgroup.root", old.cgroup_root == new.cgroup_root);
        check("nats", old.nats == new.nats);
        check(
            "logs.spool_bytes",
            old.log_spool_bytes == new.log_spool_bytes,
        );
        check(
            "logs.max_line_bytes",
            old.log_max_line_bytes == new.log_max_line_bytes,
        );
        check("apps.keep_versions", old.keep_versions == new.keep_versions);
        check(
            "apps.dynamic_uid_range",
            old.dynamic_uid_range == new.dynamic_uid_range,
        );
        check("deploy.trusted_keys", old.trusted_keys == new.trusted_keys);
        check(
            "apps.max_replicas_per_node",
            old.max_replicas_per_node == new.max_replicas_per_node,
        );
        let live = Reloadable::of(&new);
        if *self.live() != live {
            tracing::info!(?live, "reloaded settings");
        }
        let labels_changed = self.inner.host.set_live(live.clone()).labels != live.labels;
        if labels_changed {
            let specs: Vec<(AppSpec, u64)> = self
                .inner
                .apps
                .lock()
                .unwrap()
                .values()
                .map(|a| ((*a.spec).clone(), a.revision))
                .collect();
            for (spec, revision) in specs {
                self.apply(spec, revision).await;
            }
            self.inner.host.changed.notify_waiters();
        }
        needs_restart
    }

    /// The instance cgroups in use, if any.
    pub fn cgroups(&self) -> Option<&Arc<dyn Cgroups>> {
        self.inner.host.cgroups.as_ref()
    }

    /// Whether io_uring is in use.
    pub fn io_uring(&self) -> bool {
        self.inner.host.uring.available()
    }

    /// Give the node the `app-binaries` store (once NATS is reachable).
    pub fn set_object_store(&self, store: Option<crate::fetch::Bucket>) {
        *self.inner.host.store.lock().unwrap() = store;
    }

    /// Whether the node has the `app-binaries` store.
    pub fn has_object_store(&self) -> bool {
        self.inner.host.store.lock().unwrap().is_some()
    }

    /// Read the master key for `valueFromSecret` from `path` from now on.
    pub fn set_master_key_file(&self, path: impl Into<std::path::PathBuf>) {
        self.inner.host.inputs.set_master_key_file(path);
    }

    /// Whether secrets that name no apps are handed out (`[secrets] allow_unscoped`).
    pub fn set_allow_unscoped_secrets(&self, allow: bool) {
        self.inner.host.inputs.set_allow_unscoped(allow);
    }

    /// Resolves when some instance changed state.
    pub async fn changed(&self) {
        self.inner.host.changed.notified().await
    }

    /// Every instance with its state, sorted by app and index.
    pub fn instances(&self) -> Vec<InstanceState> {
        let apps = self.inner.apps.lock().unwrap();
        let mut out = Vec::new();
        for (name, app) in apps.iter() {
            for h in app.instances.values() {
                let s = h.snapshot();
                let rolled_back = app.rolled_back.get(&h.index).cloned();
                // An instance of a sleeping app is scaled to zero (also while it stops).
                let status = if app.asleep {
                    narun_wire::status::InstanceStatus::ScaledToZero
                } else {
                    s.status
                };
                out.push(InstanceState {
                    instance_id: h.instance_id.clone(),
                    app_name: name.clone(),
                    status,
                    pid: s.pid,
                    tag: h.spec.tag.clone(),
                    digest: s.digest,
                    reason: s.reason,
                    restarts: s.restarts,
                    unenforced_limits: s.unenforced,
                    config_hash: h.hash.clone(),
                    notify_status: s.notify_status,
                    rolled_back,
                    since: s.since,
                    error: s.error,
                    last_failure: s.last_failure,
                    cpu_usec: None,
                    memory_bytes: None,
                });
            }
        }
        out
    }

    /// The specs this node refused, by app name.
    pub fn invalid_specs(&self) -> Vec<narun_wire::events::InvalidSpec> {
        self.inner
            .invalid
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Per app with a spec here: how many instances the spec asks of this node.
    pub fn desired_replicas(&self) -> BTreeMap<String, u32> {
        let (node_id, labels) = (&self.settings().node_id, &self.live().labels);
        let apps = self.inner.apps.lock().unwrap();
        apps.iter()
            .map(|(name, a)| (name.clone(), a.spec.desired_replicas(node_id, labels)))
            .collect()
    }

    /// Announce `addr` as this node's metrics target in the heartbeat (set once).
    pub fn set_metrics_addr(&self, addr: String) {
        let _ = self.inner.metrics_addr.set(addr);
    }

    /// The metrics target announced in the heartbeat, if `[metrics]` is on.
    pub fn metrics_addr(&self) -> Option<String> {
        self.inner.metrics_addr.get().cloned()
    }

    /// Where the instance cgroups live (set once at start; unset without cgroups).
    pub fn set_cgroup_root(&self, root: std::path::PathBuf) {
        let _ = self.inner.cgroup_root.set(root);
    }

    /// The directory of the instance cgroups, if narund uses cgroups.
    pub fn cgroup_root(&self) -> Option<&std::path::Path> {
        self.inner.cgroup_root.get().map(|p| p.as_path())
    }

    /// Snapshot of instance `index` of `app` (the newest run when two overlap).
    pub fn snapshot(&self, app: &str, index: u32) -> Option<Snapshot> {
        let apps = self.inner.apps.lock().unwrap();
        apps.get(app)
            .and_then(|a| a.instances.get(&index))
            .map(|h| h.snapshot())
    }

    /// Names of the apps this node currently has a spec for.
    pub fn app_names(&self) -> Vec<String> {
        self.inner.apps.lock().unwrap().keys().cloned().collect()
    }

    /// Flush log lines (bounded), e.g. before exiting.
    pub async fn flush_logs(&self, timeout: Duration) -> bool {
        self.inner.host.logs.flush(timeout).await
    }

    /// The state file.
    pub fn state_file(&self) -> &StateFile {
        self.inner.host.local.file()
    }

    /// Remove old cached binaries of `app`, keeping `keep_versions` and every binary an
    /// instance of it uses.
    pub(crate) async fn gc_binaries(&self, app: &str) {
        let protected: HashSet<Sha256Digest> = {
            let apps = self.inner.apps.lock().unwrap();
            apps.get(app)
                .map(|a| {
                    a.instances
                        .values()
                        .filter_map(|h| Sha256Digest::from_hex(&h.snapshot().digest))
                        .collect()
                })
                .unwrap_or_default()
        };
        if protected.is_empty() {
            return;
        }
        match self.inner.host.cache.gc(app, &protected).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(app, ?removed, "removed old cached binaries")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(app, error = %e, "binary cache GC"),
        }
    }

    /// Start one instance of `spec` at `index` (a new run; the caller tracks the handle).
    pub(crate) fn start_instance(&self, spec: Arc<AppSpec>, index: u32) -> InstanceHandle {
        let revision = self.revision(&spec.name);
        self.inner.host.spawn_instance(spec, index, revision, None)
    }

    /// The KV revision of the spec of `app` this node applied last (0 = from local state).
    fn revision(&self, app: &str) -> u64 {
        let apps = self.inner.apps.lock().unwrap();
        apps.get(app).map_or(0, |a| a.revision)
    }

    /// Take the adoptable run of `app` at `index` if it runs exactly `hash`.
    pub(crate) fn take_adoptable(&self, app: &str, index: u32, hash: &str) -> Option<Adoptable> {
        let mut a = self.inner.adoptable.lock().unwrap();
        let key = (app.to_string(), index);
        if a.get(&key).is_some_and(|x| x.record.run_hash == hash) {
            let mut run = a.remove(&key)?;
            run.log_fds = crate::state::fdstore::take_run(&run.record.run_id);
            Some(run)
        } else {
            None
        }
    }

    /// Continue a verified run of a previous narund as instance `index` of `spec`.
    pub(crate) fn adopt_instance(
        &self,
        spec: Arc<AppSpec>,
        index: u32,
        a: Adoptable,
    ) -> InstanceHandle {
        let revision = self.revision(&spec.name);
        self.inner
            .host
            .spawn_instance(spec, index, revision, Some(a))
    }

    /// The number of runs of a previous narund still waiting for their spec.
    pub fn adoptable_count(&self) -> usize {
        self.inner.adoptable.lock().unwrap().len()
    }

    /// End the adoption phase (after the local state was applied): runs of the previous
    /// narund that no spec claimed are killed (their whole cgroup) and forgotten, and log
    /// pipes received from the fd store that no run took are closed.
    pub async fn finish_adoption(&self) {
        let left: Vec<Adoptable> = std::mem::take(&mut *self.inner.adoptable.lock().unwrap())
            .into_values()
            .collect();
        let host = &self.inner.host;
        for a in left {
            let rec = &a.record;
            tracing::warn!(instance = %rec.instance_id, run = %rec.run_id, pid = rec.pid, "no spec claimed this run of the previous narund: killing it");
            match (&host.cgroups, rec.cgroup.is_empty()) {
                (Some(cgroups), false) => {
                    if let Ok(cg) = cgroups.open(&rec.cgroup) {
                        let _ = cg.remove(Duration::from_secs(5)).await;
                    }
                }
                // The process group of a verified run (followed, start time checked).
                _ => host.processes.signal_group(rec.pgid, libc::SIGKILL),
            }
            host.local.remove_record(&rec.run_id);
            for stream in ["stdout", "stderr"] {
                let _ = crate::state::fdstore::unpark(&crate::state::fdstore::fd_name(
                    &rec.run_id,
                    stream,
                ));
            }
        }
        let closed = crate::state::fdstore::drop_unclaimed();
        if !closed.is_empty() {
            tracing::info!(
                ?closed,
                "closed fds from systemd's fd store that no run took"
            );
            for name in closed {
                let _ = crate::state::fdstore::unpark(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
