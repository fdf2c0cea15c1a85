//! Files and fds: the filesystem type of a path (`statfs`), its size and free space (`statvfs`), whether an fd is a FIFO
//! (`fstat`), `O_NONBLOCK` (`fcntl`), an inotify watch and its raw `read`, registering an
//! owned fd with tokio's reactor, an exclusive `flock` and `access(W_OK)`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// `statfs(path).f_type`: the magic number of the filesystem `path` is on (e.g.
/// `CGROUP2_SUPER_MAGIC`), widened to `i64` on every target.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `libc::statfs` is a plain C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the zeroed struct we pass; c is a valid NUL-terminated string.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is c_long on glibc, c_uint/… elsewhere: widen through i64.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// `statvfs(path)`: (size, bytes available to unprivileged users) of the filesystem
/// `path` is on, widened to `u64` on every target (the fields are `c_ulong` on armv7).
pub fn space(path: &Path) -> io::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `libc::statvfs` is a plain C struct of integers: all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the zeroed struct we pass; c is a valid NUL-terminated string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    let (blocks, avail) = (st.f_blocks as u64, st.f_bavail as u64);
    Ok((blocks.saturating_mul(frsize), avail.saturating_mul(frsize)))
}

/// Is `fd` a FIFO (a pipe)? `false` also when `fstat` fails.
pub fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: `libc::stat` is a plain C struct: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a valid fd into a zeroed stat buffer.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0)
        && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
}

/// Set or clear `O_NONBLOCK` on `fd` (`fcntl(F_GETFL)`, then `F_SETFL` only if it changes).
/// The flag belongs to the open file description: every fd sharing it sees the change.
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on a valid, borrowed fd.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: fcntl(F_SETFL) with integer flags on a valid, borrowed fd.
    if new != flags && unsafe { libc::fcntl(raw, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new inotify fd (`IN_NONBLOCK | IN_CLOEXEC`) with one watch on `path` for the events in
/// `mask` (e.g. `libc::IN_MODIFY`). Read it with [`read`].
pub fn inotify_watch(path: &Path, mask: u32) -> io::Result<OwnedFd> {
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
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One `read(2)` of up to `buf.len()` bytes from `fd`: `Ok(0)` at end of file, `WouldBlock`
/// on a non-blocking fd with nothing to read.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Register `fd` with tokio's reactor (readable and writable interest). Panics outside a
/// tokio runtime. The [`AsyncFd`] owns the fd, so it stays open while it is registered.
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open (same fd) until it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` when this open file description now holds
/// the exclusive lock, `Ok(false)` when another one holds it. The lock lasts until every fd
/// of the description is closed (so open it `O_CLOEXEC`: children must not inherit it), and
/// the kernel releases it when its holder dies.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a valid, borrowed fd; no memory is passed.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// `access(path, W_OK)`: whether this process may create and change entries in (or write)
/// `path`. `EROFS` on a read-only mount, `EACCES` without the permission.
pub fn access_writable(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated string; access only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn pipes_are_fifos_and_toggle_nonblocking() {
        let (r, mut w) = std::io::pipe().unwrap();
        let file = tempfile::tempfile().unwrap();
        assert!(is_fifo(r.as_fd()));
        assert!(!is_fifo(file.as_fd()));
        let mut buf = [0u8; 8];
        set_nonblocking(r.as_fd(), true).unwrap();
        let err = read(r.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        w.write_all(b"hi").unwrap();
        assert_eq!(read(r.as_fd(), &mut buf).unwrap(), 2);
        set_nonblocking(r.as_fd(), false).unwrap();
        drop(w);
        assert_eq!(read(r.as_fd(), &mut buf).unwrap(), 0, "end of file");
    }

    #[test]
    fn an_inotify_watch_sees_a_write() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let fd = inotify_watch(file.path(), libc::IN_MODIFY).unwrap();
        let mut buf = [0u8; 1024];
        let err = read(fd.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "no event yet");
        file.as_file().write_all(b"x").unwrap();
        assert!(read(fd.as_fd(), &mut buf).unwrap() > 0);
        assert!(inotify_watch(Path::new("/nonexistent/x"), libc::IN_MODIFY).is_err());
    }

    #[test]
    fn a_second_description_cannot_take_the_lock_until_the_first_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::File::open(&path).unwrap();
        assert!(try_lock_exclusive(a.as_fd()).unwrap());
        assert!(
            try_lock_exclusive(a.as_fd()).unwrap(),
            "the holder may lock again"
        );
        assert!(!try_lock_exclusive(b.as_fd()).unwrap());
        drop(a);
        assert!(try_lock_exclusive(b.as_fd()).unwrap(), "released on close");
    }

    #[test]
    fn writable_dirs() {
        let dir = tempfile::tempdir().unwrap();
        access_writable(dir.path()).unwrap();
        let err = access_writable(Path::new("/nonexistent/x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn proc_is_procfs() {
        assert_eq!(
            fs_type(Path::new("/proc")).unwrap(),
            0x9fa0,
            "PROC_SUPER_MAGIC"
        );
        assert!(fs_type(Path::new("/nonexistent")).is_err());
    }
}
