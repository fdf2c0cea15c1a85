//! The vocabulary of status events and heartbeats: what state an instance or a node is
//! in, why, and when a new run counts as ready. narund publishes these values, narunctl
//! reads them; both use the types here, never the strings.
//!
//! Every enum is a string on the wire (the Go names, plus narun's additions). A value this
//! version does not know — a newer narund, or a Go node-runner — is kept verbatim in
//! `Other(…)` instead of failing the whole event, so an old narunctl still shows it.
//!
//! ```
//! use narun_wire::status::{InstanceStatus, Reason};
//! assert_eq!(serde_json::to_string(&InstanceStatus::RolledBack).unwrap(), r#""rolled_back""#);
//! assert_eq!(InstanceStatus::parse("running"), InstanceStatus::Running);
//! assert_eq!(InstanceStatus::parse("hibernating"), InstanceStatus::Other("hibernating".into()));
//! assert_eq!(Reason::OomKill.as_str(), "oom-kill");
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A string enum of the wire contract: the listed variants, and `Other` for values from
/// newer peers.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this version does not know (from a newer peer), kept verbatim.
            Other(String),
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Other(s) => s,
                }
            }

            /// The value of a wire string (unknown strings become `Other`).
            pub fn parse(s: &str) -> $name {
                match s {
                    $( $text => $name::$variant, )*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok($name::parse(&s))
            }
        }
    };
}

wire_enum! {
    /// The state of one instance run, in [`crate::events::StatusEvent::status`] and
    /// [`crate::events::InstanceState::status`]. Go publishes the first six.
    #[derive(Default)]
    pub enum InstanceStatus {
        /// Fetching, preparing or spawning; with `notify = true`, until `READY=1`.
        #[default]
        Starting = "starting",
        /// The process runs (and, with `notify = true`, said `READY=1`).
        Running = "running",
        /// A stop was asked for (or the app said `STOPPING=1`).
        Stopping = "stopping",
        /// Ended cleanly or was stopped; not restarted unless the policy says so.
        Stopped = "stopped",
        /// Ended by a failure (exit code, signal, OOM kill, watchdog).
        Crashed = "crashed",
        /// Did not get to a running process, or hit its start limit; stays down until the
        /// spec is applied again.
        Failed = "failed",
        /// Waiting before a restart (narun addition).
        Backoff = "backoff",
        /// The app said `RELOADING=1` (narun addition).
        Reloading = "reloading",
        /// A new spec did not become ready here; the previous one keeps running (narun
        /// addition, see [`crate::events::RolledBack`]).
        RolledBack = "rolled_back",
        /// The spec in `app-configs` is not valid (narun addition).
        InvalidSpec = "invalid_spec",
        /// Stopped because the app was idle for its `scaleToZero.idleSec`; started again
        /// by a wake request ([`crate::events::WakeRequest`]). Not a failure (narun addition).
        ScaledToZero = "scaled_to_zero",
    }
}

impl InstanceStatus {
    /// The run serves: `running`, or `reloading` its configuration.
    pub fn is_up(&self) -> bool {
        matches!(self, InstanceStatus::Running | InstanceStatus::Reloading)
    }

    /// The run is over or waits to be restarted: it will not become ready by itself.
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            InstanceStatus::Crashed
                | InstanceStatus::Failed
                | InstanceStatus::Backoff
                | InstanceStatus::Stopped
        )
    }
}

wire_enum! {
    /// [`crate::events::NodeState::status`].
    #[derive(Default)]
    pub enum NodeStatus {
        /// narund runs and heart-beats.
        #[default]
        Running = "running",
        /// narund is stopping (the last put before the key is deleted).
        ShuttingDown = "shutting_down",
    }
}

wire_enum! {
    /// Why an instance is in its status ([`crate::events::StatusEvent::reason`],
    /// [`crate::events::RolledBack::reason`]); a narun addition. Absent (`None`) when the
    /// status says it all.
    pub enum Reason {
        /// The process exited with a code.
        ExitCode = "exit-code",
        /// The process was killed by a signal.
        Signal = "signal",
        /// Waiting for the process failed.
        Wait = "wait",
        /// The OOM killer killed a process of the instance (`memory.max`).
        OomKill = "oom-kill",
        /// `startLimitBurst` starts within `startLimitIntervalSec`.
        StartLimit = "start-limit",
        /// No `READY=1` within `startTimeoutSec`.
        StartTimeout = "start-timeout",
        /// The app's watchdog expired or it sent `WATCHDOG=trigger`.
        Watchdog = "watchdog",
        /// A run of the previous narund, taken over after a restart of narund.
        Adopted = "adopted",
        /// narund follows the process the app named with `MAINPID=`.
        MainPid = "mainpid",
        /// A re-adopted process exited; its exit status is unknown.
        ExitedAfterAdoption = "exited-after-adoption",
        /// The binary does not match its digest.
        Verify = "verify",
        /// The binary could not be fetched.
        Fetch = "fetch",
        /// The node has `[deploy] trusted_keys` and the binary is unsigned, signed by
        /// another key, signed for something else, or not the signed digest.
        Signature = "signature",
        /// The app's user or capabilities are not allowed or do not exist.
        User = "user",
        /// The process could not be spawned.
        Spawn = "spawn",
        /// The instance cgroup could not be created.
        Cgroup = "cgroup",
        /// The sd_notify socket could not be created.
        Notify = "notify",
        /// A `valueFromSecret` could not be resolved.
        Secret = "secret",
        /// A mounted file could not be placed.
        Mount = "mount",
        /// The spec is not valid.
        InvalidSpec = "invalid-spec",
        /// A new run never got to `running` (rollback reason).
        NotRunning = "not-running",
        /// A new run crashed before it was ready (rollback reason).
        Crashed = "crashed",
        /// The spec asks for a capability this node does not grant (`[apps]
        /// allowed_capabilities`, `allow_root`); the message names it.
        Capability = "capability",
        /// The binary is not an ELF executable of this node's machine, class and byte
        /// order, or the kernel refused to execute it (`ENOEXEC`); never run through a shell.
        ExecFormat = "exec-format",
        /// The spec asks for a higher resource limit than this node grants (`nofileMax`
        /// above `[apps] nofile_max` or narund's own hard `RLIMIT_NOFILE`); the message
        /// names the setting.
        Rlimit = "rlimit",
        /// `starting`: waiting for the services of the spec's `after` to answer discovery
        /// pings (`error` names them: "waiting for db").
        After = "after",
    }
}

/// `Option<Reason>` on the wire: absent or `""` is `None`.
pub mod opt_reason {
    use super::Reason;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize `Some(r)` as its string (`None` is skipped by the field attribute).
    pub fn serialize<S: Serializer>(r: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_ref().map_or("", |r| r.as_str()))
    }

    /// `""` (what older narunds could send) is no reason.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reason>, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok((!s.is_empty()).then(|| Reason::parse(&s)))
    }
}

/// When a new run counts as ready — the one rule narund uses before it stops the run it
/// replaces and `narunctl deploy --wait` uses before it reports success.
///
/// With `notify = true` narund reports `running` only after the app's `READY=1`, so
/// `running` is ready. Without, the run must stay up (same pid, [`InstanceStatus::is_up`])
/// for `settleSec` after it was first reported `running`.
///
/// ```
/// use narun_wire::status::SettleRule;
/// use std::time::Duration;
/// let rule = SettleRule::new(false, 2);
/// assert!(!rule.ready_after(Duration::from_secs(1)));
/// assert!(rule.ready_after(Duration::from_secs(2)));
/// assert!(SettleRule::new(true, 2).ready_after(Duration::ZERO));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleRule {
    /// The spec's `notify`.
    pub notify: bool,
    /// The spec's `settleSec`.
    pub settle: Duration,
}

impl SettleRule {
    /// The rule of a spec with `notify` and `settleSec`.
    pub fn new(notify: bool, settle_sec: u64) -> SettleRule {
        SettleRule {
            notify,
            settle: Duration::from_secs(settle_sec),
        }
    }

    /// How long a run reported `running` must stay up before it is ready.
    pub fn settle_time(&self) -> Duration {
        if self.notify {
            Duration::ZERO
        } else {
            self.settle
        }
    }

    /// Whether a run that has been `running` for `running_for` is ready.
    pub fn ready_after(&self, running_for: Duration) -> bool {
        running_for >= self.settle_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_value_round_trips_through_json() {
        for s in InstanceStatus::KNOWN {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(&serde_json::from_str::<InstanceStatus>(&json).unwrap(), s);
        }
        for r in Reason::KNOWN {
            assert_eq!(&Reason::parse(r.as_str()), r);
        }
        for n in NodeStatus::KNOWN {
            assert_eq!(&NodeStatus::parse(n.as_str()), n);
        }
    }

    #[test]
    fn unknown_values_are_kept() {
        let s: InstanceStatus = serde_json::from_str(r#""paused""#).unwrap();
        assert_eq!(s, InstanceStatus::Other("paused".into()));
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""paused""#);
    }

    #[test]
    fn up_and_down_are_disjoint() {
        for s in InstanceStatus::KNOWN {
            assert!(!(s.is_up() && s.is_down()), "{s}");
        }
        assert!(InstanceStatus::Reloading.is_up());
        assert!(InstanceStatus::Backoff.is_down());
        assert!(!InstanceStatus::Starting.is_up() && !InstanceStatus::Starting.is_down());
    }

    #[test]
    fn settle_rule() {
        let r = SettleRule::new(false, 3);
        assert_eq!(r.settle_time(), Duration::from_secs(3));
        assert!(!r.ready_after(Duration::from_millis(2999)));
        assert!(r.ready_after(Duration::from_secs(3)));
        assert_eq!(SettleRule::new(true, 3).settle_time(), Duration::ZERO);
    }
}
