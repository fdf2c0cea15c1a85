//! Re-adoption: a new narund takes over the app processes a previous narund left running
//! (it crashed, was upgraded, or exited with `apps.on_exit = "detach"`), instead of
//! killing and restarting them.
//!
//! # How it works
//!
//! 1. While a run is `running`, its instance task keeps an [`InstanceRecord`] of it in
//!    `<data_dir>/state/instances.json` (pid, the pid's start time, cgroup, run hash,
//!    binary digest, …). The record goes away when the run ends.
//! 2. At start, before stale instance cgroups are removed, [`select`] checks every record:
//!    * the pid is alive *and* has the recorded start time (field 22 of
//!      `/proc/<pid>/stat`; a recycled pid has another one). A pidfd is opened first, so
//!      the checked process is the one narund follows afterwards;
//!    * the pid is inside the recorded instance cgroup (when narund has cgroups);
//!    * the persisted spec of the app has the recorded run hash and still wants that
//!      replica index on this node;
//!    * at most one record per app and index.
//!
//!    Verified runs are *adoptable*: their cgroups are kept. Everything else is cleaned
//!    up as before (stale cgroups are killed and removed).
//! 3. When the reconciler applies the spec (from local state at start, then again from
//!    `app-configs`), an index with an adoptable run gets an instance task in adopted
//!    mode instead of a fresh start: same pid, same run id, status `running` (reason
//!    `adopted`), no `starting` event.
//!
//! # What is known after re-adoption, and what is not
//!
//! * Known: pid, cgroup, run id, binary digest, the spec (by run hash), the notify socket
//!   path (re-bound at the same path, so the app's `NOTIFY_SOCKET` keeps working).
//! * The **exit status** of an adopted process is not known: it is not narund's child
//!   (its parent died; it was re-parented to the init process or another subreaper), so
//!   narund cannot `waitpid` it. Its exit is seen through a pidfd and treated as a
//!   failure: `crashed` with reason `exited-after-adoption`, restarted per the spec's
//!   `restart` policy as after a non-zero exit code.
//! * The restart counter and backoff state start from zero; watchdog timing restarts from
//!   the adoption; a run adopted while it was `starting` is not adopted (records are
//!   written when a run becomes `running`).
//! * stdout/stderr: see [`crate::state::fdstore`]. With systemd the read ends of the pipes are
//!   parked in systemd's fd store and forwarding continues. Without systemd there is no fd
//!   store: the pipes' read ends close when narund dies, and an app that writes to
//!   stdout/stderr afterwards gets `SIGPIPE` (killed, unless it ignores the signal; then
//!   its writes fail with `EPIPE`).

use super::process::{Proc, Processes};
use crate::cgroup::Cgroups;
use crate::instance::notify::cgroup_within;
use crate::state::InstanceRecord;
use narun_spec::AppSpec;
use std::collections::BTreeMap;

/// A verified run of a previous narund, waiting for its spec to be applied.
pub struct Adoptable {
    pub record: InstanceRecord,
    /// Followed since before the start time was checked: it refers to exactly that process.
    pub proc: Box<dyn Proc>,
    /// The run's log pipes from systemd's fd store (taken with the run, so that
    /// [`crate::state::fdstore::drop_unclaimed`] never closes them).
    pub log_fds: Vec<(&'static str, std::os::fd::OwnedFd)>,
}

impl std::fmt::Debug for Adoptable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adoptable")
            .field("record", &self.record)
            .field("log_fds", &self.log_fds.len())
            .finish()
    }
}

/// Check that the process of `rec` is still the recorded one and inside its cgroup.
/// Must run inside a tokio runtime (the pidfd is registered with it).
pub fn verify(
    rec: &InstanceRecord,
    processes: &dyn Processes,
    cgroups: Option<&dyn Cgroups>,
) -> Result<Box<dyn Proc>, String> {
    let proc = processes
        .follow(rec.pid)
        .map_err(|e| format!("pid {} is gone ({e})", rec.pid))?;
    if processes.is_zombie(rec.pid) {
        return Err(format!("pid {} has exited (zombie)", rec.pid));
    }
    match processes.start_time(rec.pid) {
        Some(t) if t == rec.start_time => {}
        Some(t) => {
            return Err(format!(
                "pid {} was reused (start time {t}, recorded {})",
                rec.pid, rec.start_time
            ));
        }
        None => return Err(format!("pid {} is gone", rec.pid)),
    }
    match (cgroups, rec.cgroup.is_empty()) {
        (_, true) => {}
        (None, false) => {
            return Err(format!(
                "the run had cgroup {} but narund has no cgroup root now",
                rec.cgroup
            ));
        }
        (Some(cgroups), false) => {
            let expected = cgroups.proc_path(&rec.cgroup);
            let actual = processes.cgroup_of(rec.pid).unwrap_or_default();
            if !cgroup_within(&actual, &expected) {
                return Err(format!(
                    "pid {} is in cgroup {actual:?}, not in the recorded {expected:?}",
                    rec.pid
                ));
            }
        }
    }
    Ok(proc)
}

/// Verified runs by app and replica index.
pub type AdoptableRuns = BTreeMap<(String, u32), Adoptable>;

/// Sort the records of a previous narund into adoptable runs (by app and index) and
/// rejected ones (with the reason). `specs` are the persisted specs; `wanted(spec)` is
/// how many replicas this node runs of it.
pub fn select(
    records: BTreeMap<String, InstanceRecord>,
    specs: &[AppSpec],
    wanted: impl Fn(&AppSpec) -> u32,
    processes: &dyn Processes,
    cgroups: Option<&dyn Cgroups>,
) -> (AdoptableRuns, Vec<(InstanceRecord, String)>) {
    let mut ok = AdoptableRuns::new();
    let mut rejected = Vec::new();
    for (_, rec) in records {
        let Some(spec) = specs.iter().find(|s| s.name == rec.app) else {
            rejected.push((rec, "no persisted spec for the app".to_string()));
            continue;
        };
        if spec.run_hash() != rec.run_hash {
            rejected.push((rec, "the persisted spec changed since".to_string()));
            continue;
        }
        if rec.index >= wanted(spec) {
            rejected.push((rec, "this node no longer runs that replica".to_string()));
            continue;
        }
        let key = (rec.app.clone(), rec.index);
        if ok.contains_key(&key) {
            rejected.push((rec, "another run of the same index is adopted".to_string()));
            continue;
        }
        match verify(&rec, processes, cgroups) {
            Ok(proc) => {
                ok.insert(
                    key,
                    Adoptable {
                        record: rec,
                        proc,
                        log_fds: Vec::new(),
                    },
                );
            }
            Err(why) => rejected.push((rec, why)),
        }
    }
    (ok, rejected)
}
