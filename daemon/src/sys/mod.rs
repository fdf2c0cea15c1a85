//! The raw kernel interface: every `libc` call narund makes that needs `unsafe`, each behind
//! a small wrapper whose doc states its contract.
//!
//! This is **the only module of narund with unsafe code**: `lib.rs` and `main.rs` deny
//! `unsafe_code` and only this module allows it. Everything here is a plain wrapper around
//! one syscall (or one fixed sequence of them); what to call when, parsing `/proc`, the
//! inotify wait loop, the privilege plan and all error messages stay with the callers.
//! Wrappers are safe functions unless the call has a precondition the type system cannot
//! check; those are `unsafe fn` with a `# Safety` section, and every `unsafe` block has a
//! `// SAFETY:` comment.
//!
//! | file | what |
//! |---|---|
//! | [`process`] | `kill`, `killpg`, `getuid`/`geteuid`, `pidfd_open`, `waitpid(WNOHANG)`, `prctl`: child subreaper, bounding-set read/drop |
//! | [`socket`] | `SO_PASSCRED`, `recvmsg` with the sender's credentials, `sendmsg` with one fd (`SCM_RIGHTS`), `poll` for room |
//! | [`fs`] | `statfs` magic, `fstat` is-FIFO, `fcntl` `O_NONBLOCK`, an inotify watch, raw `read`, registering an owned fd with tokio, `flock(LOCK_EX\|LOCK_NB)`, `access(W_OK)` |
//! | [`mm`] | `madvise` (`MADV_RANDOM`, `MADV_PAGEOUT`), `posix_fadvise(POSIX_FADV_DONTNEED)` |
//! | [`exec`] | what runs between `fork` and `exec` (`pre_exec`): entering the cgroup, the privilege drop with locked securebits, the `execve` itself (no `ENOEXEC` shell fallback); async-signal-safe |
//! | [`spawn`] | `clone3(CLONE_PIDFD \| CLONE_INTO_CGROUP)`: an app started inside its cgroup, and what its child does until `execve` (stdio, `chdir`, process group, limits, privilege drop); async-signal-safe |
//! | [`beneath`] | `openat2(RESOLVE_BENEATH \| RESOLVE_NO_SYMLINKS)` with an `openat(O_NOFOLLOW)` walk as fallback, `mkdirat`, `openat(O_CREAT \| O_EXCL \| O_NOFOLLOW)`, `renameat`, `unlinkat`, `fstatat`, `fchown`, `fchmod`: writing into a directory an app owns |
//! | [`rlimit`] | `prlimit64(RLIMIT_NOFILE)`: narund's own open-files limit, and the app's, set between `fork` and `exec`; async-signal-safe |
//! | [`env`] | taking the fds systemd passed (`LISTEN_FDS`), which edits the environment |
//!
//! Kernel minimums of the calls here (narund degrades or reports where a call is missing):
//! `openat2` 5.6 (placing mounted files in work dirs; older kernels, or an `ENOSYS` from a
//! seccomp filter, get the per-component `openat(O_NOFOLLOW)` walk), `pidfd_open` and polling a pidfd 5.3 (following a process narund did not start),
//! `clone3` with `CLONE_INTO_CGROUP` 5.7 (starting an app inside its cgroup; older
//! kernels, or an error of the call, get the `fork` + `cgroup.procs` write), `MADV_PAGEOUT` 5.4 (best effort), `PR_CAP_AMBIENT` 4.3, `PR_SET_NO_NEW_PRIVS` 3.5,
//! `PR_SET_CHILD_SUBREAPER` 3.4, `prlimit64` 2.6.36, `PR_SET_SECUREBITS` 2.6.26 (`NO_CAP_AMBIENT_RAISE` 4.3), `capset` v3 2.6.26, `inotify_init1` and
//! `MSG_CMSG_CLOEXEC` 2.6.27. Not here because they are plain file writes (`cgroup/`):
//! `cgroup.kill` 5.14 (with a freeze-and-kill fallback), `cgroup.freeze` 5.2.
//!
//! 32-bit targets (armv7): sizes and ids go through libc's own types (`socklen_t`,
//! `c_ulong`, `msg_controllen`, `cmsg_len`, `f_type`), with the casts kept explicit.
#![allow(unsafe_code)] // the one place for narund's raw syscalls (see above)

pub mod beneath;
pub mod env;
pub mod exec;
pub mod fs;
pub mod mm;
pub mod process;
pub mod rlimit;
pub mod socket;
pub mod spawn;
