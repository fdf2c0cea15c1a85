//! One start of an instance: the node's capability and open files policy, the verified binary (digest,
//! then ELF header: an executable of this node's machine, class and byte order), the user
//! (a named one, or the app's own dynamic user), the work dir ([`prepare_work_dir`]: 0700,
//! owned by the app), secrets and mounted files, the sd_notify socket, the cgroup with the
//! spec's limits, the exact environment, and the spawn (with the app's `RLIMIT_NOFILE`,
//! [`crate::nofile`]). Anything that fails is a [`StartFailure`] with the reason
//! published in `failed`; whatever was created for the start is removed again.

use super::notify::NotifySocket;
use super::process::{Proc, SpawnError, SpawnRequest};
use super::task::{Running, StartFailure, Task};
use super::{DEFAULT_PATH, FETCH_TIMEOUT};
use crate::cgroup::{self, Limits, RunCgroup};
use crate::fetch::{CachedBinary, FetchError, Sha256Digest};
use crate::privileges::{AppIdentity, PrivilegePlan};
use narun_wire::names;
use narun_wire::status::Reason;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

impl Task {
    /// Fetch, prepare and spawn one run.
    pub(super) async fn start(&mut self) -> Result<Running, StartFailure> {
        // The node's capability policy first: a refused spec downloads nothing.
        let live = self.host.live();
        let caps = crate::privileges::grant_capabilities(
            &self.spec.capabilities,
            &live.allowed_capabilities,
            live.allow_root,
        )
        .map_err(|e| StartFailure::new(Reason::Capability, e.to_string()))?;
        // The open files limit likewise (crate::nofile): soft 1024, hard from the spec or
        // the node, never above narund's own.
        let narund_hard = crate::sys::rlimit::nofile().map_or(u64::MAX, |(_, hard)| hard);
        let nofile = crate::nofile::for_app(self.spec.nofile_max, live.nofile_max, narund_hard)
            .map_err(|e| StartFailure::new(Reason::Rlimit, e))?;
        drop(live);

        let bin = self.binary().await?;
        self.check_executable(&bin)?;
        let digest = bin.digest.to_hex();
        self.status.send_modify(|s| s.digest = digest.clone());
        self.host.local.record_digest(&self.spec, &digest);
        self.pinned = Some(bin.digest);

        let identity = self
            .identity()
            .map_err(|e| StartFailure::new(Reason::User, e.to_string()))?;
        if identity.is_none() {
            tracing::warn!(instance = %self.instance_id, "narund is not root: the app runs as narund's user, with narund's capabilities");
        }

        let work = self.work_dir();
        let owner = identity.as_ref().map(|id| (id.uid, id.gid));
        prepare_work_dir(&work, owner)
            .map_err(|e| StartFailure::new(Reason::Spawn, format!("work dir: {e}")))?;
        // Mounted files from narun-files, then secrets from narun-secrets (crate::fetch::inputs).
        let input_err =
            |e: crate::fetch::inputs::InputError| StartFailure::new(e.reason(), e.to_string());
        let inputs = &self.host.inputs;
        inputs
            .place_mounts(&self.spec, &work, owner)
            .await
            .map_err(input_err)?;
        self.secret_env = inputs.secret_env(&self.spec).await.map_err(input_err)?;
        // The app's own NATS identity, never narund's (super::nats_identity).
        let (nats_env, nats_creds) = super::nats_identity::prepare(
            &self.host.settings,
            &self.spec.name,
            &self.instance_id,
            &self.run_id,
            owner,
            &super::nats_identity::callees(&self.spec),
        )
        .map_err(|e| StartFailure::new(Reason::Spawn, e.to_string()))?;
        self.nats_env = nats_env;

        // sd_notify: one socket per run (see super::notify), bound before the cgroup so a
        // failure leaves nothing behind.
        let watchdog = self.spec.watchdog_sec.unwrap_or(0);
        self.notify_env.clear();
        let notify = if self.spec.notify || watchdog > 0 {
            let dir = self.host.settings.runtime_dir.join("instances");
            let notify_err = |e: &dyn std::fmt::Display| {
                StartFailure::new(Reason::Notify, format!("sd_notify socket: {e}"))
            };
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                })
                .map_err(|e| notify_err(&format!("creating {}: {e}", dir.display())))?;
            let path = dir
                .join(crate::fetch::sanitize(&self.instance_id))
                .join(format!("notify-{}", &self.run_id[..8]));
            let sock = NotifySocket::bind(&path, owner).map_err(|e| notify_err(&e))?;
            self.notify_env
                .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
            if watchdog > 0 {
                self.notify_env.push((
                    "WATCHDOG_USEC".into(),
                    watchdog.saturating_mul(1_000_000).to_string(),
                ));
            }
            Some(sock)
        } else {
            None
        };

        let cgroup = self.create_cgroup()?;

        // ETXTBSY: a fork of another thread (any spawn in narund) may still hold the write fd
        // of a binary that was just downloaded, until its exec closes it (the classic
        // fork/exec race, Go issue 22315). It clears within milliseconds: retry.
        let spawn = || {
            self.spawn(
                &bin,
                &work,
                identity.as_ref(),
                &caps,
                nofile,
                cgroup.as_deref(),
            )
        };
        let mut result = spawn();
        for _ in 0..20 {
            match &result {
                Err(f) if f.text_busy => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    result = spawn();
                }
                _ => break,
            }
        }
        // The plaintext now lives in the child's environment only.
        self.secret_env = Vec::new();
        match result {
            Ok((proc, logs)) => {
                let pid = proc.pid();
                let oom_before = cgroup.as_ref().map(|c| c.oom_kills()).unwrap_or(0);
                let membership = self.membership(pid, cgroup.as_deref());
                Ok(Running {
                    proc,
                    following: false,
                    pgid: pid,
                    cgroup_name: cgroup
                        .as_ref()
                        .map(|c| c.name().to_string())
                        .unwrap_or_default(),
                    cgroup,
                    logs,
                    oom_before,
                    notify,
                    membership,
                    _nats_creds: nats_creds,
                })
            }
            Err(f) => {
                if let Some(cg) = cgroup {
                    let _ = cg.remove(Duration::from_secs(5)).await;
                }
                Err(f)
            }
        }
    }

    /// This run's cgroup with the spec's limits (`None` without cgroups), and the limits
    /// nothing enforces published in the status (`unenforced`).
    pub(super) fn create_cgroup(&self) -> Result<Option<Box<dyn RunCgroup>>, StartFailure> {
        let mut limits = Limits::from_spec(
            self.spec.memory_mb,
            self.spec.memory_max_mb,
            self.spec.cpu_cores,
        );
        limits.pids_max = self.spec.pids_max;
        limits.cpu_weight = self.spec.cpu_weight.map(|w| w.min(10_000) as u32);
        let cgroup = match &self.host.cgroups {
            Some(cgroups) => {
                let name = cgroup::instance_name(&self.spec.name, self.index, &self.run_id);
                Some(
                    cgroups
                        .create(&name, &limits)
                        .map_err(|e| StartFailure::new(Reason::Cgroup, e.to_string()))?,
                )
            }
            None => None,
        };
        let unenforced: Vec<String> = match &cgroup {
            Some(cg) => cg.unenforced(),
            None if limits != Limits::default() => vec!["cgroup".into()],
            None => vec![],
        };
        self.status.send_modify(|s| s.unenforced = unenforced);
        Ok(cgroup)
    }

    /// The verified binary: from the object store when connected (the cache avoids the
    /// download), otherwise the cached file of the digest this spec last ran.
    pub(super) async fn binary(&mut self) -> Result<CachedBinary, StartFailure> {
        let store = self.host.store.lock().unwrap().clone();
        let (os, arch) = (names::go_os(), names::go_arch());
        // A restart of the same spec reuses the binary of the first start.
        let mut unreachable = String::from("NATS is not reachable");
        // The digest the spec names for this platform (`binaryDigests`; validated, so it
        // parses), which a fetched object must have.
        let want = match self.spec.binary_digest(os, arch) {
            Some(d) => Some(Sha256Digest::from_nats(d).ok_or_else(|| {
                StartFailure::new(
                    Reason::Verify,
                    format!(
                        "binaryDigests[{:?}] = {d:?} is not a SHA-256 digest",
                        self.spec.binary_object_name(os, arch)
                    ),
                )
            })?),
            None => None,
        };
        if self.pinned.is_none()
            && let Some(store) = store
        {
            let _one = self.host.fetch_lock.lock().await;
            let fetched = tokio::time::timeout(
                FETCH_TIMEOUT,
                self.host.cache.fetch_expecting(
                    &store,
                    &self.spec.name,
                    &self.spec.tag,
                    os,
                    arch,
                    want.as_ref(),
                ),
            )
            .await;
            match fetched {
                Ok(Ok(b)) => {
                    // Verified by the cache just now: a restart need not hash it again.
                    self.verified = FileStamp::of(&b.path).map(|st| (b.digest, st));
                    return Ok(b);
                }
                Ok(Err(
                    e @ (FetchError::Mismatch { .. }
                    | FetchError::BadDigest { .. }
                    | FetchError::SpecDigest { .. }),
                )) => {
                    return Err(StartFailure::new(Reason::Verify, e.to_string()));
                }
                Ok(Err(e @ (FetchError::Signature { .. } | FetchError::SignedDigest { .. }))) => {
                    return Err(StartFailure::new(Reason::Signature, e.to_string()));
                }
                Ok(Err(
                    FetchError::Nats { message, .. } | FetchError::Unreachable { message, .. },
                )) => {
                    tracing::warn!(instance = %self.instance_id, %message, "object store request failed, trying the local cache");
                    unreachable = format!("the object store request failed: {message}");
                }
                Ok(Err(e)) => return Err(StartFailure::new(Reason::Fetch, e.to_string())),
                Err(_) => {
                    tracing::warn!(instance = %self.instance_id, "binary download timed out, trying the local cache");
                    unreachable = format!("the download took longer than {FETCH_TIMEOUT:?}");
                }
            }
        }
        let Some(digest) = self.pinned.or(want).or_else(|| {
            self.host
                .local
                .digest_of(&self.spec)
                .and_then(|h| Sha256Digest::from_hex(&h))
        }) else {
            return Err(StartFailure::new(
                Reason::Fetch,
                format!(
                    "binary {} is not cached and {unreachable}; it is fetched again when the spec is applied again",
                    self.spec.binary_object_name(os, arch)
                ),
            ));
        };
        let path = self.host.cache.path_for(&self.spec.name, &digest);
        // A restart of the same file: verified already, unless it changed since (its
        // inode, size, mtime or ctime; ctime cannot be set back by anyone).
        let stamp = FileStamp::of(&path);
        if let Some((d, st)) = &self.verified
            && *d == digest
            && stamp.as_ref() == Some(st)
        {
            return Ok(CachedBinary {
                path,
                digest,
                downloaded: false,
            });
        }
        match self.host.uring.hash_file(&path).await {
            Ok(h) if h == digest.0 => {
                // The stamp from before the hash: a change while hashing changes the ctime.
                self.verified = stamp.map(|st| (digest, st));
                Ok(CachedBinary {
                    path,
                    digest,
                    downloaded: false,
                })
            }
            Ok(actual) => Err(StartFailure::new(
                Reason::Verify,
                format!(
                    "cached binary {} of object {} hashes to {}, expected {digest}; it is downloaded again when the object store answers",
                    path.display(),
                    self.spec.binary_object_name(os, arch),
                    Sha256Digest(actual),
                ),
            )),
            Err(e) => Err(StartFailure::new(
                Reason::Fetch,
                format!("cached binary {}: {e}", path.display()),
            )),
        }
    }

    /// The binary must be an ELF executable of this node's machine, class and byte order
    /// (`narun_wire::elf`), or, with `[apps] allow_scripts`, a `#!` script; otherwise the
    /// start fails with reason `exec-format`. (The `execve` itself never falls back to a
    /// shell either: `super::process`.)
    pub(super) fn check_executable(&self, bin: &CachedBinary) -> Result<(), StartFailure> {
        use std::io::Read;
        let object = self
            .spec
            .binary_object_name(names::go_os(), names::go_arch());
        let mut header = Vec::with_capacity(64);
        std::fs::File::open(&bin.path)
            .and_then(|f| f.take(64).read_to_end(&mut header))
            .map_err(|e| {
                StartFailure::new(
                    Reason::Fetch,
                    format!("reading cached binary {}: {e}", bin.path.display()),
                )
            })?;
        if self.host.settings.allow_scripts && header.starts_with(b"#!") {
            return Ok(());
        }
        let scripts = if header.starts_with(b"#!") {
            "; `#!` scripts run only on nodes with [apps] allow_scripts = true"
        } else {
            ""
        };
        narun_wire::elf::inspect(&header)
            .and_then(|info| info.check_runs_here())
            .map_err(|e| {
                StartFailure::new(
                    Reason::ExecFormat,
                    format!(
                        "binary {object} (digest {}) is refused: {e}{scripts}; narund runs only ELF \
                         executables of this node ({}); deploy one built for it with narunctl",
                        bin.digest.to_hex(),
                        narun_wire::elf::ElfInfo::HOST
                    ),
                )
            })
    }

    fn spawn(
        &self,
        bin: &CachedBinary,
        work: &Path,
        identity: Option<&AppIdentity>,
        caps: &[caps::Capability],
        (nofile_soft, nofile_hard): (u64, u64),
        cgroup: Option<&dyn RunCgroup>,
    ) -> Result<(Box<dyn Proc>, crate::logs::RunLogs), StartFailure> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StartFailure::new(Reason::Spawn, format!("{what}: {e}"))
        };
        // Exactly this environment (nothing of narund's).
        let mut env: BTreeMap<String, String> =
            self.environment(identity, work).into_iter().collect();
        env.extend(self.notify_env.iter().cloned());
        let (out_r, out_w) = std::io::pipe().map_err(|e| fail("creating a pipe", &e))?;
        let (err_r, err_w) = std::io::pipe().map_err(|e| fail("creating a pipe", &e))?;
        let plan = match identity {
            Some(id) => Some(PrivilegePlan::new(id, caps).map_err(|e| {
                let reason = match e {
                    crate::privileges::PrivilegeError::CapabilityUnavailable { .. } => {
                        Reason::Capability
                    }
                    _ => Reason::User,
                };
                StartFailure::new(reason, e.to_string())
            })?),
            None => None,
        };
        // The write ends go with the request: dropped after the spawn, so the readers see
        // EOF when the app exits.
        let proc = self
            .host
            .processes
            .spawn(SpawnRequest {
                program: bin.path.clone(),
                args: self.spec.args.clone(),
                env: env.into_iter().collect(),
                cwd: work.to_path_buf(),
                stdin: None,
                stdout: OwnedFd::from(out_w),
                stderr: OwnedFd::from(err_w),
                // Only lowers narund's limits: needs no privilege.
                nofile: (nofile_soft, nofile_hard),
                cgroup,
                privileges: plan,
            })
            .map_err(|e| match e {
                SpawnError::Place(e) => fail("placing into the cgroup", &e),
                SpawnError::Spawn(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                    StartFailure::new(
                        Reason::ExecFormat,
                        format!(
                            "the kernel refused to execute {} ({e}): it is not a valid executable \
                             for this node; narund never runs a binary through a shell",
                            bin.path.display()
                        ),
                    )
                }
                SpawnError::Spawn(e) => StartFailure {
                    text_busy: e.raw_os_error() == Some(libc::ETXTBSY),
                    ..fail(&format!("starting {}", bin.path.display()), &e)
                },
            })?;
        // Under systemd: a copy of each read end waits in the fd store, so the app keeps
        // its pipes if narund dies (crate::state::fdstore).
        for (stream, fd) in [
            ("stdout", std::os::fd::AsFd::as_fd(&out_r)),
            ("stderr", std::os::fd::AsFd::as_fd(&err_r)),
        ] {
            let name = crate::state::fdstore::fd_name(&self.run_id, stream);
            if let Err(e) = crate::state::fdstore::park(&name, fd) {
                tracing::warn!(instance = %self.instance_id, error = %e, "cannot park the log pipe in systemd's fd store; the app loses its output pipe if narund dies");
            }
        }
        let mut logs = crate::logs::RunLogs::new();
        logs.attach(&self.sink, "stdout", OwnedFd::from(out_r));
        logs.attach(&self.sink, "stderr", OwnedFd::from(err_r));
        Ok((proc, logs))
    }

    /// The exact environment of the app: nothing is inherited from narund.
    pub(super) fn environment(
        &self,
        identity: Option<&AppIdentity>,
        work: &Path,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        if let Some(id) = identity {
            env.insert("USER".into(), id.user.clone());
            env.insert("LOGNAME".into(), id.user.clone());
            env.insert("HOME".into(), id.home.display().to_string());
        }
        for e in &self.spec.env {
            if e.value_from_secret.is_empty() {
                env.insert(e.name.clone(), e.value.clone());
            } else if let Some((_, v)) = self.secret_env.iter().find(|(k, _)| *k == e.name) {
                env.insert(e.name.clone(), v.clone());
            }
        }
        use narun_wire::names::env as n;
        for (k, v) in [
            (n::APP_NAME, self.spec.name.clone()),
            (n::INSTANCE_ID, self.instance_id.clone()),
            (n::RUN_ID, self.run_id.clone()),
            (n::REPLICA_INDEX, self.index.to_string()),
            (n::NODE_ID, self.host.settings.node_id.clone()),
            (n::NODE_OS, names::go_os().into()),
            (n::NODE_ARCH, names::go_arch().into()),
            (n::INSTANCE_ROOT, work.display().to_string()),
        ] {
            env.insert(k.into(), v);
        }
        for (k, v) in &self.nats_env {
            env.insert(k.clone(), v.clone());
        }
        env.into_iter().collect()
    }
}

/// What tells a file from a changed one without reading it: device, inode, size, and the
/// modification and change times in ns (`ctime` moves with any write, `chmod`, rename
/// over it; user space cannot set it). A cached binary with the stamp it had when it was
/// last hashed is not hashed again at a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Mode of an instance's work dir: the app's user only.
pub const WORK_DIR_MODE: u32 = 0o700;
/// Mode of `<data_dir>/instances` and `<data_dir>/instances/<instance>`: narund's (root's),
/// enterable by the app on its way to its work dir, not listable by anyone else.
pub const INSTANCE_DIR_MODE: u32 = 0o711;

/// Create (or fix) `work` = `<data_dir>/instances/<instance>/work`: its two parents root's
/// with [`INSTANCE_DIR_MODE`] (an app cannot rename or replace its work dir, and narund
/// stages mounted files there), the work dir itself [`WORK_DIR_MODE`] owned by `owner`.
/// The work dir is opened without following a symlink and changed through its fd.
pub fn prepare_work_dir(work: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    use crate::sys::beneath as at;
    use std::os::fd::AsFd;
    let shown = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let inst = work
        .parent()
        .ok_or_else(|| format!("{}: no parent", work.display()))?;
    std::fs::create_dir_all(inst).map_err(|e| shown(inst, e))?;
    let root = crate::sys::process::geteuid() == 0;
    for dir in [inst.parent(), Some(inst)].into_iter().flatten() {
        let fd = at::open_dir_nofollow(dir).map_err(|e| shown(dir, e))?;
        if root {
            at::fchown(fd.as_fd(), 0, 0).map_err(|e| shown(dir, e))?;
        }
        at::fchmod(fd.as_fd(), INSTANCE_DIR_MODE).map_err(|e| shown(dir, e))?;
    }
    let inst_fd = at::open_dir_nofollow(inst).map_err(|e| shown(inst, e))?;
    let name = work.file_name().unwrap_or_default();
    match at::mkdir_at(inst_fd.as_fd(), name, WORK_DIR_MODE) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(shown(work, e)),
    }
    let fd = at::open_dir_at(inst_fd.as_fd(), name).map_err(|e| shown(work, e))?;
    if let Some((uid, gid)) = owner {
        at::fchown(fd.as_fd(), uid, gid).map_err(|e| shown(work, e))?;
    }
    at::fchmod(fd.as_fd(), WORK_DIR_MODE).map_err(|e| shown(work, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_stamp_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, b"one").unwrap();
        let a = FileStamp::of(&p).unwrap();
        assert_eq!(FileStamp::of(&p), Some(a.clone()), "stable");
        // Same size, new content: mtime/ctime move (a write after a few ms at most; the
        // kernel's timestamps are at least jiffy-granular).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"two").unwrap();
        let b = FileStamp::of(&p).unwrap();
        assert_ne!(a, b);
        // chmod moves ctime only.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_ne!(FileStamp::of(&p).unwrap(), b);
        // Another file renamed over it: another inode.
        let q = dir.path().join("other");
        std::fs::write(&q, b"two").unwrap();
        let c = FileStamp::of(&p).unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_ne!(FileStamp::of(&p).unwrap(), c);
        assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
    }

    #[test]
    fn work_dirs_are_private_and_their_parents_enterable() {
        let data = tempfile::tempdir().unwrap();
        let work = data.path().join("instances/web-0/work");
        prepare_work_dir(&work, None).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&work), WORK_DIR_MODE);
        assert_eq!(mode(work.parent().unwrap()), INSTANCE_DIR_MODE);
        assert_eq!(mode(&data.path().join("instances")), INSTANCE_DIR_MODE);
        // Again (a restart): the same.
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
        prepare_work_dir(&work, None).unwrap();
        assert_eq!(mode(&work), WORK_DIR_MODE);
        // A symlink as the work dir is refused.
        let other = data.path().join("instances/db-0");
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink("/tmp", other.join("work")).unwrap();
        assert!(prepare_work_dir(&other.join("work"), None).is_err());
    }
}
