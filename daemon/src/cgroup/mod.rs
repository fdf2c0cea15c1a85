//! cgroup v2 for app instances, through plain cgroupfs file operations.
//!
//! narund gives every app instance its own cgroup so that it can
//!
//! * **group** the instance with everything it forks (double-forked daemons, `setsid` children),
//! * **kill** the whole group atomically (`cgroup.kill`, Linux ≥ 5.14; a freeze + SIGKILL sweep before that),
//! * **wait** until the group is really empty (`cgroup.events` → `populated 0`, watched with inotify),
//! * **limit** memory, CPU and pids where the controllers are delegated to narund.
//!
//! This module works on both layouts found on devices: *unified* (cgroup2 at `/sys/fs/cgroup`) and *hybrid*
//! (v1 controllers under `/sys/fs/cgroup/<ctrl>`, cgroup2 at `/sys/fs/cgroup/unified`, usually without
//! controllers). On a hybrid host grouping, kill and wait work; limits are reported as *unenforced*.
//! See `docs/cgroups.md` for the design and why `cgroups-rs` is not used.
//!
//! **Owns** narund's part of the cgroup2 tree: finding the cgroup2 mount and choosing the instance
//! root, enabling controllers, and every instance cgroup (`narun-*` below the root) from creation
//! with limits to removal, including the clean-up of stale ones.
//!
//! **May call** nothing else in narund: only the kernel (cgroupfs files, `statfs(2)`, `kill(2)`,
//! inotify) and tokio. Instances ([`crate::instance`]) use it through [`Cgroups`]; the daemon
//! discovers the root ([`CgroupRoot::discover`]).
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | this overview, [`CgroupError`], the cgroupfs read/write helpers the files share |
//! | `layout.rs` | [`Layout`]: where cgroup2 is mounted, narund's own cgroup, [`default_root`] (pure parsers) |
//! | `root.rs` | [`CgroupRoot`]: locate (check, no changes), discover or create the root, enable controllers, list and clean up instances |
//! | `instance.rs` | [`InstanceCgroup`] and [`instance_name`]: create, place a child, freeze, kill, wait, remove |
//! | `limits.rs` | [`Limits`], [`Controllers`], [`MemoryEvents`], the `cgroup.events` parser |
//! | `inotify.rs` | the inotify watch on `cgroup.events` that [`InstanceCgroup::wait_empty`] waits on |
//! | `manager.rs` | the seam: [`Cgroups`] and [`RunCgroup`], implemented by [`CgroupRoot`] and [`InstanceCgroup`] (and in memory for unit tests) |
//!
//! # Typical use
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use narund::cgroup::{CgroupRoot, InstanceCgroup, Limits, instance_name};
//! use std::time::Duration;
//!
//! let root = CgroupRoot::discover(None)?;           // where instance cgroups live
//! let report = root.enable_controllers();           // try +memory +cpu +pids, report failures
//! for failure in &report.failures { eprintln!("cgroup: {failure}"); }
//! root.cleanup_stale(&Default::default(), Duration::from_secs(5)).await?; // leftovers of a previous run
//!
//! let name = instance_name("hello", 0, "4f2a9c1e-....");
//! let cg = InstanceCgroup::create(&root, &name, &Limits::from_spec(64, 0, 0.5))?;
//! println!("not enforced here: {:?}", cg.unenforced());
//!
//! let mut cmd = std::process::Command::new("/usr/bin/hello");
//! cg.place_command(&mut cmd)?;                      // child enters the cgroup before exec
//! let _child = cmd.spawn()?;
//!
//! cg.kill()?;                                       // stop: SIGKILL the whole group
//! cg.wait_empty(Duration::from_secs(5)).await?;
//! cg.remove(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

mod inotify;
mod instance;
mod layout;
mod limits;
mod manager;
mod root;

pub use instance::{INSTANCE_PREFIX, InstanceCgroup, enter_cgroup_in_pre_exec, instance_name};
pub use layout::{
    APPS_CGROUP, Cgroup2Mount, Layout, LayoutKind, RootOrigin, SUPERVISOR_LEAF, default_root,
    parse_mountinfo, parse_proc_cgroup,
};
pub use limits::{Controllers, Limits, MemoryEvents, parse_cgroup_events};
pub use manager::{Cgroups, RunCgroup};
pub use root::{CgroupRoot, ControllerReport, RootLocation};

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors from cgroup operations. I/O errors always carry the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error(
        "cgroup2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); mount it \
         (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`), or run apps without cgroups: \
         `[cgroup] enabled = false` in narund.toml"
    )]
    NotMounted,
    /// A configured path is not a directory on cgroup2.
    #[error(
        "{} is not a directory on the cgroup2 filesystem (mounted at {}); set `[cgroup] root` to a \
         path below it (absolute, or relative to it), or `[cgroup] enabled = false` to run apps \
         without cgroups",
        path.display(), mount.display()
    )]
    NotCgroup2 {
        /// The offending path.
        path: PathBuf,
        /// Where cgroup2 is mounted.
        mount: PathBuf,
    },
    /// `/proc/self/cgroup` has no `0::` line, or the path is outside the visible mount.
    #[error(
        "cannot locate narund's own cgroup2 directory ({reason}); set `[cgroup] root` in narund.toml"
    )]
    OwnCgroupUnknown {
        /// What went wrong.
        reason: String,
    },
    /// An instance cgroup name that narund would not create.
    #[error("invalid instance cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The instance cgroup already exists (a leftover; run [`CgroupRoot::cleanup_stale`] first).
    #[error(
        "cgroup {} already exists; remove stale instance cgroups (CgroupRoot::cleanup_stale) before creating it",
        .0.display()
    )]
    AlreadyExists(PathBuf),
    /// Processes remained in the cgroup after the timeout.
    #[error("cgroup {} still has processes after {timeout:?}", path.display())]
    Timeout {
        /// The cgroup directory.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        /// What narund tried to do (`"write"`, `"mkdir"`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (narund must run as root, or be given a delegated cgroup: systemd Delegate=yes)"
        }
        Some(libc::EBUSY) => {
            " (cgroup v2 \"no internal processes\" rule: a cgroup with processes cannot enable \
             controllers for children; run narund in a leaf such as <service>/supervisor)"
        }
        Some(libc::EROFS) => " (cgroupfs is mounted read-only, e.g. inside a container)",
        _ => "",
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    // cgroupfs files: never O_CREAT/O_TRUNC, one write() per value.
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(contents.as_bytes())
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err("read", path))
}
