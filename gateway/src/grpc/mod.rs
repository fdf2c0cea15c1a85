//! The gRPC gateway: gRPC calls in (HTTP/2 cleartext, or TLS with ALPN `h2`
//! when `grpc_tls_cert`/`grpc_tls_key` are set), NATS requests out.
//!
//! No generated code: the gateway reads the gRPC framing itself, so any
//! service can be routed by configuration alone.
//!
//! ```text
//!  client ──h2c: POST /hello.v1.Greeter/SayHello──▶ gateway ──NATS request──▶ service "grpc-hello"
//!         ◀── data frames + trailers (grpc-status) ──        ◀── reply(ies) ──
//! ```
//!
//! * Routing: the path `/<pkg.Service>/<Method>`; the `pkg.Service` part picks
//!   the route (`grpc = "pkg.Service"`), whose `service` is the NATS subject.
//!   Unknown service → `UNIMPLEMENTED`.
//! * NATS request (Go narun compatible): the payload is the **raw protobuf
//!   request message** (the 5-byte gRPC frame is stripped), header
//!   `X-Original-Grpc-Method: /pkg.Service/Method`. On top of Go, the ASCII
//!   request metadata travels as NATS headers (HTTP/2 reserved and hop-by-hop
//!   headers excluded), and the request is bounded by the client deadline
//!   (`grpc-timeout`) capped by the route timeout; the remaining budget is
//!   forwarded as `grpc-timeout` and `Narun-Timeout-Ms`. The app's response
//!   metadata comes back as NATS headers of its first message (headers) and
//!   of its status message (trailers), protocol names filtered (`answer.rs`).
//! * Replies: a plain reply (Go consumers) is the raw response message, or an
//!   ADR-32 error mapped back to a gRPC status
//!   ([`narun_wire::grpc::status_from_service_error`]).
//!   The request also carries `Narun-Grpc-Stream: 1`: narun consumers then
//!   answer with any number of messages `Narun-Grpc-Seq: n` followed by one
//!   `Narun-Grpc-Status` message, which carries server streaming (see
//!   `docs/grpc.md`).
//! * Failures: timeout → `DEADLINE_EXCEEDED`, no responders or NATS down →
//!   `UNAVAILABLE` (immediately), other NATS errors → `INTERNAL`.
//! * `grpc.health.v1.Health` is answered by the gateway itself: `SERVING` for
//!   `""` and every routed service while NATS is connected, `NOT_SERVING`
//!   otherwise. No reflection.
//! * Metrics: `grpc_gateway_requests_total{grpc_method,grpc_code}` and
//!   `grpc_gateway_request_duration_seconds{grpc_method}`.
//!
//! # Files
//!
//! | file | what happens there |
//! |---|---|
//! | `mod.rs` | `GrpcGateway`: binding, the accept loop, TLS handshakes, serving HTTP/2 connections, the health service, shutdown |
//! | `call.rs` | one call: route, deadline, request headers → NATS headers, reading the request message, publishing |
//! | `answer.rs` | the answer: NATS replies → messages and a status (read by `narun_wire::grpc::ReplyReader`, shared with the app library's channel), the response body, forwarding streams |
//! | `inbox.rs` | the one reply subscription shared by every call |
//! | `status.rs` | gRPC status code names, status-only answers (codes and the ADR-32 mapping: `narun_wire::grpc`) |
//! | `metrics.rs` | the request counter and duration histogram, bounded method labels |

mod answer;
mod call;
mod inbox;
mod metrics;
mod status;

use crate::GatewayError;
use crate::config::GatewayConfig;
use crate::limits::{self, Limits, Listener};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::ServiceExt;

use call::call;
use inbox::{AbortOnDrop, Inbox};
use metrics::GrpcMetrics;

pub use narun_wire::grpc::STREAM_HEADER;
pub use narun_wire::grpc::parse_grpc_timeout;
pub use status::code;

/// Largest accepted request message (grpc-go's default receive limit); also
/// capped by the NATS server's `max_payload`.
pub const MAX_REQUEST_MESSAGE: usize = 4 * 1024 * 1024;

struct GrpcRoute {
    subject: async_nats::Subject,
    timeout: Duration,
}

struct State {
    client: async_nats::Client,
    routes: HashMap<String, GrpcRoute>,
    metrics: GrpcMetrics,
    inbox: Arc<Inbox>,
    limits: Arc<Limits>,
}

type GrpcResponse = Response<tonic::body::Body>;

/// The bound gRPC listener; run by [`crate::Gateway::run`].
pub(crate) struct GrpcGateway {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<State>,
    health: HealthServer<HealthService>,
    reporter: HealthReporter,
    services: Vec<String>,
    dispatcher: AbortOnDrop,
    /// TLS acceptor when TLS is configured; cleartext h2c otherwise.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Bound on a client's TLS handshake, so idle half-open connections do not
/// pile up.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl GrpcGateway {
    /// Bind `grpc_addr` when the config has gRPC routes (else `None`) and
    /// register the gRPC metrics in `registry`.
    pub(crate) async fn bind(
        config: &GatewayConfig,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        client: &async_nats::Client,
        registry: &mut Registry,
        limits: Arc<Limits>,
    ) -> Result<Option<GrpcGateway>, GatewayError> {
        let mut routes = HashMap::new();
        for r in &config.routes {
            let (Some(grpc), Some(service)) = (&r.grpc, &r.service) else {
                continue;
            };
            routes.insert(
                grpc.trim().to_owned(),
                GrpcRoute {
                    subject: async_nats::Subject::from(service.trim()),
                    timeout: r.timeout(config.request_timeout_sec),
                },
            );
        }
        let Some(addr) = config.grpc_addr.as_deref().filter(|_| !routes.is_empty()) else {
            return Ok(None);
        };
        let (listener, addr) = crate::bind("the gRPC gateway", addr).await?;
        let reporter = HealthReporter::new();
        let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let services = routes.keys().cloned().collect();
        let inbox = Arc::new(Inbox {
            prefix: client.new_inbox(),
            calls: Default::default(),
            next: Default::default(),
            limits: limits.clone(),
        });
        // While NATS is still connecting, the SUB is sent on connect.
        let subject = format!("{}.*", inbox.prefix);
        let sub = client.subscribe(subject.clone()).await.map_err(|source| {
            GatewayError::Micro(narun_wire::micro::MicroError::Subscribe { subject, source })
        })?;
        let dispatcher = AbortOnDrop(tokio::spawn(inbox.clone().dispatch(sub)));
        Ok(Some(GrpcGateway {
            listener,
            addr,
            state: Arc::new(State {
                client: client.clone(),
                routes,
                metrics: GrpcMetrics::new(registry),
                inbox,
                limits,
            }),
            health,
            reporter,
            services,
            dispatcher,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        }))
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serve until `stop` turns true, then let calls in flight finish (at most
    /// `shutdown_timeout`).
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>, shutdown_timeout: Duration) {
        let health_task = tokio::spawn(track_health(
            self.state.client.clone(),
            self.reporter.clone(),
            self.services.clone(),
            stop.clone(),
        ));
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.state.limits.h2_max_concurrent_streams)
            .initial_connection_window_size(limits::H2_WINDOW)
            .initial_stream_window_size(limits::H2_WINDOW)
            .max_send_buf_size(limits::H2_MAX_SEND_BUF);
        let builder = Arc::new(builder);
        let limits = self.state.limits.clone();
        let mut conns = JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stopped(&mut stop) => break,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        crate::accept_error(&limits, Listener::Grpc, e).await;
                        continue;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            // Over the limit: close at once (dropping the stream), counted.
            let Some(permit) = limits.admit(Listener::Grpc, peer.ip()) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let health = self.health.clone();
            let builder = builder.clone();
            let mut stop = stop.clone();
            let tls = self.tls.clone();
            conns.spawn(async move {
                let _permit = permit;
                let limits = state.limits.clone();
                let activity = limits::Activity::new();
                let busy = activity.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    let health = health.clone();
                    // In flight until the response body (a stream, maybe) is done;
                    // owed until hyper polls (see `limits::Activity`).
                    let busy = busy.busy();
                    async move {
                        busy.paid();
                        let health_check = req.uri().path().starts_with("/grpc.health.v1.Health/");
                        let resp = if health_check {
                            health.oneshot(req).await?
                        } else {
                            call(state, req).await
                        };
                        Ok::<_, Infallible>(
                            resp.map(|body| {
                                tonic::body::Body::new(limits::Holding::new(body, busy))
                            }),
                        )
                    }
                });
                let Some(tls) = tls else {
                    return serve_h2(&builder, stream, svc, peer, &limits, &activity, &mut stop)
                        .await;
                };
                // The handshake runs in the connection's task, so a slow client
                // does not hold up the accept loop; a stop ends it too.
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream));
                let stream = tokio::select! {
                    r = handshake => match r {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "gRPC TLS handshake timed out");
                            return;
                        }
                    },
                    _ = stopped(&mut stop) => return,
                };
                serve_h2(&builder, stream, svc, peer, &limits, &activity, &mut stop).await
            });
        }
        drop(self.listener);
        if tokio::time::timeout(shutdown_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                remaining = conns.len(),
                "gRPC shutdown timeout: closing remaining connections"
            );
            conns.shutdown().await;
        }
        health_task.abort();
        drop(self.dispatcher);
    }
}

/// Serve one HTTP/2 connection (cleartext or TLS) until it closes, or until
/// `stop`, then shut it down gracefully (GOAWAY; calls in flight finish).
async fn serve_h2<IO, S, B>(
    builder: &hyper::server::conn::http2::Builder<TokioExecutor>,
    io: IO,
    svc: S,
    peer: SocketAddr,
    limits: &Limits,
    activity: &limits::Activity,
    stop: &mut watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                crate::count_conn_error(limits, Listener::Grpc, &e);
                tracing::debug!(%peer, error = %e, "gRPC connection error");
            }
            return;
        }
        why = activity.expired(limits.keepalive_timeout) => {
            limits.timed_out(Listener::Grpc, why);
            tracing::debug!(%peer, ?why, "keep-alive or write-stall timeout: closing the gRPC connection");
            return;
        }
        _ = stopped(stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keep the health service in line with the NATS connection.
async fn track_health(
    client: async_nats::Client,
    reporter: HealthReporter,
    services: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let up = client.connection_state() == async_nats::connection::State::Connected;
        if last != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            for s in &services {
                reporter.set_service_status(s, status).await;
            }
            last = Some(up);
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
    }
}
