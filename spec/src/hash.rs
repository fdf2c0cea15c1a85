//! The KV encoding and the config hash.

use serde_json::Value;

use crate::app::AppSpec;

/// FNV-1a, 64 bits (the hash Go narun uses for its config hash).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(PRIME)
    })
}

/// Rebuild a JSON value with every object's keys in sorted order, whatever
/// map type serde_json was compiled with (`preserve_order` keeps insertion
/// order, and another crate in the build may turn it on).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

impl AppSpec {
    fn normalized_json(&self) -> Value {
        let mut spec = self.clone();
        spec.normalize();
        // Cannot fail: every map key in the spec is a string.
        sorted(serde_json::to_value(&spec).expect("an AppSpec always converts to JSON"))
    }

    /// The value to store in the `app-configs` KV bucket: the normalised spec
    /// as pretty JSON with sorted keys. JSON is YAML, so Go node-runners read
    /// it; `mode` is always present because Go rejects a spec without it.
    /// Fields at their default are left out (like Go's `omitempty`).
    pub fn to_kv_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.normalized_json())
            .expect("a JSON value always serializes");
        out.push(b'\n');
        out
    }

    /// A stable hash of the normalised spec: FNV-1a-64, lower-case hex (16
    /// digits), over its canonical JSON (sorted keys, no whitespace, defaults
    /// left out). Equal specs give equal hashes whatever format or key order
    /// they were written in; any change of a field gives another hash. It is
    /// not equal to Go's hash (Go hashes YAML).
    pub fn config_hash(&self) -> String {
        let canonical =
            serde_json::to_vec(&self.normalized_json()).expect("a JSON value always serializes");
        format!("{:016x}", fnv1a64(&canonical))
    }

    /// The identity of what an instance of this spec runs: [`config_hash`](Self::config_hash)
    /// without `nodes` (and `scaleToZero`), so a change of replica counts (here or on other nodes) never
    /// restarts a running instance (Go's node-runner did). narund stamps it on every status
    /// event and heartbeat (`config_hash`), decides replacements and re-adoption by it, and
    /// `narunctl deploy --wait` tells the new runs from the old ones with it.
    pub fn run_hash(&self) -> String {
        let mut s = self.clone();
        s.nodes.clear();
        // When an idle app sleeps is not part of a run.
        s.scale_to_zero = None;
        s.config_hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_vectors() {
        // Reference values of the FNV-1a 64-bit test suite.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn sorted_orders_nested_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"z":1,"y":[{"d":1,"c":2}]}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&sorted(v)).unwrap(),
            r#"{"a":{"y":[{"c":2,"d":1}],"z":1},"b":1}"#
        );
    }
}
