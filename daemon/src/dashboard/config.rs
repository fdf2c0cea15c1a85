//! `[dashboard]` of narund.toml: where the dashboard is served and who may use it.
//!
//! ```toml
//! [dashboard]
//! enabled = true            # default; false: no route at all
//! path = "/_narun/"         # on the gateway's HTTP listener
//! # name = SHA-256 of the token, hex (`printf %s "$TOKEN" | sha256sum`), as the gateway's bearer tokens
//! admin_tokens = { ops = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }
//! read_tokens = { wall = "…" }
//! sample_sec = 10           # metrics ring: one sample per app every 10 s, 360 kept
//! ```
//!
//! Without tokens the page loads but every API call is refused (401): nothing is shown.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default `path`.
pub const DEFAULT_PATH: &str = "/_narun/";
/// Default `sample_sec`.
pub const DEFAULT_SAMPLE_SEC: u64 = 10;

/// `[dashboard]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the dashboard (with the gateway enabled). Default true.
    pub enabled: bool,
    /// Path prefix on the gateway's HTTP listener; starts and ends with `/`.
    pub path: String,
    /// Tokens that may view and act (restart, scale, rollback, delete): name → hex SHA-256.
    pub admin_tokens: BTreeMap<String, String>,
    /// Tokens that may only view: name → hex SHA-256.
    pub read_tokens: BTreeMap<String, String>,
    /// Seconds between two samples of the per-app CPU/memory ring (1-3600).
    pub sample_sec: u64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            path: DEFAULT_PATH.into(),
            admin_tokens: BTreeMap::new(),
            read_tokens: BTreeMap::new(),
            sample_sec: DEFAULT_SAMPLE_SEC,
        }
    }
}

impl DashboardConfig {
    /// Problems, one per line, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let path_ok = self.path.len() > 1
            && self.path.starts_with('/')
            && self.path.ends_with('/')
            && !self.path.contains("//")
            && self
                .path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
        if !path_ok {
            p.push(format!(
                "dashboard.path: {:?} must start and end with '/', not be \"/\", and hold only \
                 letters, digits and -._~ (default {DEFAULT_PATH:?})",
                self.path
            ));
        }
        for (key, tokens) in [
            ("admin_tokens", &self.admin_tokens),
            ("read_tokens", &self.read_tokens),
        ] {
            for (name, hash) in tokens {
                if narun_gateway::auth::password::parse_sha256_hex(hash).is_none() {
                    p.push(format!(
                        "dashboard.{key}.{name}: not a SHA-256 in hex (64 hex digits; \
                         `printf %s \"$TOKEN\" | sha256sum`)"
                    ));
                }
            }
        }
        if !(1..=3600).contains(&self.sample_sec) {
            p.push(format!(
                "dashboard.sample_sec: {} is not between 1 and 3600",
                self.sample_sec
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_keys_are_named() {
        assert!(DashboardConfig::default().problems().is_empty());
        let c = DashboardConfig {
            path: "/".into(),
            admin_tokens: [("ops".to_string(), "xyz".to_string())].into(),
            sample_sec: 0,
            ..Default::default()
        };
        let p = c.problems().join("\n");
        assert!(p.contains("dashboard.path: \"/\""), "{p}");
        assert!(
            p.contains("dashboard.admin_tokens.ops: not a SHA-256"),
            "{p}"
        );
        assert!(p.contains("dashboard.sample_sec: 0"), "{p}");
        for bad in ["_narun/", "/_narun", "/a//b/", "/<x>/"] {
            let c = DashboardConfig {
                path: bad.into(),
                ..Default::default()
            };
            assert_eq!(c.problems().len(), 1, "{bad}");
        }
    }
}
