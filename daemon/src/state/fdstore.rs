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
//! * [`receive`]: at the next start systemd passes the stored fds as fds 3, 4, …
//!   with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (which must be narund's pid;
//!   `main` takes them with [`crate::sys::env::take_listen_fds`]). They wait in a table
//!   until the re-adopted run asks for them ([`take_run`]) and forwarding continues where
//!   it stopped (lines written while no narund ran are read then, up to the pipe's buffer,
//!   64 KiB by default).
//!
//! Without systemd (`NOTIFY_SOCKET` unset) there is no fd store: nothing is parked, the
//! pipes close when narund dies, and an app writing to stdout/stderr afterwards gets
//! `SIGPIPE` (it dies unless it ignores the signal; then the write fails with `EPIPE`).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// Fds received from the previous narund through `LISTEN_FDS`, by `FDNAME`.
static RECEIVED: Mutex<BTreeMap<String, OwnedFd>> = Mutex::new(BTreeMap::new());

/// The fd-store name of one stream of one run.
pub fn fd_name(run_id: &str, stream: &str) -> String {
    format!("{run_id}-{stream}")
}

/// Keep the fds systemd passed (taken from `LISTEN_FDS` by
/// [`take_listen_fds`](crate::sys::env::take_listen_fds), by `FDNAME`) in the table for
/// [`take_run`]. Returns how many were taken.
pub fn receive(fds: Vec<(String, OwnedFd)>) -> usize {
    let n = fds.len();
    RECEIVED.lock().unwrap().extend(fds);
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

/// How long one datagram to `$NOTIFY_SOCKET` may wait for room in the receiver's queue.
/// systemd reads its notify socket promptly, but the queue is short
/// (`net.unix.max_dgram_qlen`, 10 on some systems) and a burst of app starts parks two fds
/// each; a receiver that stops reading must not block narund's threads for ever.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Send the sd_notify `text` (lines `KEY=value`) to `$NOTIFY_SOCKET`, waiting at most
/// [`SEND_TIMEOUT`] for room (`Ok(false)` without `NOTIFY_SOCKET`). narund's own
/// `READY=1`/`WATCHDOG=1`/`STATUS=` go through here, not through the blocking
/// `sd_notify::notify`.
pub fn notify(text: &str) -> io::Result<bool> {
    send(text, None)
}

/// One datagram to `$NOTIFY_SOCKET`, with `fd` as `SCM_RIGHTS` when given; non-blocking,
/// with a bounded wait for room ([`SEND_TIMEOUT`]).
fn send(text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send_to(&path, text, fd).map(|()| true),
        None => Ok(false),
    }
}

fn send_to(path: &std::ffi::OsStr, text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    if bytes.first() == Some(&b'@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
        sock.connect_addr(&addr)?;
    } else {
        sock.connect(path)?;
    }
    sock.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + SEND_TIMEOUT;
    loop {
        match send_once(&sock, text, fd) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the service manager's notify socket stayed full for {} ms",
                            SEND_TIMEOUT.as_millis()
                        ),
                    ));
                }
                // A connected datagram socket becomes writable when the peer's queue
                // has room.
                let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
                let _ = crate::sys::socket::poll_writable(sock.as_fd(), ms);
            }
            r => return r,
        }
    }
}

fn send_once(
    sock: &std::os::unix::net::UnixDatagram,
    text: &str,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let Some(fd) = fd else {
        sock.send(text.as_bytes())?;
        return Ok(());
    };
    crate::sys::socket::send_with_fd(sock.as_fd(), text.as_bytes(), fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_that_stops_reading_costs_at_most_the_send_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let mut sent = 0;
        let started = std::time::Instant::now();
        let err = loop {
            match send_to(
                path.as_os_str(),
                "FDSTORE=1\nFDNAME=x\n",
                Some(std::os::fd::AsFd::as_fd(&w)),
            ) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the queue never filled");
        };
        let took = started.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(sent > 0);
        assert!(
            took >= SEND_TIMEOUT && took < SEND_TIMEOUT * 3,
            "{sent} datagrams, then gave up after {took:?}"
        );
        // Room again: the next send goes through at once.
        let mut buf = [0u8; 64];
        receiver.recv(&mut buf).unwrap();
        send_to(path.as_os_str(), "WATCHDOG=1\n", None).unwrap();
        drop(r);
    }

    #[test]
    fn names_are_run_and_stream() {
        assert_eq!(fd_name("abc", "stdout"), "abc-stdout");
    }
}
