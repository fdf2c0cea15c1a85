//! The answer to one call: the NATS replies read from the call's inbox
//! (narun's numbered stream messages and final status, or a Go single reply),
//! turned into the gRPC response body; unary answers complete at once,
//! streams are forwarded by a task as they arrive.
//!
//! Response metadata: the NATS headers of message 0 are the app's response
//! headers, those of the status message its trailers (or, when no message came
//! first, the one header block of a trailers-only answer); read by
//! [`ReplyReader`], shared with the app library's channel. Names the protocol
//! reserves ([`narun_wire::grpc::is_reserved_response_header`]: `content-type`, `grpc-status`,
//! `grpc-message`, other `grpc-*` but `grpc-status-details-bin`, pseudo and
//! hop-by-hop headers, the `nats-*`/`narun-*` transport names) are dropped, so
//! an app cannot rewrite the framing or the status the gateway sends.

use async_nats::StatusCode as NatsStatus;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body::Frame;
use narun_wire::grpc::{Reply, ReplyReader, frame};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;

use super::inbox::CallInbox;
use super::metrics::MethodLabel;
use super::status::{put_status, trailers_only};
use super::{GrpcResponse, State, code};
use crate::limits::Lease;

/// How long after the call's deadline the forwarding task still waits for a
/// client to take a message (the status, typically) before it gives up.
const SEND_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A frame and the memory budget its bytes hold until it is handed to hyper.
type Held = (Frame<Bytes>, Option<Lease>);

/// Response body: frames known up front, then (for streams) a channel fed by a task.
struct GrpcBody {
    ready: VecDeque<Held>,
    rest: Option<mpsc::Receiver<Held>>,
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some((f, _lease)) = self.ready.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match self.rest.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|f| f.map(|(f, _lease)| Ok(f))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.is_none()
    }
}

/// One event of a NATS answer.
enum Event {
    Message(Bytes, Lease),
    /// The status, and the metadata that came with it (trailers).
    End(u16, String, HeaderMap),
}

impl Event {
    /// An end the gateway itself decides (no metadata from the app).
    fn end(code: u16, message: impl Into<String>) -> Event {
        Event::End(code, message.into(), HeaderMap::new())
    }
}

/// A published request, kept while it may be sent again: NATS answered it with no
/// responders, so nobody received it (`crate::failover`, "gRPC").
pub(super) struct Resend {
    client: async_nats::Client,
    subject: async_nats::Subject,
    reply: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    /// The request's share of the memory budget, held with its bytes.
    _lease: Lease,
    first: tokio::time::Instant,
    attempt: u32,
}

impl Resend {
    /// The request just published (first attempt) to `subject` with `reply`.
    pub(super) fn new(
        client: async_nats::Client,
        subject: async_nats::Subject,
        reply: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        lease: Lease,
    ) -> Resend {
        Resend {
            client,
            subject,
            reply,
            headers,
            payload,
            _lease: lease,
            first: tokio::time::Instant::now(),
            attempt: 1,
        }
    }

    /// When it is no longer sent again: a no-responders answer comes within a round trip,
    /// so a request without one by then is the responder's.
    fn window_end(&self) -> tokio::time::Instant {
        self.first + crate::failover::NO_RESPONDERS_RETRY
    }

    /// The last attempt found no responders: send the request again after the rule's
    /// pause, with the time left until `deadline`. False if it is not sent again.
    async fn again(&mut self, deadline: tokio::time::Instant) -> bool {
        let now = tokio::time::Instant::now();
        let Some(pause) = crate::failover::resend_undelivered(
            self.attempt,
            now.duration_since(self.first),
            deadline.saturating_duration_since(now),
        ) else {
            return false;
        };
        tokio::time::sleep(pause).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut headers = self.headers.clone();
        headers.insert(
            narun_wire::grpc::header::TIMEOUT,
            narun_wire::grpc::timeout_value(left).as_str(),
        );
        headers.insert(
            narun_wire::names::TIMEOUT_MS,
            narun_wire::names::timeout_ms_value(left),
        );
        self.attempt += 1;
        tracing::debug!(subject = %self.subject, attempt = self.attempt, "no responders for a gRPC call: sending it again");
        self.client
            .publish_with_reply_and_headers(
                self.subject.clone(),
                self.reply.clone(),
                headers,
                self.payload.clone(),
            )
            .await
            .is_ok()
    }
}

/// Reads the answer of one call from its reply inbox.
struct Answer {
    sub: CallInbox,
    deadline: tokio::time::Instant,
    /// Reads the replies (narun's stream framing, or a Go single reply).
    reader: ReplyReader,
    /// The response header metadata (from message 0).
    head: HeaderMap,
    /// The request, while it may be sent again.
    resend: Option<Resend>,
}

impl Answer {
    async fn next(&mut self) -> Event {
        if let Some(Reply::End { code, message, .. }) = self.reader.pending_end() {
            return Event::end(code, message);
        }
        let msg = loop {
            let until = match &self.resend {
                Some(r) => r.window_end().min(self.deadline),
                None => self.deadline,
            };
            let msg = match tokio::time::timeout_at(until, self.sub.rx.recv()).await {
                Err(_) if self.resend.is_some() && until < self.deadline => {
                    // No "no responders" within the window: a responder has the request.
                    self.resend = None;
                    continue;
                }
                Err(_) => {
                    return Event::end(
                        code::DEADLINE_EXCEEDED,
                        "request timed out waiting for backend processor",
                    );
                }
                Ok(None) if self.sub.exhausted() => {
                    return Event::end(
                        code::RESOURCE_EXHAUSTED,
                        "the gateway's memory budget for buffered replies is exhausted",
                    );
                }
                Ok(None) => {
                    return Event::end(
                        code::UNAVAILABLE,
                        "NATS subscription for the reply ended (connection lost?)",
                    );
                }
                Ok(Some(m)) => m,
            };
            if msg.0.status == Some(NatsStatus::NO_RESPONDERS) {
                // Nobody received the request: it may go again (the service is moving).
                if let Some(r) = self.resend.as_mut()
                    && r.again(self.deadline).await
                {
                    continue;
                }
                self.resend = None;
                return Event::end(
                    code::UNAVAILABLE,
                    "no backend processors available for the request",
                );
            }
            // A responder has the request: it is never sent again.
            self.resend = None;
            break msg;
        };
        let (msg, lease) = msg;
        let msg = *msg;
        match self.reader.read(msg.headers.as_ref(), msg.payload) {
            Reply::Message { message, head } => {
                if let Some(head) = head {
                    self.head = head;
                }
                Event::Message(message, lease)
            }
            Reply::End {
                code,
                message,
                trailers,
            } => Event::End(code, message, trailers),
        }
    }
}

/// Answer a call whose request is published: `sub` receives its replies until
/// `deadline` (and `resend` sends the request again while it finds no responders); the
/// metrics count it under `label` from `started`.
pub(super) async fn respond(
    state: Arc<State>,
    sub: CallInbox,
    deadline: tokio::time::Instant,
    label: MethodLabel,
    started: Instant,
    resend: Resend,
) -> GrpcResponse {
    let mut answer = Answer {
        sub,
        deadline,
        reader: ReplyReader::new(),
        head: HeaderMap::new(),
        resend: Some(resend),
    };

    // Wait for up to two events: most calls (unary) are complete by then and
    // are answered without a forwarding task.
    let mut ready = VecDeque::new();
    loop {
        match answer.next().await {
            Event::End(c, m, mut t) => {
                state.metrics.record(&label, c, started.elapsed());
                if ready.is_empty() {
                    // Trailers-only: one header block with the status and
                    // all the metadata.
                    let mut r = trailers_only(c, &m);
                    r.headers_mut().extend(t);
                    return r;
                }
                put_status(&mut t, c, &m);
                ready.push_back((Frame::trailers(t), None));
                return data_response(GrpcBody { ready, rest: None }, answer.head);
            }
            Event::Message(m, lease) => {
                ready.push_back((Frame::data(frame(&m)), Some(lease)));
                if ready.len() >= 2 {
                    break;
                }
            }
        }
    }
    // A stream: forward the rest as it arrives. A client that stops reading
    // stops the body, and the channel fills: every send is bounded by the
    // call's deadline (plus `SEND_GRACE`), after which the task ends and
    // dropping the call inbox frees its in-flight slot and buffered replies.
    let (tx, rx) = mpsc::channel(16);
    let state2 = state.clone();
    let head = std::mem::take(&mut answer.head);
    let send_by = answer.deadline + SEND_GRACE;
    tokio::spawn(async move {
        let (c, m, mut t) = loop {
            match answer.next().await {
                Event::Message(m, lease) => {
                    let frame = (Frame::data(frame(&m)), Some(lease));
                    match tokio::time::timeout_at(send_by, tx.send(frame)).await {
                        Ok(Ok(())) => {}
                        // Client went away; dropping the call inbox unregisters it.
                        Ok(Err(_)) => break (code::CANCELLED, String::new(), HeaderMap::new()),
                        Err(_) => {
                            // The client stopped reading: no trailers can reach it.
                            state2.metrics.record(
                                &label,
                                code::DEADLINE_EXCEEDED,
                                started.elapsed(),
                            );
                            return;
                        }
                    }
                }
                Event::End(c, m, t) => break (c, m, t),
            }
        };
        put_status(&mut t, c, &m);
        let _ = tokio::time::timeout_at(send_by, tx.send((Frame::trailers(t), None))).await;
        state2.metrics.record(&label, c, started.elapsed());
    });
    data_response(
        GrpcBody {
            ready,
            rest: Some(rx),
        },
        head,
    )
}

/// A response with messages: `content-type` and the app's header metadata.
fn data_response(body: GrpcBody, head: HeaderMap) -> GrpcResponse {
    let mut r = Response::new(tonic::body::Body::new(body));
    let h = r.headers_mut();
    h.extend(head);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}
