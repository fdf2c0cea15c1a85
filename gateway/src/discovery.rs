//! Prometheus HTTP service discovery of the narund nodes' `/metrics`: `GET /sd/nodes` on
//! the gateway's metrics listener answers the [HTTP SD] document that lists, for every
//! live node (a key in `node-runner-states`: the bucket's TTL drops a node that stops
//! heart-beating) whose heartbeat has a `metrics_addr`, that target with its labels:
//!
//! ```json
//! [{"targets": ["node-1.lan:9101"],
//!   "labels": {"node": "node-1", "__meta_narun_node_id": "node-1",
//!              "__meta_narun_version": "0.1.0", "__meta_narun_os": "linux",
//!              "__meta_narun_arch": "arm64", "__meta_narun_label_role": "edge"}}]
//! ```
//!
//! A node shutting down is left out. The read is bounded ([`READ_TIMEOUT`],
//! [`MAX_NODES`]); NATS unreachable gives 503, so Prometheus keeps its last targets.
//!
//! [HTTP SD]: https://prometheus.io/docs/prometheus/latest/http_sd/

use futures_util::StreamExt;
use narun_wire::events::NodeState;
use narun_wire::status::NodeStatus;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Path of the document on the metrics listener.
pub const PATH: &str = "/sd/nodes";
/// Longest read of `node-runner-states` for one request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Nodes listed at most.
pub const MAX_NODES: usize = 10_000;

/// The document for these heartbeats (pure).
pub fn document(states: &[NodeState]) -> String {
    let mut live: Vec<&NodeState> = states
        .iter()
        .filter(|s| s.status == NodeStatus::Running)
        .filter(|s| s.metrics_addr.as_deref().is_some_and(|a| !a.is_empty()))
        .collect();
    live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let groups: Vec<Value> = live
        .into_iter()
        .map(|s| {
            let mut labels = Map::new();
            let mut put = |k: String, v: &str| {
                labels.insert(k, Value::String(v.to_string()));
            };
            put("node".into(), &s.node_id);
            put("__meta_narun_node_id".into(), &s.node_id);
            put("__meta_narun_version".into(), &s.version);
            put("__meta_narun_os".into(), &s.os);
            put("__meta_narun_arch".into(), &s.arch);
            for (k, v) in &s.labels {
                put(format!("__meta_narun_label_{}", label_name(k)), v);
            }
            json!({"targets": [s.metrics_addr.as_deref().unwrap_or_default()], "labels": labels})
        })
        .collect();
    Value::Array(groups).to_string()
}

/// A node label as a Prometheus label name: every byte but `[A-Za-z0-9_]` becomes `_`.
fn label_name(k: &str) -> String {
    k.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Read every heartbeat in `node-runner-states` (none when the bucket does not exist).
pub async fn node_states(client: &async_nats::Client) -> Result<Vec<NodeState>, String> {
    let read = async {
        let js = async_nats::jetstream::new(client.clone());
        let kv = match narun_wire::jetstream::NODE_STATES.open(&js).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut keys = kv.keys().await.map_err(|e| format!("listing nodes: {e}"))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| format!("listing nodes: {e}"))?;
            if out.len() >= MAX_NODES {
                break;
            }
            if let Ok(Some(v)) = kv.get(&k).await
                && let Ok(s) = serde_json::from_slice::<NodeState>(&v)
            {
                out.push(s);
            }
        }
        Ok(out)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| format!("reading node-runner-states took over {READ_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_nodes_with_a_metrics_address() {
        let node = |id: &str, addr: Option<&str>, status: NodeStatus| NodeState {
            node_id: id.into(),
            version: "0.1.0".into(),
            os: "linux".into(),
            arch: "arm64".into(),
            status,
            metrics_addr: addr.map(String::from),
            labels: [("role.kind".to_string(), "edge".to_string())].into(),
            ..Default::default()
        };
        let doc = document(&[
            node("b", Some("b.lan:9101"), NodeStatus::Running),
            node("a", Some("10.0.0.1:9101"), NodeStatus::Running),
            node("off", None, NodeStatus::Running),
            node("empty", Some(""), NodeStatus::Running),
            node("leaving", Some("l:1"), NodeStatus::ShuttingDown),
        ]);
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(
            v,
            json!([
                {"targets": ["10.0.0.1:9101"], "labels": {"node": "a", "__meta_narun_node_id": "a",
                  "__meta_narun_version": "0.1.0", "__meta_narun_os": "linux",
                  "__meta_narun_arch": "arm64", "__meta_narun_label_role_kind": "edge"}},
                {"targets": ["b.lan:9101"], "labels": {"node": "b", "__meta_narun_node_id": "b",
                  "__meta_narun_version": "0.1.0", "__meta_narun_os": "linux",
                  "__meta_narun_arch": "arm64", "__meta_narun_label_role_kind": "edge"}}
            ])
        );
        assert_eq!(document(&[]), "[]");
    }
}
