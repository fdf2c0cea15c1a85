//! `RLIMIT_NOFILE` (open files) of narund and of the app in the forked child, through
//! `prlimit64(2)` (Linux ≥ 2.6.36) on the calling process.
//!
//! Why the raw `prlimit64` and not `getrlimit`/`setrlimit`: its `struct rlimit64` is two
//! 64-bit values on every architecture (`RLIM64_INFINITY` = `u64::MAX`), while libc's
//! `rlim_t` is 32 bits on armv7 (glibc without `_FILE_OFFSET_BITS=64`), so the same
//! code has the same widths everywhere and no cast can truncate. It is also one raw
//! syscall on stack data: async-signal-safe in a `pre_exec` closure (glibc's
//! `setrlimit` is not on POSIX's async-signal-safe list).

use std::io;
use std::os::unix::process::CommandExt;

/// `struct rlimit64` of the kernel: soft then hard limit, 64 bits each.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Rlimit64 {
    cur: u64,
    max: u64,
}

/// `prlimit64(0, RLIMIT_NOFILE, new, &old)`: set the calling process's limit to `new`
/// when given, and return the limit before the call. A raw syscall on stack data.
fn prlimit_nofile(new: Option<Rlimit64>) -> io::Result<Rlimit64> {
    let mut old = Rlimit64::default();
    let new_ptr = match &new {
        Some(n) => n as *const Rlimit64,
        None => std::ptr::null(),
    };
    // SAFETY: pid 0 is the calling process; `new_ptr` is null or points to `new`, `old`
    // is writable; both outlive the call and have the kernel's `struct rlimit64` layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::c_long,
            libc::RLIMIT_NOFILE as libc::c_long,
            new_ptr,
            &mut old as *mut Rlimit64,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(old)
    }
}

/// narund's own `RLIMIT_NOFILE`: `(soft, hard)`; `u64::MAX` is unlimited.
pub fn nofile() -> io::Result<(u64, u64)> {
    prlimit_nofile(None).map(|l| (l.cur, l.max))
}

/// Set narund's own `RLIMIT_NOFILE` to `soft`/`hard` (raising `hard` needs
/// `CAP_SYS_RESOURCE`; `soft` may not exceed `hard`, nor `fs.nr_open`).
pub fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    prlimit_nofile(Some(Rlimit64 {
        cur: soft,
        max: hard,
    }))
    .map(|_| ())
}

/// Make `cmd`'s child set its `RLIMIT_NOFILE` to `soft`/`hard` between fork and exec. Only
/// lowering needs no privilege: the caller keeps `hard` at or below narund's own hard
/// limit, so it works before or after the privilege drop. A failure fails the spawn.
pub fn set_nofile_before_exec(cmd: &mut std::process::Command, soft: u64, hard: u64) {
    let limit = Rlimit64 {
        cur: soft,
        max: hard,
    };
    // SAFETY: the closure makes one raw prlimit64(2) on a Copy value it owns:
    // async-signal-safe, no allocation (`last_os_error` allocates nothing).
    unsafe {
        cmd.pre_exec(move || prlimit_nofile(Some(limit)).map(|_| ()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_of(pid: u32) -> (u64, u64) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut v = line["Max open files".len()..]
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
        (v.next().unwrap(), v.next().unwrap())
    }

    #[test]
    fn the_limit_reads_like_proc_and_a_child_gets_what_it_is_given() {
        let (soft, hard) = nofile().unwrap();
        assert!(soft <= hard, "{soft} {hard}");
        assert_eq!(hard, limits_of(std::process::id()).1);
        let want_hard = hard.min(4096);
        let want_soft = want_hard.min(100);
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("5");
        set_nofile_before_exec(&mut cmd, want_soft, want_hard);
        let mut child = cmd.spawn().unwrap();
        let got = limits_of(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got, (want_soft, want_hard));
        // The parent keeps its hard limit (its soft one may be raised meanwhile by
        // `crate::nofile`'s test, in another thread of this process).
        assert_eq!(nofile().unwrap().1, hard);
        // A soft limit above the hard one fails the spawn, with the kernel's error.
        let mut cmd = std::process::Command::new("true");
        set_nofile_before_exec(&mut cmd, want_hard + 1, want_hard);
        let e = cmd.spawn().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }
}
