//! The app's ports: Go network isolation (`nonet`, the host ports an app
//! may reach) and where the app serves its metrics.

use serde::{Deserialize, Serialize};

use crate::serde_helpers::{is_default, nullable};

/// Go network isolation: the app reaches host ports only through these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NoNetSpec {
    /// Host ports reachable from the app at `127.0.0.1:<port>`.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub local_ports: Vec<PortForward>,
}

/// One forwarded port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortForward {
    /// Port, 1025..=65535 (Go rule).
    #[serde(deserialize_with = "nullable")]
    pub port: i64,
    /// `tcp` (default) or `udp`; lower-cased by normalisation.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub protocol: String,
}

/// Where the app serves metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSpec {
    /// Port the app serves metrics on; 0 = no metrics.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub port: i64,
    /// HTTP path; defaults to `/metrics` when `port` is set.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub path: String,
}
