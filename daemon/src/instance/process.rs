//! The process seam: spawn, signal, wait for and follow app processes. [`Kernel`] is the
//! real implementation; unit tests use an in-memory one (`crate::testing`), so the
//! lifecycle driver, rollouts and re-adoption run without root in milliseconds.

use super::reaper::TRACKED;
use crate::cgroup::RunCgroup;
use crate::privileges::PrivilegePlan;
use crate::sys;
use futures_util::future::BoxFuture;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A process narund waits for: its own child, or one it follows through a pidfd.
pub trait Proc: Send + Sync {
    fn pid(&self) -> i32;
    /// Resolves when the process has exited: `Ok(Some(status))`, or `Ok(None)` when the
    /// status is unknown because it was not narund's child.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>>;
}

/// Why a spawn failed.
#[derive(Debug)]
pub enum SpawnError {
    /// The child could not be set up to enter its cgroup.
    Place(crate::cgroup::CgroupError),
    /// `fork`/`exec` failed (`ETXTBSY` included).
    Spawn(io::Error),
}

/// Processes of app instances.
pub trait Processes: Send + Sync + 'static {
    /// Spawn `cmd` (program, arguments, environment and stdio are set; the environment is
    /// exactly the variables set on `cmd`, as after `env_clear()`). Between `fork` and
    /// `exec` the child first enters `cgroup` (which needs narund's privileges), then drops
    /// to `privileges`, then `execve`s the program itself: a file the kernel refuses fails
    /// with `ENOEXEC`, never runs through `/bin/sh`. The child is narund's until it was
    /// waited for.
    fn spawn(
        &self,
        cmd: &mut tokio::process::Command,
        cgroup: Option<&dyn RunCgroup>,
        privileges: Option<PrivilegePlan>,
    ) -> Result<Box<dyn Proc>, SpawnError>;
    /// Follow a process narund did not start (the app's `MAINPID=`, a run of a previous
    /// narund) until it exits.
    fn follow(&self, pid: i32) -> io::Result<Box<dyn Proc>>;
    /// `kill(pid, signal)`.
    fn signal(&self, pid: i32, signal: i32);
    /// `killpg(pgid, signal)`: an instance without a cgroup is its process group.
    fn signal_group(&self, pgid: i32, signal: i32);
    /// Field 22 of `/proc/<pid>/stat` (tells a recycled pid from the recorded process).
    fn start_time(&self, pid: i32) -> Option<u64>;
    /// The process exited but was not reaped yet.
    fn is_zombie(&self, pid: i32) -> bool;
    /// The cgroup v2 path of `pid` (`0::` of `/proc/<pid>/cgroup`).
    fn cgroup_of(&self, pid: i32) -> Option<String>;
}

/// The kernel: tokio's child processes, `kill(2)`, pidfds and `/proc`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl Processes for Kernel {
    fn spawn(
        &self,
        cmd: &mut tokio::process::Command,
        cgroup: Option<&dyn RunCgroup>,
        privileges: Option<PrivilegePlan>,
    ) -> Result<Box<dyn Proc>, SpawnError> {
        // `pre_exec` hooks run in the order they are registered: the cgroup first, while the
        // child still has narund's credentials, then the privilege drop.
        if let Some(cg) = cgroup {
            cg.place(cmd.as_std_mut()).map_err(SpawnError::Place)?;
        }
        if let Some(plan) = privileges {
            plan.install(cmd.as_std_mut());
        }
        // Last: the execve, without std's execvp and its ENOEXEC fallback to /bin/sh.
        let std = cmd.as_std();
        let image = sys::exec::ExecImage::new(
            std.get_program(),
            std::iter::once(std.get_program()).chain(std.get_args()),
            std.get_envs().filter_map(|(k, v)| Some((k, v?))),
        )
        .map_err(SpawnError::Spawn)?;
        sys::exec::execve_before_exec(cmd.as_std_mut(), image);
        // The pid enters the tracked set while the set's lock is held around spawn: there is
        // no window in which the orphan reaper could take a direct child (super::reaper).
        let mut tracked = TRACKED.lock().unwrap();
        let child = cmd.spawn().map_err(SpawnError::Spawn)?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        tracked.insert(pid);
        Ok(Box::new(Child { child, pid }))
    }

    fn follow(&self, pid: i32) -> io::Result<Box<dyn Proc>> {
        let fd = Pidfd::open(pid)?;
        TRACKED.lock().unwrap().insert(pid);
        Ok(Box::new(Followed { fd }))
    }

    fn signal(&self, pid: i32, signal: i32) {
        // The pid is our own, not yet reaped, child or a process the instance owns
        // (checked by the caller).
        let _ = sys::process::kill(pid, signal);
    }

    fn signal_group(&self, pgid: i32, signal: i32) {
        // The process group narund created for the app.
        let _ = sys::process::killpg(pgid, signal);
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        crate::state::process_start_time(pid)
    }

    fn is_zombie(&self, pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace()
                    .next()
                    .map(|st| st == "Z" || st == "X")
            })
            .unwrap_or(false)
    }

    fn cgroup_of(&self, pid: i32) -> Option<String> {
        super::notify::proc_cgroup(pid)
    }
}

/// A child narund started.
struct Child {
    child: tokio::process::Child,
    pid: i32,
}

impl Proc for Child {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>> {
        Box::pin(async move { self.child.wait().await.map(Some) })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Waited for (tokio reaped it), or given up: the orphan reaper may take it now.
        TRACKED.lock().unwrap().remove(&self.pid);
    }
}

/// A process followed through its pidfd.
struct Followed {
    fd: Pidfd,
}

impl Proc for Followed {
    fn pid(&self) -> i32 {
        self.fd.pid()
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            self.fd.exited().await?;
            Ok(self.fd.exit_status())
        })
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        TRACKED.lock().unwrap().remove(&self.fd.pid());
    }
}

/// A process narund follows without waiting for it as its parent: its exit is seen
/// through a pidfd (Linux ≥ 5.3).
#[derive(Debug)]
pub struct Pidfd {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    pid: i32,
}

impl Pidfd {
    /// `pidfd_open(pid)`. Must run inside a tokio runtime.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        let fd = sys::fs::async_fd(sys::process::pidfd_open(pid)?)?;
        Ok(Pidfd { fd, pid })
    }

    /// The followed pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Resolves when the process has exited (the pidfd becomes readable).
    pub async fn exited(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// The exit status, if the process was narund's child (it is when its parent exited
    /// before it: narund is a child subreaper). `None` when it was somebody else's child.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        sys::process::waitpid_nohang(self.pid).map(ExitStatus::from_raw)
    }
}
