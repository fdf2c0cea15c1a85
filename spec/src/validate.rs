//! Validation: every problem of a spec at once, each with its field path.
//!
//! The rules are Go's `ParseServiceSpec` rules (so a spec valid here is
//! accepted by Go node-runners, except for the narun additions listed in
//! `docs/spec.md`) plus stricter checks where Go lets a bad value through to
//! a confusing failure at run time (app name characters, mount paths, …).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use crate::app::AppSpec;
use crate::limits::{
    MAX_ARGS, MAX_CAPABILITIES, MAX_CPU_CORES, MAX_DURATION_SEC, MAX_ENV, MAX_ENV_NAME_LEN,
    MAX_EXEC_BYTES, MAX_LABEL_LEN, MAX_LABELS, MAX_LIST_ITEMS, MAX_MEMORY_MB, MAX_MOUNTS,
    MAX_NODES, MAX_NOFILE, MAX_OBJECT_NAME_LEN, MAX_PATH_LEN, MAX_PIDS, MAX_REPLICAS, MAX_USER_LEN,
    MAX_VALUE_BYTES,
};
use crate::linux::{self, NON_TERMINATING_SIGNALS};
use crate::logs::LogOverflow;
use crate::mode::Mode;
use crate::restart::RestartPolicy;
use crate::schedule::{Concurrency, Cron, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS, RunMode, Scope};

/// An IANA zone name as the file path under `/usr/share/zoneinfo` it names: segments of
/// `A-Z a-z 0-9 _ + -` joined by `/`, no `.`/`..`, at most 64 bytes.
fn is_zone_name(s: &str) -> bool {
    s.len() <= 64
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('-')
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        })
}

/// Longest accepted app name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest accepted tag.
pub const MAX_TAG_LEN: usize = 128;
/// Most entries in `binaryDigests` (one per platform).
pub const MAX_BINARY_DIGESTS: usize = 16;
/// Largest accepted `cpuWeight` (cgroup v2 `cpu.weight` range is 1..=10000).
pub const MAX_CPU_WEIGHT: u64 = 10_000;

/// One problem: the field it is about (`nodes[1].replicas`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Field path: keys joined with `.`, list indexes in brackets.
    pub path: String,
    /// What is wrong and, where useful, what to do.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a spec. Displays as one `path: message` per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    /// The problems, in field order.
    pub fn errors(&self) -> &[SpecError] {
        &self.0
    }

    /// The problem about exactly this path, if any.
    pub fn get(&self, path: &str) -> Option<&SpecError> {
        self.0.iter().find(|e| e.path == path)
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Something accepted but probably not what the author meant (unknown key,
/// a setting Go node-runners reject, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecWarning {
    /// Field path, as in [`SpecError::path`].
    pub path: String,
    /// What is odd and what happens because of it.
    pub message: String,
}

impl fmt::Display for SpecWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects errors with their paths.
#[derive(Default)]
struct Report(Vec<SpecError>);

impl Report {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(self.0))
        }
    }
}

/// `^[A-Za-z0-9_-]+$`: NATS Micro service names, subject tokens, object names.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// NATS KV key characters: `^[-/_=.A-Za-z0-9]+$`.
fn is_kv_key(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
}

/// Whether a path has a `..` component.
fn has_parent_dir(p: &str) -> bool {
    Path::new(p)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
}

impl AppSpec {
    /// Check the spec and return **every** problem, each with its field path.
    ///
    /// Call it on a parsed spec (parsing normalises values first; a spec built
    /// in code is checked as it is).
    ///
    /// ```
    /// let spec = narun_spec::AppSpec::from_yaml_str(
    ///     "name: a.b\ntag: v1\nnodes:\n  - name: n1\n    replicas: 0\n",
    /// ).unwrap();
    /// let errors = spec.validate().unwrap_err();
    /// assert_eq!(errors.errors().len(), 2);
    /// assert!(errors.to_string().contains("nodes[0].replicas: must be > 0"));
    /// ```
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut r = Report::default();
        self.check_identity(&mut r);
        self.check_process(&mut r);
        self.check_nodes(&mut r);
        self.check_go_blocks(&mut r);
        self.check_resources(&mut r);
        self.check_lifecycle(&mut r);
        self.check_limits(&mut r);
        self.check_binary_digests(&mut r);
        self.check_command_unit(&mut r);
        self.check_job(&mut r);
        self.check_deps(&mut r);
        self.check_scale_to_zero(&mut r);
        r.finish()
    }

    /// `scaleToZero`: `idleSec` in range, only for services that run continuously.
    fn check_scale_to_zero(&self, r: &mut Report) {
        let Some(s) = &self.scale_to_zero else {
            return;
        };
        for (key, message) in s.problems() {
            r.err(format!("scaleToZero.{key}"), message);
        }
        if self.is_job() {
            r.err(
                "scaleToZero",
                "cannot be combined with runMode: job (a job does not run between its runs anyway): remove it",
            );
        }
        if self.mode == Mode::Command {
            r.err(
                "scaleToZero",
                "cannot be combined with mode: command (the binary already runs only per request): remove it",
            );
        }
        // The gateway wakes the app named like the service a request is for: an app
        // serving under another name would sleep and never be woken.
        if let Some(e) = self
            .env
            .iter()
            .rev()
            .find(|e| e.name == "NARUN_SERVICE_NAME")
            && e.value != self.name
        {
            r.err(
                "scaleToZero",
                format!(
                    "cannot be combined with env NARUN_SERVICE_NAME = {:?}: the gateway wakes the app named like the service ({:?}); serve under the app's name or remove scaleToZero",
                    e.value, self.name
                ),
            );
        }
    }

    /// `mode = "command"` and its `commandUnit` block: values in range; no sd_notify (a
    /// run is not a service; narund itself registers the endpoint).
    fn check_command_unit(&self, r: &mut Report) {
        for (key, message) in self.command_unit.problems() {
            r.err(format!("commandUnit.{key}"), message);
        }
        if self.mode == Mode::Command && RunMode::parse(&self.run_mode) == Some(RunMode::Job) {
            r.err(
                "runMode",
                "\"job\" cannot be combined with mode: command (a command unit runs once per request; a job runs on its schedule): pick one",
            );
        }
        if self.mode == Mode::Command && self.notify {
            r.err(
                "notify",
                "is not used with mode: command (narund registers the endpoint itself and the command runs once per request); remove it",
            );
        }
    }

    /// `after`, `afterTimeoutSec` and `calls` ([`crate::deps`]).
    fn check_deps(&self, r: &mut Report) {
        use crate::deps::{MAX_AFTER_TIMEOUT_SEC, list_problems};
        for key in ["after", "calls"] {
            let names = if key == "after" {
                &self.after
            } else {
                &self.calls
            };
            for (k, m) in list_problems(key, &self.name, names) {
                r.err(k, m);
            }
        }
        if self.after_timeout_sec > MAX_AFTER_TIMEOUT_SEC {
            r.err(
                "afterTimeoutSec",
                format!(
                    "at most {MAX_AFTER_TIMEOUT_SEC} (one day; 0 waits without end), got {}",
                    self.after_timeout_sec
                ),
            );
        }
        if !self.after.is_empty() && (self.mode == Mode::Command || self.is_job()) {
            r.err(
                "after",
                "only services wait for other services (not mode: command nor runMode: job); remove it",
            );
        }
    }

    /// The job's run mode (`service` for an unknown one, which validation refuses).
    pub fn job_run_mode(&self) -> RunMode {
        RunMode::parse(&self.run_mode).unwrap_or(RunMode::Service)
    }

    /// `true` for `runMode = "job"`.
    pub fn is_job(&self) -> bool {
        self.job_run_mode() == RunMode::Job
    }

    /// The job's `concurrency` (`forbid` for an unknown one, which validation refuses).
    pub fn job_concurrency(&self) -> Concurrency {
        Concurrency::parse(&self.concurrency).unwrap_or(Concurrency::Forbid)
    }

    /// The job's `scope` (`node` for an unknown one, which validation refuses).
    pub fn job_scope(&self) -> Scope {
        Scope::parse(&self.scope).unwrap_or(Scope::Node)
    }

    /// `maxAttempts` or its default.
    pub fn job_max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// The parsed `schedule`: `None` when there is none (or it is invalid).
    pub fn job_cron(&self) -> Option<Cron> {
        if self.schedule.is_empty() {
            None
        } else {
            Cron::parse(&self.schedule).ok()
        }
    }

    /// `runMode`, `schedule`, `timezone`, `concurrency`, `startingDeadlineSec`, `scope`,
    /// `maxAttempts`: valid values, and job settings only with `runMode = "job"`.
    fn check_job(&self, r: &mut Report) {
        let mode = RunMode::parse(&self.run_mode);
        if mode.is_none() {
            r.err(
                "runMode",
                format!(
                    "must be one of {}, got {:?}",
                    RunMode::NAMES.join(", "),
                    self.run_mode
                ),
            );
        }
        if !self.schedule.is_empty()
            && let Err(e) = Cron::parse(&self.schedule)
        {
            r.err(
                "schedule",
                format!("invalid cron expression {:?}: {e}", self.schedule),
            );
        }
        if !self.timezone.is_empty() && !is_zone_name(&self.timezone) {
            r.err(
                "timezone",
                format!(
                    "unknown timezone {:?}: must be an IANA zone name like UTC or Europe/Paris (A-Z a-z 0-9 _ + - /, at most 64 bytes)",
                    self.timezone
                ),
            );
        }
        if Concurrency::parse(&self.concurrency).is_none() {
            r.err(
                "concurrency",
                format!(
                    "must be one of {}, got {:?}",
                    Concurrency::NAMES.join(", "),
                    self.concurrency
                ),
            );
        }
        if Scope::parse(&self.scope).is_none() {
            r.err(
                "scope",
                format!(
                    "must be one of {}, got {:?}",
                    Scope::NAMES.join(", "),
                    self.scope
                ),
            );
        }
        match self.max_attempts {
            Some(0) => r.err("maxAttempts", "must be > 0 (1 = no retry)"),
            Some(n) if n > MAX_ATTEMPTS => r.err(
                "maxAttempts",
                format!("must be at most {MAX_ATTEMPTS}, got {n}"),
            ),
            _ => {}
        }
        if let Some(d) = self
            .starting_deadline_sec
            .filter(|d| *d > MAX_DURATION_SEC * 366)
        {
            r.err(
                "startingDeadlineSec",
                format!(
                    "must be at most {} (a year), got {d}",
                    MAX_DURATION_SEC * 366
                ),
            );
        }
        if mode != Some(RunMode::Job) {
            for (path, set) in [
                ("schedule", !self.schedule.is_empty()),
                ("timezone", !self.timezone.is_empty()),
                ("concurrency", !self.concurrency.is_empty()),
                ("startingDeadlineSec", self.starting_deadline_sec.is_some()),
                ("scope", !self.scope.is_empty()),
                ("maxAttempts", self.max_attempts.is_some()),
            ] {
                if set && mode.is_some() {
                    r.err(
                        path,
                        "is a job setting: it requires runMode = \"job\" (a service runs continuously)",
                    );
                }
            }
        } else if !self.timezone.is_empty() && self.schedule.is_empty() {
            r.err("timezone", "is set without a schedule");
        } else if self.starting_deadline_sec.is_some() && self.schedule.is_empty() {
            r.err("startingDeadlineSec", "is set without a schedule");
        }
    }

    /// `binaryDigests`: at most [`MAX_BINARY_DIGESTS`] entries, each an object name
    /// (`[A-Za-z0-9._-]`, at most [`MAX_OBJECT_NAME_LEN`] bytes) to `SHA-256=<base64>` of 32
    /// bytes (43 characters, optional `=`).
    fn check_binary_digests(&self, r: &mut Report) {
        if self.binary_digests.len() > MAX_BINARY_DIGESTS {
            r.err(
                "binaryDigests",
                format!(
                    "has {} entries, more than the limit of {MAX_BINARY_DIGESTS}",
                    self.binary_digests.len()
                ),
            );
            return;
        }
        for (object, digest) in &self.binary_digests {
            let path = format!("binaryDigests[{object:?}]");
            let name_ok = !object.is_empty()
                && object.len() <= MAX_OBJECT_NAME_LEN
                && object.chars().all(|c| is_name_char(c) || c == '.');
            if !name_ok {
                r.err(
                    &path,
                    format!(
                        "the key must be a binary object name `<app>-<tag>-<os>-<arch>` \
                         (A-Z a-z 0-9 . _ -, at most {MAX_OBJECT_NAME_LEN} bytes)"
                    ),
                );
            }
            let b64 = digest
                .strip_prefix("SHA-256=")
                .map(|b| b.trim_end_matches('='));
            let ok = b64.is_some_and(|b| {
                b.len() == 43
                    && b.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_+/".contains(&c))
            });
            if !ok {
                r.err(
                    &path,
                    format!(
                        "{digest:?} is not a SHA-256 digest `SHA-256=<base64url of 32 bytes>` \
                         (as `narunctl images ls` shows it); let `narunctl deploy` write it"
                    ),
                );
            }
        }
    }

    /// The field limits of `crate::limits` (counts, lengths, magnitudes).
    fn check_limits(&self, r: &mut Report) {
        let count = |r: &mut Report, path: &str, n: usize, max: usize| {
            if n > max {
                r.err(
                    path,
                    format!("has {n} entries, more than the limit of {max}"),
                );
            }
        };
        let len = |r: &mut Report, path: String, value: &str, max: usize| {
            if value.len() > max {
                r.err(
                    path,
                    format!(
                        "is {} bytes long, more than the limit of {max} bytes",
                        value.len()
                    ),
                );
            }
        };
        count(r, "nodes", self.nodes.len(), MAX_NODES);
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(name) = &n.name {
                len(r, format!("nodes[{i}].name"), name, MAX_OBJECT_NAME_LEN);
            }
            if let Some(labels) = &n.labels {
                count(r, &format!("nodes[{i}].labels"), labels.len(), MAX_LABELS);
                for (k, v) in labels.iter().take(MAX_LABELS + 1) {
                    len(r, format!("nodes[{i}].labels"), k, MAX_LABEL_LEN);
                    len(r, format!("nodes[{i}].labels.{k}"), v, MAX_LABEL_LEN);
                }
            }
        }
        count(r, "args", self.args.len(), MAX_ARGS);
        count(r, "env", self.env.len(), MAX_ENV);
        let mut exec_bytes = 0usize;
        for (i, a) in self.args.iter().enumerate() {
            len(r, format!("args[{i}]"), a, MAX_VALUE_BYTES);
            exec_bytes = exec_bytes.saturating_add(a.len() + 1);
        }
        for (i, e) in self.env.iter().enumerate() {
            len(r, format!("env[{i}].name"), &e.name, MAX_ENV_NAME_LEN);
            len(r, format!("env[{i}].value"), &e.value, MAX_VALUE_BYTES);
            len(
                r,
                format!("env[{i}].valueFromSecret"),
                &e.value_from_secret,
                MAX_OBJECT_NAME_LEN,
            );
            exec_bytes = exec_bytes.saturating_add(e.name.len() + e.value.len() + 2);
        }
        if exec_bytes > MAX_EXEC_BYTES {
            r.err(
                "env",
                format!(
                    "args and env together take {exec_bytes} bytes, more than the limit of {MAX_EXEC_BYTES} bytes: put large data into files (mounts)"
                ),
            );
        }
        count(r, "mounts", self.mounts.len(), MAX_MOUNTS);
        for (i, m) in self.mounts.iter().enumerate() {
            len(r, format!("mounts[{i}].path"), &m.path, MAX_PATH_LEN);
            len(
                r,
                format!("mounts[{i}].source.objectStore"),
                &m.source.object_store,
                MAX_OBJECT_NAME_LEN,
            );
        }
        count(r, "capabilities", self.capabilities.len(), MAX_CAPABILITIES);
        count(
            r,
            "landlock.paths",
            self.landlock.paths.len(),
            MAX_LIST_ITEMS,
        );
        for (i, p) in self.landlock.paths.iter().enumerate() {
            len(
                r,
                format!("landlock.paths[{i}].path"),
                &p.path,
                MAX_PATH_LEN,
            );
        }
        count(
            r,
            "nonet.localPorts",
            self.nonet.local_ports.len(),
            MAX_LIST_ITEMS,
        );
        len(r, "user".into(), &self.user, MAX_USER_LEN);
        len(r, "command".into(), &self.command, MAX_PATH_LEN);
        len(r, "metrics.path".into(), &self.metrics.path, MAX_PATH_LEN);
        len(
            r,
            "networkNamespacePath".into(),
            &self.network_namespace_path,
            MAX_PATH_LEN,
        );
        len(r, "cgroupParent".into(), &self.cgroup_parent, MAX_PATH_LEN);
        for (path, value) in [
            ("startTimeoutSec", Some(self.start_timeout_sec)),
            ("stopTimeoutSec", Some(self.stop_timeout_sec)),
            ("settleSec", Some(self.settle_sec)),
            ("startLimitIntervalSec", Some(self.start_limit_interval_sec)),
            ("watchdogSec", self.watchdog_sec),
        ] {
            if let Some(v) = value.filter(|v| *v > MAX_DURATION_SEC) {
                r.err(
                    path,
                    format!("must be at most {MAX_DURATION_SEC} (one day), got {v}"),
                );
            }
        }
        for (path, value) in [
            ("memoryMB", self.memory_mb),
            ("memoryMaxMB", self.memory_max_mb),
        ] {
            if value > MAX_MEMORY_MB {
                r.err(
                    path,
                    format!("must be at most {MAX_MEMORY_MB} (16 TiB), got {value}"),
                );
            }
        }
        if let Some(p) = self.pids_max.filter(|p| *p > MAX_PIDS) {
            r.err(
                "pidsMax",
                format!("must be at most {MAX_PIDS} (Linux's PID_MAX_LIMIT), got {p}"),
            );
        }
        if let Some(n) = self.nofile_max.filter(|n| *n > MAX_NOFILE) {
            r.err(
                "nofileMax",
                format!(
                    "must be at most {MAX_NOFILE} (2^30 open files; a node grants at most its apps.nofile_max), got {n}"
                ),
            );
        }
        if self.cpu_cores.is_finite() && self.cpu_cores > MAX_CPU_CORES {
            r.err(
                "cpuCores",
                format!("must be at most {MAX_CPU_CORES}, got {}", self.cpu_cores),
            );
        }
    }

    fn check_identity(&self, r: &mut Report) {
        if self.name.is_empty() {
            r.err("name", "is required");
        } else {
            if !self.name.chars().all(is_name_char) {
                r.err(
                    "name",
                    format!(
                        "must match ^[A-Za-z0-9_-]+$ (it becomes a NATS subject token and part of object names), got {:?}",
                        self.name
                    ),
                );
            }
            if self.name.len() > MAX_NAME_LEN {
                r.err(
                    "name",
                    format!("must be at most {MAX_NAME_LEN} characters long"),
                );
            }
        }
        if self.tag.is_empty() {
            r.err(
                "tag",
                "is required (the binary version, e.g. v1.2.0; part of the binary object name)",
            );
        } else {
            if !self
                .tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                r.err(
                    "tag",
                    format!(
                        "must only contain A-Z, a-z, 0-9, '.', '_' and '-' (it is part of the binary object name), got {:?}",
                        self.tag
                    ),
                );
            }
            if self.tag.len() > MAX_TAG_LEN {
                r.err(
                    "tag",
                    format!("must be at most {MAX_TAG_LEN} characters long"),
                );
            }
        }
        if let Mode::Other(m) = &self.mode {
            r.err(
                "mode",
                format!("must be exec, landlock, jail or command, got {m:?}"),
            );
        }
    }

    fn check_process(&self, r: &mut Report) {
        for (i, a) in self.args.iter().enumerate() {
            if a.contains('\0') {
                r.err(format!("args[{i}]"), "must not contain a NUL byte");
            }
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, e) in self.env.iter().enumerate() {
            let p = format!("env[{i}]");
            if e.name.is_empty() {
                r.err(format!("{p}.name"), "is required");
            } else if e.name.contains(['=', ' ', '\0']) {
                r.err(format!("{p}.name"), "must not contain '=' or ' '");
            }
            if !e.value.is_empty() && !e.value_from_secret.is_empty() {
                r.err(
                    p.as_str(),
                    "value and valueFromSecret are mutually exclusive: keep one",
                );
            }
            if e.value.contains('\0') {
                r.err(format!("{p}.value"), "must not contain a NUL byte");
            }
            if !e.value_from_secret.is_empty() && !is_kv_key(&e.value_from_secret) {
                r.err(
                    format!("{p}.valueFromSecret"),
                    format!(
                        "must be a secret name made of A-Z, a-z, 0-9, '-', '/', '_', '=', '.' (not starting or ending with '.'), got {:?}",
                        e.value_from_secret
                    ),
                );
            }
            if !e.name.is_empty() {
                seen.entry(e.name.as_str()).or_insert(i);
            }
        }
        if let Some(user) = (!self.user.is_empty()).then_some(&self.user)
            && (user.trim().is_empty() || user.contains([':', '/', ' ', '\t', '\n', '\0']))
        {
            r.err(
                "user",
                format!("must be a user name or numeric uid, got {user:?}"),
            );
        }
    }

    fn check_nodes(&self, r: &mut Report) {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut label_sets: Vec<(usize, &crate::select::Labels)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let p = format!("nodes[{i}]");
            match (&n.name, &n.labels) {
                (Some(_), Some(_)) => {
                    r.err(p.as_str(), "set exactly one of name or labels, not both")
                }
                (None, None) => r.err(
                    p.as_str(),
                    "set exactly one of name (a node ID) or labels (a label selector)",
                ),
                _ => {}
            }
            if let Some(name) = &n.name {
                if name.trim().is_empty() {
                    r.err(format!("{p}.name"), "must not be empty");
                } else if let Some(first) = names.get(name.as_str()) {
                    r.err(
                        format!("{p}.name"),
                        format!("duplicate node name {name:?} (already in nodes[{first}])"),
                    );
                } else {
                    names.insert(name, i);
                }
            }
            if let Some(labels) = &n.labels {
                for key in labels.keys() {
                    if key.trim().is_empty() || key.contains(['=', ' ', '\t', '\n']) {
                        r.err(
                            format!("{p}.labels"),
                            format!("label key {key:?} must be non-empty without '=' or spaces"),
                        );
                    }
                }
                if let Some((first, _)) = label_sets.iter().find(|(_, l)| *l == labels) {
                    r.err(
                        format!("{p}.labels"),
                        format!("same labels as nodes[{first}]: merge the two entries"),
                    );
                } else {
                    label_sets.push((i, labels));
                }
            }
            if n.replicas <= 0 {
                r.err(
                    format!("{p}.replicas"),
                    format!(
                        "must be > 0, got {} (remove the entry to run nothing there)",
                        n.replicas
                    ),
                );
            } else if n.replicas > MAX_REPLICAS {
                r.err(
                    format!("{p}.replicas"),
                    format!(
                        "must be at most {MAX_REPLICAS} (the spec limit MAX_REPLICAS; a node may allow fewer, see narund's apps.max_replicas_per_node), got {}",
                        n.replicas
                    ),
                );
            }
        }
    }

    fn check_go_blocks(&self, r: &mut Report) {
        // Go checks landlock paths only in landlock mode.
        if self.mode == Mode::Landlock {
            for (i, lp) in self.landlock.paths.iter().enumerate() {
                let p = format!("landlock.paths[{i}]");
                if lp.path.trim().is_empty() {
                    r.err(format!("{p}.path"), "must not be empty");
                }
                if lp.modes.trim().is_empty() {
                    r.err(
                        format!("{p}.modes"),
                        "must not be empty (any of r, w, x, c)",
                    );
                } else if let Some(c) = lp.modes.chars().find(|c| !"rwxc".contains(*c)) {
                    r.err(
                        format!("{p}.modes"),
                        format!("invalid character {c:?}: only r, w, x and c are allowed"),
                    );
                }
            }
        }
        let mut mount_paths: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, m) in self.mounts.iter().enumerate() {
            let p = format!("mounts[{i}]");
            if m.path.trim().is_empty() {
                r.err(format!("{p}.path"), "must not be empty");
            } else if m.path.starts_with('/') {
                r.err(
                    format!("{p}.path"),
                    "must be relative to the instance work dir, not absolute",
                );
            } else if has_parent_dir(&m.path) {
                r.err(
                    format!("{p}.path"),
                    "must not contain '..' (it must stay inside the instance work dir)",
                );
            } else if let Some(first) = mount_paths.get(m.path.as_str()) {
                r.err(
                    format!("{p}.path"),
                    format!("duplicate mount path (already in mounts[{first}])"),
                );
            } else {
                mount_paths.insert(&m.path, i);
            }
            if m.source.object_store.trim().is_empty() {
                r.err(
                    format!("{p}.source.objectStore"),
                    "is required (the name of a file in the narun-files object store)",
                );
            }
        }
        for (i, pf) in self.nonet.local_ports.iter().enumerate() {
            let p = format!("nonet.localPorts[{i}]");
            if !(1025..=65535).contains(&pf.port) {
                r.err(
                    format!("{p}.port"),
                    format!("must be between 1025 and 65535, got {}", pf.port),
                );
            }
            let proto = pf.protocol.trim().to_ascii_lowercase();
            if !matches!(proto.as_str(), "" | "tcp" | "udp") {
                r.err(
                    format!("{p}.protocol"),
                    format!("must be tcp or udp, got {:?}", pf.protocol),
                );
            }
        }
        if self.metrics.port != 0 {
            if !(1..=65535).contains(&self.metrics.port) {
                r.err(
                    "metrics.port",
                    format!(
                        "must be between 1 and 65535 (0 disables metrics), got {}",
                        self.metrics.port
                    ),
                );
            }
            if !self.metrics.path.is_empty() && !self.metrics.path.starts_with('/') {
                r.err(
                    "metrics.path",
                    format!("must start with '/', got {:?}", self.metrics.path),
                );
            }
        }
        if !self.network_namespace_path.is_empty() && !self.network_namespace_path.starts_with('/')
        {
            r.err(
                "networkNamespacePath",
                "must be an absolute path (e.g. /var/run/netns/blue)",
            );
        }
        if has_parent_dir(&self.cgroup_parent) {
            r.err("cgroupParent", "must not contain '..'");
        }
    }

    fn check_resources(&self, r: &mut Report) {
        if !self.cpu_cores.is_finite() {
            r.err("cpuCores", "must be a finite number");
        } else if self.cpu_cores < 0.0 {
            r.err(
                "cpuCores",
                format!("must be >= 0 (0 = no limit), got {}", self.cpu_cores),
            );
        }
        if self.memory_mb > 0 && self.memory_max_mb > 0 && self.memory_max_mb < self.memory_mb {
            r.err(
                "memoryMaxMB",
                format!(
                    "must be >= memoryMB ({}), got {}",
                    self.memory_mb, self.memory_max_mb
                ),
            );
        }
        if self.pids_max == Some(0) {
            r.err("pidsMax", "must be > 0 (leave it out for no limit)");
        }
        if self.nofile_max == Some(0) {
            r.err(
                "nofileMax",
                "must be > 0 (leave it out for the node's default, apps.nofile_max)",
            );
        }
        if let Some(w) = self.cpu_weight
            && !(1..=MAX_CPU_WEIGHT).contains(&w)
        {
            r.err(
                "cpuWeight",
                format!(
                    "must be between 1 and {MAX_CPU_WEIGHT} (the kernel default is 100), got {w}"
                ),
            );
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if linux::capability_number(cap).is_none() {
                r.err(
                    format!("capabilities[{i}]"),
                    format!("unknown Linux capability {cap:?} (e.g. CAP_NET_BIND_SERVICE)"),
                );
            }
        }
    }

    fn check_lifecycle(&self, r: &mut Report) {
        if let LogOverflow::Other(p) = &self.log_overflow {
            r.err(
                "logOverflow",
                format!(
                    "must be one of {}, got {p:?}",
                    LogOverflow::NAMES.join(", ")
                ),
            );
        }
        if let RestartPolicy::Other(p) = &self.restart {
            r.err(
                "restart",
                format!(
                    "must be one of {}, got {p:?}",
                    RestartPolicy::NAMES.join(", ")
                ),
            );
        }
        if self.start_limit_burst == 0 {
            r.err(
                "startLimitBurst",
                "must be > 0 (set startLimitIntervalSec: 0 to disable the start limit)",
            );
        }
        match self.watchdog_sec {
            Some(0) => r.err(
                "watchdogSec",
                "must be > 0 if set (leave it out for no watchdog)",
            ),
            Some(_) if !self.notify => r.err(
                "watchdogSec",
                "requires notify: true (the app sends WATCHDOG=1 over the notify socket)",
            ),
            _ => {}
        }
        if self.start_timeout_sec == 0 {
            r.err("startTimeoutSec", "must be > 0");
        }
        if !self.notify && self.start_timeout_sec > 0 && self.settle_sec >= self.start_timeout_sec {
            r.err(
                "settleSec",
                format!(
                    "must be less than startTimeoutSec ({}), or the instance can never become ready",
                    self.start_timeout_sec
                ),
            );
        }
        if self.stop_timeout_sec == 0 {
            r.err(
                "stopTimeoutSec",
                "must be > 0 (use stopSignal: SIGKILL to kill at once)",
            );
        }
        match self.stop_signal.number() {
            None => r.err(
                "stopSignal",
                format!(
                    "unknown signal {:?} (use a name like SIGTERM or TERM, or a number 1-31)",
                    self.stop_signal.as_str()
                ),
            ),
            Some(_) if NON_TERMINATING_SIGNALS.contains(&self.stop_signal.as_str()) => r.err(
                "stopSignal",
                format!(
                    "{} pauses or resumes a process instead of stopping it",
                    self.stop_signal
                ),
            ),
            Some(_) => {}
        }
    }

    /// Check what narund can run, beyond [`AppSpec::validate`]: narund only
    /// implements `mode: exec`. A spec with `mode: landlock` or `jail` is valid
    /// (for Go node-runners) but narund refuses to start it.
    pub fn supported_on_narund(&self) -> Result<(), SpecErrors> {
        let mut r = Report::default();
        match &self.mode {
            Mode::Exec | Mode::Command | Mode::Other(_) => {}
            Mode::Landlock | Mode::Jail => r.err(
                "mode",
                format!(
                    "{:?} is not supported by narund, which only runs mode exec (and command units, mode: command); set mode: exec (narund isolates apps with user, capabilities and cgroup limits) or run this app on Go node-runners",
                    self.mode.as_str()
                ),
            ),
        }
        r.finish()
    }

    /// Warnings: unknown keys found while parsing, plus settings that are
    /// valid but probably not what was meant (e.g. ones Go node-runners
    /// reject). An empty list means nothing to report.
    pub fn warnings(&self) -> Vec<SpecWarning> {
        let mut w = self.parse_warnings.0.clone();
        let mut warn = |path: &str, message: String| {
            w.push(SpecWarning {
                path: path.to_string(),
                message,
            })
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if n.labels.is_some() {
                warn(
                    &format!("nodes[{i}].labels"),
                    "label selectors are a narun addition: Go node-runners reject this spec (they require nodes[].name)".to_string(),
                );
            }
        }
        if (self.memory_mb > 0 || self.cpu_cores > 0.0) && self.cgroup_parent.is_empty() {
            warn(
                if self.memory_mb > 0 { "memoryMB" } else { "cpuCores" },
                "without cgroupParent Go node-runners reject this spec (narund applies the limit under its own cgroup)".to_string(),
            );
        }
        if self.mode != Mode::Command && self.command_unit != Default::default() {
            warn(
                "commandUnit",
                format!(
                    "is only used with mode: command (this spec has mode: {})",
                    self.mode
                ),
            );
        }
        let mut first: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, e) in self.env.iter().enumerate() {
            if e.name.is_empty() {
                continue;
            }
            if let Some(j) = first.get(e.name.as_str()) {
                warn(
                    &format!("env[{i}].name"),
                    format!("{:?} is also set by env[{j}]; the last one wins", e.name),
                );
            } else {
                first.insert(&e.name, i);
            }
        }
        w
    }
}
