//! narund configuration: `/etc/narun/narund.toml`, then environment, then flags.
//!
//! Every key is optional (see `daemon/config/narund.toml` for the defaults and
//! `docs/config.md` for the reference). Unknown keys are errors, reported with
//! the file, the key and the line, so a typo never silently falls back to a default.

use narun_wire::connect::NatsSettings;
use serde::{Deserialize, Serialize};
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
    /// User of apps whose spec names none; empty = a dynamic user per app.
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
    /// Ids of dynamic users (first, last), both included.
    pub dynamic_uid_range: (u32, u32),
    /// The NATS identity apps get (`[apps] nats_*`, see [`crate::instance::nats_identity`]).
    pub app_nats: AppNats,
    /// `[deploy] trusted_keys`: when not empty, only binaries signed by one of these run.
    pub trusted_keys: narun_wire::signing::TrustedKeys,
    /// Capabilities a spec may ask for (`CAP_X` spelling); see [`AppsConfig::allowed_capabilities`].
    pub allowed_capabilities: Vec<String>,
    /// Whether `#!` scripts run besides ELF executables ([`AppsConfig::allow_scripts`]).
    pub allow_scripts: bool,
    /// Most instances of one app on this node (`apps.max_replicas_per_node`).
    pub max_replicas_per_node: u32,
    /// Hard `RLIMIT_NOFILE` of apps whose spec has no `nofileMax`, and the most one may
    /// ask for (`apps.nofile_max`; see [`crate::nofile`]).
    pub nofile_max: u64,
}

/// Where apps' own NATS credentials come from: a creds file per app the operator
/// provisions, else a user JWT narund mints with an account signing key, else none (the app
/// connects anonymously). Apps never get narund's own credentials.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppNats {
    /// `<dir>/<app>.creds` is handed to app `<app>`.
    pub creds_dir: Option<PathBuf>,
    /// File with an account nkey seed (`SA…`) narund signs user JWTs with.
    pub signing_key: Option<PathBuf>,
    /// The account's public key (`A…`) when `signing_key` is one of its signing keys
    /// rather than the account's own key.
    pub account: Option<String>,
}

impl AppNats {
    /// Whether apps get credentials at all.
    pub fn configured(&self) -> bool {
        self.creds_dir.is_some() || self.signing_key.is_some()
    }
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
            dynamic_uid_range: c.apps.dynamic_uid_range,
            app_nats: AppNats {
                creds_dir: c.apps.nats_creds_dir.clone(),
                signing_key: c.apps.nats_account_signing_key.clone(),
                account: c.apps.nats_account.clone(),
            },
            // Invalid keys are refused before (Config::validate, Daemon::new).
            trusted_keys: c.deploy.trusted_keys().unwrap_or_default(),
            allowed_capabilities: c.apps.normalized_capabilities(),
            allow_scripts: c.apps.allow_scripts,
            max_replicas_per_node: c.apps.max_replicas_per_node,
            nofile_max: c.apps.nofile_max,
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
    /// Capabilities a spec may ask for (`CAP_X` spelling).
    pub allowed_capabilities: Vec<String>,
    /// `apps.nofile_max`: the hard open files limit apps get, and the most they may ask for.
    pub nofile_max: u64,
}

impl Reloadable {
    /// The reloadable part of `c`.
    pub fn of(c: &Settings) -> Reloadable {
        Reloadable {
            labels: c.labels.clone(),
            default_user: c.default_user.clone(),
            allow_root: c.allow_root,
            restart_backoff_max: c.restart_backoff_max,
            allowed_capabilities: c.allowed_capabilities.clone(),
            nofile_max: c.nofile_max,
        }
    }
}

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/narun/narund.toml";

/// The whole configuration file (serialized back as the effective settings that
/// `narund --check-config` prints).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node identity; empty = from `node_id_file`, `/etc/machine-id` or the host name
    /// ([`narun_wire::node_id`]).
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
    /// `[deploy]`: who may deploy binaries to this node.
    pub deploy: DeployConfig,
    /// `[events]`: the optional status-event history (see [`crate::node::history`]).
    pub events: crate::node::history::EventsConfig,
    /// `[metrics]`: narund's own `/metrics` listener (off by default; [`crate::metrics`]).
    pub metrics: crate::metrics::MetricsConfig,
    /// The per-device provisioning file read when `node_id` is empty (first line = the node
    /// id; missing or blank: an id derived from `/etc/machine-id`, then the host name).
    pub node_id_file: PathBuf,
    /// Where `node_id` came from, filled in by [`Config::apply`] (not a key of the file).
    #[serde(skip)]
    pub node_id_origin: NodeIdOrigin,
    /// `[dashboard]`: the web dashboard on the gateway's listener (docs/dashboard.md).
    #[cfg(all(feature = "gateway", feature = "dashboard"))]
    pub dashboard: crate::dashboard::config::DashboardConfig,
    /// Kept as raw TOML in builds without the dashboard, so a shared config file still
    /// loads (and is ignored).
    #[cfg(not(all(feature = "gateway", feature = "dashboard")))]
    pub dashboard: Option<toml::Value>,
}

/// Where the effective `node_id` came from (see [`narun_wire::node_id`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NodeIdOrigin {
    /// `node_id`, `--node-id` or `NARUND_NODE_ID`.
    #[default]
    Configured,
    /// The provisioning file, `/etc/machine-id` or the host name.
    Derived(narun_wire::node_id::NodeIdSource),
    /// `node_id` is empty and `node_id_file` exists but holds no valid node id: a
    /// configuration error ([`Config::validate`] reports it).
    BadFile(narun_wire::node_id::NodeIdFileError),
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
            deploy: DeployConfig::default(),
            events: Default::default(),
            metrics: Default::default(),
            node_id_file: narun_wire::node_id::DEFAULT_NODE_ID_FILE.into(),
            node_id_origin: NodeIdOrigin::Configured,
            dashboard: Default::default(),
        }
    }
}

/// `[apps]`: defaults for supervised apps.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsConfig {
    /// User apps run as when their spec names none. Empty (the default): every such app
    /// runs under a dynamic uid/gid of its own (`crate::privileges::dynamic`).
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
    /// `[first, last]`: the uids/gids of dynamic users (both included); default systemd's
    /// `[61184, 65519]`.
    pub dynamic_uid_range: (u32, u32),
    /// Directory of per-app NATS credentials: `<dir>/<app>.creds` is handed to app `<app>`
    /// (copied, readable by the app only). Wins over `nats_account_signing_key`.
    pub nats_creds_dir: Option<PathBuf>,
    /// File holding an account nkey seed (`SA…`): narund mints a user JWT per instance,
    /// allowed only the app's own service subjects, `$SRV` discovery for it, replies and
    /// its own inboxes `_INBOX_<app>.>`, requests to the services of its spec's `calls`
    /// and `after`, and its own locks in `narun-locks`; valid 24 h, renewed after 16 h.
    pub nats_account_signing_key: Option<PathBuf>,
    /// Public key (`A…`) of the account, when `nats_account_signing_key` is a signing key
    /// of the account rather than the account's own key.
    pub nats_account: Option<String>,
    /// The capabilities a spec may ask for (any spelling narun-spec accepts:
    /// `CAP_NET_BIND_SERVICE`, `net_bind_service`). A spec asking for one outside this list
    /// does not start (reason `capability`). The root-equivalent ones
    /// ([`crate::privileges::ROOT_EQUIVALENT_CAPS`]) additionally need `allow_root = true`.
    pub allowed_capabilities: Vec<String>,
    /// Also run `#!` scripts (the kernel starts their interpreter). Off by default: narund
    /// runs ELF executables of this node's machine only. For development and tests.
    pub allow_scripts: bool,
    /// Most instances one spec may ask for on this node (1..=1024, the spec's own limit
    /// of `replicas`). A spec asking for more is refused with a status event naming this
    /// setting; its previous version keeps running.
    pub max_replicas_per_node: u32,
    /// Hard limit of open files (`RLIMIT_NOFILE`) of an app whose spec has no `nofileMax`,
    /// and the most a spec may ask for (1..=2^30; default 524288, systemd's default hard
    /// limit). No app gets more than narund's own hard limit; every app starts with the
    /// soft limit 1024 ([`crate::nofile`]). A spec asking for more does not start (reason
    /// `rlimit`, naming this setting).
    pub nofile_max: u64,
}

impl AppsConfig {
    /// [`Self::allowed_capabilities`] in the `CAP_X` spelling.
    pub fn normalized_capabilities(&self) -> Vec<String> {
        self.allowed_capabilities
            .iter()
            .map(|c| narun_spec::normalize_capability(c))
            .collect()
    }
}

/// Default of `apps.max_replicas_per_node`.
pub const DEFAULT_MAX_REPLICAS_PER_NODE: u32 = 64;

/// `apps.on_exit`: what narund does with its apps when it is asked to exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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
            default_user: String::new(),
            allow_root: false,
            keep_versions: 3,
            restart_backoff_max_sec: 30,
            on_exit: OnExit::Stop,
            dynamic_uid_range: crate::privileges::dynamic::DEFAULT_RANGE,
            nats_creds_dir: None,
            nats_account_signing_key: None,
            nats_account: None,
            allowed_capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
            allow_scripts: false,
            max_replicas_per_node: DEFAULT_MAX_REPLICAS_PER_NODE,
            nofile_max: crate::nofile::DEFAULT_NOFILE_MAX,
        }
    }
}

/// `[cgroup]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// Parent cgroup of app instances; empty = derived from narund's own cgroup.
    pub root: Option<PathBuf>,
    /// Run apps in cgroups (default). `false` is the one way to run them without (no
    /// limits, stop by process group); with `true` a root narund cannot use is an error.
    pub enabled: bool,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            root: None,
            enabled: true,
        }
    }
}

impl CgroupConfig {
    /// The configured root; `None` when unset or empty (derived from narund's own cgroup).
    pub fn configured_root(&self) -> Option<&Path> {
        self.root.as_deref().filter(|p| !p.as_os_str().is_empty())
    }
}

pub use crate::logs::LogsConfig;

/// `[secrets]`: decrypting `valueFromSecret` env values (see [`crate::fetch::inputs`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// File holding the fleet's master key: standard base64 of 32 bytes (the Go runner's
    /// `-master-key-path`). Env `NARUN_MASTER_KEY_FILE` overrides it. Read at every start
    /// of an instance that uses a secret, so it may appear or change without a restart.
    pub master_key_file: PathBuf,
    /// Hand out secrets that name no apps (written by the Go CLI or an older narunctl) to
    /// any app that references them. Off by default: such a secret fails the start with
    /// reason `secret` until it is set again with `narunctl secret set NAME --app APP`.
    /// Applied on reload (SIGHUP).
    pub allow_unscoped: bool,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            master_key_file: crate::fetch::inputs::DEFAULT_MASTER_KEY_FILE.into(),
            allow_unscoped: false,
        }
    }
}

/// `[deploy]`: authenticated deploys (docs/config.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Public nkeys (`U…`, `A…`) whose signatures this node accepts (`narunctl deploy
    /// --sign`). Empty (the default): deploys are not authenticated, any binary whose content
    /// matches its object digest runs (as with the Go runner), and narund warns at start.
    pub trusted_keys: Vec<String>,
}

impl DeployConfig {
    /// The parsed [`narun_wire::signing::TrustedKeys`]; an error names the bad key.
    pub fn trusted_keys(
        &self,
    ) -> Result<narun_wire::signing::TrustedKeys, narun_wire::signing::KeyError> {
        narun_wire::signing::TrustedKeys::parse(self.trusted_keys.iter().map(String::as_str))
    }
}

/// Environment variable overriding `secrets.master_key_file`.
pub const MASTER_KEY_FILE_ENV: &str = "NARUN_MASTER_KEY_FILE";

/// A configuration that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message (not a `source`, which `{:#}` would print again).
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
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
    /// Load `path` ([`read`](Self::read)) and [`validate`](Self::validate) it.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let config = Self::read(path, required)?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Read and parse `path`, without validating the values (narund validates once flags
    /// and environment are applied: [`crate::preflight::check`]). A missing file is an
    /// error only when `required` (the path was given explicitly); the default path may be
    /// absent, giving defaults.
    pub fn read(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parse TOML text; the error message names the key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Apply overrides, then fill the node id if unset: from `node_id_file`, else derived
    /// from `/etc/machine-id`, else the host name ([`narun_wire::node_id::resolve`]).
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
            match narun_wire::node_id::resolve(&self.node_id_file) {
                Ok(r) => {
                    self.node_id = r.id;
                    self.node_id_origin = NodeIdOrigin::Derived(r.source);
                }
                Err(e) => self.node_id_origin = NodeIdOrigin::BadFile(e),
            }
        }
    }

    /// Check what deserialization cannot; all problems, one per line, each
    /// starting with its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let NodeIdOrigin::BadFile(e) = &self.node_id_origin {
            problems.push(format!("node_id_file: {e} (node_id is not set)"));
        }
        if self.node_id_file.as_os_str().is_empty() || self.node_id_file.is_relative() {
            problems.push(format!(
                "node_id_file: {:?} is not an absolute path",
                self.node_id_file
            ));
        }
        // Empty: derived, filled in by `apply`.
        if !self.node_id.is_empty()
            && let Some(p) = narun_wire::names::node_id_problem(&self.node_id)
        {
            problems.push(format!("node_id: {p}"));
        }
        for (key, dir) in [
            ("data_dir", &self.data_dir),
            ("runtime_dir", &self.runtime_dir),
        ] {
            if dir.as_os_str().is_empty() {
                problems.push(format!("{key}: is empty; set an absolute path"));
            } else if !dir.is_absolute() {
                problems.push(format!(
                    "{key}: {} is a relative path (it would depend on narund's working \
                     directory); set an absolute path",
                    dir.display()
                ));
            }
        }
        if !self.cgroup.enabled && self.cgroup.configured_root().is_some() {
            problems.push(
                "cgroup.root: is set, but cgroup.enabled = false runs apps without cgroups; \
                 remove one of them"
                    .into(),
            );
        }
        for k in self.labels.keys() {
            if k.is_empty() || k.contains(char::is_whitespace) {
                problems.push(format!("labels: invalid label name {k:?}"));
            }
        }
        if let Err(e) = self.nats.validate() {
            problems.push(format!("nats: {e}"));
        }
        problems.extend(self.check_app_nats());
        if self.apps.keep_versions == 0 {
            problems.push("apps.keep_versions: must be at least 1".into());
        }
        let (first, last) = self.apps.dynamic_uid_range;
        if first == 0 || first > last || last == u32::MAX {
            problems.push(format!(
                "apps.dynamic_uid_range: [{first}, {last}] must be [first, last] with \
                 1 <= first <= last < 4294967295 (default [61184, 65519])"
            ));
        }
        if let Err(e) = self.deploy.trusted_keys() {
            problems.push(format!("deploy.trusted_keys: {e}"));
        }
        for (i, cap) in self.apps.allowed_capabilities.iter().enumerate() {
            if narun_spec::capability_number(cap).is_none() {
                problems.push(format!(
                    "apps.allowed_capabilities[{i}]: unknown Linux capability {cap:?} \
                     (e.g. CAP_NET_BIND_SERVICE)"
                ));
            }
        }
        let max = self.apps.max_replicas_per_node;
        if max == 0 || i64::from(max) > narun_spec::MAX_REPLICAS {
            problems.push(format!(
                "apps.max_replicas_per_node: must be between 1 and {} (the spec limit of replicas), got {max}",
                narun_spec::MAX_REPLICAS
            ));
        }
        let nofile = self.apps.nofile_max;
        if nofile == 0 || nofile > narun_spec::MAX_NOFILE {
            problems.push(format!(
                "apps.nofile_max: must be between 1 and {} (the spec limit of nofileMax), got {nofile}",
                narun_spec::MAX_NOFILE
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
        problems.extend(self.metrics.problems());
        #[cfg(all(feature = "gateway", feature = "dashboard"))]
        problems.extend(self.dashboard.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

impl Config {
    /// `[apps] nats_*`: an absolute creds dir, a readable account seed, a valid account key.
    fn check_app_nats(&self) -> Vec<String> {
        let a = &self.apps;
        let mut problems = Vec::new();
        if let Some(d) = &a.nats_creds_dir
            && !d.is_absolute()
        {
            problems.push(format!(
                "apps.nats_creds_dir: {} must be an absolute path",
                d.display()
            ));
        }
        if let Some(k) = &a.nats_account_signing_key
            && let Err(e) = crate::instance::nats_identity::load_signing_key(k)
        {
            problems.push(format!("apps.nats_account_signing_key: {e}"));
        }
        match (&a.nats_account, &a.nats_account_signing_key) {
            (Some(_), None) => problems.push(
                "apps.nats_account: set only together with apps.nats_account_signing_key".into(),
            ),
            (Some(acc), Some(_))
                if !acc.starts_with('A') || nkeys::KeyPair::from_public_key(acc).is_err() =>
            {
                problems.push(format!(
                    "apps.nats_account: {acc:?} is not an account public key (A…, 56 characters)"
                ))
            }
            _ => {}
        }
        problems
    }
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
    fn dynamic_users_are_the_default() {
        let d = Config::default();
        assert_eq!(d.apps.default_user, "");
        assert_eq!(d.apps.dynamic_uid_range, (61184, 65519));
        let shipped = Config::from_toml(include_str!("../config/narund.toml")).unwrap();
        assert_eq!(shipped.apps.default_user, "");
        assert_eq!(shipped.apps.dynamic_uid_range, (61184, 65519));
        let c = Config::from_toml("[apps]\ndynamic_uid_range = [70000, 70009]\n").unwrap();
        assert_eq!(c.apps.dynamic_uid_range, (70000, 70009));
        c.validate().unwrap();
        for bad in ["[0, 10]", "[10, 9]", "[1, 4294967295]"] {
            let c = Config::from_toml(&format!("[apps]\ndynamic_uid_range = {bad}\n")).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.contains("apps.dynamic_uid_range"), "{e}");
        }
        assert!(Config::from_toml("[apps]\ndynamic_uid_range = [1]\n").is_err());
    }

    #[test]
    fn deploy_trusted_keys_parse_and_bad_keys_are_named() {
        assert!(Config::default().deploy.trusted_keys.is_empty());
        assert!(Settings::default().trusted_keys.is_empty());
        let key = narun_wire::signing::Signer::generate();
        let c = Config::from_toml(&format!(
            "[deploy]\ntrusted_keys = [\"{}\"]\n",
            key.public_key()
        ))
        .unwrap();
        c.validate().unwrap();
        let s = Settings::from_config(&c);
        assert_eq!(
            s.trusted_keys.public_keys().collect::<Vec<_>>(),
            [key.public_key()]
        );
        // A seed by mistake: refused without printing it.
        let c =
            Config::from_toml(&format!("[deploy]\ntrusted_keys = [\"{}\"]\n", key.seed())).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.starts_with("deploy.trusted_keys: "), "{err}");
        assert!(err.contains("secret seed"), "{err}");
        assert!(!err.contains(&key.seed()), "{err}");
        let c = Config::from_toml("[deploy]\ntrusted_keys = [\"Unope\"]\n").unwrap();
        assert!(c.validate().unwrap_err().contains("\"Unope\""));
        assert!(Config::from_toml("[deploy]\ntrusted = []\n").is_err());
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
    fn nofile_max_defaults_to_524288_is_reloadable_and_bounded() {
        assert_eq!(Config::default().apps.nofile_max, 524_288);
        let shipped = Config::from_toml(include_str!("../config/narund.toml")).unwrap();
        assert_eq!(shipped.apps.nofile_max, 524_288);
        let c = Config::from_toml("[apps]\nnofile_max = 4096\n").unwrap();
        c.validate().unwrap();
        let s = Settings::from_config(&c);
        assert_eq!(s.nofile_max, 4096);
        assert_eq!(Reloadable::of(&s).nofile_max, 4096);
        for bad in [0, (1u64 << 30) + 1] {
            let c = Config::from_toml(&format!("[apps]\nnofile_max = {bad}\n")).unwrap();
            let e = c.validate().unwrap_err();
            assert!(
                e.contains("apps.nofile_max: must be between 1 and 1073741824")
                    && e.contains(&format!("got {bad}")),
                "{e}"
            );
        }
        assert!(Config::from_toml("[apps]\nnofile_max = -1\n").is_err());
        assert!(Config::from_toml("[apps]\nnofile_max = \"many\"\n").is_err());
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
    fn overrides_win_and_node_id_defaults_to_the_chain() {
        let mut c = Config::default();
        c.apply(&Overrides {
            nats_url: Some("nats://10.1.1.1:4222".into()),
            ..Default::default()
        });
        assert_eq!(c.nats.url, "nats://10.1.1.1:4222");
        // narunctl's default node (the same function, the same default file).
        assert_eq!(c.node_id, narun_wire::names::default_node_id().unwrap());
        assert!(matches!(c.node_id_origin, NodeIdOrigin::Derived(_)));

        // A provisioning file wins over machine id and host name; node_id over the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node-id");
        std::fs::write(&file, "dev-42\n").unwrap();
        let mut c = Config {
            node_id_file: file.clone(),
            ..Config::default()
        };
        c.apply(&Overrides::default());
        assert_eq!(c.node_id, "dev-42");
        assert_eq!(
            c.node_id_origin,
            NodeIdOrigin::Derived(narun_wire::node_id::NodeIdSource::File(file.clone()))
        );
        let mut c = Config {
            node_id_file: file.clone(),
            ..Config::default()
        };
        c.apply(&Overrides {
            node_id: Some("flag".into()),
            ..Default::default()
        });
        assert_eq!(
            (c.node_id.as_str(), c.node_id_origin),
            ("flag", NodeIdOrigin::Configured)
        );

        // A bad file is a problem naming node_id_file and the file, not a silent fallback.
        std::fs::write(&file, "dev.42\n").unwrap();
        let mut c = Config {
            node_id_file: file.clone(),
            ..Config::default()
        };
        c.apply(&Overrides::default());
        let err = c.validate().unwrap_err();
        assert!(err.starts_with("node_id_file: node id file "), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        let c = Config::from_toml("node_id_file = \"node-id\"\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .contains("node_id_file: \"node-id\" is not an absolute path")
        );
    }

    #[test]
    fn allowed_capabilities_default_to_net_bind_service_and_are_checked() {
        let d = Config::default();
        assert_eq!(d.apps.allowed_capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert!(!d.apps.allow_scripts);
        let c = Config::from_toml(
            "[apps]\nallowed_capabilities = [\"net_raw\", \"CAP_KILL\"]\nallow_scripts = true\n",
        )
        .unwrap();
        c.validate().unwrap();
        let s = Settings::from_config(&c);
        assert_eq!(s.allowed_capabilities, ["CAP_NET_RAW", "CAP_KILL"]);
        assert!(s.allow_scripts);
        assert_eq!(
            Reloadable::of(&s).allowed_capabilities,
            s.allowed_capabilities
        );
        let c = Config::from_toml("[apps]\nallowed_capabilities = [\"CAP_ROOT\"]\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("apps.allowed_capabilities[0]: unknown Linux capability \"CAP_ROOT\""),
            "{err}"
        );
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
        assert!(!Config::default().secrets.allow_unscoped);
        assert!(
            Config::from_toml("[secrets]\nallow_unscoped = true\n")
                .unwrap()
                .secrets
                .allow_unscoped
        );
        let shipped = Config::from_toml(include_str!("../config/narund.toml")).unwrap();
        assert_eq!(
            shipped.secrets.master_key_file,
            Config::default().secrets.master_key_file
        );
        assert!(!shipped.secrets.allow_unscoped);
    }

    #[test]
    fn app_nats_settings_are_checked() {
        let c = Config::default();
        assert!(!Settings::from_config(&c).app_nats.configured());
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("acc.nk");
        let acc = nkeys::KeyPair::new_account();
        std::fs::write(&seed, format!("{}\n", acc.seed().unwrap())).unwrap();
        let c = Config::from_toml(&format!(
            "[apps]\nnats_creds_dir = \"/etc/narun/apps\"\nnats_account_signing_key = {:?}\nnats_account = {:?}\n",
            seed.display().to_string(),
            acc.public_key()
        ))
        .unwrap();
        c.validate().unwrap();
        let s = Settings::from_config(&c);
        assert!(s.app_nats.configured());
        assert_eq!(
            s.app_nats.account.as_deref(),
            Some(acc.public_key().as_str())
        );

        let user = dir.path().join("user.nk");
        std::fs::write(&user, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
        let c = Config::from_toml(&format!(
            "[apps]\nnats_creds_dir = \"rel\"\nnats_account_signing_key = {:?}\nnats_account = \"Axyz\"\n",
            user.display().to_string()
        ))
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("apps.nats_creds_dir: rel must be an absolute path"),
            "{err}"
        );
        assert!(err.contains("apps.nats_account_signing_key"), "{err}");
        assert!(err.contains("account"), "{err}");
        assert!(err.contains("apps.nats_account: \"Axyz\""), "{err}");
        let c = Config::from_toml("[apps]\nnats_account_signing_key = \"/nonexistent/a.nk\"\n")
            .unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("/nonexistent/a.nk"), "{err}");
        let c =
            Config::from_toml(&format!("[apps]\nnats_account = {:?}\n", acc.public_key())).unwrap();
        assert!(c.validate().unwrap_err().contains("only together"));
    }

    #[test]
    fn missing_default_file_gives_defaults_but_explicit_path_must_exist() {
        let p = Path::new("/nonexistent/narund.toml");
        assert!(Config::load(p, false).is_ok());
        let e = Config::load(p, true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/narund.toml"), "{e}");
    }

    #[test]
    fn an_unreadable_file_names_its_cause_once() {
        let e = Config::read(Path::new("/nonexistent/narund.toml"), true).unwrap_err();
        // narund prints errors with `{:#}`, which appends every source.
        let shown = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(shown.matches("os error 2").count(), 1, "{shown}");
    }
}
