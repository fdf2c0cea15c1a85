//! JSON shapes published by narund, Go compatible (`narun-go-reference.md` §3.4, §3.8),
//! with optional additions that Go readers ignore.

use crate::status::{InstanceStatus, NodeStatus, Reason};
use bytes::BufMut;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Current time as RFC 3339 with nanoseconds, UTC (Go's `time.RFC3339Nano`).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One line of app output, published to `logs.<app>.<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance_id: String,
    pub app_name: String,
    pub node_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub message: String,
    /// RFC 3339 (nanoseconds), UTC.
    pub timestamp: String,
    /// Set on a line that was split because it exceeded the line limit (narun addition).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Lines dropped from the offline spool just before this one (narun addition).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
    /// The W3C trace id the line names (`trace_id=<32 hex>`, as the narun app library's
    /// handler spans print it), lifted out by narund (narun addition;
    /// [`crate::trace::find_trace_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Writes [`LogLine`] JSON without serde, byte for byte what `serde_json::to_vec(&LogLine)`
/// produces. narund serializes every forwarded line, so this is its per-line hot path.
///
/// The four fields that are the same for every line of one instance's stream (`instance_id`,
/// `app_name`, `node_id`, `stream`) are serialized once, in [`new`](Self::new); a line then costs
/// two copies and one escaping scan of the message. The message is taken as raw bytes and converted
/// like [`String::from_utf8_lossy`] (invalid UTF-8 becomes U+FFFD), which is what narund did before
/// it serialized the resulting `String` with serde_json.
///
/// ```
/// use narun_wire::events::{LogLine, LogLineJson};
/// let json = LogLineJson::new("hello-0", "hello", "node-1", "stdout");
/// let mut out = Vec::new();
/// json.write(&mut out, b"say \"hi\"\t\xff", "2026-01-01T00:00:00Z", false, 0);
/// let line = LogLine {
///     instance_id: "hello-0".into(),
///     app_name: "hello".into(),
///     node_id: "node-1".into(),
///     stream: "stdout".into(),
///     message: "say \"hi\"\t\u{fffd}".into(),
///     timestamp: "2026-01-01T00:00:00Z".into(),
///     partial: false,
///     dropped_before: 0,
///     trace_id: None,
/// };
/// assert_eq!(out, serde_json::to_vec(&line).unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct LogLineJson {
    /// `{"instance_id":"…","app_name":"…","node_id":"…","stream":"…","message":"`
    head: Vec<u8>,
}

impl LogLineJson {
    /// The serializer for the lines of one instance's `stream` (`stdout`/`stderr`).
    pub fn new(instance_id: &str, app_name: &str, node_id: &str, stream: &str) -> Self {
        let mut head = Vec::with_capacity(80 + instance_id.len() + app_name.len() + node_id.len());
        head.extend_from_slice(b"{\"instance_id\":");
        write_json_str(&mut head, instance_id);
        head.extend_from_slice(b",\"app_name\":");
        write_json_str(&mut head, app_name);
        head.extend_from_slice(b",\"node_id\":");
        write_json_str(&mut head, node_id);
        head.extend_from_slice(b",\"stream\":");
        write_json_str(&mut head, stream);
        head.extend_from_slice(b",\"message\":\"");
        LogLineJson { head }
    }

    /// Bytes one line takes besides its (escaped) message, for a timestamp of `timestamp_len`
    /// bytes, without `partial`/`dropped_before`: a capacity hint.
    pub fn overhead(&self, timestamp_len: usize) -> usize {
        self.head.len() + b"\",\"timestamp\":\"\"}".len() + timestamp_len
    }

    /// Append the JSON of one line to `out` (a `Vec<u8>`, or the `BytesMut` a publisher
    /// renders into and splits each line off as its own `Bytes`).
    pub fn write(
        &self,
        out: &mut impl BufMut,
        message: &[u8],
        timestamp: &str,
        partial: bool,
        dropped_before: u64,
    ) {
        out.put_slice(&self.head);
        write_escaped_lossy(out, message);
        out.put_slice(b"\",\"timestamp\":");
        write_json_str(out, timestamp);
        if partial {
            out.put_slice(b",\"partial\":true");
        }
        if dropped_before != 0 {
            out.put_slice(b",\"dropped_before\":");
            write_u64(out, dropped_before);
        }
        write_trace_id(out, message);
        out.put_u8(b'}');
    }

    /// `","timestamp":"…"}`: the end of the JSON of every line of `timestamp` without
    /// `partial`/`dropped_before`, for [`write_stamped`](Self::write_stamped). Lines that
    /// arrived together share one timestamp: a publisher makes this once for all of them.
    pub fn timestamp_field(out: &mut Vec<u8>, timestamp: &str) {
        out.extend_from_slice(b"\",\"timestamp\":");
        write_json_str(out, timestamp);
        out.push(b'}');
    }

    /// [`write`](Self::write) with the end of the line made by
    /// [`timestamp_field`](Self::timestamp_field): the same bytes in three copies (head,
    /// message, end) instead of seven.
    pub fn write_stamped(
        &self,
        out: &mut impl BufMut,
        message: &[u8],
        field: &[u8],
        partial: bool,
        dropped_before: u64,
    ) {
        out.put_slice(&self.head);
        write_escaped_lossy(out, message);
        let trace_id = crate::trace::find_trace_id(message);
        if !partial && dropped_before == 0 && trace_id.is_none() {
            out.put_slice(field);
            return;
        }
        out.put_slice(&field[..field.len() - 1]);
        if partial {
            out.put_slice(b",\"partial\":true");
        }
        if dropped_before != 0 {
            out.put_slice(b",\"dropped_before\":");
            write_u64(out, dropped_before);
        }
        if let Some(id) = trace_id {
            put_trace_id(out, id);
        }
        out.put_u8(b'}');
    }
}

/// `,"trace_id":"…"` when `message` names a trace id ([`crate::trace::find_trace_id`]).
fn write_trace_id(out: &mut impl BufMut, message: &[u8]) {
    if let Some(id) = crate::trace::find_trace_id(message) {
        put_trace_id(out, id);
    }
}

/// `,"trace_id":"<id>"` (`id`: 32 lower-case hex bytes, nothing to escape).
fn put_trace_id(out: &mut impl BufMut, id: &[u8]) {
    out.put_slice(b",\"trace_id\":\"");
    out.put_slice(id);
    out.put_u8(b'"');
}

// Keep LogLineJson in step with LogLine: this stops compiling when LogLine gains a field.
const _: fn(LogLine) = |l| {
    let LogLine {
        instance_id: _,
        app_name: _,
        node_id: _,
        stream: _,
        message: _,
        timestamp: _,
        partial: _,
        dropped_before: _,
        trace_id: _,
    } = l;
};

/// Append `s` as a JSON string, quotes included, escaped exactly as serde_json escapes it:
/// `"` and `\` backslashed; `\b \t \n \f \r` in short form; other bytes below 0x20 as `\u00xx`
/// (lower-case hex); everything else (`/`, DEL, non-ASCII) as is.
pub fn write_json_str(out: &mut impl BufMut, s: &str) {
    out.put_u8(b'"');
    write_escaped(out, s.as_bytes());
    out.put_u8(b'"');
}

/// Append `n` in decimal, as serde_json writes a `u64`.
fn write_u64(out: &mut impl BufMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// serde_json's escape table: 0 = copy the byte, `u` = `\u00xx`, other = `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `w` that needs escaping (< 0x20, `"` or `\`), possibly with
/// false marks above (in memory order after) a true one, never without a true one: the classic
/// "has a byte less than n" / "has a zero byte" word tricks. Zero means no byte needs escaping.
#[inline]
fn escape_marks(w: u64) -> u64 {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * b'\\' as u64);
    let backslash = b.wrapping_sub(ONES) & !b;
    (below_space | quote | backslash) & HIGH
}

/// Append the escaped form of `bytes`, which may be invalid UTF-8: the result is that of
/// `write_escaped(String::from_utf8_lossy(bytes))`, in one pass over ASCII text.
fn write_escaped_lossy(out: &mut impl BufMut, bytes: &[u8]) {
    let mut start = 0; // first byte not yet copied
    let mut i = 0;
    while i < bytes.len() {
        while let Some(word) = bytes.get(i..i + 8) {
            let w = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
            if escape_marks(w) | (w & HIGH) != 0 {
                break;
            }
            i += 8;
        }
        let Some(&byte) = bytes.get(i) else { break };
        if byte >= 0x80 {
            // The first non-ASCII byte: everything before it is ASCII, so `i` is a character
            // boundary and the rest can be checked (and, if need be, repaired) on its own.
            out.put_slice(&bytes[start..i]);
            let rest = &bytes[i..];
            match std::str::from_utf8(rest) {
                Ok(_) => write_escaped(out, rest),
                Err(_) => write_escaped(out, String::from_utf8_lossy(rest).as_bytes()),
            }
            return;
        }
        if ESCAPE[byte as usize] != 0 {
            out.put_slice(&bytes[start..i]);
            write_escape(out, byte);
            start = i + 1;
        }
        i += 1;
    }
    out.put_slice(&bytes[start..]);
}

/// Append the escape sequence of `byte` (one with a non-zero [`ESCAPE`] entry).
#[inline]
fn write_escape(out: &mut impl BufMut, byte: u8) {
    let esc = ESCAPE[byte as usize];
    if esc == b'u' {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.put_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(byte >> 4) as usize],
            HEX[(byte & 0xf) as usize],
        ]);
    } else {
        out.put_slice(&[b'\\', esc]);
    }
}

/// Append the escaped form of `bytes` (valid UTF-8), without quotes.
fn write_escaped(out: &mut impl BufMut, bytes: &[u8]) {
    let mut start = 0; // first byte not yet copied
    let mut i = 0;
    while i < bytes.len() {
        // Skip 8 clean bytes at a time: most log text needs no escaping at all.
        while let Some(word) = bytes.get(i..i + 8) {
            if escape_marks(u64::from_ne_bytes(word.try_into().expect("8 bytes"))) != 0 {
                break;
            }
            i += 8;
        }
        let Some(&byte) = bytes.get(i) else { break };
        if ESCAPE[byte as usize] != 0 {
            out.put_slice(&bytes[start..i]);
            write_escape(out, byte);
            start = i + 1;
        }
        i += 1;
    }
    out.put_slice(&bytes[start..]);
}

/// An instance status change, published to `status.<app>.<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusEvent {
    pub instance_id: String,
    pub node_id: String,
    /// `starting running stopping stopped failed crashed` (Go) plus `backoff reloading rolled_back invalid_spec`.
    pub status: InstanceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// RFC 3339 (nanoseconds), UTC.
    pub time: String,
    // ---- narun additions (Go readers ignore unknown keys) ----
    /// Machine-readable reason ([`Reason`]): `exit-code`, `signal`, `oom-kill`, `start-limit`,
    /// `fetch`, `verify`, `invalid-spec`, `watchdog`, `start-timeout`, `mainpid` (now following
    /// the app's `MAINPID=`), ...
    #[serde(
        default,
        with = "crate::status::opt_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// `STATUS=` text from the app's sd_notify.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notify_status: String,
    /// Limits from the spec that this node cannot enforce (e.g. `memory.max`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced_limits: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// Identity of the spec this run executes: narund's run hash (the spec's
    /// `config_hash` without `nodes`). `narunctl deploy --wait` compares it with the
    /// spec it wrote to tell the new runs from the old ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_hash: String,
    /// A job run's attempt ([`crate::runs::JobRun`]); absent for services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::runs::JobRun>,
}

/// Node heartbeat stored in `node-runner-states` under the node id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeState {
    pub node_id: String,
    pub last_seen: String,
    pub version: String,
    pub start_time: String,
    #[serde(default)]
    pub managed_instances: Vec<String>,
    /// `running` or `shutting_down`.
    pub status: NodeStatus,
    pub os: String,
    pub arch: String,
    // ---- narun additions ----
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `unified`, `hybrid` or `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup_layout: String,
    /// cgroup v2 controllers narund can use for limits (`memory`, `cpu`, `pids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_controllers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_uring: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_connected: Option<bool>,
    /// `host:port` where Prometheus scrapes this node's `/metrics` (narund's `[metrics]`);
    /// absent when it is off. The gateway's service-discovery document lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Specs in `app-configs` this node refused (it keeps running the previous spec of
    /// those apps, if any), until a valid spec of the app is applied or it is deleted
    /// (narun addition; also published as `invalid_spec` status events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_specs: Vec<InvalidSpec>,
    /// Load averages over 1, 5 and 15 minutes (`/proc/loadavg`) when the heartbeat was
    /// built (narun addition, like the fields below; absent when unreadable: older narunds
    /// and Go node-runners send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load15: Option<f64>,
    /// `MemTotal` of `/proc/meminfo`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_bytes: Option<u64>,
    /// `MemAvailable` of `/proc/meminfo` (memory for new work without swapping), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_bytes: Option<u64>,
    /// Size of the file system of narund's `data_dir` (`statvfs`), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// Bytes of that file system available to unprivileged users (`f_bavail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
}

/// A spec a node refused ([`NodeState::invalid_specs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InvalidSpec {
    pub app_name: String,
    /// Why (the parse or validation error, or what narund does not support).
    pub error: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// One instance as listed in [`NodeState::instances`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceState {
    pub instance_id: String,
    pub app_name: String,
    pub status: InstanceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(
        default,
        with = "crate::status::opt_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<Reason>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced_limits: Vec<String>,
    /// Run hash of the spec this instance runs (see [`StatusEvent::config_hash`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_hash: String,
    /// Last `STATUS=` text the app sent over sd_notify.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notify_status: String,
    /// Set when a newer spec was tried for this instance, did not become ready, and the
    /// instance kept running its previous spec (see [`RolledBack`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,
    /// When the instance entered its current `status`, RFC 3339 UTC (narun addition).
    /// With the spec's settle rule ([`crate::status::SettleRule`]) it tells a `running`
    /// instance that is ready from one that is still settling.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
    /// Error text of the current status (why it crashed or failed), as in its status event.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The last time this instance crashed or failed (kept across its restarts, so a
    /// crash-looping instance that is `starting` again still says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<InstanceFailure>,
    /// CPU time its cgroups used (`usage_usec` of `cpu.stat`, summed over its runs; starts
    /// again at 0 with each run) when the heartbeat was built (narun addition, like
    /// `memory_bytes`; absent without cgroups and in other listings than the heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usec: Option<u64>,
    /// Memory of its cgroups (`memory.current`; without the memory controller the resident
    /// memory of their processes), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// A crash or failure of an instance ([`InstanceState::last_failure`]): the status event
/// that reported it, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceFailure {
    /// `crashed`, `failed` or `invalid_spec`.
    pub status: InstanceStatus,
    /// `exit-code`, `signal`, `oom-kill`, `watchdog`, `start-limit`, `fetch`, …
    #[serde(
        default,
        with = "crate::status::opt_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Tag of the spec the failed run executed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// The releases of one app that became ready (`narunctl deploy|apps scale|apps rollback
/// --wait` write it on success), newest first, in the KV bucket
/// [`crate::jetstream::APP_RELEASES`] under the app's name (narun addition; Go peers
/// neither read nor write it). `narunctl apps rollback` goes back to the newest one whose
/// tag differs from the current spec's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Releases {
    #[serde(default)]
    pub releases: Vec<Release>,
}

/// One release in [`Releases`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Release {
    pub tag: String,
    /// The spec's `config_hash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_hash: String,
    /// The spec as it was stored in `app-configs` (its JSON value).
    pub spec: serde_json::Value,
    /// When it was seen ready, RFC 3339 UTC.
    pub time: String,
}

impl Releases {
    /// Most releases kept per app.
    pub const KEEP: usize = 10;

    /// Record `release` as the newest; an older entry with the same config hash (or, without
    /// hashes, the same tag) is dropped, and at most [`Releases::KEEP`] are kept.
    pub fn record(&mut self, release: Release) {
        self.releases.retain(|r| {
            if release.config_hash.is_empty() || r.config_hash.is_empty() {
                r.tag != release.tag
            } else {
                r.config_hash != release.config_hash
            }
        });
        self.releases.insert(0, release);
        self.releases.truncate(Self::KEEP);
    }

    /// The newest release whose tag is not `current` (the rollback target).
    pub fn previous(&self, current: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.tag != current)
    }

    /// The newest release with tag `tag`.
    pub fn with_tag(&self, tag: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.tag == tag)
    }
}

/// A replacement that did not become ready: narund stopped the new run and the previous
/// one keeps serving. Also published as a `rolled_back` [`StatusEvent`] (with `reason`,
/// `tag` and `config_hash` of the failed spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RolledBack {
    /// Tag of the spec that failed.
    pub tag: String,
    /// Run hash of the spec that failed (see [`StatusEvent::config_hash`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_hash: String,
    /// `start-timeout`, `watchdog`, `crashed`, `oom-kill`, `verify`, `fetch`, `start-limit`, …
    #[serde(default, with = "crate::status::opt_reason")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// Request on [`crate::names::control_subject`]`(node, "restart")`: restart the
/// instances of `app` on that node (stop, then a fresh start, one at a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestartRequest {
    pub app: String,
    /// Only this instance (`<app>-<index>`); empty = every instance of the app.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

/// narund's answer to a [`RestartRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestartReply {
    pub node_id: String,
    pub app: String,
    /// Instances that were restarted and are running (ready) again, in order.
    #[serde(default)]
    pub restarted: Vec<String>,
    /// Why the restart failed or stopped early (unknown app, an instance that did not
    /// come back, …); empty on success.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Request on [`crate::names::control_subject`]`(node, `[`crate::names::CONTROL_WAKE`]`)`:
/// start the instances of `app`, an app with `scaleToZero` that narund stopped for being
/// idle (sent by a gateway when a request found no responder). narund refuses it for an
/// app it does not run or that has no `scaleToZero`: a wake never starts anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WakeRequest {
    pub app: String,
}

/// narund's answer to a [`WakeRequest`]. It comes once the instances are started (not
/// once they serve: the caller waits for the service to answer discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WakeReply {
    pub node_id: String,
    pub app: String,
    /// Instances started by this request; empty when the app was awake already.
    #[serde(default)]
    pub started: Vec<String>,
    /// Why the app was not woken (unknown app, no `scaleToZero`, …); empty on success.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_request_and_reply_shapes() {
        let req: WakeRequest = serde_json::from_str(r#"{"app":"web"}"#).unwrap();
        assert_eq!(req.app, "web");
        let ok = WakeReply {
            node_id: "n1".into(),
            app: "web".into(),
            started: vec!["web-0".into()],
            error: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"node_id":"n1","app":"web","started":["web-0"]}"#
        );
        let refused: WakeReply =
            serde_json::from_str(r#"{"node_id":"n1","app":"db","error":"no scaleToZero"}"#)
                .unwrap();
        assert!(refused.started.is_empty());
        assert_eq!(
            crate::names::control_subject("n1", crate::names::CONTROL_WAKE),
            "narun.control.n1.wake"
        );
        assert_eq!(crate::micro::announce_subject("web"), "narun.svc.up.web");
    }

    #[test]
    fn status_event_matches_go_shape() {
        let ev = StatusEvent {
            instance_id: "hello-0".into(),
            node_id: "node-1".into(),
            status: InstanceStatus::Running,
            pid: Some(1234),
            time: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"instance_id":"hello-0","node_id":"node-1","status":"running","pid":1234,"time":"2026-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn reasons_are_absent_or_named() {
        // An empty reason (older narunds wrote `""`) is no reason; a missing one too.
        let ev: StatusEvent = serde_json::from_str(
            r#"{"instance_id":"a-0","node_id":"n","status":"stopped","time":"t","reason":""}"#,
        )
        .unwrap();
        assert_eq!(ev.reason, None);
        let ev = StatusEvent {
            status: InstanceStatus::Failed,
            reason: Some(Reason::StartLimit),
            ..Default::default()
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains(r#""reason":"start-limit""#), "{json}");
        assert_eq!(serde_json::from_str::<StatusEvent>(&json).unwrap(), ev);
        // A rollback always names its reason field (Go-style required key).
        let rb = serde_json::to_string(&RolledBack::default()).unwrap();
        assert!(rb.contains(r#""reason":"""#), "{rb}");
    }

    #[test]
    fn releases_keep_the_newest_per_spec() {
        let rel = |tag: &str, hash: &str| Release {
            tag: tag.into(),
            config_hash: hash.into(),
            spec: serde_json::json!({"name": "a", "tag": tag}),
            time: "t".into(),
        };
        let mut r = Releases::default();
        r.record(rel("v1", "h1"));
        r.record(rel("v2", "h2"));
        r.record(rel("v1", "h1"));
        let tags: Vec<&str> = r.releases.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["v1", "v2"]);
        assert_eq!(r.previous("v1").unwrap().tag, "v2");
        assert_eq!(r.previous("v3").unwrap().tag, "v1");
        assert!(r.with_tag("v9").is_none());
        for i in 0..20 {
            r.record(rel(&format!("t{i}"), &format!("x{i}")));
        }
        assert_eq!(r.releases.len(), Releases::KEEP);
        assert_eq!(r.releases[0].tag, "t19");
        let back: Releases = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn instance_failure_and_since_are_optional_on_the_wire() {
        let old: InstanceState =
            serde_json::from_str(r#"{"instance_id":"a-0","app_name":"a","status":"running"}"#)
                .unwrap();
        assert!(old.since.is_empty() && old.last_failure.is_none());
        assert_eq!((old.cpu_usec, old.memory_bytes), (None, None));
        let st = InstanceState {
            since: "2026-01-01T00:00:00Z".into(),
            cpu_usec: Some(1_500_000),
            memory_bytes: Some(4 << 20),
            last_failure: Some(InstanceFailure {
                status: InstanceStatus::Crashed,
                reason: Some(Reason::ExitCode),
                exit_code: Some(3),
                error: "exit status 3".into(),
                tag: "v1".into(),
                time: "2026-01-01T00:00:00Z".into(),
            }),
            ..old
        };
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains(r#""reason":"exit-code""#), "{json}");
        assert!(
            json.contains(r#""cpu_usec":1500000,"memory_bytes":4194304"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<InstanceState>(&json).unwrap(), st);
    }

    #[test]
    fn go_node_state_parses() {
        let go = r#"{"node_id":"node-1","last_seen":"2026-01-01T00:00:00Z","version":"0.2.1-dev","start_time":"2026-01-01T00:00:00Z","managed_instances":["hello-0"],"status":"running","os":"linux","arch":"amd64"}"#;
        let st: NodeState = serde_json::from_str(go).unwrap();
        assert_eq!(st.managed_instances, vec!["hello-0"]);
        assert!(st.labels.is_empty());
        assert_eq!(
            (st.load1, st.mem_total_bytes, st.disk_free_bytes),
            (None, None, None)
        );
    }

    #[test]
    fn node_load_memory_and_disk_are_optional_on_the_wire() {
        let none = serde_json::to_string(&NodeState::default()).unwrap();
        for key in ["load1", "mem_total_bytes", "disk_free_bytes"] {
            assert!(!none.contains(key), "{none}");
        }
        let st = NodeState {
            load1: Some(0.5),
            load5: Some(1.25),
            load15: Some(0.0),
            mem_total_bytes: Some(16 << 30),
            mem_available_bytes: Some(8 << 30),
            disk_total_bytes: Some(1 << 40),
            disk_free_bytes: Some(1 << 39),
            ..Default::default()
        };
        let json = serde_json::to_string(&st).unwrap();
        assert!(
            json.contains(r#""load1":0.5,"load5":1.25,"load15":0.0,"mem_total_bytes":17179869184"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<NodeState>(&json).unwrap(), st);
        // A reader of a heartbeat whose value is null (a NaN serialised) sees none.
        let odd = json.replace("0.5", "null");
        assert_eq!(serde_json::from_str::<NodeState>(&odd).unwrap().load1, None);
    }

    #[test]
    fn instance_rollback_and_notify_status_are_optional_on_the_wire() {
        let plain = InstanceState {
            instance_id: "hello-0".into(),
            app_name: "hello".into(),
            status: InstanceStatus::Running,
            ..Default::default()
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("rolled_back") && !json.contains("notify_status"),
            "{json}"
        );
        let rb = InstanceState {
            notify_status: "serving".into(),
            rolled_back: Some(RolledBack {
                tag: "v2".into(),
                reason: Some(Reason::StartTimeout),
                time: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            }),
            ..plain
        };
        let back: InstanceState =
            serde_json::from_str(&serde_json::to_string(&rb).unwrap()).unwrap();
        assert_eq!(back, rb);
    }
}

#[cfg(test)]
mod log_line_json_tests {
    use super::*;

    fn serde(
        message: &[u8],
        timestamp: &str,
        partial: bool,
        dropped_before: u64,
        ids: [&str; 4],
    ) -> Vec<u8> {
        serde_json::to_vec(&LogLine {
            instance_id: ids[0].into(),
            app_name: ids[1].into(),
            node_id: ids[2].into(),
            stream: ids[3].into(),
            message: String::from_utf8_lossy(message).into_owned(),
            timestamp: timestamp.into(),
            partial,
            dropped_before,
            trace_id: crate::trace::find_trace_id(message)
                .map(|id| String::from_utf8(id.to_vec()).expect("hex")),
        })
        .unwrap()
    }

    fn ours(
        message: &[u8],
        timestamp: &str,
        partial: bool,
        dropped_before: u64,
        ids: [&str; 4],
    ) -> Vec<u8> {
        let mut out = b"previous line".to_vec();
        LogLineJson::new(ids[0], ids[1], ids[2], ids[3]).write(
            &mut out,
            message,
            timestamp,
            partial,
            dropped_before,
        );
        assert_eq!(&out[..13], b"previous line", "write appends");
        let out = out.split_off(13);
        // The publisher's path: the end made once, the line rendered into a `BytesMut`.
        let mut field = Vec::new();
        LogLineJson::timestamp_field(&mut field, timestamp);
        let mut stamped = bytes::BytesMut::from(&b"previous"[..]);
        LogLineJson::new(ids[0], ids[1], ids[2], ids[3]).write_stamped(
            &mut stamped,
            message,
            &field,
            partial,
            dropped_before,
        );
        assert_eq!(
            &stamped[8..],
            &out[..],
            "write_stamped writes what write does"
        );
        out
    }

    const IDS: [&str; 4] = ["hello-0", "hello", "node-1", "stdout"];

    #[test]
    fn exact_go_shape_of_a_plain_line() {
        let json = ours(b"hi", "2026-01-01T00:00:00.5Z", false, 0, IDS);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"instance_id":"hello-0","app_name":"hello","node_id":"node-1","stream":"stdout","message":"hi","timestamp":"2026-01-01T00:00:00.5Z"}"#
        );
        // Go's runner decodes exactly these keys; the additions only appear when set.
        let with = ours(b"hi", "t", true, 7, IDS);
        assert!(with.ends_with(br#","timestamp":"t","partial":true,"dropped_before":7}"#));
        let back: LogLine = serde_json::from_slice(&with).unwrap();
        assert!(back.partial && back.dropped_before == 7);
        // A trace id in the line (a narun handler span) becomes a field of its own.
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let line = format!("INFO request{{trace_id={id} span_id=00f067aa0ba902b7}}: hi");
        for (partial, dropped) in [(false, 0), (true, 3)] {
            let traced = ours(line.as_bytes(), "t", partial, dropped, IDS);
            let back: LogLine = serde_json::from_slice(&traced).unwrap();
            assert_eq!(back.trace_id.as_deref(), Some(id));
            assert!(traced.ends_with(format!(r#""trace_id":"{id}"}}"#).as_bytes()));
        }
        let back: LogLine =
            serde_json::from_slice(&ours(b"trace_id=x", "t", false, 0, IDS)).unwrap();
        assert_eq!(back.trace_id, None);
    }

    #[test]
    fn edge_cases_match_serde_json() {
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\"".to_vec(),
            b"\\".to_vec(),
            b"\\\"\\\"".to_vec(),
            b"/ \x7f DEL and slash stay".to_vec(),
            "héllo wörld ✓ 𝄞".as_bytes().to_vec(),
            b"\xff\xfe invalid".to_vec(),
            b"truncated \xe2\x9c".to_vec(),
            b"\xc0\x80 overlong nul".to_vec(),
            b"\xed\xa0\x80 surrogate".to_vec(),
            b"12345678\"2345678\\".to_vec(),
            b"1234567\x1f".to_vec(),
        ];
        // Every single byte value, alone and at every position of a 9-byte word boundary.
        for b in 0..=255u8 {
            cases.push(vec![b]);
            for pos in 0..9 {
                let mut v = b"abcdefghi".to_vec();
                v[pos] = b;
                cases.push(v);
            }
        }
        for (i, m) in cases.iter().enumerate() {
            let (partial, dropped) = (i % 3 == 0, (i % 5) as u64 * 1_000_000_007);
            let ts = "2026-11-23T14:44:09.123456789Z";
            assert_eq!(
                ours(m, ts, partial, dropped, IDS),
                serde(m, ts, partial, dropped, IDS),
                "message bytes {m:?}"
            );
        }
        assert_eq!(
            ours(b"x", "t", false, u64::MAX, IDS),
            serde(b"x", "t", false, u64::MAX, IDS)
        );
        // The per-stream fields are escaped too.
        let odd = ["a\"b\\c", "\u{1}app", "node\n1", "std\u{7f}é"];
        assert_eq!(
            ours(b"m", "t", true, 1, odd),
            serde(b"m", "t", true, 1, odd)
        );
    }

    /// xorshift64*: a deterministic pseudo-random source, so a failure is reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_messages_match_serde_json() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Biased alphabets: plain text with sprinkles of escapes, UTF-8 pieces and junk bytes.
        let pieces: &[&[u8]] = &[
            b"a",
            b"Z",
            b" ",
            b"0",
            b"\"",
            b"\\",
            b"\n",
            b"\r",
            b"\t",
            b"\x00",
            b"\x1b[31m",
            b"\x7f",
            b"/",
            "é".as_bytes(),
            "✓".as_bytes(),
            "𝄞".as_bytes(),
            b"\xff",
            b"\x80",
            b"\xe2\x9c",
            b"\xf0\x9d",
            b"abcdefgh",
            b"plain log text ",
        ];
        for round in 0..20_000 {
            let len = (rng.next() % 80) as usize;
            let mut m = Vec::new();
            for _ in 0..len {
                let r = rng.next();
                if r.is_multiple_of(4) {
                    m.push((r >> 8) as u8); // any byte at all
                } else {
                    m.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]);
                }
            }
            let partial = rng.next().is_multiple_of(2);
            let dropped = if rng.next().is_multiple_of(4) {
                rng.next() >> (rng.next() % 64)
            } else {
                0
            };
            assert_eq!(
                ours(&m, "2026-11-23T14:44:09Z", partial, dropped, IDS),
                serde(&m, "2026-11-23T14:44:09Z", partial, dropped, IDS),
                "round {round}: message bytes {m:?}"
            );
        }
    }
}
