//! # narun: serve HTTP apps over NATS
//!
//! Link this crate into an app and serve any [axum] `Router`, or any tower HTTP
//! service, as a NATS Micro (ADR-32) service; with the `grpc` feature, serve a
//! tonic-generated gRPC service the same way (`serve_grpc`, see docs/grpc.md), and
//! call one from a generated client without the gateway (`grpc::channel`).
//! The narun gateway (or the Go
//! `narun-gw`) turns HTTP requests into NATS requests on the subject named after
//! the service; this library answers them:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), narun::Error> {
//!     let app = Router::new().route("/hello/", get(|| async { "Hello over NATS" }));
//!     // Service name, version and NATS settings come from the environment narund
//!     // gives the app (falling back to "hello" when run by hand).
//!     narun::serve(narun::Options::from_env_or("hello"), app).await
//! }
//! ```
//!
//! What happens on the wire (compatible with Go's `nconsumer`):
//!
//! * a NATS Micro service `<name>` with one endpoint `handler` on subject `<name>`
//!   in queue group `q`, so replicas share the load, and `$SRV.PING|INFO|STATS`
//!   answered for discovery ([`narun_wire::micro`]);
//! * each request payload is a Binary HTTP (RFC 9292) request; the reply is a
//!   Binary HTTP response ([`narun_wire::bhttp`]);
//! * requests are handled **concurrently**, up to [`Options::max_inflight`] at
//!   a time (Go handles one at a time per process);
//! * a request without a reply subject is refused before it takes one of those
//!   slots (nobody could read the answer), counted as an endpoint error and in
//!   the endpoint's `data` under [`STAT_NO_REPLY`], and logged at most every
//!   10 s;
//! * the gateway's deadline travels with the request (NATS header
//!   `Narun-Timeout-Ms`, [`narun_wire::names::TIMEOUT_MS_HEADER`]): when it
//!   passes, the handler future is dropped — cancelled wherever it waits — and
//!   its slot is free again; nothing is answered (the caller has given up). A
//!   request that waited for a slot until its deadline never runs. Both count
//!   as an endpoint error and under [`STAT_DEADLINE_EXCEEDED`]. Requests
//!   without the header (Go's gateway, plain NATS callers) run until their
//!   handler finishes. A dropped handler stops at an `.await`: work that must
//!   not stop halfway belongs in a transaction or a spawned task;
//! * a handler error or panic becomes a `500`; a payload that is not BHTTP gets an
//!   ADR-32 error reply (`Nats-Service-Error-Code: 400`), never a crash;
//! * on SIGTERM/SIGINT the endpoint stops taking requests, in-flight requests
//!   finish (for at most [`Options::shutdown_timeout`]), then the function returns;
//! * under a supervisor speaking sd_notify (narund or systemd) the library sends
//!   `READY=1` once it is serving, pings the watchdog when `WATCHDOG_USEC` is set,
//!   and sends `STOPPING=1` on shutdown;
//! * each request is handled in a `tracing` span carrying its W3C trace (`traceparent`
//!   NATS header), and [`Client`] calls made from it continue the trace ([`trace`]).
//!
//! Beyond serving: [`Client`] calls other services, [`lock`] coordinates replicas,
//! [`config`] reads the app's typed configuration from KV and follows its changes, and
//! [`embed_spec!`] puts the app's default spec into its binary (docs/app-library.md).
//!
//! ## Environment
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `NARUN_SERVICE_NAME` | service name = subject | `NARUN_APP_NAME`, then the name given in code |
//! | `NARUN_SERVICE_VERSION` | semver version shown in discovery | `0.1.0` |
//! | `NARUN_MAX_INFLIGHT` | concurrent requests per process | `256` |
//! | `NATS_URL`, `NATS_CREDS`, `NATS_NKEY_SEED_FILE`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`, `NATS_TLS_CERT`, `NATS_TLS_KEY` | connection ([`NatsSettings`]); narund gives an app `NATS_URL`, `NATS_TLS_CA` and its own `NATS_CREDS` only, never narund's credentials. A creds file is read again at every reconnect, so a renewed file is used | `nats://127.0.0.1:4222` |
//! | `NARUN_INBOX_PREFIX` | prefix of reply inboxes; narund sets `_INBOX_<app>` when it minted the app's NATS user (which may use only those inboxes) | `_INBOX` |
//! | `NARUN_APP_NAME`, `NARUN_INSTANCE_ID`, `NARUN_NODE_ID`, `NARUN_RUN_ID` | set by narund; reported as service metadata; `NARUN_APP_NAME` also scopes [`lock`] names to the app (key `<app>.<name>`) | — |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | feature `otlp` only: export each handler's span to this OTLP/gRPC collector ([`trace`]) | off |
#![forbid(unsafe_code)]

mod client;
mod config;
mod embed;
#[doc(hidden)]
pub use embed::__private;
#[cfg(feature = "grpc")]
pub mod grpc;
mod http_service;
mod lock;
mod notify;
mod runner;
pub mod trace;

#[cfg(feature = "grpc")]
pub use grpc::{GRPC_ENDPOINT, GrpcServer, serve_grpc, serve_grpc_until};

pub use client::{CallError, Client, Codec, DEFAULT_TIMEOUT, Json, deadline};
#[cfg(feature = "protobuf")]
pub use client::{PROTOBUF_CONTENT_TYPE, Protobuf};
pub use config::{Config, ConfigError, ConfigOptions, config};
pub use http_service::{Server, serve, serve_service, serve_until};
pub use lock::{Lock, LockError, lock, lock_in, try_lock, try_lock_in};
pub use narun_wire::connect::NatsSettings;
pub use narun_wire::routes::{AsyncFlag, DeclaredRoute};

use narun_wire::names::env;
use std::collections::BTreeMap;
use std::time::Duration;

/// Endpoint name of HTTP services (Go compatible).
pub const HTTP_ENDPOINT: &str = "handler";

/// Endpoint counter (ADR-32 endpoint `data`, shown by `$SRV.STATS`): requests
/// refused because they had no reply subject. Each also counts as an error
/// (`400`) in the endpoint's `num_errors`.
pub const STAT_NO_REPLY: &str = "no_reply";

/// Endpoint counter (ADR-32 endpoint `data`): requests dropped unanswered because
/// the caller's deadline (`Narun-Timeout-Ms`) passed, while waiting for a slot or
/// while the handler ran. Each also counts as an error (`504`) in `num_errors`.
pub const STAT_DEADLINE_EXCEEDED: &str = "deadline_exceeded";

/// Errors that stop a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Connect(#[from] narun_wire::connect::ConnectError),
    #[error("registering the NATS Micro service: {0}")]
    Service(#[from] narun_wire::micro::MicroError),
    #[error("invalid {name}={value:?}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

/// How the service presents itself and connects.
#[derive(Debug, Clone)]
pub struct Options {
    /// Service name; also the NATS subject of its endpoint. `^[A-Za-z0-9_-]+$`.
    pub name: String,
    /// Semantic version shown in discovery.
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// Requests handled at the same time; further requests wait in the
    /// subscription buffer.
    pub max_inflight: usize,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown_timeout: Duration,
    pub nats: NatsSettings,
}

impl Options {
    /// Options for service `name` with defaults and NATS settings from the environment.
    pub fn new(name: impl Into<String>) -> Self {
        Options {
            name: name.into(),
            version: "0.1.0".into(),
            description: String::new(),
            metadata: BTreeMap::new(),
            max_inflight: 256,
            shutdown_timeout: Duration::from_secs(10),
            nats: NatsSettings::from_env(),
        }
    }

    /// Options from the environment narund sets (see the crate docs), with
    /// `default_name` when neither `NARUN_SERVICE_NAME` nor `NARUN_APP_NAME` is
    /// set. Invalid values are reported when serving starts.
    pub fn from_env_or(default_name: &str) -> Self {
        Self::from_lookup(default_name, |k| std::env::var(k).ok())
    }

    fn from_lookup(default_name: &str, get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let name = get("NARUN_SERVICE_NAME")
            .or_else(|| get(env::APP_NAME))
            .unwrap_or_else(|| default_name.to_owned());
        let mut o = Options::new(name);
        o.nats = NatsSettings::from_lookup(|k| get(k));
        if let Some(v) = get("NARUN_SERVICE_VERSION") {
            o.version = v;
        }
        if let Some(v) = get("NARUN_MAX_INFLIGHT") {
            // 0 or garbage is caught in `validate`.
            o.max_inflight = v.trim().parse().unwrap_or(0);
        }
        for (var, key) in [
            (env::APP_NAME, "narun_app"),
            (env::INSTANCE_ID, "narun_instance_id"),
            (env::NODE_ID, "narun_node_id"),
            (env::RUN_ID, "narun_run_id"),
        ] {
            if let Some(v) = get(var) {
                o.metadata.insert(key.to_owned(), v);
            }
        }
        o
    }

    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }

    /// Declare an HTTP route the narun gateway serves to this service, without an
    /// operator's route: `path` ending in `/` is a prefix route, else exact; `methods`
    /// empty = any method. Published in the service's Micro metadata (`narun.routes`,
    /// [`narun_wire::routes`]); the gateway serves it while the service runs, unless an
    /// operator route or another service holds the path (docs/gateway.md, "Routes the
    /// services declare").
    ///
    /// ```
    /// let o = narun::Options::new("hello").route("/hello/", &["GET", "POST"]);
    /// assert_eq!(o.metadata["narun.routes"], r#"[{"path":"/hello/","methods":["GET","POST"]}]"#);
    /// ```
    pub fn route(self, path: impl Into<String>, methods: &[&str]) -> Self {
        let mut r = DeclaredRoute::new(path);
        if !methods.is_empty() {
            r.methods = Some(methods.iter().map(|m| m.to_string()).collect());
        }
        self.declare_route(r)
    }

    /// Declare a route with every option ([`DeclaredRoute`]: methods, `timeout_sec`,
    /// `async`). See [`Options::route`].
    pub fn declare_route(mut self, route: DeclaredRoute) -> Self {
        use narun_wire::routes::{METADATA_KEY, encode_declared, parse_declared};
        let mut routes = self
            .metadata
            .get(METADATA_KEY)
            .and_then(|v| parse_declared(v).ok())
            .unwrap_or_default();
        routes.push(route);
        self.metadata
            .insert(METADATA_KEY.to_owned(), encode_declared(&routes));
        self
    }

    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n;
        self
    }

    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    pub fn nats(mut self, s: NatsSettings) -> Self {
        self.nats = s;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.max_inflight == 0 {
            return Err(Error::Env {
                name: "NARUN_MAX_INFLIGHT",
                value: self.max_inflight.to_string(),
                reason: "must be a positive integer",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_contract() {
        let env: HashMap<&str, &str> = [
            ("NARUN_APP_NAME", "hello"),
            ("NARUN_INSTANCE_ID", "hello-0"),
            ("NARUN_NODE_ID", "dev1"),
            ("NATS_URL", "nats://10.0.0.1:4222"),
            ("NARUN_MAX_INFLIGHT", "8"),
            ("NARUN_INBOX_PREFIX", "_INBOX_hello"),
        ]
        .into();
        let o = Options::from_lookup("fallback", |k| env.get(k).map(|v| v.to_string()));
        assert_eq!(o.name, "hello");
        assert_eq!(o.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(o.max_inflight, 8);
        assert_eq!(o.nats.inbox_prefix.as_deref(), Some("_INBOX_hello"));
        assert_eq!(o.metadata["narun_instance_id"], "hello-0");
        let o = Options::from_lookup("fallback", |k| {
            (k == "NARUN_SERVICE_NAME").then(|| "svc".to_string())
        });
        assert_eq!(o.name, "svc");
        assert_eq!(Options::from_lookup("fallback", |_| None).name, "fallback");
        let bad = Options::from_lookup("x", |k| (k == "NARUN_MAX_INFLIGHT").then(|| "lots".into()));
        assert!(bad.validate().is_err());
    }
}
