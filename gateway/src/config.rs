//! The `[gateway]` configuration: listeners, timeouts, limits and routes.
//!
//! It is the `[gateway]` table of `narund.toml`:
//!
//! ```toml
//! [gateway]
//! enabled = true
//! http_addr = "0.0.0.0:8080"
//! metrics_addr = "127.0.0.1:9090"
//! request_timeout_sec = 15
//! grpc_addr = "0.0.0.0:8443"
//! grpc_tls_cert = "/etc/narun/tls/gateway.crt"  # optional: gRPC over TLS (see crate::tls)
//! grpc_tls_key = "/etc/narun/tls/gateway.key"
//! max_connections = 512       # limits against hostile clients: crate::limits
//! memory_budget_bytes = 33554432
//!
//! [[gateway.routes]]
//! path = "/hello/"            # trailing "/" = prefix match, else exact
//! methods = ["GET", "POST"]   # omitted = any method
//! service = "hello"           # NATS Micro service name = subject
//! timeout_sec = 5
//!
//! [[gateway.routes]]
//! path = "/legacy"
//! mode = "raw"                # body as payload, HTTP headers as NATS headers
//! subject = "legacy.api"
//!
//! [[gateway.routes]]
//! grpc = "hello.v1.Greeter"   # gRPC routes (served by the gRPC gateway)
//! service = "grpc-hello"
//! ```
//!
//! Deserializing only checks types. [`GatewayConfig::validate`] checks
//! everything else and reports *every* problem with its key path
//! (`gateway.routes[2].methods[0]: ...`), so one edit-and-retry fixes all of them.
//! Unknown keys are collected during deserialization and reported by `validate`
//! too, with their key path.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Default per-request timeout (seconds) when a route sets none.
pub const DEFAULT_REQUEST_TIMEOUT_SEC: u64 = 15;
/// Default request body limit: 8 MiB (further capped by the NATS server's `max_payload`).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Default bound on draining in-flight requests at shutdown (Go narun: 15 s).
pub const DEFAULT_SHUTDOWN_TIMEOUT_SEC: u64 = 15;

// Limits against hostile or broken clients (see `docs/gateway.md`, "Limits", for
// why these values suit a small device).
/// Default bound on open client connections (HTTP and gRPC listeners together);
/// further capped at half of the process's soft `RLIMIT_NOFILE`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;
/// Default bound on open connections from one client IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 128;
/// Default time a client has to send a complete HTTP/1.1 request head.
pub const DEFAULT_HEADER_READ_TIMEOUT_SEC: u64 = 10;
/// Default time a connection may stay open with no request in flight.
pub const DEFAULT_KEEPALIVE_TIMEOUT_SEC: u64 = 30;
/// Default time a client has to send a whole request body.
pub const DEFAULT_BODY_READ_TIMEOUT_SEC: u64 = 60;
/// Default slowest accepted body upload, bytes per second (after a 1 s grace).
pub const DEFAULT_MIN_BODY_RATE: u64 = 1024;
/// Default HTTP/2 concurrent streams per connection (RFC 9113 recommends ≥ 100).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Default bound on NATS requests in flight (HTTP and gRPC together).
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: u32 = 256;
/// Default bytes all in-flight request bodies and gRPC reply buffers may hold: 32 MiB.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;
/// Largest accepted client timeout (`header_read_timeout_sec`, `keepalive_timeout_sec`,
/// `body_read_timeout_sec`): one day.
pub const MAX_TIMEOUT_SEC: u64 = 86_400;
/// Default wait for memory or an in-flight slot before answering 503 / RESOURCE_EXHAUSTED.
pub const DEFAULT_OVERLOAD_WAIT_MS: u64 = 250;

// Async jobs (`async` routes, `[gateway.jobs]`; docs/jobs.md).
/// Default attempts of an async job before it fails.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default first pause before an async job's retry (doubles per failed attempt).
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1000;
/// Default jobs a gateway's workers run at once.
pub const DEFAULT_JOB_WORKERS: u32 = 4;
/// Default time job state and results are kept: one day.
pub const DEFAULT_JOB_RETENTION_SEC: u64 = 86_400;
/// Default time a worker holds a job without news before JetStream hands it to another.
pub const DEFAULT_JOB_ACK_WAIT_SEC: u64 = 30;
/// Default bytes of queued requests the `narun-jobs` stream holds: 1 GiB.
pub const DEFAULT_JOB_MAX_QUEUE_BYTES: u64 = 1 << 30;
/// Default longest pause between two attempts of a job.
pub const DEFAULT_JOB_MAX_BACKOFF_SEC: u64 = 300;
/// Default interval between two looks for the routes services declare.
pub const DEFAULT_SERVICE_ROUTES_INTERVAL_MS: u64 = 2000;

/// Default of `wait_for_responder_ms`: no wait beyond the failover window.
pub const DEFAULT_WAIT_FOR_RESPONDER_MS: u64 = 0;
/// Largest `wait_for_responder_ms` (10 minutes; the route's timeout bounds it anyway).
pub const MAX_WAIT_FOR_RESPONDER_MS: u64 = 600_000;

/// The `[gateway]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Whether narund runs the gateway at all (ignored by [`crate::Gateway`] itself).
    pub enabled: bool,
    /// HTTP/1.1 + h2c listener for the routes.
    pub http_addr: String,
    /// gRPC listener; required when gRPC routes exist.
    pub grpc_addr: Option<String>,
    /// PEM certificate chain (leaf first) for gRPC over TLS on `grpc_addr`.
    /// With `grpc_tls_key`, the listener speaks TLS (ALPN `h2`); without both,
    /// cleartext HTTP/2 (h2c).
    pub grpc_tls_cert: Option<String>,
    /// PEM private key of `grpc_tls_cert`.
    pub grpc_tls_key: Option<String>,
    /// Listener for `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: String,
    /// Timeout of a NATS request when the route sets no `timeout_sec`.
    pub request_timeout_sec: u64,
    /// Largest accepted request body. The effective limit is also capped by the
    /// NATS server's `max_payload` minus room for the encoded request head.
    pub max_body_bytes: u64,
    /// How long shutdown waits for in-flight requests before cutting them off.
    pub shutdown_timeout_sec: u64,
    /// Open client connections on the HTTP and gRPC listeners together; more are
    /// closed at once. Capped at half the soft `RLIMIT_NOFILE` (the other half is
    /// narund's, for supervising apps).
    pub max_connections: u32,
    /// Open connections from one client IP address.
    pub max_connections_per_ip: u32,
    /// Time to send a complete HTTP/1.1 request head (also bounds an idle
    /// HTTP/1.1 keep-alive connection, which is waiting for the next head).
    pub header_read_timeout_sec: u64,
    /// A connection with no request in flight for this long is closed.
    pub keepalive_timeout_sec: u64,
    /// Time to send a whole request body (HTTP body or gRPC request message).
    pub body_read_timeout_sec: u64,
    /// Slowest accepted body upload in bytes per second, averaged from the
    /// request head on, after a 1 s grace; 0 = no minimum.
    pub min_body_rate: u64,
    /// HTTP/2 streams a client may open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// NATS requests in flight at once (HTTP and gRPC).
    pub max_inflight_requests: u32,
    /// Bytes all in-flight request bodies and gRPC reply buffers may hold together.
    pub memory_budget_bytes: u64,
    /// How long a request waits for memory or an in-flight slot before it is
    /// refused (503 + `Retry-After`, gRPC `RESOURCE_EXHAUSTED`).
    pub overload_wait_ms: u64,
    /// PEM certificate chain (leaf first) for HTTPS on `http_addr` (with `http_tls_key`;
    /// ALPN `h2` and `http/1.1`). Without both: cleartext HTTP/1.1 and h2c.
    pub http_tls_cert: Option<String>,
    /// PEM private key of `http_tls_cert`.
    pub http_tls_key: Option<String>,
    pub routes: Vec<RouteConfig>,
    /// `[gateway.jobs]`: the workers of `async` routes (docs/jobs.md).
    pub jobs: JobsConfig,
    /// The gateway's name: with one, it also serves the route set stored under
    /// `gateway.<name>.routes` in the `narun-gateway-routes` KV bucket, reloaded on change
    /// and on SIGHUP ([`crate::routes`]). `None` = no KV routes.
    pub name: Option<String>,
    /// Serve the routes services declare in their Micro metadata (`narun.routes`), under
    /// the rules of [`crate::routes`] (never over a configured route). Default `true`.
    pub service_routes: bool,
    /// How often the gateway looks for declared routes (`$SRV.PING`); a service missing
    /// from two looks in a row loses its routes. Default 2000.
    pub service_routes_interval_ms: u64,
    /// How long a request that finds no responder waits for one to appear (watching
    /// discovery: the service's announcement and discovery pings at growing intervals),
    /// within the route's timeout; 0 (the default) = answer 503 at once (a `GET`/`HEAD`
    /// still waits up to 500 ms, the failover window). A scaled-to-zero app is woken and
    /// waited for up to the route's timeout whatever this says (docs/gateway.md).
    pub wait_for_responder_ms: u64,
    /// `[gateway.acme]`: HTTPS on `http_addr` with certificates from an ACME CA
    /// ([`crate::acme`]); instead of `http_tls_cert`/`http_tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<crate::acme::config::AcmeConfig>,
    /// Unknown keys (reported by [`GatewayConfig::validate`]).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `[gateway.jobs]`: how the gateway runs the jobs of `async` routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobsConfig {
    /// Jobs this gateway runs at once (a durable pull consumer shared by every gateway).
    pub workers: u32,
    /// How long job state and results are kept (KV TTL of `narun-job-state`, …),
    /// counted from the last change. Used when the buckets are created.
    pub retention_sec: u64,
    /// A worker tells JetStream it is still working on a job every `ack_wait_sec / 3`; a
    /// job without news for `ack_wait_sec` (its gateway died) goes to another worker.
    pub ack_wait_sec: u64,
    /// Bytes of queued requests the `narun-jobs` stream holds; a full queue answers 503.
    /// Used when the stream is created.
    pub max_queue_bytes: u64,
    /// Longest pause between two attempts of a job.
    pub max_backoff_sec: u64,
    /// `[gateway.jobs.auth]`: a credential that may read and cancel every job over
    /// `/_jobs/` (operators). Without it, a job is guarded by its route's `auth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::auth::config::AuthConfig>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            workers: DEFAULT_JOB_WORKERS,
            retention_sec: DEFAULT_JOB_RETENTION_SEC,
            ack_wait_sec: DEFAULT_JOB_ACK_WAIT_SEC,
            max_queue_bytes: DEFAULT_JOB_MAX_QUEUE_BYTES,
            max_backoff_sec: DEFAULT_JOB_MAX_BACKOFF_SEC,
            auth: None,
            unknown: BTreeMap::new(),
        }
    }
}

/// A route's `async` key: `false` (default), `true` (every request becomes a job) or
/// `"allow"` (a request becomes a job when the client sends `Prefer: respond-async`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsyncMode {
    #[default]
    Off,
    Always,
    Allow,
}

impl Serialize for AsyncMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AsyncMode::Off => s.serialize_bool(false),
            AsyncMode::Always => s.serialize_bool(true),
            AsyncMode::Allow => s.serialize_str("allow"),
        }
    }
}

impl<'de> Deserialize<'de> for AsyncMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(false) => Ok(AsyncMode::Off),
            Raw::B(true) => Ok(AsyncMode::Always),
            Raw::S(s) if s == "allow" => Ok(AsyncMode::Allow),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "async = {s:?}: expected true, false or \"allow\""
            ))),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            enabled: false,
            http_addr: "0.0.0.0:8080".into(),
            grpc_addr: None,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            metrics_addr: "127.0.0.1:9090".into(),
            request_timeout_sec: DEFAULT_REQUEST_TIMEOUT_SEC,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_timeout_sec: DEFAULT_SHUTDOWN_TIMEOUT_SEC,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_read_timeout_sec: DEFAULT_HEADER_READ_TIMEOUT_SEC,
            keepalive_timeout_sec: DEFAULT_KEEPALIVE_TIMEOUT_SEC,
            body_read_timeout_sec: DEFAULT_BODY_READ_TIMEOUT_SEC,
            min_body_rate: DEFAULT_MIN_BODY_RATE,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            max_inflight_requests: DEFAULT_MAX_INFLIGHT_REQUESTS,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            overload_wait_ms: DEFAULT_OVERLOAD_WAIT_MS,
            http_tls_cert: None,
            http_tls_key: None,
            routes: Vec::new(),
            jobs: JobsConfig::default(),
            name: None,
            service_routes: true,
            service_routes_interval_ms: DEFAULT_SERVICE_ROUTES_INTERVAL_MS,
            wait_for_responder_ms: DEFAULT_WAIT_FOR_RESPONDER_MS,
            acme: None,
            unknown: BTreeMap::new(),
        }
    }
}

/// How a route talks to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// The whole HTTP request as one Binary HTTP message (Go narun compatible).
    #[default]
    Bhttp,
    /// The body as the NATS payload and HTTP headers as NATS headers, plus
    /// `X-Original-Method/Path/Query` (narun's legacy protocol; for plain NATS services).
    Raw,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Bhttp => "bhttp",
            RouteMode::Raw => "raw",
        }
    }
}

/// One `[[gateway.routes]]` entry: an HTTP route (`path`) or a gRPC route (`grpc`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteConfig {
    /// HTTP path: ends with `/` = prefix match, else exact.
    pub path: Option<String>,
    /// HTTP methods; omitted = any method.
    pub methods: Option<Vec<String>>,
    /// Fully-qualified gRPC service (`hello.v1.Greeter`).
    pub grpc: Option<String>,
    /// NATS Micro service name (= subject) for bhttp and gRPC routes.
    pub service: Option<String>,
    /// NATS subject for raw routes.
    pub subject: Option<String>,
    pub mode: Option<RouteMode>,
    /// Per-route NATS request timeout; default: the gateway's `request_timeout_sec`.
    pub timeout_sec: Option<u64>,
    /// `true`: answer `202 Accepted` and run the request as a job; `"allow"`: only when the
    /// client sends `Prefer: respond-async` (docs/jobs.md).
    #[serde(rename = "async")]
    pub async_mode: Option<AsyncMode>,
    /// Attempts of a job of this route before it fails (default 5).
    pub max_attempts: Option<u32>,
    /// First pause before a job's retry, doubling per failed attempt (default 1000).
    pub retry_backoff_ms: Option<u64>,
    /// Who may call the route (HTTP routes only): bearer tokens, basic, JWT ([`crate::auth`]).
    pub auth: Option<crate::auth::config::AuthConfig>,
    /// Reverse-proxy route: `http://host:port` of an HTTP service on the device, instead
    /// of a NATS `service`/`subject` ([`crate::upstream`]).
    pub proxy: Option<String>,
    /// Virtual host (HTTP routes only): `api.example.com` or `*.example.com`; the route
    /// serves only requests whose `Host` matches. Omitted = every host.
    pub host: Option<String>,
    /// CORS (HTTP routes only; [`crate::cors`]).
    pub cors: Option<crate::cors::CorsConfig>,
    /// Per-client rate limit (HTTP routes only; [`crate::ratelimit`]).
    pub rate_limit: Option<crate::ratelimit::RateLimitConfig>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl RouteConfig {
    /// The NATS subject requests are sent to.
    pub fn target_subject(&self) -> Option<&str> {
        if let Some(p) = &self.proxy {
            return Some(p.as_str());
        }
        match self.mode.unwrap_or_default() {
            RouteMode::Raw => self.subject.as_deref(),
            RouteMode::Bhttp => self.service.as_deref(),
        }
    }

    /// The route's `async` mode.
    pub fn async_mode(&self) -> AsyncMode {
        self.async_mode.unwrap_or_default()
    }

    /// The route's timeout, or `default_sec`.
    pub fn timeout(&self, default_sec: u64) -> Duration {
        Duration::from_secs(self.timeout_sec.unwrap_or(default_sec))
    }
}

/// One problem in the configuration: where (`gateway.routes[2].methods[0]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found by [`GatewayConfig::validate`], one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Errors of [`GatewayConfig::from_toml`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

const ROUTE_KEYS: &str = "path, methods, grpc, service, subject, mode, timeout_sec, async, \
                          max_attempts, retry_backoff_ms, auth, cors, rate_limit, host, proxy";
const JOBS_KEYS: &str =
    "workers, retention_sec, ack_wait_sec, max_queue_bytes, max_backoff_sec, auth";
const GATEWAY_KEYS: &str = "enabled, http_addr, grpc_addr, grpc_tls_cert, grpc_tls_key, \
                            metrics_addr, request_timeout_sec, max_body_bytes, \
                            shutdown_timeout_sec, max_connections, \
                            max_connections_per_ip, header_read_timeout_sec, \
                            keepalive_timeout_sec, body_read_timeout_sec, min_body_rate, \
                            h2_max_concurrent_streams, max_inflight_requests, \
                            memory_budget_bytes, overload_wait_ms, http_tls_cert, \
                            http_tls_key, routes, jobs, name, service_routes, \
                            service_routes_interval_ms, wait_for_responder_ms, acme";

struct Collector(Vec<ConfigError>);

impl Collector {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

/// True for names NATS Micro accepts as a service name: `^[A-Za-z0-9_-]+$`.
pub fn valid_service_name(s: &str) -> bool {
    narun_wire::micro::valid_name(s)
}

fn valid_subject(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace");
    }
    if s.split('.').any(str::is_empty) {
        return Err("has an empty token (leading, trailing or double '.')");
    }
    if s.split('.').any(|t| t == "*" || t == ">") {
        return Err("contains a wildcard ('*' or '>'); requests need a literal subject");
    }
    Ok(())
}

/// A route's `host`: a DNS name (`api.example.com`), `*.` + one (any subdomain), or an
/// IP address; lower case, no port.
fn check_host(h: &str) -> Result<(), &'static str> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name (e.g. \"api.example.com\" or \"*.example.com\")");
    }
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lower case (hosts are matched case-insensitively)");
    }
    if name.parse::<std::net::IpAddr>().is_ok() && !h.starts_with('*') {
        return Ok(());
    }
    let ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    if !ok {
        return Err(
            "is not a host name: letters, digits, '-' and '.', optionally \"*.\" in front, no port",
        );
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if let Some(c) = path
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "contains {c:?}; a route path is a plain URL path without query or fragment"
        ));
    }
    if path.contains('{') || path.contains('}') {
        return Err(
            "wildcards like {name} are not supported; end the path with '/' for a prefix match"
                .into(),
        );
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("contains a '.' or '..' segment".into());
    }
    if http::uri::PathAndQuery::try_from(path).is_err() {
        return Err("is not a valid URL path (percent-encode special characters)".into());
    }
    // Requests are routed by their normalised path (crate::path): a route must be
    // written that way, or it could never match.
    match crate::path::normalize(path) {
        Err(e) => return Err(e.message().trim_start_matches("Invalid path: ").into()),
        Ok(n) if n.path != path => {
            return Err(format!(
                "is not in normal form (RFC 3986): requests are matched as {:?}; write that",
                n.path
            ));
        }
        Ok(_) => {}
    }
    Ok(())
}

impl GatewayConfig {
    /// Parse a TOML document that has a `[gateway]` table (other tables are
    /// ignored) and validate it. Errors name the key; the caller adds the file name.
    pub fn from_toml(text: &str) -> Result<GatewayConfig, LoadError> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            gateway: GatewayConfig,
        }
        let doc: Doc = toml::from_str(text)?;
        doc.gateway.validate()?;
        Ok(doc.gateway)
    }

    /// The NATS request timeout for `route`.
    pub fn route_timeout(&self, route: &RouteConfig) -> Duration {
        route.timeout(self.request_timeout_sec)
    }

    /// Check everything deserialization cannot: addresses, timeouts, every
    /// route's keys, names and method lists, and conflicts between routes.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut c = Collector(Vec::new());
        for k in self.unknown.keys() {
            c.push(
                format!("gateway.{k}"),
                format!("unknown key (known keys: {GATEWAY_KEYS})"),
            );
        }
        for (key, value) in [
            ("http_addr", Some(&self.http_addr)),
            ("metrics_addr", Some(&self.metrics_addr)),
            ("grpc_addr", self.grpc_addr.as_ref()),
        ] {
            if let Some(v) = value
                && v.parse::<SocketAddr>().is_err()
            {
                c.push(
                    format!("gateway.{key}"),
                    format!("{v:?} is not an IP:port address (e.g. \"0.0.0.0:8080\")"),
                );
            }
        }
        if self.request_timeout_sec == 0 {
            c.push("gateway.request_timeout_sec", "must be at least 1");
        }
        if self.shutdown_timeout_sec == 0 {
            c.push("gateway.shutdown_timeout_sec", "must be at least 1");
        }
        if self.max_body_bytes == 0 {
            c.push("gateway.max_body_bytes", "must be at least 1");
        }
        if self.wait_for_responder_ms > MAX_WAIT_FOR_RESPONDER_MS {
            c.push(
                "gateway.wait_for_responder_ms",
                format!(
                    "{} is more than {MAX_WAIT_FOR_RESPONDER_MS} (10 minutes); the route's timeout bounds the wait anyway",
                    self.wait_for_responder_ms
                ),
            );
        }
        self.validate_limits(&mut c);

        // (path, Some(method) | None = any) -> first route index.
        let mut seen_methods: HashMap<(String, Option<String>), usize> = HashMap::new();
        let mut seen_grpc: HashMap<&str, usize> = HashMap::new();
        let mut has_grpc = false;
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("gateway.routes[{i}]");
            for k in r.unknown.keys() {
                c.push(
                    format!("{key}.{k}"),
                    format!("unknown key (known keys: {ROUTE_KEYS})"),
                );
            }
            if let Some(t) = r.timeout_sec
                && t == 0
            {
                c.push(format!("{key}.timeout_sec"), "must be at least 1");
            }
            match (&r.path, &r.grpc) {
                (Some(_), Some(_)) => {
                    c.push(
                        &key,
                        "has both `path` and `grpc`; a route is either HTTP (`path`) or gRPC (`grpc`)",
                    );
                    continue;
                }
                (None, None) => {
                    c.push(&key, "needs `path` (HTTP route) or `grpc` (gRPC route)");
                    continue;
                }
                (None, Some(grpc)) => {
                    has_grpc = true;
                    self.validate_grpc_route(&mut c, &key, r, grpc);
                    if let Some(first) = seen_grpc.insert(grpc.trim(), i) {
                        c.push(
                            format!("{key}.grpc"),
                            format!(
                                "gRPC service {grpc:?} is already routed by gateway.routes[{first}]"
                            ),
                        );
                    }
                }
                (Some(path), None) => {
                    self.validate_http_route(&mut c, &key, r, path);
                    // Conflicts: the same (path, method) twice, or "any method"
                    // next to another route of the same path.
                    let methods: Vec<Option<String>> = match &r.methods {
                        None => vec![None],
                        Some(m) => m
                            .iter()
                            .map(|m| Some(m.trim().to_ascii_uppercase()))
                            .collect(),
                    };
                    // Virtual hosts have their own paths: the key is host + path.
                    let at_path = match &r.host {
                        Some(h) => format!("{}{path}", h.trim().to_ascii_lowercase()),
                        None => path.clone(),
                    };
                    for (j, m) in methods.into_iter().enumerate() {
                        let any = seen_methods.get(&(at_path.clone(), None)).copied();
                        let clash = if m.is_none() {
                            seen_methods
                                .iter()
                                .filter(|((p, _), _)| *p == at_path)
                                .map(|(_, idx)| *idx)
                                .min()
                        } else {
                            any.or_else(|| seen_methods.get(&(at_path.clone(), m.clone())).copied())
                        };
                        if let Some(first) = clash {
                            let what = match &m {
                                Some(m) => format!("{m} {path}"),
                                None => format!("any method on {path}"),
                            };
                            let at = match &m {
                                Some(_) => format!("{key}.methods[{j}]"),
                                None => key.clone(),
                            };
                            c.push(
                                at,
                                format!("{what} is already routed by gateway.routes[{first}]"),
                            );
                        } else {
                            seen_methods.insert((at_path.clone(), m), i);
                        }
                    }
                }
            }
        }
        self.validate_tls(&mut c);
        self.validate_jobs(&mut c);
        if let Some(n) = &self.name
            && !narun_wire::routes::valid_gateway_name(n)
        {
            c.push(
                "gateway.name",
                format!("{n:?} is not a gateway name: 1 to 64 of A-Z, a-z, 0-9, '-' and '_'"),
            );
        }
        if !(100..=60_000).contains(&self.service_routes_interval_ms) {
            c.push(
                "gateway.service_routes_interval_ms",
                format!(
                    "{} is out of range (100 to 60000)",
                    self.service_routes_interval_ms
                ),
            );
        }
        if let Some(a) = &self.acme {
            let files = self.http_tls_cert.is_some() || self.http_tls_key.is_some();
            a.validate(files, &mut c.0);
        }
        if has_grpc && self.grpc_addr.is_none() {
            c.push(
                "gateway.grpc_addr",
                "is required when gRPC routes exist (e.g. \"0.0.0.0:8081\")",
            );
        }
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(c.0))
        }
    }

    /// The limits against hostile clients: all at least 1 (`min_body_rate` may
    /// be 0), and a body of `max_body_bytes` must fit in the memory budget.
    fn validate_limits(&self, c: &mut Collector) {
        for (key, v) in [
            ("max_connections", u64::from(self.max_connections)),
            (
                "max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("header_read_timeout_sec", self.header_read_timeout_sec),
            ("keepalive_timeout_sec", self.keepalive_timeout_sec),
            ("body_read_timeout_sec", self.body_read_timeout_sec),
            (
                "h2_max_concurrent_streams",
                u64::from(self.h2_max_concurrent_streams),
            ),
            (
                "max_inflight_requests",
                u64::from(self.max_inflight_requests),
            ),
        ] {
            if v == 0 {
                c.push(format!("gateway.{key}"), "must be at least 1");
            }
        }
        if self.max_connections_per_ip > self.max_connections {
            c.push(
                "gateway.max_connections_per_ip",
                format!(
                    "{} is more than max_connections ({})",
                    self.max_connections_per_ip, self.max_connections
                ),
            );
        }
        if self.memory_budget_bytes < self.max_body_bytes {
            c.push(
                "gateway.memory_budget_bytes",
                format!(
                    "{} is less than max_body_bytes ({}): a largest body could never be accepted",
                    self.memory_budget_bytes, self.max_body_bytes
                ),
            );
        }
        // A timeout is a bound: past a day it is a way to disable it (and `Instant`
        // arithmetic on huge values would panic).
        for (key, v) in [
            ("header_read_timeout_sec", self.header_read_timeout_sec),
            ("keepalive_timeout_sec", self.keepalive_timeout_sec),
            ("body_read_timeout_sec", self.body_read_timeout_sec),
        ] {
            if v > MAX_TIMEOUT_SEC {
                c.push(
                    format!("gateway.{key}"),
                    format!("{v} is more than {MAX_TIMEOUT_SEC} (one day)"),
                );
            }
        }
        // Past an hour, a "brief" wait is a hang.
        if self.overload_wait_ms > 3_600_000 {
            c.push(
                "gateway.overload_wait_ms",
                "must be at most 3600000 (one hour)",
            );
        }
    }

    /// Whether any route may run requests as jobs (the gateway then serves `/_jobs/` and
    /// runs workers).
    pub fn has_async_routes(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.path.is_some() && r.async_mode() != AsyncMode::Off)
    }

    /// `[gateway.jobs]` and the routes' job keys.
    fn validate_jobs(&self, c: &mut Collector) {
        let j = &self.jobs;
        for k in j.unknown.keys() {
            c.push(
                format!("gateway.jobs.{k}"),
                format!("unknown key (known keys: {JOBS_KEYS})"),
            );
        }
        for (key, v, max) in [
            ("workers", u64::from(j.workers), 1024),
            ("retention_sec", j.retention_sec, 365 * 86_400),
            ("ack_wait_sec", j.ack_wait_sec, MAX_TIMEOUT_SEC),
            ("max_backoff_sec", j.max_backoff_sec, MAX_TIMEOUT_SEC),
        ] {
            if v == 0 {
                c.push(format!("gateway.jobs.{key}"), "must be at least 1");
            } else if v > max {
                c.push(
                    format!("gateway.jobs.{key}"),
                    format!("{v} is more than {max}"),
                );
            }
        }
        if let Some(a) = &j.auth {
            for (k, why) in a.problems("gateway.jobs.auth") {
                c.push(k, why);
            }
        }
        if j.max_queue_bytes < 1 << 20 || j.max_queue_bytes > i64::MAX as u64 {
            c.push(
                "gateway.jobs.max_queue_bytes",
                format!(
                    "{} is out of range (1048576 to {})",
                    j.max_queue_bytes,
                    i64::MAX
                ),
            );
        }
        let any_async = self.has_async_routes();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("gateway.routes[{i}]");
            let is_async = r.async_mode() != AsyncMode::Off;
            if r.grpc.is_some() && r.async_mode.is_some() {
                c.push(
                    format!("{key}.async"),
                    "is only for HTTP routes (gRPC calls are answered synchronously)",
                );
            }
            if r.path.is_none() {
                // gRPC routes: validate_grpc_route names these keys.
                continue;
            }
            if let Some(n) = r.max_attempts {
                if !is_async {
                    c.push(
                        format!("{key}.max_attempts"),
                        "is only used by async routes (set async = true or \"allow\")",
                    );
                } else if n == 0 || n > narun_wire::jobs::MAX_ATTEMPTS_LIMIT {
                    c.push(
                        format!("{key}.max_attempts"),
                        format!(
                            "{n} is out of range (1 to {})",
                            narun_wire::jobs::MAX_ATTEMPTS_LIMIT
                        ),
                    );
                }
            }
            if let Some(ms) = r.retry_backoff_ms {
                if !is_async {
                    c.push(
                        format!("{key}.retry_backoff_ms"),
                        "is only used by async routes (set async = true or \"allow\")",
                    );
                } else if ms == 0 || ms > 3_600_000 {
                    c.push(
                        format!("{key}.retry_backoff_ms"),
                        format!("{ms} is out of range (1 to 3600000)"),
                    );
                }
            }
            if any_async
                && let Some(p) = &r.path
                && (p == "/_jobs" || p.starts_with(narun_wire::jobs::HTTP_PREFIX))
            {
                c.push(
                    format!("{key}.path"),
                    format!("{p:?} is the gateway's job API (/_jobs/) while async routes exist"),
                );
            }
        }
    }

    /// `grpc_tls_cert` and `grpc_tls_key` come together and need `grpc_addr`.
    /// The files themselves are read when the gateway binds.
    fn validate_tls(&self, c: &mut Collector) {
        for (key, v) in [
            ("grpc_tls_cert", &self.grpc_tls_cert),
            ("grpc_tls_key", &self.grpc_tls_key),
            ("http_tls_cert", &self.http_tls_cert),
            ("http_tls_key", &self.http_tls_key),
        ] {
            if let Some(v) = v
                && v.trim().is_empty()
            {
                c.push(
                    format!("gateway.{key}"),
                    "is empty; give a PEM file path or remove the key",
                );
            }
        }
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(_), None) => c.push(
                "gateway.grpc_tls_key",
                "is required when grpc_tls_cert is set (the certificate's PEM private key)",
            ),
            (None, Some(_)) => c.push(
                "gateway.grpc_tls_cert",
                "is required when grpc_tls_key is set (the PEM certificate chain)",
            ),
            (Some(_), Some(_)) if self.grpc_addr.is_none() => c.push(
                "gateway.grpc_tls_cert",
                "TLS is only used by the gRPC listener: set grpc_addr too, or remove grpc_tls_cert/grpc_tls_key",
            ),
            _ => {}
        }
        match (&self.http_tls_cert, &self.http_tls_key) {
            (Some(_), None) => c.push(
                "gateway.http_tls_key",
                "is required when http_tls_cert is set (the certificate's PEM private key)",
            ),
            (None, Some(_)) => c.push(
                "gateway.http_tls_cert",
                "is required when http_tls_key is set (the PEM certificate chain)",
            ),
            _ => {}
        }
    }

    fn validate_http_route(&self, c: &mut Collector, key: &str, r: &RouteConfig, path: &str) {
        if let Some(a) = &r.auth {
            for (k, why) in a.problems(&format!("{key}.auth")) {
                c.push(k, why);
            }
        }
        if let Some(h) = &r.host
            && let Err(why) = check_host(h)
        {
            c.push(format!("{key}.host"), format!("{h:?} {why}"));
        }
        if let Some(a) = &r.cors {
            for (k, why) in a.problems(&format!("{key}.cors")) {
                c.push(k, why);
            }
        }
        if let Some(a) = &r.rate_limit {
            for (k, why) in a.problems(&format!("{key}.rate_limit")) {
                c.push(k, why);
            }
        }
        if let Err(why) = check_path(path) {
            c.push(format!("{key}.path"), format!("{path:?} {why}"));
        }
        if let Some(methods) = &r.methods {
            if methods.is_empty() {
                c.push(
                    format!("{key}.methods"),
                    "is empty; list at least one method, or omit `methods` to accept any",
                );
            }
            let mut seen = HashSet::new();
            for (j, m) in methods.iter().enumerate() {
                let norm = m.trim().to_ascii_uppercase();
                if norm.is_empty() {
                    c.push(format!("{key}.methods[{j}]"), "is empty");
                } else if http::Method::from_bytes(norm.as_bytes()).is_err() {
                    c.push(
                        format!("{key}.methods[{j}]"),
                        format!("{m:?} is not an HTTP method"),
                    );
                } else if !seen.insert(norm) {
                    c.push(
                        format!("{key}.methods[{j}]"),
                        format!("{m:?} is listed twice"),
                    );
                }
            }
        }
        if let Some(url) = &r.proxy {
            for (k, why) in crate::upstream::problems(url, key, r) {
                c.push(k, why);
            }
            return;
        }
        match r.mode.unwrap_or_default() {
            RouteMode::Bhttp => {
                if r.subject.is_some() {
                    c.push(
                        format!("{key}.subject"),
                        "is only used with mode = \"raw\"; bhttp routes send to `service`",
                    );
                }
                match &r.service {
                    None => c.push(
                        format!("{key}.service"),
                        "is required (the NATS Micro service name the route forwards to)",
                    ),
                    Some(s) if !valid_service_name(s) => c.push(
                        format!("{key}.service"),
                        format!(
                            "{s:?} is not a valid service name: use only A-Z, a-z, 0-9, '-' and '_'"
                        ),
                    ),
                    Some(_) => {}
                }
            }
            RouteMode::Raw => {
                if r.service.is_some() {
                    c.push(
                        format!("{key}.service"),
                        "is not used with mode = \"raw\"; set `subject` instead",
                    );
                }
                match &r.subject {
                    None => c.push(
                        format!("{key}.subject"),
                        "is required with mode = \"raw\" (the NATS subject to send requests to)",
                    ),
                    Some(s) => {
                        if let Err(why) = valid_subject(s) {
                            c.push(format!("{key}.subject"), format!("{s:?} {why}"));
                        }
                    }
                }
            }
        }
    }

    fn validate_grpc_route(&self, c: &mut Collector, key: &str, r: &RouteConfig, grpc: &str) {
        let g = grpc.trim();
        if g.is_empty() {
            c.push(format!("{key}.grpc"), "is empty");
        } else if g.contains(|ch: char| ch.is_whitespace() || ch == '/') {
            c.push(
                format!("{key}.grpc"),
                format!("{grpc:?} must be a fully-qualified service name like \"hello.v1.Greeter\" (no spaces or '/')"),
            );
        }
        for (field, set) in [
            ("methods", r.methods.is_some()),
            ("subject", r.subject.is_some()),
            ("mode", r.mode.is_some()),
            ("max_attempts", r.max_attempts.is_some()),
            ("retry_backoff_ms", r.retry_backoff_ms.is_some()),
            ("auth", r.auth.is_some()),
            ("host", r.host.is_some()),
            ("proxy", r.proxy.is_some()),
            ("cors", r.cors.is_some()),
            ("rate_limit", r.rate_limit.is_some()),
        ] {
            if set {
                c.push(
                    format!("{key}.{field}"),
                    "is not used by gRPC routes (they take grpc, service and timeout_sec)",
                );
            }
        }
        match &r.service {
            None => c.push(format!("{key}.service"), "is required"),
            Some(s) if !valid_service_name(s) => c.push(
                format!("{key}.service"),
                format!("{s:?} is not a valid service name: use only A-Z, a-z, 0-9, '-' and '_'"),
            ),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `errs` are exactly the errors starting with the `expect` lines, in any order.
    fn assert_errors(errs: &[String], expect: &[&str]) {
        for e in expect {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in:\n{}",
                errs.join("\n")
            );
        }
        assert_eq!(errs.len(), expect.len(), "{}", errs.join("\n"));
    }

    fn errors(toml_text: &str) -> Vec<String> {
        match GatewayConfig::from_toml(toml_text) {
            Ok(_) => vec![],
            Err(LoadError::Invalid(e)) => e.0.iter().map(|e| e.to_string()).collect(),
            Err(LoadError::Parse(e)) => vec![format!("parse: {e}")],
        }
    }

    #[test]
    fn defaults_and_a_valid_config() {
        let text = r#"
[gateway]
enabled = true
http_addr = "127.0.0.1:0"
grpc_addr = "127.0.0.1:0"
[[gateway.routes]]
path = "/hello/"
methods = ["get", "POST"]
service = "hello"
timeout_sec = 5
[[gateway.routes]]
path = "/hello/"
methods = ["PUT"]
service = "hello-put"
[[gateway.routes]]
path = "/raw"
mode = "raw"
subject = "legacy.api"
[[gateway.routes]]
grpc = "hello.v1.Greeter"
service = "grpc-hello"
"#;
        let cfg = GatewayConfig::from_toml(text).unwrap();
        assert_eq!(cfg.request_timeout_sec, 15);
        assert_eq!(cfg.max_body_bytes, 8 << 20);
        assert_eq!(cfg.routes.len(), 4);
        assert_eq!(cfg.route_timeout(&cfg.routes[0]), Duration::from_secs(5));
        assert_eq!(cfg.route_timeout(&cfg.routes[1]), Duration::from_secs(15));
        assert_eq!(cfg.routes[2].target_subject(), Some("legacy.api"));
        assert_eq!(cfg.max_connections, 512);
        assert_eq!(cfg.memory_budget_bytes, 32 << 20);
    }

    #[test]
    fn limits_are_validated_with_their_key_path() {
        let errs = errors(
            "[gateway]\nmax_connections = 0\nmax_connections_per_ip = 4\n\
             header_read_timeout_sec = 0\nkeepalive_timeout_sec = 0\nbody_read_timeout_sec = 0\n\
             h2_max_concurrent_streams = 0\nmax_inflight_requests = 0\n\
             max_body_bytes = 100\nmemory_budget_bytes = 99\noverload_wait_ms = 3600001\n",
        );
        let expect = [
            "gateway.max_connections: must be at least 1",
            "gateway.header_read_timeout_sec: must be at least 1",
            "gateway.keepalive_timeout_sec: must be at least 1",
            "gateway.body_read_timeout_sec: must be at least 1",
            "gateway.h2_max_concurrent_streams: must be at least 1",
            "gateway.max_inflight_requests: must be at least 1",
            "gateway.max_connections_per_ip: 4 is more than max_connections (0)",
            "gateway.memory_budget_bytes: 99 is less than max_body_bytes (100)",
            "gateway.overload_wait_ms: must be at most 3600000",
        ];
        assert_errors(&errs, &expect);
        let errs = errors("[gateway]\nmax_connections = -1\n");
        assert!(errs[0].contains("max_connections"), "{errs:?}");
        assert!(errors("[gateway]\nmin_body_rate = 0\n").is_empty());
        // Route paths must be written as requests are matched (normalised).
        let errs = errors(
            "[gateway]\n[[gateway.routes]]\npath = \"/%7euser/\"\nservice = \"a\"\n\
             [[gateway.routes]]\npath = \"/a%2Fb\"\nservice = \"b\"\n",
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("\"/~user/\""), "{errs:?}");
        assert!(errs[1].contains("encoded '/'"), "{errs:?}");
        // "Disabling" a timeout with a huge value is refused, not a panic later.
        let errs = errors(
            "[gateway]\nkeepalive_timeout_sec = 18446744073709551615\nbody_read_timeout_sec = 86401\n",
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "gateway.keepalive_timeout_sec: 18446744073709551615 is more than 86400"
            ),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("gateway.body_read_timeout_sec: 86401 is more than 86400"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = r#"
[gateway]
http_addr = "nonsense"
request_timeout_sec = 0
colour = "blue"
[[gateway.routes]]
path = "hello"
methods = ["GET", "", "G E T"]
service = "a.b"
[[gateway.routes]]
path = "/x"
methods = []
service = "x"
metods = ["GET"]
[[gateway.routes]]
path = "/raw"
mode = "raw"
[[gateway.routes]]
path = "/both"
grpc = "a.B"
service = "x"
[[gateway.routes]]
path = "/dup"
methods = ["GET"]
service = "x"
[[gateway.routes]]
path = "/dup"
methods = ["POST", "get"]
service = "y"
[[gateway.routes]]
path = "/dup"
service = "z"
[[gateway.routes]]
grpc = "a.B"
service = "g"
"#;
        let errs = errors(text);
        let expect = [
            "gateway.colour: unknown key",
            "gateway.http_addr: \"nonsense\" is not an IP:port",
            "gateway.request_timeout_sec: must be at least 1",
            "gateway.routes[0].path: \"hello\" must start with '/'",
            "gateway.routes[0].methods[1]: is empty",
            "gateway.routes[0].methods[2]: \"G E T\" is not an HTTP method",
            "gateway.routes[0].service: \"a.b\" is not a valid service name",
            "gateway.routes[1].metods: unknown key",
            "gateway.routes[1].methods: is empty",
            "gateway.routes[2].subject: is required with mode = \"raw\"",
            "gateway.routes[3]: has both `path` and `grpc`",
            "gateway.routes[5].methods[1]: GET /dup is already routed by gateway.routes[4]",
            "gateway.routes[6]: any method on /dup is already routed by gateway.routes[4]",
            "gateway.grpc_addr: is required when gRPC routes exist",
        ];
        assert_errors(&errs, &expect);
    }

    #[test]
    fn async_routes_and_job_settings_are_checked() {
        let cfg = GatewayConfig::from_toml(
            "[gateway]\n[gateway.jobs]\nworkers = 2\n\
             [[gateway.routes]]\npath = \"/a\"\nservice = \"a\"\nasync = true\nmax_attempts = 3\n\
             [[gateway.routes]]\npath = \"/b/\"\nservice = \"b\"\nasync = \"allow\"\n\
             [[gateway.routes]]\npath = \"/c\"\nservice = \"c\"\nasync = false\n",
        )
        .unwrap();
        assert!(cfg.has_async_routes());
        assert_eq!(cfg.jobs.workers, 2);
        assert_eq!(cfg.jobs.retention_sec, DEFAULT_JOB_RETENTION_SEC);
        assert_eq!(cfg.routes[0].async_mode(), AsyncMode::Always);
        assert_eq!(cfg.routes[1].async_mode(), AsyncMode::Allow);
        assert_eq!(cfg.routes[2].async_mode(), AsyncMode::Off);
        // Serialized the way it is written (narund's `--check-config` prints it).
        let text = toml::to_string(&cfg).unwrap();
        assert!(
            text.contains("async = true") && text.contains("async = \"allow\""),
            "{text}"
        );
        assert!(!GatewayConfig::default().has_async_routes());

        let errs = errors(
            "[gateway]\ngrpc_addr = \"127.0.0.1:0\"\n[gateway.jobs]\nworkers = 0\nretention_sec = 0\nmax_queue_bytes = 10\ncolour = 1\n\
             [[gateway.routes]]\npath = \"/a\"\nservice = \"a\"\nmax_attempts = 3\nretry_backoff_ms = 5\n\
             [[gateway.routes]]\npath = \"/b\"\nservice = \"b\"\nasync = true\nmax_attempts = 0\nretry_backoff_ms = 0\n\
             [[gateway.routes]]\npath = \"/_jobs/x\"\nservice = \"c\"\n\
             [[gateway.routes]]\ngrpc = \"a.B\"\nservice = \"g\"\nasync = true\nmax_attempts = 2\n",
        );
        let expect = [
            "gateway.jobs.colour: unknown key",
            "gateway.jobs.workers: must be at least 1",
            "gateway.jobs.retention_sec: must be at least 1",
            "gateway.jobs.max_queue_bytes: 10 is out of range",
            "gateway.routes[0].max_attempts: is only used by async routes",
            "gateway.routes[0].retry_backoff_ms: is only used by async routes",
            "gateway.routes[1].max_attempts: 0 is out of range (1 to 100)",
            "gateway.routes[1].retry_backoff_ms: 0 is out of range",
            "gateway.routes[2].path: \"/_jobs/x\" is the gateway's job API",
            "gateway.routes[3].async: is only for HTTP routes",
            "gateway.routes[3].max_attempts: is not used by gRPC routes",
        ];
        assert_errors(&errs, &expect);
        let errs =
            errors("[[gateway.routes]]\npath = \"/a\"\nservice = \"a\"\nasync = \"maybe\"\n");
        assert!(
            errs[0].contains("expected true, false or \"allow\""),
            "{errs:?}"
        );
    }

    #[test]
    fn tls_keys_come_in_pairs_and_need_grpc_addr() {
        let errs = errors("[gateway]\ngrpc_addr = \"127.0.0.1:0\"\ngrpc_tls_cert = \"/c.pem\"\n");
        assert_eq!(
            errs,
            [
                "gateway.grpc_tls_key: is required when grpc_tls_cert is set (the certificate's PEM private key)"
            ]
        );
        let errs = errors("[gateway]\ngrpc_addr = \"127.0.0.1:0\"\ngrpc_tls_key = \"\"\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.grpc_tls_key: is empty"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("gateway.grpc_tls_cert: is required"),
            "{errs:?}"
        );
        let errs = errors("[gateway]\ngrpc_tls_cert = \"/c\"\ngrpc_tls_key = \"/k\"\n");
        assert!(
            errs[0].starts_with("gateway.grpc_tls_cert: TLS is only used by the gRPC listener"),
            "{errs:?}"
        );
        let cfg = GatewayConfig::from_toml(
            "[gateway]\ngrpc_addr = \"127.0.0.1:0\"\ngrpc_tls_cert = \"/c\"\ngrpc_tls_key = \"/k\"\n",
        )
        .unwrap();
        assert_eq!(cfg.grpc_tls_key.as_deref(), Some("/k"));
    }

    #[test]
    fn virtual_hosts_and_edge_keys_are_validated() {
        let errs = errors(
            "[gateway]\nhttp_tls_cert = \"/c.pem\"\n\
             [[gateway.routes]]\npath = \"/a/\"\nservice = \"a\"\nhost = \"api.example.com\"\n\
             [[gateway.routes]]\npath = \"/a/\"\nservice = \"b\"\n\
             [[gateway.routes]]\npath = \"/a/\"\nservice = \"c\"\nhost = \"api.example.com\"\n\
             [[gateway.routes]]\npath = \"/b/\"\nservice = \"d\"\nhost = \"API.example.com:80\"\n\
             [[gateway.routes]]\npath = \"/c/\"\nservice = \"e\"\nhost = \"*.example.com\"\n\
             [[gateway.routes]]\ngrpc = \"a.B\"\nservice = \"g\"\nhost = \"x\"\n",
        );
        let expect = [
            "gateway.http_tls_key: is required when http_tls_cert is set",
            "gateway.routes[2]: any method on /a/ is already routed by gateway.routes[0]",
            "gateway.routes[3].host: \"API.example.com:80\" must be lower case",
            "gateway.routes[5].host: is not used by gRPC routes",
            "gateway.grpc_addr: is required when gRPC routes exist",
        ];
        assert_errors(&errs, &expect);
    }

    #[test]
    fn the_new_route_tables_serialize_back() {
        // narund prints its effective settings (`--check-config`) through Serialize.
        let text = r#"
[gateway]
http_tls_cert = "/c"
http_tls_key = "/k"
[[gateway.routes]]
path = "/a/"
service = "a"
host = "a.example.com"
[gateway.routes.auth]
bearer = { ci = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }
[gateway.routes.auth.jwt]
keys = [{ alg = "HS256", file = "/k" }]
claims = { role = "admin", admin = true, level = 3, scope = ["a", "b"] }
[gateway.routes.cors]
allow_origins = ["*"]
[gateway.routes.rate_limit]
rate = 0.5
burst = 2
[[gateway.routes]]
path = "/p/"
proxy = "http://127.0.0.1:3000"
"#;
        let cfg = GatewayConfig::from_toml(text).unwrap();
        let v = toml::Value::try_from(&cfg).unwrap();
        let back: GatewayConfig = v.try_into().unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn type_errors_come_from_the_toml_parser_with_a_location() {
        let errs = errors("[gateway]\nrequest_timeout_sec = \"soon\"\n");
        assert!(errs[0].contains("request_timeout_sec"), "{errs:?}");
        assert!(errs[0].contains("line 2"), "{errs:?}");
        let errs = errors("[[gateway.routes]]\npath = \"/x\"\nservice = \"x\"\nmode = \"grpc\"\n");
        assert!(errs[0].contains("unknown variant"), "{errs:?}");
    }
}
