//! The process seam: spawn, signal, wait for and follow app processes. [`Kernel`] is the
//! real implementation; unit tests use an in-memory one (`crate::testing`), so the
//! lifecycle driver, rollouts and re-adoption run without root in milliseconds.
//!
//! # How an app is started
//!
//! [`Kernel::spawn`] starts the app with `clone3(CLONE_PIDFD | CLONE_INTO_CGROUP)`
//! ([`crate::sys::spawn`], Linux ≥ 5.7): the child is created inside its instance cgroup
//! (no migration: moving a running process takes a kernel lock whose writer waits an RCU
//! grace period, ~10 ms per start) and narund follows it through the pidfd of the same
//! call. Where `clone3` or `CLONE_INTO_CGROUP` is missing (`ENOSYS`, `E2BIG`, `EINVAL`,
//! or `EPERM` from a seccomp filter) narund says so once and uses the fallback for good: std's
//! `fork` with `pre_exec` steps that write `cgroup.procs`, drop privileges and `execve`.
//! Any other error of `clone3` (a cgroup the kernel will not start a task in) falls back
//! for that start only. `NARUND_SPAWN=fork` in narund's environment forces the fallback
//! (tests, or a kernel whose `clone3` misbehaves). Both paths give the app exactly the
//! same process: environment, stdio, work dir, process group, `RLIMIT_NOFILE`, user and
//! capabilities, and the `execve` without a `/bin/sh` fallback.

use super::reaper::TRACKED;
use crate::cgroup::RunCgroup;
use crate::privileges::PrivilegePlan;
use crate::sys;
use futures_util::future::BoxFuture;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

/// One app process to start: exactly this program, arguments, environment (nothing of
/// narund's), work dir and output pipes, in `cgroup`, as `privileges` say.
pub struct SpawnRequest<'a> {
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is `program`).
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The read end of a pipe for stdin (a command unit's request body); `None`: `/dev/null`.
    pub stdin: Option<OwnedFd>,
    /// Write ends of the log pipes.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// `RLIMIT_NOFILE` (soft, hard) of the app.
    pub nofile: (u64, u64),
    pub cgroup: Option<&'a dyn RunCgroup>,
    pub privileges: Option<PrivilegePlan>,
}

/// Which way apps are started (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnPath {
    /// `clone3(CLONE_INTO_CGROUP)`.
    Clone3,
    /// `fork` + `pre_exec` (writes `cgroup.procs`).
    Fork,
}

/// 0 = not decided yet, 1 = clone3, 2 = fork.
static PATH: AtomicU8 = AtomicU8::new(0);

/// The way this narund starts apps now (decided at the first start).
pub fn spawn_path() -> SpawnPath {
    match PATH.load(Ordering::Relaxed) {
        0 => {
            let forced = std::env::var_os("NARUND_SPAWN").is_some_and(|v| v == "fork");
            let path = if forced {
                tracing::info!(
                    "apps start with fork + cgroup.procs (NARUND_SPAWN=fork in the environment)"
                );
                2
            } else {
                tracing::info!("apps start with clone3(CLONE_INTO_CGROUP)");
                1
            };
            // Another thread may have decided meanwhile (a clone3 failure): keep that.
            let _ = PATH.compare_exchange(0, path, Ordering::Relaxed, Ordering::Relaxed);
            spawn_path()
        }
        1 => SpawnPath::Clone3,
        _ => SpawnPath::Fork,
    }
}

/// `clone3` failed with `e`: is it the kernel (or a seccomp filter) lacking it, for good?
pub fn clone3_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM)
    )
}

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
    /// Start `req` (see the module docs): the child enters `req.cgroup` (which needs
    /// narund's privileges), then drops to `req.privileges`, then `execve`s the program
    /// itself: a file the kernel refuses fails with `ENOEXEC`, never runs through
    /// `/bin/sh`. The child is narund's until it was waited for.
    fn spawn(&self, req: SpawnRequest<'_>) -> Result<Box<dyn Proc>, SpawnError>;
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
    fn spawn(&self, req: SpawnRequest<'_>) -> Result<Box<dyn Proc>, SpawnError> {
        let image = sys::exec::ExecImage::new(
            req.program.as_os_str(),
            std::iter::once(req.program.as_os_str()).chain(req.args.iter().map(OsStr::new)),
            req.env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))),
        )
        .map_err(SpawnError::Spawn)?;
        if spawn_path() == SpawnPath::Clone3 {
            match spawn_clone3(&req, &image) {
                Ok(p) => return Ok(p),
                Err(Clone3Error::Spawn(e)) => return Err(e),
                Err(Clone3Error::Unavailable(e)) => {
                    if clone3_missing(&e) {
                        tracing::warn!(error = %e, "clone3(CLONE_INTO_CGROUP) is not available; apps start with fork + a cgroup.procs write from now on (slower restarts)");
                        PATH.store(2, Ordering::Relaxed);
                    } else {
                        tracing::warn!(error = %e, "clone3(CLONE_INTO_CGROUP) failed; this start uses fork + a cgroup.procs write");
                    }
                }
            }
        }
        spawn_fork(req, image)
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

enum Clone3Error {
    /// No child: the caller may fall back to fork.
    Unavailable(io::Error),
    /// The start failed (the child's error, or preparing it).
    Spawn(SpawnError),
}

/// The `clone3` path (see the module docs).
fn spawn_clone3(
    req: &SpawnRequest<'_>,
    image: &sys::exec::ExecImage,
) -> Result<Box<dyn Proc>, Clone3Error> {
    let spawn_err = |e| Clone3Error::Spawn(SpawnError::Spawn(e));
    let cgroup = match req.cgroup.and_then(|c| c.open_dir()) {
        Some(Ok(fd)) => Some(fd),
        Some(Err(e)) => return Err(Clone3Error::Spawn(SpawnError::Place(e))),
        None => None,
    };
    if req.cgroup.is_some() && cgroup.is_none() {
        // A cgroup without a directory (none of the kernel's): the fork path places it.
        return Err(Clone3Error::Unavailable(io::Error::from_raw_os_error(
            libc::EBADF,
        )));
    }
    let cwd = CString::new(req.cwd.as_os_str().as_bytes()).map_err(|_| {
        spawn_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NUL byte in the work dir {}", req.cwd.display()),
        ))
    })?;
    let null = match &req.stdin {
        Some(_) => None,
        None => Some(std::fs::File::open("/dev/null").map_err(spawn_err)?),
    };
    let stdin = match (&req.stdin, &null) {
        (Some(fd), _) => fd.as_fd(),
        (None, Some(f)) => f.as_fd(),
        (None, None) => unreachable!("/dev/null is opened when there is no stdin pipe"),
    };
    let setup = sys::spawn::ChildSetup {
        image,
        cwd: &cwd,
        stdio: [stdin, req.stdout.as_fd(), req.stderr.as_fd()],
        nofile: Some(req.nofile),
        privileges: req.privileges.as_ref().map(|p| sys::spawn::PrivilegeDrop {
            uid: p.uid,
            gid: p.gid,
            keep_caps: p.keep_caps,
            cap_last_cap: p.cap_last_cap,
        }),
        cgroup: cgroup.as_ref().map(|fd| fd.as_fd()),
    };
    // As for fork: the pid enters the tracked set while its lock is held around the clone.
    let mut tracked = TRACKED.lock().unwrap();
    match sys::spawn::spawn(&setup) {
        Ok(s) => {
            tracked.insert(s.pid);
            drop(tracked);
            // AsyncFd registration needs the runtime (spawn runs on it).
            let fd = Pidfd::from_owned(s.pidfd, s.pid).map_err(|e| {
                // Killed and reaped while still tracked: the orphan reaper cannot take the
                // pid first, so it cannot be reused by a stranger before the kill.
                let _ = sys::process::kill(s.pid, libc::SIGKILL);
                let _ = sys::process::waitpid_blocking(s.pid);
                TRACKED.lock().unwrap().remove(&s.pid);
                spawn_err(e)
            })?;
            Ok(Box::new(Cloned { fd }))
        }
        Err(sys::spawn::SpawnFailure::Clone(e)) => Err(Clone3Error::Unavailable(e)),
        Err(sys::spawn::SpawnFailure::Child(e)) => Err(spawn_err(e)),
    }
}

/// The fallback: std's `fork`, then `pre_exec` steps in this order: `RLIMIT_NOFILE`, the
/// `cgroup.procs` write (while the child still has narund's credentials), the privilege
/// drop, the `execve`.
fn spawn_fork(
    req: SpawnRequest<'_>,
    image: sys::exec::ExecImage,
) -> Result<Box<dyn Proc>, SpawnError> {
    let mut cmd = tokio::process::Command::new(&req.program);
    cmd.args(&req.args)
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&req.cwd)
        .stdin(req.stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::from(req.stdout))
        .stderr(Stdio::from(req.stderr))
        .kill_on_drop(false)
        .process_group(0);
    sys::rlimit::set_nofile_before_exec(cmd.as_std_mut(), req.nofile.0, req.nofile.1);
    if let Some(cg) = req.cgroup {
        cg.place(cmd.as_std_mut()).map_err(SpawnError::Place)?;
    }
    if let Some(plan) = req.privileges {
        plan.install(cmd.as_std_mut());
    }
    // Last: the execve, without std's execvp and its ENOEXEC fallback to /bin/sh.
    sys::exec::execve_before_exec(cmd.as_std_mut(), image);
    // The pid enters the tracked set while the set's lock is held around spawn: there is
    // no window in which the orphan reaper could take a direct child (super::reaper).
    let mut tracked = TRACKED.lock().unwrap();
    let child = cmd.spawn().map_err(SpawnError::Spawn)?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    tracked.insert(pid);
    Ok(Box::new(Child { child, pid }))
}

/// A child started with `clone3`: its exit is seen through its pidfd, its status taken
/// with `waitpid` (it is narund's child).
struct Cloned {
    fd: Pidfd,
}

impl Proc for Cloned {
    fn pid(&self) -> i32 {
        self.fd.pid()
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            self.fd.exited().await?;
            // Exited: waitpid returns at once.
            let status = sys::process::waitpid_blocking(self.fd.pid())?;
            Ok(Some(ExitStatus::from_raw(status)))
        })
    }
}

impl Drop for Cloned {
    fn drop(&mut self) {
        TRACKED.lock().unwrap().remove(&self.fd.pid());
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

    /// Follow `pid` through a pidfd narund already has (`clone3`'s `CLONE_PIDFD`).
    pub fn from_owned(fd: OwnedFd, pid: i32) -> io::Result<Pidfd> {
        Ok(Pidfd {
            fd: sys::fs::async_fd(fd)?,
            pid,
        })
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
