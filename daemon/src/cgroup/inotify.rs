//! The one inotify watch narund needs: `IN_MODIFY` on a cgroup's `cgroup.events`, so that
//! [`InstanceCgroup::wait_empty`](super::InstanceCgroup::wait_empty) waits without polling.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// An inotify fd watching one file for `IN_MODIFY`, readable through tokio.
pub(super) struct Inotify {
    fd: AsyncFd<OwnedFd>,
}

impl Inotify {
    pub(super) fn watch(path: &Path) -> io::Result<Inotify> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: inotify_init1 returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open (same fd) until it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Inotify { fd })
    }

    /// Wait for at least one event and drain the queue.
    pub(super) async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|inner| {
                let mut buf = [0u8; 1024];
                let mut got = false;
                loop {
                    // SAFETY: buf is valid for buf.len() bytes.
                    let n = unsafe {
                        libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                    };
                    if n > 0 {
                        got = true;
                        continue;
                    }
                    let err = io::Error::last_os_error();
                    if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
                        return if got { Ok(()) } else { Err(err) };
                    }
                    return if n == 0 { Ok(()) } else { Err(err) };
                }
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}
