//! When an ended instance is started again: [`RestartPolicy`] (systemd's
//! `Restart=`) and how an instance ended ([`ExitKind`]).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Restart policy, with systemd's `Restart=` meanings. Default `on-failure`.
///
/// | ended by                      | no | on-success | on-failure | on-abnormal | on-watchdog | on-abort | always |
/// |-------------------------------|----|------------|------------|-------------|-------------|----------|--------|
/// | clean exit (0, HUP/INT/TERM/PIPE) |    | x          |            |             |             |          | x      |
/// | non-zero exit code            |    |            | x          |             |             |          | x      |
/// | other signal (crash)          |    |            | x          | x           |             | x        | x      |
/// | start timeout                 |    |            | x          | x           |             |          | x      |
/// | watchdog timeout              |    |            | x          | x           | x           |          | x      |
/// | OOM kill                      |    |            | x          | x           |             |          | x      |
///
/// A stop asked for by the daemon (spec change, scale down, shutdown) never
/// restarts. See [`RestartPolicy::restarts_after`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Restart only after a clean exit.
    OnSuccess,
    /// Restart after anything but a clean exit (the default).
    #[default]
    OnFailure,
    /// Restart after a crash signal, a timeout, a watchdog or an OOM kill.
    OnAbnormal,
    /// Restart only after a watchdog timeout.
    OnWatchdog,
    /// Restart only after a crash signal.
    OnAbort,
    /// Always restart.
    Always,
    /// Anything else (invalid, reported by validation).
    Other(String),
}

/// How an instance ended, for [`RestartPolicy::restarts_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit status 0, or killed by SIGHUP, SIGINT, SIGTERM or SIGPIPE.
    Clean,
    /// Non-zero exit status.
    ExitCode,
    /// Killed by any other signal (SIGSEGV, SIGABRT, SIGKILL from outside, …).
    Signal,
    /// Did not become ready within `startTimeoutSec`.
    Timeout,
    /// Missed its watchdog deadline.
    Watchdog,
    /// Killed by the OOM killer.
    OomKill,
}

impl RestartPolicy {
    /// All valid policies, in their wire spelling.
    pub const NAMES: &'static [&'static str] = &[
        "no",
        "on-success",
        "on-failure",
        "on-abnormal",
        "on-watchdog",
        "on-abort",
        "always",
    ];

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnSuccess => "on-success",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnAbnormal => "on-abnormal",
            RestartPolicy::OnWatchdog => "on-watchdog",
            RestartPolicy::OnAbort => "on-abort",
            RestartPolicy::Always => "always",
            RestartPolicy::Other(s) => s,
        }
    }

    /// Parse a policy, case-insensitively; `_` may replace `-`; empty means
    /// the default (`on-failure`).
    pub fn parse(s: &str) -> RestartPolicy {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "" | "on-failure" => RestartPolicy::OnFailure,
            "no" | "never" => RestartPolicy::No,
            "on-success" => RestartPolicy::OnSuccess,
            "on-abnormal" => RestartPolicy::OnAbnormal,
            "on-watchdog" => RestartPolicy::OnWatchdog,
            "on-abort" => RestartPolicy::OnAbort,
            "always" => RestartPolicy::Always,
            _ => RestartPolicy::Other(s.to_string()),
        }
    }

    /// Whether an instance that ended this way is started again (systemd's
    /// matrix, see the type docs). `Other` behaves like `on-failure`.
    pub fn restarts_after(&self, how: ExitKind) -> bool {
        use ExitKind::*;
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnSuccess => how == Clean,
            RestartPolicy::OnFailure | RestartPolicy::Other(_) => how != Clean,
            RestartPolicy::OnAbnormal => matches!(how, Signal | Timeout | Watchdog | OomKill),
            RestartPolicy::OnWatchdog => how == Watchdog,
            RestartPolicy::OnAbort => how == Signal,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RestartPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a restart policy (no, on-success, on-failure, on-abnormal, on-watchdog, on-abort, always)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RestartPolicy, E> {
                Ok(RestartPolicy::parse(v))
            }
            // YAML 1.1 habits: `restart: no` may reach us as the boolean false.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RestartPolicy, E> {
                if v {
                    Err(E::invalid_value(de::Unexpected::Bool(true), &self))
                } else {
                    Ok(RestartPolicy::No)
                }
            }
            fn visit_none<E: de::Error>(self) -> Result<RestartPolicy, E> {
                Ok(RestartPolicy::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<RestartPolicy, E> {
                Ok(RestartPolicy::default())
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<RestartPolicy, D2::Error> {
                d.deserialize_any(self)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_matrix_is_systemds() {
        use ExitKind::*;
        let all = [Clean, ExitCode, Signal, Timeout, Watchdog, OomKill];
        let table: &[(RestartPolicy, &[ExitKind])] = &[
            (RestartPolicy::No, &[]),
            (RestartPolicy::OnSuccess, &[Clean]),
            (
                RestartPolicy::OnFailure,
                &[ExitCode, Signal, Timeout, Watchdog, OomKill],
            ),
            (
                RestartPolicy::OnAbnormal,
                &[Signal, Timeout, Watchdog, OomKill],
            ),
            (RestartPolicy::OnWatchdog, &[Watchdog]),
            (RestartPolicy::OnAbort, &[Signal]),
            (RestartPolicy::Always, &all),
        ];
        for (policy, restarting) in table {
            for how in all {
                assert_eq!(
                    policy.restarts_after(how),
                    restarting.contains(&how),
                    "{policy} after {how:?}"
                );
            }
        }
    }

    #[test]
    fn restart_policy_spellings() {
        for name in RestartPolicy::NAMES {
            let p = RestartPolicy::parse(name);
            assert!(!matches!(p, RestartPolicy::Other(_)), "{name}");
            assert_eq!(p.as_str(), *name);
        }
        assert_eq!(RestartPolicy::parse("ON_FAILURE"), RestartPolicy::OnFailure);
        assert_eq!(RestartPolicy::parse(""), RestartPolicy::OnFailure);
        assert_eq!(
            RestartPolicy::parse("sometimes"),
            RestartPolicy::Other("sometimes".into())
        );
    }
}
