//! JSON shapes published by narund, Go compatible (`narun-go-reference.md` §3.4, §3.8),
//! with optional additions that Go readers ignore.

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
}

/// An instance status change, published to `status.<app>.<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusEvent {
    pub instance_id: String,
    pub node_id: String,
    /// `starting running stopping stopped failed crashed` (Go) plus `backoff reloading rolled_back invalid_spec`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// RFC 3339 (nanoseconds), UTC.
    pub time: String,
    // ---- narun additions (Go readers ignore unknown keys) ----
    /// Machine-readable reason: `exit-code`, `signal`, `oom-kill`, `start-limit`, `fetch`, `verify`,
    /// `invalid-spec`, `watchdog`, `start-timeout`, `mainpid` (now following the app's `MAINPID=`), ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
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
    pub status: String,
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
}

/// One instance as listed in [`NodeState::instances`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceState {
    pub instance_id: String,
    pub app_name: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
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
    pub reason: String,
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

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_event_matches_go_shape() {
        let ev = StatusEvent {
            instance_id: "hello-0".into(),
            node_id: "node-1".into(),
            status: "running".into(),
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
    fn go_node_state_parses() {
        let go = r#"{"node_id":"node-1","last_seen":"2026-01-01T00:00:00Z","version":"0.2.1-dev","start_time":"2026-01-01T00:00:00Z","managed_instances":["hello-0"],"status":"running","os":"linux","arch":"amd64"}"#;
        let st: NodeState = serde_json::from_str(go).unwrap();
        assert_eq!(st.managed_instances, vec!["hello-0"]);
        assert!(st.labels.is_empty());
    }

    #[test]
    fn instance_rollback_and_notify_status_are_optional_on_the_wire() {
        let plain = InstanceState {
            instance_id: "hello-0".into(),
            app_name: "hello".into(),
            status: "running".into(),
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
                reason: "start-timeout".into(),
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
