//! narund: the narun node daemon.
//!
//! Where things happen (one module per concept):
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | `/etc/narun/narund.toml`, flags and env overrides |
//! | [`cgroup`] | cgroup v2 discovery (pure and hybrid layouts), per-instance cgroups, limits, `cgroup.kill` |
//! | [`privileges`] | narund's own capability bounding set; the app's uid/gid/caps/no_new_privs set-up in `pre_exec` |
//! | [`uring`] | io_uring on a dedicated thread (tokio-uring), probed once, with a plain-read fallback |
//! | [`fetch`] | app binaries from the Object Store: streamed, SHA-256 verified, content-addressed cache |
//! | [`logs`] | stdout/stderr pipes → lines → `logs.<app>.<node>`, with an offline spool; optional log history in the JetStream stream `narun-logs` ([`logs::stream`]) |
//! | [`memory`] | narund's own footprint: only the pages of its binary it runs stay resident |
//! | [`secrets`] | `valueFromSecret` env values (`narun-secrets`, AES-256-GCM) and `mounts` (`narun-files`) of instance starts |
//! | [`supervisor`] | one task per instance: start, restart policy, backoff, start limit, stop |
//! | [`reconcile`] | `app-configs` → desired instances: scale, replace one at a time, invalid specs |
//! | [`notify`] | the per-instance sd_notify socket: READY/STATUS/WATCHDOG/… from apps, sender checked by cgroup |
//! | [`liveness`] | are the reconciler, heartbeat and reaper making progress? gates narund's own `WATCHDOG=1` |
//! | [`node`] | heartbeat in `node-runner-states`, clean shutdown |
//! | [`control`] | operator requests on `narun.control.<node>.*` (restart an app's instances) |
//! | [`state`] | last applied specs in the data dir, for starts without NATS; records of running processes |
//! | [`fdstore`] | log pipes of running apps parked in systemd's fd store across narund restarts |
//! | [`adopt`] | re-adoption of running apps after a restart of narund (records, fd store) |

pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod fetch;
pub mod instance;
pub mod liveness;
pub mod logs;
pub mod memory;
pub mod node;
pub mod privileges;
pub mod state;
#[cfg(test)]
pub mod testing;
pub mod uring;
