//! What runs in the child between `fork` and `exec` (`pre_exec`): entering the instance's
//! cgroup and dropping to the app's uid/gid/capabilities.
//!
//! A `pre_exec` closure runs in the forked child of a possibly multi-threaded parent: it
//! may only make async-signal-safe calls (no allocation, no locks, no `std::env`). The
//! functions here make raw syscalls on `Copy` data and an fd, nothing else
//! (`io::Error::last_os_error` does not allocate). Closures run in registration order:
//! register [`enter_cgroup_before_exec`] before [`drop_privileges_before_exec`] (moving a
//! process needs the parent's privileges).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use libc::{c_int, c_ulong, gid_t, uid_t};

/// Make `cmd`'s child enter the cgroup whose `cgroup.procs` is open for writing as `procs`,
/// between fork and exec ([`enter_cgroup_in_pre_exec`]), so that the app and everything it
/// forks are grouped from the first instruction. The fd is kept by `cmd` (and closed with
/// it); open it `O_CLOEXEC` so the app does not inherit it.
pub fn enter_cgroup_before_exec(cmd: &mut std::process::Command, procs: OwnedFd) {
    // SAFETY: the closure only calls `enter_cgroup_in_pre_exec`, which performs a single raw
    // `write(2)` on an fd owned by the closure: async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || enter_cgroup_in_pre_exec(procs.as_raw_fd()));
    }
}

/// Move the calling process into the cgroup whose `cgroup.procs` is open as `fd`: writes `"0"` (= "the
/// writing process"). Meant for `pre_exec`: a single raw `write(2)`, async-signal-safe, no allocation.
pub fn enter_cgroup_in_pre_exec(fd: RawFd) -> io::Result<()> {
    let buf = b"0";
    // SAFETY: buf is valid for 1 byte; write(2) is async-signal-safe.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Make `cmd`'s child drop to `uid`/`gid`, keeping exactly the capabilities in `keep_caps`
/// (bit n = capability n, up to `cap_last_cap`), between fork and exec
/// ([`drop_privileges_in_pre_exec`]). Register it after [`enter_cgroup_before_exec`].
pub fn drop_privileges_before_exec(
    cmd: &mut std::process::Command,
    uid: uid_t,
    gid: gid_t,
    keep_caps: u64,
    cap_last_cap: c_int,
) {
    // SAFETY: drop_privileges_in_pre_exec only makes raw syscalls on Copy integers
    // (async-signal-safe), and the closure runs in the forked child, before exec: its one
    // precondition.
    unsafe {
        cmd.pre_exec(move || drop_privileges_in_pre_exec(uid, gid, keep_caps, cap_last_cap));
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn check(rc: c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drop the current (forked, single-threaded) process to `uid`/`gid` keeping the capabilities
/// in `keep_caps` (bit n = capability n; `cap_last_cap` is the running kernel's highest).
/// Order matters:
///
/// 1. `PR_CAPBSET_DROP` every capability not kept (needs `CAP_SETPCAP`, so while still root);
/// 2. `PR_SET_KEEPCAPS 1` so the permitted set survives the uid change;
/// 3. `setgroups(0)`, `setresgid`, then `setresuid` (gid first: afterwards we may no longer change it);
/// 4. `capset` (v3): permitted = effective = inheritable = kept;
/// 5. `PR_CAP_AMBIENT_RAISE` each kept capability (needs it in permitted and inheritable), so a
///    non-root uid keeps them across `execve` of a binary without file capabilities;
/// 6. `PR_SET_NO_NEW_PRIVS 1`: setuid binaries and file capabilities cannot add anything later.
///
/// # Safety
///
/// Only call between `fork` and `exec` (in `pre_exec`): it changes the credentials of the calling thread.
/// It allocates nothing and makes raw syscalls only (`io::Error::last_os_error` does not allocate).
pub unsafe fn drop_privileges_in_pre_exec(
    uid: uid_t,
    gid: gid_t,
    keep_caps: u64,
    cap_last_cap: c_int,
) -> io::Result<()> {
    let keep = |cap: c_int| cap < 64 && keep_caps & (1u64 << cap) != 0;
    // SAFETY: every call in this block is a raw syscall with integer/pointer arguments valid
    // for the call (the pointers are to `header` and `data`, which outlive capset).
    unsafe {
        // 1. Bounding set.
        let mut cap: c_int = 0;
        while cap <= cap_last_cap {
            if !keep(cap) {
                check(libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    cap as c_ulong,
                    0 as c_ulong,
                    0 as c_ulong,
                    0 as c_ulong,
                ))?;
            }
            cap += 1;
        }
        // 2. Keep permitted caps over setresuid.
        check(libc::prctl(
            libc::PR_SET_KEEPCAPS,
            1 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        ))?;
        // 3. Groups, gid, uid. (libc's wrappers pick the 32-bit-id syscalls on armv7.)
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
        // 4. capset v3: two 32-bit halves.
        let lo = (keep_caps & 0xffff_ffff) as u32;
        let hi = (keep_caps >> 32) as u32;
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: lo,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: hi,
            },
        ];
        let rc = libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        );
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        // 5. Ambient set: start empty, raise each kept capability.
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        ))?;
        let mut cap: c_int = 0;
        while cap <= cap_last_cap {
            if keep(cap) {
                check(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as c_ulong,
                    cap as c_ulong,
                    0 as c_ulong,
                    0 as c_ulong,
                ))?;
            }
            cap += 1;
        }
        // 6. No privilege gain through exec from here on.
        check(libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        ))?;
    }
    Ok(())
}
