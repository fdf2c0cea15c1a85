//! The narun app spec: what operators deploy and what narund runs.
//!
//! An app spec names a binary (`name` + `tag`), where it runs (`nodes`, by
//! node ID or by labels), how many instances per node (`replicas`) and how it
//! is run (environment, user, capabilities, cgroup limits, restart policy,
//! readiness, stop signal). `narunctl` writes it as JSON to the KV bucket
//! `app-configs` under the app name; `narund` reads it from there.
//!
//! The field names are those of the Go narun `ServiceSpec` (camelCase,
//! case-sensitive), so specs move both ways between Go and Rust tools; see
//! `docs/spec.md` for the reference of every field.
//!
//! # Lifecycle of a spec
//!
//! ```
//! use std::collections::BTreeMap;
//! use narun_spec::AppSpec;
//!
//! // 1. Parse (TOML, YAML or JSON). Values are normalised, unknown keys
//! //    become warnings.
//! let spec = AppSpec::from_toml_str(r#"
//!     name = "hello"
//!     tag = "v1"
//!     capabilities = ["net_bind_service"]
//!     stopSignal = "INT"
//!     [[nodes]]
//!     labels = { role = "edge" }
//!     replicas = 2
//! "#).unwrap();
//! assert_eq!(spec.capabilities, ["CAP_NET_BIND_SERVICE"]);
//!
//! // 2. Validate: every problem at once, each with its field path.
//! spec.validate().unwrap();
//! spec.supported_on_narund().unwrap();
//!
//! // 3. Store: JSON for the KV bucket, read back identically.
//! let stored = spec.to_kv_json();
//! assert_eq!(AppSpec::from_kv_bytes(&stored).unwrap(), spec);
//!
//! // 4. On a node: how many instances to run here.
//! let labels = BTreeMap::from([("role".to_string(), "edge".to_string())]);
//! assert_eq!(spec.desired_replicas("node-7", &labels), 2);
//!
//! // 5. Detect changes.
//! assert_eq!(spec.config_hash().len(), 16);
//! ```
//!
//! # Where things are
//!
//! | file | what it owns |
//! |---|---|
//! | `app.rs` | [`AppSpec`]: its fields, their defaults (`DEFAULT_*`), [`AppSpec::new`] |
//! | `select.rs` | where instances run: [`NodeSelector`], [`Labels`], [`AppSpec::desired_replicas`] |
//! | `restart.rs` | [`RestartPolicy`] (systemd `Restart=`) and [`ExitKind`] |
//! | `schedule.rs` | scheduled runs: [`RunMode`], [`Cron`] expressions over [`Civil`] times, [`Concurrency`], [`Scope`] |
//! | `signal.rs` | [`Signal`], the stop signal |
//! | `logs.rs` | [`LogOverflow`]: drop or block when the app's log spool share is full |
//! | `mode.rs` | [`Mode`] and Go's Landlock and jail settings (kept, not run) |
//! | `deps.rs` | dependencies between services: `after`, `afterTimeoutSec`, `calls` |
//! | `scale.rs` | [`ScaleToZero`]: the `scaleToZero` block (stop idle instances, wake on request) |
//! | `command.rs` | [`CommandUnitSpec`]: the `commandUnit` block of `mode = "command"` apps |
//! | `inputs.rs` | environment variables and secrets ([`EnvVar`]), mounted files ([`MountSpec`]) |
//! | `network.rs` | Go `nonet` port forwards ([`NoNetSpec`]) and the metrics endpoint ([`MetricsSpec`]) |
//! | `serde_helpers.rs` | Go's `omitempty`, `null` as the default, scalars read as text |
//! | `parse.rs` | reading TOML, YAML and JSON, normalising, unknown-key warnings |
//! | `validate.rs` | every problem at once, with field paths; what narund supports |
//! | `limits.rs` | the limits (`MAX_*`) and the linear pre-scan of size and nesting before parsing |
//! | `hash.rs` | the KV encoding, the config and run hashes |
//! | `linux.rs` | capability and signal names and numbers |
#![forbid(unsafe_code)]

mod app;
mod command;
pub mod deps;
mod hash;
mod inputs;
mod limits;
mod linux;
mod logs;
mod mode;
mod network;
mod parse;
mod restart;
mod scale;
mod schedule;
mod select;
mod serde_helpers;
mod signal;
mod validate;

pub use app::{
    AppSpec, DEFAULT_SETTLE_SEC, DEFAULT_START_LIMIT_BURST, DEFAULT_START_LIMIT_INTERVAL_SEC,
    DEFAULT_START_TIMEOUT_SEC, DEFAULT_STOP_TIMEOUT_SEC,
};
pub use command::{
    CommandUnitSpec, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_STDERR_BYTES, DEFAULT_QUEUE_TIMEOUT_SEC, DEFAULT_RUN_TIMEOUT_SEC, MAX_CONCURRENT,
    MAX_OUTPUT_BYTES, MAX_QUEUED, MAX_STDERR_BYTES,
};
pub use hash::fnv1a64;
pub use inputs::{EnvVar, MountSource, MountSpec};
pub use limits::{
    MAX_ARGS, MAX_CAPABILITIES, MAX_CPU_CORES, MAX_DURATION_SEC, MAX_ENV, MAX_ENV_NAME_LEN,
    MAX_EXEC_BYTES, MAX_LABEL_LEN, MAX_LABELS, MAX_LIST_ITEMS, MAX_MEMORY_MB, MAX_MOUNTS,
    MAX_NESTING_DEPTH, MAX_NODES, MAX_NOFILE, MAX_OBJECT_NAME_LEN, MAX_PATH_LEN, MAX_PIDS,
    MAX_REPLICAS, MAX_SPEC_BYTES, MAX_USER_LEN, MAX_VALUE_BYTES,
};
pub use linux::{
    CAPABILITIES, capability_number, normalize_capability, signal_name, signal_number,
};
pub use logs::LogOverflow;
pub use mode::{JailSpec, LandlockPath, LandlockSpec, Mode};
pub use network::{MetricsSpec, NoNetSpec, PortForward};
pub use parse::{Format, Location, ParseError, SpecLoadError};
pub use restart::{ExitKind, RestartPolicy};
pub use scale::{MAX_IDLE_SEC, MIN_IDLE_SEC, ScaleToZero};
pub use schedule::{
    Civil, Concurrency, Cron, CronError, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS, MAX_SCHEDULE_LEN,
    RunMode, Scope, days_in_month,
};
pub use select::{Labels, NodeSelector};
pub use signal::Signal;
pub use validate::{
    MAX_BINARY_DIGESTS, MAX_CPU_WEIGHT, MAX_NAME_LEN, MAX_TAG_LEN, SpecError, SpecErrors,
    SpecWarning,
};
