//! Paths resolved beneath a directory fd, never through a symlink: what narund uses to write
//! into a directory an app owns (its work dir), where the app may swap any component for a
//! symlink at any moment.
//!
//! * [`open_dir_beneath`]: `openat2(dirfd, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)` (Linux 5.6); where the kernel answers `ENOSYS` (older kernels, or a
//!   seccomp filter), a walk of `openat(O_NOFOLLOW | O_DIRECTORY)` one component at a time.
//!   Both refuse `..`, absolute paths and every symlink (`ELOOP`/`EXDEV`).
//! * [`open_dir_nofollow`]: an absolute directory path whose last component must not be a
//!   symlink (the components above are narund's own, root-owned directories).
//! * `*at` wrappers on a directory fd for the final step: [`mkdir_at`], [`open_dir_at`],
//!   [`open_file_at`], [`create_excl_at`], [`rename_at`], [`unlink_at`], [`stat_at`], and
//!   [`fchown`]/[`fchmod`] on the opened fd.
//!
//! Names passed to the `*at` calls are single path components (no `/`); a name with a `/`
//! is refused with `EINVAL`.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A single path component as a C string (`EINVAL` for `/`, `.`, `..` or empty).
fn name_c(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    cstr(name)
}

fn fd_from(raw: libc::c_int) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// `openat2(dirfd, rel, how)` with `how = {flags, 0, resolve}`.
fn openat2(
    dirfd: BorrowedFd<'_>,
    rel: &CString,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is a plain C struct of integers: all-zero bytes are a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u32 as u64;
    how.mode = 0;
    how.resolve = resolve;
    // SAFETY: openat2 reads `how` (size passed) and the NUL-terminated path; both outlive the
    // call. The fd argument is widened to c_long like every variadic syscall argument.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::c_long::from(dirfd.as_raw_fd()),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    fd_from(raw as libc::c_int)
}

/// The directory `rel` below `dir`, opened (`O_RDONLY | O_DIRECTORY | O_CLOEXEC`) without
/// following any symlink and without leaving `dir` (see the module docs). `rel` must be a
/// relative path of normal components (`.` is skipped); an empty `rel` gives a new fd of
/// `dir` itself. Errors: `ELOOP`/`ENOTDIR` when a component is a symlink or not a directory,
/// `EXDEV` when the resolution would leave `dir`, `EINVAL` for `..` or an absolute path.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    let joined: Vec<u8> = parts.iter().fold(Vec::new(), |mut acc, p| {
        if !acc.is_empty() {
            acc.push(b'/');
        }
        acc.extend_from_slice(p.as_bytes());
        acc
    });
    let rel_c = if joined.is_empty() {
        CString::new(".").expect("no NUL")
    } else {
        cstr(OsStr::from_bytes(&joined))?
    };
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    match openat2(dir, &rel_c, DIR_FLAGS, resolve) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => open_dir_walk(dir, &parts),
        other => other,
    }
}

/// The `ENOSYS` fallback of [`open_dir_beneath`]: one `openat(O_NOFOLLOW | O_DIRECTORY)` per
/// component, each relative to the fd of the previous one.
pub fn open_dir_walk(dir: BorrowedFd<'_>, parts: &[&OsStr]) -> io::Result<OwnedFd> {
    let mut cur = open_dir_at(dir, OsStr::new("."))?;
    for p in parts {
        let next = open_dir_at(std::os::fd::AsFd::as_fd(&cur), p)?;
        cur = next;
    }
    Ok(cur)
}

/// `openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`: the directory
/// `name` (one component, or `.`), never a symlink and never a non-directory (`ENOTDIR`
/// for both on Linux, `ELOOP` on some kernels for a symlink).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c = if name == OsStr::new(".") {
        CString::new(".").expect("no NUL")
    } else {
        name_c(name)?
    };
    // SAFETY: valid dir fd and NUL-terminated name.
    fd_from(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), DIR_FLAGS) })
}

/// The directory at the absolute `path`, its last component not followed if it is a
/// symlink (`ELOOP`).
pub fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: NUL-terminated path; AT_FDCWD is always valid.
    fd_from(unsafe { libc::openat(libc::AT_FDCWD, c.as_ptr(), DIR_FLAGS) })
}

/// `mkdirat(dir, name, mode)` (mode is masked by the umask; set it with [`fchmod`]).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = name_c(name)?;
    // SAFETY: valid dir fd and NUL-terminated name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)`: an existing entry
/// to read, never through a symlink (`ELOOP`); `O_NONBLOCK` so a FIFO planted there does
/// not block the caller (check the type with [`File::metadata`] before reading).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let c = name_c(name)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: valid dir fd and NUL-terminated name.
    fd_from(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(File::from)
}

/// `openat(dir, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)`: a new
/// regular file; fails with `EEXIST` if anything (also a symlink) has that name.
pub fn create_excl_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    let c = name_c(name)?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid dir fd and NUL-terminated name; the mode is passed as the variadic
    // argument (promoted to c_uint).
    fd_from(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) })
        .map(File::from)
}

/// `renameat(from_dir, from, to_dir, to)`: atomically replaces `to` (a symlink named `to` is
/// replaced itself, never followed; a directory there fails).
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let (f, t) = (name_c(from)?, name_c(to)?);
    // SAFETY: valid dir fds and NUL-terminated names.
    if unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unlinkat(dir, name, 0)`: removes a non-directory entry (a symlink itself, not its target).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c = name_c(name)?;
    // SAFETY: valid dir fd and NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the `st_mode` file type bits of the entry
/// (`libc::S_IFLNK` for a symlink).
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::mode_t> {
    let c = name_c(name)?;
    // SAFETY: `libc::stat` is a plain C struct: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, NUL-terminated name, and a stat buffer we own.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: fchown on a valid, borrowed fd.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a valid, borrowed fd.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fstat(fd)`: (`st_mode` type bits, uid, gid, permission bits).
pub fn fstat_owner(
    fd: BorrowedFd<'_>,
) -> io::Result<(libc::mode_t, libc::uid_t, libc::gid_t, u32)> {
    // SAFETY: `libc::stat` is a plain C struct: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a valid fd into a stat buffer we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((
        st.st_mode & libc::S_IFMT,
        st.st_uid,
        st.st_gid,
        (st.st_mode & 0o7777) as u32,
    ))
}

/// `fstat(fd).st_nlink`: how many names the file has (a hard link an app made to a file
/// it does not own has more than one).
pub fn fstat_links(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: `libc::stat` is a plain C struct: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a valid fd into a stat buffer we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(u64::from(st.st_nlink))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn beneath_refuses_symlinks_and_dotdot_with_both_paths() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/evil")).unwrap();
        std::os::unix::fs::symlink("b", root.path().join("a/rel")).unwrap();
        let dir = open_dir_nofollow(root.path()).unwrap();
        let d = dir.as_fd();
        assert!(open_dir_beneath(d, Path::new("a/b")).is_ok());
        assert!(open_dir_beneath(d, Path::new("")).is_ok());
        for bad in ["a/evil", "a/rel", "a/evil/x", "../x", "/etc", "a/../a"] {
            assert!(open_dir_beneath(d, Path::new(bad)).is_err(), "{bad}");
        }
        // The fallback walk refuses the same.
        let walk = |p: &[&str]| {
            let parts: Vec<&OsStr> = p.iter().map(OsStr::new).collect();
            open_dir_walk(d, &parts)
        };
        assert!(walk(&["a", "b"]).is_ok());
        // O_NOFOLLOW | O_DIRECTORY on a symlink: ENOTDIR (or ELOOP), never the target.
        let e = walk(&["a", "evil"]).unwrap_err().raw_os_error();
        assert!(matches!(e, Some(libc::ENOTDIR | libc::ELOOP)), "{e:?}");
        assert!(walk(&["a", "rel"]).is_err());
        assert!(walk(&[".."]).is_err());
        std::os::unix::fs::symlink(outside.path(), root.path().join("top")).unwrap();
        assert!(open_dir_nofollow(&root.path().join("top")).is_err());
    }

    #[test]
    fn create_rename_and_stat_at() {
        let root = tempfile::tempdir().unwrap();
        let dir = open_dir_nofollow(root.path()).unwrap();
        let d = dir.as_fd();
        mkdir_at(d, OsStr::new("sub"), 0o700).unwrap();
        let sub = open_dir_at(d, OsStr::new("sub")).unwrap();
        let f = create_excl_at(sub.as_fd(), OsStr::new(".tmp"), 0o600).unwrap();
        fchmod(f.as_fd(), 0o640).unwrap();
        assert!(create_excl_at(sub.as_fd(), OsStr::new(".tmp"), 0o600).is_err());
        rename_at(
            sub.as_fd(),
            OsStr::new(".tmp"),
            sub.as_fd(),
            OsStr::new("f"),
        )
        .unwrap();
        assert_eq!(
            stat_at(sub.as_fd(), OsStr::new("f")).unwrap(),
            libc::S_IFREG
        );
        let (kind, _, _, mode) =
            fstat_owner(open_file_at(sub.as_fd(), OsStr::new("f")).unwrap().as_fd()).unwrap();
        assert_eq!((kind, mode), (libc::S_IFREG, 0o640));
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("sub/link")).unwrap();
        assert_eq!(
            stat_at(sub.as_fd(), OsStr::new("link")).unwrap(),
            libc::S_IFLNK
        );
        assert!(open_file_at(sub.as_fd(), OsStr::new("link")).is_err());
        assert!(create_excl_at(sub.as_fd(), OsStr::new("link"), 0o600).is_err());
        unlink_at(sub.as_fd(), OsStr::new("link")).unwrap();
        assert!(name_c(OsStr::new("a/b")).is_err());
        assert!(name_c(OsStr::new("..")).is_err());
    }
}
