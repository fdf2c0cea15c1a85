//! narun's HTTP gateway: HTTP routes in front of NATS Micro services.
//!
//! Each HTTP request that matches a route becomes **one NATS request** to the
//! route's subject, and the reply becomes the HTTP response:
//!
//! ```text
//!  client ──HTTP/1.1 or h2c──▶ Gateway ──NATS request (BHTTP payload)──▶ service "hello"
//!         ◀──────────────────          ◀──────────── reply (BHTTP) ────
//! ```
//!
//! * `mode = "bhttp"` (default, Go narun compatible): the whole request
//!   (method, path + query, headers, body) is one Binary HTTP message
//!   ([`narun_wire::bhttp`]); the app replies with a BHTTP response.
//! * `mode = "raw"`: the body is the payload and the HTTP headers are NATS
//!   headers (plus `X-Original-Method/Path/Query`), for plain NATS services in
//!   any language.
//!
//! The gateway maps failures to HTTP statuses (404/405 for routing, 503 when
//! nobody serves the subject or NATS is down, 504 on timeout, 502 on an
//! undecodable reply, micro error codes to their status), adds
//! `X-Forwarded-*` and `X-Request-Id`, enforces a body limit that fits the NATS
//! `max_payload`, exposes Prometheus metrics, `/healthz`, `/readyz` and the
//! service-discovery document of the nodes' metrics (`/sd/nodes`) on a second
//! listener, and registers itself as the ADR-32 service `narun-gateway` with one
//! endpoint per route it serves (HTTP and gRPC).
//!
//! Everything a client can make it hold is bounded ([`limits`]): connections
//! (total, per IP, at most half the soft `RLIMIT_NOFILE`, so narund keeps the
//! fds it needs to supervise apps), the time to send a head or body or to read
//! a response (the write-stall rule), HTTP/2 streams, NATS requests in flight,
//! and one memory budget for all request bodies and gRPC reply buffers.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use narun_gateway::{Gateway, GatewayConfig};
//! let config = GatewayConfig::from_toml(r#"
//!     [gateway]
//!     http_addr = "127.0.0.1:8080"
//!     [[gateway.routes]]
//!     path = "/hello/"
//!     service = "hello"
//! "#)?;
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let gateway = Gateway::bind(config, client).await?;
//! println!("serving on http://{}", gateway.http_addr());
//! gateway.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod acme;
pub mod auth;
pub mod config;
pub mod cors;
mod discovery;
mod failover;
mod grpc;
mod jobs;
pub mod limits;
mod metrics;
pub mod mount;
mod path;
mod proxy;
pub mod ratelimit;
mod responders;
mod router;
mod routes;
pub mod tls;
mod trace;
pub mod upstream;

/// The route table, reachable from the fuzz targets (`fuzz-targets/`, `fuzz/`).
/// Not part of the gateway's API: it may change with any release.
#[doc(hidden)]
pub mod fuzzing {
    use crate::config::RouteMode;
    use crate::router::{Match, RouteSpec, Router, Target};
    use http::Method;
    use std::sync::Arc;
    use std::time::Duration;

    /// What the gateway does with a request path.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Routed {
        /// 400: a bad or dangerous escape, or a `..` that climbs out of a route.
        BadPath,
        /// 404.
        NotFound,
        /// 405 on the route with this configured path.
        MethodNotAllowed(String),
        /// Forwarded to the route with this configured path; the app receives `path`.
        Found { route: String, path: String },
    }

    /// A route table built the way the gateway builds it from its config.
    pub struct Routes(Router);

    impl Routes {
        /// Routes given as (path, methods or `None` for any method). Paths ending in
        /// `/` are prefix routes, the others exact.
        pub fn new(routes: &[(&str, Option<&[&str]>)]) -> Routes {
            let specs = routes
                .iter()
                .map(|(path, methods)| RouteSpec {
                    host: None,
                    path: path.to_string(),
                    methods: methods.map(|m| {
                        m.iter()
                            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                            .collect()
                    }),
                    target: Arc::new(Target::new(
                        path,
                        RouteMode::Bhttp,
                        "fuzz",
                        Duration::from_secs(1),
                        Default::default(),
                    )),
                })
                .collect();
            Routes(Router::new(specs))
        }

        /// Route `path` (the request URI's path, no query) as the gateway does.
        pub fn route(&self, method: &Method, path: &str) -> Routed {
            let routed = self.0.find(method, path);
            match routed.m {
                Match::BadPath(_) => Routed::BadPath,
                Match::NotFound => Routed::NotFound,
                Match::MethodNotAllowed(pr) => Routed::MethodNotAllowed(pr.path.to_string()),
                Match::Found(t) => Routed::Found {
                    route: t.path.to_string(),
                    path: routed.path.into_owned(),
                },
            }
        }
    }
}

pub use config::{
    AsyncMode, ConfigError, ConfigErrors, GatewayConfig, JobsConfig, LoadError, RouteConfig,
    RouteMode,
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use narun_wire::micro::{MicroError, Service, ServiceConfig};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use limits::Listener;

/// The gateway's ADR-32 service name.
pub const SERVICE_NAME: &str = "narun-gateway";

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr} for {what}: {source} (is another process using the port?)")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("registering the {SERVICE_NAME} NATS Micro service: {0}")]
    Micro(#[from] MicroError),
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub client: async_nats::Client,
    /// The routes in service (configured, KV and declared: [`routes`]).
    pub router: routes::Live,
    pub metrics: metrics::Metrics,
    /// Configured `max_body_bytes`.
    pub max_body: u64,
    /// Connections, timeouts, memory, in-flight requests ([`limits`]).
    pub limits: Arc<limits::Limits>,
    /// The client's connection events, for requests across a lost connection ([`failover`]).
    pub failover: failover::Failover,
    /// Async requests and their workers, when any route is async ([`jobs`]).
    pub(crate) jobs: Option<Arc<jobs::Jobs>>,
    /// Requests waiting for a responder, and wakes of scaled-to-zero apps ([`responders`]).
    pub(crate) responders: responders::Responders,
    /// A handler of the embedding program on a path prefix ([`mount`]).
    pub(crate) mount: std::sync::OnceLock<mount::Mounted>,
}

/// A bound, not yet running gateway. See the [crate docs](crate).
pub struct Gateway {
    http: TcpListener,
    metrics: TcpListener,
    http_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shared: Arc<Shared>,
    service: Service,
    shutdown_timeout: Duration,
    /// gRPC listener, when `grpc_addr` is set and gRPC routes exist.
    grpc: Option<grpc::GrpcGateway>,
    /// TLS of the routed listener (`http_tls_cert`/`http_tls_key`).
    http_tls: Option<tokio_rustls::TlsAcceptor>,
    /// What the routes are rebuilt from when KV or declared routes change ([`routes`]).
    routes: routes::Sources,
    /// Certificates from ACME (`[gateway.acme]`), run with the gateway.
    #[cfg(feature = "acme")]
    acme: Option<acme::Acme>,
}

pub(crate) async fn bind(
    what: &'static str,
    addr: &str,
) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let err = |source| GatewayError::Bind {
        what,
        addr: addr.to_owned(),
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

impl Gateway {
    /// Validate `config`, bind the HTTP and metrics listeners (port 0 picks a
    /// free port) and register the `narun-gateway` service on `client`.
    ///
    /// `client` may still be connecting (e.g. built with
    /// `retry_on_initial_connect`): the gateway serves anyway and answers 503
    /// until NATS is reachable.
    pub async fn bind(
        config: GatewayConfig,
        client: async_nats::Client,
    ) -> Result<Gateway, GatewayError> {
        config.validate()?;
        // OTLP export of the forwarded requests' spans (crate::trace), when asked for.
        #[cfg(feature = "otlp")]
        if !narun_wire::otlp::is_installed()
            && let Err(e) = narun_wire::otlp::install_from_env("narun-gateway")
        {
            tracing::warn!(error = %e, "OpenTelemetry export stays off");
        }
        // Read the TLS files first: a bad path or PEM fails before anything is bound.
        let grpc_tls = match (&config.grpc_tls_cert, &config.grpc_tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(tls::server_config(cert, key)?)),
            _ => None,
        };
        #[cfg_attr(not(feature = "acme"), allow(unused_mut))]
        let mut http_tls = match (&config.http_tls_cert, &config.http_tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                tls::http_server_config(cert, key)?,
            ))),
            _ => None,
        };
        #[cfg(feature = "acme")]
        let acme = match &config.acme {
            Some(a) => {
                let a = acme::Acme::bind(a).await?;
                http_tls = Some(tokio_rustls::TlsAcceptor::from(Arc::new(a.server_config())));
                Some(a)
            }
            None => None,
        };
        // And the routes' JWT key files.
        let policies = auth::load_policies(&config)?;
        let jobs_auth = match &config.jobs.auth {
            Some(a) => Some(Arc::new(auth::Policy::load(a, "gateway.jobs.auth")?)),
            None => None,
        };
        let (http, http_addr) = bind("the HTTP gateway", &config.http_addr).await?;
        let (metrics_l, metrics_addr) = bind("gateway metrics", &config.metrics_addr).await?;

        let mut sc = ServiceConfig::new(SERVICE_NAME, env!("CARGO_PKG_VERSION"));
        sc.description = "narun HTTP gateway: HTTP routes to NATS Micro services".into();
        sc.metadata
            .insert("http_addr".into(), http_addr.to_string());
        sc.metadata
            .insert("metrics_addr".into(), metrics_addr.to_string());
        let service = Service::start(&client, sc).await?;

        let mut stats_err = None;
        // One endpoint per route the gateway serves, HTTP and gRPC: the gateway answers
        // them over HTTP, not NATS, so they have no subject of their own; `target` is the
        // subject a route forwards to (docs/gateway.md, "Discovery").
        let specs = router::specs(&config, &policies, |name, subject, route| {
            let mut md = std::collections::BTreeMap::new();
            md.insert("kind".into(), "http".into());
            if let Some(p) = &route.path {
                md.insert("path".into(), p.clone());
            }
            if let Some(m) = &route.methods {
                md.insert("methods".into(), m.join(","));
            }
            let mode = match route.proxy {
                Some(_) => "proxy",
                None => route.mode.unwrap_or_default().as_str(),
            };
            md.insert("mode".into(), mode.into());
            if let Some(h) = &route.host {
                md.insert("host".into(), h.clone());
            }
            md.insert("target".into(), subject.into());
            match service.add_forwarding_endpoint(name, md) {
                Ok(s) => s,
                Err(e) => {
                    stats_err.get_or_insert(e);
                    Default::default()
                }
            }
        });
        if let Some(e) = stats_err {
            service.stop().await;
            return Err(e.into());
        }
        let mut metrics = metrics::Metrics::new();
        let limits = Arc::new(limits::Limits::new(&config, &mut metrics.registry));
        #[cfg(feature = "acme")]
        if let Some(a) = &acme {
            a.register(&mut metrics.registry);
        }
        let grpc = match grpc::GrpcGateway::bind(
            &config,
            grpc_tls,
            &client,
            &mut metrics.registry,
            limits.clone(),
        )
        .await
        {
            Ok(g) => g,
            Err(e) => {
                service.stop().await;
                return Err(e);
            }
        };
        if grpc.is_some() {
            let mut used = std::collections::HashSet::new();
            for r in &config.routes {
                let (Some(grpc), Some(target)) = (&r.grpc, &r.service) else {
                    continue;
                };
                let base: String = format!("grpc_{}", grpc.trim())
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let (mut name, mut n) = (base.clone(), 2);
                while !used.insert(name.clone()) {
                    name = format!("{base}-{n}");
                    n += 1;
                }
                let md = [
                    ("kind".to_string(), "grpc".to_string()),
                    ("grpc".to_string(), grpc.trim().to_string()),
                    ("target".to_string(), target.trim().to_string()),
                ]
                .into();
                if let Err(e) = service.add_forwarding_endpoint(name, md) {
                    service.stop().await;
                    return Err(e.into());
                }
            }
        }
        let jobs = config.has_async_routes().then(|| {
            Arc::new(jobs::Jobs::new(
                &client,
                config.jobs.clone(),
                jobs_auth,
                &mut metrics.registry,
            ))
        });
        let routes = routes::Sources::new(&config, &specs, jobs.is_some());
        let responders = responders::Responders::new(
            client.clone(),
            Duration::from_millis(config.wait_for_responder_ms),
        );
        let shared = Arc::new(Shared {
            responders,
            client,
            router: routes::Live::new(router::Router::new(specs)),
            metrics,
            max_body: config.max_body_bytes,
            limits,
            failover: failover::Failover::default(),
            jobs,
            mount: std::sync::OnceLock::new(),
        });
        Ok(Gateway {
            http,
            metrics: metrics_l,
            http_addr,
            metrics_addr,
            shared,
            service,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_sec),
            grpc,
            http_tls,
            routes,
            #[cfg(feature = "acme")]
            acme,
        })
    }

    /// Whether the routed HTTP listener speaks TLS (`http_tls_cert`/`http_tls_key` set).
    pub fn http_tls(&self) -> bool {
        self.http_tls.is_some()
    }

    /// The plain listener of ACME HTTP-01 challenges (`[gateway.acme] http_addr`).
    pub fn acme_http_addr(&self) -> Option<SocketAddr> {
        #[cfg(feature = "acme")]
        if let Some(a) = &self.acme {
            return a.http_addr();
        }
        None
    }

    /// Whether the gRPC listener speaks TLS (`grpc_tls_cert`/`grpc_tls_key` set).
    pub fn grpc_tls(&self) -> bool {
        self.grpc.as_ref().is_some_and(|g| g.tls())
    }

    /// The gRPC listener's address (`None` without gRPC routes or `grpc_addr`).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.addr())
    }

    /// The routed HTTP listener's address.
    /// Give the gateway the connection events of its client
    /// ([`narun_wire::connect::NatsSettings::connect_with_events`]): requests in flight
    /// when the connection is lost are then sent again or failed at once instead of
    /// waiting for their timeout (the rules: docs/gateway.md, "NATS failover").
    pub fn set_connection_events(&self, events: narun_wire::connect::ConnectionEvents) {
        self.shared.failover.set(events);
    }

    /// The node name job attempts are recorded with (narund gives its node id; default:
    /// the host name). Later calls are ignored.
    pub fn set_node_id(&self, node: &str) {
        if let Some(j) = &self.shared.jobs {
            j.set_node(node.to_owned());
        }
    }

    /// Answer the requests below `prefix` (a path starting and ending with `/`) on the
    /// routed listener with `handler` instead of the routes ([`mount`]). Later calls are
    /// ignored.
    pub fn set_mount(&self, prefix: &str, handler: Arc<dyn mount::Handler>) {
        let _ = self.shared.mount.set(mount::Mounted {
            prefix: prefix.to_owned(),
            handler,
        });
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The `/metrics`, `/healthz`, `/readyz` listener's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The gateway's ADR-32 service (id, stats).
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight
    /// requests finish (at most `shutdown_timeout_sec`), and unregister the service.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), GatewayError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = self.shared.limits.clone();
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits::H1_MAX_BUF);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .initial_connection_window_size(limits::H2_WINDOW)
            .initial_stream_window_size(limits::H2_WINDOW)
            .max_send_buf_size(limits::H2_MAX_SEND_BUF);
        let builder = Arc::new(builder);
        let grpc = self
            .grpc
            .map(|g| tokio::spawn(g.run(stop_rx.clone(), self.shutdown_timeout)));
        let workers = self
            .shared
            .jobs
            .clone()
            .map(|j| tokio::spawn(jobs::worker::run(self.shared.clone(), j, stop_rx.clone())));
        let routes = self.routes.active().then(|| {
            let id = self.service.id().to_owned();
            tokio::spawn(routes::watch::run(
                self.shared.clone(),
                self.routes,
                id,
                stop_rx.clone(),
            ))
        });
        #[cfg(feature = "acme")]
        let acme = self.acme.map(|a| tokio::spawn(a.run(stop_rx.clone())));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer, listener) = tokio::select! {
                _ = &mut shutdown => break,
                r = self.http.accept() => match r {
                    Ok((s, p)) => (s, p, Listener::Http),
                    Err(e) => { accept_error(&limits, Listener::Http, e).await; continue; }
                },
                r = self.metrics.accept() => match r {
                    Ok((s, p)) => (s, p, Listener::Admin),
                    Err(e) => { accept_error(&limits, Listener::Admin, e).await; continue; }
                },
                // Reap finished connection tasks so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            // Over the limit: close at once (dropping the stream), counted.
            let Some(permit) = limits.admit(listener, peer.ip()) else {
                continue;
            };
            let tls = match listener {
                Listener::Http => self.http_tls.clone(),
                _ => None,
            };
            conns.spawn(serve_tcp(
                builder.clone(),
                self.shared.clone(),
                stream,
                tls,
                peer,
                listener,
                permit,
                stop_rx.clone(),
            ));
        }
        drop(self.http);
        drop(self.metrics);
        tracing::info!(in_flight = conns.len(), "gateway shutting down");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = conns.len(),
                timeout = ?self.shutdown_timeout,
                "gateway shutdown timeout: closing remaining connections"
            );
            conns.shutdown().await;
        }
        if let Some(g) = grpc {
            let _ = g.await;
        }
        if let Some(r) = routes {
            r.abort();
        }
        if let Some(w) = workers {
            // Jobs in progress are left to JetStream (they come back after ack_wait_sec).
            w.abort();
        }
        #[cfg(feature = "acme")]
        if let Some(a) = acme {
            a.abort();
        }
        self.service.stop().await;
        Ok(())
    }
}

/// Out of file descriptors (`EMFILE`) and the like: count, and back off
/// instead of spinning (the failed connection stays in the backlog).
pub(crate) async fn accept_error(limits: &limits::Limits, listener: Listener, e: std::io::Error) {
    use rustix::io::Errno;
    limits.accept_error(listener);
    // Out of descriptors or memory: back off instead of spinning. Other errors are the
    // one connection's (ECONNABORTED, EPROTO, ...): go on accepting at once.
    if matches!(
        Errno::from_io_error(&e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    ) {
        tracing::warn!(error = %e, "accepting a connection failed; pausing accepts for 50 ms");
        tokio::time::sleep(Duration::from_millis(50)).await;
    } else {
        tracing::debug!(error = %e, "accepting a connection failed");
    }
}

/// Count a connection error that is a timeout of hyper's (the header read timeout).
pub(crate) fn count_conn_error(
    limits: &limits::Limits,
    listener: Listener,
    e: &(dyn std::error::Error + 'static),
) {
    if e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
    {
        limits.timed_out(listener, limits::Timeout::HeaderRead);
    }
}

/// A TCP connection: the TLS handshake first when the listener has TLS (in the
/// connection's task, bounded, so a slow client does not hold up the accept loop).
#[allow(clippy::too_many_arguments)]
async fn serve_tcp(
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
    listener: Listener,
    permit: limits::ConnPermit,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        let io = tls::MaybeTls::Plain(stream);
        return serve_connection(builder, shared, io, false, peer, listener, permit, stop).await;
    };
    let handshake = tokio::time::timeout(grpc::TLS_HANDSHAKE_TIMEOUT, tls.accept(stream));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed");
                return;
            }
            Err(_) => {
                shared.limits.timed_out(listener, limits::Timeout::HeaderRead);
                tracing::debug!(%peer, "HTTP TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    // A CA's TLS-ALPN-01 validation: the handshake was the whole answer (RFC 8737).
    #[cfg(feature = "acme")]
    if stream.get_ref().1.alpn_protocol() == Some(acme::ALPN_ACME_TLS) {
        return;
    }
    let io = tls::MaybeTls::Tls(Box::new(stream));
    serve_connection(builder, shared, io, true, peer, listener, permit, stop).await
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    stream: tls::MaybeTls,
    tls: bool,
    peer: SocketAddr,
    listener: Listener,
    _permit: limits::ConnPermit,
    mut stop: watch::Receiver<bool>,
) {
    let activity = limits::Activity::new();
    let limits = shared.limits.clone();
    let busy = activity.clone();
    let client = Arc::new(proxy::Peer::new(peer, tls));
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let client = client.clone();
        // In flight until the response body is written (or dropped); owed
        // until hyper polls this future (see `limits::Activity`).
        let busy = busy.busy();
        async move {
            busy.paid();
            use http_body_util::Either;
            let resp = if listener != Listener::Http {
                admin(&shared, &req).await.map(Either::Left)
            } else if let Some(m) = shared.mount.get().filter(|m| m.matches(req.uri().path())) {
                m.serve(req, client.addr()).await.map(Either::Right)
            } else {
                proxy::handle(shared, req, &client).await.map(Either::Left)
            };
            Ok::<_, Infallible>(resp.map(|body| limits::Holding::new(body, busy)))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                count_conn_error(&limits, listener, &*e);
                tracing::debug!(%peer, error = %e, "connection error");
            }
            return;
        }
        why = activity.expired(limits.keepalive_timeout) => {
            limits.timed_out(listener, why);
            tracing::debug!(%peer, ?why, "keep-alive or write-stall timeout: closing the connection");
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// `/metrics`, `/healthz`, `/readyz`, and the service-discovery document ([`discovery`]).
async fn admin<B>(shared: &Shared, req: &http::Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return proxy::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        discovery::PATH => match discovery::node_states(&shared.client).await {
            Ok(states) => {
                let mut r = Response::new(Full::new(Bytes::from(discovery::document(&states))));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => proxy::text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot read node-runner-states: {e}"),
            ),
        },
        "/healthz" => proxy::text(StatusCode::OK, "ok"),
        "/readyz" => {
            if shared.client.connection_state() == async_nats::connection::State::Connected {
                proxy::text(StatusCode::OK, "ready")
            } else {
                proxy::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: NATS is not connected",
                )
            }
        }
        _ => proxy::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}
