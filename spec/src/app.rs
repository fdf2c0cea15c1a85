//! The app spec itself: [`AppSpec`], the defaults of its fields and the parse
//! warnings it carries. The types of its blocks live in their own modules
//! (see the crate doc).
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

use serde::{Deserialize, Serialize};

use crate::command::CommandUnitSpec;
use crate::inputs::{EnvVar, MountSpec};
use crate::logs::LogOverflow;
use crate::mode::{JailSpec, LandlockSpec, Mode};
use crate::network::{MetricsSpec, NoNetSpec};
use crate::restart::RestartPolicy;
use crate::scale::ScaleToZero;
use crate::select::NodeSelector;
use crate::serde_helpers::{
    FieldDefault, is_default, nullable, nullable_or, scalar_string, scalar_strings,
};
use crate::signal::Signal;
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
    /// Execution mode. Defaults to `exec`; narund runs `exec` and `command`.
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
    /// Hard limit of open files (`RLIMIT_NOFILE`, systemd's `LimitNOFILE=`), 1 to
    /// [`MAX_NOFILE`](crate::limits::MAX_NOFILE); the soft limit stays 1024 (or this,
    /// if lower), as for systemd services. Absent = the node's `apps.nofile_max`; a
    /// value above it does not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nofile_max: Option<u64>,
    /// What narund does when the app's share of the node's log spool is full: `drop` (the
    /// default: drop the oldest lines and count them exactly) or `block` (stop reading the
    /// app's output, so its writes wait; no line lost).
    #[serde(skip_serializing_if = "is_default")]
    pub log_overflow: LogOverflow,
    /// `job`: the app runs to completion, on `schedule` and on `narunctl run`, instead of
    /// running continuously (`service`, the default). See `docs/jobs.md`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub run_mode: String,
    /// When a job runs: a cron expression ([`crate::Cron`]); empty = only on `narunctl run`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub schedule: String,
    /// The IANA zone `schedule` is read in (`Europe/Paris`), from the node's
    /// `/usr/share/zoneinfo`; empty = UTC.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub timezone: String,
    /// A job occurrence while the previous run still runs: `forbid` (skip, the default),
    /// `replace` or `allow`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub concurrency: String,
    /// A run missed while narund was down runs once at its start if it is at most this
    /// old (seconds); absent = missed runs are skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_deadline_sec: Option<u64>,
    /// Who runs a job occurrence: every selected `node` (the default) or one node of the
    /// `fleet`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub scope: String,
    /// Attempts of one job occurrence (a failed attempt is retried with backoff); absent =
    /// [`DEFAULT_MAX_ATTEMPTS`](crate::DEFAULT_MAX_ATTEMPTS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The SHA-256 digest each binary object must have, by object name
    /// (`"hello-v1-linux-amd64": "SHA-256=<base64url>"`, the object store's form).
    /// `narunctl deploy` writes it from the objects it uploaded or found, so a binary
    /// replaced under the same tag (`deploy --force`) changes the spec and nodes switch to
    /// it, and a node never runs an object whose digest is not the one the spec names.
    /// Keyed by object name, so an entry only ever applies to the tag it was written
    /// for: a spec whose tag is changed without it (a rollback to an older tag) pins
    /// nothing. No entry for a node's object: whatever the object holds (Go behaviour;
    /// Go node-runners ignore this key).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub binary_digests: BTreeMap<String, String>,
    /// `mode = "command"`: how narund runs the binary per request (concurrency, queue,
    /// timeout, output bounds, header block); see [`CommandUnitSpec`].
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub command_unit: CommandUnitSpec,
    /// Services that must answer discovery pings before narund starts an instance
    /// (`after = ["db"]`); see [`crate::deps`].
    #[serde(
        skip_serializing_if = "is_default",
        deserialize_with = "scalar_strings"
    )]
    pub after: Vec<String>,
    /// How long an instance waits for the `after` services before it starts anyway
    /// (seconds; 0 = no end). Default [`DEFAULT_AFTER_TIMEOUT_SEC`](crate::deps::DEFAULT_AFTER_TIMEOUT_SEC).
    #[serde(
        skip_serializing_if = "is_default_after_timeout",
        deserialize_with = "nullable_or::<_, DefaultAfterTimeout>"
    )]
    pub after_timeout_sec: u64,
    /// Services the app calls: its minted NATS user may send them requests; see
    /// [`crate::deps`].
    #[serde(
        skip_serializing_if = "is_default",
        deserialize_with = "scalar_strings"
    )]
    pub calls: Vec<String>,
    /// Stop the instances after `idleSec` seconds without a request; a gateway request
    /// wakes them ([`ScaleToZero`]). Absent = always running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,

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
            nofile_max: None,
            log_overflow: LogOverflow::Drop,
            run_mode: String::new(),
            schedule: String::new(),
            timezone: String::new(),
            concurrency: String::new(),
            starting_deadline_sec: None,
            scope: String::new(),
            max_attempts: None,
            binary_digests: BTreeMap::new(),
            command_unit: CommandUnitSpec::default(),
            after: Vec::new(),
            after_timeout_sec: crate::deps::DEFAULT_AFTER_TIMEOUT_SEC,
            calls: Vec::new(),
            scale_to_zero: None,
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

    /// The digest [`binary_digests`](Self::binary_digests) names for this spec's object of
    /// `<os>/<arch>` ([`binary_object_name`](Self::binary_object_name)), if any.
    pub fn binary_digest(&self, os: &str, arch: &str) -> Option<&str> {
        self.binary_digests
            .get(&self.binary_object_name(os, arch))
            .map(String::as_str)
    }
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

// ---- serde defaults of the fields whose default is not `T::default()` ----

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
fn is_default_after_timeout(v: &u64) -> bool {
    *v == crate::deps::DEFAULT_AFTER_TIMEOUT_SEC
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
field_default!(
    DefaultAfterTimeout,
    u64,
    crate::deps::DEFAULT_AFTER_TIMEOUT_SEC
);
