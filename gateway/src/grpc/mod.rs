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
//!   forwarded as `grpc-timeout`.
//! * Replies: a plain reply (Go consumers) is the raw response message, or an
//!   ADR-32 error mapped back to a gRPC status ([`status_from_service_error`]).
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

use crate::GatewayError;
use crate::config::GatewayConfig;
use crate::metrics::Label;
use async_nats::StatusCode as NatsStatus;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use narun_wire::names::{GRPC_METHOD_HEADER, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::ServiceExt;

use narun_wire::grpc::header;
pub use narun_wire::grpc::{MESSAGE_HEADER, SEQ_HEADER, STATUS_HEADER, STREAM_HEADER};

/// Largest accepted request message (grpc-go's default receive limit); also
/// capped by the NATS server's `max_payload`.
pub const MAX_REQUEST_MESSAGE: usize = 4 * 1024 * 1024;

/// Distinct `grpc_method` label values before further methods count as `other`.
const MAX_METHOD_LABELS: usize = 512;

/// gRPC status codes.
#[allow(dead_code)]
pub mod code {
    pub const OK: u16 = 0;
    pub const CANCELLED: u16 = 1;
    pub const UNKNOWN: u16 = 2;
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const NOT_FOUND: u16 = 5;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const DATA_LOSS: u16 = 15;
    pub const UNAUTHENTICATED: u16 = 16;
}

/// Canonical name of a gRPC code (the `grpc_code` label).
fn code_name(c: u16) -> &'static str {
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
    .get(usize::from(c))
    .copied()
    .unwrap_or("UNKNOWN")
}

/// Map an ADR-32 error code (`Nats-Service-Error-Code`) to a gRPC status code.
///
/// narun consumers send the decimal gRPC code (`"3"`); the consumer adapters
/// themselves use HTTP-like codes (`400` missing method header, `500`, `501`
/// unknown method), mapped to their gRPC meaning. Anything else is `UNKNOWN`.
pub fn status_from_service_error(code: &str) -> u16 {
    match code.trim().parse::<u16>() {
        Ok(c @ 1..=16) => c,
        Ok(400) => code::INVALID_ARGUMENT,
        Ok(401) => code::UNAUTHENTICATED,
        Ok(403) => code::PERMISSION_DENIED,
        Ok(404) => code::NOT_FOUND,
        Ok(429) => code::RESOURCE_EXHAUSTED,
        Ok(500) => code::INTERNAL,
        Ok(501) => code::UNIMPLEMENTED,
        Ok(503) => code::UNAVAILABLE,
        Ok(504) => code::DEADLINE_EXCEEDED,
        _ => code::UNKNOWN,
    }
}

pub use narun_wire::grpc::parse_grpc_timeout;
use narun_wire::grpc::{percent_decode, percent_encode};

/// Request headers that are not call metadata: HTTP/2 connection-level and
/// gRPC protocol headers, and names the NATS transport uses itself.
fn is_reserved(name: &str) -> bool {
    name.starts_with("grpc-")
        || narun_wire::grpc::is_transport_header(name)
        || matches!(name, "proxy-connection" | "user-agent")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    grpc_method: Label,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    grpc_method: Label,
}

struct GrpcMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// Method labels handed out so far (bounded by [`MAX_METHOD_LABELS`]).
    methods: RwLock<HashSet<Arc<str>>>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl GrpcMetrics {
    fn new(registry: &mut Registry) -> GrpcMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "grpc_gateway_requests",
            "gRPC calls handled by the gateway, by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_gateway_request_duration_seconds",
            "Time to answer gRPC calls (until the last message for streams), by method",
            durations.clone(),
        );
        GrpcMetrics {
            requests,
            durations,
            methods: RwLock::new(HashSet::new()),
        }
    }

    /// The bounded label for `method` (`None` = unrouted).
    fn label(&self, method: Option<&str>) -> Label {
        let Some(m) = method else {
            return Label(Arc::from("unmatched"));
        };
        if let Some(l) = self.methods.read().expect("lock").get(m) {
            return Label(l.clone());
        }
        let mut set = self.methods.write().expect("lock");
        if set.len() >= MAX_METHOD_LABELS {
            return Label(Arc::from("other"));
        }
        let l: Arc<str> = Arc::from(m);
        set.insert(l.clone());
        Label(l)
    }

    fn record(&self, method: &Label, code: u16, took: Duration) {
        self.durations
            .get_or_create(&DurationLabels {
                grpc_method: method.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                grpc_method: method.clone(),
                grpc_code: code_name(code),
            })
            .inc();
    }
}

struct GrpcRoute {
    subject: async_nats::Subject,
    timeout: Duration,
}

struct State {
    client: async_nats::Client,
    routes: HashMap<String, GrpcRoute>,
    metrics: GrpcMetrics,
    inbox: Arc<Inbox>,
}

/// Messages a call may buffer before it counts as lost ([`code::DATA_LOSS`]).
const CALL_BUFFER: usize = 4096;

/// One wildcard subscription `<prefix>.*` for the replies of every call, so a
/// call costs no `SUB`/`UNSUB` (like async-nats request-reply's muxed inbox,
/// but a call may receive many messages).
struct Inbox {
    prefix: String,
    calls: std::sync::Mutex<HashMap<u64, mpsc::Sender<async_nats::Message>>>,
    next: std::sync::atomic::AtomicU64,
}

/// A call's reply subject and receiver; unregisters on drop.
struct CallInbox {
    inbox: Arc<Inbox>,
    id: u64,
    subject: String,
    rx: mpsc::Receiver<async_nats::Message>,
}

impl Inbox {
    fn register(self: &Arc<Self>) -> CallInbox {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CALL_BUFFER);
        self.calls.lock().expect("lock").insert(id, tx);
        CallInbox {
            inbox: self.clone(),
            id,
            subject: format!("{}.{id}", self.prefix),
            rx,
        }
    }

    /// Route replies to their call until the subscription ends.
    async fn dispatch(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some(id) = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let tx = self.calls.lock().expect("lock").get(&id).cloned();
            // A full buffer drops the message: the call sees a sequence gap.
            if let Some(tx) = tx {
                let _ = tx.try_send(msg);
            }
        }
    }
}

impl Drop for CallInbox {
    fn drop(&mut self) {
        self.inbox.calls.lock().expect("lock").remove(&self.id);
    }
}

/// Aborts the inbox dispatcher when the gateway goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl GrpcGateway {
    /// Bind `grpc_addr` when the config has gRPC routes (else `None`) and
    /// register the gRPC metrics in `registry`.
    pub(crate) async fn bind(
        config: &GatewayConfig,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        client: &async_nats::Client,
        registry: &mut Registry,
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
        builder.timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let mut conns = JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stopped(&mut stop) => break,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a gRPC connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let health = self.health.clone();
            let builder = builder.clone();
            let mut stop = stop.clone();
            let tls = self.tls.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    let health = health.clone();
                    async move {
                        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                            return health.oneshot(req).await;
                        }
                        Ok::<_, Infallible>(call(state, req).await)
                    }
                });
                let Some(tls) = tls else {
                    return serve_h2(&builder, stream, svc, peer, &mut stop).await;
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
                serve_h2(&builder, stream, svc, peer, &mut stop).await
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
                tracing::debug!(%peer, error = %e, "gRPC connection error");
            }
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

type GrpcResponse = Response<tonic::body::Body>;

/// A gRPC status answer without messages ("trailers-only").
fn trailers_only(code: u16, message: &str) -> GrpcResponse {
    let mut r = Response::new(tonic::body::Body::empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    put_status(h, code, message);
    r
}

fn put_status(h: &mut HeaderMap, code: u16, message: &str) {
    h.insert(header::STATUS, HeaderValue::from(code));
    if !message.is_empty()
        && let Ok(v) = HeaderValue::from_str(&percent_encode(message))
    {
        h.insert(header::MESSAGE, v);
    }
}

fn grpc_frame(m: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + m.len());
    b.put_u8(0);
    b.put_u32(m.len() as u32);
    b.put_slice(m);
    b.freeze()
}

/// Response body: frames known up front, then (for streams) a channel fed by a task.
struct GrpcBody {
    ready: VecDeque<Frame<Bytes>>,
    rest: Option<mpsc::Receiver<Frame<Bytes>>>,
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(f) = self.ready.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match self.rest.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|f| f.map(Ok)),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.is_none()
    }
}

/// One event of a NATS answer.
enum Event {
    Message(Bytes),
    End(u16, String),
}

/// Reads the answer of one call from its reply inbox.
struct Answer {
    sub: CallInbox,
    deadline: tokio::time::Instant,
    next_seq: u64,
    /// A Go-style single reply gives its message and status at once.
    pending_end: Option<(u16, String)>,
}

impl Answer {
    async fn next(&mut self) -> Event {
        if let Some((c, m)) = self.pending_end.take() {
            return Event::End(c, m);
        }
        let msg = match tokio::time::timeout_at(self.deadline, self.sub.rx.recv()).await {
            Err(_) => {
                return Event::End(
                    code::DEADLINE_EXCEEDED,
                    "request timed out waiting for backend processor".into(),
                );
            }
            Ok(None) => {
                return Event::End(
                    code::UNAVAILABLE,
                    "NATS subscription for the reply ended (connection lost?)".into(),
                );
            }
            Ok(Some(m)) => m,
        };
        if msg.status == Some(NatsStatus::NO_RESPONDERS) {
            return Event::End(
                code::UNAVAILABLE,
                "no backend processors available for the request".into(),
            );
        }
        let headers = msg.headers.as_ref();
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        if let Some(status) = get(STATUS_HEADER) {
            let code = status.trim().parse().unwrap_or(code::UNKNOWN);
            let message = get(MESSAGE_HEADER)
                .map(percent_decode)
                .or_else(|| get(SERVICE_ERROR_HEADER).map(str::to_owned))
                .unwrap_or_default();
            return Event::End(code, message);
        }
        if let Some(seq) = get(SEQ_HEADER) {
            let seq: u64 = seq.trim().parse().unwrap_or(u64::MAX);
            if seq != self.next_seq {
                return Event::End(
                    code::DATA_LOSS,
                    format!(
                        "response stream lost messages over NATS (expected #{}, got #{seq})",
                        self.next_seq
                    ),
                );
            }
            self.next_seq += 1;
            return Event::Message(msg.payload);
        }
        // A single reply, as Go consumers send it.
        if let Some(c) = get(SERVICE_ERROR_CODE_HEADER) {
            let message = get(SERVICE_ERROR_HEADER).unwrap_or_default().to_owned();
            return Event::End(status_from_service_error(c), message);
        }
        self.pending_end = Some((code::OK, String::new()));
        Event::Message(msg.payload)
    }
}

/// Handle one gRPC call.
async fn call(state: Arc<State>, req: Request<Incoming>) -> GrpcResponse {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let Some((service, _method)) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
    else {
        let label = state.metrics.label(None);
        state
            .metrics
            .record(&label, code::INVALID_ARGUMENT, started.elapsed());
        return trailers_only(
            code::INVALID_ARGUMENT,
            &format!("invalid method name format: {path}"),
        );
    };
    let Some(route) = state.routes.get(service) else {
        let label = state.metrics.label(None);
        state
            .metrics
            .record(&label, code::UNIMPLEMENTED, started.elapsed());
        return trailers_only(
            code::UNIMPLEMENTED,
            &format!("service {service} not implemented or routed"),
        );
    };
    let label = state.metrics.label(Some(&path));
    let finish = |code: u16, message: &str| {
        state.metrics.record(&label, code, started.elapsed());
        trailers_only(code, message)
    };
    if let Some(enc) = req.headers().get(header::ENCODING)
        && enc.as_bytes() != b"identity"
    {
        let mut r = finish(
            code::UNIMPLEMENTED,
            "compressed requests are not supported by the narun gateway (use identity)",
        );
        r.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        return r;
    }
    let mut budget = route.timeout;
    if let Some(t) = req
        .headers()
        .get(header::TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        budget = budget.min(t);
    }
    let deadline = tokio::time::Instant::now() + budget;

    // NATS headers: method, stream framing, deadline, metadata.
    let mut nh = async_nats::HeaderMap::new();
    nh.insert(GRPC_METHOD_HEADER, path.as_str());
    nh.insert(STREAM_HEADER, "1");
    nh.insert(
        header::TIMEOUT,
        format!("{}m", budget.as_millis().clamp(1, 99_999_999)).as_str(),
    );
    for (name, value) in req.headers() {
        if is_reserved(name.as_str()) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            async_nats::HeaderName::from_str(name.as_str()),
            value
                .to_str()
                .map_err(|_| ())
                .and_then(|v| async_nats::HeaderValue::from_str(v).map_err(|_| ())),
        ) else {
            continue;
        };
        nh.append(n, v);
    }

    // The request message.
    let max_payload = state.client.server_info().max_payload;
    let limit = if max_payload > 0 {
        MAX_REQUEST_MESSAGE.min(max_payload) + 5
    } else {
        MAX_REQUEST_MESSAGE + 5
    };
    let body =
        match tokio::time::timeout_at(deadline, Limited::new(req.into_body(), limit).collect())
            .await
        {
            Err(_) => {
                return finish(
                    code::DEADLINE_EXCEEDED,
                    "deadline exceeded reading the request",
                );
            }
            Ok(Err(e)) => {
                return if e.is::<http_body_util::LengthLimitError>() {
                    finish(
                        code::RESOURCE_EXHAUSTED,
                        &format!("request message larger than {} bytes", limit - 5),
                    )
                } else {
                    finish(code::CANCELLED, &format!("reading the request failed: {e}"))
                };
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
    let payload = match single_message(body) {
        Ok(p) => p,
        Err((c, m)) => return finish(c, m),
    };

    if state.client.connection_state() != async_nats::connection::State::Connected {
        return finish(code::UNAVAILABLE, "NATS is not connected");
    }
    let sub = state.inbox.register();
    if let Err(e) = state
        .client
        .publish_with_reply_and_headers(route.subject.clone(), sub.subject.clone(), nh, payload)
        .await
    {
        tracing::warn!(subject = %route.subject, error = %e, "NATS publish failed");
        return finish(code::INTERNAL, "internal server error (NATS communication)");
    }
    let mut answer = Answer {
        sub,
        deadline,
        next_seq: 0,
        pending_end: None,
    };

    // Wait for up to two events: most calls (unary) are complete by then and
    // are answered without a forwarding task.
    let mut ready = VecDeque::new();
    loop {
        match answer.next().await {
            Event::End(c, m) => {
                if ready.is_empty() {
                    return finish(c, &m);
                }
                let mut t = HeaderMap::new();
                put_status(&mut t, c, &m);
                ready.push_back(Frame::trailers(t));
                state.metrics.record(&label, c, started.elapsed());
                return data_response(GrpcBody { ready, rest: None });
            }
            Event::Message(m) => {
                ready.push_back(Frame::data(grpc_frame(&m)));
                if ready.len() >= 2 {
                    break;
                }
            }
        }
    }
    // A stream: forward the rest as it arrives.
    let (tx, rx) = mpsc::channel(16);
    let state2 = state.clone();
    tokio::spawn(async move {
        let (c, m) = loop {
            match answer.next().await {
                Event::Message(m) => {
                    if tx.send(Frame::data(grpc_frame(&m))).await.is_err() {
                        // Client went away; dropping the call inbox unregisters it.
                        break (code::CANCELLED, String::new());
                    }
                }
                Event::End(c, m) => break (c, m),
            }
        };
        let mut t = HeaderMap::new();
        put_status(&mut t, c, &m);
        let _ = tx.send(Frame::trailers(t)).await;
        state2.metrics.record(&label, c, started.elapsed());
    });
    data_response(GrpcBody {
        ready,
        rest: Some(rx),
    })
}

fn data_response(body: GrpcBody) -> GrpcResponse {
    let mut r = Response::new(tonic::body::Body::new(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// The one request message of a unary or server-streaming call, unframed.
fn single_message(mut body: Bytes) -> Result<Bytes, (u16, &'static str)> {
    if body.len() < 5 {
        return Err((code::INTERNAL, "the call carried no request message"));
    }
    if body[0] != 0 {
        return Err((
            code::UNIMPLEMENTED,
            "compressed messages are not supported by the narun gateway",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.advance(5);
    if body.len() < len {
        return Err((code::INTERNAL, "truncated gRPC request message"));
    }
    if body.len() > len {
        return Err((
            code::UNIMPLEMENTED,
            "client streaming is not supported by the narun gateway (one request message per call)",
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_error_codes() {
        assert_eq!(status_from_service_error("3"), code::INVALID_ARGUMENT);
        assert_eq!(status_from_service_error("16"), code::UNAUTHENTICATED);
        assert_eq!(status_from_service_error("400"), code::INVALID_ARGUMENT);
        assert_eq!(status_from_service_error("404"), code::NOT_FOUND);
        assert_eq!(status_from_service_error("500"), code::INTERNAL);
        assert_eq!(status_from_service_error("501"), code::UNIMPLEMENTED);
        assert_eq!(status_from_service_error("503"), code::UNAVAILABLE);
        assert_eq!(status_from_service_error("0"), code::UNKNOWN);
        assert_eq!(status_from_service_error("17"), code::UNKNOWN);
        assert_eq!(status_from_service_error("teapot"), code::UNKNOWN);
    }

    #[test]
    fn framing_and_timeouts() {
        assert_eq!(
            single_message(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])).unwrap(),
            Bytes::from_static(&[8, 1])
        );
        assert_eq!(
            single_message(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap(),
            Bytes::new()
        );
        assert_eq!(single_message(Bytes::new()).unwrap_err().0, code::INTERNAL);
        assert_eq!(
            single_message(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
                .unwrap_err()
                .0,
            code::UNIMPLEMENTED
        );
        assert_eq!(
            single_message(Bytes::from_static(&[1, 0, 0, 0, 0]))
                .unwrap_err()
                .0,
            code::UNIMPLEMENTED
        );
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(percent_decode(&percent_encode("é 100%")), "é 100%");
        assert_eq!(code_name(4), "DEADLINE_EXCEEDED");
        assert!(is_reserved("grpc-timeout") && is_reserved("te") && !is_reserved("x-echo"));
    }
}
