//! The driver of one instance: a tokio task that feeds the [`Lifecycle`] what happens
//! (the process exited, a stop was asked for, a datagram arrived, a deadline passed) and
//! carries out what it decides (publish, spawn, signal, kill). It owns the run: the
//! process, its cgroup, notify socket and log pipes, and cleans all of it up when the
//! process ends.

use super::adopt::Adoptable;
use super::after::AfterOutcome;
use super::exit::Exit;
use super::lifecycle::{Action, Event, Lifecycle, Policy, Report, State};
use super::notify::{Datagram, Membership, Message, NotifySocket};
use super::process::Proc;
use super::{Host, InstanceHandle, Snapshot};
use crate::cgroup::RunCgroup;
use crate::fetch::Sha256Digest;
use crate::logs::{LogSink, RunLogs};
use crate::privileges::AppIdentity;
use crate::privileges::dynamic::{self, IdentityError};
use crate::state::InstanceRecord;
use narun_spec::AppSpec;
use narun_wire::events::{StatusEvent, now_rfc3339};
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long the end of a run waits for its log readers to reach EOF before it makes a
/// reader that waits for room in the spool stop waiting, and then again for them to end
/// ([`RunLogs::end`]).
const LOG_GRACE: Duration = Duration::from_secs(2);

/// Start the task of instance `index` of `spec` (see [`Host::spawn_instance`]).
pub(super) fn spawn(
    host: Arc<Host>,
    spec: Arc<AppSpec>,
    index: u32,
    revision: u64,
    adopt: Option<Adoptable>,
) -> InstanceHandle {
    let (handle, task) = new(host, spec, index, revision);
    crate::spawn(task.run(adopt));
    handle
}

/// The handle and the (not yet started) task of instance `index` of `spec`.
pub(super) fn new(
    host: Arc<Host>,
    spec: Arc<AppSpec>,
    index: u32,
    revision: u64,
) -> (InstanceHandle, Task) {
    let pinned = host
        .local
        .digest_of(&spec)
        .and_then(|h| Sha256Digest::from_hex(&h));
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
    let task = Task {
        sink: host
            .logs
            .sink_with(&spec.name, &instance_id, (&spec.log_overflow).into()),
        hash: spec.run_hash(),
        host,
        spec,
        index,
        revision,
        instance_id,
        run_id: String::new(),
        status: status_tx,
        stop: stop_rx,
        stop_seen: false,
        pinned,
        verified: None,
        notify_env: Vec::new(),
        secret_env: Vec::new(),
        nats_env: Vec::new(),
    };
    (handle, task)
}

/// Why a start did not get to a running process.
pub(super) struct StartFailure {
    pub reason: Reason,
    pub error: String,
    /// `ETXTBSY`: another thread's fork still held a write fd of the freshly written binary.
    pub text_busy: bool,
}

impl StartFailure {
    pub fn new(reason: Reason, error: impl Into<String>) -> StartFailure {
        StartFailure {
            reason,
            error: error.into(),
            text_busy: false,
        }
    }
}

/// A run in progress: its process and everything that belongs to it.
pub(super) struct Running {
    /// The main process: the started child, the app's `MAINPID=` process narund follows
    /// after the started one exited, or the process of an adopted run.
    pub proc: Box<dyn Proc>,
    /// `proc` is followed through a pidfd (not the started child).
    pub following: bool,
    /// Process group (= the started pid): how an instance without a cgroup is killed.
    pub pgid: i32,
    pub cgroup: Option<Box<dyn RunCgroup>>,
    /// The run's cgroup name for its record (kept for an adopted run whose cgroup could not
    /// be opened; empty without cgroups).
    pub cgroup_name: String,
    /// The readers of its stdout and stderr pipes.
    pub logs: RunLogs,
    pub oom_before: u64,
    /// The run's sd_notify socket (`notify: true` or `watchdogSec`).
    pub notify: Option<NotifySocket>,
    /// Who may send on `notify`.
    pub membership: Membership,
    /// The run's NATS credentials file, held for its `Drop` (removed when the run ends).
    pub _nats_creds: Option<super::nats_identity::CredsFile>,
}

/// The task of one instance.
pub(super) struct Task {
    pub host: Arc<Host>,
    pub sink: LogSink,
    pub spec: Arc<AppSpec>,
    /// Run hash of `spec`.
    pub hash: String,
    pub index: u32,
    /// KV revision of the spec when the instance was started (0 = from local state).
    pub revision: u64,
    pub instance_id: String,
    pub run_id: String,
    pub status: watch::Sender<Snapshot>,
    pub stop: watch::Receiver<bool>,
    /// The stop request was handed to the lifecycle.
    stop_seen: bool,
    /// The digest a restart of the same spec starts (the binary of the first start).
    pub pinned: Option<Sha256Digest>,
    /// The cached binary last hashed to this digest, and how its file looked then: a
    /// restart does not hash it again while the file is unchanged (`start.rs`).
    pub verified: Option<(Sha256Digest, super::start::FileStamp)>,
    /// `NOTIFY_SOCKET` / `WATCHDOG_USEC` of the current run (empty without sd_notify).
    pub notify_env: Vec<(String, String)>,
    /// Decrypted `valueFromSecret` variables of the current start (memory only).
    pub secret_env: Vec<(String, String)>,
    /// The NATS variables of the current run (`NATS_URL`, the app's own credentials).
    pub nats_env: Vec<(String, String)>,
}

/// What woke the task up.
enum Wake {
    Exit(std::io::Result<Option<ExitStatus>>),
    Stop,
    Datagram(std::io::Result<Datagram>),
    Timer,
}

impl Task {
    async fn run(mut self, adopt: Option<Adoptable>) {
        let policy = Policy::of(&self.spec, self.host.live().restart_backoff_max);
        let mut lc = Lifecycle::new(policy, rand::random());
        let mut run: Option<Running> = None;
        let mut event = Some(match adopt {
            Some(a) => {
                let (r, ev) = self.resume(a);
                run = Some(r);
                ev
            }
            // Stopped before it ever started: nothing is fetched or spawned.
            None if *self.stop.borrow() => {
                self.stop_seen = true;
                Event::Stop
            }
            None => match self.wait_after().await {
                AfterOutcome::Ready => Event::Start,
                AfterOutcome::TimedOut(missing) => {
                    let line = format!(
                        "starting without {} after afterTimeoutSec = {} s: no answer to $SRV.PING.<name>",
                        missing.join(", "),
                        self.spec.after_timeout_sec
                    );
                    tracing::warn!(instance = %self.instance_id, "{line}");
                    self.sink.line("stderr", &format!("narund: {line}"));
                    Event::Start
                }
                AfterOutcome::Stopped => {
                    self.stop_seen = true;
                    Event::Stop
                }
            },
        });
        loop {
            // When the event happened: for an exit, before the run was cleaned up, so the
            // restart backoff counts from the exit and the clean-up runs within it.
            let mut at = None;
            let ev = match event.take() {
                Some(ev) => ev,
                None => match self.wake(&lc, &mut run).await {
                    Wake::Stop => Event::Stop,
                    Wake::Timer => Event::Timer,
                    Wake::Datagram(Ok(d)) => match self.datagram(&lc, run.as_ref(), d) {
                        Some(m) => Event::Notify(m),
                        None => continue,
                    },
                    Wake::Datagram(Err(e)) => {
                        tracing::warn!(instance = %self.instance_id, error = %e, "sd_notify socket failed; notifications of this run are ignored from now on");
                        if let Some(r) = run.as_mut() {
                            r.notify = None;
                        }
                        continue;
                    }
                    Wake::Exit(st) => {
                        at = Some(Instant::now());
                        match self.exited(&mut lc, &mut run, st).await {
                            Ok(ev) => ev,
                            Err(()) => break,
                        }
                    }
                },
            };
            lc.set_backoff_max(self.host.live().restart_backoff_max);
            let actions = lc.handle(at.unwrap_or_else(Instant::now), ev);
            match self.execute(actions, &mut run).await {
                Ok(next) => event = next,
                Err(()) => break,
            }
        }
        self.status.send_modify(|s| {
            s.ended = true;
            s.pid = None;
        });
        self.host.changed.notify_waiters();
    }

    /// Carry out `actions` in order. Returns the event a start produced, or `Err` once the
    /// instance has ended.
    async fn execute(
        &mut self,
        actions: Vec<Action>,
        run: &mut Option<Running>,
    ) -> Result<Option<Event>, ()> {
        let mut next = None;
        for action in actions {
            match action {
                Action::NewRun => {
                    self.run_id = new_run_id();
                    self.status.send_modify(|s| s.notify_status.clear());
                }
                Action::Publish(report) => self.publish(report, run.as_ref()),
                Action::Log(line) => self.sink.line("stderr", &format!("narund: {line}")),
                Action::Spawn => {
                    // Boxed: the start's future is large and lives only while it runs; the
                    // task itself stays small for as long as the instance runs.
                    next = Some(match Box::pin(self.start()).await {
                        Ok(r) => {
                            let pid = r.proc.pid();
                            *run = Some(r);
                            Event::Started { pid }
                        }
                        Err(f) => Event::StartFailed {
                            reason: f.reason,
                            error: f.error,
                        },
                    });
                }
                Action::Signal { pid, signal } => self.host.processes.signal(pid, signal),
                Action::KillAll => {
                    tracing::warn!(instance = %self.instance_id, "did not stop within stopTimeoutSec, killing");
                    if let Some(r) = run.as_ref() {
                        self.kill_all(r);
                    }
                }
                Action::StartDeadline(d) => self.status.send_modify(|s| s.start_deadline = d),
                Action::End => return Err(()),
            }
        }
        Ok(next)
    }

    /// Wait for the next thing that happens to the instance.
    async fn wake(&mut self, lc: &Lifecycle, run: &mut Option<Running>) -> Wake {
        let deadline = lc.next_deadline();
        let mut stop = self.stop.clone();
        let stop_seen = self.stop_seen;
        // Datagrams matter only while the run is up; while narund stops it they are not read
        // (a flood of them could not hold off the kill).
        let running = matches!(lc.state(), State::Running(_));
        let (proc, notify) = match run.as_mut() {
            Some(r) => (Some(&mut r.proc), r.notify.as_ref().filter(|_| running)),
            None => (None, None),
        };
        // Fixed order: an exit, a stop request and a due deadline come before datagrams.
        let wake = tokio::select! {
            biased;
            st = wait_proc(proc) => Wake::Exit(st),
            _ = stopped(&mut stop), if !stop_seen => Wake::Stop,
            _ = sleep_until_opt(deadline) => Wake::Timer,
            d = recv_opt(notify) => Wake::Datagram(d),
        };
        if matches!(wake, Wake::Stop) {
            self.stop_seen = true;
        }
        wake
    }

    /// The main process exited: read what it sent just before (a forking daemon's
    /// `MAINPID=`), follow the `MAINPID=` process when it is another member of the
    /// instance, else clean the run up and report the exit.
    async fn exited(
        &mut self,
        lc: &mut Lifecycle,
        run: &mut Option<Running>,
        st: std::io::Result<Option<ExitStatus>>,
    ) -> Result<Event, ()> {
        let Some(mut r) = run.take() else {
            return Ok(Event::Timer);
        };
        // While narund stops the run, the exit of the started process ends it (whatever it
        // left goes with its cgroup or process group).
        if !r.following && matches!(lc.state(), State::Running(_)) {
            while let Some(Ok(Some(d))) = r.notify.as_ref().map(|s| s.try_recv()) {
                if let Some(mut m) = self.datagram(lc, Some(&r), d) {
                    // It has exited already: a last WATCHDOG=trigger changes nothing.
                    m.watchdog_trigger = false;
                    let actions = lc.handle(Instant::now(), Event::Notify(m));
                    let mut tmp = Some(r);
                    self.execute(actions, &mut tmp).await?;
                    r = tmp.expect("a datagram does not end the run");
                }
            }
            let main = lc.main_pid().unwrap_or(0);
            if main != r.proc.pid() && r.membership.contains(main) {
                match self.host.processes.follow(main) {
                    Ok(p) => {
                        if let Membership::Descendants(_) = r.membership {
                            r.membership = Membership::Descendants(main);
                        }
                        let message = format!(
                            "the started process exited ({}); following MAINPID {main}",
                            match &st {
                                Ok(Some(s)) => s.to_string(),
                                Ok(None) => "status unknown".into(),
                                Err(e) => e.to_string(),
                            }
                        );
                        r.proc = p;
                        r.following = true;
                        *run = Some(r);
                        return Ok(Event::FollowMainPid { pid: main, message });
                    }
                    Err(e) => {
                        tracing::warn!(instance = %self.instance_id, pid = main, error = %e, "cannot follow MAINPID (pidfd_open); the run ends with the started process");
                    }
                }
            }
        }
        let oom = self.clean_up(r).await;
        let exit = match st {
            Ok(Some(s)) => Exit::Status(s),
            Ok(None) => Exit::Unknown,
            Err(e) => Exit::WaitFailed(e.to_string()),
        };
        Ok(Event::Exited { exit, oom })
    }

    /// Whatever the main process left behind goes too (`KillMode=control-group`); the
    /// cgroup is emptied and removed, the log pipes drained, the record removed. Returns
    /// whether the cgroup saw an OOM kill during the run.
    async fn clean_up(&mut self, mut r: Running) -> bool {
        self.kill_all(&r);
        let oom = r
            .cgroup
            .as_ref()
            .is_some_and(|c| c.oom_kills() > r.oom_before);
        if let Some(cg) = r.cgroup.take() {
            if let Err(e) = cg.wait_empty(Duration::from_secs(10)).await {
                tracing::warn!(instance = %self.instance_id, error = %e, "cgroup did not empty");
            }
            if let Err(e) = cg.remove(Duration::from_secs(5)).await {
                tracing::warn!(instance = %self.instance_id, error = %e, "removing the cgroup");
            }
        }
        let logs = std::mem::take(&mut r.logs);
        if !logs.end(LOG_GRACE).await {
            tracing::warn!(instance = %self.instance_id, "a log pipe of the run is still open after its processes are gone; its reader is left behind");
        }
        drop(r);
        self.host.local.remove_record(&self.run_id);
        for stream in ["stdout", "stderr"] {
            let _ = crate::state::fdstore::unpark(&crate::state::fdstore::fd_name(
                &self.run_id,
                stream,
            ));
        }
        oom
    }

    /// SIGKILL everything of the run: the cgroup when there is one, else the process group.
    fn kill_all(&self, r: &Running) {
        match &r.cgroup {
            Some(cg) => {
                if let Err(e) = cg.kill() {
                    tracing::warn!(error = %e, "cgroup.kill failed, killing the process group");
                    self.host.processes.signal_group(r.pgid, libc::SIGKILL);
                }
            }
            None => self.host.processes.signal_group(r.pgid, libc::SIGKILL),
        }
    }

    /// A datagram from the run's notify socket, checked: from a member of the instance,
    /// not truncated, with a `MAINPID=` only when that process belongs to the instance.
    fn datagram(&self, lc: &Lifecycle, run: Option<&Running>, d: Datagram) -> Option<Message> {
        let members = &run?.membership;
        let Some(sender) = d.sender else {
            tracing::debug!(instance = %self.instance_id, "sd_notify datagram without credentials ignored");
            return None;
        };
        if !members.contains(sender.pid) {
            tracing::debug!(instance = %self.instance_id, pid = sender.pid, "sd_notify datagram from a process outside the instance ignored");
            return None;
        }
        if d.truncated {
            tracing::warn!(instance = %self.instance_id, pid = sender.pid, "sd_notify datagram longer than {} bytes ignored", super::notify::MAX_DATAGRAM);
            return None;
        }
        let mut m = Message::parse(&d.data);
        if let Some(pid) = m.main_pid
            && Some(pid) != lc.main_pid()
        {
            if members.contains(pid) {
                tracing::info!(instance = %self.instance_id, pid, "MAINPID: signals go to this pid now");
            } else {
                tracing::warn!(instance = %self.instance_id, pid, "MAINPID ignored: that process is not part of the instance");
                m.main_pid = None;
            }
        }
        Some(m)
    }

    /// Take over a verified run of a previous narund (see [`crate::state::adopt`]): open
    /// its cgroup, re-bind its notify socket at the same path, take its log pipes back
    /// from the fd store when there are any.
    fn resume(&mut self, a: Adoptable) -> (Running, Event) {
        let rec = a.record;
        self.run_id = rec.run_id.clone();
        self.notify_env.clear();
        if !rec.notify_socket.is_empty() {
            self.notify_env
                .push(("NOTIFY_SOCKET".into(), rec.notify_socket.clone()));
        }
        self.pinned = Sha256Digest::from_hex(&rec.digest);
        self.status.send_modify(|s| {
            s.digest = rec.digest.clone();
            s.notify_status.clear();
        });
        let cgroup = match (&self.host.cgroups, rec.cgroup.is_empty()) {
            (Some(cgroups), false) => match cgroups.open(&rec.cgroup) {
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
            let owner = self.identity().ok().flatten().map(|id| (id.uid, id.gid));
            match NotifySocket::bind(std::path::Path::new(&rec.notify_socket), owner) {
                Ok(sock) => notify = Some(sock),
                Err(e) => {
                    tracing::warn!(instance = %self.instance_id, error = %e, "adopted run: cannot re-bind its notify socket; its notifications are ignored")
                }
            }
        }
        let mut logs = RunLogs::new();
        for (stream, fd) in a.log_fds {
            logs.attach(&self.sink, stream, fd);
        }
        let oom_before = cgroup.as_ref().map(|c| c.oom_kills()).unwrap_or(0);
        let membership = self.membership(rec.pid, cgroup.as_deref());
        let message = format!(
            "re-adopted pid {} of run {} after a restart of narund",
            rec.pid, rec.run_id
        );
        let running = Running {
            proc: a.proc,
            following: true,
            pgid: rec.pgid,
            cgroup,
            cgroup_name: rec.cgroup.clone(),
            logs,
            oom_before,
            notify,
            membership,
            _nats_creds: super::nats_identity::CredsFile::existing(
                &self.host.settings,
                &self.spec.name,
                &self.instance_id,
                &self.run_id,
                &super::nats_identity::callees(&self.spec),
            ),
        };
        (
            running,
            Event::Adopt {
                pid: rec.pid,
                message,
            },
        )
    }

    /// Who may notify for a run whose main process is `pid`.
    pub(super) fn membership(&self, pid: i32, cgroup: Option<&dyn RunCgroup>) -> Membership {
        let path = cgroup
            .zip(self.host.cgroups.as_ref())
            .map(|(c, cgroups)| cgroups.proc_path(c.name()));
        Membership::of_instance(pid, path.as_deref())
    }

    /// The user the app runs as: `None` when narund is not root (it runs as narund's user).
    /// The spec's `user`, else `default_user`, else (both empty, the default) the app's own
    /// dynamic user (`crate::privileges::dynamic`), with `HOME` = the work dir.
    pub(super) fn identity(&self) -> Result<Option<AppIdentity>, IdentityError> {
        if crate::sys::process::geteuid() != 0 {
            return Ok(None);
        }
        let user = (!self.spec.user.is_empty()).then_some(self.spec.user.as_str());
        let live = self.host.live();
        if user.is_some() || !live.default_user.is_empty() {
            return Ok(Some(AppIdentity::resolve(
                user,
                &live.default_user,
                live.allow_root,
            )?));
        }
        let app = self.spec.name.as_str();
        let range = self.host.settings.dynamic_uid_range;
        let system = dynamic::system_ids();
        let local = &self.host.local;
        let uid = local
            .dynamic_uid(app, |recorded| {
                let uid = dynamic::allocate(app, range, recorded, &system);
                if let (Some(old), Some(new)) = (recorded.get(app), uid)
                    && *old != new
                {
                    tracing::warn!(app, old, new, "the dynamic uid of the app changed (its old id is outside dynamic_uid_range or now belongs to /etc/passwd or /etc/group)");
                }
                uid
            })
            .map_err(|e| IdentityError::Record {
                app: app.to_string(),
                message: e.to_string(),
            })?
            .ok_or_else(|| IdentityError::Exhausted {
                app: app.to_string(),
                first: range.0,
                last: range.1,
                record: local.dynamic_uid_file().to_path_buf(),
            })?;
        Ok(Some(dynamic::identity(app, uid, &self.work_dir())))
    }

    /// The instance's work dir: `<data_dir>/instances/<instance>/work`.
    pub(super) fn work_dir(&self) -> std::path::PathBuf {
        self.host
            .settings
            .data_dir
            .join("instances")
            .join(crate::fetch::sanitize(&self.instance_id))
            .join("work")
    }

    /// Publish a status event and update the snapshot; a `running` run gets its record.
    pub(super) fn publish(&self, r: Report, run: Option<&Running>) {
        let mut unenforced = Vec::new();
        let time = now_rfc3339();
        let mut restarted = false;
        self.status.send_modify(|s| {
            restarted = r.restarts > s.restarts;
            if s.status != r.status || s.since.is_empty() {
                s.since = time.clone();
            }
            if matches!(
                r.status,
                InstanceStatus::Crashed | InstanceStatus::Failed | InstanceStatus::InvalidSpec
            ) {
                s.last_failure = Some(narun_wire::events::InstanceFailure {
                    status: r.status.clone(),
                    reason: r.reason.clone(),
                    exit_code: r.exit_code,
                    error: r.error.clone(),
                    tag: self.spec.tag.clone(),
                    time: time.clone(),
                });
            }
            if r.exit_code.is_some() {
                s.exit_code = r.exit_code;
            }
            s.status = r.status.clone();
            s.pid = r.pid;
            s.reason = r.reason.clone();
            s.restarts = r.restarts;
            s.notify_status = r.notify_status.clone();
            s.error = r.error.clone();
            s.start_deadline = r.start_deadline;
            unenforced = s.unenforced.clone();
        });
        if restarted {
            let reason = r.reason.as_ref().map_or("unknown", Reason::as_str);
            self.host.counters.restart(&self.spec.name, reason);
        }
        let ev = StatusEvent {
            instance_id: self.instance_id.clone(),
            node_id: self.host.settings.node_id.clone(),
            status: r.status.clone(),
            pid: r.pid,
            exit_code: r.exit_code,
            error: r.error,
            time,
            reason: r.reason.clone(),
            app_name: self.spec.name.clone(),
            run_id: self.run_id.clone(),
            tag: self.spec.tag.clone(),
            unenforced_limits: unenforced,
            restarts: (r.restarts > 0).then_some(r.restarts),
            config_hash: self.hash.clone(),
            notify_status: r.notify_status,
            job: None,
        };
        let mut after_records = None;
        if r.status == InstanceStatus::Running
            && let (Some(pid), Some(run)) = (r.pid, run)
        {
            after_records = self.save_record(pid, run);
        }
        tracing::info!(instance = %self.instance_id, run = %self.run_id, status = %r.status, reason = r.reason.as_ref().map_or("", Reason::as_str), pid = r.pid, "instance status");
        let subject = names::status_subject(&self.spec.name, &self.host.settings.node_id);
        let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
        self.host.publish_after(subject, payload, after_records);
        self.host.changed.notify_waiters();
    }

    /// Keep the record of the current run up to date (on `running`). Returns the
    /// generation of the records that holds it (written by the record writer thread).
    fn save_record(&self, pid: i32, run: &Running) -> Option<u64> {
        let start_time = self.host.processes.start_time(pid)?;
        let notify_socket = self
            .notify_env
            .iter()
            .find(|(k, _)| k == "NOTIFY_SOCKET")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Some(self.host.local.put_record(InstanceRecord {
            app: self.spec.name.clone(),
            index: self.index,
            instance_id: self.instance_id.clone(),
            run_id: self.run_id.clone(),
            pid,
            pgid: run.pgid,
            start_time,
            cgroup: run.cgroup_name.clone(),
            run_hash: self.hash.clone(),
            digest: self.status.borrow().digest.clone(),
            revision: self.revision,
            notify_socket,
        }))
    }
}

async fn wait_proc(p: Option<&mut Box<dyn Proc>>) -> std::io::Result<Option<ExitStatus>> {
    match p {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(sock: Option<&NotifySocket>) -> std::io::Result<Datagram> {
    match sock {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `stop` holds `true`. A node that drops the handle without a stop (narund
/// exiting with `apps.on_exit = "detach"`) leaves the run alone: then this never resolves.
/// Unlike awaiting `wait_for` directly in a `select!`, no `watch::Ref` (not `Send`) is
/// kept in the future.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) fn new_run_id() -> String {
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
