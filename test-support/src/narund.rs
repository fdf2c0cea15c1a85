//! The real `narund` binary as a process of the test.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{NatsServer, T, cgroup2_mount, kill_and_remove_cgroups, wait_for, workspace_bin};

/// The `narund.toml` of a test narund: node `node`, data in `data_dir` (runtime dir
/// `<data_dir>/run`), NATS at `url`, apps in the cgroup root `cgroup_root` (relative: below
/// the cgroup2 mount) running as `nobody` by default, `#!` scripts allowed (the sample
/// apps are scripts; `allow_scripts`), then `extra`.
///
/// `[apps]` is the last table before `extra`: keys at the top of `extra` (before any table
/// header), such as `on_exit = "detach"`, belong to it; `[labels]`, `[logs]`, `[memory]`, …
/// tables in `extra` start their own sections.
pub fn narund_toml(
    node: &str,
    data_dir: &Path,
    url: &str,
    cgroup_root: &str,
    extra: &str,
) -> String {
    format!(
        "node_id = \"{node}\"\ndata_dir = \"{d}\"\nruntime_dir = \"{d}/run\"\n\
         [nats]\nurl = \"{url}\"\n[cgroup]\nroot = \"{cgroup_root}\"\n\
         [apps]\ndefault_user = \"nobody\"\nallow_scripts = true\n{extra}\n",
        d = data_dir.display(),
    )
}

/// A real narund process with its own data dir (mode 0755, so `nobody` can reach the
/// instances' work dirs) and its own cgroup root `narun-test-<pid>-<n>-<node>`.
///
/// Dropping it stops narund with SIGTERM (it then stops its apps; SIGKILL if it has not
/// exited within [`T`]), then kills and removes whatever is left in its cgroup root: no app
/// of it outlives the test, also when the test panics.
pub struct Narund {
    child: Child,
    data: tempfile::TempDir,
    node: String,
    url: String,
    cgroup: String,
}

/// How to start a [`Narund`]: [`Narund::builder`], then [`NarundBuilder::start`].
pub struct NarundBuilder {
    node: String,
    url: String,
    extra_toml: String,
    env: Vec<(OsString, OsString)>,
    stderr: bool,
    features: &'static [&'static str],
    nofile: Option<u64>,
    umask: Option<u32>,
    binary: Option<PathBuf>,
}

impl NarundBuilder {
    /// Append `extra_toml` to the configuration (see [`narund_toml`]).
    pub fn config(mut self, extra_toml: &str) -> Self {
        self.extra_toml = extra_toml.to_owned();
        self
    }

    /// Connect to `url` instead of the server given to [`Narund::builder`] (e.g. a
    /// [`crate::NatsCluster::urls`] list, first member first).
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Set an environment variable of narund (`NARUND_LOG` is `warn` unless set here).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Build narund with these cargo `--features` (e.g. `"gateway"`).
    pub fn features(mut self, features: &'static [&'static str]) -> Self {
        self.features = features;
        self
    }

    /// Start narund with soft and hard `RLIMIT_NOFILE` = `limit` (so it cannot
    /// raise it either), to show what it does when fds are scarce.
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Pipe narund's stderr (its log) to the test: [`Narund::take_stderr`].
    /// Start narund with this umask (e.g. `0o077`, a hardened root shell's).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    pub fn stderr_piped(mut self) -> Self {
        self.stderr = true;
        self
    }

    /// Run this narund binary (another build, e.g. a baseline in a benchmark) instead of
    /// the workspace's; [`features`](Self::features) is then ignored.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn start(self) -> Narund {
        let data = tempfile::tempdir().unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // One root per narund: narund removes cgroups below its root that are not its
        // own, and so does the clean-up on drop.
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let narund_cgroup = format!(
            "narun-test-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            self.node
        );
        let features = self.features.join(",");
        let cargo_args: &[&str] = if features.is_empty() {
            &[]
        } else {
            &["--features", &features]
        };
        let mut cmd = Command::new(
            self.binary
                .unwrap_or_else(|| workspace_bin("narund", "narund", cargo_args)),
        );
        if let Some(limit) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value copied
            // into the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and cannot fail.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let config = data.path().join("narund.toml");
        cmd.arg("--config")
            .arg(&config)
            .env("NARUND_LOG", "warn")
            .env_remove("NARUN_MASTER_KEY_FILE")
            .envs(self.env)
            .stdin(Stdio::null());
        if self.stderr {
            cmd.stderr(Stdio::piped());
        }
        let toml = narund_toml(
            &self.node,
            data.path(),
            &self.url,
            &narund_cgroup,
            &self.extra_toml,
        );
        std::fs::write(&config, toml).unwrap();
        Narund {
            child: cmd.spawn().expect("start narund"),
            data,
            node: self.node,
            url: self.url,
            cgroup: narund_cgroup,
        }
    }
}

impl Narund {
    /// Start narund for `node` on `server`, with `extra_toml` appended to its configuration
    /// (see [`narund_toml`]).
    pub fn start(server: &NatsServer, node: &str, extra_toml: &str) -> Narund {
        Self::builder(server, node).config(extra_toml).start()
    }

    /// A narund for `node` on `server` with more settings than [`Narund::start`] takes.
    pub fn builder(server: &NatsServer, node: &str) -> NarundBuilder {
        NarundBuilder {
            node: node.to_owned(),
            url: server.url(),
            extra_toml: String::new(),
            env: Vec::new(),
            stderr: false,
            features: &[],
            nofile: None,
            umask: None,
            binary: None,
        }
    }

    /// narund's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// narund's data dir (instances' working dirs are below it).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Its `narund.toml` (in the data dir).
    pub fn config_path(&self) -> PathBuf {
        self.data.path().join("narund.toml")
    }

    /// (Re)write its `narund.toml` with `extra_toml` (for a reload with `SIGHUP`).
    pub fn write_config(&self, extra_toml: &str) {
        let toml = narund_toml(
            &self.node,
            self.data.path(),
            &self.url,
            &self.cgroup,
            extra_toml,
        );
        std::fs::write(self.config_path(), toml).unwrap();
    }

    /// Its cgroup root (the instances' cgroups are below it).
    pub fn cgroup_root(&self) -> PathBuf {
        cgroup2_mount().join(&self.cgroup)
    }

    /// narund's stderr, when started with [`NarundBuilder::stderr_piped`].
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Send `signal` (`libc::SIGHUP`, …) to narund.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped before `wait`.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Whether narund is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait (at most [`T`]) for narund to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        let what = format!("narund (pid {}) to exit", self.child.id());
        let child = &mut self.child;
        wait_for(&what, T, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    /// Stop narund with SIGTERM and wait (at most [`T`]) for it to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait().await
    }
}

impl Drop for Narund {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = std::time::Instant::now() + T;
            while matches!(self.child.try_wait(), Ok(None)) {
                if std::time::Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_and_remove_cgroups(&self.cgroup_root());
    }
}
