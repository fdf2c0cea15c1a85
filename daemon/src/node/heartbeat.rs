//! The node's heartbeat in `node-runner-states` (Go compatible, with narun additions).
//!
//! Every [`HEARTBEAT`] (and shortly after any instance changes state) narund puts a
//! [`NodeState`] under its node id: the Go fields (`last_seen`, `managed_instances`,
//! `status`, `os`, `arch`, …) plus labels, the cgroup layout and the controllers narund can
//! enforce, whether io_uring is used, and every instance with its state. The bucket has a
//! 45 s TTL, so a node that stops heart-beating disappears after three missed beats.
//!
//! Each heartbeat also carries the machine's load averages, memory (total, available) and
//! the size and free space of the file system of `data_dir` ([`host_facts`]): two small
//! `/proc` reads and one `statvfs` when the state is built, no timer of their own; and
//! per instance the CPU time and memory of its cgroups (the files `/metrics` reads,
//! [`crate::metrics::collect::instance_facts`]), from which the dashboard of any node
//! draws this node's sparklines.
//!
//! On a clean shutdown ([`shutdown`]) the state is put once more with status
//! `shutting_down`, every app is stopped gracefully in parallel (each within its
//! `stopTimeoutSec`), and the key is deleted.

use crate::node::Node;
use async_nats::jetstream::kv;
use narun_wire::events::{NodeState, now_rfc3339};
use narun_wire::names;
use narun_wire::status::NodeStatus;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Interval between heartbeats (Go: TTL / 3).
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// First retry of a heartbeat that could not be published.
pub const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);
/// A state change is published after at most this delay (changes are batched).
pub const CHANGE_DEBOUNCE: Duration = Duration::from_millis(200);
/// Bound of each put.
pub const PUT_TIMEOUT: Duration = Duration::from_millis(7500);
/// narund's version string in the node state.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Build the node state as of now.
pub fn node_state(node: &Node, status: NodeStatus, start_time: &str, connected: bool) -> NodeState {
    let mut instances = node.instances();
    if let Some(root) = node.cgroup_root() {
        let facts = crate::metrics::collect::instance_facts(node, root, true);
        for i in &mut instances {
            if let Some(f) = facts.get(&(i.app_name.clone(), i.instance_id.clone())) {
                i.cpu_usec = f.cpu_seconds.map(|s| (s * 1e6).round() as u64);
                i.memory_bytes = f.memory_bytes;
            }
        }
    }
    let mut managed: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
    managed.sort();
    managed.dedup();
    let (layout, controllers) = match node.cgroups() {
        Some(c) => (c.layout(), c.controllers()),
        None => ("none".to_string(), vec![]),
    };
    let mut state = NodeState {
        node_id: node.settings().node_id.clone(),
        last_seen: now_rfc3339(),
        version: VERSION.to_string(),
        start_time: start_time.to_string(),
        managed_instances: managed,
        status,
        os: names::go_os().to_string(),
        arch: names::go_arch().to_string(),
        labels: node.live().labels.clone(),
        cgroup_layout: layout,
        cgroup_controllers: controllers,
        io_uring: Some(node.io_uring()),
        instances,
        nats_connected: Some(connected),
        invalid_specs: node.invalid_specs(),
        metrics_addr: node.metrics_addr(),
        ..Default::default()
    };
    let read = |p: &str| std::fs::read_to_string(p).ok();
    host_facts(
        &mut state,
        read("/proc/loadavg").as_deref(),
        read("/proc/meminfo").as_deref(),
        crate::sys::fs::space(&node.settings().data_dir).ok(),
    );
    state
}

/// Put the machine's load, memory and disk into `state`: from the text of
/// `/proc/loadavg` and `/proc/meminfo` and the `(size, available)` of `data_dir`'s file
/// system. Whatever is absent or unreadable stays `None` (pure; the parsers are the ones
/// `/metrics` uses, [`crate::metrics::collect`]).
pub fn host_facts(
    state: &mut NodeState,
    loadavg: Option<&str>,
    meminfo: Option<&str>,
    space: Option<(u64, u64)>,
) {
    use crate::metrics::collect;
    if let Some([l1, l5, l15]) = loadavg.and_then(collect::loadavg) {
        (state.load1, state.load5, state.load15) = (Some(l1), Some(l5), Some(l15));
    }
    (state.mem_total_bytes, state.mem_available_bytes) =
        meminfo.map_or((None, None), collect::meminfo);
    // A file system of size 0 (e.g. some pseudo file systems) says nothing about disk.
    if let Some((total, free)) = space.filter(|(total, _)| *total > 0) {
        (state.disk_total_bytes, state.disk_free_bytes) = (Some(total), Some(free.min(total)));
    }
}

async fn open(client: &async_nats::Client, replicas: Option<usize>) -> Option<kv::Store> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return None;
    }
    let js = async_nats::jetstream::new(client.clone());
    let ensure = narun_wire::jetstream::NODE_STATES.ensure_replicas(&js, replicas);
    match tokio::time::timeout(PUT_TIMEOUT, ensure).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "node-runner-states not available");
            None
        }
        Err(_) => None,
    }
}

async fn put(store: &kv::Store, state: &NodeState) -> bool {
    let json = serde_json::to_vec(state).expect("a NodeState always serializes");
    matches!(
        tokio::time::timeout(PUT_TIMEOUT, store.put(&state.node_id, json.into())).await,
        Ok(Ok(_))
    )
}

/// One line for systemd's `STATUS=`: instances per state (most common first, ties by
/// name) and whether NATS is connected, e.g. `3 running, 1 failed; NATS connected`.
pub fn status_line(instances: &[narun_wire::events::InstanceState], connected: bool) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for i in instances {
        *counts.entry(i.status.as_str()).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let apps = if counts.is_empty() {
        "no instances".to_string()
    } else {
        counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let nats = if connected {
        "connected"
    } else {
        "disconnected"
    };
    format!("{apps}; NATS {nats}")
}

/// Heart-beat until `stop` becomes true. A put that fails (or whose connection is lost
/// before the answer, `events`) is retried after [`HEARTBEAT_RETRY`], doubling up to
/// [`HEARTBEAT`].
pub async fn run_heartbeat(
    node: Node,
    client: async_nats::Client,
    events: narun_wire::connect::ConnectionEvents,
    start_time: String,
    stop: CancellationToken,
) {
    let beat = node.liveness().register("heartbeat");
    let mut store: Option<kv::Store> = None;
    // Until a put succeeds (narund usually starts before NATS is reachable; a connection
    // may be lost later), retry sooner than HEARTBEAT: 1 s, doubling up to it.
    let mut retry = Some(HEARTBEAT_RETRY);
    loop {
        let mut published = false;
        {
            // Both calls are bounded by PUT_TIMEOUT; building the state takes the
            // node's locks, so a deadlock there shows up as an overrun.
            let _busy = beat.busy("publishing the node state", 3 * PUT_TIMEOUT);
            if store.is_none() {
                let replicas = node.settings().nats.stream_replicas;
                store = events
                    .unless_lost(open(&client, replicas))
                    .await
                    .ok()
                    .flatten();
            }
            if let Some(s) = &store {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                let state = node_state(&node, NodeStatus::Running, &start_time, connected);
                published = events.unless_lost(put(s, &state)).await.unwrap_or(false);
                if !published {
                    tracing::debug!("heartbeat put failed (NATS down?)");
                }
            }
        }
        let wait = match retry {
            _ if published => {
                retry = None;
                HEARTBEAT
            }
            Some(r) => {
                retry = Some((r * 2).min(HEARTBEAT));
                r
            }
            None => {
                retry = Some((HEARTBEAT_RETRY * 2).min(HEARTBEAT));
                HEARTBEAT_RETRY
            }
        };
        let next = tokio::time::sleep(wait);
        tokio::pin!(next);
        let changed = node.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                _ = &mut next => break,
                _ = &mut changed => {
                    tokio::time::sleep(CHANGE_DEBOUNCE).await;
                    break;
                }
                _ = beat.asked() => beat.beat(),
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Clean shutdown: `shutting_down`, stop every app in parallel, delete the node key.
pub async fn shutdown(node: &Node, client: &async_nats::Client, start_time: &str) {
    let store = open(client, node.settings().nats.stream_replicas).await;
    if let Some(s) = &store {
        put(
            s,
            &node_state(node, NodeStatus::ShuttingDown, start_time, true),
        )
        .await;
    }
    node.shutdown().await;
    if let Some(s) = &store {
        let node = node.settings().node_id.clone();
        let _ = tokio::time::timeout(PUT_TIMEOUT, s.delete(&node)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::events::InstanceState;

    #[test]
    fn host_facts_fill_what_is_readable() {
        let mut s = NodeState::default();
        host_facts(
            &mut s,
            Some("0.52 1.00 0.25 2/345 6789\n"),
            Some("MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    8192 kB\n"),
            Some((1000, 400)),
        );
        assert_eq!(
            (s.load1, s.load5, s.load15),
            (Some(0.52), Some(1.0), Some(0.25))
        );
        assert_eq!(
            (s.mem_total_bytes, s.mem_available_bytes),
            (Some(16384 * 1024), Some(8192 * 1024))
        );
        assert_eq!(
            (s.disk_total_bytes, s.disk_free_bytes),
            (Some(1000), Some(400))
        );
        // Garbage, absent files, an empty file system: nothing, and no panic.
        for (load, mem, space) in [
            (Some("garbage"), Some("MemTotal: lots kB"), Some((0, 0))),
            (
                Some("nan inf -1"),
                Some("MemTotal: 99999999999999999999 kB"),
                None,
            ),
            (None, None, None),
        ] {
            let mut s = NodeState::default();
            host_facts(&mut s, load, mem, space);
            assert_eq!(s, NodeState::default(), "{load:?} {mem:?} {space:?}");
        }
        // Only MemTotal (kernels before 3.14 have no MemAvailable).
        let mut s = NodeState::default();
        host_facts(&mut s, None, Some("MemTotal: 4 kB\n"), Some((10, 20)));
        assert_eq!(
            (s.mem_total_bytes, s.mem_available_bytes),
            (Some(4096), None)
        );
        assert_eq!(s.disk_free_bytes, Some(10), "free is at most the size");
    }

    #[test]
    fn host_facts_of_this_machine() {
        let mut s = NodeState::default();
        let read = |p: &str| std::fs::read_to_string(p).ok();
        host_facts(
            &mut s,
            read("/proc/loadavg").as_deref(),
            read("/proc/meminfo").as_deref(),
            crate::sys::fs::space(std::path::Path::new("/")).ok(),
        );
        assert!(s.load1.is_some(), "{s:?}");
        assert!(s.mem_total_bytes.unwrap() >= s.mem_available_bytes.unwrap());
        assert!(s.disk_total_bytes.unwrap() >= s.disk_free_bytes.unwrap());
    }

    #[test]
    fn status_line_counts_states() {
        let i = |status: &str| InstanceState {
            status: narun_wire::status::InstanceStatus::parse(status),
            ..Default::default()
        };
        assert_eq!(status_line(&[], false), "no instances; NATS disconnected");
        assert_eq!(
            status_line(
                &[i("running"), i("failed"), i("running"), i("starting")],
                true
            ),
            "2 running, 1 failed, 1 starting; NATS connected"
        );
    }
}
