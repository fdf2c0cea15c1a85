//! The process environment: the fds systemd passed with `LISTEN_FDS`, taken once at start.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Take the fds systemd passed (`LISTEN_PID` = this process, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`; marked close-on-exec by `sd_notify`) with their `FDNAME`s, and remove
/// the three variables. A malformed `LISTEN_FDS` is logged and ignored (no fds).
///
/// # Safety
///
/// Changes the environment: call it before any other thread exists (at the top of
/// `main`, before the tokio runtime is built), and before anything else in the process
/// took ownership of the passed fds (3, 4, …).
pub unsafe fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let fds: Vec<(RawFd, String)> = match sd_notify::listen_fds_with_names() {
        Ok(it) => it.collect(),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring LISTEN_FDS");
            Vec::new()
        }
    };
    // SAFETY: the caller guarantees that no other thread reads the environment now.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    fds.into_iter()
        .map(|(fd, name)| {
            // SAFETY: systemd passed this fd to this process (LISTEN_PID matched); nothing
            // else in narund owns it (the caller's guarantee).
            (name, unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}
