//! Gateway routes that do not come from `narund.toml`: routes a service declares in its
//! NATS Micro metadata, and route sets kept in a KV bucket per named gateway.
//!
//! # Routes a service declares
//!
//! A service lists its HTTP routes under the metadata key [`METADATA_KEY`]
//! (`narun.routes`) of its ADR-32 PING/INFO documents, as a JSON list:
//!
//! ```json
//! [{"path": "/hello/", "methods": ["GET", "POST"]},
//!  {"path": "/hello/report", "async": "allow", "timeout_sec": 30}]
//! ```
//!
//! Each entry has `path` (a trailing `/` = prefix match, else exact), optional `methods`
//! (omitted = any), `timeout_sec` and `async` (`true`, `false` or `"allow"`, as the
//! `async` key of `[[gateway.routes]]`). There is no target: a declared route always
//! forwards to the declaring service (bhttp mode, subject = service name). Unknown keys,
//! more than [`MAX_DECLARED_ROUTES`] entries or more than [`MAX_METADATA_BYTES`] bytes make
//! the whole declaration invalid ([`parse_declared`]). The gateway's rules on top (no route
//! over an operator's, first come first served between services) are in
//! `narun-gateway`'s `routes` module and docs/gateway.md, "Routes the services declare".
//!
//! # Route sets in KV
//!
//! A gateway with a name (`[gateway] name = "edge"`) serves, besides its configured
//! routes, the route set stored under [`kv_key`] (`gateway.edge.routes`) of the bucket
//! [`GATEWAY_ROUTES`] (`narun-gateway-routes`): a TOML document of `[[routes]]` tables with
//! the keys of `[[gateway.routes]]`. Each gateway publishes what it made of a set on
//! [`status_subject`] (`narun.gateway.edge.routes.status`, a [`RoutesStatus`]).

use crate::jetstream::KvBucket;
use serde::{Deserialize, Serialize};

/// Micro metadata key under which a service declares its HTTP routes.
pub const METADATA_KEY: &str = "narun.routes";
/// Largest accepted value of [`METADATA_KEY`], in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Most routes one service may declare.
pub const MAX_DECLARED_ROUTES: usize = 32;
/// Longest accepted declared route path, in bytes.
pub const MAX_PATH_BYTES: usize = 512;

/// `narun-gateway-routes`: key = `gateway.<name>.routes`, value = a TOML route set.
pub const GATEWAY_ROUTES: KvBucket = KvBucket {
    name: "narun-gateway-routes",
    description: "narun gateway route sets, per named gateway",
    history: 5,
    max_age: None,
};

/// Name of a gateway when `[gateway] name` is not set (it then reads no KV route set).
pub const DEFAULT_GATEWAY_NAME: &str = "default";

/// The KV key of gateway `name`'s route set.
pub fn kv_key(name: &str) -> String {
    format!("gateway.{name}.routes")
}

/// Where gateway `name` publishes a [`RoutesStatus`] after each route set it reads.
pub fn status_subject(name: &str) -> String {
    format!("narun.gateway.{name}.routes.status")
}

/// True for gateway names: `^[A-Za-z0-9_-]{1,64}$` (one KV key and subject token).
pub fn valid_gateway_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && crate::micro::valid_name(name)
}

/// What a gateway made of the route set at `revision` of its KV key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesStatus {
    /// The gateway's name.
    pub gateway: String,
    /// The gateway's ADR-32 instance id (several gateways may share a name).
    pub instance: String,
    /// KV revision of the set (0: the key is absent or deleted: no KV routes).
    pub revision: u64,
    /// Whether the set is served now.
    pub accepted: bool,
    /// HTTP routes served from the set (0 when refused).
    pub routes: usize,
    /// Why the set was refused (one problem per line); the previous set stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `async` key of a declared route: `true`, `false` or `"allow"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AsyncFlag {
    Bool(bool),
    Mode(String),
}

/// One route a service declares ([`METADATA_KEY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredRoute {
    /// `/hello/` (prefix) or `/hello` (exact).
    pub path: String,
    /// HTTP methods; `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// NATS request timeout; `None` = the gateway's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u64>,
    /// Async jobs (docs/jobs.md), only where the gateway runs jobs.
    #[serde(default, rename = "async", skip_serializing_if = "Option::is_none")]
    pub async_mode: Option<AsyncFlag>,
}

impl DeclaredRoute {
    /// A route on `path`, any method.
    pub fn new(path: impl Into<String>) -> DeclaredRoute {
        DeclaredRoute {
            path: path.into(),
            methods: None,
            timeout_sec: None,
            async_mode: None,
        }
    }
}

/// Why a declaration is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclareError {
    #[error("{METADATA_KEY} is {0} bytes, more than {MAX_METADATA_BYTES}")]
    TooLarge(usize),
    #[error("{METADATA_KEY} is not a JSON list of routes: {0}")]
    Json(String),
    #[error("{METADATA_KEY} lists {0} routes, more than {MAX_DECLARED_ROUTES}")]
    TooMany(usize),
}

/// Parse a [`METADATA_KEY`] value: size first, then JSON, then the count.
pub fn parse_declared(value: &str) -> Result<Vec<DeclaredRoute>, DeclareError> {
    if value.len() > MAX_METADATA_BYTES {
        return Err(DeclareError::TooLarge(value.len()));
    }
    let routes: Vec<DeclaredRoute> =
        serde_json::from_str(value).map_err(|e| DeclareError::Json(e.to_string()))?;
    if routes.len() > MAX_DECLARED_ROUTES {
        return Err(DeclareError::TooMany(routes.len()));
    }
    Ok(routes)
}

/// The [`METADATA_KEY`] value of `routes` (what the app library publishes).
pub fn encode_declared(routes: &[DeclaredRoute]) -> String {
    serde_json::to_string(routes).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_round_trip_and_hostile_ones_are_refused() {
        let mut r = DeclaredRoute::new("/a/");
        r.methods = Some(vec!["GET".into()]);
        r.async_mode = Some(AsyncFlag::Mode("allow".into()));
        let text = encode_declared(&[r.clone(), DeclaredRoute::new("/b")]);
        assert_eq!(
            text,
            r#"[{"path":"/a/","methods":["GET"],"async":"allow"},{"path":"/b"}]"#
        );
        assert_eq!(parse_declared(&text).unwrap()[0], r);
        assert!(matches!(
            parse_declared("{not json"),
            Err(DeclareError::Json(_))
        ));
        // A target is never the service's to choose.
        let e = parse_declared(r#"[{"path":"/a","service":"other"}]"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `service`"), "{e}");
        let many = encode_declared(&vec![DeclaredRoute::new("/x"); MAX_DECLARED_ROUTES + 1]);
        assert_eq!(
            parse_declared(&many),
            Err(DeclareError::TooMany(MAX_DECLARED_ROUTES + 1))
        );
        let huge = format!("[{{\"path\":\"/{}\"}}]", "a".repeat(MAX_METADATA_BYTES));
        assert!(matches!(
            parse_declared(&huge),
            Err(DeclareError::TooLarge(_))
        ));
        assert_eq!(kv_key("edge"), "gateway.edge.routes");
        assert!(valid_gateway_name("edge-1") && !valid_gateway_name("a.b"));
        assert!(!valid_gateway_name(&"a".repeat(65)));
    }
}
