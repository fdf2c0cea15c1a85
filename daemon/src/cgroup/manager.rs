//! The cgroup seam: what the rest of narund asks of cgroups, as traits, so the instance
//! lifecycle, rollouts and re-adoption can run against an in-memory implementation in
//! unit tests (`crate::testing`), like youki's `TestManager`. The kernel implementation
//! is [`CgroupRoot`] / [`InstanceCgroup`].

use super::{CgroupError, CgroupRoot, InstanceCgroup, Limits};
use futures_util::future::BoxFuture;
use std::collections::HashSet;
use std::time::Duration;

/// The instance cgroups of one narund.
pub trait Cgroups: Send + Sync + 'static {
    /// Create the cgroup of a new run with `limits`.
    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>, CgroupError>;
    /// Open the cgroup of a run a previous narund left (re-adoption).
    fn open(&self, name: &str) -> Result<Box<dyn RunCgroup>, CgroupError>;
    /// Kill and remove every instance cgroup whose name is not in `keep`; returns the
    /// removed names.
    fn cleanup_stale<'a>(
        &'a self,
        keep: &'a HashSet<String>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CgroupError>>;
    /// `unified` or `hybrid` (for the heartbeat).
    fn layout(&self) -> String;
    /// The controllers narund can enforce limits with (`memory`, `cpu`, `pids`).
    fn controllers(&self) -> Vec<String>;
    /// The path of cgroup `name` as `/proc/<pid>/cgroup` shows it (`0::<path>`).
    fn proc_path(&self, name: &str) -> String;
}

/// The cgroup of one run.
pub trait RunCgroup: Send + Sync {
    fn name(&self) -> &str;
    /// Limits of the spec this cgroup cannot enforce.
    fn unenforced(&self) -> Vec<String>;
    /// Make `cmd`'s process start inside this cgroup (the `fork` path: a `pre_exec` write
    /// of `cgroup.procs`).
    fn place(&self, cmd: &mut std::process::Command) -> Result<(), CgroupError>;
    /// An fd of the cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`; `None` when the
    /// cgroup is not a kernel one (then [`RunCgroup::place`] is used).
    fn open_dir(&self) -> Option<Result<std::os::fd::OwnedFd, CgroupError>> {
        None
    }
    /// SIGKILL every process inside, atomically (`cgroup.kill`).
    fn kill(&self) -> Result<(), CgroupError>;
    /// OOM kills so far (`memory.events`); 0 when unknown.
    fn oom_kills(&self) -> u64;
    /// Wait (at most `timeout`) until no process is left.
    fn wait_empty(&self, timeout: Duration) -> BoxFuture<'_, Result<(), CgroupError>>;
    /// A new cgroup below this one (a command unit's run, docs/jobs.md): the limits of
    /// this cgroup hold for all its children together, `cgroup.kill` of the child kills
    /// that run only. Not every implementation has children.
    fn child(&self, name: &str) -> Result<Box<dyn RunCgroup>, CgroupError> {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason: "this cgroup implementation has no child cgroups",
        })
    }
    /// Kill what is left and remove the cgroup.
    fn remove(self: Box<Self>, timeout: Duration) -> BoxFuture<'static, Result<(), CgroupError>>;
}

impl Cgroups for CgroupRoot {
    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        Ok(Box::new(InstanceCgroup::create(self, name, limits)?))
    }

    fn open(&self, name: &str) -> Result<Box<dyn RunCgroup>, CgroupError> {
        Ok(Box::new(InstanceCgroup::open(self, name)?))
    }

    fn cleanup_stale<'a>(
        &'a self,
        keep: &'a HashSet<String>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CgroupError>> {
        Box::pin(CgroupRoot::cleanup_stale(self, keep, timeout))
    }

    fn layout(&self) -> String {
        CgroupRoot::layout(self).to_string()
    }

    fn controllers(&self) -> Vec<String> {
        let c = self.enforceable().unwrap_or_default();
        [("memory", c.memory), ("cpu", c.cpu), ("pids", c.pids)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n.to_string())
            .collect()
    }

    fn proc_path(&self, name: &str) -> String {
        let dir = self.path().join(name);
        let rel = dir.strip_prefix(self.mount_point()).unwrap_or(&dir);
        format!("/{}", rel.display()).replace("//", "/")
    }
}

impl RunCgroup for InstanceCgroup {
    fn name(&self) -> &str {
        InstanceCgroup::name(self)
    }

    fn unenforced(&self) -> Vec<String> {
        InstanceCgroup::unenforced(self)
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn place(&self, cmd: &mut std::process::Command) -> Result<(), CgroupError> {
        self.place_command(cmd)
    }

    fn open_dir(&self) -> Option<Result<std::os::fd::OwnedFd, CgroupError>> {
        Some(InstanceCgroup::open_dir(self))
    }

    fn kill(&self) -> Result<(), CgroupError> {
        InstanceCgroup::kill(self)
    }

    fn oom_kills(&self) -> u64 {
        self.memory_events().map(|m| m.oom_kill).unwrap_or(0)
    }

    fn wait_empty(&self, timeout: Duration) -> BoxFuture<'_, Result<(), CgroupError>> {
        Box::pin(InstanceCgroup::wait_empty(self, timeout))
    }

    fn child(&self, name: &str) -> Result<Box<dyn RunCgroup>, CgroupError> {
        Ok(Box::new(InstanceCgroup::child(self, name)?))
    }

    fn remove(self: Box<Self>, timeout: Duration) -> BoxFuture<'static, Result<(), CgroupError>> {
        Box::pin(InstanceCgroup::remove(*self, timeout))
    }
}
