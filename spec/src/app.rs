//! The data model of an app spec.
//!
//! Field names on the wire are the Go `ServiceSpec` YAML names (camelCase,
//! case-sensitive), so a spec written by the Go `narun` CLI parses here and a
//! spec written by `narunctl` (JSON) parses in a Go `node-runner`.
//!
//! Serialisation skips every field that holds its default value (like Go's
//! `omitempty`), except `name`, `tag` and `mode`: Go node-runners reject a spec
//! without `mode`. Skipping defaults also keeps [`AppSpec::config_hash`] stable
//! when a later narun version adds a field with a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::validate::SpecWarning;

/// An app spec: which binary to run, where, how many times and how.
///
/// Build one with [`AppSpec::new`] or parse one with [`AppSpec::from_toml_str`],
/// [`AppSpec::from_yaml_str`], [`AppSpec::from_kv_bytes`] or
/// [`AppSpec::from_path`]; then call [`AppSpec::validate`].
///
/// ```
/// use narun_spec::{AppSpec, NodeSelector};
///
/// let mut spec = AppSpec::new("hello", "v1");
/// spec.nodes.push(NodeSelector::by_name("node-1", 2));
/// spec.validate().unwrap();
/// assert_eq!(spec.binary_object_name("linux", "arm64"), "hello-v1-linux-arm64");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AppSpec {
    /// App name; also the `app-configs` key, the NATS subject token and part of
    /// the binary object name. Required.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Binary tag (version); part of the binary object name. Required.
    #[serde(deserialize_with = "scalar_string")]
    pub tag: String,
    /// Go compatibility only: parsed and kept, never used (the fetched binary
    /// is what runs).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub command: String,
    /// Arguments passed to the binary (`argv[1..]`).
    #[serde(
        skip_serializing_if = "is_default",
        deserialize_with = "scalar_strings"
    )]
    pub args: Vec<String>,
    /// Environment variables added to the instance environment.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub env: Vec<EnvVar>,
    /// Where instances run: see [`AppSpec::desired_replicas`].
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub nodes: Vec<NodeSelector>,
    /// Execution mode. Defaults to `exec`; narund only runs `exec`.
    pub mode: Mode,
    /// Go `mode: landlock` settings (kept for round trips; narund ignores them).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub landlock: LandlockSpec,
    /// Go FreeBSD `mode: jail` settings (kept for round trips; narund ignores them).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub jail: JailSpec,
    /// Files from the `narun-files` object store placed in the work dir.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub mounts: Vec<MountSpec>,
    /// Go network isolation settings.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub nonet: NoNetSpec,
    /// Where the app serves Prometheus metrics.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub metrics: MetricsSpec,
    /// Run as this user; empty = the daemon's default.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub user: String,
    /// Memory soft limit (cgroup `memory.low`) in MiB; 0 = none.
    #[serde(
        rename = "memoryMB",
        skip_serializing_if = "is_default",
        deserialize_with = "nullable"
    )]
    pub memory_mb: u64,
    /// Memory hard limit (cgroup `memory.max`) in MiB; 0 = `memoryMB`.
    #[serde(
        rename = "memoryMaxMB",
        skip_serializing_if = "is_default",
        deserialize_with = "nullable"
    )]
    pub memory_max_mb: u64,
    /// CPU bandwidth in cores (`0.5` = half a core); 0 = unlimited.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub cpu_cores: f64,
    /// Go compatibility: a network namespace to join.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub network_namespace_path: String,
    /// Go compatibility: parent cgroup (relative to the cgroup2 mount or absolute).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub cgroup_parent: String,

    // ---- narun additions (ignored by Go node-runners) ----
    /// When an instance that ended is started again (systemd `Restart=`).
    #[serde(skip_serializing_if = "is_default")]
    pub restart: RestartPolicy,
    /// At most this many starts per `startLimitIntervalSec`; past it the
    /// instance is `failed` (systemd `StartLimitBurst=`). Default 5.
    #[serde(
        skip_serializing_if = "is_default_start_limit_burst",
        deserialize_with = "nullable_or::<_, DefaultStartLimitBurst>"
    )]
    pub start_limit_burst: u32,
    /// Window of the start limit in seconds; 0 disables the limit. Default 10.
    #[serde(
        skip_serializing_if = "is_default_start_limit_interval",
        deserialize_with = "nullable_or::<_, DefaultStartLimitInterval>"
    )]
    pub start_limit_interval_sec: u64,
    /// cgroup `pids.max`; absent = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// cgroup `cpu.weight` (1..=10000); absent = the kernel default (100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// Capabilities granted to the app (ambient set), normalised to `CAP_X`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub capabilities: Vec<String>,
    /// The app reports readiness with `sd_notify("READY=1")`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub notify: bool,
    /// The app must send `WATCHDOG=1` at least this often (seconds); requires
    /// `notify: true`. Absent = no watchdog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog_sec: Option<u64>,
    /// Time allowed to become ready (seconds). Default 90.
    #[serde(
        skip_serializing_if = "is_default_start_timeout",
        deserialize_with = "nullable_or::<_, DefaultStartTimeout>"
    )]
    pub start_timeout_sec: u64,
    /// Without `notify`, an instance counts as ready once it has stayed alive
    /// this long (seconds). Default 2.
    #[serde(
        skip_serializing_if = "is_default_settle",
        deserialize_with = "nullable_or::<_, DefaultSettle>"
    )]
    pub settle_sec: u64,
    /// Signal sent first when stopping an instance. Default `SIGTERM`.
    #[serde(skip_serializing_if = "is_default")]
    pub stop_signal: Signal,
    /// Time between the stop signal and SIGKILL (seconds). Default 10.
    #[serde(
        skip_serializing_if = "is_default_stop_timeout",
        deserialize_with = "nullable_or::<_, DefaultStopTimeout>"
    )]
    pub stop_timeout_sec: u64,

    /// Warnings found while parsing (unknown keys). Not part of the spec:
    /// ignored by `==`, never serialised. Read them with [`AppSpec::warnings`].
    #[serde(skip)]
    pub(crate) parse_warnings: ParseWarnings,
}

/// Default of `startLimitBurst`.
pub const DEFAULT_START_LIMIT_BURST: u32 = 5;
/// Default of `startLimitIntervalSec`.
pub const DEFAULT_START_LIMIT_INTERVAL_SEC: u64 = 10;
/// Default of `startTimeoutSec`.
pub const DEFAULT_START_TIMEOUT_SEC: u64 = 90;
/// Default of `settleSec`.
pub const DEFAULT_SETTLE_SEC: u64 = 2;
/// Default of `stopTimeoutSec`.
pub const DEFAULT_STOP_TIMEOUT_SEC: u64 = 10;

impl Default for AppSpec {
    fn default() -> Self {
        AppSpec {
            name: String::new(),
            tag: String::new(),
            command: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            nodes: Vec::new(),
            mode: Mode::Exec,
            landlock: LandlockSpec::default(),
            jail: JailSpec::default(),
            mounts: Vec::new(),
            nonet: NoNetSpec::default(),
            metrics: MetricsSpec::default(),
            user: String::new(),
            memory_mb: 0,
            memory_max_mb: 0,
            cpu_cores: 0.0,
            network_namespace_path: String::new(),
            cgroup_parent: String::new(),
            restart: RestartPolicy::OnFailure,
            start_limit_burst: DEFAULT_START_LIMIT_BURST,
            start_limit_interval_sec: DEFAULT_START_LIMIT_INTERVAL_SEC,
            pids_max: None,
            cpu_weight: None,
            capabilities: Vec::new(),
            notify: false,
            watchdog_sec: None,
            start_timeout_sec: DEFAULT_START_TIMEOUT_SEC,
            settle_sec: DEFAULT_SETTLE_SEC,
            stop_signal: Signal::default(),
            stop_timeout_sec: DEFAULT_STOP_TIMEOUT_SEC,
            parse_warnings: ParseWarnings::default(),
        }
    }
}

impl AppSpec {
    /// A spec with a name and a tag and every other field at its default
    /// (no nodes: it runs nowhere until you add some).
    pub fn new(name: impl Into<String>, tag: impl Into<String>) -> Self {
        AppSpec {
            name: name.into(),
            tag: tag.into(),
            ..AppSpec::default()
        }
    }

    /// Name of the binary object in the `app-binaries` object store:
    /// `<name>-<tag>-<os>-<arch>`, with Go's GOOS/GOARCH names
    /// (`linux`, `arm64`, `arm`, `amd64`).
    pub fn binary_object_name(&self, os: &str, arch: &str) -> String {
        format!("{}-{}-{os}-{arch}", self.name, self.tag)
    }
}

/// One environment variable. `value` and `valueFromSecret` are mutually
/// exclusive; both empty sets the variable to `""` (as in Go).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name; must not contain `=` or a space.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Literal value.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "scalar_string")]
    pub value: String,
    /// Key in the `narun-secrets` KV bucket; the daemon decrypts it at start.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub value_from_secret: String,
}

impl EnvVar {
    /// A variable with a literal value.
    pub fn value(name: impl Into<String>, value: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from_secret: String::new(),
        }
    }

    /// A variable whose value is the secret `secret` from `narun-secrets`.
    pub fn from_secret(name: impl Into<String>, secret: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: String::new(),
            value_from_secret: secret.into(),
        }
    }
}

/// One entry of `nodes`: a target (exactly one of `name` or `labels`) and a
/// replica count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSelector {
    /// Node ID (narund `node_id`, Go `-node-id`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_scalar_string"
    )]
    pub name: Option<String>,
    /// Selects every node whose labels include all of these (narun addition;
    /// Go node-runners reject such an entry). `{}` selects every node.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_labels"
    )]
    pub labels: Option<Labels>,
    /// Instances to run on each selected node; must be > 0.
    #[serde(deserialize_with = "nullable")]
    pub replicas: i64,
}

/// Label map of a [`NodeSelector`]. Values may be written as numbers or
/// booleans in YAML/TOML; they are kept as their text.
pub type Labels = BTreeMap<String, String>;

impl NodeSelector {
    /// Select the node with this ID.
    pub fn by_name(name: impl Into<String>, replicas: i64) -> Self {
        NodeSelector {
            name: Some(name.into()),
            labels: None,
            replicas,
        }
    }

    /// Select every node carrying all of these labels.
    pub fn by_labels<K, V>(labels: impl IntoIterator<Item = (K, V)>, replicas: i64) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        NodeSelector {
            name: None,
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            replicas,
        }
    }
}

/// Go execution mode. Unknown values are kept in [`Mode::Other`] so that
/// [`AppSpec::validate`] can report them with every other problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// Run the binary directly (the only mode narund supports).
    #[default]
    Exec,
    /// Go Linux Landlock sandbox.
    Landlock,
    /// Go FreeBSD jail.
    Jail,
    /// Anything else (invalid).
    Other(String),
}

impl Mode {
    /// The wire spelling (`exec`, `landlock`, `jail`, or the invalid text).
    pub fn as_str(&self) -> &str {
        match self {
            Mode::Exec => "exec",
            Mode::Landlock => "landlock",
            Mode::Jail => "jail",
            Mode::Other(s) => s,
        }
    }

    /// Parse a mode, case-insensitively; empty means `exec`.
    pub fn parse(s: &str) -> Mode {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "exec" => Mode::Exec,
            "landlock" => Mode::Landlock,
            "jail" => Mode::Jail,
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

/// A signal, written `SIGTERM`, `TERM`, `term` or `15`. Known signals are
/// kept in their canonical `SIGXXX` form; unknown text is kept as written so
/// that validation can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal(String);

impl Default for Signal {
    fn default() -> Self {
        Signal("SIGTERM".to_string())
    }
}

impl Signal {
    /// Parse a signal; unknown names are kept (and fail validation).
    pub fn parse(s: &str) -> Signal {
        match crate::linux::signal_name(s) {
            Some(name) => Signal(name),
            None => Signal(s.to_string()),
        }
    }

    /// The canonical name (`SIGTERM`), or the invalid text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The signal number (generic Linux numbering), `None` if unknown.
    pub fn number(&self) -> Option<i32> {
        crate::linux::signal_number(&self.0)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text: Option<String> = optional_scalar_string(d)?;
        Ok(match text {
            None => Signal::default(),
            Some(t) if t.trim().is_empty() => Signal::default(),
            Some(t) => Signal::parse(&t),
        })
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

/// A file placed in the instance work dir before start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    /// Path relative to the work dir; no `..`, not absolute.
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// Where the content comes from.
    #[serde(deserialize_with = "nullable")]
    pub source: MountSource,
}

/// Source of a [`MountSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MountSource {
    /// Object name in the `narun-files` object store (required).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub object_store: String,
}

/// Go network isolation: the app reaches host ports only through these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NoNetSpec {
    /// Host ports reachable from the app at `127.0.0.1:<port>`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub local_ports: Vec<PortForward>,
}

/// One forwarded port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortForward {
    /// Port, 1025..=65535 (Go rule).
    #[serde(deserialize_with = "nullable")]
    pub port: i64,
    /// `tcp` (default) or `udp`; lower-cased by normalisation.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub protocol: String,
}

/// Where the app serves metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSpec {
    /// Port the app serves metrics on; 0 = no metrics.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub port: i64,
    /// HTTP path; defaults to `/metrics` when `port` is set.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub path: String,
}

/// Parse warnings carried by an [`AppSpec`]. Always equal to each other so
/// that `==` compares specs, not how they were written.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParseWarnings(pub(crate) Vec<SpecWarning>);

impl PartialEq for ParseWarnings {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

// ---- serde helpers ----

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_default_start_limit_burst(v: &u32) -> bool {
    *v == DEFAULT_START_LIMIT_BURST
}
fn is_default_start_limit_interval(v: &u64) -> bool {
    *v == DEFAULT_START_LIMIT_INTERVAL_SEC
}
fn is_default_start_timeout(v: &u64) -> bool {
    *v == DEFAULT_START_TIMEOUT_SEC
}
fn is_default_settle(v: &u64) -> bool {
    *v == DEFAULT_SETTLE_SEC
}
fn is_default_stop_timeout(v: &u64) -> bool {
    *v == DEFAULT_STOP_TIMEOUT_SEC
}

/// A `null` (YAML `key:` with nothing after it) means the default, as in Go.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A field default that is not `T::default()`, for [`nullable_or`].
trait FieldDefault {
    type T;
    const DEFAULT: Self::T;
}

macro_rules! field_default {
    ($name:ident, $t:ty, $value:expr) => {
        struct $name;
        impl FieldDefault for $name {
            type T = $t;
            const DEFAULT: $t = $value;
        }
    };
}

field_default!(DefaultStartLimitBurst, u32, DEFAULT_START_LIMIT_BURST);
field_default!(
    DefaultStartLimitInterval,
    u64,
    DEFAULT_START_LIMIT_INTERVAL_SEC
);
field_default!(DefaultStartTimeout, u64, DEFAULT_START_TIMEOUT_SEC);
field_default!(DefaultSettle, u64, DEFAULT_SETTLE_SEC);
field_default!(DefaultStopTimeout, u64, DEFAULT_STOP_TIMEOUT_SEC);

/// Like [`nullable`] for fields whose default is not `T::default()`.
fn nullable_or<'de, D, C>(d: D) -> Result<C::T, D::Error>
where
    D: Deserializer<'de>,
    C: FieldDefault,
    C::T: Deserialize<'de>,
{
    Ok(Option::deserialize(d)?.unwrap_or(C::DEFAULT))
}

/// Visitor turning a scalar into text the way Go's yaml.v3 fills a string
/// field: strings as they are, integers and booleans as their text. Floats
/// are refused because their original spelling is lost (`1.10` would become
/// `1.1`): quote them.
struct ScalarString;

impl<'de> Visitor<'de> for ScalarString {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (quote numbers with a fractional part, e.g. \"1.10\")")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn optional_scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(ScalarString)
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(optional_scalar_string(d)?.unwrap_or_default())
}

/// A string deserialised with [`ScalarString`].
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar_string(d).map(Text)
    }
}

fn scalar_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<Text>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.0)
        .collect())
}

fn optional_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Labels>, D::Error> {
    Ok(Option::<BTreeMap<String, Text>>::deserialize(d)?
        .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
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

    #[test]
    fn mode_spellings() {
        assert_eq!(Mode::parse(""), Mode::Exec);
        assert_eq!(Mode::parse("EXEC"), Mode::Exec);
        assert_eq!(Mode::parse("landlock"), Mode::Landlock);
        assert_eq!(Mode::parse("jail"), Mode::Jail);
        assert_eq!(Mode::parse("docker"), Mode::Other("docker".into()));
    }

    #[test]
    fn signal_parse_keeps_unknown_text() {
        assert_eq!(Signal::parse("int").as_str(), "SIGINT");
        assert_eq!(Signal::parse("int").number(), Some(2));
        assert_eq!(Signal::parse("SIGFOO").as_str(), "SIGFOO");
        assert_eq!(Signal::parse("SIGFOO").number(), None);
    }
}
