//! systemd's file descriptor store, for the log pipes of running apps.
//!
//! The read ends of an app's stdout/stderr pipes live in narund. If narund dies and
//! nobody else holds them, the app's next write gets `SIGPIPE`/`EPIPE`. Under systemd
//! (`FileDescriptorStoreMax=` in `systemd/narund.service`) narund therefore *parks* a
//! copy of each read end in the service's fd store:
//!
//! * [`park`]: `FDSTORE=1` + `FDNAME=<run-id>-stdout` (or `-stderr`) with the fd attached
//!   (`SCM_RIGHTS`) on `$NOTIFY_SOCKET`, when a run starts;
//! * [`unpark`]: `FDSTOREREMOVE=1` + `FDNAME=…` when the run ends (systemd also drops a
//!   stored pipe by itself once its write end is closed: `POLLHUP`);
//! * [`take_from_env`]: at the next start systemd passes the stored fds as fds 3, 4, …
//!   with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (which must be narund's pid).
//!   They wait in a table until the re-adopted run asks for them ([`take_run`]) and
//!   forwarding continues where it stopped (lines written while no narund ran are read
//!   then, up to the pipe's buffer, 64 KiB by default).
//!
//! Without systemd (`NOTIFY_SOCKET` unset) there is no fd store: nothing is parked, the
//! pipes close when narund dies, and an app writing to stdout/stderr afterwards gets
//! `SIGPIPE` (it dies unless it ignores the signal; then the write fails with `EPIPE`).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Fds received from the previous narund through `LISTEN_FDS`, by `FDNAME`.
static RECEIVED: Mutex<BTreeMap<String, OwnedFd>> = Mutex::new(BTreeMap::new());

/// The fd-store name of one stream of one run.
pub fn fd_name(run_id: &str, stream: &str) -> String {
    format!("{run_id}-{stream}")
}

/// Take the fds systemd passed (`LISTEN_PID` = this process, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`) into the table for [`take_run`], mark them close-on-exec and
/// remove the three variables. Returns how many were taken.
///
/// # Safety
///
/// Changes the environment: call it before any other thread exists (at the top of
/// `main`, before the tokio runtime is built).
pub unsafe fn take_from_env() -> usize {
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
    let n = fds.len();
    let mut table = RECEIVED.lock().unwrap();
    for (fd, name) in fds {
        // SAFETY: systemd passed this fd to this process (LISTEN_PID matched); nothing
        // else in narund owns it.
        table.insert(name, unsafe { OwnedFd::from_raw_fd(fd) });
    }
    n
}

/// The received log pipes of `run_id`: `("stdout", fd)` and/or `("stderr", fd)`.
pub fn take_run(run_id: &str) -> Vec<(&'static str, OwnedFd)> {
    let mut table = RECEIVED.lock().unwrap();
    ["stdout", "stderr"]
        .into_iter()
        .filter_map(|s| table.remove(&fd_name(run_id, s)).map(|fd| (s, fd)))
        .collect()
}

/// Close received fds nobody adopted (their runs were not re-adopted); returns their names.
pub fn drop_unclaimed() -> Vec<String> {
    std::mem::take(&mut *RECEIVED.lock().unwrap())
        .into_keys()
        .collect()
}

/// Park `fd` in systemd's fd store under `name`. Without `NOTIFY_SOCKET` nothing happens
/// (`Ok(false)`).
pub fn park(name: &str, fd: BorrowedFd<'_>) -> io::Result<bool> {
    send(&format!("FDSTORE=1\nFDNAME={name}\n"), Some(fd))
}

/// Remove `name` from systemd's fd store (`Ok(false)` without `NOTIFY_SOCKET`).
pub fn unpark(name: &str) -> io::Result<bool> {
    send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), None)
}

/// One datagram to `$NOTIFY_SOCKET`, with `fd` as `SCM_RIGHTS` when given.
fn send(text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if bytes.first() == Some(&b'@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
        sock.connect_addr(&addr)?;
    } else {
        sock.connect(&path)?;
    }
    let Some(fd) = fd else {
        sock.send(text.as_bytes())?;
        return Ok(true);
    };
    let mut iov = libc::iovec {
        iov_base: text.as_ptr() as *mut libc::c_void,
        iov_len: text.len(),
    };
    // Room for one fd, aligned like cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable bytes, enough for one header with
    // one fd; the CMSG_* helpers stay within it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: msg and everything it points to live until sendmsg returns.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_run_and_stream() {
        assert_eq!(fd_name("abc", "stdout"), "abc-stdout");
    }
}
