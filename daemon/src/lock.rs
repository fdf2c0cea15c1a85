//! One narund per data dir and per cgroup root: the locks narund takes at start and holds for
//! its life ([`NodeLocks`]).
//!
//! Two narunds on one data dir would overwrite each other's local state and records; two on
//! one cgroup root would each remove the other's instance cgroups as stale (killing its
//! apps). So a narund that cannot take both locks refuses to start, naming the pid of the
//! narund that holds them:
//!
//! * **data dir**: `flock(LOCK_EX)` on `<data_dir>/narund.lock`, which holds the holder's pid
//!   (written right after locking);
//! * **cgroup root**: `flock(LOCK_EX)` on the root directory itself (an fd opened on the
//!   cgroupfs directory), so every narund that chooses that root sees the lock, whatever its
//!   data dir or runtime dir; the holder's pid comes from `/proc/locks`.
//!
//! The kernel releases an flock when the last fd of its open file description closes, also
//! when the holder dies: a lock file left by a dead narund blocks nothing. The fds are
//! `O_CLOEXEC`, so apps (which outlive narund with `apps.on_exit = "detach"`) never hold
//! them. `narund --check-config` only reports the holders ([`holder_of_data_dir`],
//! [`holder_of_cgroup_root`], read from `/proc/locks`, and for the data dir, where
//! `/proc/locks` names no one, from the pid in the file if that process has it open); it
//! takes no lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file in the data dir.
pub const LOCK_FILE: &str = "narund.lock";

/// Why narund cannot take its locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another narund holds the data dir.
    #[error(
        "another narund ({}) is running on data_dir {} (it holds the lock {}); stop it first, \
         or give this narund its own data_dir",
        pid_text(*pid), dir.display(), lock.display()
    )]
    DataDirInUse {
        dir: PathBuf,
        lock: PathBuf,
        pid: Option<i32>,
    },
    /// Another narund holds the cgroup root.
    #[error(
        "another narund ({}) uses the cgroup root {} (it holds a lock on the directory); two \
         narunds on one cgroup root remove each other's app cgroups: stop it first, or give \
         this narund its own `[cgroup] root`",
        pid_text(*pid), root.display()
    )]
    CgroupRootInUse { root: PathBuf, pid: Option<i32> },
    /// A file operation failed.
    #[error(
        "cannot {op} {}: {error}{}",
        path.display(),
        crate::preflight::permission_hint(path, error)
    )]
    Io {
        op: &'static str,
        path: PathBuf,
        /// Not a `source`: the message already says it, and a source would make
        /// `{:#}` print it twice.
        error: io::Error,
    },
}

fn pid_text(pid: Option<i32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".into(),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LockError + 'a {
    move |error| LockError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// The locks of a running narund; dropping them releases them.
#[derive(Debug)]
pub struct NodeLocks {
    _data_dir: File,
    _cgroup_root: Option<File>,
}

impl NodeLocks {
    /// Take the data dir lock (creating `data_dir` if needed), then the lock on
    /// `cgroup_root` (which must exist) when narund uses cgroups.
    pub fn acquire(data_dir: &Path, cgroup_root: Option<&Path>) -> Result<NodeLocks, LockError> {
        let data = lock_data_dir(data_dir)?;
        let cgroup = cgroup_root.map(lock_cgroup_root).transpose()?;
        Ok(NodeLocks {
            _data_dir: data,
            _cgroup_root: cgroup,
        })
    }
}

/// Take `<dir>/narund.lock` (creating `dir` and the file if needed) and write our pid into it.
pub fn lock_data_dir(dir: &Path) -> Result<File, LockError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err("open", &path))?;
    if !crate::sys::fs::try_lock_exclusive(file.as_fd()).map_err(io_err("lock", &path))? {
        // The holder writes its pid right after locking; in that instant, ask the kernel.
        let pid =
            pid_in(&file).or_else(|| file.metadata().ok().and_then(|m| flock_holder(&m, None)));
        return Err(LockError::DataDirInUse {
            dir: dir.to_path_buf(),
            lock: path,
            pid,
        });
    }
    file.set_len(0).map_err(io_err("write", &path))?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
        .map_err(io_err("write", &path))?;
    Ok(file)
}

/// Lock the cgroup root directory itself.
pub fn lock_cgroup_root(root: &Path) -> Result<File, LockError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .map_err(io_err("open", root))?;
    if !crate::sys::fs::try_lock_exclusive(dir.as_fd()).map_err(io_err("lock", root))? {
        return Err(LockError::CgroupRootInUse {
            root: root.to_path_buf(),
            pid: dir.metadata().ok().and_then(|m| flock_holder(&m, None)),
        });
    }
    Ok(dir)
}

/// The narund holding `<data_dir>/narund.lock`, if one does (from `/proc/locks`, else the pid
/// written in the file if that process holds the lock; takes no lock).
pub fn holder_of_data_dir(data_dir: &Path) -> Option<i32> {
    let (meta, pid) = {
        let file = File::open(data_dir.join(LOCK_FILE)).ok()?;
        (file.metadata().ok()?, pid_in(&file))
    }; // closed: our own fd must not count as the holder's
    flock_holder(&meta, pid)
}

/// The narund holding the lock on the cgroup root `root`, if one does (from `/proc/locks`).
pub fn holder_of_cgroup_root(root: &Path) -> Option<i32> {
    std::fs::metadata(root)
        .ok()
        .and_then(|m| flock_holder(&m, None))
}

/// The pid written in a lock file.
fn pid_in(file: &File) -> Option<i32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Who holds an flock on the file `meta` describes: from `/proc/locks`; where that names
/// no one (what it prints for a file can differ from `stat`'s device and inode on stacked and
/// network filesystems), the process `hint` if it has that file open ([`has_open`]).
fn flock_holder(meta: &std::fs::Metadata, hint: Option<i32>) -> Option<i32> {
    let dev = meta.dev();
    std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|text| flock_holder_in(&text, dev_major(dev), dev_minor(dev), meta.ino()))
        .or_else(|| hint.filter(|&pid| has_open(pid, meta)))
}

/// Whether process `pid` has the file `meta` describes open: `stat` through one of its
/// `/proc/<pid>/fd/<n>` links sees the same device and inode as ours, whatever the
/// filesystem prints in `/proc/locks`. For `narund.lock` this names the holder: narund opens
/// it only to lock it, keeps it open while it holds the lock, and only the holder writes its
/// pid into it (a stale pid, dead or reused, has no such fd).
fn has_open(pid: i32, meta: &std::fs::Metadata) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    })
}

/// `major(dev)` of a `stat` device number (glibc's encoding, the kernel's `new_encode_dev`).
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// `minor(dev)` of a `stat` device number.
fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// The pid holding an `FLOCK` on inode `ino` of device `major:minor` in the text of
/// `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 7991 00:26:2780 0 EOF`; waiters, marked `->`,
/// are skipped). The device there is the filesystem's, which can differ from `stat`'s (btrfs
/// subvolumes, overlayfs): without an exact match, the one `FLOCK` on that inode number.
pub fn flock_holder_in(text: &str, major: u64, minor: u64, ino: u64) -> Option<i32> {
    let mut by_ino = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let Ok(pid) = f[4].parse::<i32>() else {
            continue;
        };
        let mut id = f[5].split(':');
        let (Some(ma), Some(mi), Some(i)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let (Ok(ma), Ok(mi), Ok(i)) = (
            u64::from_str_radix(ma, 16),
            u64::from_str_radix(mi, 16),
            i.parse::<u64>(),
        ) else {
            continue;
        };
        if i != ino || pid <= 0 {
            continue;
        }
        if (ma, mi) == (major, minor) {
            return Some(pid);
        }
        by_ino.push(pid);
    }
    by_ino.dedup();
    match by_ino[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_said_once() {
        let err = io_err("create", Path::new("/nonexistent/narun"))(io::Error::from(
            io::ErrorKind::PermissionDenied,
        ));
        let text = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(text.matches("permission denied").count(), 1, "{text}");
    }

    const LOCKS: &str = "\
1: FLOCK  ADVISORY  WRITE 7991 00:26:2780 0 EOF
1: -> FLOCK  ADVISORY  WRITE 8000 00:26:2780 0 EOF
2: POSIX  ADVISORY  WRITE 123 08:01:2780 0 EOF
3: FLOCK  ADVISORY  WRITE 4242 fd:01:131 0 EOF
4: FLOCK  ADVISORY  WRITE 5151 00:2f:131 0 EOF
5: OFDLCK ADVISORY  READ  -1 00:05:99 0 EOF
";

    #[test]
    fn proc_locks_holders() {
        assert_eq!(flock_holder_in(LOCKS, 0, 0x26, 2780), Some(7991));
        // Exact device wins over the inode alone.
        assert_eq!(flock_holder_in(LOCKS, 0xfd, 1, 131), Some(4242));
        assert_eq!(flock_holder_in(LOCKS, 0, 0x2f, 131), Some(5151));
        // Device differs (btrfs subvolume): the one FLOCK on that inode.
        assert_eq!(flock_holder_in(LOCKS, 0, 0x30, 2780), Some(7991));
        // Two candidates, none exact: unknown rather than a wrong pid.
        assert_eq!(flock_holder_in(LOCKS, 0, 0x30, 131), None);
        // POSIX locks and OFD locks are not ours.
        assert_eq!(flock_holder_in(LOCKS, 0, 5, 99), None);
        assert_eq!(flock_holder_in("", 0, 0, 1), None);
        assert_eq!(
            flock_holder_in("garbage\n1: FLOCK x y z w\n", 0, 0, 1),
            None
        );
    }

    #[test]
    fn device_numbers() {
        // makedev(8, 1) and makedev(0x123, 0x45678) in glibc's encoding.
        let small = (8u64 << 8) | 1;
        assert_eq!((dev_major(small), dev_minor(small)), (8, 1));
        let (ma, mi) = (0x123u64, 0x45678u64);
        let big = (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & !0xff) << 12) | ((ma & !0xfff) << 32);
        assert_eq!((dev_major(big), dev_minor(big)), (ma, mi));
    }

    #[test]
    fn data_dir_lock_names_the_holder_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock_data_dir(&data).unwrap();
        let written = std::fs::read_to_string(data.join(LOCK_FILE)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        assert_eq!(holder_of_data_dir(&data), Some(std::process::id() as i32));
        let err = lock_data_dir(&data).unwrap_err();
        assert!(
            matches!(err, LockError::DataDirInUse { pid: Some(p), .. } if p == std::process::id() as i32),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("data_dir"), "{text}");
        drop(held);
        assert_eq!(holder_of_data_dir(&data), None);
        // A stale lock file (with a pid in it) blocks nothing.
        let again = lock_data_dir(&data).unwrap();
        drop(again);
    }

    #[test]
    fn a_holder_is_found_through_its_fds_where_proc_locks_names_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let held = lock_data_dir(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join(LOCK_FILE)).unwrap();
        assert!(has_open(me, &meta));
        assert!(!has_open(i32::MAX, &meta), "no such process");
        drop(held);
        assert!(!has_open(me, &meta), "closed");
    }

    #[test]
    fn a_stale_pid_in_the_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "999999\n").unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()), "rewritten");
    }

    #[test]
    fn directory_lock_holder_comes_from_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_cgroup_root(dir.path()).unwrap();
        let err = lock_cgroup_root(dir.path()).unwrap_err();
        let me = std::process::id() as i32;
        assert!(
            matches!(err, LockError::CgroupRootInUse { pid: Some(p), .. } if p == me),
            "{err}"
        );
        assert_eq!(holder_of_cgroup_root(dir.path()), Some(me));
        drop(held);
        assert_eq!(holder_of_cgroup_root(dir.path()), None);
        assert!(lock_cgroup_root(&dir.path().join("missing")).is_err());
    }
}
