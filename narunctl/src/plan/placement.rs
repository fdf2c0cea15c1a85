//! What a spec would change on each node, from the node heartbeats alone: which instances
//! start, which are replaced (their run hash is not the new spec's), which stop, and
//! whether the spec selects any online node at all. Pure: heartbeats in, rows out.

use narun_spec::AppSpec;
use narun_wire::events::NodeState;
use narun_wire::status::NodeStatus;

/// Whether narund on this node is up: `running` and a heartbeat younger than 45 s.
pub fn online(state: &NodeState) -> bool {
    state.status == NodeStatus::Running && crate::session::heartbeat_fresh(state)
}

/// The online nodes `spec` gives at least one instance to.
pub fn selected_online<'a>(spec: &AppSpec, states: &'a [NodeState]) -> Vec<&'a NodeState> {
    states
        .iter()
        .filter(|s| online(s) && spec.desired_replicas(&s.node_id, &s.labels) > 0)
        .collect()
}

/// `node-1 (role=edge,zone=a)` per online node, for errors; `none` if there is none.
pub fn describe_online(states: &[NodeState]) -> String {
    let list: Vec<String> = states
        .iter()
        .filter(|s| online(s))
        .map(|s| {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if labels.is_empty() {
                format!("{} (no labels)", s.node_id)
            } else {
                format!("{} ({})", s.node_id, labels.join(","))
            }
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// One change on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new instance starts.
    Start(String),
    /// The instance runs another spec: a new run starts next to it, the old one stops
    /// once the new one is ready.
    Replace(String),
    /// The instance stops (scale down, or the node is no longer selected).
    Stop(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Start(i) => write!(f, "start {i}"),
            Action::Replace(i) => write!(f, "replace {i}"),
            Action::Stop(i) => write!(f, "stop {i}"),
        }
    }
}

/// What one node would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub node: String,
    pub online: bool,
    /// Instances of the app the node reports now.
    pub running: usize,
    /// Instances the new spec gives it (0 when `new` is `None`: the app is deleted).
    pub desired: u32,
    /// Empty: nothing changes (or the node is offline and acts when it is back).
    pub actions: Vec<Action>,
}

/// Per node (every node with a heartbeat that runs the app or that the new spec selects,
/// plus nodes the spec names that have none), what writing `new` would do. A node's
/// instance counts as up to date when its run hash is the new spec's; Go node-runners
/// report no hash, so theirs count as up to date only if `old` (the stored spec) has the
/// new run hash.
pub fn plan_nodes(
    app: &str,
    old: Option<&AppSpec>,
    new: &AppSpec,
    states: &[NodeState],
) -> Vec<NodePlan> {
    let new_hash = new.run_hash();
    let old_hash = old.map(AppSpec::run_hash);
    let mut out = Vec::new();
    for s in states {
        let on = online(s);
        let running: Vec<(String, String)> = if s.instances.is_empty() {
            crate::session::node_instances(s, app)
                .into_iter()
                .map(|i| (i, String::new()))
                .collect()
        } else {
            s.instances
                .iter()
                .filter(|i| i.app_name == app)
                .map(|i| (i.instance_id.clone(), i.config_hash.clone()))
                .collect()
        };
        let desired = new.desired_replicas(&s.node_id, &s.labels);
        if desired == 0 && running.is_empty() {
            continue;
        }
        let mut actions = Vec::new();
        if on {
            for n in 0..desired {
                let id = format!("{app}-{n}");
                // During a replacement a node lists the old and the new run of an
                // instance: it is up to date if any of its runs has the new hash.
                let runs: Vec<&String> = running
                    .iter()
                    .filter(|(i, _)| *i == id)
                    .map(|(_, h)| h)
                    .collect();
                let current = runs.iter().any(|h| {
                    let hash = if h.is_empty() {
                        old_hash.as_deref()
                    } else {
                        Some(h.as_str())
                    };
                    hash == Some(new_hash.as_str())
                });
                if runs.is_empty() {
                    actions.push(Action::Start(id));
                } else if !current {
                    actions.push(Action::Replace(id));
                }
            }
            let mut stops: Vec<&String> = running
                .iter()
                .map(|(i, _)| i)
                .filter(|i| !(0..desired).any(|n| **i == format!("{app}-{n}")))
                .collect();
            stops.sort();
            stops.dedup();
            actions.extend(stops.into_iter().map(|i| Action::Stop(i.clone())));
        }
        let mut ids: Vec<&String> = running.iter().map(|(i, _)| i).collect();
        ids.sort();
        ids.dedup();
        out.push(NodePlan {
            node: s.node_id.clone(),
            online: on,
            running: ids.len(),
            desired,
            actions,
        });
    }
    // Nodes the spec names that have never sent a heartbeat.
    for sel in &new.nodes {
        if let Some(name) = &sel.name
            && !states.iter().any(|s| &s.node_id == name)
            && !out.iter().any(|p| &p.node == name)
        {
            out.push(NodePlan {
                node: name.clone(),
                online: false,
                running: 0,
                desired: new.desired_replicas(name, &Default::default()),
                actions: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Table rows `NODE STATUS RUNNING DESIRED CHANGES` of [`plan_nodes`].
pub fn rows(plans: &[NodePlan]) -> Vec<Vec<String>> {
    plans
        .iter()
        .map(|p| {
            let changes = if !p.online {
                "none while offline".to_string()
            } else if p.actions.is_empty() {
                "unchanged".to_string()
            } else {
                p.actions
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                p.node.clone(),
                if p.online { "online" } else { "offline" }.to_string(),
                p.running.to_string(),
                p.desired.to_string(),
                changes,
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_spec::NodeSelector;
    use narun_wire::events::InstanceState;

    fn state(id: &str, labels: &[(&str, &str)], instances: &[(&str, &str)]) -> NodeState {
        NodeState {
            node_id: id.into(),
            last_seen: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            status: NodeStatus::Running,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            instances: instances
                .iter()
                .map(|(i, h)| InstanceState {
                    instance_id: i.to_string(),
                    app_name: "web".into(),
                    config_hash: h.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn starts_replaces_and_stops_per_node() {
        let mut old = AppSpec::new("web", "v1");
        old.nodes
            .push(NodeSelector::by_labels([("role", "edge")], 2));
        let mut new = AppSpec::new("web", "v2");
        new.nodes.push(NodeSelector::by_name("a", 3));
        let old_hash = old.run_hash();
        let states = [
            state(
                "a",
                &[("role", "edge")],
                &[("web-0", &old_hash), ("web-1", &old_hash)],
            ),
            state(
                "b",
                &[("role", "edge")],
                &[("web-0", &old_hash), ("web-1", &old_hash)],
            ),
            state("c", &[], &[]),
        ];
        let plans = plan_nodes("web", Some(&old), &new, &states);
        assert_eq!(plans.len(), 2, "{plans:?}");
        assert_eq!(
            plans[0].actions,
            [
                Action::Replace("web-0".into()),
                Action::Replace("web-1".into()),
                Action::Start("web-2".into())
            ]
        );
        assert_eq!(
            plans[1].actions,
            [Action::Stop("web-0".into()), Action::Stop("web-1".into())]
        );
        assert_eq!(rows(&plans)[1][4], "stop web-0, stop web-1");
    }

    #[test]
    fn same_run_hash_is_unchanged_and_unknown_nodes_are_offline() {
        let mut spec = AppSpec::new("web", "v1");
        spec.nodes.push(NodeSelector::by_name("a", 1));
        spec.nodes.push(NodeSelector::by_name("ghost", 2));
        let states = [state("a", &[], &[("web-0", &spec.run_hash())])];
        let plans = plan_nodes("web", Some(&spec), &spec, &states);
        assert_eq!(plans.len(), 2);
        assert!(plans[0].actions.is_empty());
        assert_eq!(rows(&plans)[0][4], "unchanged");
        assert_eq!(plans[1].node, "ghost");
        assert!(!plans[1].online);
        assert_eq!(plans[1].desired, 2);
    }

    #[test]
    fn an_instance_being_replaced_counts_once_and_as_up_to_date() {
        let mut old = AppSpec::new("web", "v1");
        old.nodes.push(NodeSelector::by_name("a", 1));
        let mut new = old.clone();
        new.tag = "v2".into();
        // The old run listed first, the new one next to it.
        let states = [state(
            "a",
            &[],
            &[("web-0", &old.run_hash()), ("web-0", &new.run_hash())],
        )];
        let plans = plan_nodes("web", Some(&old), &new, &states);
        assert_eq!(plans[0].running, 1);
        assert!(plans[0].actions.is_empty(), "{plans:?}");
    }

    #[test]
    fn selection_needs_an_online_node() {
        let mut spec = AppSpec::new("web", "v1");
        spec.nodes
            .push(NodeSelector::by_labels([("role", "db")], 1));
        let mut stale = state("b", &[("role", "db")], &[]);
        stale.last_seen = "2020-01-01T00:00:00Z".into();
        let states = [state("a", &[("role", "edge")], &[]), stale];
        assert!(selected_online(&spec, &states).is_empty());
        assert_eq!(describe_online(&states), "a (role=edge)");
        spec.nodes.push(NodeSelector::by_name("a", 1));
        assert_eq!(selected_online(&spec, &states).len(), 1);
        assert_eq!(describe_online(&[]), "none");
    }
}
