//! The answer to one call: the NATS replies read from the call's inbox
//! (narun's numbered stream messages and final status, or a Go single reply),
//! turned into the gRPC response body; unary answers complete at once,
//! streams are forwarded by a task as they arrive.

use async_nats::StatusCode as NatsStatus;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use http_body::Frame;
use narun_wire::grpc::percent_decode;
use narun_wire::names::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;

use super::inbox::CallInbox;
use super::status::{put_status, trailers_only};
use super::{
    GrpcResponse, MESSAGE_HEADER, SEQ_HEADER, STATUS_HEADER, State, code, status_from_service_error,
};
use crate::limits::Lease;
use crate::metrics::Label;

fn grpc_frame(m: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + m.len());
    b.put_u8(0);
    b.put_u32(m.len() as u32);
    b.put_slice(m);
    b.freeze()
}

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
            Ok(None) if self.sub.exhausted() => {
                return Event::End(
                    code::RESOURCE_EXHAUSTED,
                    "the gateway's memory budget for buffered replies is exhausted".into(),
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
        let (msg, lease) = msg;
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
            return Event::Message(msg.payload, lease);
        }
        // A single reply, as Go consumers send it.
        if let Some(c) = get(SERVICE_ERROR_CODE_HEADER) {
            let message = get(SERVICE_ERROR_HEADER).unwrap_or_default().to_owned();
            return Event::End(status_from_service_error(c), message);
        }
        self.pending_end = Some((code::OK, String::new()));
        Event::Message(msg.payload, lease)
    }
}

/// Answer a call whose request is published: `sub` receives its replies until
/// `deadline`; the metrics count it under `label` from `started`.
pub(super) async fn respond(
    state: Arc<State>,
    sub: CallInbox,
    deadline: tokio::time::Instant,
    label: Label,
    started: Instant,
) -> GrpcResponse {
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
                    state.metrics.record(&label, c, started.elapsed());
                    return trailers_only(c, &m);
                }
                let mut t = HeaderMap::new();
                put_status(&mut t, c, &m);
                ready.push_back((Frame::trailers(t), None));
                state.metrics.record(&label, c, started.elapsed());
                return data_response(GrpcBody { ready, rest: None });
            }
            Event::Message(m, lease) => {
                ready.push_back((Frame::data(grpc_frame(&m)), Some(lease)));
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
                Event::Message(m, lease) => {
                    if tx
                        .send((Frame::data(grpc_frame(&m)), Some(lease)))
                        .await
                        .is_err()
                    {
                        // Client went away; dropping the call inbox unregisters it.
                        break (code::CANCELLED, String::new());
                    }
                }
                Event::End(c, m) => break (c, m),
            }
        };
        let mut t = HeaderMap::new();
        put_status(&mut t, c, &m);
        let _ = tx.send((Frame::trailers(t), None)).await;
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
