//! Processes: signals, ids, pidfds, reaping, and the `prctl`s narund applies to itself.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use libc::{c_int, c_ulong, pid_t, uid_t};

/// `kill(pid, signal)`. An error (`ESRCH`: already gone, `EPERM`) is returned, never
/// panics. Signalling the right process is the caller's business (a pid may be recycled
/// once it was reaped).
pub fn kill(pid: pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `killpg(pgid, signal)`: every process of the process group `pgid`.
pub fn killpg(pgid: pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: killpg(3) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective uid of narund (`geteuid(2)`; cannot fail).
pub fn geteuid() -> uid_t {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `umask(mask)`: set narund's file mode creation mask, return the previous one (cannot
/// fail). Also the mask apps start with (they inherit it).
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask(2) takes a plain integer and touches no memory of ours.
    unsafe { libc::umask(mask) }
}

/// The real uid of narund (`getuid(2)`; cannot fail).
pub fn getuid() -> uid_t {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// `pidfd_open(pid, 0)` (Linux ≥ 5.3): a new, owned fd that refers to `pid` and becomes
/// readable when that process exits.
pub fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes (pid_t, unsigned int) and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `waitpid(pid, WNOHANG)` on one specific child: `Some(raw wait status)` when `pid` was
/// reaped by this call, `None` when it has not exited yet, is not narund's child, or was
/// already reaped. Reaping a child tokio waits for loses its status there: the caller
/// decides which pids are its to reap.
pub fn waitpid_nohang(pid: pid_t) -> Option<c_int> {
    let mut status: c_int = 0;
    // SAFETY: waitpid on one specific pid with a valid status pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (rc == pid).then_some(status)
}

/// `waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`: the pid of one child of narund that has
/// exited and is waiting to be reaped, **without** reaping it; `None` when no child has
/// exited (or narund has no children). Cheap enough to call on every SIGCHLD: the orphan
/// reaper uses it to skip its `/proc` scan when there is nothing to reap.
pub fn peek_exited_child() -> Option<pid_t> {
    // SAFETY: an all-zero siginfo_t is a valid value (plain C struct).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with a valid siginfo pointer; WNOWAIT leaves the child waitable.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 when no child was waitable).
    let pid = unsafe { info.si_pid() };
    (pid > 0).then_some(pid)
}

/// `waitpid(pid, 0)`: wait for and reap the child `pid`; returns its raw wait status.
/// `EINTR` is retried; `ECHILD` (not a child, or reaped already) is an error.
pub fn waitpid_blocking(pid: pid_t) -> io::Result<c_int> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: waitpid on one specific pid with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)` (Linux ≥ 3.4): orphaned descendants are
/// re-parented to narund instead of PID 1.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `prctl(PR_CAPBSET_READ, cap)`: is capability `cap` in the calling thread's bounding
/// set? `false` also for capabilities the kernel does not know (`EINVAL`).
pub fn capbset_read(cap: c_int) -> bool {
    // SAFETY: plain prctl; returns 1, 0 or -1 (EINVAL for unknown caps).
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as c_ulong, 0, 0, 0) == 1 }
}

/// `prctl(PR_CAPBSET_DROP, cap)`: remove `cap` from the calling thread's bounding set for
/// good (needs `CAP_SETPCAP`). Threads created later inherit the reduced set.
pub fn capbset_drop(cap: c_int) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn an_exited_child_is_seen_but_left_to_its_waiter() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as pid_t;
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie() {
            assert!(std::time::Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Some exited child is reported (another test's may come first)...
        assert!(peek_exited_child().is_some());
        // ... and ours is still there for its own waiter, with its status.
        assert!(zombie(), "peeking must not reap");
        assert!(child.wait().unwrap().success());
    }

    #[test]
    // The child is reaped by `waitpid_nohang`, which is what the test is about.
    #[allow(clippy::zombie_processes)]
    fn a_child_is_followed_killed_and_reaped_once() {
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as pid_t;
        let _pidfd = pidfd_open(pid).unwrap();
        assert_eq!(waitpid_nohang(pid), None, "still running");
        kill(pid, libc::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(s) = waitpid_nohang(pid) {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "child not reaped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let status = std::process::ExitStatus::from_raw(status);
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(waitpid_nohang(pid), None, "reaped already");
        assert!(pidfd_open(-1).is_err());
    }

    #[test]
    fn unknown_capabilities_are_not_in_the_bounding_set() {
        assert!(!capbset_read(-1));
        assert!(!capbset_read(1000));
    }
}
