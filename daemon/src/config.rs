//! narund configuration: `/etc/narun/narund.toml`, then environment, then flags.
//!
//! Every key is optional (see `daemon/config/narund.toml` for the defaults and
//! `docs/config.md` for the reference). Unknown keys are errors, reported with
//! the file, the key and the line, so a typo never silently falls back to a default.

use narun_wire::connect::NatsSettings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The part of narund's configuration the node and its instances work with (what
/// [`Config`] gives after flags, environment and validation).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// Runtime directory (tmpfs): per-run sd_notify sockets live in
    /// `<runtime_dir>/instances/<instance>/`.
    pub runtime_dir: PathBuf,
    /// Labels of this node (for `desired_replicas`).
    pub labels: BTreeMap<String, String>,
    /// The NATS settings apps receive in their environment.
    pub nats: NatsSettings,
    /// User of apps whose spec names none.
    pub default_user: String,
    /// Whether a spec may ask for `user: root`.
    pub allow_root: bool,
    /// Cap of the restart backoff.
    pub restart_backoff_max: std::time::Duration,
    /// Binary versions kept per app.
    pub keep_versions: usize,
    /// Configured cgroup root (None = next to narund's own cgroup).
    pub cgroup_root: Option<PathBuf>,
    /// Spool size of the log forwarder.
    pub log_spool_bytes: usize,
    /// Longer output lines are forwarded in pieces.
    pub log_max_line_bytes: usize,
    /// Most instances of one app on this node (`apps.max_replicas_per_node`).
    pub max_replicas_per_node: u32,
}

impl Default for Settings {
    /// The defaults of [`Config`] (what an empty `narund.toml` gives).
    fn default() -> Self {
        Settings::from_config(&Config::default())
    }
}

impl Settings {
    /// From narund's [`Config`].
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            node_id: c.node_id.clone(),
            data_dir: c.data_dir.clone(),
            runtime_dir: c.runtime_dir.clone(),
            labels: c.labels.clone(),
            nats: c.nats.clone(),
            default_user: c.apps.default_user.clone(),
            allow_root: c.apps.allow_root,
            restart_backoff_max: std::time::Duration::from_secs(
                c.apps.restart_backoff_max_sec.max(1),
            ),
            keep_versions: c.apps.keep_versions,
            cgroup_root: c.cgroup.root.clone(),
            log_spool_bytes: c.logs.spool_bytes,
            log_max_line_bytes: c.logs.max_line_bytes,
            max_replicas_per_node: c.apps.max_replicas_per_node,
        }
    }
}

/// The part of the configuration a `SIGHUP` reload changes while apps keep running
/// (`Node::reload`). Everything else in [`Settings`] needs a restart of
/// narund (node id, directories, cgroup root, NATS settings, spool size).
#[derive(Debug, Clone, PartialEq)]
pub struct Reloadable {
    /// Labels of this node (spec selectors).
    pub labels: BTreeMap<String, String>,
    pub default_user: String,
    pub allow_root: bool,
    pub restart_backoff_max: std::time::Duration,
}

impl Reloadable {
    /// The reloadable part of `c`.
    pub fn of(c: &Settings) -> Reloadable {
        Reloadable {
            labels: c.labels.clone(),
            default_user: c.default_user.clone(),
            allow_root: c.allow_root,
            restart_backoff_max: c.restart_backoff_max,
        }
    }
}

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/narun/narund.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node identity; empty = the host name.
    pub node_id: String,
    pub data_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub nats: NatsSettings,
    pub apps: AppsConfig,
    pub cgroup: CgroupConfig,
    pub logs: LogsConfig,
    pub secrets: SecretsConfig,
    /// `[memory]`: narund's own footprint (see [`crate::memory`]).
    pub memory: crate::memory::MemoryConfig,
    #[cfg(feature = "gateway")]
    pub gateway: narun_gateway::GatewayConfig,
    /// Kept as raw TOML in builds without the gateway, so a shared config file
    /// still loads; enabling it there is an error (see [`Config::validate`]).
    #[cfg(not(feature = "gateway"))]
    pub gateway: Option<toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: String::new(),
            data_dir: "/var/lib/narun".into(),
            runtime_dir: "/run/narun".into(),
            labels: BTreeMap::new(),
            nats: NatsSettings::default(),
            apps: AppsConfig::default(),
            cgroup: CgroupConfig::default(),
            logs: LogsConfig::default(),
            secrets: SecretsConfig::default(),
            memory: Default::default(),
            gateway: Default::default(),
        }
    }
}

/// `[apps]`: defaults for supervised apps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsConfig {
    /// User apps run as when their spec names none (never root by default).
    pub default_user: String,
    /// Whether a spec may say `user = "root"`. Off by default: an app runs as root only
    /// when both the device's config and the spec ask for it.
    pub allow_root: bool,
    /// Binary versions kept per app in the local cache.
    pub keep_versions: usize,
    /// Cap of the exponential restart backoff, seconds.
    pub restart_backoff_max_sec: u64,
    /// What `SIGTERM` does to the apps: stop them (default) or leave them running for the
    /// next narund to re-adopt (an upgrade of narund without restarting apps).
    pub on_exit: OnExit,
    /// Most instances one spec may ask for on this node (1..=1024, the spec's own limit
    /// of `replicas`). A spec asking for more is refused with a status event naming this
    /// setting; its previous version keeps running.
    pub max_replicas_per_node: u32,
}

/// Default of `apps.max_replicas_per_node`.
pub const DEFAULT_MAX_REPLICAS_PER_NODE: u32 = 64;

/// `apps.on_exit`: what narund does with its apps when it is asked to exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Stop every app gracefully and delete the node's heartbeat key.
    #[default]
    Stop,
    /// Exit and leave the apps running: their records (`state/instances.json`) and
    /// parked log pipes stay, and the next narund re-adopts them.
    Detach,
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            default_user: "narun-app".into(),
            allow_root: false,
            keep_versions: 3,
            restart_backoff_max_sec: 30,
            on_exit: OnExit::Stop,
            max_replicas_per_node: DEFAULT_MAX_REPLICAS_PER_NODE,
        }
    }
}

/// `[cgroup]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// Parent cgroup of app instances; empty = derived from narund's own cgroup.
    pub root: Option<PathBuf>,
}

pub use crate::logs::LogsConfig;

/// `[secrets]`: decrypting `valueFromSecret` env values (see [`crate::fetch::inputs`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// File holding the fleet's master key: standard base64 of 32 bytes (the Go runner's
    /// `-master-key-path`). Env `NARUN_MASTER_KEY_FILE` overrides it. Read at every start
    /// of an instance that uses a secret, so it may appear or change without a restart.
    pub master_key_file: PathBuf,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            master_key_file: crate::fetch::inputs::DEFAULT_MASTER_KEY_FILE.into(),
        }
    }
}

/// Environment variable overriding `secrets.master_key_file`.
pub const MASTER_KEY_FILE_ENV: &str = "NARUN_MASTER_KEY_FILE";

/// A configuration that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}:\n{problems}")]
    Invalid { path: PathBuf, problems: String },
}

/// Command-line and environment overrides (flags win over env, env over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub nats_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
}

impl Config {
    /// Load `path`. A missing file is an error only when `required` (the path
    /// was given explicitly); the default path may be absent, giving defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Parse TOML text; the error message names the key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Apply overrides, then fill the node id from the host name if unset.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.node_id {
            self.node_id = v.clone();
        }
        if let Some(v) = &o.nats_url {
            self.nats.url = v.clone();
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &o.runtime_dir {
            self.runtime_dir = v.clone();
        }
        if let Some(v) = std::env::var_os(MASTER_KEY_FILE_ENV).filter(|v| !v.is_empty()) {
            self.secrets.master_key_file = v.into();
        }
        if self.node_id.is_empty() {
            self.node_id = hostname();
        }
    }

    /// Check what deserialization cannot; all problems, one per line, each
    /// starting with its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !self.node_id.is_empty() && !valid_token(&self.node_id) {
            problems.push(format!(
                "node_id: {:?} must use only A-Z a-z 0-9 - _ (it is a NATS subject token and KV key)",
                self.node_id
            ));
        }
        for k in self.labels.keys() {
            if k.is_empty() || k.contains(char::is_whitespace) {
                problems.push(format!("labels: invalid label name {k:?}"));
            }
        }
        if let Err(e) = self.nats.validate() {
            problems.push(format!("nats: {e}"));
        }
        if self.apps.keep_versions == 0 {
            problems.push("apps.keep_versions: must be at least 1".into());
        }
        let max = self.apps.max_replicas_per_node;
        if max == 0 || i64::from(max) > narun_spec::MAX_REPLICAS {
            problems.push(format!(
                "apps.max_replicas_per_node: must be between 1 and {} (the spec limit of replicas), got {max}",
                narun_spec::MAX_REPLICAS
            ));
        }
        if self.logs.max_line_bytes < 128 {
            problems.push("logs.max_line_bytes: must be at least 128".into());
        }
        if self.logs.max_line_bytes > crate::logs::MAX_LINE_BYTES_LIMIT {
            problems.push(format!(
                "logs.max_line_bytes: must be at most {} (64 MiB, NATS's largest message)",
                crate::logs::MAX_LINE_BYTES_LIMIT
            ));
        }
        #[cfg(feature = "gateway")]
        if let (true, Err(errs)) = (self.gateway.enabled, self.gateway.validate()) {
            problems.push(errs.to_string().trim_end().to_owned());
        }
        #[cfg(not(feature = "gateway"))]
        if let Some(g) = &self.gateway
            && g.get("enabled").and_then(|v| v.as_bool()) == Some(true)
        {
            problems.push(
                "gateway.enabled: this narund was built without the `gateway` feature; \
                 install a build with it (cargo feature `gateway`) or set enabled = false"
                    .into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

fn valid_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host name (`uname -n`), or `localhost` if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_config_parses_to_the_defaults() {
        let text = include_str!("../config/narund.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        let d = Config::default();
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.nats, d.nats);
        assert_eq!(c.apps.keep_versions, d.apps.keep_versions);
        assert_eq!(c.logs.spool_bytes, d.logs.spool_bytes);
    }

    #[test]
    fn on_exit_defaults_to_stop_and_the_shipped_config_detaches() {
        assert_eq!(Config::default().apps.on_exit, OnExit::Stop);
        let shipped = Config::from_toml(include_str!("../config/narund.toml")).unwrap();
        assert_eq!(shipped.apps.on_exit, OnExit::Detach);
        let c = Config::from_toml("[apps]\non_exit = \"stop\"\n").unwrap();
        assert_eq!(c.apps.on_exit, OnExit::Stop);
        assert!(Config::from_toml("[apps]\non_exit = \"later\"\n").is_err());
    }

    #[test]
    fn max_replicas_per_node_defaults_to_64_and_is_bounded() {
        assert_eq!(Config::default().apps.max_replicas_per_node, 64);
        let shipped = Config::from_toml(include_str!("../config/narund.toml")).unwrap();
        assert_eq!(shipped.apps.max_replicas_per_node, 64);
        let c = Config::from_toml("[apps]\nmax_replicas_per_node = 1024\n").unwrap();
        c.validate().unwrap();
        assert_eq!(Settings::from_config(&c).max_replicas_per_node, 1024);
        for bad in [0, 1025] {
            let c = Config::from_toml(&format!("[apps]\nmax_replicas_per_node = {bad}\n")).unwrap();
            let e = c.validate().unwrap_err();
            assert!(
                e.contains("apps.max_replicas_per_node: must be between 1 and 1024"),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_the_key_and_line() {
        let err =
            Config::from_toml("node_id = \"a\"\n[nats]\nurl = \"nats://x\"\nurll = \"typo\"\n")
                .unwrap_err();
        assert!(err.contains("urll"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let c = Config::from_toml(
            "node_id = \"has.dot\"\n[apps]\nkeep_versions = 0\n[nats]\nuser = \"u\"\ncreds = \"/c\"\n\
             [logs]\nmax_line_bytes = 1073741824\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("node_id"), "{err}");
        assert!(err.contains("apps.keep_versions"), "{err}");
        assert!(
            err.contains("logs.max_line_bytes: must be at most"),
            "{err}"
        );
        assert!(err.contains("nats:"), "{err}");
    }

    #[test]
    fn overrides_win_and_node_id_defaults_to_hostname() {
        let mut c = Config::default();
        c.apply(&Overrides {
            nats_url: Some("nats://10.1.1.1:4222".into()),
            ..Default::default()
        });
        assert_eq!(c.nats.url, "nats://10.1.1.1:4222");
        assert_eq!(c.node_id, hostname());
    }

    #[test]
    fn secrets_section() {
        let c = Config::from_toml("[secrets]\nmaster_key_file = \"/k\"\n").unwrap();
        assert_eq!(c.secrets.master_key_file, PathBuf::from("/k"));
        assert_eq!(
            Config::default().secrets.master_key_file,
            PathBuf::from("/etc/narun/master.key")
        );
        assert!(Config::from_toml("[secrets]\nmaster_key = \"x\"\n").is_err());
        let shipped = Config::from_toml(include_str!("../config/narund.toml")).unwrap();
        assert_eq!(
            shipped.secrets.master_key_file,
            Config::default().secrets.master_key_file
        );
    }

    #[test]
    fn missing_default_file_gives_defaults_but_explicit_path_must_exist() {
        let p = Path::new("/nonexistent/narund.toml");
        assert!(Config::load(p, false).is_ok());
        let e = Config::load(p, true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/narund.toml"), "{e}");
    }
}
