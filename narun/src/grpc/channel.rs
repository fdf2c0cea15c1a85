//! Calling gRPC services over NATS, without the gateway: [`channel`].
//!
//! A [`Channel`] is a `tower::Service` taking the HTTP/2-style requests a
//! tonic-generated client makes, so any generated client runs on it:
//!
//! ```no_run
//! # mod pb { pub mod greeter_client { pub struct GreeterClient<T>(T);
//! #   impl<T> GreeterClient<T> { pub fn new(t: T) -> Self { GreeterClient(t) } } } }
//! # async fn demo(nats: async_nats::Client) {
//! use pb::greeter_client::GreeterClient;
//! let mut greeter = GreeterClient::new(narun::grpc::channel(&nats, "grpc-hello"));
//! // greeter.say_hello(HelloRequest { name: "narun".into() }).await?
//! # }
//! ```
//!
//! Each call is the same NATS request the narun gateway sends
//! ([`narun_wire::grpc`], `docs/grpc.md`), so a `serve_grpc` service answers
//! both alike:
//!
//! * the request message, unframed, to the subject named after the service
//!   (NATS hands it to one instance of the service's queue group: load
//!   balancing), with `X-Original-Grpc-Method`, `Narun-Grpc-Stream: 1`, the
//!   call's ASCII and `-bin` metadata as NATS headers, and the time left as
//!   `grpc-timeout` and `Narun-Timeout-Ms` (the service drops the handler when
//!   it passes);
//! * the replies (narun's numbered messages and final status, or one Go-style
//!   reply) are read by [`narun_wire::grpc::ReplyReader`] from a subscription
//!   on a fresh inbox, and become the gRPC response: the service's response
//!   headers, its messages (server streaming: as they arrive), and its status
//!   with its trailers (message, `grpc-status-details-bin`, metadata).
//!
//! **Deadlines.** A call's budget is the channel's timeout ([`Channel::timeout`],
//! [`crate::DEFAULT_TIMEOUT`] unless set), lowered by the call's own
//! `grpc-timeout` (tonic's `Request::set_timeout`) and, inside a narun handler,
//! by what is left of the request being handled ([`crate::deadline`], less a
//! small margin), so that a chain of calls never outlives its first caller. The
//! budget covers the whole call, a stream's last message included.
//!
//! **Failures are gRPC statuses**, never transport errors: no instance of the
//! service subscribed → `UNAVAILABLE` (at once); budget spent →
//! `DEADLINE_EXCEEDED`; a request larger than the NATS `max_payload` →
//! `RESOURCE_EXHAUSTED`; a compressed request or client streaming →
//! `UNIMPLEMENTED`; NATS not connected when the call starts → `UNAVAILABLE`
//! (at once; a call in flight when the connection is lost ends at its
//! deadline, its answer may be lost with the connection). A client that reads
//! a stream slower than the service sends it may lose messages to the
//! subscription's buffer: the call then ends with `DATA_LOSS`.

use super::code;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use narun_wire::grpc::{
    Reply, ReplyReader, STREAM_HEADER, frame, header, parse_grpc_timeout, put_status,
    request_metadata, single_message, timeout_value,
};
use narun_wire::names::{GRPC_METHOD_HEADER, TIMEOUT_MS, timeout_ms_value};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel to the gRPC service `service` (its NATS Micro name, the subject a
/// `serve_grpc` app answers on) over `nats`, for any tonic-generated client:
/// `GreeterClient::new(narun::grpc::channel(&nats, "grpc-hello"))`. Cheap to
/// clone; see [`Channel`].
pub fn channel(nats: &async_nats::Client, service: impl Into<String>) -> Channel {
    let service: Arc<str> = service.into().into();
    Channel {
        nats: nats.clone(),
        subject: async_nats::Subject::from(&*service),
        service,
        timeout: crate::DEFAULT_TIMEOUT,
    }
}

/// A tonic-compatible channel to one gRPC service over NATS ([`channel`]): a
/// `tower::Service` over HTTP/2-style requests that makes each call the NATS
/// request the narun gateway makes, so a `serve_grpc` service answers both alike.
///
/// * unary and server-streaming calls; status (code, message, details) and
///   metadata both ways (request metadata, response headers, trailers);
/// * NATS picks one instance of the service's queue group per call;
/// * a call's budget is [`Channel::timeout`] ([`crate::DEFAULT_TIMEOUT`] unless
///   set), lowered by the call's `grpc-timeout` and, inside a narun handler, by
///   [`crate::deadline`]; it travels to the service;
/// * failures are gRPC statuses: no responders or NATS not connected →
///   `UNAVAILABLE`, budget spent → `DEADLINE_EXCEEDED`, a request over the NATS
///   `max_payload` → `RESOURCE_EXHAUSTED`.
///
/// docs/app-library.md ("gRPC without the gateway") has an example and the details.
#[derive(Debug, Clone)]
pub struct Channel {
    nats: async_nats::Client,
    subject: async_nats::Subject,
    service: Arc<str>,
    timeout: Duration,
}

impl Channel {
    /// The same channel with another budget per call (a stream included).
    pub fn timeout(mut self, timeout: Duration) -> Channel {
        self.timeout = timeout;
        self
    }

    /// Make one call; every failure is a gRPC status in the response.
    async fn call<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if !valid_subject(&self.service) {
            return trailers_only(
                code::INVALID_ARGUMENT,
                &format!(
                    "calling {:?}: not a service name (a NATS subject: no spaces, no wildcards, no empty tokens)",
                    self.service
                ),
            );
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if !path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .is_some_and(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
        {
            return trailers_only(
                code::INVALID_ARGUMENT,
                &format!("invalid gRPC method path {path:?} (expected /package.Service/Method)"),
            );
        }
        if let Some(enc) = parts.headers.get(header::ENCODING)
            && enc.as_bytes() != b"identity"
        {
            return trailers_only(
                code::UNIMPLEMENTED,
                "compressed requests are not supported over narun (use identity)",
            );
        }
        let mut budget = self.timeout;
        if let Some(t) = parts
            .headers
            .get(header::TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            budget = budget.min(t);
        }
        let budget = crate::client::budget_within_deadline(budget);
        if budget.is_zero() {
            return trailers_only(
                code::DEADLINE_EXCEEDED,
                &format!("calling {}: no time left for the call", self.service),
            );
        }
        let deadline = tokio::time::Instant::now() + budget;

        // The request message: one frame, at most what NATS can carry.
        let max_payload = self.nats.max_payload();
        let limit = if max_payload > 0 {
            max_payload + 5
        } else {
            usize::MAX
        };
        let read = http_body_util::Limited::new(body, limit).collect();
        let body = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => {
                return trailers_only(
                    code::DEADLINE_EXCEEDED,
                    "deadline exceeded reading the request message",
                );
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return too_large(&self.service, max_payload);
            }
            Ok(Err(e)) => {
                return trailers_only(
                    code::INTERNAL,
                    &format!("reading the request message failed: {e}"),
                );
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
        let payload = match single_message(body) {
            Ok(p) => p,
            Err((c, m)) => return trailers_only(c, m),
        };

        // The NATS request: method, stream framing, metadata, the time left.
        let mut nh = async_nats::HeaderMap::new();
        nh.insert(GRPC_METHOD_HEADER, path);
        nh.insert(STREAM_HEADER, "1");
        request_metadata(&parts.headers, &mut nh);
        // The trace of the handler this call is made from (or a new one): narun::trace.
        crate::trace::inject(&mut nh);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        nh.insert(header::TIMEOUT, timeout_value(left).as_str());
        nh.insert(TIMEOUT_MS, timeout_ms_value(left));
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return trailers_only(
                code::UNAVAILABLE,
                &format!("calling {}: NATS is not connected", self.service),
            );
        }
        let inbox = self.nats.new_inbox();
        let sub = match self.nats.subscribe(inbox.clone()).await {
            Ok(s) => s,
            Err(e) => {
                return trailers_only(
                    code::UNAVAILABLE,
                    &format!(
                        "calling {}: subscribing to the reply inbox: {e}",
                        self.service
                    ),
                );
            }
        };
        if let Err(e) = self
            .nats
            .publish_with_reply_and_headers(self.subject.clone(), inbox, nh, payload)
            .await
        {
            return match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    too_large(&self.service, max_payload)
                }
                async_nats::client::PublishErrorKind::InvalidSubject => trailers_only(
                    code::INVALID_ARGUMENT,
                    &format!("calling {:?}: not a valid NATS subject: {e}", self.service),
                ),
                _ => trailers_only(
                    code::UNAVAILABLE,
                    &format!("calling {}: publishing the request: {e}", self.service),
                ),
            };
        }

        let mut answer = Answer {
            sub,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            reader: ReplyReader::new(),
            service: self.service.clone(),
            budget,
        };
        match std::future::poll_fn(|cx| answer.poll_next(cx)).await {
            Reply::End {
                code,
                message,
                trailers,
            } => {
                let mut r = trailers_only(code, &message);
                r.headers_mut().extend(trailers);
                r
            }
            Reply::Message { message, head } => {
                let mut r = Response::new(ResponseBody {
                    first: Some(frame(&message)),
                    answer: Some(answer),
                });
                let h = r.headers_mut();
                if let Some(head) = head {
                    h.extend(head);
                }
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                r
            }
        }
    }
}

impl<B> tower::Service<Request<B>> for Channel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let channel = self.clone();
        Box::pin(async move { Ok(channel.call(req).await) })
    }
}

/// A subject a request can be published to: tokens separated by dots, none
/// empty, no whitespace or control characters, no wildcards.
fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        })
}

/// A status-only ("trailers-only") answer.
fn trailers_only(c: u16, message: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody {
        first: None,
        answer: None,
    });
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    put_status(h, c, message);
    r
}

fn too_large(service: &str, max_payload: usize) -> Response<ResponseBody> {
    trailers_only(
        code::RESOURCE_EXHAUSTED,
        &format!(
            "calling {service}: the request is larger than the NATS max_payload ({max_payload} bytes)"
        ),
    )
}

/// The replies of one call, read from its inbox until the status, the deadline
/// or the end of the subscription.
struct Answer {
    sub: async_nats::Subscriber,
    deadline: Pin<Box<tokio::time::Sleep>>,
    reader: ReplyReader,
    service: Arc<str>,
    budget: Duration,
}

impl Answer {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Reply> {
        if let Some(end) = self.reader.pending_end() {
            return Poll::Ready(end);
        }
        match self.sub.poll_next_unpin(cx) {
            Poll::Ready(Some(msg)) => {
                if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    return Poll::Ready(Reply::end(
                        code::UNAVAILABLE,
                        format!(
                            "calling {}: no instance of the service answers (is it deployed and running? `narunctl services ls` lists them)",
                            self.service
                        ),
                    ));
                }
                return Poll::Ready(self.reader.read(msg.headers.as_ref(), msg.payload));
            }
            Poll::Ready(None) => {
                return Poll::Ready(Reply::end(
                    code::UNAVAILABLE,
                    format!(
                        "calling {}: the NATS subscription for the reply ended (connection lost?)",
                        self.service
                    ),
                ));
            }
            Poll::Pending => {}
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Reply::end(
                code::DEADLINE_EXCEEDED,
                format!(
                    "calling {}: no complete answer within {:?}",
                    self.service, self.budget
                ),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The response body of a [`Channel`] call: the service's messages as they
/// arrive, then its status and trailers. Dropping it ends the call (the reply
/// subscription goes).
pub struct ResponseBody {
    /// The first message, read before the response was returned.
    first: Option<Bytes>,
    /// The call, until its status.
    answer: Option<Answer>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("ended", &self.answer.is_none())
            .finish_non_exhaustive()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(m) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(m))));
        }
        let Some(answer) = self.answer.as_mut() else {
            return Poll::Ready(None);
        };
        match answer.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Reply::Message { message, .. }) => {
                Poll::Ready(Some(Ok(Frame::data(frame(&message)))))
            }
            Poll::Ready(Reply::End {
                code,
                message,
                mut trailers,
            }) => {
                self.answer = None;
                put_status(&mut trailers, code, &message);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.answer.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_subjects_without_wildcards() {
        for ok in ["grpc-hello", "team.grpc_hello", "a.b.c"] {
            assert!(valid_subject(ok), "{ok}");
        }
        for bad in [
            "", "a b", "a..b", ".a", "a.", "a.*", "a.>", "x\ty", "\u{7f}",
        ] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }
}
