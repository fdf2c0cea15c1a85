//! The supervisor: one task per app instance that fetches the binary, runs it in its
//! own cgroup, forwards its output, restarts it by policy and stops it cleanly.
//!
//! # Lifecycle of an instance
//!
//! ```text
//!            ┌────────── stop ─────────────────────────────────┐
//!            ▼                                                 │
//! starting ──► running ──(exit)──► stopped/crashed ──restart?──► backoff ──► starting …
//!    │            │                      │ no                     │ start limit hit
//!    │ fetch/     │ stop                 ▼                        ▼
//!    │ spawn      ▼                   (ended)                   failed (start-limit)
//!    ▼         stopping ──► stopped
//!  failed (fetch | verify | spawn | user | cgroup)
//! ```
//!
//! * **starting**: the binary is taken from the content-addressed cache (downloaded and
//!   SHA-256 verified when needed), `<data_dir>/instances/<app>-<index>/work` is created, a
//!   fresh cgroup `narun-<app>-<index>-<run>` is created with the spec's limits.
//! * **running** (with `pid`): the process runs with an *exact* environment (nothing is
//!   inherited from narund: spec env, `USER`/`HOME`/`LOGNAME`, a default `PATH`, the
//!   `NARUN_*` variables and the NATS connection variables), in its own process group and
//!   cgroup, as the spec's user with only the spec's capabilities. stdout/stderr go through
//!   [`crate::logs`] to `logs.<app>.<node>`.
//! * When the main process exits on its own, whatever is left in the cgroup (double-forked
//!   children) is killed (systemd's `KillMode=control-group`), then the exit is classified
//!   ([`ExitKind`]) and the spec's `restart` policy decides (systemd's matrix,
//!   [`narun_spec::RestartPolicy::restarts_after`]).
//! * Restarts wait an exponential backoff with jitter: 100 ms, 200 ms, 400 ms … capped at
//!   `apps.restart_backoff_max_sec`; a run of at least [`STABLE_RUN`] resets it. At most
//!   `startLimitBurst` starts per `startLimitIntervalSec` (systemd's start limit): one more
//!   gives `failed` with reason `start-limit`, and the instance stays down until the spec
//!   is applied again.
//! * **Stop** (scale down, spec change, delete, shutdown): `stopSignal` to the main
//!   process, `stopTimeoutSec` to exit, then `cgroup.kill` (SIGKILL to every process of
//!   the instance, atomically), wait until the cgroup is empty, remove it.
//!
//! * **Re-adoption**: a `running` run is recorded in `state/instances.json`; after a
//!   restart of narund a verified run is continued in *adopted* mode (no child: its exit
//!   is seen through a pidfd, its exit status is unknown). See [`crate::state::adopt`].
//!
//! Every transition is published as a [`StatusEvent`] on `status.<app>.<node>` and kept in
//! a [`Snapshot`] for the node heartbeat.
//!
//! # Zombies
//!
//! narund is a *child subreaper* ([`become_subreaper`]): when an app double-forks and the
//! middle process exits, the grandchild is re-parented to narund instead of PID 1 (which
//! on some devices does not reap). [`spawn_reaper`] reaps those orphans. It must never reap
//! a child that tokio's `Child::wait` is waiting for (the exit status would be lost), so it
//! only reaps zombies whose pid is not in the tracked set; a pid enters that set while the
//! set's lock is held around `spawn`, so no window exists where a direct child is
//! untracked, and leaves it after tokio has reaped it.

use crate::cgroup::{self, CgroupRoot, InstanceCgroup, Limits};
use crate::fetch::{BinaryCache, CachedBinary, FetchError, Sha256Digest};
use crate::instance::notify::{Datagram, Membership, Message, NotifySocket};
use crate::logs::{LogForwarder, LogSink};
use crate::privileges::{AppIdentity, PrivilegePlan};
use crate::state::{
    InstanceRecord, PersistedApp, PersistedState, RecordFile, StateFile, process_start_time,
    spec_value,
};
use crate::uring::UringHandle;
use async_nats::jetstream::object_store::ObjectStore;
use narun_spec::{AppSpec, ExitKind};
use narun_wire::connect::NatsSettings;
use narun_wire::events::{InstanceState, StatusEvent, now_rfc3339};
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use std::collections::{BTreeMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// A run at least this long resets the restart backoff to its first step.
pub const STABLE_RUN: Duration = Duration::from_secs(10);
/// First restart delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// How long a download of a binary may take before the start fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// `PATH` given to apps whose spec does not set one (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the supervisor needs from narund's configuration.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// Runtime directory (tmpfs): per-run sd_notify sockets live in
    /// `<runtime_dir>/instances/<instance>/`.
    pub runtime_dir: PathBuf,
    /// Labels of this node (for `desired_replicas`).
    pub labels: BTreeMap<String, String>,
    /// The NATS settings apps receive in their environment.
    pub nats: NatsSettings,
    /// User of apps whose spec names none.
    pub default_user: String,
    /// Whether a spec may ask for `user: root`.
    pub allow_root: bool,
    /// Cap of the restart backoff.
    pub restart_backoff_max: Duration,
    /// Binary versions kept per app.
    pub keep_versions: usize,
    /// Configured cgroup root (None = next to narund's own cgroup).
    pub cgroup_root: Option<PathBuf>,
    /// Spool size of the log forwarder.
    pub log_spool_bytes: usize,
    /// Longer output lines are forwarded in pieces.
    pub log_max_line_bytes: usize,
}

impl Default for SupervisorConfig {
    /// The defaults of [`crate::config::Config`] (what an empty `narund.toml` gives).
    fn default() -> Self {
        SupervisorConfig::from_config(&crate::config::Config::default())
    }
}

impl SupervisorConfig {
    /// From narund's [`crate::config::Config`].
    pub fn from_config(c: &crate::config::Config) -> SupervisorConfig {
        SupervisorConfig {
            node_id: c.node_id.clone(),
            data_dir: c.data_dir.clone(),
            runtime_dir: c.runtime_dir.clone(),
            labels: c.labels.clone(),
            nats: c.nats.clone(),
            default_user: c.apps.default_user.clone(),
            allow_root: c.apps.allow_root,
            restart_backoff_max: Duration::from_secs(c.apps.restart_backoff_max_sec.max(1)),
            keep_versions: c.apps.keep_versions,
            cgroup_root: c.cgroup.root.clone(),
            log_spool_bytes: c.logs.spool_bytes,
            log_max_line_bytes: c.logs.max_line_bytes,
        }
    }
}

/// The part of the configuration a `SIGHUP` reload changes while apps keep running
/// ([`Supervisor::reload`]). Everything else in [`SupervisorConfig`] needs a restart of
/// narund (node id, directories, cgroup root, NATS settings, spool size).
#[derive(Debug, Clone, PartialEq)]
pub struct Reloadable {
    pub labels: BTreeMap<String, String>,
    pub default_user: String,
    pub allow_root: bool,
    pub restart_backoff_max: Duration,
}

impl Reloadable {
    fn of(c: &SupervisorConfig) -> Reloadable {
        Reloadable {
            labels: c.labels.clone(),
            default_user: c.default_user.clone(),
            allow_root: c.allow_root,
            restart_backoff_max: c.restart_backoff_max,
        }
    }
}

/// The current state of one instance (for heartbeats, tests and the reconciler).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Last published status.
    pub status: InstanceStatus,
    pub pid: Option<i32>,
    pub reason: Option<Reason>,
    pub restarts: u32,
    /// Hex SHA-256 of the binary.
    pub digest: String,
    pub unenforced: Vec<String>,
    /// The instance task has finished: nothing runs and nothing will be restarted.
    pub ended: bool,
    /// Last `STATUS=` text of the app (sd_notify), for this run.
    pub notify_status: String,
    /// Error text of the last status event (why it crashed or failed).
    pub error: String,
    /// While `starting` with `notify: true`: when the start times out (moves with
    /// `EXTEND_TIMEOUT_USEC=`).
    pub start_deadline: Option<tokio::time::Instant>,
}

/// Shared state of the supervisor.
pub(crate) struct Inner {
    /// The configuration narund started with; its reloadable part lives in `live`.
    pub(crate) cfg: SupervisorConfig,
    /// The current reloadable settings (start values from `cfg`, then each SIGHUP).
    live: std::sync::RwLock<Arc<Reloadable>>,
    logs: LogForwarder,
    cache: BinaryCache,
    pub(crate) uring: UringHandle,
    pub(crate) cgroups: Option<CgroupRoot>,
    pub(crate) store: Mutex<Option<ObjectStore>>,
    pub(crate) apps: Mutex<BTreeMap<String, AppRun>>,
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    /// Progress of the reconciler, heartbeat and reaper (gates narund's `WATCHDOG=1`).
    pub(crate) liveness: Arc<crate::liveness::Liveness>,
    state_file: StateFile,
    persisted: Mutex<PersistedState>,
    /// Signalled on every status change (the heartbeat listens).
    pub(crate) changed: Notify,
    events: tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Secrets and mounted files of instance starts.
    pub(crate) inputs: crate::fetch::inputs::AppInputs,
    /// `state/instances.json` and its content (by run id): the runs a later narund may
    /// re-adopt ([`crate::state::adopt`]).
    records_file: RecordFile,
    records: Mutex<BTreeMap<String, InstanceRecord>>,
    /// Verified runs of a previous narund, taken by `apply` for their app and index.
    pub(crate) adoptable: Mutex<BTreeMap<(String, u32), crate::state::adopt::Adoptable>>,
}

/// Holder of the apply lock ([`Supervisor::serial`]). Fields drop in order: the declared
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
}

/// Runs app instances. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    pub(crate) inner: Arc<Inner>,
}

impl Supervisor {
    /// Create a supervisor publishing with `client` (which may still be connecting).
    /// Finds the cgroup root (without cgroups, instances run in process groups only and
    /// every limit is reported as unenforced), verifies the runs a previous narund
    /// recorded ([`crate::state::adopt`]: those become adoptable, their cgroups stay) and removes
    /// every other instance cgroup it left behind. Returns the supervisor and the log
    /// publisher task.
    pub async fn new(
        cfg: SupervisorConfig,
        client: async_nats::Client,
        uring: UringHandle,
    ) -> (Supervisor, tokio::task::JoinHandle<()>) {
        let (logs, log_task) = LogForwarder::with_config(
            client.clone(),
            crate::logs::LogForwarderConfig {
                node_id: cfg.node_id.clone(),
                spool_bytes: cfg.log_spool_bytes,
                max_line_bytes: cfg.log_max_line_bytes,
            },
            uring.clone(),
        );
        let state_file = StateFile::new(&cfg.data_dir);
        let persisted = state_file.load().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "starting without local state");
            PersistedState::default()
        });
        let records_file = RecordFile::new(&cfg.data_dir);
        let records = records_file.load().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the records of running instances; their processes are not re-adopted");
            BTreeMap::new()
        });
        let cgroup_root = CgroupRoot::discover(cfg.cgroup_root.as_deref());
        let (adoptable, rejected) = {
            let specs: Vec<AppSpec> = state_file
                .load_specs()
                .unwrap_or_default()
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            crate::state::adopt::select(
                records,
                &specs,
                |s| s.desired_replicas(&cfg.node_id, &cfg.labels),
                cgroup_root.as_ref().ok(),
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
        if let Err(e) = records_file.save(&kept) {
            tracing::warn!(error = %e, "writing the records of running instances");
        }
        let keep: HashSet<String> = kept
            .values()
            .filter(|r| !r.cgroup.is_empty())
            .map(|r| r.cgroup.clone())
            .collect();
        let cgroups = match cgroup_root {
            Ok(root) => {
                let report = root.enable_controllers();
                for f in &report.failures {
                    tracing::info!(detail = %f, "cgroup controller not enabled");
                }
                match root.cleanup_stale(&keep, Duration::from_secs(5)).await {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::warn!(?removed, "removed instance cgroups of a previous narund")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cleaning stale instance cgroups"),
                }
                Some(root)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no usable cgroup v2: apps run without cgroups (limits unenforced, stop by process group)");
                None
            }
        };
        let cache = BinaryCache::new(&cfg.data_dir, cfg.keep_versions, uring.clone());
        let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some((subject, payload)) = events_rx.recv().await {
                let _ = publisher.publish(subject, payload.into()).await;
            }
        });
        let inner = Inner {
            live: std::sync::RwLock::new(Arc::new(Reloadable::of(&cfg))),
            cfg,
            logs,
            cache,
            inputs: crate::fetch::inputs::AppInputs::new(client.clone(), uring.clone()),
            uring,
            cgroups,
            store: Mutex::new(None),
            apps: Mutex::new(BTreeMap::new()),
            apply_lock: tokio::sync::Mutex::new(()),
            liveness: Arc::new(crate::liveness::Liveness::default()),
            state_file,
            persisted: Mutex::new(persisted),
            changed: Notify::new(),
            events,
            fetch_lock: tokio::sync::Mutex::new(()),
            records_file,
            records: Mutex::new(kept),
            adoptable: Mutex::new(adoptable),
        };
        (
            Supervisor {
                inner: Arc::new(inner),
            },
            log_task,
        )
    }

    /// Progress of narund's loops; [`crate::liveness::Liveness::check`] gates `WATCHDOG=1`.
    pub fn liveness(&self) -> &crate::liveness::Liveness {
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

    /// The configuration.
    pub fn config(&self) -> &SupervisorConfig {
        &self.inner.cfg
    }

    /// The current reloadable settings (labels, default user, …).
    pub fn live(&self) -> Arc<Reloadable> {
        self.inner.live()
    }

    /// Apply a reloaded configuration (SIGHUP). The reloadable part ([`Reloadable`])
    /// takes effect now: new labels re-evaluate every known spec (instances start or stop
    /// where the selection changed; nothing else restarts), the user and backoff settings
    /// apply to the next start. Returns one line per setting that changed but needs a
    /// restart of narund, so the caller can say so.
    pub async fn reload(&self, new: SupervisorConfig) -> Vec<String> {
        let old = &self.inner.cfg;
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
        let live = Reloadable::of(&new);
        let labels_changed = {
            let mut cur = self.inner.live.write().unwrap();
            let changed = cur.labels != live.labels;
            if **cur != live {
                tracing::info!(?live, "reloaded settings");
            }
            *cur = Arc::new(live);
            changed
        };
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
            self.inner.changed.notify_waiters();
        }
        needs_restart
    }

    /// The cgroup root in use, if any.
    pub fn cgroup_root(&self) -> Option<&CgroupRoot> {
        self.inner.cgroups.as_ref()
    }

    /// Whether io_uring is in use.
    pub fn io_uring(&self) -> bool {
        self.inner.uring.available()
    }

    /// Give the supervisor the `app-binaries` store (once NATS is reachable).
    pub fn set_object_store(&self, store: Option<ObjectStore>) {
        *self.inner.store.lock().unwrap() = store;
    }

    /// Resolves when some instance changed state.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    /// Every instance with its state, sorted by app and index.
    pub fn instances(&self) -> Vec<InstanceState> {
        let apps = self.inner.apps.lock().unwrap();
        let mut out = Vec::new();
        for (name, app) in apps.iter() {
            for h in app.instances.values() {
                let s = h.snapshot();
                let rolled_back = app.rolled_back.get(&h.index).cloned();
                out.push(InstanceState {
                    instance_id: h.instance_id.clone(),
                    app_name: name.clone(),
                    status: s.status,
                    pid: s.pid,
                    tag: h.spec.tag.clone(),
                    digest: s.digest,
                    reason: s.reason,
                    restarts: s.restarts,
                    unenforced_limits: s.unenforced,
                    config_hash: h.hash.clone(),
                    notify_status: s.notify_status,
                    rolled_back,
                });
            }
        }
        out
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
        self.inner.logs.flush(timeout).await
    }

    pub(crate) fn persist_spec(&self, spec: &AppSpec) {
        let mut st = self.inner.persisted.lock().unwrap();
        let value = spec_value(spec);
        let digest = match st.apps.get(&spec.name) {
            Some(old) if old.spec == value => old.digest.clone(),
            _ => String::new(),
        };
        st.apps.insert(
            spec.name.clone(),
            PersistedApp {
                spec: value,
                digest,
            },
        );
        self.inner.save(&st);
    }

    /// Persist `spec` as the app's spec with the binary `digest` it ran (a rollback: the
    /// previous spec is what a restart of narund should start, even offline).
    pub(crate) fn persist_spec_with_digest(&self, spec: &AppSpec, digest: &str) {
        let mut st = self.inner.persisted.lock().unwrap();
        st.apps.insert(
            spec.name.clone(),
            PersistedApp {
                spec: spec_value(spec),
                digest: digest.to_string(),
            },
        );
        self.inner.save(&st);
    }

    pub(crate) fn forget_spec(&self, app: &str) {
        let mut st = self.inner.persisted.lock().unwrap();
        if st.apps.remove(app).is_some() {
            self.inner.save(&st);
        }
    }

    /// The digest persisted for exactly this spec (offline starts).
    pub(crate) fn persisted_digest(&self, spec: &AppSpec) -> Option<Sha256Digest> {
        let st = self.inner.persisted.lock().unwrap();
        st.apps
            .get(&spec.name)
            .filter(|a| a.spec == spec_value(spec))
            .and_then(|a| Sha256Digest::from_hex(&a.digest))
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
        match self.inner.cache.gc(app, &protected).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(app, ?removed, "removed old cached binaries")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(app, error = %e, "binary cache GC"),
        }
    }

    /// The state file.
    pub fn state_file(&self) -> &StateFile {
        &self.inner.state_file
    }

    /// Start one instance of `spec` at `index` (a new run; the caller tracks the handle).
    pub(crate) fn start_instance(&self, spec: Arc<AppSpec>, index: u32) -> InstanceHandle {
        self.instance_task(spec, index, None)
    }

    /// Take the adoptable run of `app` at `index` if it runs exactly `hash`.
    pub(crate) fn take_adoptable(
        &self,
        app: &str,
        index: u32,
        hash: &str,
    ) -> Option<crate::state::adopt::Adoptable> {
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

    /// Continue a verified run of a previous narund as instance `index` of `spec`
    /// (see [`crate::state::adopt`]).
    pub(crate) fn adopt_instance(
        &self,
        spec: Arc<AppSpec>,
        index: u32,
        a: crate::state::adopt::Adoptable,
    ) -> InstanceHandle {
        self.instance_task(spec, index, Some(a))
    }

    /// The number of runs of a previous narund still waiting for their spec.
    pub fn adoptable_count(&self) -> usize {
        self.inner.adoptable.lock().unwrap().len()
    }

    /// End the adoption phase (after the local state was applied): runs of the previous
    /// narund that no spec claimed are killed (their whole cgroup) and forgotten, and log
    /// pipes received from the fd store that no run took are closed.
    pub async fn finish_adoption(&self) {
        let left: Vec<crate::state::adopt::Adoptable> =
            std::mem::take(&mut *self.inner.adoptable.lock().unwrap())
                .into_values()
                .collect();
        for a in left {
            let rec = &a.record;
            tracing::warn!(instance = %rec.instance_id, run = %rec.run_id, pid = rec.pid, "no spec claimed this run of the previous narund: killing it");
            match (&self.inner.cgroups, rec.cgroup.is_empty()) {
                (Some(root), false) => {
                    if let Ok(cg) = InstanceCgroup::open(root, &rec.cgroup) {
                        let _ = cg.remove(Duration::from_secs(5)).await;
                    }
                }
                // SAFETY: the process group of a verified run (pidfd open, start time checked).
                _ => unsafe {
                    libc::killpg(rec.pgid, libc::SIGKILL);
                },
            }
            self.inner.remove_record(&rec.run_id);
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

    fn instance_task(
        &self,
        spec: Arc<AppSpec>,
        index: u32,
        resume: Option<crate::state::adopt::Adoptable>,
    ) -> InstanceHandle {
        let pinned = self.persisted_digest(&spec);
        let instance_id = format!("{}-{}", spec.name, index);
        let (status_tx, status_rx) = watch::channel(Snapshot {
            status: InstanceStatus::Starting,
            ..Default::default()
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = InstanceHandle {
            instance_id: instance_id.clone(),
            index,
            hash: spec.run_hash(),
            spec: spec.clone(),
            status: status_rx,
            stop: Arc::new(stop_tx),
        };
        let run = InstanceRun {
            inner: self.inner.clone(),
            sink: self.inner.logs.sink(&spec.name, &instance_id),
            spec,
            index,
            instance_id,
            run_id: String::new(),
            status: status_tx,
            stop: stop_rx,
            pinned,
            notify_env: Vec::new(),
            secret_env: Vec::new(),
            pgid: 0,
            cgroup_name: String::new(),
        };
        tokio::spawn(run.run(resume));
        handle
    }
}

impl Inner {
    pub(crate) fn live(&self) -> Arc<Reloadable> {
        self.live.read().unwrap().clone()
    }

    /// Queue a core-NATS publish (like Go: not JetStream). One publisher task sends them in
    /// order, so a disconnected client never stalls an instance and events keep their order;
    /// async-nats buffers them until the connection is back.
    pub(crate) fn publish(&self, subject: String, payload: Vec<u8>) {
        let _ = self.events.send((subject, payload));
    }

    fn save(&self, st: &PersistedState) {
        if let Err(e) = self.state_file.save(st) {
            tracing::warn!(error = %e, "persisting local state");
        }
    }

    /// Insert or replace the record of a running run (written only when it changed).
    fn put_record(&self, rec: InstanceRecord) {
        let mut records = self.records.lock().unwrap();
        if records.get(&rec.run_id) == Some(&rec) {
            return;
        }
        records.insert(rec.run_id.clone(), rec);
        if let Err(e) = self.records_file.save(&records) {
            tracing::warn!(error = %e, "writing the records of running instances");
        }
    }

    /// The run has ended: a later narund must not adopt anything of it.
    fn remove_record(&self, run_id: &str) {
        let mut records = self.records.lock().unwrap();
        if records.remove(run_id).is_some()
            && let Err(e) = self.records_file.save(&records)
        {
            tracing::warn!(error = %e, "writing the records of running instances");
        }
    }

    fn record_digest(&self, spec: &AppSpec, digest: &Sha256Digest) {
        let mut st = self.persisted.lock().unwrap();
        if let Some(app) = st.apps.get_mut(&spec.name)
            && app.spec == spec_value(spec)
            && app.digest != digest.to_hex()
        {
            app.digest = digest.to_hex();
            self.save(&st);
        }
    }
}

/// The supervisor's handle on one instance run. Cheap to clone.
#[derive(Clone)]
pub struct InstanceHandle {
    pub instance_id: String,
    pub index: u32,
    /// `config_hash` of the spec this instance runs.
    pub hash: String,
    pub spec: Arc<AppSpec>,
    status: watch::Receiver<Snapshot>,
    stop: Arc<watch::Sender<bool>>,
}

impl InstanceHandle {
    /// Current state.
    pub fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }

    /// Wait until `pred` holds for the state, at most `timeout`. Returns the state then
    /// (or the last state on timeout, as `Err`).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, Snapshot> {
        let mut rx = self.status.clone();
        match tokio::time::timeout(timeout, rx.wait_for(pred)).await {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(self.snapshot()),
        }
    }

    /// Ask the instance to stop (no restart) and wait until it has ended: stop signal,
    /// `stopTimeoutSec`, then SIGKILL of the whole cgroup.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        // The stop itself is bounded by stopTimeoutSec + the cgroup wait; add a margin.
        let bound = Duration::from_secs(self.spec.stop_timeout_sec) + Duration::from_secs(30);
        if self.wait_for(bound, |s| s.ended).await.is_err() {
            tracing::error!(instance = %self.instance_id, "instance did not end after stop");
        }
    }
}

/// How one run ended.
struct Outcome {
    kind: ExitKind,
    status: InstanceStatus,
    exit_code: i32,
    reason: Reason,
    error: String,
}

/// Why a start did not get to a running process.
struct StartFailure {
    reason: Reason,
    error: String,
    /// `ETXTBSY`: another thread's fork still held a write fd of the freshly written binary.
    text_busy: bool,
}

/// The task of one instance.
struct InstanceRun {
    inner: Arc<Inner>,
    sink: LogSink,
    spec: Arc<AppSpec>,
    index: u32,
    instance_id: String,
    run_id: String,
    status: watch::Sender<Snapshot>,
    stop: watch::Receiver<bool>,
    pinned: Option<Sha256Digest>,
    /// `NOTIFY_SOCKET` / `WATCHDOG_USEC` of the current run (empty without sd_notify).
    notify_env: Vec<(String, String)>,
    /// Decrypted `valueFromSecret` variables of the current start (memory only).
    secret_env: Vec<(String, String)>,
    /// Process group (= started pid) of the current run, for its record.
    pgid: i32,
    /// Instance cgroup name of the current run (empty without cgroups).
    cgroup_name: String,
}

struct Running {
    /// The started process (`None` for a run adopted from a previous narund).
    child: Option<tokio::process::Child>,
    /// A run adopted from a previous narund: its main process, followed through a pidfd.
    resumed: Option<crate::instance::notify::Pidfd>,
    pid: i32,
    cgroup: Option<InstanceCgroup>,
    log_tasks: Vec<tokio::task::JoinHandle<()>>,
    oom_before: u64,
    /// The run's sd_notify socket (`notify: true` or `watchdogSec`).
    notify: Option<NotifySocket>,
    /// Who may send on `notify`.
    membership: Membership,
    /// `notify: true`: READY=1 must arrive before this.
    start_deadline: Option<tokio::time::Instant>,
}

/// Why narund ended a run that was not asked to stop.
enum RunFailure {
    /// No `READY=1` within `startTimeoutSec` (plus `EXTEND_TIMEOUT_USEC=` extensions).
    StartTimeout,
    /// A missed watchdog deadline or `WATCHDOG=1`: what happened.
    Watchdog(String),
}

/// The sd_notify state of one run (see [`crate::instance::notify`]).
struct NotifyRun {
    /// `READY=1` received (always true without `notify: true`).
    ready: bool,
    reloading: bool,
    /// The pid that receives the stop signal and SIGABRT (`MAINPID=`).
    main_pid: i32,
    start_deadline: Option<tokio::time::Instant>,
    watchdog_period: Option<Duration>,
    /// Armed once the run is ready; each `WATCHDOG=1` moves it.
    watchdog_deadline: Option<tokio::time::Instant>,
    started: tokio::time::Instant,
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn pidfd_exited(p: Option<&crate::instance::notify::Pidfd>) {
    match p {
        Some(p) => {
            if p.exited().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// Exit status of a followed MAINPID process: known when it was narund's child, else
/// reported as a clean exit (nothing better is known; see docs/supervisor.md).
fn adopted_status(p: Option<&crate::instance::notify::Pidfd>) -> std::process::ExitStatus {
    p.and_then(|p| p.exit_status())
        .unwrap_or_else(|| std::process::ExitStatus::from_raw(0))
}

/// Wait for the main process: the started child, or the followed MAINPID process.
async fn wait_main(
    child: &mut Option<tokio::process::Child>,
    adopted: Option<&crate::instance::notify::Pidfd>,
) -> std::io::Result<std::process::ExitStatus> {
    match (adopted, child) {
        (Some(p), _) => {
            p.exited().await?;
            Ok(adopted_status(Some(p)))
        }
        (None, Some(c)) => c.wait().await,
        (None, None) => Err(std::io::Error::other("no process to wait for")),
    }
}

/// Wait for the started child; never resolves for an adopted run (no child).
async fn child_wait(
    child: &mut Option<tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(sock: Option<&NotifySocket>) -> std::io::Result<Datagram> {
    match sock {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl InstanceRun {
    async fn run(mut self, mut resume: Option<crate::state::adopt::Adoptable>) {
        let mut starts: std::collections::VecDeque<Instant> = Default::default();
        let mut attempt: u32 = 0;
        let mut restarts: u32 = 0;
        loop {
            if let Some(a) = resume.take() {
                // A run of a previous narund: no start, it is running already.
                let running = self.resume(a);
                let started = Instant::now();
                let (outcome, intentional) = self.wait(running).await;
                if self
                    .after_run(outcome, intentional, started, &mut attempt, &mut restarts)
                    .await
                {
                    continue;
                }
                break;
            }
            if *self.stop.borrow() {
                self.publish(InstanceStatus::Stopped, None, None, None, String::new());
                break;
            }
            // Start limit (systemd StartLimitBurst/StartLimitIntervalSec).
            let interval = Duration::from_secs(self.spec.start_limit_interval_sec);
            if !interval.is_zero() {
                let now = Instant::now();
                while starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > interval)
                {
                    starts.pop_front();
                }
                if starts.len() >= self.spec.start_limit_burst as usize {
                    let msg = format!(
                        "started {} times within {}s (startLimitBurst/startLimitIntervalSec); not restarting until the spec is applied again",
                        starts.len(),
                        interval.as_secs()
                    );
                    self.sink.line("stderr", &format!("narund: {msg}"));
                    self.publish(
                        InstanceStatus::Failed,
                        None,
                        Some(Reason::StartLimit),
                        None,
                        msg,
                    );
                    break;
                }
                starts.push_back(now);
            }
            self.run_id = new_run_id();
            self.status.send_modify(|s| s.notify_status.clear());
            self.publish(InstanceStatus::Starting, None, None, None, String::new());
            let running = match self.start().await {
                Ok(r) => r,
                Err(f) => {
                    self.sink
                        .line("stderr", &format!("narund: start failed: {}", f.error));
                    self.publish(InstanceStatus::Failed, None, Some(f.reason), None, f.error);
                    break;
                }
            };
            let started = Instant::now();
            let (outcome, intentional) = self.wait(running).await;
            if !self
                .after_run(outcome, intentional, started, &mut attempt, &mut restarts)
                .await
            {
                break;
            }
        }
        self.status.send_modify(|s| {
            s.ended = true;
            s.pid = None;
        });
        self.inner.changed.notify_waiters();
    }

    /// After a run: report how it ended and wait the backoff when the policy restarts it.
    /// Returns whether to start again.
    async fn after_run(
        &mut self,
        outcome: Outcome,
        intentional: bool,
        started: Instant,
        attempt: &mut u32,
        restarts: &mut u32,
    ) -> bool {
        if intentional {
            self.publish(InstanceStatus::Stopped, None, None, None, String::new());
            return false;
        }
        self.sink.line(
            "stderr",
            &format!("narund: process ended: {}", outcome.error),
        );
        self.publish(
            outcome.status,
            None,
            Some(outcome.reason.clone()),
            Some(outcome.exit_code),
            outcome.error.clone(),
        );
        if !self.spec.restart.restarts_after(outcome.kind) {
            return false;
        }
        if started.elapsed() >= STABLE_RUN {
            *attempt = 0;
        }
        let delay = backoff(*attempt, self.inner.live().restart_backoff_max);
        *attempt = attempt.saturating_add(1);
        *restarts += 1;
        let n = *restarts;
        self.status.send_modify(|s| s.restarts = n);
        self.publish(
            InstanceStatus::Backoff,
            None,
            Some(outcome.reason),
            None,
            format!("restart {n} in {} ms", delay.as_millis()),
        );
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => {}
        }
        true
    }

    /// Take over a verified run of a previous narund (see [`crate::state::adopt`]): open its
    /// cgroup, re-bind its notify socket at the same path, take its log pipes back from
    /// the fd store when there are any, and report it `running` (reason `adopted`).
    fn resume(&mut self, a: crate::state::adopt::Adoptable) -> Running {
        let rec = a.record;
        self.run_id = rec.run_id.clone();
        self.notify_env.clear();
        if !rec.notify_socket.is_empty() {
            self.notify_env
                .push(("NOTIFY_SOCKET".into(), rec.notify_socket.clone()));
        }
        self.pgid = rec.pgid;
        self.cgroup_name = rec.cgroup.clone();
        self.pinned = Sha256Digest::from_hex(&rec.digest);
        self.status.send_modify(|s| {
            s.digest = rec.digest.clone();
            s.notify_status.clear();
        });
        let cgroup = match (&self.inner.cgroups, rec.cgroup.is_empty()) {
            (Some(root), false) => match InstanceCgroup::open(root, &rec.cgroup) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(instance = %self.instance_id, error = %e, "adopted run: cannot open its cgroup; it is stopped by process group");
                    None
                }
            },
            _ => None,
        };
        let mut notify = None;
        let watchdog = self.spec.watchdog_sec.unwrap_or(0);
        if (self.spec.notify || watchdog > 0) && !rec.notify_socket.is_empty() {
            let owner = if unsafe { libc::geteuid() } == 0 {
                let user = (!self.spec.user.is_empty()).then_some(self.spec.user.as_str());
                let live = self.inner.live();
                AppIdentity::resolve(user, &live.default_user, live.allow_root)
                    .ok()
                    .map(|id| (id.uid, id.gid))
            } else {
                None
            };
            match NotifySocket::bind(std::path::Path::new(&rec.notify_socket), owner) {
                Ok(sock) => notify = Some(sock),
                Err(e) => {
                    tracing::warn!(instance = %self.instance_id, error = %e, "adopted run: cannot re-bind its notify socket; its notifications are ignored")
                }
            }
        }
        let log_tasks = a
            .log_fds
            .into_iter()
            .map(|(stream, fd)| self.sink.attach(stream, fd))
            .collect();
        let oom_before = cgroup
            .as_ref()
            .and_then(|c| c.memory_events().ok())
            .map(|m| m.oom_kill)
            .unwrap_or(0);
        let membership = Membership::of_instance(
            rec.pid,
            cgroup
                .as_ref()
                .zip(self.inner.cgroups.as_ref())
                .map(|(c, root)| (c.path(), root.mount_point())),
        );
        let msg = format!(
            "re-adopted pid {} of run {} after a restart of narund",
            rec.pid, rec.run_id
        );
        self.sink.line("stderr", &format!("narund: {msg}"));
        self.publish(
            InstanceStatus::Running,
            Some(rec.pid),
            Some(Reason::Adopted),
            None,
            msg,
        );
        Running {
            child: None,
            resumed: Some(a.pidfd),
            pid: rec.pgid,
            cgroup,
            log_tasks,
            oom_before,
            notify,
            membership,
            start_deadline: None,
        }
    }

    /// Keep the record of the current run up to date (called on `running`).
    fn save_record(&self, pid: i32) {
        let Some(start_time) = process_start_time(pid) else {
            return;
        };
        let revision = self
            .inner
            .apps
            .lock()
            .unwrap()
            .get(&self.spec.name)
            .map(|a| a.revision)
            .unwrap_or(0);
        let notify_socket = self
            .notify_env
            .iter()
            .find(|(k, _)| k == "NOTIFY_SOCKET")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.inner.put_record(InstanceRecord {
            app: self.spec.name.clone(),
            index: self.index,
            instance_id: self.instance_id.clone(),
            run_id: self.run_id.clone(),
            pid,
            pgid: self.pgid,
            start_time,
            cgroup: self.cgroup_name.clone(),
            run_hash: self.spec.run_hash(),
            digest: self.status.borrow().digest.clone(),
            revision,
            notify_socket,
        });
    }

    /// Publish a status event and update the snapshot.
    fn publish(
        &self,
        status: InstanceStatus,
        pid: Option<i32>,
        reason: Option<Reason>,
        exit_code: Option<i32>,
        error: String,
    ) {
        let mut unenforced = Vec::new();
        let mut restarts = 0;
        let mut notify_status = String::new();
        self.status.send_modify(|s| {
            s.status = status.clone();
            s.pid = pid;
            s.reason = reason.clone();
            unenforced = s.unenforced.clone();
            restarts = s.restarts;
            notify_status = s.notify_status.clone();
            s.error = error.clone();
            if status != InstanceStatus::Starting {
                s.start_deadline = None;
            }
        });
        let ev = StatusEvent {
            instance_id: self.instance_id.clone(),
            node_id: self.inner.cfg.node_id.clone(),
            status: status.clone(),
            pid,
            exit_code,
            error,
            time: now_rfc3339(),
            reason: reason.clone(),
            app_name: self.spec.name.clone(),
            run_id: self.run_id.clone(),
            tag: self.spec.tag.clone(),
            unenforced_limits: unenforced,
            restarts: (restarts > 0).then_some(restarts),
            config_hash: self.spec.run_hash(),
            notify_status,
        };
        if status == InstanceStatus::Running
            && let Some(pid) = pid
        {
            self.save_record(pid);
        }
        tracing::info!(instance = %self.instance_id, run = %self.run_id, %status, reason = reason.as_ref().map_or("", Reason::as_str), pid, "instance status");
        let subject = names::status_subject(&self.spec.name, &self.inner.cfg.node_id);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.inner.publish(subject, payload);
        self.inner.changed.notify_waiters();
    }

    /// Fetch, prepare and spawn.
    async fn start(&mut self) -> Result<Running, StartFailure> {
        let bin = self.binary().await?;
        self.status.send_modify(|s| s.digest = bin.digest.to_hex());
        self.inner.record_digest(&self.spec, &bin.digest);
        self.pinned = Some(bin.digest);

        let identity = if unsafe { libc::geteuid() } == 0 {
            let user = (!self.spec.user.is_empty()).then_some(self.spec.user.as_str());
            let live = self.inner.live();
            Some(
                AppIdentity::resolve(user, &live.default_user, live.allow_root).map_err(|e| {
                    StartFailure {
                        reason: Reason::User,
                        error: e.to_string(),
                        text_busy: false,
                    }
                })?,
            )
        } else {
            tracing::warn!(instance = %self.instance_id, "narund is not root: the app runs as narund's user, with narund's capabilities");
            None
        };

        let work = self
            .inner
            .cfg
            .data_dir
            .join("instances")
            .join(crate::fetch::sanitize(&self.instance_id))
            .join("work");
        let spawn_err = |what: &str, e: &dyn std::fmt::Display| StartFailure {
            reason: Reason::Spawn,
            error: format!("{what}: {e}"),
            text_busy: false,
        };
        std::fs::create_dir_all(&work)
            .map_err(|e| spawn_err(&format!("creating {}", work.display()), &e))?;
        if let Some(id) = &identity {
            let c = std::ffi::CString::new(work.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: plain chown on a valid C string.
            unsafe { libc::chown(c.as_ptr(), id.uid, id.gid) };
        }
        // Mounted files from narun-files, then secrets from narun-secrets (crate::fetch::inputs).
        let input_err = |e: crate::fetch::inputs::InputError| StartFailure {
            reason: e.reason(),
            error: e.to_string(),
            text_busy: false,
        };
        let owner = identity.as_ref().map(|id| (id.uid, id.gid));
        let inputs = &self.inner.inputs;
        inputs
            .place_mounts(&self.spec, &work, owner)
            .await
            .map_err(input_err)?;
        self.secret_env = inputs.secret_env(&self.spec).await.map_err(input_err)?;

        // sd_notify: one socket per run (see crate::instance::notify), bound before the cgroup so a
        // failure leaves nothing behind.
        let watchdog = self.spec.watchdog_sec.unwrap_or(0);
        self.notify_env.clear();
        let notify = if self.spec.notify || watchdog > 0 {
            let dir = self.inner.cfg.runtime_dir.join("instances");
            let notify_err = |e: &dyn std::fmt::Display| StartFailure {
                reason: Reason::Notify,
                error: format!("sd_notify socket: {e}"),
                text_busy: false,
            };
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                })
                .map_err(|e| notify_err(&format!("creating {}: {e}", dir.display())))?;
            let path = dir
                .join(crate::fetch::sanitize(&self.instance_id))
                .join(format!("notify-{}", &self.run_id[..8]));
            let sock = NotifySocket::bind(&path, identity.as_ref().map(|i| (i.uid, i.gid)))
                .map_err(|e| notify_err(&e))?;
            self.notify_env
                .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
            if watchdog > 0 {
                self.notify_env.push((
                    "WATCHDOG_USEC".into(),
                    watchdog.saturating_mul(1_000_000).to_string(),
                ));
            }
            Some(sock)
        } else {
            None
        };

        let mut limits = Limits::from_spec(
            self.spec.memory_mb,
            self.spec.memory_max_mb,
            self.spec.cpu_cores,
        );
        limits.pids_max = self.spec.pids_max;
        limits.cpu_weight = self.spec.cpu_weight.map(|w| w.min(10_000) as u32);
        let cgroup = match &self.inner.cgroups {
            Some(root) => {
                let name = cgroup::instance_name(&self.spec.name, self.index, &self.run_id);
                Some(
                    InstanceCgroup::create(root, &name, &limits).map_err(|e| StartFailure {
                        reason: Reason::Cgroup,
                        error: e.to_string(),
                        text_busy: false,
                    })?,
                )
            }
            None => None,
        };
        let unenforced: Vec<String> = match &cgroup {
            Some(cg) => cg.unenforced().iter().map(|s| s.to_string()).collect(),
            None if limits != Limits::default() => vec!["cgroup".into()],
            None => vec![],
        };
        self.status.send_modify(|s| s.unenforced = unenforced);

        // ETXTBSY: a fork of another thread (any spawn in narund) may still hold the write fd
        // of a binary that was just downloaded, until its exec closes it (the classic
        // fork/exec race, Go issue 22315). It clears within milliseconds: retry.
        let mut result = self.spawn(&bin, &work, identity.as_ref(), cgroup.as_ref());
        for _ in 0..20 {
            match &result {
                Err(f) if f.text_busy => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    result = self.spawn(&bin, &work, identity.as_ref(), cgroup.as_ref());
                }
                _ => break,
            }
        }
        // The plaintext now lives in the child's environment only.
        self.secret_env = Vec::new();
        match result {
            Ok((child, log_tasks)) => {
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                self.pgid = pid;
                self.cgroup_name = cgroup
                    .as_ref()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default();
                let oom_before = cgroup
                    .as_ref()
                    .and_then(|c| c.memory_events().ok())
                    .map(|m| m.oom_kill)
                    .unwrap_or(0);
                let membership = Membership::of_instance(
                    pid,
                    cgroup
                        .as_ref()
                        .zip(self.inner.cgroups.as_ref())
                        .map(|(c, root)| (c.path(), root.mount_point())),
                );
                let start_deadline =
                    (self.spec.notify && self.spec.start_timeout_sec > 0).then(|| {
                        tokio::time::Instant::now()
                            + Duration::from_secs(self.spec.start_timeout_sec)
                    });
                if self.spec.notify {
                    // Ready only with READY=1 (see wait()).
                    self.status
                        .send_modify(|s| s.start_deadline = start_deadline);
                    self.publish(
                        InstanceStatus::Starting,
                        Some(pid),
                        None,
                        None,
                        String::new(),
                    );
                } else {
                    self.publish(
                        InstanceStatus::Running,
                        Some(pid),
                        None,
                        None,
                        String::new(),
                    );
                }
                Ok(Running {
                    child: Some(child),
                    resumed: None,
                    pid,
                    cgroup,
                    log_tasks,
                    oom_before,
                    notify,
                    membership,
                    start_deadline,
                })
            }
            Err(f) => {
                if let Some(cg) = cgroup {
                    let _ = cg.remove(Duration::from_secs(5)).await;
                }
                Err(f)
            }
        }
    }

    /// The verified binary: from the object store when connected (the cache avoids the
    /// download), otherwise the cached file of the digest this spec last ran.
    async fn binary(&self) -> Result<CachedBinary, StartFailure> {
        let store = self.inner.store.lock().unwrap().clone();
        let (os, arch) = (names::go_os(), names::go_arch());
        // A restart of the same spec reuses the binary of the first start.
        let mut unreachable = String::from("NATS is not reachable");
        if self.pinned.is_none()
            && let Some(store) = store
        {
            // One download at a time: two instances of a new spec would otherwise both
            // miss the cache and write the same binary twice.
            let _one = self.inner.fetch_lock.lock().await;
            let fetched = tokio::time::timeout(
                FETCH_TIMEOUT,
                self.inner
                    .cache
                    .fetch(&store, &self.spec.name, &self.spec.tag, os, arch),
            )
            .await;
            match fetched {
                Ok(Ok(b)) => return Ok(b),
                Ok(Err(e @ (FetchError::Mismatch { .. } | FetchError::BadDigest { .. }))) => {
                    return Err(StartFailure {
                        reason: Reason::Verify,
                        error: e.to_string(),
                        text_busy: false,
                    });
                }
                // async-nats checks the digest while streaming: its error is a verification failure.
                Ok(Err(e @ FetchError::Nats { .. }))
                    if e.to_string().to_ascii_lowercase().contains("digest") =>
                {
                    return Err(StartFailure {
                        reason: Reason::Verify,
                        error: e.to_string(),
                        text_busy: false,
                    });
                }
                Ok(Err(FetchError::Nats { message, .. })) => {
                    tracing::warn!(instance = %self.instance_id, %message, "object store request failed, trying the local cache");
                    unreachable = format!("the object store request failed: {message}");
                }
                Ok(Err(e)) => {
                    return Err(StartFailure {
                        reason: Reason::Fetch,
                        error: e.to_string(),
                        text_busy: false,
                    });
                }
                Err(_) => {
                    tracing::warn!(instance = %self.instance_id, "binary download timed out, trying the local cache");
                    unreachable = format!("the download took longer than {FETCH_TIMEOUT:?}");
                }
            }
        }
        let Some(digest) = self.pinned.or_else(|| {
            Supervisor {
                inner: self.inner.clone(),
            }
            .persisted_digest(&self.spec)
        }) else {
            return Err(StartFailure {
                reason: Reason::Fetch,
                error: format!(
                    "binary {} is not cached and {unreachable}; it is fetched again when the spec is applied again",
                    self.spec.binary_object_name(os, arch)
                ),
                text_busy: false,
            });
        };
        let path = self.inner.cache.path_for(&self.spec.name, &digest);
        match self.inner.uring.hash_file(&path).await {
            Ok(h) if h == digest.0 => Ok(CachedBinary {
                path,
                digest,
                downloaded: false,
            }),
            Ok(_) => Err(StartFailure {
                reason: Reason::Verify,
                error: format!(
                    "cached binary {} does not match its digest {digest}; it will be downloaded again when NATS is reachable",
                    path.display()
                ),
                text_busy: false,
            }),
            Err(e) => Err(StartFailure {
                reason: Reason::Fetch,
                error: format!("cached binary {}: {e}", path.display()),
                text_busy: false,
            }),
        }
    }

    fn spawn(
        &self,
        bin: &CachedBinary,
        work: &std::path::Path,
        identity: Option<&AppIdentity>,
        cgroup: Option<&InstanceCgroup>,
    ) -> Result<(tokio::process::Child, Vec<tokio::task::JoinHandle<()>>), StartFailure> {
        let fail = |what: &str, e: &dyn std::fmt::Display| StartFailure {
            reason: Reason::Spawn,
            error: format!("{what}: {e}"),
            text_busy: false,
        };
        let mut cmd = tokio::process::Command::new(&bin.path);
        cmd.args(&self.spec.args)
            .env_clear()
            .envs(self.environment(identity, work))
            .envs(self.notify_env.iter().cloned())
            .current_dir(work)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .process_group(0);
        let (out_r, out_w) = std::io::pipe().map_err(|e| fail("creating a pipe", &e))?;
        let (err_r, err_w) = std::io::pipe().map_err(|e| fail("creating a pipe", &e))?;
        cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        if let Some(cg) = cgroup {
            cg.place_command(cmd.as_std_mut())
                .map_err(|e| fail("placing into the cgroup", &e))?;
        }
        if let Some(id) = identity {
            let mut keep = Vec::new();
            for c in &self.spec.capabilities {
                let cap = c
                    .parse::<caps::Capability>()
                    .map_err(|e| fail(&format!("capability {c}"), &e))?;
                keep.push(cap);
            }
            let plan = PrivilegePlan::new(id, &keep).map_err(|e| StartFailure {
                reason: Reason::User,
                error: e.to_string(),
                text_busy: false,
            })?;
            plan.install(cmd.as_std_mut());
        }
        let child = {
            let mut tracked = TRACKED.lock().unwrap();
            let child = cmd.spawn().map_err(|e| StartFailure {
                text_busy: e.raw_os_error() == Some(libc::ETXTBSY),
                ..fail(&format!("starting {}", bin.path.display()), &e)
            })?;
            if let Some(pid) = child.id() {
                tracked.insert(pid as i32);
            }
            child
        };
        // Drop our copies of the write ends, so the readers see EOF when the app exits.
        drop(cmd);
        // Under systemd: a copy of each read end waits in the fd store, so the app keeps
        // its pipes if narund dies (crate::state::fdstore).
        for (stream, fd) in [
            ("stdout", std::os::fd::AsFd::as_fd(&out_r)),
            ("stderr", std::os::fd::AsFd::as_fd(&err_r)),
        ] {
            let name = crate::state::fdstore::fd_name(&self.run_id, stream);
            if let Err(e) = crate::state::fdstore::park(&name, fd) {
                tracing::warn!(instance = %self.instance_id, error = %e, "cannot park the log pipe in systemd's fd store; the app loses its output pipe if narund dies");
            }
        }
        let log_tasks = vec![
            self.sink.attach("stdout", OwnedFd::from(out_r)),
            self.sink.attach("stderr", OwnedFd::from(err_r)),
        ];
        Ok((child, log_tasks))
    }

    /// The exact environment of the app.
    fn environment(
        &self,
        identity: Option<&AppIdentity>,
        work: &std::path::Path,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        if let Some(id) = identity {
            env.insert("USER".into(), id.user.clone());
            env.insert("LOGNAME".into(), id.user.clone());
            env.insert("HOME".into(), id.home.display().to_string());
        }
        for e in &self.spec.env {
            if e.value_from_secret.is_empty() {
                env.insert(e.name.clone(), e.value.clone());
            } else if let Some((_, v)) = self.secret_env.iter().find(|(k, _)| *k == e.name) {
                env.insert(e.name.clone(), v.clone());
            }
        }
        use narun_wire::names::env as n;
        for (k, v) in [
            (n::APP_NAME, self.spec.name.clone()),
            (n::INSTANCE_ID, self.instance_id.clone()),
            (n::RUN_ID, self.run_id.clone()),
            (n::REPLICA_INDEX, self.index.to_string()),
            (n::NODE_ID, self.inner.cfg.node_id.clone()),
            (n::NODE_OS, names::go_os().into()),
            (n::NODE_ARCH, names::go_arch().into()),
            (n::INSTANCE_ROOT, work.display().to_string()),
        ] {
            env.insert(k.into(), v);
        }
        for (k, v) in self.inner.cfg.nats.to_env() {
            env.insert(k.into(), v);
        }
        env.into_iter().collect()
    }

    /// Wait for the process to end or for a stop request. Returns how it ended and whether
    /// the end was asked for.
    async fn wait(&mut self, mut r: Running) -> (Outcome, bool) {
        let mut stop = self.stop.clone();
        let mut intentional = false;
        let now = tokio::time::Instant::now();
        let watchdog_period = self
            .spec
            .watchdog_sec
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        // The main process of a run adopted from a previous narund, whose exit status is
        // unknown (not our child): followed from the start.
        let mut adopted: Option<crate::instance::notify::Pidfd> = r.resumed.take();
        let from_record = adopted.is_some();
        let mut n = NotifyRun {
            // An adopted run was `running` (ready) when it was recorded.
            ready: !self.spec.notify || from_record,
            reloading: false,
            main_pid: adopted.as_ref().map(|p| p.pid()).unwrap_or(r.pid),
            start_deadline: r.start_deadline,
            watchdog_period,
            // Without `notify` the run is ready at once and the watchdog runs from the start
            // (for an adopted run: from the adoption).
            watchdog_deadline: watchdog_period
                .filter(|_| !self.spec.notify || from_record)
                .map(|p| now + p),
            started: now,
        };
        // Set when the adopted process exited and its status is not known.
        let mut status_unknown = false;
        let mut socket = r.notify.take();
        let mut membership = r.membership.clone();
        let mut failure: Option<RunFailure> = None;
        // Else: the MAINPID= process narund follows after the started process exited.
        let early = loop {
            let (start_at, watchdog_at) = (n.start_deadline, n.watchdog_deadline);
            tokio::select! {
                st = child_wait(&mut r.child), if adopted.is_none() => {
                    // Read what was sent just before the exit (a forking daemon's MAINPID=).
                    while let Some(Ok(Some(d))) = socket.as_ref().map(|s| s.try_recv()) {
                        let _ = self.on_notify(&mut n, &membership, d);
                    }
                    if n.main_pid != r.pid && membership.contains(n.main_pid) {
                        match crate::instance::notify::Pidfd::open(n.main_pid) {
                            Ok(fd) => {
                                TRACKED.lock().unwrap().insert(n.main_pid);
                                if let Membership::Descendants(_) = membership {
                                    membership = Membership::Descendants(n.main_pid);
                                }
                                let msg = format!(
                                    "the started process exited ({}); following MAINPID {}",
                                    st.as_ref().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                                    n.main_pid
                                );
                                self.sink.line("stderr", &format!("narund: {msg}"));
                                let status = self.status.borrow().status.clone();
                                self.publish(status, Some(n.main_pid), Some(Reason::MainPid), None, msg);
                                adopted = Some(fd);
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(instance = %self.instance_id, pid = n.main_pid, error = %e, "cannot follow MAINPID (pidfd_open); the run ends with the started process");
                            }
                        }
                    }
                    break Some(st);
                }
                _ = pidfd_exited(adopted.as_ref()) => {
                    let st = adopted.as_ref().and_then(|p| p.exit_status());
                    status_unknown = from_record && st.is_none();
                    break Some(Ok(st.unwrap_or_else(|| std::process::ExitStatus::from_raw(0))));
                }
                _ = stopped(&mut stop) => break None,
                _ = sleep_until_opt(start_at) => {
                    failure = Some(RunFailure::StartTimeout);
                    break None;
                }
                _ = sleep_until_opt(watchdog_at) => {
                    let period = n.watchdog_period.unwrap_or_default();
                    failure = Some(RunFailure::Watchdog(format!(
                        "watchdog timeout: no WATCHDOG=1 within {} ms",
                        period.as_millis()
                    )));
                    break None;
                }
                d = recv_opt(socket.as_ref()) => match d {
                    Ok(d) => {
                        if let Some(f) = self.on_notify(&mut n, &membership, d) {
                            failure = Some(f);
                            break None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(instance = %self.instance_id, error = %e, "sd_notify socket failed; notifications of this run are ignored from now on");
                        socket = None;
                    }
                },
            }
        };
        let status = match early {
            Some(st) => st,
            None => {
                let sig = match &failure {
                    None => {
                        intentional = true;
                        self.publish(
                            InstanceStatus::Stopping,
                            Some(n.main_pid),
                            None,
                            None,
                            String::new(),
                        );
                        self.spec.stop_signal.number().unwrap_or(libc::SIGTERM)
                    }
                    Some(RunFailure::StartTimeout) => {
                        let msg = format!(
                            "no READY=1 within {} s (startTimeoutSec); stopping it",
                            n.started.elapsed().as_secs()
                        );
                        self.sink.line("stderr", &format!("narund: {msg}"));
                        self.publish(
                            InstanceStatus::Stopping,
                            Some(n.main_pid),
                            Some(Reason::StartTimeout),
                            None,
                            msg,
                        );
                        self.spec.stop_signal.number().unwrap_or(libc::SIGTERM)
                    }
                    Some(RunFailure::Watchdog(why)) => {
                        let msg = format!("{why}; sending SIGABRT");
                        self.sink.line("stderr", &format!("narund: {msg}"));
                        self.publish(
                            InstanceStatus::Stopping,
                            Some(n.main_pid),
                            Some(Reason::Watchdog),
                            None,
                            msg,
                        );
                        libc::SIGABRT
                    }
                };
                // SAFETY: kill(2) on our own, not yet reaped, child, or on the MAINPID= the
                // app named, which was inside the instance when it was accepted.
                unsafe { libc::kill(n.main_pid, sig) };
                let timeout = Duration::from_secs(self.spec.stop_timeout_sec);
                match tokio::time::timeout(timeout, wait_main(&mut r.child, adopted.as_ref())).await
                {
                    Ok(st) => st,
                    Err(_) => {
                        tracing::warn!(instance = %self.instance_id, "did not stop within stopTimeoutSec, killing");
                        kill_all(r.pid, r.cgroup.as_ref());
                        wait_main(&mut r.child, adopted.as_ref()).await
                    }
                }
            }
        };
        TRACKED.lock().unwrap().remove(&r.pid);
        if let Some(a) = &adopted {
            TRACKED.lock().unwrap().remove(&a.pid());
        }
        // Whatever the main process left behind goes too (KillMode=control-group).
        kill_all(r.pid, r.cgroup.as_ref());
        let oom = r
            .cgroup
            .as_ref()
            .and_then(|c| c.memory_events().ok())
            .is_some_and(|m| m.oom_kill > r.oom_before);
        if let Some(cg) = r.cgroup.take() {
            if let Err(e) = cg.wait_empty(Duration::from_secs(10)).await {
                tracing::warn!(instance = %self.instance_id, error = %e, "cgroup did not empty");
            }
            if let Err(e) = cg.remove(Duration::from_secs(5)).await {
                tracing::warn!(instance = %self.instance_id, error = %e, "removing the cgroup");
            }
        }
        for t in r.log_tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let outcome = match status {
            Err(e) => Outcome {
                kind: ExitKind::Signal,
                status: InstanceStatus::Crashed,
                exit_code: -1,
                reason: Reason::Wait,
                error: format!("waiting for the process: {e}"),
            },
            Ok(st) => classify(st, oom),
        };
        drop(socket);
        self.inner.remove_record(&self.run_id);
        for stream in ["stdout", "stderr"] {
            let _ = crate::state::fdstore::unpark(&crate::state::fdstore::fd_name(
                &self.run_id,
                stream,
            ));
        }
        let outcome = match failure {
            None if status_unknown => Outcome {
                // Not narund's child: nothing tells whether it exited 0 or crashed.
                kind: ExitKind::ExitCode,
                status: InstanceStatus::Crashed,
                exit_code: -1,
                reason: Reason::ExitedAfterAdoption,
                error: "the re-adopted process exited; its exit status is unknown (it is not narund's child since narund restarted)".into(),
            },
            None => outcome,
            Some(RunFailure::StartTimeout) => Outcome {
                kind: ExitKind::Timeout,
                status: InstanceStatus::Failed,
                exit_code: outcome.exit_code,
                reason: Reason::StartTimeout,
                error: format!(
                    "did not send READY=1 within {} s (startTimeoutSec), stopped: {}",
                    n.started.elapsed().as_secs(),
                    outcome.error
                ),
            },
            Some(RunFailure::Watchdog(why)) => Outcome {
                kind: ExitKind::Watchdog,
                status: InstanceStatus::Crashed,
                exit_code: outcome.exit_code,
                reason: Reason::Watchdog,
                error: format!("{why}, sent SIGABRT: {}", outcome.error),
            },
        };
        (outcome, intentional)
    }

    /// Handle one datagram from the run's notify socket. Returns a failure that ends the
    /// run (`WATCHDOG=trigger`).
    fn on_notify(
        &self,
        n: &mut NotifyRun,
        members: &Membership,
        d: Datagram,
    ) -> Option<RunFailure> {
        let Some(sender) = d.sender else {
            tracing::debug!(instance = %self.instance_id, "sd_notify datagram without credentials ignored");
            return None;
        };
        if !members.contains(sender.pid) {
            tracing::debug!(instance = %self.instance_id, pid = sender.pid, "sd_notify datagram from a process outside the instance ignored");
            return None;
        }
        if d.truncated {
            tracing::warn!(instance = %self.instance_id, pid = sender.pid, "sd_notify datagram longer than {} bytes ignored", crate::instance::notify::MAX_DATAGRAM);
            return None;
        }
        let m = Message::parse(&d.data);
        let now = tokio::time::Instant::now();
        let mut republish = false;
        if let Some(text) = m.status
            && self.status.borrow().notify_status != text
        {
            self.status.send_modify(|s| s.notify_status = text);
            republish = true;
        }
        if let Some(pid) = m.main_pid
            && pid != n.main_pid
        {
            if members.contains(pid) {
                tracing::info!(instance = %self.instance_id, pid, "MAINPID: signals go to this pid now");
                n.main_pid = pid;
                republish = true;
            } else {
                tracing::warn!(instance = %self.instance_id, pid, "MAINPID ignored: that process is not part of the instance");
            }
        }
        if let Some(usec) = m.watchdog_usec {
            n.watchdog_period = Some(Duration::from_micros(usec));
            if n.watchdog_deadline.is_some() {
                n.watchdog_deadline = Some(now + Duration::from_micros(usec));
            }
        }
        if let (Some(usec), Some(deadline)) = (m.extend_timeout_usec, n.start_deadline) {
            let extended = now + Duration::from_micros(usec);
            if extended > deadline {
                n.start_deadline = Some(extended);
                self.status
                    .send_modify(|s| s.start_deadline = Some(extended));
            }
        }
        if m.watchdog_ping
            && let (Some(_), Some(period)) = (n.watchdog_deadline, n.watchdog_period)
        {
            n.watchdog_deadline = Some(now + period);
        }
        if m.watchdog_trigger {
            return Some(RunFailure::Watchdog(
                "the app asked for it (WATCHDOG=trigger)".into(),
            ));
        }
        if m.stopping {
            // Shutting down on its own: no watchdog, no start timeout (systemd does the same).
            n.watchdog_deadline = None;
            n.start_deadline = None;
            self.publish(
                InstanceStatus::Stopping,
                Some(n.main_pid),
                None,
                None,
                String::new(),
            );
            return None;
        }
        if m.reloading {
            n.reloading = true;
            self.publish(
                InstanceStatus::Reloading,
                Some(n.main_pid),
                None,
                None,
                String::new(),
            );
            republish = false;
        }
        if m.ready && (!n.ready || n.reloading) {
            if !n.ready {
                n.ready = true;
                n.start_deadline = None;
                n.watchdog_deadline = n.watchdog_period.map(|p| now + p);
            }
            n.reloading = false;
            self.publish(
                InstanceStatus::Running,
                Some(n.main_pid),
                None,
                None,
                String::new(),
            );
            republish = false;
        }
        if republish {
            let status = self.status.borrow().status.clone();
            self.publish(status, Some(n.main_pid), None, None, String::new());
        }
        None
    }
}

/// Classify an exit status the way systemd does.
fn classify(st: std::process::ExitStatus, oom: bool) -> Outcome {
    if oom {
        return Outcome {
            kind: ExitKind::OomKill,
            status: InstanceStatus::Crashed,
            exit_code: st.code().unwrap_or(-1),
            reason: Reason::OomKill,
            error: "killed by the OOM killer (memory.max)".into(),
        };
    }
    if let Some(code) = st.code() {
        return if code == 0 {
            Outcome {
                kind: ExitKind::Clean,
                status: InstanceStatus::Stopped,
                exit_code: 0,
                reason: Reason::ExitCode,
                error: "exit status 0".into(),
            }
        } else {
            Outcome {
                kind: ExitKind::ExitCode,
                status: InstanceStatus::Crashed,
                exit_code: code,
                reason: Reason::ExitCode,
                error: format!("exit status {code}"),
            }
        };
    }
    let sig = st.signal().unwrap_or(0);
    let clean = matches!(
        sig,
        libc::SIGHUP | libc::SIGINT | libc::SIGTERM | libc::SIGPIPE
    );
    Outcome {
        kind: if clean {
            ExitKind::Clean
        } else {
            ExitKind::Signal
        },
        status: if clean {
            InstanceStatus::Stopped
        } else {
            InstanceStatus::Crashed
        },
        exit_code: -1,
        reason: Reason::Signal,
        error: format!(
            "killed by signal {}",
            narun_spec::signal_name(&sig.to_string()).unwrap_or_else(|| sig.to_string())
        ),
    }
}

/// SIGKILL everything of an instance: the cgroup when there is one, else the process group.
fn kill_all(pid: i32, cgroup: Option<&InstanceCgroup>) {
    match cgroup {
        Some(cg) => {
            if let Err(e) = cg.kill() {
                tracing::warn!(error = %e, "cgroup.kill failed, killing the process group");
                // SAFETY: killpg on the process group we created for the app.
                unsafe { libc::killpg(pid, libc::SIGKILL) };
            }
        }
        // SAFETY: as above.
        None => unsafe {
            libc::killpg(pid, libc::SIGKILL);
        },
    }
}

/// Delay before restart number `attempt` (0-based): 100 ms · 2^attempt capped at `max`,
/// with "equal jitter" (half fixed, half random) so instances that crashed together do not
/// restart in lock-step.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << attempt.min(20))
        .min(max.max(BACKOFF_START));
    let half = base / 2;
    let jitter = rand::random::<f64>();
    half + half.mul_f64(jitter)
}

fn new_run_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // UUIDv4 layout (version and variant bits are not forced; only the shape matters).
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Resolves when `stop` holds `true` (or its sender is gone). Unlike awaiting
/// `wait_for` directly in a `select!`, no `watch::Ref` (not `Send`) is kept in the future.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Pids of the children tokio is waiting for (never reaped by [`reap_orphans`]).
static TRACKED: Mutex<std::collections::BTreeSet<i32>> =
    Mutex::new(std::collections::BTreeSet::new());

/// Make narund a child subreaper: orphaned descendants are re-parented to narund (and
/// reaped by [`spawn_reaper`]) instead of PID 1.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reap zombie children that are not tracked (orphans re-parented to us). Returns how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    let tracked = TRACKED.lock().unwrap();
    let mut reaped = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if tracked.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may contain spaces and parens; split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(me) {
            let mut status = 0;
            // SAFETY: waitpid on a specific zombie child of ours that nobody else waits for.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                reaped += 1;
            }
        }
    }
    reaped
}

/// Reap orphans on every SIGCHLD (and every 5 s, in case signals coalesced). With a
/// `beat`, the loop reports its progress ([`crate::liveness`]); the reaping itself is
/// declared as bounded work.
pub fn spawn_reaper(beat: Option<crate::liveness::Beat>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut chld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGCHLD stream; reaping every 5 s");
                None
            }
        };
        loop {
            match &mut chld {
                Some(s) => {
                    let _ = tokio::time::timeout(REAP_EVERY, s.recv()).await;
                }
                None => tokio::time::sleep(REAP_EVERY).await,
            }
            let _busy = beat
                .as_ref()
                .map(|b| b.busy("reaping orphans", Duration::from_secs(30)));
            let n = tokio::task::spawn_blocking(reap_orphans).await.unwrap_or(0);
            if n > 0 {
                tracing::debug!(n, "reaped orphaned processes");
            }
        }
    })
}

/// Longest wait of the orphan reaper between two passes (its cadence for
/// [`crate::liveness`]).
pub const REAP_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(2);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            let base = (BACKOFF_START * 2u32.pow(attempt.min(20))).min(max);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn classify_follows_systemd() {
        use std::os::unix::process::ExitStatusExt;
        let st = |raw| std::process::ExitStatus::from_raw(raw);
        assert_eq!(classify(st(0), false).kind, ExitKind::Clean);
        assert_eq!(classify(st(3 << 8), false).kind, ExitKind::ExitCode);
        assert_eq!(classify(st(libc::SIGTERM), false).kind, ExitKind::Clean);
        assert_eq!(classify(st(libc::SIGSEGV), false).kind, ExitKind::Signal);
        assert_eq!(classify(st(libc::SIGKILL), true).kind, ExitKind::OomKill);
    }
}

pub mod control;
pub mod heartbeat;
pub mod reconcile;
