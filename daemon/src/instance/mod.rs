//! One app instance (`<app>-<index>`): its runs, one after the other, each in its own
//! cgroup, restarted by policy, stopped cleanly.
//!
//! **Owns** everything between "this node runs replica *i* of this spec" and the process:
//! the lifecycle, the start (binary, user, work dir, secrets and files, notify socket,
//! cgroup, environment, spawn), the exit classification, the per-run sd_notify socket, the
//! orphan reaper, and the record that lets a later narund re-adopt a running process.
//!
//! **May call** [`crate::cgroup`] (through [`crate::cgroup::Cgroups`]), [`crate::fetch`]
//! (binaries, secrets, mounted files), [`crate::logs`] (the instance's log sink),
//! [`crate::privileges`], [`crate::state`] (records, persisted digests), [`crate::config`].
//! It never calls [`crate::node`]: the node hands it a [`Host`] and holds its
//! [`InstanceHandle`].
//!
//! | file | what it holds |
//! |---|---|
//! | `lifecycle.rs` | the pure state machine: start, ready, crash, backoff, start limit, watchdog, stop, re-adopt (**where restarts are decided**) |
//! | `adopt.rs` | re-adoption: which runs of a previous narund are verified and continued |
//! | `task.rs` | the driver: one tokio task per instance that feeds the lifecycle events and carries out its actions |
//! | `after.rs` | the spec's `after`: wait for the named services to answer discovery pings before the first start |
//! | `start.rs` | fetch, prepare and spawn one run; the app's exact environment |
//! | `exit.rs` | how a run ended, classified the way systemd does |
//! | `process.rs` | the seam to the kernel: [`process::Processes`] (spawn, signal, follow) and its real implementation |
//! | `notify.rs` | the per-run sd_notify socket and message parser |
//! | `nats_identity.rs` | the app's own NATS credentials (provisioned or minted), never narund's |
//! | `reaper.rs` | narund as child subreaper: reaping orphans without stealing a child's exit status |
//! | `command/` | command units (`mode = "command"`): narund serves the app's endpoint and runs the binary per request |
//!
//! See `docs/supervisor.md` for the behaviour as users see it.
//!
//! # Lifecycle of an instance
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
//!   ([`narun_spec::ExitKind`]) and the spec's `restart` policy decides (systemd's matrix,
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
//!   is seen through a pidfd, its exit status is unknown). See [`adopt`].
//!
//! Every transition is published as a `StatusEvent` on `status.<app>.<node>` and kept in
//! a [`Snapshot`] for the node heartbeat.
//!

pub mod adopt;
mod after;
#[cfg(feature = "command-units")]
pub mod command;
pub mod exit;
pub mod lifecycle;
pub mod nats_identity;
pub mod notify;
pub mod process;
pub mod reaper;
mod start;
mod task;

use crate::cgroup::Cgroups;
use crate::config::{Reloadable, Settings};
use crate::fetch::BinaryCache;
use crate::fetch::inputs::AppInputs;
use crate::logs::LogForwarder;
use crate::state::Local;
use crate::uring::UringHandle;
use adopt::Adoptable;
use narun_spec::AppSpec;
use narun_wire::status::{InstanceStatus, Reason};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// How long a download of a binary may take before the start fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// `PATH` given to apps whose spec does not set one (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub use lifecycle::{BACKOFF_START, STABLE_RUN};

/// What a node provides to its instances: settings, the shared services and the kernel
/// seams. Built once by the node.
pub struct Host {
    /// The settings narund started with; the reloadable part lives in `live`.
    pub settings: Settings,
    live: RwLock<Arc<Reloadable>>,
    pub logs: LogForwarder,
    pub cache: BinaryCache,
    pub uring: UringHandle,
    pub inputs: AppInputs,
    pub local: Local,
    pub processes: Arc<dyn process::Processes>,
    pub cgroups: Option<Arc<dyn Cgroups>>,
    /// `app-binaries`, once NATS is reachable.
    pub store: Mutex<Option<crate::fetch::Bucket>>,
    /// One download at a time: two instances of a new spec would otherwise both miss the
    /// cache and write the same binary twice.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Status events, published in order by the publisher task ([`spawn_publisher`]).
    events: mpsc::UnboundedSender<Outgoing>,
    /// Signalled on every status change (the heartbeat and the memory trimmer listen).
    pub changed: Notify,
    /// Restarts by reason and reconcile durations, for `/metrics` ([`crate::metrics`]).
    pub counters: crate::metrics::counters::Counters,
    /// narund's NATS client (it may still be connecting): command units register their
    /// endpoint with it ([`command`]).
    pub client: async_nats::Client,
}

/// The parts a [`Host`] is built from.
pub struct HostParts {
    pub settings: Settings,
    pub logs: LogForwarder,
    pub uring: UringHandle,
    pub inputs: AppInputs,
    pub local: Local,
    pub processes: Arc<dyn process::Processes>,
    pub cgroups: Option<Arc<dyn Cgroups>>,
    /// From [`spawn_publisher`].
    pub events: mpsc::UnboundedSender<Outgoing>,
    /// narund's NATS client (command units register their endpoints with it).
    pub client: async_nats::Client,
}

/// A status event on its way to NATS.
#[derive(Debug)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Vec<u8>,
    /// Published only once the record writer has written this generation of the records
    /// ([`Local::put_record`]): a `running` event never gets ahead of the run's record.
    pub after_records: Option<u64>,
}

/// How long the publisher waits for the record writer before it publishes anyway (a
/// stuck disk must not hide the status of every instance).
pub const RECORD_WAIT: Duration = Duration::from_secs(2);

/// The task that publishes status events in order, as core-NATS messages (like Go: not
/// JetStream). A disconnected client never stalls an instance and events keep their
/// order; async-nats buffers them until the connection is back. An event that follows a
/// record change waits for the record writer (`durable`, [`Local::durable`]) first, at
/// most [`RECORD_WAIT`]: that wait is one batched write, ~1 fsync pair.
pub fn spawn_publisher(
    client: async_nats::Client,
    mut durable: watch::Receiver<u64>,
) -> mpsc::UnboundedSender<Outgoing> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    crate::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Some(g) = ev.after_records {
                let _ = tokio::time::timeout(RECORD_WAIT, durable.wait_for(|d| *d >= g)).await;
            }
            let _ = client.publish(ev.subject, ev.payload.into()).await;
        }
    });
    tx
}

impl Host {
    pub fn new(p: HostParts) -> Host {
        Host {
            live: RwLock::new(Arc::new(Reloadable::of(&p.settings))),
            cache: BinaryCache::new(
                &p.settings.data_dir,
                p.settings.keep_versions,
                p.uring.clone(),
            )
            .with_trusted_keys(p.settings.trusted_keys.clone()),
            settings: p.settings,
            logs: p.logs,
            uring: p.uring,
            inputs: p.inputs,
            local: p.local,
            processes: p.processes,
            cgroups: p.cgroups,
            store: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            events: p.events,
            changed: Notify::new(),
            counters: Default::default(),
            client: p.client,
        }
    }

    /// The current reloadable settings.
    pub fn live(&self) -> Arc<Reloadable> {
        self.live.read().unwrap().clone()
    }

    /// Replace the reloadable settings; returns the previous ones.
    pub fn set_live(&self, live: Reloadable) -> Arc<Reloadable> {
        std::mem::replace(&mut *self.live.write().unwrap(), Arc::new(live))
    }

    /// Queue a core-NATS publish (like Go: not JetStream). One publisher task sends them
    /// in order, so a disconnected client never stalls an instance and events keep their
    /// order; async-nats buffers them until the connection is back.
    pub fn publish(&self, subject: String, payload: Vec<u8>) {
        self.publish_after(subject, payload, None);
    }

    /// [`Host::publish`], once the records of generation `after_records` are on disk.
    pub fn publish_after(&self, subject: String, payload: Vec<u8>, after_records: Option<u64>) {
        let _ = self.events.send(Outgoing {
            subject,
            payload,
            after_records,
        });
    }

    /// Start instance `index` of `spec` (KV `revision`, 0 = from local state): a new task
    /// (the caller keeps the handle). With `adopt`, a verified run of a previous narund is
    /// continued instead of started.
    pub fn spawn_instance(
        self: &Arc<Host>,
        spec: Arc<AppSpec>,
        index: u32,
        revision: u64,
        adopt: Option<Adoptable>,
    ) -> InstanceHandle {
        #[cfg(feature = "command-units")]
        if spec.mode == narun_spec::Mode::Command {
            // No process to adopt: a command unit's runs end with each request.
            return command::spawn(self.clone(), spec, index, revision);
        }
        task::spawn(self.clone(), spec, index, revision, adopt)
    }
}

/// The current state of one instance (for heartbeats, tests and rollouts).
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
    /// When `status` last changed, RFC 3339 UTC (the node state's `since`).
    pub since: String,
    /// The last crash or failure of this instance, kept across its restarts.
    pub last_failure: Option<narun_wire::events::InstanceFailure>,
    /// Exit code of the last run that ended (`-1`: killed by a signal); `None` before.
    pub exit_code: Option<i32>,
}

/// The node's handle on one instance. Cheap to clone.
#[derive(Clone)]
pub struct InstanceHandle {
    pub instance_id: String,
    pub index: u32,
    /// Run hash ([`AppSpec::run_hash`]) of the spec this instance runs.
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
