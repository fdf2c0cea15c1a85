//! Where cgroup2 is on this host: the pure parsers of `/proc/self/mountinfo` and
//! `/proc/self/cgroup`, the [`Layout`] (unified, hybrid, none) read from them, and the choice of the
//! instance root when none is configured ([`default_root`]).

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::{CgroupError, Result, io_err};

/// Name of the sub-cgroup narund creates to hold instances when it cannot use a parent cgroup (see
/// [`default_root`]). It deliberately does *not* start with [`INSTANCE_PREFIX`](super::INSTANCE_PREFIX).
pub const APPS_CGROUP: &str = "narun.apps";

/// Leaf name systemd uses for the main process with `DelegateSubgroup=supervisor`; narund uses the same
/// name when it moves itself out of a configured root.
pub const SUPERVISOR_LEAF: &str = "supervisor";

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
}
