//! Command units (`mode = "command"`): the settings of the `commandUnit` block,
//! [`CommandUnitSpec`].
//!
//! A command unit is an app without a server: narund registers the app's NATS Micro
//! endpoint itself and runs the binary once per request (request body on stdin, the
//! response body on stdout; docs/jobs.md, "Command units"). Every field is optional;
//! the accessors give the defaults, so a spec that leaves the block out stores nothing
//! (and its config hash does not change when a default is added later).

use serde::{Deserialize, Serialize};

use crate::serde_helpers::is_default;

/// Default of `commandUnit.maxConcurrent`: runs at once per instance.
pub const DEFAULT_MAX_CONCURRENT: u32 = 4;
/// Largest `commandUnit.maxConcurrent`.
pub const MAX_CONCURRENT: u32 = 1024;
/// Default of `commandUnit.maxQueued`: requests waiting for a free run per instance.
pub const DEFAULT_MAX_QUEUED: u32 = 64;
/// Largest `commandUnit.maxQueued` (queued requests are held in narund's memory).
pub const MAX_QUEUED: u32 = 1024;
/// Default of `commandUnit.queueTimeoutSec`.
pub const DEFAULT_QUEUE_TIMEOUT_SEC: u64 = 10;
/// Default of `commandUnit.timeoutSec`: how long one run may take.
pub const DEFAULT_RUN_TIMEOUT_SEC: u64 = 30;
/// Default of `commandUnit.maxOutputBytes` (1 MiB, NATS' default `max_payload`).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// Largest `commandUnit.maxOutputBytes` (64 MiB, NATS' largest `max_payload`).
pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;
/// Default of `commandUnit.maxStderrBytes`.
pub const DEFAULT_MAX_STDERR_BYTES: u64 = 64 * 1024;
/// Largest `commandUnit.maxStderrBytes`.
pub const MAX_STDERR_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes of run output narund may buffer for one instance:
/// `maxConcurrent × (maxOutputBytes + maxStderrBytes)` (the buffers live in narund, not in
/// the app's cgroup, so a spec must not be able to make narund run out of memory).
pub const MAX_BUFFERED_BYTES: u64 = 256 * 1024 * 1024;

/// The `commandUnit` block: how narund runs a `mode = "command"` app per request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CommandUnitSpec {
    /// Runs at once per instance (1..=1024); default [`DEFAULT_MAX_CONCURRENT`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Requests that may wait for a free run per instance (0..=1024); more get `503`
    /// at once. Default [`DEFAULT_MAX_QUEUED`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// How long a request waits for a free run before it gets `503` (0..=86400 s).
    /// Default [`DEFAULT_QUEUE_TIMEOUT_SEC`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout_sec: Option<u64>,
    /// How long one run may take (1..=86400 s); then its cgroup is killed and the
    /// request gets `504`. A caller's shorter deadline (`Narun-Timeout-Ms`) wins.
    /// Default [`DEFAULT_RUN_TIMEOUT_SEC`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u64>,
    /// Most bytes a run may write to stdout (1..=64 MiB); more kills the run (`502`).
    /// Default [`DEFAULT_MAX_OUTPUT_BYTES`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Most bytes a run may write to stderr (0..=16 MiB); more kills the run (`502`).
    /// Default [`DEFAULT_MAX_STDERR_BYTES`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stderr_bytes: Option<u64>,
    /// stdout starts with a header block (`Status: 201`, `Content-Type: …`, an empty
    /// line) that sets the status and headers. Off by default: stdout is the body as is,
    /// so binary output is safe.
    #[serde(skip_serializing_if = "is_default")]
    pub output_headers: bool,
}

impl CommandUnitSpec {
    /// `maxConcurrent` or its default.
    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT)
    }
    /// `maxQueued` or its default.
    pub fn max_queued(&self) -> u32 {
        self.max_queued.unwrap_or(DEFAULT_MAX_QUEUED)
    }
    /// `queueTimeoutSec` or its default.
    pub fn queue_timeout_sec(&self) -> u64 {
        self.queue_timeout_sec.unwrap_or(DEFAULT_QUEUE_TIMEOUT_SEC)
    }
    /// `timeoutSec` or its default.
    pub fn timeout_sec(&self) -> u64 {
        self.timeout_sec.unwrap_or(DEFAULT_RUN_TIMEOUT_SEC)
    }
    /// `maxOutputBytes` or its default.
    pub fn max_output_bytes(&self) -> u64 {
        self.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES)
    }
    /// `maxStderrBytes` or its default.
    pub fn max_stderr_bytes(&self) -> u64 {
        self.max_stderr_bytes.unwrap_or(DEFAULT_MAX_STDERR_BYTES)
    }

    /// Every value out of its range, as `(key, message)` (keys relative to the block).
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let mut range = |key: &'static str, v: Option<u64>, lo: u64, hi: u64| {
            if let Some(v) = v
                && !(lo..=hi).contains(&v)
            {
                p.push((key, format!("must be between {lo} and {hi}, got {v}")));
            }
        };
        range(
            "maxConcurrent",
            self.max_concurrent.map(u64::from),
            1,
            u64::from(MAX_CONCURRENT),
        );
        range(
            "maxQueued",
            self.max_queued.map(u64::from),
            0,
            u64::from(MAX_QUEUED),
        );
        range(
            "queueTimeoutSec",
            self.queue_timeout_sec,
            0,
            crate::MAX_DURATION_SEC,
        );
        range("timeoutSec", self.timeout_sec, 1, crate::MAX_DURATION_SEC);
        range("maxOutputBytes", self.max_output_bytes, 1, MAX_OUTPUT_BYTES);
        range("maxStderrBytes", self.max_stderr_bytes, 0, MAX_STDERR_BYTES);
        let out = self.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        let err = self.max_stderr_bytes.unwrap_or(DEFAULT_MAX_STDERR_BYTES);
        let runs = u64::from(self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT));
        let buffered = runs.saturating_mul(out.saturating_add(err));
        if p.is_empty() && buffered > MAX_BUFFERED_BYTES {
            p.push((
                "maxConcurrent",
                format!(
                    "{runs} runs × (maxOutputBytes {out} + maxStderrBytes {err}) = {buffered} bytes of output narund would buffer, more than {MAX_BUFFERED_BYTES}; lower one of them"
                ),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_narund_buffers_is_bounded() {
        let c = CommandUnitSpec {
            max_concurrent: Some(1024),
            max_output_bytes: Some(MAX_OUTPUT_BYTES),
            ..Default::default()
        };
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "maxConcurrent");
        assert!(p[0].1.contains("lower one of them"), "{}", p[0].1);
        let ok = CommandUnitSpec {
            max_concurrent: Some(4),
            max_output_bytes: Some(MAX_OUTPUT_BYTES),
            max_stderr_bytes: Some(0),
            ..Default::default()
        };
        assert!(ok.problems().is_empty());
        assert!(CommandUnitSpec::default().problems().is_empty());
    }

    #[test]
    fn defaults_and_ranges() {
        let c = CommandUnitSpec::default();
        assert_eq!(c.max_concurrent(), DEFAULT_MAX_CONCURRENT);
        assert_eq!(c.timeout_sec(), DEFAULT_RUN_TIMEOUT_SEC);
        assert!(c.problems().is_empty());
        let bad = CommandUnitSpec {
            max_concurrent: Some(0),
            timeout_sec: Some(0),
            max_output_bytes: Some(MAX_OUTPUT_BYTES + 1),
            ..Default::default()
        };
        let keys: Vec<&str> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["maxConcurrent", "timeoutSec", "maxOutputBytes"]);
    }
}
