//! cgroup v2 for app instances, through plain cgroupfs file operations.
//!
//! narund gives every app instance its own cgroup so that it can
//!
//! * **group** the instance with everything it forks (double-forked daemons, `setsid` children),
//! * **kill** the whole group atomically (`cgroup.kill`, Linux ≥ 5.14; a freeze + SIGKILL sweep before that),
//! * **wait** until the group is really empty (`cgroup.events` → `populated 0`, watched with inotify),
//! * **limit** memory, CPU and pids where the controllers are delegated to narund.
//!
//! The module works on both layouts found on devices: *unified* (cgroup2 at `/sys/fs/cgroup`) and *hybrid*
//! (v1 controllers under `/sys/fs/cgroup/<ctrl>`, cgroup2 at `/sys/fs/cgroup/unified`, usually without
//! controllers). On a hybrid host grouping, kill and wait work; limits are reported as *unenforced*.
//! See `docs/cgroups.md` for the design and why `cgroups-rs` is not used.
//!
//! # Typical use (supervisor)
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

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// Every instance cgroup narund creates starts with this prefix. Stale clean-up only ever looks at
/// directories with this prefix, so foreign siblings (systemd's `supervisor` leaf, other tools) are safe.
pub const INSTANCE_PREFIX: &str = "narun-";

/// Name of the sub-cgroup narund creates to hold instances when it cannot use a parent cgroup (see
/// [`default_root`]). It deliberately does *not* start with [`INSTANCE_PREFIX`].
pub const APPS_CGROUP: &str = "narun.apps";

/// Leaf name systemd uses for the main process with `DelegateSubgroup=supervisor`; narund uses the same
/// name when it moves itself out of a configured root.
pub const SUPERVISOR_LEAF: &str = "supervisor";

/// `statfs().f_type` of a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Errors from cgroup operations. I/O errors always carry the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error(
        "cgroup2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); mount it \
         (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or disable cgroups in narund.toml"
    )]
    NotMounted,
    /// A configured path is not a directory on cgroup2.
    #[error(
        "{} is not a directory on the cgroup2 filesystem (mounted at {}); set cgroup_root to a path below it",
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
        "cannot locate narund's own cgroup2 directory ({reason}); set cgroup_root in narund.toml"
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

// ---------------------------------------------------------------------------------------------------------
// Layout detection (pure parsers + a thin reader)
// ---------------------------------------------------------------------------------------------------------

/// How cgroups are mounted on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// Only cgroup2 (`/sys/fs/cgroup` is cgroup2). Controllers can be delegated.
    Unified,
    /// v1 controller hierarchies plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`, often without
    /// controllers): grouping/kill/wait work, limits usually do not.
    Hybrid,
    /// No cgroup2 mount at all: narund runs apps without cgroups.
    None,
}

impl std::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayoutKind::Unified => "unified",
            LayoutKind::Hybrid => "hybrid",
            LayoutKind::None => "none",
        })
    }
}

/// The cgroup2 mount found in `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Mount point, e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`.
    pub mount_point: PathBuf,
    /// Path inside the hierarchy that is mounted there (`/` unless bind-mounted or namespaced).
    pub root: PathBuf,
}

/// What [`Layout::detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// unified / hybrid / none.
    pub kind: LayoutKind,
    /// The cgroup2 mount, if any.
    pub mount: Option<Cgroup2Mount>,
    /// narund's own cgroup2 path as printed in `/proc/self/cgroup` (`0::<path>`), e.g. `/` or
    /// `/system.slice/narund.service/supervisor`.
    pub own_cgroup: Option<PathBuf>,
}

/// Undo the octal escapes (`\040` = space, `\011`, `\012`, `\134`) the kernel uses in mountinfo fields.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Parse `/proc/self/mountinfo` text: returns the preferred cgroup2 mount and whether any cgroup v1
/// hierarchy is mounted too.
///
/// Preference when several cgroup2 mounts are visible: `/sys/fs/cgroup`, then `/sys/fs/cgroup/unified`,
/// then the first one listed.
pub fn parse_mountinfo(text: &str) -> (Option<Cgroup2Mount>, bool) {
    let mut v2: Vec<Cgroup2Mount> = Vec::new();
    let mut has_v1 = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // id parent maj:min root mount_point options [optional...] - fstype source super_options
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 5 || sep + 1 >= fields.len() {
            continue;
        }
        match fields[sep + 1] {
            "cgroup2" => v2.push(Cgroup2Mount {
                mount_point: unescape_mountinfo(fields[4]),
                root: unescape_mountinfo(fields[3]),
            }),
            "cgroup" => has_v1 = true,
            _ => {}
        }
    }
    let pick = v2
        .iter()
        .position(|m| m.mount_point == Path::new("/sys/fs/cgroup"))
        .or_else(|| {
            v2.iter()
                .position(|m| m.mount_point == Path::new("/sys/fs/cgroup/unified"))
        })
        .or(if v2.is_empty() { None } else { Some(0) });
    (pick.map(|i| v2.swap_remove(i)), has_v1)
}

/// Parse `/proc/self/cgroup` text: the cgroup2 path from the `0::<path>` line.
pub fn parse_proc_cgroup(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_end()))
}

impl Layout {
    /// Build a layout from the text of `/proc/self/mountinfo` and `/proc/self/cgroup` (pure; unit-tested).
    pub fn from_proc(mountinfo: &str, proc_cgroup: &str) -> Layout {
        let (mount, has_v1) = parse_mountinfo(mountinfo);
        let kind = match (&mount, has_v1) {
            (None, _) => LayoutKind::None,
            (Some(_), true) => LayoutKind::Hybrid,
            (Some(_), false) => LayoutKind::Unified,
        };
        Layout {
            kind,
            own_cgroup: mount.as_ref().and_then(|_| parse_proc_cgroup(proc_cgroup)),
            mount,
        }
    }

    /// Read `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Layout> {
        let mi = Path::new("/proc/self/mountinfo");
        let pc = Path::new("/proc/self/cgroup");
        let mountinfo = fs::read_to_string(mi).map_err(io_err("read", mi))?;
        // /proc/self/cgroup is absent on kernels without cgroups at all.
        let proc_cgroup = match fs::read_to_string(pc) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read", pc)(e)),
        };
        Ok(Layout::from_proc(&mountinfo, &proc_cgroup))
    }

    /// narund's own cgroup directory in the filesystem (mount point + own path relative to the mount's
    /// root), or why it cannot be located.
    pub fn own_dir(&self) -> Result<PathBuf> {
        let mount = self.mount.as_ref().ok_or(CgroupError::NotMounted)?;
        let own = self
            .own_cgroup
            .as_ref()
            .ok_or_else(|| CgroupError::OwnCgroupUnknown {
                reason: "no `0::` line in /proc/self/cgroup".into(),
            })?;
        let rel = own
            .strip_prefix(&mount.root)
            .map_err(|_| CgroupError::OwnCgroupUnknown {
                reason: format!(
                    "own cgroup {} is outside the mounted subtree {}",
                    own.display(),
                    mount.root.display()
                ),
            })?;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            // e.g. "/../.." when the cgroup namespace root is below our cgroup.
            return Err(CgroupError::OwnCgroupUnknown {
                reason: format!("own cgroup path {} is not below the mount", own.display()),
            });
        }
        Ok(mount.mount_point.join(rel))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Root (the parent of all instance cgroups)
// ---------------------------------------------------------------------------------------------------------

/// Why a root was chosen; it decides which cgroups narund may write `subtree_control` of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootOrigin {
    /// `cgroup_root` from narund.toml.
    Configured,
    /// narund sits in `<service>/supervisor` (systemd `DelegateSubgroup=supervisor`): root = `<service>`.
    SystemdSupervisor,
    /// narund sits in the cgroup2 root (no cgroup manager, e.g. busybox init): root = `<mount>/narun.apps`.
    /// narund may enable controllers in the mount root's `cgroup.subtree_control`.
    BelowMountRoot,
    /// narund sits in some other cgroup with processes: root = `<own>/narun.apps`. Grouping works, but the
    /// "no internal processes" rule prevents enabling controllers.
    BelowOwnCgroup,
}

/// Pure root choice when nothing is configured (see [`RootOrigin`] for the cases).
pub fn default_root(mount_point: &Path, own_dir: &Path) -> (PathBuf, RootOrigin) {
    if own_dir == mount_point {
        return (mount_point.join(APPS_CGROUP), RootOrigin::BelowMountRoot);
    }
    if own_dir.file_name() == Some(SUPERVISOR_LEAF.as_ref())
        && let Some(parent) = own_dir.parent()
        && parent.starts_with(mount_point)
    {
        return (parent.to_path_buf(), RootOrigin::SystemdSupervisor);
    }
    (own_dir.join(APPS_CGROUP), RootOrigin::BelowOwnCgroup)
}

/// The cgroup controllers narund can use for limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controllers {
    /// `memory.high`, `memory.max`, `memory.events`.
    pub memory: bool,
    /// `cpu.max`, `cpu.weight`.
    pub cpu: bool,
    /// `pids.max`.
    pub pids: bool,
}

impl Controllers {
    /// Parse a space-separated controller list (`cgroup.controllers` / `cgroup.subtree_control`).
    pub fn parse(list: &str) -> Controllers {
        let mut c = Controllers::default();
        for name in list.split_whitespace() {
            match name {
                "memory" => c.memory = true,
                "cpu" => c.cpu = true,
                "pids" => c.pids = true,
                _ => {}
            }
        }
        c
    }
}

/// Result of [`CgroupRoot::enable_controllers`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerReport {
    /// Controllers enabled for instance cgroups after the attempt.
    pub enabled: Controllers,
    /// One human-readable line per controller that could not be enabled.
    pub failures: Vec<String>,
}

/// The cgroup under which narund creates one child cgroup per app instance.
#[derive(Clone, Debug)]
pub struct CgroupRoot {
    path: PathBuf,
    mount_point: PathBuf,
    origin: RootOrigin,
    layout: LayoutKind,
}

fn is_cgroup2(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs writes into the zeroed struct we pass; c is a valid NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is c_long on glibc, c_uint/… elsewhere: widen through i64.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// `mkdir -p` below `base` (which must exist); only the missing tail is created.
fn mkdir_below(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                mkdir_below(parent)?;
            }
            match fs::create_dir(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(io_err("mkdir", path)(e)),
            }
        }
        Err(e) => Err(io_err("mkdir", path)(e)),
    }
}

fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    // cgroupfs files: never O_CREAT/O_TRUNC, one write() per value.
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(contents.as_bytes())
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err("read", path))
}

impl CgroupRoot {
    /// Find (and create if needed) the instance root.
    ///
    /// * `configured`: absolute path, or relative to the cgroup2 mount point (like Go's `cgroupParent`
    ///   relative to `/sys/fs/cgroup`). Created if missing. If narund itself lives *in* that directory, it
    ///   moves itself into `<root>/supervisor` (what systemd's `DelegateSubgroup=supervisor` does), so that
    ///   the root has no processes of its own and may enable controllers (systemd < 254, e.g. Debian 12).
    /// * `None`: chosen by [`default_root`] from narund's own cgroup.
    pub fn discover(configured: Option<&Path>) -> Result<CgroupRoot> {
        let layout = Layout::detect()?;
        let mount = layout.mount.clone().ok_or(CgroupError::NotMounted)?;
        let (path, origin) = match configured {
            Some(p) => (mount.mount_point.join(p), RootOrigin::Configured),
            None => default_root(&mount.mount_point, &layout.own_dir()?),
        };
        let escapes = path.components().any(|c| c == Component::ParentDir);
        if escapes || !path.starts_with(&mount.mount_point) {
            return Err(CgroupError::NotCgroup2 {
                path,
                mount: mount.mount_point,
            });
        }
        mkdir_below(&path)?;
        if !is_cgroup2(&path).map_err(io_err("statfs", &path))? {
            return Err(CgroupError::NotCgroup2 {
                path,
                mount: mount.mount_point,
            });
        }
        let root = CgroupRoot {
            path,
            mount_point: mount.mount_point,
            origin,
            layout: layout.kind,
        };
        if origin == RootOrigin::Configured && layout.own_dir().ok().as_deref() == Some(&root.path)
        {
            root.move_self_into_supervisor_leaf()?;
        }
        Ok(root)
    }

    fn move_self_into_supervisor_leaf(&self) -> Result<()> {
        let leaf = self.path.join(SUPERVISOR_LEAF);
        mkdir_below(&leaf)?;
        let procs = leaf.join("cgroup.procs");
        // Writing a pid to cgroup.procs moves the whole thread group.
        write_file(&procs, &std::process::id().to_string()).map_err(io_err("write", &procs))?;
        tracing::info!(leaf = %leaf.display(), "moved narund into a leaf cgroup below its configured root");
        Ok(())
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the cgroup2 filesystem is mounted (e.g. `/sys/fs/cgroup/unified` on a hybrid host).
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Why this root was chosen.
    pub fn origin(&self) -> RootOrigin {
        self.origin
    }

    /// unified / hybrid layout of the host.
    pub fn layout(&self) -> LayoutKind {
        self.layout
    }

    /// Controllers available to the root (its `cgroup.controllers`, i.e. delegated by the parent).
    pub fn available(&self) -> Result<Controllers> {
        Ok(Controllers::parse(&read_file(
            &self.path.join("cgroup.controllers"),
        )?))
    }

    /// Controllers usable for limits in instance cgroups (the root's `cgroup.subtree_control`).
    pub fn enforceable(&self) -> Result<Controllers> {
        Ok(Controllers::parse(&read_file(
            &self.path.join("cgroup.subtree_control"),
        )?))
    }

    /// Try to enable `memory`, `cpu` and `pids` for instance cgroups. Never fails: every controller that
    /// cannot be enabled is reported in [`ControllerReport::failures`] with the reason.
    ///
    /// For [`RootOrigin::BelowMountRoot`] the controllers are first enabled in the mount root (narund is
    /// the only manager there); otherwise narund only writes the root's own `cgroup.subtree_control`.
    pub fn enable_controllers(&self) -> ControllerReport {
        let mut report = ControllerReport::default();
        let mut targets = Vec::new();
        if self.origin == RootOrigin::BelowMountRoot
            && let Some(parent) = self.path.parent()
        {
            targets.push(parent.to_path_buf());
        }
        targets.push(self.path.clone());
        for ctrl in ["memory", "cpu", "pids"] {
            let mut ok = true;
            for dir in &targets {
                let available = dir.join("cgroup.controllers");
                match fs::read_to_string(&available) {
                    Ok(list) if list.split_whitespace().any(|c| c == ctrl) => {}
                    Ok(_) => {
                        report.failures.push(format!(
                            "{ctrl}: not delegated to {} (missing in cgroup.controllers; the parent \
                             cgroup or the cgroup manager must enable it{})",
                            dir.display(),
                            if self.layout == LayoutKind::Hybrid {
                                "; hybrid layout: the controller is bound to cgroup v1"
                            } else {
                                ""
                            }
                        ));
                        ok = false;
                        break;
                    }
                    Err(e) => {
                        report
                            .failures
                            .push(format!("{ctrl}: cannot read {}: {e}", available.display()));
                        ok = false;
                        break;
                    }
                }
                let control = dir.join("cgroup.subtree_control");
                if let Err(e) = write_file(&control, &format!("+{ctrl}")) {
                    report.failures.push(format!(
                        "{ctrl}: cannot enable in {}: {e}{}",
                        control.display(),
                        io_hint(&e)
                    ));
                    ok = false;
                    break;
                }
            }
            if ok {
                match ctrl {
                    "memory" => report.enabled.memory = true,
                    "cpu" => report.enabled.cpu = true,
                    _ => report.enabled.pids = true,
                }
            }
        }
        report
    }

    /// Names of the instance cgroups (prefix [`INSTANCE_PREFIX`]) currently below the root.
    pub fn list_instances(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io_err("list", &self.path))? {
            let entry = entry.map_err(io_err("list", &self.path))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let Some(name) = entry.file_name().to_str()
                && is_dir
                && name.starts_with(INSTANCE_PREFIX)
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Kill and remove every instance cgroup below the root that is not in `keep` (e.g. leftovers of a
    /// crashed narund). Only names with [`INSTANCE_PREFIX`] are considered; returns the removed names.
    pub async fn cleanup_stale(
        &self,
        keep: &HashSet<String>,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in self.list_instances()? {
            if keep.contains(&name) {
                continue;
            }
            let cg = InstanceCgroup::open(self, &name)?;
            tracing::info!(cgroup = %cg.path().display(), "removing stale instance cgroup");
            cg.remove(timeout).await?;
            removed.push(name);
        }
        Ok(removed)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Instance cgroups
// ---------------------------------------------------------------------------------------------------------

/// Build the cgroup name of an instance: `narun-<app>-<index>-<first 8 chars of run id>`.
///
/// Characters outside `[A-Za-z0-9_.-]` become `_`, so the result is always a valid single path component.
pub fn instance_name(app: &str, index: u32, run_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let run8: String = run_id.chars().take(8).collect();
    let mut name = format!("{INSTANCE_PREFIX}{}-{index}-{}", clean(app), clean(&run8));
    name.truncate(200);
    name
}

fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if !name.starts_with(INSTANCE_PREFIX) {
        return bad("must start with \"narun-\" (use cgroup::instance_name)");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.contains(['/', '\0', '\n']) {
        return bad("contains '/', NUL or newline");
    }
    Ok(())
}

/// Resource limits for one instance, in kernel units. `None` = not set (kernel default `max`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// `memory.high` in bytes: above it the kernel throttles and reclaims (soft limit).
    pub memory_high: Option<u64>,
    /// `memory.max` in bytes: hard limit, the OOM killer acts above it.
    pub memory_max: Option<u64>,
    /// `cpu.max` as a number of cores (`0.5` = half a core), written as `"<cores*100000> 100000"`.
    pub cpu_cores: Option<f64>,
    /// `cpu.weight` (1..=10000, default 100).
    pub cpu_weight: Option<u32>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

const MIB: u64 = 1024 * 1024;

impl Limits {
    /// Map the spec fields (Go `memoryMB`, `memoryMaxMB`, `cpuCores`; 0 = unset):
    ///
    /// * `memoryMB` → `memory.high` (Go wrote `memory.low`, a protection, which does not limit anything).
    /// * `memoryMaxMB` → `memory.max`; if it is 0 and `memoryMB` is set, `memory.max` = `memoryMB` (as Go).
    /// * `cpuCores` → `cpu.max`.
    pub fn from_spec(memory_mb: u64, memory_max_mb: u64, cpu_cores: f64) -> Limits {
        let high = (memory_mb > 0).then(|| memory_mb * MIB);
        let max = if memory_max_mb > 0 {
            Some(memory_max_mb * MIB)
        } else {
            high
        };
        Limits {
            memory_high: high,
            memory_max: max,
            cpu_cores: (cpu_cores > 0.0).then_some(cpu_cores),
            cpu_weight: None,
            pids_max: None,
        }
    }

    /// The `(file, controller, value)` writes these limits need.
    fn writes(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut w = Vec::new();
        if let Some(v) = self.memory_high {
            w.push(("memory.high", "memory", v.to_string()));
        }
        if let Some(v) = self.memory_max {
            w.push(("memory.max", "memory", v.to_string()));
        }
        if let Some(c) = self.cpu_cores {
            // The kernel rejects quotas below 1 ms.
            let quota = ((c * 100_000.0) as u64).max(1000);
            w.push(("cpu.max", "cpu", format!("{quota} 100000")));
        }
        if let Some(v) = self.cpu_weight {
            w.push(("cpu.weight", "cpu", v.clamp(1, 10_000).to_string()));
        }
        if let Some(v) = self.pids_max {
            w.push(("pids.max", "pids", v.to_string()));
        }
        w
    }
}

/// Counters from `memory.events` (all zero when the memory controller is not enabled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times usage went below `memory.low` protection under pressure.
    pub low: u64,
    /// Times `memory.high` throttled the group.
    pub high: u64,
    /// Times usage hit `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

impl MemoryEvents {
    /// Parse `memory.events` text (`key value` lines; unknown keys ignored).
    pub fn parse(text: &str) -> MemoryEvents {
        let mut ev = MemoryEvents::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "low" => ev.low = v,
                "high" => ev.high = v,
                "max" => ev.max = v,
                "oom" => ev.oom = v,
                "oom_kill" => ev.oom_kill = v,
                _ => {}
            }
        }
        ev
    }
}

/// Parse `cgroup.events` text: `(populated, frozen)`.
pub fn parse_cgroup_events(text: &str) -> (bool, bool) {
    let mut populated = false;
    let mut frozen = false;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => populated = v.trim() == "1",
            Some(("frozen", v)) => frozen = v.trim() == "1",
            _ => {}
        }
    }
    (populated, frozen)
}

/// One app instance's cgroup (a directory `narun-…` below the [`CgroupRoot`]).
#[derive(Debug)]
pub struct InstanceCgroup {
    path: PathBuf,
    name: String,
    unenforced: Vec<&'static str>,
}

impl InstanceCgroup {
    /// Create `<root>/<name>` and apply `limits`.
    ///
    /// A limit whose controller is not enabled in the root is *not* an error: its file name (e.g.
    /// `"memory.max"`) is listed in [`unenforced`](Self::unenforced) so status can report it. A failing
    /// write to an existing limit file is an error (and the new cgroup is removed again).
    pub fn create(root: &CgroupRoot, name: &str, limits: &Limits) -> Result<InstanceCgroup> {
        validate_name(name)?;
        let path = root.path.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::AlreadyExists(path));
            }
            Err(e) => return Err(io_err("mkdir", &path)(e)),
        }
        let mut cg = InstanceCgroup {
            path,
            name: name.to_owned(),
            unenforced: Vec::new(),
        };
        let writes = limits.writes();
        if writes.is_empty() {
            return Ok(cg);
        }
        let enabled = match root.enforceable() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir(&cg.path);
                return Err(e);
            }
        };
        for (file, ctrl, value) in writes {
            let on = match ctrl {
                "memory" => enabled.memory,
                "cpu" => enabled.cpu,
                _ => enabled.pids,
            };
            let target = cg.path.join(file);
            if !on || !target.exists() {
                cg.unenforced.push(file);
                continue;
            }
            if let Err(e) = write_file(&target, &value) {
                let _ = fs::remove_dir(&cg.path);
                return Err(io_err("write", &target)(e));
            }
        }
        Ok(cg)
    }

    /// Open an existing instance cgroup (re-attach after a narund restart, stale clean-up).
    pub fn open(root: &CgroupRoot, name: &str) -> Result<InstanceCgroup> {
        validate_name(name)?;
        let path = root.path.join(name);
        let meta = fs::metadata(&path).map_err(io_err("open", &path))?;
        if !meta.is_dir() {
            return Err(io_err("open", &path)(io::Error::from(
                io::ErrorKind::NotADirectory,
            )));
        }
        Ok(InstanceCgroup {
            path,
            name: name.to_owned(),
            unenforced: Vec::new(),
        })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory name (`narun-…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Limit files that were requested but could not be enforced (controller not available).
    pub fn unenforced(&self) -> &[&'static str] {
        &self.unenforced
    }

    /// Open `cgroup.procs` for writing (`O_CLOEXEC`), for [`enter_cgroup_in_pre_exec`].
    pub fn procs_fd(&self) -> Result<OwnedFd> {
        let procs = self.path.join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(io_err("open", &procs))?;
        Ok(OwnedFd::from(f))
    }

    /// Make `cmd`'s child enter this cgroup between fork and exec, so that the app and everything it
    /// forks are grouped from the first instruction.
    ///
    /// Register this **before** privilege dropping (`privileges::PrivilegePlan::install`): `pre_exec`
    /// closures run in registration order, and moving a process needs the parent's privileges. For a
    /// `tokio::process::Command` pass `cmd.as_std_mut()`.
    pub fn place_command(&self, cmd: &mut std::process::Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let fd = self.procs_fd()?;
        // SAFETY: the closure only calls `enter_cgroup_in_pre_exec`, which performs a single raw
        // `write(2)` on an fd owned by the closure: async-signal-safe, no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || enter_cgroup_in_pre_exec(fd.as_raw_fd()));
        }
        Ok(())
    }

    /// Read `cgroup.events`: is any process in this cgroup or below?
    pub fn is_populated(&self) -> Result<bool> {
        Ok(parse_cgroup_events(&read_file(&self.path.join("cgroup.events"))?).0)
    }

    /// Read `cgroup.events`: has the freezer completed?
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(parse_cgroup_events(&read_file(&self.path.join("cgroup.events"))?).1)
    }

    /// The pids in this cgroup (not in child cgroups), from `cgroup.procs`.
    pub fn pids(&self) -> Result<Vec<libc::pid_t>> {
        Ok(read_file(&self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Freeze every process (`cgroup.freeze` = 1). Completion is visible as `frozen 1` in
    /// `cgroup.events` ([`is_frozen`](Self::is_frozen)).
    pub fn freeze(&self) -> Result<()> {
        let p = self.path.join("cgroup.freeze");
        write_file(&p, "1").map_err(io_err("write", &p))
    }

    /// Thaw (`cgroup.freeze` = 0).
    pub fn thaw(&self) -> Result<()> {
        let p = self.path.join("cgroup.freeze");
        write_file(&p, "0").map_err(io_err("write", &p))
    }

    /// SIGKILL every process in the cgroup subtree. Uses `cgroup.kill` (atomic, handles concurrent
    /// forks; Linux ≥ 5.14) and falls back to [`kill_each`](Self::kill_each) when it does not exist.
    /// Processes die asynchronously: follow with [`wait_empty`](Self::wait_empty).
    pub fn kill(&self) -> Result<()> {
        let p = self.path.join("cgroup.kill");
        match write_file(&p, "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.kill_each(),
            Err(e) => Err(io_err("write", &p)(e)),
        }
    }

    /// Fallback kill for kernels without `cgroup.kill`: freeze (so nothing can fork), SIGKILL every pid
    /// listed in `cgroup.procs` of this cgroup and its children until no new pid shows up, then thaw.
    /// Fatal signals are delivered to frozen tasks, so they die while frozen.
    pub fn kill_each(&self) -> Result<()> {
        // cgroup.freeze exists since 5.2; without it we still sweep.
        let frozen = self.freeze().is_ok();
        let mut signalled: HashSet<libc::pid_t> = HashSet::new();
        let result = (|| {
            for _round in 0..1000 {
                let mut new = 0;
                for dir in self.subtree_dirs()? {
                    let procs = dir.join("cgroup.procs");
                    let text = match fs::read_to_string(&procs) {
                        Ok(t) => t,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("read", &procs)(e)),
                    };
                    for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
                        if signalled.insert(pid) {
                            new += 1;
                        }
                        // SAFETY: plain kill(2); ESRCH (already gone) is fine.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                if new == 0 {
                    return Ok(());
                }
            }
            Ok(())
        })();
        if frozen {
            let _ = self.thaw();
        }
        result
    }

    /// This cgroup and all descendant cgroup directories, children after parents.
    fn subtree_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut out = vec![self.path.clone()];
        let mut i = 0;
        while i < out.len() {
            let dir = out[i].clone();
            match fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            out.push(e.path());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("list", &dir)(e)),
            }
            i += 1;
        }
        Ok(out)
    }

    /// Wait until `cgroup.events` says `populated 0` (no process in the subtree), at most `timeout`.
    ///
    /// The kernel signals every change of `cgroup.events` as an fsnotify `IN_MODIFY` event, so this waits on
    /// an inotify fd registered with tokio (no polling). If inotify is unavailable it falls back to checking
    /// every 20 ms. A cgroup that no longer exists counts as empty.
    pub async fn wait_empty(&self, timeout: Duration) -> Result<()> {
        let events = self.path.join("cgroup.events");
        let deadline = Instant::now() + timeout;
        let watch = match Inotify::watch(&events) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(error = %e, "inotify on cgroup.events unavailable, polling");
                None
            }
        };
        loop {
            // Check after the watch is armed, so no transition can be missed.
            match fs::read_to_string(&events) {
                Ok(t) if !parse_cgroup_events(&t).0 => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("read", &events)(e)),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CgroupError::Timeout {
                    path: self.path.clone(),
                    timeout,
                });
            }
            match &watch {
                Some(w) => {
                    // Timeout elapsed → loop re-reads once more and then reports Timeout.
                    if let Ok(res) = tokio::time::timeout(remaining, w.changed()).await {
                        res.map_err(io_err("wait for", &events))?;
                    }
                }
                None => tokio::time::sleep(remaining.min(Duration::from_millis(20))).await,
            }
        }
    }

    /// Read `memory.events`; all zeros if the memory controller is not enabled for this cgroup.
    pub fn memory_events(&self) -> Result<MemoryEvents> {
        let p = self.path.join("memory.events");
        match fs::read_to_string(&p) {
            Ok(t) => Ok(MemoryEvents::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(MemoryEvents::default()),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Remove the cgroup. If processes are still inside (`EBUSY`), kill them, wait up to `timeout` for the
    /// cgroup to empty, then remove it. Child cgroups (created by the app, if delegated) are removed first.
    pub async fn remove(self, timeout: Duration) -> Result<()> {
        if self.try_rmdir_tree()? {
            return Ok(());
        }
        self.kill()?;
        self.wait_empty(timeout).await?;
        if self.try_rmdir_tree()? {
            Ok(())
        } else {
            // Populated 0 but rmdir still EBUSY: should not happen; report it with the path.
            Err(io_err("rmdir", &self.path)(io::Error::from_raw_os_error(
                libc::EBUSY,
            )))
        }
    }

    /// rmdir children (deepest first) then self. Ok(false) on EBUSY.
    fn try_rmdir_tree(&self) -> Result<bool> {
        let dirs = self.subtree_dirs()?;
        for dir in dirs.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                Err(e) => return Err(io_err("rmdir", dir)(e)),
            }
        }
        Ok(true)
    }
}

/// Move the calling process into the cgroup whose `cgroup.procs` is open as `fd`: writes `"0"` (= "the
/// writing process"). Meant for `pre_exec`: a single raw `write(2)`, async-signal-safe, no allocation.
pub fn enter_cgroup_in_pre_exec(fd: RawFd) -> io::Result<()> {
    let buf = b"0";
    // SAFETY: buf is valid for 1 byte; write(2) is async-signal-safe.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An inotify fd watching one file for `IN_MODIFY`, readable through tokio.
struct Inotify {
    fd: AsyncFd<OwnedFd>,
}

impl Inotify {
    fn watch(path: &Path) -> io::Result<Inotify> {
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
    async fn changed(&self) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
22 27 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED_MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const V1_ONLY: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";

    #[test]
    fn hybrid_layout() {
        let l = Layout::from_proc(HYBRID_MOUNTINFO, "4:memory:/x\n0::/\n");
        assert_eq!(l.kind, LayoutKind::Hybrid);
        assert_eq!(
            l.mount.as_ref().unwrap().mount_point,
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(l.own_dir().unwrap(), Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn unified_layout_with_systemd_service() {
        let l = Layout::from_proc(
            UNIFIED_MOUNTINFO,
            "0::/system.slice/narund.service/supervisor\n",
        );
        assert_eq!(l.kind, LayoutKind::Unified);
        let own = l.own_dir().unwrap();
        assert_eq!(
            own,
            Path::new("/sys/fs/cgroup/system.slice/narund.service/supervisor")
        );
        assert_eq!(
            default_root(Path::new("/sys/fs/cgroup"), &own),
            (
                PathBuf::from("/sys/fs/cgroup/system.slice/narund.service"),
                RootOrigin::SystemdSupervisor
            )
        );
    }

    #[test]
    fn no_cgroup2() {
        let l = Layout::from_proc(V1_ONLY, "1:cpu:/\n");
        assert_eq!(l.kind, LayoutKind::None);
        assert!(matches!(l.own_dir(), Err(CgroupError::NotMounted)));
    }

    #[test]
    fn mountinfo_escapes_and_preference() {
        let text = "\
50 1 0:40 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw
51 1 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        let (m, v1) = parse_mountinfo(text);
        assert!(!v1);
        assert_eq!(m.unwrap().mount_point, Path::new("/sys/fs/cgroup"));
        let (m, _) = parse_mountinfo("50 1 0:40 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n");
        assert_eq!(m.unwrap().mount_point, Path::new("/mnt/my cg"));
        // Optional fields (shared:N master:M) before the separator.
        let (m, _) = parse_mountinfo(
            "25 24 0:23 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(m.unwrap().mount_point, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn own_cgroup_outside_namespace_mount() {
        let l = Layout::from_proc(UNIFIED_MOUNTINFO, "0::/../../other\n");
        assert!(matches!(
            l.own_dir(),
            Err(CgroupError::OwnCgroupUnknown { .. })
        ));
        // Bind-mounted subtree: mount root /kubepods/x, own /kubepods/x/app.
        let l = Layout::from_proc(
            "25 24 0:23 /kubepods/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "0::/kubepods/x/app\n",
        );
        assert_eq!(l.own_dir().unwrap(), Path::new("/sys/fs/cgroup/app"));
    }

    #[test]
    fn root_choice() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            default_root(m, m),
            (
                PathBuf::from("/sys/fs/cgroup/narun.apps"),
                RootOrigin::BelowMountRoot
            )
        );
        assert_eq!(
            default_root(m, Path::new("/sys/fs/cgroup/user.slice/session-1.scope")),
            (
                PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope/narun.apps"),
                RootOrigin::BelowOwnCgroup
            )
        );
    }

    #[test]
    fn parse_files() {
        assert_eq!(
            parse_cgroup_events("populated 1\nfrozen 0\n"),
            (true, false)
        );
        assert_eq!(
            parse_cgroup_events("populated 0\nfrozen 1\n"),
            (false, true)
        );
        let ev = MemoryEvents::parse("low 0\nhigh 3\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(
            ev,
            MemoryEvents {
                low: 0,
                high: 3,
                max: 2,
                oom: 1,
                oom_kill: 1
            }
        );
        let c = Controllers::parse("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert!(c.memory && c.cpu && c.pids);
        assert_eq!(Controllers::parse("hugetlb\n"), Controllers::default());
    }

    #[test]
    fn names_and_limits() {
        assert_eq!(
            instance_name("hello", 2, "4f2a9c1e-77aa-4d"),
            "narun-hello-2-4f2a9c1e"
        );
        assert_eq!(instance_name("a/b c", 0, "x"), "narun-a_b_c-0-x");
        assert!(validate_name("supervisor").is_err());
        assert!(validate_name("narun-a/b").is_err());
        let l = Limits::from_spec(64, 0, 0.5);
        assert_eq!(l.memory_high, Some(64 * MIB));
        assert_eq!(l.memory_max, Some(64 * MIB));
        let w = l.writes();
        assert!(w.contains(&("cpu.max", "cpu", "50000 100000".to_string())));
        let l = Limits::from_spec(64, 128, 0.0);
        assert_eq!(l.memory_max, Some(128 * MIB));
        assert_eq!(l.cpu_cores, None);
        assert_eq!(Limits::from_spec(0, 0, 0.0).writes(), vec![]);
        let tiny = Limits {
            cpu_cores: Some(0.001),
            ..Limits::default()
        };
        assert_eq!(tiny.writes()[0].2, "1000 100000");
    }
}
