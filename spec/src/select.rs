//! Which nodes run an app, and how many instances each.

use std::collections::BTreeMap;

use crate::app::AppSpec;

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
