//! One app instance's cgroup: its name, [`InstanceCgroup`] (create with limits, open, place a
//! child in it before exec, freeze, kill, wait until empty, remove) and the `pre_exec` step that
//! moves the child in.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::inotify::Inotify;
use super::{
    CgroupError, CgroupRoot, Limits, MemoryEvents, Result, io_err, parse_cgroup_events, read_file,
    write_file,
};

/// Every instance cgroup narund creates starts with this prefix. Stale clean-up only ever looks at
/// directories with this prefix, so foreign siblings (systemd's `supervisor` leaf, other tools) are safe.
pub const INSTANCE_PREFIX: &str = "narun-";

/// Build the cgroup name of an instance: `narun-<app>-<index>-<first 8 chars of run id>`.
///
/// Characters outside `[A-Za-z0-9_.-]` become `_`, so the result is always a valid single path component.
pub fn instance_name(app: &str, index: u32, run_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let run8: String = run_id.chars().take(8).collect();
    let mut name = format!("{INSTANCE_PREFIX}{}-{index}-{}", clean(app), clean(&run8));
    name.truncate(200);
    name
}

fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if !name.starts_with(INSTANCE_PREFIX) {
        return bad("must start with \"narun-\" (use cgroup::instance_name)");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.contains(['/', '\0', '\n']) {
        return bad("contains '/', NUL or newline");
    }
    Ok(())
}

/// One app instance's cgroup (a directory `narun-…` below the [`CgroupRoot`]).
#[derive(Debug)]
pub struct InstanceCgroup {
    path: PathBuf,
    name: String,
    unenforced: Vec<&'static str>,
}

impl InstanceCgroup {
    /// Create `<root>/<name>` and apply `limits`.
    ///
    /// A limit whose controller is not enabled in the root is *not* an error: its file name (e.g.
    /// `"memory.max"`) is listed in [`unenforced`](Self::unenforced) so status can report it. A failing
    /// write to an existing limit file is an error (and the new cgroup is removed again).
    pub fn create(root: &CgroupRoot, name: &str, limits: &Limits) -> Result<InstanceCgroup> {
        validate_name(name)?;
        let path = root.path.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::AlreadyExists(path));
            }
            Err(e) => return Err(io_err("mkdir", &path)(e)),
        }
        let mut cg = InstanceCgroup {
            path,
            name: name.to_owned(),
            unenforced: Vec::new(),
        };
        let writes = limits.writes();
        if writes.is_empty() {
            return Ok(cg);
        }
        let enabled = match root.enforceable() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir(&cg.path);
                return Err(e);
            }
        };
        for (file, ctrl, value) in writes {
            let on = match ctrl {
                "memory" => enabled.memory,
                "cpu" => enabled.cpu,
                _ => enabled.pids,
            };
            let target = cg.path.join(file);
            if !on || !target.exists() {
                cg.unenforced.push(file);
                continue;
            }
            if let Err(e) = write_file(&target, &value) {
                let _ = fs::remove_dir(&cg.path);
                return Err(io_err("write", &target)(e));
            }
        }
        Ok(cg)
    }

    /// Open an existing instance cgroup (re-attach after a narund restart, stale clean-up).
    pub fn open(root: &CgroupRoot, name: &str) -> Result<InstanceCgroup> {
        validate_name(name)?;
        let path = root.path.join(name);
        let meta = fs::metadata(&path).map_err(io_err("open", &path))?;
        if !meta.is_dir() {
            return Err(io_err("open", &path)(io::Error::from(
                io::ErrorKind::NotADirectory,
            )));
        }
        Ok(InstanceCgroup {
            path,
            name: name.to_owned(),
            unenforced: Vec::new(),
        })
    }

    /// Create the child cgroup `<this>/<name>` (`name`: one path component starting with
    /// `narun-`), without limits of its own: this cgroup's limits hold for the whole
    /// subtree. A command unit runs each request in one (docs/jobs.md). A child with no
    /// controllers enabled in this cgroup's `cgroup.subtree_control` can always be made,
    /// and this cgroup holds no process itself, so the "no internal processes" rule of
    /// cgroup v2 is kept.
    pub fn child(&self, name: &str) -> Result<InstanceCgroup> {
        validate_name(name)?;
        let path = self.path.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::AlreadyExists(path));
            }
            Err(e) => return Err(io_err("mkdir", &path)(e)),
        }
        Ok(InstanceCgroup {
            path,
            name: name.to_owned(),
            unenforced: Vec::new(),
        })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory name (`narun-…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Limit files that were requested but could not be enforced (controller not available).
    pub fn unenforced(&self) -> &[&'static str] {
        &self.unenforced
    }

    /// Open `cgroup.procs` for writing (`O_CLOEXEC`), for [`enter_cgroup_in_pre_exec`].
    pub fn procs_fd(&self) -> Result<OwnedFd> {
        let procs = self.path.join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(io_err("open", &procs))?;
        Ok(OwnedFd::from(f))
    }

    /// Open the cgroup directory (`O_DIRECTORY | O_CLOEXEC`): what `clone3` with
    /// `CLONE_INTO_CGROUP` starts a child in (`crate::sys::spawn`).
    pub fn open_dir(&self) -> Result<OwnedFd> {
        crate::sys::spawn::open_cgroup_dir(&self.path).map_err(io_err("open", &self.path))
    }

    /// Make `cmd`'s child enter this cgroup between fork and exec, so that the app and everything it
    /// forks are grouped from the first instruction.
    ///
    /// Register this **before** privilege dropping (`privileges::PrivilegePlan::install`): `pre_exec`
    /// closures run in registration order, and moving a process needs the parent's privileges. For a
    /// `tokio::process::Command` pass `cmd.as_std_mut()`.
    pub fn place_command(&self, cmd: &mut std::process::Command) -> Result<()> {
        let fd = self.procs_fd()?;
        crate::sys::exec::enter_cgroup_before_exec(cmd, fd);
        Ok(())
    }

    /// Read `cgroup.events`: is any process in this cgroup or below?
    pub fn is_populated(&self) -> Result<bool> {
        Ok(parse_cgroup_events(&read_file(&self.path.join("cgroup.events"))?).0)
    }

    /// Read `cgroup.events`: has the freezer completed?
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(parse_cgroup_events(&read_file(&self.path.join("cgroup.events"))?).1)
    }

    /// The pids in this cgroup (not in child cgroups), from `cgroup.procs`.
    pub fn pids(&self) -> Result<Vec<libc::pid_t>> {
        Ok(read_file(&self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Freeze every process (`cgroup.freeze` = 1). Completion is visible as `frozen 1` in
    /// `cgroup.events` ([`is_frozen`](Self::is_frozen)).
    pub fn freeze(&self) -> Result<()> {
        let p = self.path.join("cgroup.freeze");
        write_file(&p, "1").map_err(io_err("write", &p))
    }

    /// Thaw (`cgroup.freeze` = 0).
    pub fn thaw(&self) -> Result<()> {
        let p = self.path.join("cgroup.freeze");
        write_file(&p, "0").map_err(io_err("write", &p))
    }

    /// SIGKILL every process in the cgroup subtree. Uses `cgroup.kill` (atomic, handles concurrent
    /// forks; Linux ≥ 5.14) and falls back to [`kill_each`](Self::kill_each) when it does not exist.
    /// Processes die asynchronously: follow with [`wait_empty`](Self::wait_empty).
    pub fn kill(&self) -> Result<()> {
        let p = self.path.join("cgroup.kill");
        match write_file(&p, "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.kill_each(),
            Err(e) => Err(io_err("write", &p)(e)),
        }
    }

    /// Fallback kill for kernels without `cgroup.kill`: freeze (so nothing can fork), SIGKILL every pid
    /// listed in `cgroup.procs` of this cgroup and its children until no new pid shows up, then thaw.
    /// Fatal signals are delivered to frozen tasks, so they die while frozen.
    pub fn kill_each(&self) -> Result<()> {
        // cgroup.freeze exists since 5.2; without it we still sweep.
        let frozen = self.freeze().is_ok();
        let mut signalled: HashSet<libc::pid_t> = HashSet::new();
        let result = (|| {
            for _round in 0..1000 {
                let mut new = 0;
                for dir in self.subtree_dirs()? {
                    let procs = dir.join("cgroup.procs");
                    let text = match fs::read_to_string(&procs) {
                        Ok(t) => t,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("read", &procs)(e)),
                    };
                    for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
                        if signalled.insert(pid) {
                            new += 1;
                        }
                        // ESRCH (already gone) is fine.
                        let _ = crate::sys::process::kill(pid, libc::SIGKILL);
                    }
                }
                if new == 0 {
                    return Ok(());
                }
            }
            Ok(())
        })();
        if frozen {
            let _ = self.thaw();
        }
        result
    }

    /// This cgroup and all descendant cgroup directories, children after parents.
    fn subtree_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut out = vec![self.path.clone()];
        let mut i = 0;
        while i < out.len() {
            let dir = out[i].clone();
            match fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            out.push(e.path());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("list", &dir)(e)),
            }
            i += 1;
        }
        Ok(out)
    }

    /// Wait until `cgroup.events` says `populated 0` (no process in the subtree), at most `timeout`.
    ///
    /// The kernel signals every change of `cgroup.events` as an fsnotify `IN_MODIFY` event, so this waits on
    /// an inotify fd registered with tokio (no polling). If inotify is unavailable it falls back to checking
    /// every 20 ms. A cgroup that no longer exists counts as empty.
    pub async fn wait_empty(&self, timeout: Duration) -> Result<()> {
        let events = self.path.join("cgroup.events");
        let deadline = Instant::now() + timeout;
        let watch = match Inotify::watch(&events) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(error = %e, "inotify on cgroup.events unavailable, polling");
                None
            }
        };
        loop {
            // Check after the watch is armed, so no transition can be missed.
            match fs::read_to_string(&events) {
                Ok(t) if !parse_cgroup_events(&t).0 => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("read", &events)(e)),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CgroupError::Timeout {
                    path: self.path.clone(),
                    timeout,
                });
            }
            match &watch {
                Some(w) => {
                    // Timeout elapsed → loop re-reads once more and then reports Timeout.
                    if let Ok(res) = tokio::time::timeout(remaining, w.changed()).await {
                        res.map_err(io_err("wait for", &events))?;
                    }
                }
                None => tokio::time::sleep(remaining.min(Duration::from_millis(20))).await,
            }
        }
    }

    /// Read `memory.events`; all zeros if the memory controller is not enabled for this cgroup.
    pub fn memory_events(&self) -> Result<MemoryEvents> {
        let p = self.path.join("memory.events");
        match fs::read_to_string(&p) {
            Ok(t) => Ok(MemoryEvents::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(MemoryEvents::default()),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Remove the cgroup. If processes are still inside (`EBUSY`), kill them, wait up to `timeout` for the
    /// cgroup to empty, then remove it. Child cgroups (created by the app, if delegated) are removed first.
    pub async fn remove(self, timeout: Duration) -> Result<()> {
        if self.try_rmdir_tree()? {
            return Ok(());
        }
        self.kill()?;
        self.wait_empty(timeout).await?;
        if self.try_rmdir_tree()? {
            Ok(())
        } else {
            // Populated 0 but rmdir still EBUSY: should not happen; report it with the path.
            Err(io_err("rmdir", &self.path)(io::Error::from_raw_os_error(
                libc::EBUSY,
            )))
        }
    }

    /// rmdir children (deepest first) then self. Ok(false) on EBUSY.
    fn try_rmdir_tree(&self) -> Result<bool> {
        let dirs = self.subtree_dirs()?;
        for dir in dirs.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                Err(e) => return Err(io_err("rmdir", dir)(e)),
            }
        }
        Ok(true)
    }
}

/// The `pre_exec` step of [`InstanceCgroup::place_command`] (it lives in [`crate::sys::exec`]).
pub use crate::sys::exec::enter_cgroup_in_pre_exec;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            instance_name("hello", 2, "4f2a9c1e-77aa-4d"),
            "narun-hello-2-4f2a9c1e"
        );
        assert_eq!(instance_name("a/b c", 0, "x"), "narun-a_b_c-0-x");
        assert!(validate_name("supervisor").is_err());
        assert!(validate_name("narun-a/b").is_err());
    }
}
