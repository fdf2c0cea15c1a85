//! Which nodes run an app, and how many instances each: the entries of
//! `nodes` ([`NodeSelector`]) and the rule that reads them
//! ([`AppSpec::desired_replicas`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::app::AppSpec;
use crate::serde_helpers::{nullable, optional_labels, optional_scalar_string};

/// One entry of `nodes`: a target (exactly one of `name` or `labels`) and a
/// replica count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSelector {
    /// Node ID (narund `node_id`, Go `-node-id`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_scalar_string"
    )]
    pub name: Option<String>,
    /// Selects every node whose labels include all of these (narun addition;
    /// Go node-runners reject such an entry). `{}` selects every node.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_labels"
    )]
    pub labels: Option<Labels>,
    /// Instances to run on each selected node; must be > 0.
    #[serde(deserialize_with = "nullable")]
    pub replicas: i64,
}

/// Label map of a [`NodeSelector`]. Values may be written as numbers or
/// booleans in YAML/TOML; they are kept as their text.
pub type Labels = BTreeMap<String, String>;

impl NodeSelector {
    /// Select the node with this ID.
    pub fn by_name(name: impl Into<String>, replicas: i64) -> Self {
        NodeSelector {
            name: Some(name.into()),
            labels: None,
            replicas,
        }
    }

    /// Select every node carrying all of these labels.
    pub fn by_labels<K, V>(labels: impl IntoIterator<Item = (K, V)>, replicas: i64) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        NodeSelector {
            name: None,
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            replicas,
        }
    }
}

impl AppSpec {
    /// How many instances of this app the node `node_id` with `labels` must
    /// run.
    ///
    /// Rule:
    /// 1. an entry whose `name` is `node_id` wins: its `replicas` is the answer
    ///    (label entries are then ignored for this node);
    /// 2. otherwise every entry whose `labels` are all present, with equal
    ///    values, in the node's labels matches (`labels: {}` matches every
    ///    node), and the answer is the **largest** `replicas` among them;
    /// 3. otherwise 0.
    ///
    /// Taking the maximum (not the sum) means that overlapping selectors, e.g.
    /// `{role: edge}` with 1 replica and `{role: edge, rack: a}` with 2, give
    /// 2 instances on a node in rack `a`, never 3. Entries with a
    /// non-positive `replicas` (invalid) count as 0.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use narun_spec::{AppSpec, NodeSelector};
    ///
    /// let mut spec = AppSpec::new("hello", "v1");
    /// spec.nodes.push(NodeSelector::by_labels([("role", "edge")], 1));
    /// spec.nodes.push(NodeSelector::by_labels([("role", "edge"), ("rack", "a")], 2));
    /// spec.nodes.push(NodeSelector::by_name("gw-1", 5));
    ///
    /// let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
    ///     pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    /// };
    /// assert_eq!(spec.desired_replicas("n1", &labels(&[("role", "edge")])), 1);
    /// assert_eq!(spec.desired_replicas("n2", &labels(&[("role", "edge"), ("rack", "a")])), 2);
    /// assert_eq!(spec.desired_replicas("gw-1", &labels(&[("role", "edge")])), 5);
    /// assert_eq!(spec.desired_replicas("n3", &labels(&[("role", "core")])), 0);
    /// ```
    pub fn desired_replicas(&self, node_id: &str, labels: &BTreeMap<String, String>) -> u32 {
        let count = |r: i64| u32::try_from(r.max(0)).unwrap_or(u32::MAX);
        if let Some(entry) = self
            .nodes
            .iter()
            .find(|n| n.name.as_deref() == Some(node_id))
        {
            return count(entry.replicas);
        }
        self.nodes
            .iter()
            .filter(|n| n.name.is_none())
            .filter_map(|n| n.labels.as_ref().map(|sel| (sel, n.replicas)))
            .filter(|(sel, _)| {
                sel.iter()
                    .all(|(k, v)| labels.get(k).map(String::as_str) == Some(v.as_str()))
            })
            .map(|(_, r)| count(r))
            .max()
            .unwrap_or(0)
    }
}
