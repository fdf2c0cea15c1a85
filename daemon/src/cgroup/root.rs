//! The instance root, the parent of all instance cgroups: [`CgroupRoot::discover`] finds (and
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
