//! The one inotify watch narund needs: `IN_MODIFY` on a cgroup's `cgroup.events`, so that
//! [`InstanceCgroup::wait_empty`](super::InstanceCgroup::wait_empty) waits without polling.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use tokio::io::unix::AsyncFd;

use crate::sys;

/// An inotify fd watching one file for `IN_MODIFY`, readable through tokio.
pub(super) struct Inotify {
    fd: AsyncFd<OwnedFd>,
}

impl Inotify {
    pub(super) fn watch(path: &Path) -> io::Result<Inotify> {
        let fd = sys::fs::inotify_watch(path, libc::IN_MODIFY)?;
        let fd = sys::fs::async_fd(fd)?;
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
                    match sys::fs::read(inner.get_ref().as_fd(), &mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(_) => got = true,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            return if got { Ok(()) } else { Err(err) };
                        }
                        Err(err) => return Err(err),
                    }
                }
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}
