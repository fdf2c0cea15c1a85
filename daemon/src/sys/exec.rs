//! What runs in the child between `fork` and `exec` (`pre_exec`): entering the instance's
//! cgroup, dropping to the app's uid/gid/capabilities, and the `execve` itself.
//!
//! A `pre_exec` closure runs in the forked child of a possibly multi-threaded parent: it
//! may only make async-signal-safe calls (no allocation, no locks, no `std::env`). The
//! functions here make raw syscalls on `Copy` data and an fd, nothing else
//! (`io::Error::last_os_error` does not allocate). Closures run in registration order:
//! register [`enter_cgroup_before_exec`] before [`drop_privileges_before_exec`] (moving a
//! process needs the parent's privileges), and [`execve_before_exec`] last.
//!
//! Why narund makes the `execve` itself ([`execve_before_exec`]): std's `Command` ends with
//! glibc's `execvp`, which runs a file the kernel refuses with `ENOEXEC` through `/bin/sh`.
//! A file with an ELF header followed by shell lines would then run as a script.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use libc::{c_char, c_int, c_ulong, gid_t, uid_t};

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

/// `CAP_SETPCAP` (capability 8).
const CAP_SETPCAP: u32 = 8;

/// The securebits every app runs with, each with its lock: `SECBIT_NOROOT`,
/// `SECBIT_NO_SETUID_FIXUP`, `SECBIT_KEEP_CAPS_LOCKED` (keep-caps itself off; `execve` clears
/// it anyway) and `SECBIT_NO_CAP_AMBIENT_RAISE` (`0xef`). What `PR_GET_SECUREBITS` reads in an app.
pub const LOCKED_SECUREBITS: c_int = libc::SECBIT_NOROOT
    | libc::SECBIT_NOROOT_LOCKED
    | libc::SECBIT_NO_SETUID_FIXUP
    | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
    | libc::SECBIT_KEEP_CAPS_LOCKED
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// `capset(2)` (v3) of the calling thread: permitted = effective = `permitted`, inheritable =
/// `inheritable` (bit n = capability n). A raw syscall on stack data: async-signal-safe.
fn capset(permitted: u64, inheritable: u64) -> io::Result<()> {
    let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [false, true].map(|hi| CapData {
        effective: half(permitted, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: header and data are valid for the call (v3 takes two CapData) and outlive it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

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
/// 4. `capset` (v3): permitted = effective = kept plus `CAP_SETPCAP` (for step 6), inheritable = kept;
/// 5. `PR_CAP_AMBIENT_RAISE` each kept capability (needs it in permitted and inheritable), so a
///    non-root uid keeps them across `execve` of a binary without file capabilities;
/// 6. `PR_SET_SECUREBITS` [`LOCKED_SECUREBITS`] (needs `CAP_SETPCAP`): uid 0 gets no capabilities
///    at `execve` (`NOROOT`), uid changes do not touch capabilities (`NO_SETUID_FIXUP`), keep-caps
///    and the ambient set cannot be raised again (`KEEP_CAPS_LOCKED`, `NO_CAP_AMBIENT_RAISE`);
///    every bit locked, for the app and everything it starts;
/// 7. `capset` (v3): permitted = effective = inheritable = kept (`CAP_SETPCAP` goes unless kept);
/// 8. `PR_SET_NO_NEW_PRIVS 1`: setuid binaries and file capabilities cannot add anything later.
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
        // 3. Groups, gid, uid, as raw syscalls (this thread only). glibc's wrappers
        //    broadcast the change to every thread glibc believes exists: after a raw
        //    `clone3` (which, unlike `fork`, does not reset glibc's thread list and locks)
        //    that means narund's threads, and a lock copied mid-operation hangs the child
        //    for ever. armv7 has 16-bit-id calls under the plain names: use the `32` ones.
        #[cfg(target_arch = "arm")]
        let (sys_setgroups, sys_setresgid, sys_setresuid) = (
            libc::SYS_setgroups32,
            libc::SYS_setresgid32,
            libc::SYS_setresuid32,
        );
        #[cfg(not(target_arch = "arm"))]
        let (sys_setgroups, sys_setresgid, sys_setresuid) = (
            libc::SYS_setgroups,
            libc::SYS_setresgid,
            libc::SYS_setresuid,
        );
        let raw = |rc: libc::c_long| check(if rc == -1 { -1 } else { 0 });
        raw(libc::syscall(
            sys_setgroups,
            0 as c_ulong,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        // ids as the kernel reads them (it truncates each register to a 32-bit id).
        let (g, u) = (gid as c_ulong, uid as c_ulong);
        raw(libc::syscall(sys_setresgid, g, g, g))?;
        raw(libc::syscall(sys_setresuid, u, u, u))?;
        // 4. Kept capabilities, and CAP_SETPCAP until the securebits are set.
        let setpcap = 1u64 << CAP_SETPCAP;
        capset(keep_caps | setpcap, keep_caps)?;
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
        // 6. Securebits, locked.
        check(libc::prctl(
            libc::PR_SET_SECUREBITS,
            LOCKED_SECUREBITS as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        ))?;
        // 7. Exactly the kept capabilities.
        capset(keep_caps, keep_caps)?;
        // 8. No privilege gain through exec from here on.
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

/// A program, its arguments and its whole environment as C strings, prepared in the parent
/// for [`execve_before_exec`] (the child may not allocate).
pub struct ExecImage {
    path: CString,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    // The strings `argv` and `envp` point into (heap buffers: moving the Vecs moves no string).
    _strings: Vec<CString>,
}

// SAFETY: the raw pointers point into the `CString`s the image owns; nothing mutates them
// after `new`, so sharing or sending the image shares only immutable bytes.
unsafe impl Send for ExecImage {}
// SAFETY: as for Send: the image is immutable after `new`.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    /// `path` run with `argv` (`argv[0]` included) and exactly the environment `env`. A NUL
    /// byte in any of them is an `InvalidInput` error.
    pub fn new<'a>(
        path: &OsStr,
        argv: impl IntoIterator<Item = &'a OsStr>,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
    ) -> io::Result<ExecImage> {
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NUL byte in {:?}", String::from_utf8_lossy(b)),
                )
            })
        };
        let path = c(path.as_bytes())?;
        let args = argv
            .into_iter()
            .map(|a| c(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let vars = env
            .into_iter()
            .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let (argv, envp) = (ptrs(&args), ptrs(&vars));
        let mut strings = args;
        strings.extend(vars);
        Ok(ExecImage {
            path,
            argv,
            envp,
            _strings: strings,
        })
    }
}

impl ExecImage {
    /// `execve(2)` this image; returns only on failure, with its error.
    pub(super) fn execve(&self) -> io::Error {
        // SAFETY: path, argv and envp point into strings this image owns; argv and envp
        // are NULL-terminated. execve(2) is async-signal-safe.
        unsafe {
            libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        }
        io::Error::last_os_error()
    }
}

/// Make `cmd`'s child `execve(2)` `image` itself, as its last `pre_exec` step (register it
/// after every other), so std's `execvp` with its `ENOEXEC` → `/bin/sh` fallback is never
/// reached: a file the kernel does not execute fails the spawn with `ENOEXEC` (std reports
/// the error of a `pre_exec` closure as the error of `spawn`).
pub fn execve_before_exec(cmd: &mut std::process::Command, image: ExecImage) {
    // SAFETY: the closure makes one raw execve(2) on pointers into `image`, which it owns
    // (argv and envp are NULL-terminated arrays of NUL-terminated strings): async-signal-
    // safe, no allocation (`last_os_error` allocates nothing). It returns only if execve
    // failed.
    unsafe {
        cmd.pre_exec(move || Err(image.execve()));
    }
}
