//! What the heartbeats say about an app, counted honestly: per node, how many instances
//! are desired, running, ready, failed and restarting, the last reason something went
//! wrong and when, and the rollbacks — the numbers behind `apps ls`, `apps info` and
//! `nodes ls`.
//!
//! Pure (no NATS, no clock of its own: `now` is given), so every rule is unit-tested here.
//!
//! # The counting rules
//!
//! Each instance a node reports ([`InstanceState`]) lands in at most one of these:
//!
//! | bucket | statuses |
//! |---|---|
//! | running | `running`, `reloading` ([`InstanceStatus::is_up`]) |
//! | failed | `crashed`, `failed`, `invalid_spec`, `rolled_back` |
//! | restarting | `backoff`, and `starting` after at least one restart |
//! | (none) | `starting` for the first time, `stopping`, `stopped`, `scaled_to_zero` (an idle app narund stopped: not a failure) |
//!
//! *Ready* is a subset of *running*: the spec's settle rule ([`SettleRule`]) holds — with
//! `notify = true` a `running` instance is ready (narund says `running` only after
//! `READY=1`), else it must have been up for `settleSec` (from the instance's `since`). A
//! node that does not report `since` (an older narund) has its running instances counted
//! as ready; a Go node-runner, which lists only instance ids (`managed_instances`), has
//! them counted as running and ready, since it says nothing more.
//!
//! A failed instance is never counted as running.

use narun_spec::AppSpec;
use narun_wire::events::{InstanceState, NodeState, RolledBack};
use narun_wire::status::{InstanceStatus, Reason, SettleRule};
use serde::Serialize;
use std::time::Duration;
use time::OffsetDateTime;

/// Where an instance is, for counting (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Running,
    Failed,
    Restarting,
    Other,
}

/// The bucket of an instance status (and its restart count).
pub fn bucket(status: &InstanceStatus, restarts: u32) -> Bucket {
    match status {
        s if s.is_up() => Bucket::Running,
        InstanceStatus::Crashed
        | InstanceStatus::Failed
        | InstanceStatus::InvalidSpec
        | InstanceStatus::RolledBack => Bucket::Failed,
        InstanceStatus::Backoff => Bucket::Restarting,
        InstanceStatus::Starting if restarts > 0 => Bucket::Restarting,
        _ => Bucket::Other,
    }
}

/// Parse an RFC 3339 time.
pub fn parse_time(ts: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
}

/// Time from `ts` to `now` (zero if `ts` is later); `None` if `ts` does not parse.
pub fn elapsed(ts: &str, now: OffsetDateTime) -> Option<Duration> {
    let d = now - parse_time(ts)?;
    Some(d.try_into().unwrap_or(Duration::ZERO))
}

/// Whether an up instance is ready under `rule` at `now`.
pub fn is_ready(i: &InstanceState, rule: SettleRule, now: OffsetDateTime) -> bool {
    if !i.status.is_up() {
        return false;
    }
    match elapsed(&i.since, now) {
        Some(up) => rule.ready_after(up),
        None => true,
    }
}

/// A reason in words: `exit code 3`, `killed by signal SIGKILL`, `OOM kill`,
/// `readiness timeout`, `start limit`, `fetch error: …`.
pub fn describe(reason: Option<&Reason>, exit_code: Option<i32>, error: &str) -> String {
    let detail = |what: &str| {
        if error.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {error}")
        }
    };
    match reason {
        Some(Reason::ExitCode) => match exit_code {
            Some(c) if c >= 0 => format!("exit code {c}"),
            _ if !error.is_empty() => error.to_string(),
            _ => "exit code".into(),
        },
        Some(Reason::Signal) if !error.is_empty() => error.to_string(),
        Some(Reason::Signal) => "killed by a signal".into(),
        Some(Reason::OomKill) => "OOM kill".into(),
        Some(Reason::Watchdog) => "watchdog".into(),
        Some(Reason::StartLimit) => detail("start limit"),
        Some(Reason::StartTimeout) => "readiness timeout".into(),
        Some(Reason::InvalidSpec) => detail("invalid spec"),
        Some(Reason::Fetch) => detail("fetch error"),
        Some(Reason::Verify) => detail("binary digest mismatch"),
        Some(Reason::NotRunning) => "never running".into(),
        Some(Reason::Crashed) => "crashed before ready".into(),
        Some(r) => detail(r.as_str()),
        None if !error.is_empty() => error.to_string(),
        None => "unknown".into(),
    }
}

/// `v2 → v1: readiness timeout`: the failed tag, the tag still running, why.
pub fn describe_rollback(rb: &RolledBack, running_tag: &str) -> String {
    format!(
        "{} → {running_tag}: {}",
        rb.tag,
        describe(rb.reason.as_ref(), None, &rb.error)
    )
}

/// The last thing that went wrong, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Last {
    /// Instance it happened to.
    pub instance: String,
    /// In words ([`describe`], [`describe_rollback`]).
    pub reason: String,
    /// Machine-readable reason (`exit-code`, `start-timeout`, …), empty if none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// Whether this is a rollback.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// RFC 3339, UTC.
    pub time: String,
}

impl Last {
    /// `exit code 3 (web-0, 12s ago)`.
    pub fn short(&self, now: OffsetDateTime) -> String {
        let ago = elapsed(&self.time, now)
            .map(|d| format!(", {} ago", crate::output::human_duration(d)))
            .unwrap_or_default();
        format!("{} ({}{ago})", self.reason, self.instance)
    }
}

/// One app on one node, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounts {
    pub node: String,
    /// The node's status (`running`, `shutting_down`, `offline`, `offline/unknown`).
    pub node_status: String,
    pub desired: u32,
    pub running: u32,
    pub ready: u32,
    pub failed: u32,
    pub restarting: u32,
    /// Instance ids the node reports for the app.
    pub instances: Vec<String>,
    /// Rollbacks in effect, in words (`v2 → v1: readiness timeout`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Last>,
}

/// Count what `state` reports about `app` (desired: `desired` replicas there).
pub fn count_node(
    state: &NodeState,
    node_status: String,
    app: &str,
    desired: u32,
    rule: SettleRule,
    now: OffsetDateTime,
) -> NodeCounts {
    let mut c = NodeCounts {
        node: state.node_id.clone(),
        node_status,
        desired,
        ..Default::default()
    };
    let mut candidates: Vec<(OffsetDateTime, Last)> = Vec::new();
    // A spec the node refused: its previous spec (if any) keeps running there.
    for bad in state.invalid_specs.iter().filter(|b| b.app_name == app) {
        if let Some(t) = parse_time(&bad.time) {
            candidates.push((
                t,
                Last {
                    instance: format!("node {}", state.node_id),
                    reason: describe(Some(&Reason::InvalidSpec), None, &bad.error),
                    code: Reason::InvalidSpec.to_string(),
                    rollback: false,
                    time: bad.time.clone(),
                },
            ));
        }
    }
    if state.instances.is_empty() {
        // A Go node-runner: instance ids only.
        for id in crate::session::node_instances(state, app) {
            c.running += 1;
            c.ready += 1;
            c.instances.push(id);
        }
        c.last = candidates
            .into_iter()
            .max_by_key(|(t, _)| *t)
            .map(|(_, l)| l);
        return c;
    }
    for i in state.instances.iter().filter(|i| i.app_name == app) {
        c.instances.push(i.instance_id.clone());
        match bucket(&i.status, i.restarts) {
            Bucket::Running => {
                c.running += 1;
                if is_ready(i, rule, now) {
                    c.ready += 1;
                }
            }
            Bucket::Failed => c.failed += 1,
            Bucket::Restarting => c.restarting += 1,
            Bucket::Other => {}
        }
        if let Some(rb) = &i.rolled_back {
            let text = describe_rollback(rb, &i.tag);
            if !c.rollbacks.contains(&text) {
                c.rollbacks.push(text.clone());
            }
            if let Some(t) = parse_time(&rb.time) {
                candidates.push((
                    t,
                    Last {
                        instance: i.instance_id.clone(),
                        reason: text,
                        code: rb
                            .reason
                            .as_ref()
                            .map(|r| r.to_string())
                            .unwrap_or_default(),
                        rollback: true,
                        time: rb.time.clone(),
                    },
                ));
            }
        }
        if let Some(f) = &i.last_failure
            && let Some(t) = parse_time(&f.time)
        {
            candidates.push((
                t,
                Last {
                    instance: i.instance_id.clone(),
                    reason: describe(f.reason.as_ref(), f.exit_code, &f.error),
                    code: f.reason.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                    rollback: false,
                    time: f.time.clone(),
                },
            ));
        }
    }
    c.last = candidates
        .into_iter()
        .max_by_key(|(t, _)| *t)
        .map(|(_, l)| l);
    c
}

/// An app over every node: the per-node counts and their sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppCounts {
    pub desired: u32,
    pub running: u32,
    pub ready: u32,
    pub failed: u32,
    pub restarting: u32,
    pub nodes: Vec<NodeCounts>,
}

impl AppCounts {
    /// The newest [`Last`] of any node.
    pub fn last(&self) -> Option<&Last> {
        self.nodes
            .iter()
            .filter_map(|n| n.last.as_ref())
            .max_by_key(|l| parse_time(&l.time))
    }

    /// Every rollback in effect on any node (deduplicated).
    pub fn rollbacks(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.nodes.iter().flat_map(|n| n.rollbacks.iter()) {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }
}

/// Count `spec` over the nodes' heartbeats. `node_status` says how a node is shown
/// (online or not); only online nodes count toward `desired`. Nodes that neither should
/// nor do run the app are left out; nodes a selector names that sent no heartbeat are
/// listed as `offline/unknown` with their desired replicas.
pub fn count_app(
    spec: &AppSpec,
    states: &[NodeState],
    node_status: impl Fn(&NodeState) -> String,
    now: OffsetDateTime,
) -> AppCounts {
    let rule = SettleRule::new(spec.notify, spec.settle_sec);
    let mut app = AppCounts::default();
    for s in states {
        let status = node_status(s);
        let online = !status.starts_with("offline");
        let desired = if online {
            spec.desired_replicas(&s.node_id, &s.labels)
        } else {
            0
        };
        let c = count_node(s, status, &spec.name, desired, rule, now);
        if c.desired == 0 && c.instances.is_empty() && c.last.is_none() {
            continue;
        }
        app.desired += c.desired;
        app.running += c.running;
        app.ready += c.ready;
        app.failed += c.failed;
        app.restarting += c.restarting;
        app.nodes.push(c);
    }
    for sel in &spec.nodes {
        if let Some(n) = &sel.name
            && !states.iter().any(|s| &s.node_id == n)
        {
            app.nodes.push(NodeCounts {
                node: n.clone(),
                node_status: "offline/unknown".into(),
                desired: u32::try_from(sel.replicas.max(0)).unwrap_or(u32::MAX),
                ..Default::default()
            });
        }
    }
    app
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::events::InstanceFailure;

    fn at(s: &str) -> OffsetDateTime {
        parse_time(s).unwrap()
    }

    fn inst(id: &str, status: &str, restarts: u32, since: &str) -> InstanceState {
        InstanceState {
            instance_id: id.into(),
            app_name: "web".into(),
            status: InstanceStatus::parse(status),
            restarts,
            tag: "v1".into(),
            since: since.into(),
            ..Default::default()
        }
    }

    fn node(id: &str, instances: Vec<InstanceState>) -> NodeState {
        NodeState {
            node_id: id.into(),
            instances,
            ..Default::default()
        }
    }

    fn spec(replicas: u32, notify: bool, settle: u64) -> AppSpec {
        let mut s = AppSpec::new("web", "v1");
        s.nodes
            .push(narun_spec::NodeSelector::by_name("n1", replicas.into()));
        s.notify = notify;
        s.settle_sec = settle;
        s
    }

    const NOW: &str = "2026-01-01T00:01:00Z";

    #[test]
    fn buckets_are_disjoint_and_failed_is_never_running() {
        for s in InstanceStatus::KNOWN {
            for restarts in [0, 3] {
                let b = bucket(s, restarts);
                if s.is_up() {
                    assert_eq!(b, Bucket::Running, "{s}");
                } else {
                    assert_ne!(b, Bucket::Running, "{s}");
                }
            }
        }
        assert_eq!(bucket(&InstanceStatus::Failed, 0), Bucket::Failed);
        assert_eq!(bucket(&InstanceStatus::Crashed, 5), Bucket::Failed);
        assert_eq!(bucket(&InstanceStatus::Backoff, 1), Bucket::Restarting);
        assert_eq!(bucket(&InstanceStatus::Starting, 1), Bucket::Restarting);
        assert_eq!(bucket(&InstanceStatus::Starting, 0), Bucket::Other);
        assert_eq!(bucket(&InstanceStatus::Other("x".into()), 0), Bucket::Other);
        assert_eq!(bucket(&InstanceStatus::ScaledToZero, 0), Bucket::Other);
    }

    #[test]
    fn ready_follows_the_settle_rule() {
        let i = inst("web-0", "running", 0, "2026-01-01T00:00:58Z");
        let now = at(NOW);
        assert!(!is_ready(&i, SettleRule::new(false, 5), now));
        assert!(is_ready(&i, SettleRule::new(false, 2), now));
        assert!(is_ready(&i, SettleRule::new(true, 60), now));
        // No `since` (an older narund): running counts as ready.
        assert!(is_ready(
            &inst("web-0", "running", 0, ""),
            SettleRule::new(false, 60),
            now
        ));
        assert!(!is_ready(
            &inst("web-0", "failed", 0, ""),
            SettleRule::new(true, 0),
            now
        ));
    }

    #[test]
    fn counts_a_node_with_every_kind_of_instance() {
        let mut crashed = inst("web-2", "backoff", 2, "2026-01-01T00:00:59Z");
        crashed.last_failure = Some(InstanceFailure {
            status: InstanceStatus::Crashed,
            reason: Some(Reason::ExitCode),
            exit_code: Some(3),
            error: "exit status 3".into(),
            tag: "v1".into(),
            time: "2026-01-01T00:00:59Z".into(),
        });
        let mut failed = inst("web-3", "failed", 0, "2026-01-01T00:00:10Z");
        failed.last_failure = Some(InstanceFailure {
            status: InstanceStatus::Failed,
            reason: Some(Reason::Fetch),
            error: "object not found".into(),
            time: "2026-01-01T00:00:10Z".into(),
            ..Default::default()
        });
        let n = node(
            "n1",
            vec![
                inst("web-0", "running", 0, "2026-01-01T00:00:00Z"),
                inst("web-1", "running", 0, "2026-01-01T00:00:59Z"),
                crashed,
                failed,
                InstanceState {
                    app_name: "other".into(),
                    ..inst("other-0", "failed", 0, "")
                },
            ],
        );
        let c = count_node(
            &n,
            "running".into(),
            "web",
            4,
            SettleRule::new(false, 5),
            at(NOW),
        );
        assert_eq!(
            (c.desired, c.running, c.ready, c.failed, c.restarting),
            (4, 2, 1, 1, 1)
        );
        assert_eq!(c.instances, ["web-0", "web-1", "web-2", "web-3"]);
        let last = c.last.unwrap();
        assert_eq!(last.reason, "exit code 3");
        assert_eq!(last.instance, "web-2");
        assert_eq!(last.code, "exit-code");
        assert_eq!(last.short(at(NOW)), "exit code 3 (web-2, 1s ago)");
    }

    #[test]
    fn rollbacks_read_as_from_to_and_why() {
        let mut i = inst("web-0", "running", 0, "2026-01-01T00:00:00Z");
        i.rolled_back = Some(RolledBack {
            tag: "v2".into(),
            reason: Some(Reason::StartTimeout),
            time: "2026-01-01T00:00:30Z".into(),
            ..Default::default()
        });
        let n = node("n1", vec![i]);
        let c = count_app(&spec(1, true, 0), &[n], |_| "running".into(), at(NOW));
        assert_eq!(c.rollbacks(), ["v2 → v1: readiness timeout"]);
        let last = c.last().unwrap();
        assert!(last.rollback);
        assert_eq!(last.reason, "v2 → v1: readiness timeout");
        assert_eq!((c.running, c.ready, c.failed), (1, 1, 0));
    }

    #[test]
    fn offline_nodes_want_nothing_and_unknown_named_nodes_are_listed() {
        let n = node("n1", vec![inst("web-0", "running", 0, "")]);
        let c = count_app(
            &spec(2, false, 0),
            std::slice::from_ref(&n),
            |_| "offline".into(),
            at(NOW),
        );
        assert_eq!((c.desired, c.running), (0, 1));
        let c = count_app(&spec(2, false, 0), &[], |_| "running".into(), at(NOW));
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].node_status, "offline/unknown");
        assert_eq!(c.nodes[0].desired, 2);
        assert_eq!(c.desired, 0);
    }

    #[test]
    fn a_refused_spec_is_the_last_reason() {
        let mut n = node("n1", vec![inst("web-0", "running", 0, "")]);
        n.invalid_specs.push(narun_wire::events::InvalidSpec {
            app_name: "web".into(),
            error: "mode: jail is not supported".into(),
            time: "2026-01-01T00:00:50Z".into(),
        });
        let c = count_app(&spec(1, false, 0), &[n], |_| "running".into(), at(NOW));
        let last = c.last().unwrap();
        assert_eq!(last.reason, "invalid spec: mode: jail is not supported");
        assert_eq!(
            (last.code.as_str(), last.instance.as_str()),
            ("invalid-spec", "node n1")
        );
        assert_eq!(
            (c.running, c.failed),
            (1, 0),
            "the previous spec keeps running"
        );
    }

    #[test]
    fn go_runners_count_their_managed_instances() {
        let n = NodeState {
            node_id: "n1".into(),
            managed_instances: vec!["web-0".into(), "web-1".into(), "webby-0".into()],
            ..Default::default()
        };
        let c = count_node(
            &n,
            "running".into(),
            "web",
            2,
            SettleRule::new(false, 5),
            at(NOW),
        );
        assert_eq!((c.running, c.ready, c.failed), (2, 2, 0));
    }

    #[test]
    fn reasons_in_words() {
        assert_eq!(
            describe(Some(&Reason::ExitCode), Some(1), "exit status 1"),
            "exit code 1"
        );
        assert_eq!(
            describe(Some(&Reason::Signal), Some(-1), "killed by signal SIGKILL"),
            "killed by signal SIGKILL"
        );
        assert_eq!(describe(Some(&Reason::OomKill), None, "x"), "OOM kill");
        assert_eq!(describe(Some(&Reason::Watchdog), None, ""), "watchdog");
        assert_eq!(describe(Some(&Reason::StartLimit), None, ""), "start limit");
        assert_eq!(
            describe(Some(&Reason::StartTimeout), None, "x"),
            "readiness timeout"
        );
        assert_eq!(
            describe(Some(&Reason::InvalidSpec), None, "tag is empty"),
            "invalid spec: tag is empty"
        );
        assert_eq!(
            describe(Some(&Reason::Fetch), None, "no object"),
            "fetch error: no object"
        );
        assert_eq!(describe(None, None, ""), "unknown");
        assert_eq!(
            describe(Some(&Reason::Other("new".into())), None, ""),
            "new"
        );
    }
}
