//! narund: the narun node daemon.
//!
//! Where things happen (a folder per concept; each folder's `mod.rs` says what it owns and
//! what it may call):
//!
//! | module | concept |
//! |---|---|
//! | [`daemon`] | the composition root: [`daemon::Daemon::new`] builds narund, `run(shutdown, reloads)` runs it |
//! | [`node`] | what should run here: the instance table, applying specs (scale, rolling replace, **rollback**), the `app-configs` watch, heartbeat, operator requests |
//! | [`instance`] | one instance's runs: the pure **lifecycle** state machine (restarts, backoff, start limit, watchdog, stop), start, exit, sd_notify socket, re-adoption, the process seam, orphan reaping |
//! | [`cgroup`] | cgroup v2 discovery (pure and hybrid layouts), per-instance cgroups, limits, `cgroup.kill`; the [`cgroup::Cgroups`] seam |
//! | [`fetch`] | what a start takes from NATS: binaries (streamed, SHA-256 verified, content-addressed cache), secrets and mounted files ([`fetch::inputs`]) |
//! | [`history_stream`] | the optional JetStream copies of what narund publishes (log lines, status events): created, updated, kept in place |
//! | [`logs`] | stdout/stderr pipes → lines → `logs.<app>.<node>`, the offline spool, the optional JetStream history |
//! | [`privileges`] | narund's own capability bounding set; the app's uid/gid/caps/no_new_privs set-up in `pre_exec` |
//! | [`state`] | the data dir: last applied specs (starts without NATS), records of running processes, systemd's fd store |
//! | [`config`] | `/etc/narun/narund.toml`, flags and env overrides; [`config::Settings`] for the node |
//! | [`preflight`] | the one check of a configuration before narund uses it (`--check-config`, start, reload): files, directories, node id, cgroup root; the effective settings |
//! | [`lock`] | one narund per data dir and per cgroup root: the locks taken at start and held for narund's life |
//! | [`liveness`] | are the reconciler, heartbeat and reaper making progress? gates narund's own `WATCHDOG=1` |
//! | `dashboard` | the web dashboard on the gateway's listener (features `gateway` + `dashboard`): views, actions, the metrics ring |
//! | [`metrics`] | narund's own `/metrics` (Prometheus text, a bounded HTTP listener), computed at scrape time |
//! | [`memory`] | narund's own footprint: only the pages of its binary it runs stay resident |
//! | [`nofile`] | open files (`RLIMIT_NOFILE`): narund raises its own soft limit to the hard one; apps start with soft 1024 and the hard limit of their spec or the node |
//! | [`uring`] | io_uring on a dedicated thread (tokio-uring), probed once, with a plain-read fallback |
//! | [`sys`] | the raw syscalls (`libc`) behind safe, documented wrappers: the only module with `unsafe` code |
#![deny(unsafe_code)]

pub mod cgroup;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(all(feature = "gateway", feature = "dashboard"))]
pub mod dashboard;
pub mod fetch;
pub mod history_stream;
pub mod instance;
pub mod jobs;
pub mod liveness;
pub mod lock;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod nofile;
pub mod preflight;
pub mod privileges;
pub mod state;
pub mod sys;
#[cfg(test)]
pub mod testing;
pub mod uring;

/// A spawned future, boxed: see [`spawn`].
pub type BoxedTask<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// `tokio::spawn` of the future boxed as [`BoxedTask`]: tokio's task machinery (poll,
/// complete, cancel, join, drop: ≈ 1 KB of code per future type) is compiled once per
/// output type instead of once per spawned future. Same behaviour; one more allocation per
/// spawn, one indirect call per poll. Binary size: docs/benchmarks.md ("Binary size, s32").
pub fn spawn<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::spawn(Box::pin(f) as BoxedTask<T>)
}

/// [`spawn`] onto a `JoinSet`.
pub(crate) fn spawn_in<T: Send + 'static>(
    set: &mut tokio::task::JoinSet<T>,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::AbortHandle {
    set.spawn(Box::pin(f) as BoxedTask<T>)
}
