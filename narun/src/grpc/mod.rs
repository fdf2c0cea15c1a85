//! gRPC over NATS (feature `grpc`): serving a tonic-generated server
//! ([`serve_grpc`]), and calling one without the gateway ([`channel`]).
//!
//! # Serving
//!
//! The narun gateway (and Go's `narun-gw`) turn each gRPC call into one NATS
//! request on the subject named after the service:
//!
//! * payload: the **raw protobuf request message** (no 5-byte gRPC frame);
//! * header `X-Original-Grpc-Method: /pkg.Service/Method` picks the method;
//! * other NATS headers are the call's ASCII metadata (the Rust gateway forwards
//!   them; Go's gateway drops them).
//!
//! This module rebuilds the HTTP/2-style request a gRPC server expects (path
//! from the header, `content-type: application/grpc`, `te: trailers`, the
//! framed message) and runs it through any `tower::Service` such as
//! `GreeterServer::new(impl)` or `tonic::service::Routes`. The answer:
//!
//! * **unary** (no `Narun-Grpc-Stream` header; what Go's gateway sends): one
//!   reply with the raw response message, or an ADR-32 error whose
//!   `Nats-Service-Error-Code` is the decimal gRPC status code and
//!   `Nats-Service-Error` its message (Go compatible; a missing method header is
//!   error `400`);
//! * **streamed** (request header `Narun-Grpc-Stream: 1`, sent by the Rust
//!   gateway): every response message is published to the reply subject with
//!   `Narun-Grpc-Seq: 0, 1, 2…`, then one final message with
//!   `Narun-Grpc-Status: <code>` (and `Narun-Grpc-Message` when not OK). This
//!   carries server-streaming methods; unary methods use it too (one message +
//!   status). See `docs/grpc.md` for the full framing.
//!
//! Response metadata (stream framing only): the server's response headers
//! travel as NATS headers of the first message published (message 0, or the
//! status message when no message precedes it), its trailers as NATS headers of
//! the status message — except the names
//! [`narun_wire::grpc::is_reserved_response_header`] keeps for the protocol
//! (`content-type`, `grpc-status`, `grpc-message`, other `grpc-*` but
//! `grpc-status-details-bin`, hop-by-hop, `nats-*`, `narun-*`). `-bin` values
//! stay base64, as HTTP/2 carries them.
//!
//! ```no_run
//! # #[cfg(any())] mod pb { }
//! # async fn demo<S>(greeter: S) -> Result<(), narun::Error>
//! # where S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>,
//! #     Response = http::Response<http_body_util::Full<bytes::Bytes>>,
//! #     Error = std::convert::Infallible> + Clone + Send + 'static, S::Future: Send + 'static {
//! // `greeter` = e.g. `pb::greeter_server::GreeterServer::new(MyGreeter)`
//! narun::serve_grpc(narun::Options::from_env_or("grpc-hello"), greeter).await
//! # }
//! ```

mod channel;

pub use channel::{Channel, ResponseBody, channel};

use crate::{Error, Options};
use async_nats::HeaderMap;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use narun_wire::micro::{self, Service};
use narun_wire::names::{GRPC_METHOD_HEADER, TIMEOUT_MS, parse_timeout_ms};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use tower::{Service as TowerService, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A gRPC status: code and message.
type Status = (u16, String);

/// Endpoint name of gRPC services (Go compatible).
pub const GRPC_ENDPOINT: &str = "grpc_handler";
pub use narun_wire::grpc::{MESSAGE_HEADER, SEQ_HEADER, STATUS_HEADER, STREAM_HEADER};

/// Serve a gRPC server (any tower service taking `http::Request<Full<Bytes>>`,
/// e.g. a tonic-generated `XxxServer` or `tonic::service::Routes`) until
/// SIGTERM or SIGINT, then stop gracefully.
pub async fn serve_grpc<S, B>(opts: Options, service: S) -> Result<(), Error>
where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let shutdown = termination_signal().map_err(Error::Signal)?;
    serve_grpc_until(opts, service, shutdown).await
}

/// Serve a gRPC server until `shutdown` completes, then stop gracefully.
pub async fn serve_grpc_until<S, B>(
    opts: Options,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let server = GrpcServer::start(opts, service).await?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}

/// A running gRPC-over-NATS service. [`GrpcServer::shutdown`] stops it gracefully.
pub struct GrpcServer(crate::runner::Running);

impl GrpcServer {
    /// Connect, register the service with its `grpc_handler` endpoint on
    /// subject `opts.name`, and start serving.
    pub async fn start<S, B>(opts: Options, service: S) -> Result<GrpcServer, Error>
    where
        S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let handler = move |client, request| handle(client, request, service.clone());
        crate::runner::start(opts, GRPC_ENDPOINT, "gRPC", handler)
            .await
            .map(GrpcServer)
    }

    /// The ADR-32 service (id, stats, info).
    pub fn service(&self) -> &Service {
        &self.0.service
    }

    /// Stop taking requests, finish the in-flight ones (bounded by
    /// [`Options::shutdown_timeout`]) and unregister from discovery.
    pub async fn shutdown(self) {
        self.0.shutdown().await
    }
}

use narun_wire::grpc::code;

/// Headers that describe the NATS/narun transport rather than gRPC metadata.
fn is_transport_header(name: &str) -> bool {
    // Lower-cased on the stack: names are short (a longer one is allocated).
    let mut buf = [0u8; 64];
    let n: std::borrow::Cow<'_, str> = match buf.get_mut(..name.len()) {
        Some(b) => {
            b.copy_from_slice(name.as_bytes());
            b.make_ascii_lowercase();
            std::borrow::Cow::Borrowed(
                std::str::from_utf8(b).expect("ASCII lower-casing keeps UTF-8 valid"),
            )
        }
        None => std::borrow::Cow::Owned(name.to_ascii_lowercase()),
    };
    narun_wire::grpc::is_transport_header(&n)
        || matches!(&*n, header::ENCODING | header::ACCEPT_ENCODING)
}

use narun_wire::grpc::{
    header, is_reserved_response_header, parse_grpc_timeout, percent_decode, percent_encode,
};

/// A gRPC server's response headers or trailers as NATS headers: the metadata
/// an app may send (names lower case, as HTTP/2 has them), without the reserved
/// names; names or values NATS cannot carry are left out.
fn response_metadata(h: &http::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in h {
        if is_reserved_response_header(name.as_str()) {
            continue;
        }
        let (Ok(n), Some(v)) = (
            async_nats::HeaderName::from_str(name.as_str()),
            value
                .to_str()
                .ok()
                .and_then(|v| async_nats::HeaderValue::from_str(v).ok()),
        ) else {
            continue;
        };
        out.append(n, v);
    }
    out
}

/// Add every value of `from` to `to`.
fn append_all(to: &mut HeaderMap, from: HeaderMap) {
    for (name, values) in from.iter() {
        for v in values {
            to.append(name.clone(), v.clone());
        }
    }
}

/// Split complete gRPC messages off the front of `buf`.
fn take_messages(buf: &mut BytesMut, out: &mut Vec<Bytes>) -> Result<(), &'static str> {
    loop {
        if buf.len() < 5 {
            return Ok(());
        }
        if buf[0] != 0 {
            return Err("compressed gRPC response messages are not supported");
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return Ok(());
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
}

/// How the answer leaves: one Go-style reply, or the narun stream framing.
struct Replier {
    client: std::sync::Arc<async_nats::Client>,
    request: micro::Request,
    reply: Option<async_nats::Subject>,
    stream: bool,
    seq: u64,
    /// Unary mode: the first response message. Stream mode: the first message,
    /// held until it is known whether more follow ([`Replier::release`]).
    first: Option<Bytes>,
    /// Stream mode: response header metadata not yet sent (it goes with the
    /// first message published).
    head: Option<HeaderMap>,
    /// Stream mode: trailer metadata, sent with the status.
    trailers: Option<HeaderMap>,
    /// Stream mode: the response carries metadata (headers or trailers the
    /// app may send), which a plain Go-style reply cannot carry.
    metadata: bool,
}

impl Replier {
    /// Send (stream mode) or keep (unary mode) one response message. A message
    /// NATS cannot carry ends the call with `RESOURCE_EXHAUSTED`.
    async fn message(&mut self, m: Bytes) -> Result<(), Status> {
        let max = self.client.max_payload();
        if max > 0 && m.len() > max {
            return Err((
                code::RESOURCE_EXHAUSTED,
                format!(
                    "response message of {} bytes exceeds the NATS max_payload ({max} bytes)",
                    m.len()
                ),
            ));
        }
        if !self.stream || (self.seq == 0 && self.first.is_none()) {
            if self.first.is_none() {
                self.first = Some(m);
            }
            return Ok(());
        }
        self.release().await;
        self.publish(m).await;
        Ok(())
    }

    /// True while a stream's first message is held back.
    fn holding(&self) -> bool {
        self.stream && self.first.is_some()
    }

    /// Stream mode: publish the held first message (more follow, or they are
    /// not ready yet).
    async fn release(&mut self) {
        if self.stream
            && let Some(m) = self.first.take()
        {
            self.publish(m).await;
        }
    }

    async fn publish(&mut self, m: Bytes) {
        let Some(reply) = self.reply.clone() else {
            return;
        };
        let mut h = self.head.take().unwrap_or_default();
        h.insert(SEQ_HEADER, self.seq.to_string().as_str());
        self.seq += 1;
        if let Err(e) = self.client.publish_with_headers(reply, h, m).await {
            tracing::warn!(error = %e, "failed to publish a gRPC response message");
        }
    }

    async fn finish(mut self, code: u16, message: &str) {
        // Stream mode, exactly one message, OK, no metadata (every unary call):
        // one plain reply, the form Go consumers answer with, which the gateway
        // reads as that message plus OK. Saves a NATS message and two header maps.
        if self.stream
            && code == code::OK
            && self.seq == 0
            && self.first.is_some()
            && !self.metadata
        {
            self.stream = false;
        }
        self.release().await;
        let r = if self.stream {
            // Header metadata not sent yet (no message was): the gateway answers
            // trailers-only, one block with headers and trailers.
            let mut h = self.head.take().unwrap_or_default();
            if let Some(t) = self.trailers.take() {
                append_all(&mut h, t);
            }
            h.insert(STATUS_HEADER, code.to_string().as_str());
            if code != code::OK {
                h.insert(MESSAGE_HEADER, percent_encode(message).as_str());
                self.request
                    .respond_error(code, message, Bytes::new(), Some(h))
                    .await
            } else {
                self.request.respond(Bytes::new(), Some(h)).await
            }
        } else if code == code::OK {
            self.request
                .respond(self.first.unwrap_or_default(), None)
                .await
        } else {
            self.request
                .respond_error(code, message, Bytes::new(), None)
                .await
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "failed to send the gRPC reply");
        }
    }
}

/// Answer one NATS request with the gRPC server.
async fn handle<S, B>(
    client: std::sync::Arc<async_nats::Client>,
    request: micro::Request,
    service: S,
) where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Taken, not cloned: only the reply subject and the stats are needed later.
    let mut request = request;
    let headers = request.message.headers.take().unwrap_or_default();
    let method = headers
        .get(GRPC_METHOD_HEADER)
        .map(|v| v.as_str().trim().to_owned())
        .unwrap_or_default();
    if method.is_empty() {
        let _ = request
            .respond_error(
                400,
                "Missing required X-Original-Grpc-Method header",
                Bytes::new(),
                None,
            )
            .await;
        return;
    }
    let stream = headers
        .get(STREAM_HEADER)
        .is_some_and(|v| v.as_str().trim() == "1");
    // With the caller's `Narun-Timeout-Ms` the serving loop enforces the
    // deadline (it drops this future); `grpc-timeout` alone (a NATS caller
    // other than the gateway) bounds the handler here and is answered.
    let deadline = if headers
        .get(TIMEOUT_MS)
        .and_then(|v| parse_timeout_ms(v.as_str()))
        .is_some()
    {
        None
    } else {
        headers
            .get(header::TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_str()))
    };

    // The HTTP/2-style request a gRPC server expects (its parts set in place, not
    // through a builder that moves them at every header).
    let uri = http::Uri::try_from(method.as_str());
    let mut metadata = http::HeaderMap::new();
    metadata.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    metadata.insert(http::header::TE, HeaderValue::from_static("trailers"));
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if is_transport_header(name) {
            continue;
        }
        // `from_bytes` lower-cases the name itself.
        let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for v in values {
            if let Ok(hv) = HeaderValue::from_str(v.as_str()) {
                metadata.append(hn.clone(), hv);
            }
        }
    }
    let framed = narun_wire::grpc::frame(&request.message.payload);
    let reply = request.message.reply.clone();
    let mut replier = Replier {
        client,
        request,
        reply,
        stream,
        seq: 0,
        first: None,
        head: None,
        trailers: None,
        metadata: false,
    };
    let http_request = match uri {
        Ok(uri) => {
            let mut r = Request::new(Full::new(framed));
            *r.method_mut() = http::Method::POST;
            *r.uri_mut() = uri;
            *r.headers_mut() = metadata;
            r
        }
        Err(e) => {
            let msg = format!("invalid gRPC method path {method:?}: {e}");
            replier.finish(400, &msg).await;
            return;
        }
    };

    let call = async {
        let response = service.oneshot(http_request).await.map_err(Into::into)?;
        let (parts, body) = response.into_parts();
        let mut body = std::pin::pin!(body);
        let header_status = status_of(&parts.headers);
        if replier.stream {
            let head = response_metadata(&parts.headers);
            replier.metadata |= !head.is_empty();
            replier.head = Some(head);
        }
        let mut buf = BytesMut::new();
        let mut messages = Vec::new();
        let mut trailer_status = None;
        loop {
            // A held first message goes out as soon as the next frame is not
            // ready at once (a stream's next message may take long); a unary
            // answer's trailers are ready at once.
            // Convert the error at once: `B::Error` need not be `Send`.
            let ready: Option<Option<Result<_, BoxError>>> = if replier.holding() {
                body.frame()
                    .now_or_never()
                    .map(|f| f.map(|r| r.map_err(Into::into)))
            } else {
                None
            };
            let next = match ready {
                Some(f) => f,
                None => {
                    replier.release().await;
                    body.frame().await.map(|r| r.map_err(Into::into))
                }
            };
            let Some(frame) = next else { break };
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    take_messages(&mut buf, &mut messages)?;
                    for m in messages.drain(..) {
                        if let Err(status) = replier.message(m).await {
                            return Ok(status);
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailer_status = status_of(&t);
                        if replier.stream {
                            let trailers = response_metadata(&t);
                            replier.metadata |= !trailers.is_empty();
                            replier.trailers = Some(trailers);
                        }
                    }
                }
            }
        }
        Ok::<_, BoxError>(
            trailer_status
                .or(header_status)
                .unwrap_or((code::INTERNAL, "gRPC server sent no grpc-status".to_owned())),
        )
    };
    let bounded = async {
        match deadline {
            Some(d) => tokio::time::timeout(d, call).await.unwrap_or_else(|_| {
                Ok((
                    code::DEADLINE_EXCEEDED,
                    "deadline exceeded while the gRPC handler ran".to_owned(),
                ))
            }),
            None => call.await,
        }
    };
    let (status, message) = match AssertUnwindSafe(bounded).catch_unwind().await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!(%method, error = %e, "gRPC handler failed");
            (code::INTERNAL, format!("gRPC handler failed: {e}"))
        }
        Err(_) => {
            tracing::error!(%method, "gRPC handler panicked");
            (code::INTERNAL, "Internal server error".to_owned())
        }
    };
    replier.finish(status, &message).await;
}

/// `grpc-status` / `grpc-message` from a header or trailer block.
fn status_of(h: &http::HeaderMap) -> Option<(u16, String)> {
    let code = h.get(header::STATUS)?.to_str().ok()?.trim().parse().ok()?;
    let message = h
        .get(header::MESSAGE)
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

/// Completes on the first SIGTERM or SIGINT.
fn termination_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_headers_in_any_case_and_length() {
        for n in [
            "Narun-Timeout-Ms",
            "narun-grpc-stream",
            "X-Original-Grpc-Method",
            "NATS-Service-Error",
            "Content-Type",
            "TE",
            "grpc-encoding",
            "Grpc-Accept-Encoding",
        ] {
            assert!(is_transport_header(n), "{n}");
        }
        for n in ["X-Custom", "grpc-timeout", "authorization"] {
            assert!(!is_transport_header(n), "{n}");
        }
        // Longer than the stack buffer: still compared lower-cased.
        let long = format!("Narun-{}", "X".repeat(100));
        assert!(is_transport_header(&long));
        assert!(!is_transport_header(&"Y".repeat(100)));
    }

    #[test]
    fn framing() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        take_messages(&mut buf, &mut out).unwrap();
        assert_eq!(out, vec![Bytes::from_static(b"hi"), Bytes::new()]);
        assert_eq!(buf.len(), 2, "incomplete frame stays buffered");
        let mut c = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(take_messages(&mut c, &mut out).is_err());
    }

    #[test]
    fn response_metadata_keeps_metadata_and_drops_protocol_headers() {
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/grpc"),
            ("grpc-status", "0"),
            ("grpc-message", "fine"),
            ("grpc-encoding", "gzip"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("nats-service-error-code", "500"),
            ("narun-grpc-status", "0"),
            ("narun-timeout-ms", "1"),
            ("x-custom", "one"),
            ("x-custom", "two"),
            ("x-trace-bin", "AAEC"),
            ("grpc-status-details-bin", "CAM"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        h.append("x-opaque", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let m = response_metadata(&h);
        let mut names: Vec<String> = m.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            ["grpc-status-details-bin", "x-custom", "x-trace-bin"]
        );
        let custom: Vec<&str> = m.get_all("x-custom").map(|v| v.as_str()).collect();
        assert_eq!(custom, ["one", "two"]);
        assert_eq!(m.get("x-trace-bin").unwrap().as_str(), "AAEC");
    }
}
