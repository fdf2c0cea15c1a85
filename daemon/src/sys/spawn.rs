//! Starting an app with `clone3(2)` (Linux ≥ 5.3; `CLONE_INTO_CGROUP` ≥ 5.7): the child is
//! created *inside* its instance cgroup, and narund gets a pidfd for it in the same call.
//!
//! Why not std's `Command` with a `pre_exec` that writes `cgroup.procs`: moving a process
//! between cgroups takes the kernel's `cgroup_threadgroup_rwsem` for writing, a per-cpu
//! rwsem whose writer waits for an RCU grace period: ~10 ms on a loaded 2-core machine,
//! on every restart. `CLONE_INTO_CGROUP` places the task while it is created (no
//! migration, no grace period), so the app and everything it forks are in the cgroup
//! from the first instruction of the child, not only from `execve`.
//!
//! The child is a fork (no `CLONE_VM`): a copy of narund with one thread. Until `execve`
//! it makes raw, async-signal-safe syscalls on data prepared by the parent (no allocation,
//! no locks), exactly what std's `pre_exec` children may do: signal mask and `SIGPIPE`
//! back to the defaults, stdio, `chdir`, its own process group, `RLIMIT_NOFILE`, the
//! privilege drop ([`super::exec::drop_privileges_in_pre_exec`]) and the `execve` of
//! [`ExecImage`] (no `/bin/sh` fallback). A failure before `execve` is sent to the parent
//! as the errno on a close-on-exec pipe (like std): EOF on that pipe means the `execve`
//! succeeded.
//!
//! `clone_args` is 11 `__aligned_u64` on every architecture (88 bytes,
//! `CLONE_ARGS_SIZE_VER2`): pointers are passed as `u64` through `usize`, so the layout is
//! the same on armv7 (32-bit pointers) and 64-bit targets.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, gid_t, pid_t, uid_t};

use super::exec::ExecImage;

/// `CLONE_PIDFD` (Linux ≥ 5.2): the parent gets a pidfd of the child.
const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP` (Linux ≥ 5.7): the child starts in the cgroup2 directory `cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (`include/uapi/linux/sched.h`), version 2 (with `cgroup`).
#[repr(C, align(8))]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The privilege drop of the child (see [`super::exec::drop_privileges_in_pre_exec`]).
#[derive(Debug, Clone, Copy)]
pub struct PrivilegeDrop {
    pub uid: uid_t,
    pub gid: gid_t,
    pub keep_caps: u64,
    pub cap_last_cap: c_int,
}

/// Everything the child needs, prepared by the parent.
pub struct ChildSetup<'a> {
    pub image: &'a ExecImage,
    /// Working directory.
    pub cwd: &'a CStr,
    /// fds that become 0, 1 and 2.
    pub stdio: [BorrowedFd<'a>; 3],
    /// `RLIMIT_NOFILE` (soft, hard) of the app.
    pub nofile: Option<(u64, u64)>,
    pub privileges: Option<PrivilegeDrop>,
    /// An fd of the cgroup2 directory the child starts in (`O_DIRECTORY`).
    pub cgroup: Option<BorrowedFd<'a>>,
}

/// Why a [`spawn`] failed.
#[derive(Debug)]
pub enum SpawnFailure {
    /// `clone3` itself failed (no child was created): `ENOSYS` before 5.3 or under a
    /// seccomp filter, `E2BIG` before 5.7 (no `cgroup` field), `EBADF`/`EOPNOTSUPP`/`EBUSY`
    /// for a cgroup the kernel will not start a task in. The caller may fall back.
    Clone(io::Error),
    /// The child failed before or at `execve` (it was reaped): the error of that step.
    Child(io::Error),
}

/// A child started by [`spawn`]: running its program.
#[derive(Debug)]
pub struct Spawned {
    pub pid: pid_t,
    /// The child's pidfd (close-on-exec); readable once it exited.
    pub pidfd: OwnedFd,
}

/// `clone3` a child that sets itself up as `setup` says and `execve`s its image; returns
/// once the `execve` succeeded (or the child failed and was reaped).
pub fn spawn(setup: &ChildSetup<'_>) -> Result<Spawned, SpawnFailure> {
    let (err_r, err_w) = cloexec_pipe().map_err(SpawnFailure::Clone)?;
    let mut pidfd: c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &mut pidfd as *mut c_int as usize as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(cg) = setup.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this address
    // space (one thread) and continues here with 0; it only calls `child`, which makes
    // raw async-signal-safe syscalls on data the parent prepared and never returns. `args`
    // outlives the call and has the kernel's layout; `pidfd` is written by the kernel in
    // the parent.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        return Err(SpawnFailure::Clone(io::Error::last_os_error()));
    }
    if rc == 0 {
        // SAFETY: in the child, see above.
        unsafe { child(setup, err_w.as_raw_fd()) }
    }
    let pid = rc as pid_t;
    // SAFETY: the kernel stored a new pidfd (close-on-exec) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    drop(err_w);
    let mut buf = [0u8; 4];
    let mut got = 0;
    let mut read_error = None;
    while got < buf.len() {
        // SAFETY: reading into the unfilled part of `buf` from a pipe we own.
        let n = unsafe {
            libc::read(
                err_r.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    read_error = Some(e);
                    break;
                }
            }
        }
    }
    if let Some(e) = read_error {
        // Whether the child reached execve is unknown: do not report a start that may
        // not have happened. Kill and reap it (it is ours).
        let _ = super::process::kill(pid, libc::SIGKILL);
        let _ = super::process::waitpid_blocking(pid);
        return Err(SpawnFailure::Child(e));
    }
    if got == 0 {
        return Ok(Spawned { pid, pidfd });
    }
    // The child failed before execve and exits with 127: reap it (it is ours).
    let _ = super::process::waitpid_blocking(pid);
    let errno = if got == buf.len() {
        i32::from_ne_bytes(buf)
    } else {
        libc::EIO
    };
    Err(SpawnFailure::Child(io::Error::from_raw_os_error(errno)))
}

/// The child: set up, `execve`; on failure tell the parent the errno and `_exit(127)`.
///
/// # Safety
///
/// Only in the child of [`spawn`]'s `clone3`.
unsafe fn child(setup: &ChildSetup<'_>, err_w: RawFd) -> ! {
    let e = match unsafe { child_setup(setup) } {
        Ok(()) => setup.image.execve(),
        Err(e) => e,
    };
    let errno: c_int = e.raw_os_error().unwrap_or(libc::EINVAL);
    let bytes = errno.to_ne_bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `bytes` lives on the stack.
    unsafe {
        libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// # Safety
///
/// Only in the child of [`spawn`]'s `clone3` (it changes the calling process).
unsafe fn child_setup(setup: &ChildSetup<'_>) -> io::Result<()> {
    // SAFETY: raw syscalls (or glibc's thin async-signal-safe wrappers) on stack data and
    // fds/strings the parent keeps alive until the child has exec'd or failed.
    unsafe {
        // Signals as a new process expects them: nothing blocked, SIGPIPE at its default
        // (narund ignores it, and an ignored signal stays ignored across execve).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::pthread_sigmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))?;
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        for (target, fd) in setup.stdio.iter().enumerate() {
            let fd = fd.as_raw_fd();
            let target = target as c_int;
            if fd == target {
                // dup2 onto itself keeps FD_CLOEXEC: clear it.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                check_rc(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
            } else {
                check_rc(libc::dup2(fd, target))?;
            }
        }
        check_rc(libc::chdir(setup.cwd.as_ptr()))?;
        check_rc(libc::setpgid(0, 0))?;
        if let Some((soft, hard)) = setup.nofile {
            super::rlimit::set_nofile(soft, hard)?;
        }
        if let Some(d) = setup.privileges {
            super::exec::drop_privileges_in_pre_exec(d.uid, d.gid, d.keep_caps, d.cap_last_cap)?;
        }
    }
    Ok(())
}

/// A pthread-style return code (the error itself, 0 = success).
fn check(rc: c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// A syscall-style return code (-1 and errno).
fn check_rc(rc: c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    check_rc(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two new fds nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Open a cgroup2 directory for [`ChildSetup::cgroup`] (`O_RDONLY | O_DIRECTORY |
/// O_CLOEXEC`).
pub fn open_cgroup_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{CString, OsStr};
    use std::os::fd::AsFd;

    fn image(argv: &[&str]) -> ExecImage {
        ExecImage::new(
            OsStr::new(argv[0]),
            argv.iter().map(OsStr::new),
            [(OsStr::new("A"), OsStr::new("1"))],
        )
        .unwrap()
    }

    fn run(setup: &ChildSetup<'_>) -> Result<(Spawned, i32), SpawnFailure> {
        let s = spawn(setup)?;
        let status = super::super::process::waitpid_blocking(s.pid).unwrap();
        Ok((s, status))
    }

    #[test]
    fn a_child_gets_exactly_its_setup_and_its_exit_status_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let img = image(&[
            "/bin/sh",
            "-c",
            "echo \"$A $(pwd) $(ulimit -n)\"; read -r p c s pp pg rest < /proc/$$/stat; echo $pg; exit 7",
        ]);
        let cwd = CString::new(dir.path().to_str().unwrap()).unwrap();
        let setup = ChildSetup {
            image: &img,
            cwd: &cwd,
            stdio: [null.as_fd(), out.as_fd(), out.as_fd()],
            nofile: Some((77, 77)),
            privileges: None,
            cgroup: None,
        };
        let (s, status) = run(&setup).map_err(|e| format!("{e:?}")).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7);
        let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!("1 {} 77", dir.path().display())
        );
        // Its own process group.
        assert_eq!(lines.next().unwrap().trim(), s.pid.to_string());
    }

    #[test]
    fn a_failure_before_exec_is_the_spawn_error_and_the_child_is_reaped() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let img = image(&["/nonexistent/program"]);
        let cwd = CString::new("/").unwrap();
        let mut setup = ChildSetup {
            image: &img,
            cwd: &cwd,
            stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            nofile: None,
            privileges: None,
            cgroup: None,
        };
        match spawn(&setup) {
            Err(SpawnFailure::Child(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
        let img = image(&["/bin/true"]);
        setup.image = &img;
        let bad = CString::new("/nonexistent-dir").unwrap();
        setup.cwd = &bad;
        match spawn(&setup) {
            Err(SpawnFailure::Child(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
        // A soft limit above the hard one: the kernel's EINVAL.
        setup.cwd = &cwd;
        setup.nofile = Some((10, 5));
        match spawn(&setup) {
            Err(SpawnFailure::Child(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_cgroup_fd_fails_the_clone_not_the_child() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let img = image(&["/bin/true"]);
        let cwd = CString::new("/").unwrap();
        // A directory that is not on cgroup2.
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_cgroup_dir(tmp.path()).unwrap();
        let setup = ChildSetup {
            image: &img,
            cwd: &cwd,
            stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            nofile: None,
            privileges: None,
            cgroup: Some(dir.as_fd()),
        };
        match spawn(&setup) {
            Err(SpawnFailure::Clone(e)) => assert!(e.raw_os_error().is_some(), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_child_starts_inside_the_cgroup_it_is_cloned_into() {
        if super::super::process::geteuid() != 0 {
            eprintln!("skipped: creating a cgroup needs root");
            return;
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = crate::cgroup::parse_mountinfo(&info)
            .0
            .expect("cgroup2 mounted")
            .mount_point;
        let name = format!("narun-unit-clone3-{}", std::process::id());
        let path = mount.join(&name);
        std::fs::create_dir(&path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = open_cgroup_dir(&path).unwrap();
        // The program reads its own cgroup: where it was from its first instruction.
        let img = image(&["/bin/cat", "/proc/self/cgroup"]);
        let cwd = CString::new("/").unwrap();
        let setup = ChildSetup {
            image: &img,
            cwd: &cwd,
            stdio: [null.as_fd(), out.as_fd(), out.as_fd()],
            nofile: None,
            privileges: None,
            cgroup: Some(fd.as_fd()),
        };
        let result = run(&setup);
        let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let _ = std::fs::remove_dir(&path);
        let (_, status) = result.map_err(|e| format!("{e:?}")).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let v2 = text.lines().find(|l| l.starts_with("0::")).unwrap_or("");
        assert!(v2.ends_with(&format!("/{name}")), "{text}");
    }
}
