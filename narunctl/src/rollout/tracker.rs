//! The rollout bookkeeping, independent of NATS: [`Tracker`] takes status events,
//! heartbeats and log lines, and says which instances are selected, whether the rollout
//! is ready, pending or failed, and why (the table rows and the failure report).

use crate::session::heartbeat_fresh;
use narun_spec::{AppSpec, ExitKind};
use narun_wire::events::{LogLine, NodeState, StatusEvent};
use narun_wire::status::{InstanceStatus, NodeStatus, Reason, SettleRule};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Log lines kept per instance for the failure report.
pub const LOG_TAIL: usize = 20;

/// `(node, instance id)`.
type Key = (String, String);

/// What is known about one instance of the new spec.
#[derive(Debug, Clone, Default)]
struct Instance {
    /// Last status of a run of the new spec (`None`, shown as `waiting`, before any).
    status: Option<InstanceStatus>,
    /// Reason and error text of that status.
    detail: String,
    /// When the run of the new spec was seen `running` (by us).
    running_since: Option<Instant>,
    /// Seen `running` with the new hash in a heartbeat before any event: it already ran
    /// this spec before the deploy.
    ready_from_state: bool,
    /// At least one status event of the new spec was seen (events then take precedence
    /// over heartbeats, which are built up to 200 ms later and may be older).
    from_event: bool,
    restarts: u32,
    /// Why the wait fails because of this instance.
    failure: Option<String>,
    /// narund's own log line about the failure has been seen.
    failure_logged: bool,
}

/// The verdict after an update.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting.
    Pending,
    /// Every selected instance is ready.
    Ready,
    /// At least one instance failed for good.
    Failed,
}

/// Rollout bookkeeping, independent of NATS.
#[derive(Debug)]
pub struct Tracker {
    spec: AppSpec,
    hash: String,
    /// Online nodes and their labels.
    nodes: BTreeMap<String, NodeState>,
    /// Instances of the new spec, by (node, id); contains every instance seen, selected or not.
    instances: BTreeMap<Key, Instance>,
    logs: BTreeMap<Key, VecDeque<String>>,
    /// Errors not tied to one instance (`invalid_spec` from a node).
    node_failures: BTreeMap<String, String>,
}

impl Tracker {
    /// Track the rollout of `spec` (whose run hash is computed here).
    pub fn new(spec: AppSpec) -> Tracker {
        Tracker {
            hash: spec.run_hash(),
            spec,
            nodes: BTreeMap::new(),
            instances: BTreeMap::new(),
            logs: BTreeMap::new(),
            node_failures: BTreeMap::new(),
        }
    }

    /// The run hash of the new spec.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The spec being rolled out.
    pub fn spec(&self) -> &AppSpec {
        &self.spec
    }

    /// A heartbeat was put (`Some`) or a node key deleted (`None`).
    pub fn on_node(&mut self, node_id: &str, state: Option<NodeState>) {
        let Some(state) = state.filter(|s| s.status == NodeStatus::Running && heartbeat_fresh(s))
        else {
            self.nodes.remove(node_id);
            return;
        };
        for i in &state.instances {
            if i.app_name != self.spec.name || i.status != InstanceStatus::Running {
                continue;
            }
            // Without a hash (older narund) the tag is the best we have.
            let same = if i.config_hash.is_empty() {
                i.tag == self.spec.tag
            } else {
                i.config_hash == self.hash
            };
            if !same {
                continue;
            }
            let inst = self
                .instances
                .entry((node_id.to_string(), i.instance_id.clone()))
                .or_default();
            if !inst.from_event {
                inst.status = Some(InstanceStatus::Running);
                inst.ready_from_state = true;
                inst.restarts = i.restarts;
            }
        }
        self.nodes.insert(node_id.to_string(), state);
    }

    /// Whether a status event is about a run of the new spec.
    fn ours(&self, ev: &StatusEvent) -> bool {
        if ev.config_hash.is_empty() {
            !ev.tag.is_empty() && ev.tag == self.spec.tag
        } else {
            ev.config_hash == self.hash
        }
    }

    /// A status event arrived at `now`.
    pub fn on_status(&mut self, ev: StatusEvent, now: Instant) {
        let node = ev.node_id.clone();
        match ev.status {
            InstanceStatus::InvalidSpec => {
                self.node_failures.insert(
                    node,
                    format!("narund rejected the spec: {}", one_line(&ev.error)),
                );
                return;
            }
            InstanceStatus::RolledBack => {
                let why = format!(
                    "rolled back by narund ({}){}: the previous version keeps running",
                    ev.reason
                        .as_ref()
                        .map_or("did not become ready", Reason::as_str),
                    if ev.error.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", one_line(&ev.error))
                    }
                );
                let key = (node.clone(), ev.instance_id.clone());
                if self.instances.contains_key(&key) || self.selected().contains(&key) {
                    self.fail(key, why);
                } else {
                    self.node_failures.insert(node, why);
                }
                return;
            }
            _ => {}
        }
        if !self.ours(&ev) {
            return;
        }
        let key = (node, ev.instance_id.clone());
        let restart = self.spec.restart.clone();
        let was_ready = self.ready_at(&key, now);
        let inst = self.instances.entry(key.clone()).or_default();
        inst.from_event = true;
        inst.ready_from_state = false;
        inst.status = Some(ev.status.clone());
        if let Some(r) = ev.restarts {
            inst.restarts = r;
        }
        inst.detail = match (&ev.reason, ev.error.is_empty()) {
            (None, true) => String::new(),
            (Some(r), true) => r.to_string(),
            (None, false) => one_line(&ev.error),
            (Some(r), false) => format!("{r}: {}", one_line(&ev.error)),
        };
        let mut failure = None;
        match ev.status {
            InstanceStatus::Running => inst.running_since = Some(now),
            InstanceStatus::Failed => {
                inst.running_since = None;
                failure = Some(format!("failed ({})", inst.detail));
            }
            InstanceStatus::Crashed | InstanceStatus::Stopped => {
                inst.running_since = None;
                match exit_kind(&ev) {
                    None if !was_ready => {
                        failure = Some(
                            "stopped by narund before it became ready (the previous version keeps running)"
                                .to_string(),
                        );
                    }
                    None => {}
                    Some(kind) if !restart.restarts_after(kind) => {
                        failure = Some(format!(
                            "{} ({}); restart policy {:?} does not restart it",
                            ev.status,
                            inst.detail,
                            restart.as_str()
                        ));
                    }
                    Some(_) => {}
                }
            }
            _ => inst.running_since = None,
        }
        if let Some(why) = failure {
            self.fail(key, why);
        }
    }

    fn fail(&mut self, key: Key, why: String) {
        let logged = self
            .logs
            .get(&key)
            .and_then(|l| l.back())
            .is_some_and(|l| l.contains("] narund: "));
        let inst = self.instances.entry(key).or_default();
        if inst.failure.is_none() {
            inst.failure = Some(why);
            inst.failure_logged = logged;
        }
    }

    /// A log line arrived.
    pub fn on_log(&mut self, line: &LogLine) {
        let key = (line.node_id.clone(), line.instance_id.clone());
        let tail = self.logs.entry(key.clone()).or_default();
        if tail.len() == LOG_TAIL {
            tail.pop_front();
        }
        tail.push_back(format!(
            "[{}] [{}] {}",
            line.timestamp, line.stream, line.message
        ));
        if line.message.starts_with("narund: ")
            && let Some(inst) = self.instances.get_mut(&key)
            && inst.failure.is_some()
        {
            inst.failure_logged = true;
        }
    }

    /// The instances to wait for: `<app>-0 … <app>-<n-1>` on every online node the spec
    /// selects.
    pub fn selected(&self) -> BTreeSet<Key> {
        let mut out = BTreeSet::new();
        for (node, state) in &self.nodes {
            for i in 0..self.spec.desired_replicas(node, &state.labels) {
                out.insert((node.clone(), format!("{}-{i}", self.spec.name)));
            }
        }
        out
    }

    /// Whether every selector asks for 0 replicas (nothing will ever be ready).
    pub fn selects_nothing(&self) -> bool {
        self.spec.nodes.iter().all(|n| n.replicas <= 0)
    }

    fn ready_at(&self, key: &Key, now: Instant) -> bool {
        let Some(inst) = self.instances.get(key) else {
            return false;
        };
        if inst.failure.is_some() {
            return false;
        }
        if inst.ready_from_state {
            return true;
        }
        match inst.running_since {
            Some(t) if inst.status == Some(InstanceStatus::Running) => {
                SettleRule::new(self.spec.notify, self.spec.settle_sec)
                    .ready_after(now.duration_since(t))
            }
            _ => false,
        }
    }

    /// The verdict at `now`.
    pub fn verdict(&self, now: Instant) -> Verdict {
        if !self.node_failures.is_empty() || self.instances.values().any(|i| i.failure.is_some()) {
            return Verdict::Failed;
        }
        let selected = self.selected();
        if selected.is_empty() {
            return if self.selects_nothing() {
                Verdict::Ready
            } else {
                Verdict::Pending
            };
        }
        if selected.iter().all(|k| self.ready_at(k, now)) {
            Verdict::Ready
        } else {
            Verdict::Pending
        }
    }

    /// Whether narund's log line about every failure has arrived (the follower waits a
    /// little for it).
    pub fn failures_logged(&self) -> bool {
        self.instances
            .values()
            .filter(|i| i.failure.is_some())
            .all(|i| i.failure_logged)
    }

    /// Table rows: node, instance, status, restarts, detail.
    pub fn rows(&self, now: Instant) -> Vec<[String; 5]> {
        let selected = self.selected();
        let mut keys: BTreeSet<Key> = selected.clone();
        keys.extend(
            self.instances
                .iter()
                .filter(|(_, i)| i.failure.is_some())
                .map(|(k, _)| k.clone()),
        );
        let mut rows = Vec::new();
        for key in keys {
            let inst = self.instances.get(&key);
            let status = inst
                .and_then(|i| i.status.as_ref())
                .map_or_else(|| "waiting".into(), ToString::to_string);
            let detail = match inst {
                _ if self.ready_at(&key, now) => "ready".to_string(),
                Some(i) if i.failure.is_some() => i.failure.clone().unwrap_or_default(),
                Some(i) if i.status == Some(InstanceStatus::Running) => match i.running_since {
                    Some(t) => format!(
                        "settling {}s/{}s",
                        now.duration_since(t).as_secs(),
                        self.spec.settle_sec
                    ),
                    None => String::new(),
                },
                Some(i) => i.detail.clone(),
                None => "no run of the new spec yet".into(),
            };
            let restarts = inst.map(|i| i.restarts).unwrap_or(0).to_string();
            rows.push([key.0, key.1, status, restarts, detail]);
        }
        for (node, why) in &self.node_failures {
            rows.push([
                node.clone(),
                "-".into(),
                "invalid".into(),
                "0".into(),
                why.clone(),
            ]);
        }
        rows
    }

    /// The failure report: one block per failed (or, on timeout, not ready) instance,
    /// with its last log lines.
    pub fn report(&self, now: Instant, timed_out: Option<Duration>) -> String {
        let mut out = Vec::new();
        for (node, why) in &self.node_failures {
            out.push(format!("node {node}: {why}"));
        }
        let mut keys: Vec<(Key, String)> = self
            .instances
            .iter()
            .filter_map(|(k, i)| i.failure.clone().map(|f| (k.clone(), f)))
            .collect();
        if let Some(after) = timed_out {
            let selected = self.selected();
            if selected.is_empty() {
                out.push(format!(
                    "no online node is selected by the spec of {} after {after:?} (see `narunctl nodes ls`)",
                    self.spec.name
                ));
            }
            for k in selected {
                if !self.ready_at(&k, now) && !keys.iter().any(|(f, _)| f == &k) {
                    let inst = self.instances.get(&k);
                    let status = inst
                        .map(|i| {
                            let status = i.status.as_ref().map_or("waiting", |s| s.as_str());
                            if i.detail.is_empty() {
                                status.to_string()
                            } else {
                                format!("{status} ({})", i.detail)
                            }
                        })
                        .unwrap_or_else(|| "no run of the new spec reported".into());
                    keys.push((k, format!("not ready after {after:?}: {status}")));
                }
            }
        }
        for ((node, id), why) in keys {
            out.push(format!("{id} on {node}: {why}"));
            match self.logs.get(&(node.clone(), id.clone())) {
                Some(tail) if !tail.is_empty() => {
                    out.push(format!("  last log lines of {id} on {node}:"));
                    out.extend(tail.iter().map(|l| format!("    {l}")));
                }
                _ => out.push(format!("  (no log lines from {id} on {node})")),
            }
        }
        out.join("\n")
    }
}

/// How a run ended, from its event; `None` for a stop narund asked for.
fn exit_kind(ev: &StatusEvent) -> Option<ExitKind> {
    Some(match (&ev.status, &ev.reason) {
        (InstanceStatus::Stopped, None) => return None,
        (InstanceStatus::Stopped, Some(_)) => ExitKind::Clean,
        (_, Some(Reason::OomKill)) => ExitKind::OomKill,
        (_, Some(Reason::Watchdog)) => ExitKind::Watchdog,
        (_, Some(Reason::StartTimeout)) => ExitKind::Timeout,
        (_, Some(Reason::ExitCode)) => ExitKind::ExitCode,
        _ => ExitKind::Signal,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_spec::NodeSelector;
    use narun_wire::events::{InstanceState, now_rfc3339};

    fn spec(restart: &str) -> AppSpec {
        let mut s = AppSpec::new("hello", "v2");
        s.nodes.push(NodeSelector::by_labels([("role", "edge")], 2));
        s.restart = narun_spec::RestartPolicy::parse(restart);
        s.settle_sec = 2;
        s
    }

    fn node(id: &str, role: &str) -> NodeState {
        NodeState {
            node_id: id.into(),
            last_seen: now_rfc3339(),
            status: "running".into(),
            labels: [("role".to_string(), role.to_string())].into(),
            ..Default::default()
        }
    }

    fn ev(t: &Tracker, node: &str, id: &str, status: &str, reason: &str) -> StatusEvent {
        StatusEvent {
            instance_id: id.into(),
            node_id: node.into(),
            status: status.into(),
            reason: (!reason.is_empty()).then(|| reason.into()),
            app_name: "hello".into(),
            tag: "v2".into(),
            config_hash: t.hash().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn ready_after_settle_on_every_selected_instance() {
        let mut t = Tracker::new(spec("on-failure"));
        let t0 = Instant::now();
        t.on_node("n1", Some(node("n1", "edge")));
        t.on_node("n2", Some(node("n2", "core")));
        assert_eq!(t.selected().len(), 2, "n2 is not selected");
        assert_eq!(t.verdict(t0), Verdict::Pending);
        for id in ["hello-0", "hello-1"] {
            t.on_status(ev(&t, "n1", id, "starting", ""), t0);
            t.on_status(ev(&t, "n1", id, "running", ""), t0);
        }
        assert_eq!(t.verdict(t0 + Duration::from_secs(1)), Verdict::Pending);
        assert_eq!(t.verdict(t0 + Duration::from_secs(2)), Verdict::Ready);
        // An event of the old spec changes nothing.
        let mut old = ev(&t, "n1", "hello-0", "crashed", "exit-code");
        old.config_hash = "0123".into();
        t.on_status(old, t0);
        assert_eq!(t.verdict(t0 + Duration::from_secs(2)), Verdict::Ready);
    }

    #[test]
    fn crash_without_restart_fails_with_log_tail() {
        let mut t = Tracker::new(spec("no"));
        let t0 = Instant::now();
        t.on_node("n1", Some(node("n1", "edge")));
        t.on_status(ev(&t, "n1", "hello-0", "running", ""), t0);
        t.on_log(&LogLine {
            instance_id: "hello-0".into(),
            app_name: "hello".into(),
            node_id: "n1".into(),
            stream: "stderr".into(),
            message: "boom".into(),
            timestamp: "ts".into(),
            partial: false,
            dropped_before: 0,
            trace_id: None,
        });
        let mut crash = ev(&t, "n1", "hello-0", "crashed", "exit-code");
        crash.error = "exit status 1".into();
        t.on_status(crash, t0);
        assert_eq!(t.verdict(t0), Verdict::Failed);
        let report = t.report(t0, None);
        assert!(
            report.contains("hello-0 on n1: crashed (exit-code: exit status 1)"),
            "{report}"
        );
        assert!(report.contains("[ts] [stderr] boom"), "{report}");
    }

    #[test]
    fn crash_with_restart_keeps_waiting() {
        let mut t = Tracker::new(spec("on-failure"));
        let t0 = Instant::now();
        t.on_node("n1", Some(node("n1", "edge")));
        t.on_status(ev(&t, "n1", "hello-0", "crashed", "exit-code"), t0);
        t.on_status(ev(&t, "n1", "hello-0", "backoff", "exit-code"), t0);
        assert_eq!(t.verdict(t0), Verdict::Pending);
        t.on_status(ev(&t, "n1", "hello-0", "failed", "start-limit"), t0);
        assert_eq!(t.verdict(t0), Verdict::Failed);
    }

    #[test]
    fn stop_before_ready_and_rollback_fail() {
        let mut t = Tracker::new(spec("on-failure"));
        let t0 = Instant::now();
        t.on_node("n1", Some(node("n1", "edge")));
        t.on_status(ev(&t, "n1", "hello-0", "running", ""), t0);
        t.on_status(ev(&t, "n1", "hello-0", "stopping", ""), t0);
        t.on_status(ev(&t, "n1", "hello-0", "stopped", ""), t0);
        assert_eq!(t.verdict(t0), Verdict::Failed);

        let mut t = Tracker::new(spec("on-failure"));
        t.on_node("n1", Some(node("n1", "edge")));
        let mut rb = ev(&t, "n1", "hello-1", "rolled_back", "start-timeout");
        rb.config_hash.clear();
        t.on_status(rb, t0);
        assert_eq!(t.verdict(t0), Verdict::Failed);
        assert!(
            t.report(t0, None)
                .contains("rolled back by narund (start-timeout)")
        );
    }

    #[test]
    fn heartbeat_with_the_same_hash_counts_as_ready() {
        let mut t = Tracker::new(spec("on-failure"));
        let mut n = node("n1", "edge");
        for i in 0..2 {
            n.instances.push(InstanceState {
                instance_id: format!("hello-{i}"),
                app_name: "hello".into(),
                status: "running".into(),
                config_hash: t.hash().to_string(),
                ..Default::default()
            });
        }
        t.on_node("n1", Some(n));
        assert_eq!(t.verdict(Instant::now()), Verdict::Ready);
    }

    #[test]
    fn offline_nodes_are_not_waited_for_and_timeout_names_the_instance() {
        let mut t = Tracker::new(spec("on-failure"));
        let mut stale = node("n1", "edge");
        stale.last_seen = "2020-01-01T00:00:00Z".into();
        t.on_node("n1", Some(stale));
        assert!(t.selected().is_empty());
        t.on_node("n2", Some(node("n2", "edge")));
        let now = Instant::now();
        assert_eq!(t.verdict(now), Verdict::Pending);
        let report = t.report(now, Some(Duration::from_secs(3)));
        assert!(
            report.contains("hello-0 on n2: not ready after 3s"),
            "{report}"
        );
        t.on_node("n2", None);
        assert!(
            t.report(now, Some(Duration::from_secs(3)))
                .contains("no online node")
        );
    }

    #[test]
    fn invalid_spec_fails() {
        let mut t = Tracker::new(spec("on-failure"));
        t.on_node("n1", Some(node("n1", "edge")));
        let mut e = ev(&t, "n1", "hello", "invalid_spec", "invalid-spec");
        e.error = "bad\nthing".into();
        t.on_status(e, Instant::now());
        assert_eq!(t.verdict(Instant::now()), Verdict::Failed);
        assert!(
            t.report(Instant::now(), None)
                .contains("narund rejected the spec: bad thing")
        );
    }
}
