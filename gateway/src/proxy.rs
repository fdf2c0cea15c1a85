//! The request path: one HTTP request in, one NATS request out, one HTTP response back.
//!
//! Kept lean on purpose (it is benchmarked against raw NATS request-reply): the
//! route table, header names and label values are built once; per request we
//! only parse, copy the body once into the NATS payload and map the answer.

use crate::Shared;
use crate::config::RouteMode;
use crate::limits::{BodyError, Listener};
use crate::metrics::{NatsStatus, method_index};
use crate::router::{Match, Target};
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Full;
use narun_wire::bhttp;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static AUTH_USER: HeaderName = HeaderName::from_static("narun-auth-user");
static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");

mod nats_names {
    use async_nats::HeaderName;
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("X-Request-Id");
    pub const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("X-Original-Method");
    pub const ORIGINAL_PATH: HeaderName = HeaderName::from_static("X-Original-Path");
    pub const ORIGINAL_QUERY: HeaderName = HeaderName::from_static("X-Original-Query");
    pub const ORIGINAL_HOST: HeaderName = HeaderName::from_static("X-Original-Host");
    pub const ORIGINAL_REMOTE_ADDR: HeaderName = HeaderName::from_static("X-Original-RemoteAddr");
}

/// Legacy (pre-BHTTP) narun reply header carrying the HTTP status; honoured on raw routes.
const RESPONSE_STATUS_HEADER: &str = "X-Response-Status-Code";

/// Room left in a NATS message for everything but the body: BHTTP control data,
/// framing, NATS headers. The request's own header bytes are added per request.
const HEAD_ROOM: usize = 1024;

/// A failure the gateway answers itself (short plain-text body).
pub(crate) struct GwError {
    pub(crate) status: StatusCode,
    pub(crate) msg: Cow<'static, str>,
}

impl GwError {
    pub(crate) fn new(status: StatusCode, msg: impl Into<Cow<'static, str>>) -> GwError {
        GwError {
            status,
            msg: msg.into(),
        }
    }
}

/// A short plain-text answer, like Go's `http.Error`.
pub(crate) fn text(status: StatusCode, msg: &str) -> Resp {
    let mut body = String::with_capacity(msg.len() + 1);
    body.push_str(msg);
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        X_CONTENT_TYPE_OPTIONS.clone(),
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// An `X-Request-Id` we pass on as is: 1–128 characters of `[A-Za-z0-9._:~+/=-]`.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._:~+/=-".contains(c))
}

pub(crate) fn request_id(req: &Request<hyper::body::Incoming>) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => HeaderValue::from_str(nuid::next().as_str()).expect("nuid is ASCII"),
    }
}

/// A connection's client, as the request path writes it: built once per
/// connection, not per request.
pub(crate) struct Peer {
    /// The client's IP, the gateway's `X-Forwarded-For` element.
    ip: HeaderValue,
    /// `ip:port` (raw routes' `X-Original-RemoteAddr`).
    pub(crate) addr_text: String,
    /// The address itself (rate limits key on it, never on a header).
    addr: SocketAddr,
    /// `http`, or `https` on the TLS listener (`X-Forwarded-Proto`).
    proto: &'static str,
}

impl Peer {
    /// The client's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn new(addr: SocketAddr, tls: bool) -> Peer {
        Peer {
            ip: HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is ASCII"),
            addr_text: addr.to_string(),
            addr,
            proto: if tls { "https" } else { "http" },
        }
    }
}

/// Handle one request on the routed listener.
pub(crate) async fn handle(
    state: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
    peer: &Peer,
) -> Resp {
    let start = Instant::now();
    let method = method_index(req.method());
    let rid = request_id(&req);
    if let Some(jobs) = &state.jobs
        && crate::jobs::api::is_api_path(req.uri().path())
    {
        let mut resp = crate::jobs::api::handle(&state, jobs, &req).await;
        resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
        state
            .metrics
            .http(method, None, None, resp.status().as_u16(), start.elapsed());
        return resp;
    }
    // A CORS preflight is routed by the method it asks for, and answered by the gateway
    // when that route has `cors` (crate::cors); otherwise it is an ordinary OPTIONS.
    let mut preflight = crate::cors::Cors::preflight_method(req.method(), req.headers());
    // Virtual hosts: HTTP/1.1 `Host`, HTTP/2 `:authority`.
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    };
    let router = state.router.load();
    let routed = match &preflight {
        Some(want) => {
            let r = router.find_on(want, host, req.uri().path());
            if matches!(&r.m, Match::Found(t) if t.cors.is_some()) {
                r
            } else {
                preflight = None;
                router.find_on(req.method(), host, req.uri().path())
            }
        }
        None => router.find_on(req.method(), host, req.uri().path()),
    };
    // The normalised path, when it differs from the request's (owned: `req` moves on).
    let normalised = match &routed.path {
        std::borrow::Cow::Owned(p) => Some(p.clone()),
        std::borrow::Cow::Borrowed(_) => None,
    };
    let mut found = None;
    let (route, mut resp) = match routed.m {
        Match::BadPath(e) => (None, text(StatusCode::BAD_REQUEST, e.message())),
        Match::NotFound => (None, text(StatusCode::NOT_FOUND, "404 page not found")),
        Match::MethodNotAllowed(pr) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            r.headers_mut().insert(header::ALLOW, pr.allow().clone());
            (Some(pr.path.clone()), r)
        }
        Match::Found(target) => {
            let target = target.clone();
            found = Some(target.clone());
            let begun = Instant::now();
            let mut req = req;
            // Only the gateway says who the client is (crate::auth).
            req.headers_mut().remove(&AUTH_USER);
            let origin = match &target.cors {
                Some(_) => req.headers().get(header::ORIGIN).cloned(),
                None => None,
            };
            // Rate limit first (a password guess costs a token), then the preflight
            // answer, then authorization; all before the body is read.
            let mut denied = match &target.rate {
                Some(limiter) => limiter.check(peer.addr.ip()).err().map(|secs| {
                    state.metrics.rate_limited(&target.path);
                    let mut r = text(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too Many Requests: this client is over the route's rate limit",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    r
                }),
                None => None,
            };
            if denied.is_none()
                && let (Some(want), Some(cors)) = (&preflight, &target.cors)
            {
                denied = Some(match cors.preflight(req.headers(), want) {
                    crate::cors::Preflight::Allowed(h) => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        *r.headers_mut() = h;
                        r
                    }
                    crate::cors::Preflight::Refused => {
                        text(StatusCode::FORBIDDEN, "CORS preflight refused")
                    }
                });
            }
            if denied.is_none()
                && let Some(policy) = &target.auth
            {
                denied = authorize(&state, &target, policy, &mut req).await;
            }
            let mut resp = if let Some(r) = denied {
                if r.status().is_success() {
                    target.stats.record(begun.elapsed(), None);
                } else {
                    let why = r.status().canonical_reason().unwrap_or("refused");
                    target
                        .stats
                        .record(begun.elapsed(), Some((r.status().as_str(), why)));
                }
                r
            } else {
                let as_job = match (&state.jobs, target.jobs.as_ref()) {
                    (Some(_), Some(j)) => crate::jobs::wanted(j.mode, req.headers()),
                    _ => None,
                };
                let answer = match (as_job, &state.jobs) {
                    (Some(prefer), Some(jobs)) => {
                        crate::jobs::enqueue(
                            &state, jobs, &target, req, normalised, peer, &rid, prefer,
                        )
                        .await
                    }
                    _ => forward(&state, &target, req, normalised, peer, &rid).await,
                };
                match answer {
                    Ok(r) => {
                        target.stats.record(begun.elapsed(), None);
                        r
                    }
                    Err(e) => {
                        target
                            .stats
                            .record(begun.elapsed(), Some((e.status.as_str(), &e.msg)));
                        limit_headers(text(e.status, &e.msg))
                    }
                }
            };
            if let Some(cors) = &target.cors
                && preflight.is_none()
            {
                cors.decorate(origin.as_ref(), resp.headers_mut());
            }
            (Some(target.path.clone()), resp)
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
    state.metrics.http(
        method,
        route.as_ref(),
        found.as_ref().map(|t| &t.metrics),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

/// Apply the route's `auth` ([`crate::auth`]): `Some(answer)` when the request is
/// refused; otherwise the credential is removed (unless `forward_auth`) and the identity
/// set in `Narun-Auth-User`.
async fn authorize(
    state: &Shared,
    target: &Target,
    policy: &crate::auth::Policy,
    req: &mut Request<hyper::body::Incoming>,
) -> Option<Resp> {
    match policy.check(req.headers()).await {
        crate::auth::Outcome::Allowed(user) => {
            let h = req.headers_mut();
            if !policy.forward_auth {
                h.remove(header::AUTHORIZATION);
            }
            if let Some(u) = user {
                h.insert(AUTH_USER.clone(), u);
            }
            None
        }
        crate::auth::Outcome::Denied(d) => {
            state.metrics.auth_failure(&target.path, d.reason);
            let mut r = text(d.status, d.message);
            for c in d.challenges {
                r.headers_mut().append(header::WWW_AUTHENTICATE, c);
            }
            Some(r)
        }
    }
}

/// What a refusal for lack of resources (503) tells the client: retry in a
/// second. A 408 (body too slow) closes the connection: the rest of the body
/// may still be on its way.
pub(crate) fn limit_headers(mut r: Resp) -> Resp {
    match r.status() {
        StatusCode::SERVICE_UNAVAILABLE => {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::REQUEST_TIMEOUT => {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    r
}

fn overloaded(what: &str) -> GwError {
    GwError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Gateway overloaded (no {what} left); retry later"),
    )
}

/// Bytes of the request head as it will travel inside the NATS message.
fn head_size(parts: &http::request::Parts) -> usize {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    HEAD_ROOM + parts.uri.path_and_query().map_or(1, |p| p.as_str().len()) + fields
}

async fn forward(
    state: &Shared,
    target: &Target,
    req: Request<hyper::body::Incoming>,
    normalised: Option<String>,
    peer: &Peer,
    rid: &HeaderValue,
) -> Result<Resp, GwError> {
    if target.upstream.is_none()
        && state.client.connection_state() != async_nats::connection::State::Connected
        && !crate::failover::reconnected_in_time(&state.failover, req.method()).await
    {
        return Err(GwError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "No backend service available (gateway is not connected to NATS)",
        ));
    }
    let reserve = target.upstream.is_none().then_some(0);
    let (parts, body, _lease) = read_request(state, req, normalised, peer, rid, reserve).await?;
    #[cfg(feature = "otlp")]
    let mut span = parts
        .extensions
        .get::<narun_wire::trace::TraceContext>()
        .and_then(|c| {
            crate::trace::Exported::start(c, format!("{} {}", parts.method, target.path))
        });
    let answer = call(state, target, &parts, body, &peer.addr_text, rid).await;
    #[cfg(feature = "otlp")]
    if let (Some(s), Err(e)) = (&mut span, &answer) {
        s.error = Some(format!("{}: {}", e.status, e.msg));
    }
    answer
}

/// Call `target` with a request read before (the path normalised, forwarding headers
/// added): a reverse-proxy route's service, else the route's mode decides how. Also the
/// job workers' call ([`crate::jobs`]).
pub(crate) async fn call(
    state: &Shared,
    target: &Target,
    parts: &http::request::Parts,
    body: Bytes,
    peer_addr: &str,
    rid: &HeaderValue,
) -> Result<Resp, GwError> {
    if let Some(up) = &target.upstream {
        return forward_upstream(state, target, up, parts.clone(), body).await;
    }
    match target.mode {
        RouteMode::Bhttp => forward_bhttp(state, target, parts, &body).await,
        RouteMode::Raw => forward_raw(state, target, parts, body, peer_addr, rid).await,
    }
}

/// Read a request's body within the body limit (for a NATS message: less `reserve` bytes
/// the caller adds to it and the message's head; `None` for a reverse-proxy route) and
/// the memory budget, normalise its path and add the forwarding
/// headers. The lease keeps the body's bytes charged to the budget until it is dropped.
pub(crate) async fn read_request(
    state: &Shared,
    req: Request<hyper::body::Incoming>,
    normalised: Option<String>,
    peer: &Peer,
    rid: &HeaderValue,
    reserve: Option<usize>,
) -> Result<(http::request::Parts, Bytes, crate::limits::Lease), GwError> {
    let (mut parts, body) = req.into_parts();
    let room = match reserve {
        Some(reserve) => state
            .client
            .max_payload()
            .saturating_sub(head_size(&parts) + reserve),
        // Not bound for NATS (a reverse-proxy route): only the body limit.
        None => usize::MAX,
    };
    let limit = state.max_body.min(room as u64);
    let too_large = || {
        GwError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large (limit {limit} bytes)"),
        )
    };
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    // The body's bytes are charged to the memory budget until the answer.
    let limits = &state.limits;
    let (body, lease) = match limits.read_body(Listener::Http, body, limit as usize).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large()),
        Err(BodyError::Timeout) => {
            return Err(GwError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request body not received in time (too slow)",
            ));
        }
        Err(BodyError::Overloaded) => return Err(overloaded("memory for request bodies")),
        Err(BodyError::Read(e)) => {
            return Err(GwError::new(
                StatusCode::BAD_REQUEST,
                format!("Failed to read request body: {e}"),
            ));
        }
    };
    if let Some(p) = normalised {
        set_path(&mut parts.uri, &p)?;
    }
    add_forwarding_headers(&mut parts, peer, rid);
    Ok((parts, body, lease))
}

/// A reverse-proxy route's request ([`crate::upstream`]): one HTTP/1.1 connection to the
/// service, bounded by the route timeout; the answer read up to the body limit.
async fn forward_upstream(
    state: &Shared,
    target: &Target,
    up: &crate::upstream::Upstream,
    mut parts: http::request::Parts,
    body: Bytes,
) -> Result<Resp, GwError> {
    let Ok(_slot) = state.limits.inflight(Listener::Http).await else {
        return Err(overloaded("requests in flight"));
    };
    // Hop-by-hop headers end here (those named in `Connection` are gone already).
    for name in bhttp::HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    // An h2 request's host is its `:authority`: HTTP/1.1 wants it in `Host`.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(h) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, h);
    }
    // Origin form for HTTP/1.1 (an h2 request carries an absolute URI).
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = http::Uri::try_from(pq)
        .map_err(|_| GwError::new(StatusCode::BAD_REQUEST, "Invalid path"))?;
    if !parts.headers.contains_key(header::HOST)
        && let Ok(h) = HeaderValue::from_str(&up.authority)
    {
        parts.headers.insert(header::HOST, h);
    }
    parts.version = http::Version::HTTP_11;
    let max = state.max_body as usize;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&up.authority)
            .await
            .map_err(|e| {
                tracing::debug!(upstream = %up.url, error = %e, "proxy connect failed");
                GwError::new(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway: the service is unreachable",
                )
            })?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|_| {
                    GwError::new(StatusCode::BAD_GATEWAY, "Bad Gateway: handshake failed")
                })?;
        let conn = tokio::spawn(conn);
        let bad = |e: hyper::Error| {
            tracing::debug!(upstream = %up.url, error = %e, "proxy request failed");
            GwError::new(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: the service failed to answer",
            )
        };
        let resp = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(bad)?;
        let (mut rparts, mut rbody) = resp.into_parts();
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut rbody).await {
            if let Ok(data) = frame.map_err(bad)?.into_data() {
                if buf.len() + data.len() > max {
                    return Err(GwError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("Bad Gateway: the answer is larger than {max} bytes"),
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        conn.abort();
        strip_response_headers(&mut rparts.headers);
        Ok(Response::from_parts(rparts, Full::new(buf.freeze())))
    };
    match tokio::time::timeout(target.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(GwError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway Timeout: the service did not answer in time",
        )),
    }
}

/// Replace the path of `uri` by the normalised `path`, keeping the query.
fn set_path(uri: &mut http::Uri, path: &str) -> Result<(), GwError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut up = std::mem::take(uri).into_parts();
    up.path_and_query = Some(
        http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq))
            .map_err(|_| GwError::new(StatusCode::BAD_REQUEST, "Invalid path"))?,
    );
    *uri = http::Uri::from_parts(up)
        .map_err(|_| GwError::new(StatusCode::BAD_REQUEST, "Invalid path"))?;
    Ok(())
}

/// Add `X-Forwarded-*` and `X-Request-Id`. The request's own hop-by-hop headers (those
/// named in `Connection`, and `Connection` itself) are removed first: they end at this hop
/// anyway, and a client naming `X-Forwarded-For` there must not make the gateway's own
/// header disappear when the message is encoded for the app.
fn add_forwarding_headers(parts: &mut http::request::Parts, peer: &Peer, rid: &HeaderValue) {
    let h = &mut parts.headers;
    // hyper sizes a request's map for the headers it parsed: room for the up to six added
    // below in one step, instead of the two reallocations inserting them one by one
    // takes (3 % of the gateway's CPU per request, measured).
    h.reserve(6);
    if h.contains_key(header::CONNECTION) {
        for name in bhttp::connection_tokens(h) {
            // `Host` is the request's authority, not a hop's option.
            if name != "host" {
                h.remove(name.as_str());
            }
        }
        h.remove(header::CONNECTION);
    }
    let xff = {
        let mut prior = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .peekable();
        if prior.peek().is_none() {
            Ok(peer.ip.clone())
        } else {
            let mut all = prior.collect::<Vec<_>>().join(", ");
            all.push_str(", ");
            all.push_str(peer.ip.to_str().unwrap_or_default());
            HeaderValue::from_str(&all)
        }
    };
    if let Ok(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(peer.proto),
        );
    }
    if !h.contains_key(&X_FORWARDED_HOST) {
        let host = h.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(host) = host {
            h.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    h.insert(X_REQUEST_ID.clone(), rid.clone());
    // The trace it is forwarded in (crate::trace): never the client's value verbatim.
    let _ctx = crate::trace::rewrite(h);
    #[cfg(feature = "otlp")]
    parts.extensions.insert(_ctx);
}

fn nats_value(v: &HeaderValue) -> Option<async_nats::HeaderValue> {
    async_nats::HeaderValue::from_str(v.to_str().ok()?).ok()
}

/// Send a request of `target`'s route over NATS. `headers` builds its NATS headers: once
/// per attempt, so that the one attempt most requests take moves them into the message
/// instead of copying them (a copy of a raw route's headers cost more than the rest of the
/// request's NATS side).
async fn send(
    state: &Shared,
    target: &Target,
    method: &http::Method,
    payload: Bytes,
    headers: &(dyn Fn() -> async_nats::HeaderMap + Sync),
) -> Result<async_nats::Message, GwError> {
    let Ok(_slot) = state.limits.inflight(Listener::Http).await else {
        return Err(overloaded("NATS requests in flight"));
    };
    // The deadline travels with the request (`Narun-Timeout-Ms`, in `headers`: the
    // route's pre-built ones, or set by `forward_raw`): the NATS request's timeout,
    // which starts now; a retry carries the time left.
    let idempotent = crate::failover::idempotent(method);
    // A service the gateway can watch: "no responders" waits for it to appear (and wakes
    // it when it sleeps, crate::responders) instead of the failover's blind resends.
    let watched = crate::responders::watchable(&target.subject);
    let deadline = tokio::time::Instant::now() + target.timeout;
    let mut attempt = 0u32;
    let sent = loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A retry after the service appeared carries the time left.
        let retry_headers = || {
            let mut h = headers();
            h.insert(
                narun_wire::names::TIMEOUT_MS,
                narun_wire::names::timeout_ms_value(left),
            );
            h
        };
        let sent = crate::failover::request(
            &state.client,
            &state.failover,
            &target.nats_subject,
            payload.clone(),
            if attempt == 1 {
                headers
            } else {
                &retry_headers
            },
            if attempt == 1 { target.timeout } else { left },
            idempotent,
            !watched,
        )
        .await;
        match &sent {
            Err(crate::failover::Failure::Nats(e))
                if watched && matches!(e.kind(), RequestErrorKind::NoResponders) =>
            {
                match state
                    .responders
                    .wait(&target.subject, idempotent, deadline)
                    .await
                {
                    crate::responders::Waited::Appeared => continue,
                    crate::responders::Waited::Gone { woken: true, .. } => {
                        state.metrics.nats(
                            &target.subject,
                            NatsStatus::Timeout,
                            Some(&target.metrics),
                        );
                        return Err(GwError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "Gateway Timeout: the service was scaled to zero and did not start in time",
                        ));
                    }
                    crate::responders::Waited::Gone {
                        refused: Some(why), ..
                    } => {
                        state.metrics.nats(
                            &target.subject,
                            NatsStatus::Error,
                            Some(&target.metrics),
                        );
                        return Err(GwError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("No backend service available (waking it failed: {why})"),
                        ));
                    }
                    crate::responders::Waited::Gone { .. } => break sent,
                }
            }
            _ => break sent,
        }
    };
    let sent = match sent {
        Ok(msg) => Ok(msg),
        Err(crate::failover::Failure::Nats(e)) => Err(e),
        Err(crate::failover::Failure::ConnectionLost) => {
            state
                .metrics
                .nats(&target.subject, NatsStatus::Error, Some(&target.metrics));
            return Err(GwError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Connection to NATS lost before the backend answered (the request may have been processed)",
            ));
        }
    };
    match sent {
        Ok(msg) => {
            state
                .metrics
                .nats(&target.subject, NatsStatus::Success, Some(&target.metrics));
            Ok(msg)
        }
        Err(e) => {
            let (status, err) = match e.kind() {
                RequestErrorKind::TimedOut => (
                    NatsStatus::Timeout,
                    GwError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "Request timed out waiting for backend processor",
                    ),
                ),
                RequestErrorKind::NoResponders => (
                    NatsStatus::Error,
                    GwError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "No backend service available",
                    ),
                ),
                RequestErrorKind::MaxPayloadExceeded => (
                    NatsStatus::Error,
                    GwError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Request too large for the NATS server's max_payload",
                    ),
                ),
                _ => {
                    tracing::warn!(subject = %target.subject, error = %e, "NATS request failed");
                    (
                        NatsStatus::Error,
                        GwError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Internal server error (NATS communication)",
                        ),
                    )
                }
            };
            state
                .metrics
                .nats(&target.subject, status, Some(&target.metrics));
            Err(err)
        }
    }
}

/// An ADR-32 error reply (`Nats-Service-Error-Code`) as an HTTP error:
/// codes 400–599 keep their value, anything else is a 502.
fn service_error(msg: &async_nats::Message) -> Option<GwError> {
    let h = msg.headers.as_ref()?;
    let code = h.get(narun_wire::names::SERVICE_ERROR_CODE_HEADER)?;
    let desc = h
        .get(narun_wire::names::SERVICE_ERROR_HEADER)
        .map(|d| d.as_str().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "Backend service error".to_owned());
    let status = code
        .as_str()
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (400..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    Some(GwError::new(status, desc))
}

async fn forward_bhttp(
    state: &Shared,
    target: &Target,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<Resp, GwError> {
    let payload = bhttp::encode_request(parts, body);
    // `Content-Type: application/bhttp`, the only NATS header Go's gateway sends, and
    // the deadline (pre-built per route; a retry sets the time left). The request id travels inside the BHTTP
    // message (`x-request-id`), like every other request header.
    let headers = || {
        let mut h = target.nats_headers.clone();
        crate::trace::to_nats(&parts.headers, &mut h);
        h
    };
    let msg = send(state, target, &parts.method, payload.into(), &headers).await?;
    if let Some(e) = service_error(&msg) {
        return Err(e);
    }
    let resp = bhttp::decode_response_shared(msg.payload).map_err(|e| {
        tracing::debug!(subject = %target.subject, error = %e, "undecodable backend reply");
        GwError::new(StatusCode::BAD_GATEWAY, "Failed to decode backend response")
    })?;
    let (mut rparts, rbody) = resp.into_parts();
    strip_response_headers(&mut rparts.headers);
    Ok(Response::from_parts(rparts, Full::new(rbody)))
}

/// Remove hop-by-hop and framing headers from a backend response: our HTTP
/// server frames the body itself.
fn strip_response_headers(h: &mut http::HeaderMap) {
    // Most answers carry none of them: one pass over their few names instead of a
    // lookup per name. (`Connection` is hop-by-hop: the names it lists need it.)
    if !h
        .keys()
        .any(|n| n == header::CONTENT_LENGTH || bhttp::HOP_BY_HOP.contains(&n.as_str()))
    {
        return;
    }
    let conn = bhttp::connection_tokens(h);
    for name in bhttp::HOP_BY_HOP {
        h.remove(*name);
    }
    for name in &conn {
        h.remove(name.as_str());
    }
    h.remove(header::CONTENT_LENGTH);
}

/// `content-type` → `Content-Type`, the form Go's legacy gateway sent.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

/// A raw route's NATS headers: the request's headers (canonical names, hop-by-hop and
/// framing ones dropped), the original request line, host, remote address and request id,
/// the trace and the deadline.
fn raw_headers(
    target: &Target,
    parts: &http::request::Parts,
    peer_addr: &str,
    rid: &HeaderValue,
) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    let conn = bhttp::connection_tokens(&parts.headers);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == "content-length"
            || n == "x-request-id"
            || bhttp::is_hop_by_hop(n, &conn)
            || crate::trace::is_trace_header(n)
        {
            continue;
        }
        // async-nats panics on invalid names/values given as &str: parse instead (from
        // the owned `String`: a custom name keeps its bytes, no second copy).
        let (Ok(nn), Some(vv)) = (
            async_nats::HeaderName::try_from(canonical(n)),
            nats_value(value),
        ) else {
            continue;
        };
        headers.append(nn, vv);
    }
    let mut set = |name: async_nats::HeaderName, value: &str| {
        if let Ok(v) = async_nats::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(nats_names::ORIGINAL_METHOD, parts.method.as_str());
    set(nats_names::ORIGINAL_PATH, parts.uri.path());
    set(nats_names::ORIGINAL_QUERY, parts.uri.query().unwrap_or(""));
    if let Some(host) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        set(nats_names::ORIGINAL_HOST, host);
    }
    set(nats_names::ORIGINAL_REMOTE_ADDR, peer_addr);
    if let Ok(r) = rid.to_str() {
        set(nats_names::REQUEST_ID, r);
    }
    crate::trace::to_nats(&parts.headers, &mut headers);
    // The deadline, replacing one a raw-mode client sent.
    headers.insert(
        narun_wire::names::TIMEOUT_MS,
        narun_wire::names::timeout_ms_value(target.timeout).as_str(),
    );
    headers
}

async fn forward_raw(
    state: &Shared,
    target: &Target,
    parts: &http::request::Parts,
    body: Bytes,
    peer_addr: &str,
    rid: &HeaderValue,
) -> Result<Resp, GwError> {
    let headers = || raw_headers(target, parts, peer_addr, rid);
    let msg = send(state, target, &parts.method, body, &headers).await?;
    if let Some(e) = service_error(&msg) {
        return Err(e);
    }
    let mut resp = Response::new(Full::new(msg.payload.clone()));
    if let Some(h) = &msg.headers {
        let out = resp.headers_mut();
        for (name, values) in h.iter() {
            let n: &str = name.as_ref();
            if n.eq_ignore_ascii_case(RESPONSE_STATUS_HEADER) {
                continue;
            }
            if n.len() > 12 && n[..12].eq_ignore_ascii_case("nats-service") {
                continue;
            }
            let Ok(hn) = HeaderName::from_bytes(n.as_bytes()) else {
                continue;
            };
            for v in values {
                if let Ok(hv) = HeaderValue::from_str(v.as_str()) {
                    out.append(hn.clone(), hv);
                }
            }
        }
        strip_response_headers(out);
        if let Some(code) = h.get(RESPONSE_STATUS_HEADER) {
            match code.as_str().trim().parse::<u16>() {
                Ok(c) if (200..=599).contains(&c) => {
                    *resp.status_mut() = StatusCode::from_u16(c).expect("in range");
                }
                _ => {
                    return Err(GwError::new(
                        StatusCode::BAD_GATEWAY,
                        "Backend replied with an invalid X-Response-Status-Code",
                    ));
                }
            }
        }
    }
    Ok(resp)
}
