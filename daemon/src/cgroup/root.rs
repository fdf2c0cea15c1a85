//! The instance root, the parent of all instance cgroups: [`CgroupRoot::locate`] finds and checks it
//! without changing anything, [`CgroupRoot::discover`] finds (and
//! creates) it, enables the controllers, lists the instance cgroups below it and cleans up stale ones.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{
    CgroupError, Controllers, INSTANCE_PREFIX, InstanceCgroup, Layout, LayoutKind, Result,
    RootOrigin, SUPERVISOR_LEAF, default_root, io_err, io_hint, read_file, write_file,
};

/// `statfs().f_type` of a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

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
    pub(super) path: PathBuf,
    mount_point: PathBuf,
    origin: RootOrigin,
    layout: LayoutKind,
}

fn is_cgroup2(path: &Path) -> io::Result<bool> {
    Ok(crate::sys::fs::fs_type(path)? == CGROUP2_SUPER_MAGIC)
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

/// Where the instance root is, or will be: found by [`CgroupRoot::locate`] without changing
/// anything (for `narund --check-config`, and before narund locks the root);
/// [`RootLocation::create`] makes it the [`CgroupRoot`].
#[derive(Clone, Debug)]
pub struct RootLocation {
    path: PathBuf,
    mount_point: PathBuf,
    origin: RootOrigin,
    layout: Layout,
}

impl RootLocation {
    /// The root directory (it may not exist yet).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the cgroup2 filesystem is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Why this root was chosen.
    pub fn origin(&self) -> RootOrigin {
        self.origin
    }

    /// unified / hybrid layout of the host.
    pub fn layout(&self) -> LayoutKind {
        self.layout.kind
    }

    /// `mkdir -p` the root below the cgroup2 mount (only the missing tail is created), and
    /// check that it is a cgroup2 directory.
    pub fn mkdir(&self) -> Result<()> {
        mkdir_below(&self.path)?;
        if !is_cgroup2(&self.path).map_err(io_err("statfs", &self.path))? {
            return Err(CgroupError::NotCgroup2 {
                path: self.path.clone(),
                mount: self.mount_point.clone(),
            });
        }
        Ok(())
    }

    /// Create the root ([`mkdir`](Self::mkdir)) and, for a configured root that narund itself
    /// lives in, move narund into `<root>/supervisor` (see [`CgroupRoot::discover`]).
    pub fn create(self) -> Result<CgroupRoot> {
        self.mkdir()?;
        let own_dir = self.layout.own_dir().ok();
        let root = CgroupRoot {
            path: self.path,
            mount_point: self.mount_point,
            origin: self.origin,
            layout: self.layout.kind,
        };
        if root.origin == RootOrigin::Configured && own_dir.as_deref() == Some(&root.path) {
            root.move_self_into_supervisor_leaf()?;
        }
        Ok(root)
    }
}

impl CgroupRoot {
    /// Find (and create if needed) the instance root: [`locate`](Self::locate), then
    /// [`RootLocation::create`].
    ///
    /// * `configured`: absolute path, or relative to the cgroup2 mount point (like Go's `cgroupParent`
    ///   relative to `/sys/fs/cgroup`). Created if missing. If narund itself lives *in* that directory, it
    ///   moves itself into `<root>/supervisor` (what systemd's `DelegateSubgroup=supervisor` does), so that
    ///   the root has no processes of its own and may enable controllers (systemd < 254, e.g. Debian 12).
    /// * `None` (or an empty path): chosen by [`default_root`] from narund's own cgroup.
    pub fn discover(configured: Option<&Path>) -> Result<CgroupRoot> {
        Self::locate(configured)?.create()
    }

    /// Where the instance root is, checked but not created: it must be below the cgroup2
    /// mount ([`CgroupError::NotCgroup2`] otherwise, also for a `..` that leaves it), and the
    /// root, or the deepest existing directory above it (where narund would create it), must
    /// be a cgroup2 directory narund may write into ([`CgroupError::Io`] with op `write into`
    /// otherwise: a read-only cgroupfs, no permission). Changes nothing.
    pub fn locate(configured: Option<&Path>) -> Result<RootLocation> {
        let layout = Layout::detect()?;
        let mount = layout.mount.clone().ok_or(CgroupError::NotMounted)?;
        let configured = configured.filter(|p| !p.as_os_str().is_empty());
        let (path, origin) = match configured {
            Some(p) => (mount.mount_point.join(p), RootOrigin::Configured),
            None => default_root(&mount.mount_point, &layout.own_dir()?),
        };
        let not_cgroup2 = |path: &Path| CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
            mount: mount.mount_point.clone(),
        };
        let escapes = path.components().any(|c| c == Component::ParentDir);
        if escapes || !path.starts_with(&mount.mount_point) {
            return Err(not_cgroup2(&path));
        }
        // The root itself, or the directory narund would create it in.
        let mut existing = path.as_path();
        loop {
            match fs::metadata(existing) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => return Err(not_cgroup2(existing)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    existing = existing.parent().ok_or_else(|| not_cgroup2(&path))?;
                }
                Err(e) => return Err(io_err("stat", existing)(e)),
            }
        }
        if !is_cgroup2(existing).map_err(io_err("statfs", existing))? {
            return Err(not_cgroup2(existing));
        }
        crate::sys::fs::access_writable(existing).map_err(io_err("write into", existing))?;
        Ok(RootLocation {
            path,
            mount_point: mount.mount_point,
            origin,
            layout,
        })
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
