//! The execution mode ([`Mode`]) and the settings of Go's other modes,
//! Landlock and FreeBSD jails, which narund keeps for round trips but does
//! not run.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::serde_helpers::{is_default, nullable};

/// Go execution mode. Unknown values are kept in [`Mode::Other`] so that
/// [`AppSpec::validate`](crate::AppSpec::validate) can report them with
/// every other problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// Run the binary directly (the only mode narund supports).
    #[default]
    Exec,
    /// Go Linux Landlock sandbox.
    Landlock,
    /// Go FreeBSD jail.
    Jail,
    /// narun addition: a command unit. narund registers the app's Micro endpoint and
    /// runs the binary once per request (the `commandUnit` block, docs/jobs.md).
    Command,
    /// Anything else (invalid).
    Other(String),
}

impl Mode {
    /// The wire spelling (`exec`, `landlock`, `jail`, `command`, or the invalid text).
    pub fn as_str(&self) -> &str {
        match self {
            Mode::Exec => "exec",
            Mode::Landlock => "landlock",
            Mode::Jail => "jail",
            Mode::Command => "command",
            Mode::Other(s) => s,
        }
    }

    /// Parse a mode, case-insensitively; empty means `exec`.
    pub fn parse(s: &str) -> Mode {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "exec" => Mode::Exec,
            "landlock" => Mode::Landlock,
            "jail" => Mode::Jail,
            "command" => Mode::Command,
            _ => Mode::Other(s.to_string()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(Mode::parse(s.as_deref().unwrap_or("")))
    }
}

/// Go Landlock settings (`mode: landlock`). narund does not implement them;
/// they are kept so that a round trip loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LandlockSpec {
    /// Shared libraries and `/dev/null`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub shared: bool,
    /// Standard I/O devices.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub stdio: bool,
    /// Terminal devices.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub tty: bool,
    /// `/tmp`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub tmp: bool,
    /// `/proc` VM information.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub vminfo: bool,
    /// DNS resolution files.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub dns: bool,
    /// System CA certificates.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub certs: bool,
    /// Custom path rules.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub paths: Vec<LandlockPath>,
}

/// One Go Landlock path rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LandlockPath {
    /// Path on the host.
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// Any of `r`, `w`, `x`, `c`.
    #[serde(deserialize_with = "nullable")]
    pub modes: String,
}

/// Go FreeBSD jail settings (`mode: jail`); kept for round trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JailSpec {
    /// Jail host name (Go default: the app name).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub hostname: String,
    /// IPv4 addresses of the jail.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub ip4_addresses: Vec<String>,
    /// `allow.raw_sockets`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub allow_raw_sockets: bool,
    /// devfs ruleset (Go: 0 means 4).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub devfs_ruleset: i64,
    /// Mount the host certificates read-only.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub mount_system_certs: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_spellings() {
        assert_eq!(Mode::parse(""), Mode::Exec);
        assert_eq!(Mode::parse("EXEC"), Mode::Exec);
        assert_eq!(Mode::parse("landlock"), Mode::Landlock);
        assert_eq!(Mode::parse("jail"), Mode::Jail);
        assert_eq!(Mode::parse("Command"), Mode::Command);
        assert_eq!(Mode::parse("docker"), Mode::Other("docker".into()));
    }
}
