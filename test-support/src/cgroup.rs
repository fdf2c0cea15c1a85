//! Clean-up of the cgroups a test made (directly, or through the narund it ran).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup2 is mounted on this machine (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`. A relative
/// `[cgroup] root` of narund is below it.
pub fn cgroup2_mount() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                let (mount, fs) = l.split_once(" - ")?;
                (fs.split_whitespace().next() == Some("cgroup2"))
                    .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))
                    .flatten()
            })
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/unified"))
}

/// Kill every instance cgroup below `root` (`cgroup.kill`), remove them and `root`. For
/// harness `Drop`s: also runs when a test panics, so no app or cgroup outlives a test.
/// An empty `root` (narund had none) is left alone.
pub fn kill_and_remove_cgroups(root: &Path) {
    if root.as_os_str().is_empty() {
        return;
    }
    if let Ok(dir) = std::fs::read_dir(root) {
        for e in dir
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
            // cgroup.kill is asynchronous: retry the rmdir while the processes exit.
            for _ in 0..100 {
                if std::fs::remove_dir(e.path()).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _ = std::fs::remove_dir(root);
}
