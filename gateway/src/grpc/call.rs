//! One call: the path picks the route, the deadline is set, the request
//! headers become NATS headers, the one request message is read and unframed,
//! and the request is published to the route's subject; [`super::answer`]
//! takes it from there.

use crate::limits::{BodyError, Listener};
use bytes::{Buf, Bytes};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use narun_wire::grpc::header;
use narun_wire::names::{GRPC_METHOD_HEADER, TIMEOUT_MS, timeout_ms_value};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use super::status::trailers_only;
use super::{
    GrpcResponse, MAX_REQUEST_MESSAGE, STREAM_HEADER, State, answer, code, parse_grpc_timeout,
};

/// Request headers that are not call metadata: HTTP/2 connection-level and
/// gRPC protocol headers, and names the NATS transport uses itself.
fn is_reserved(name: &str) -> bool {
    name.starts_with("grpc-")
        || narun_wire::grpc::is_transport_header(name)
        || matches!(name, "proxy-connection" | "user-agent")
}

/// Handle one gRPC call.
pub(super) async fn call(state: Arc<State>, req: Request<Incoming>) -> GrpcResponse {
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

    // NATS headers: method, stream framing, metadata; the deadline below.
    let mut nh = async_nats::HeaderMap::new();
    nh.insert(GRPC_METHOD_HEADER, path.as_str());
    nh.insert(STREAM_HEADER, "1");
    for (name, value) in req.headers() {
        if is_reserved(name.as_str()) || crate::trace::is_trace_header(name.as_str()) {
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
    // The trace it is forwarded in (crate::trace), never the client's value verbatim.
    let trace = crate::trace::incoming(req.headers());
    trace.inject(&mut nh);
    #[cfg(feature = "otlp")]
    let _span = crate::trace::Exported::start(&trace, path.clone());

    // The request message.
    let max_payload = state.client.max_payload();
    let limit = if max_payload > 0 {
        MAX_REQUEST_MESSAGE.min(max_payload) + 5
    } else {
        MAX_REQUEST_MESSAGE + 5
    };
    // A message the whole memory budget cannot hold is too large, not "retry later".
    let budget = usize::try_from(state.limits.budget().limit()).unwrap_or(usize::MAX);
    let limit = limit.min(budget);
    // Its bytes are charged to the memory budget until it is published.
    let read = state
        .limits
        .read_body(Listener::Grpc, req.into_body(), limit);
    let (body, lease) = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => {
            return finish(
                code::DEADLINE_EXCEEDED,
                "deadline exceeded reading the request",
            );
        }
        Ok(Err(BodyError::TooLarge)) => {
            return finish(
                code::RESOURCE_EXHAUSTED,
                &format!("request message larger than {} bytes", limit - 5),
            );
        }
        Ok(Err(BodyError::Overloaded)) => {
            return finish(
                code::RESOURCE_EXHAUSTED,
                "the gateway's memory budget for request messages is exhausted; retry later",
            );
        }
        Ok(Err(BodyError::Timeout)) => {
            return finish(
                code::DEADLINE_EXCEEDED,
                "request message not received in time (too slow)",
            );
        }
        Ok(Err(BodyError::Read(e))) => {
            return finish(code::CANCELLED, &format!("reading the request failed: {e}"));
        }
        Ok(Ok(b)) => b,
    };
    let payload = match single_message(body) {
        Ok(p) => p,
        Err((c, m)) => return finish(c, m),
    };

    if state.client.connection_state() != async_nats::connection::State::Connected {
        return finish(code::UNAVAILABLE, "NATS is not connected");
    }
    let Ok(slot) = state.limits.inflight(Listener::Grpc).await else {
        return finish(
            code::RESOURCE_EXHAUSTED,
            "too many requests in flight at the gateway; retry later",
        );
    };
    // The time left when the request leaves (after any wait for a slot), for the app's
    // tonic service (`grpc-timeout`) and for the narun library (`Narun-Timeout-Ms`).
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    nh.insert(
        header::TIMEOUT,
        format!("{}m", left.as_millis().clamp(1, 99_999_999)).as_str(),
    );
    nh.insert(TIMEOUT_MS, timeout_ms_value(left));
    let mut sub = state.inbox.register();
    sub.slot = Some(slot);
    // Kept (with its share of the memory budget) while the request may still have to be
    // sent again: until a responder has it, at most the no-responders window.
    let resend = answer::Resend::new(
        state.client.clone(),
        route.subject.clone(),
        sub.subject.clone(),
        nh.clone(),
        payload.clone(),
        lease,
    );
    if let Err(e) = state
        .client
        .publish_with_reply_and_headers(route.subject.clone(), sub.subject.clone(), nh, payload)
        .await
    {
        tracing::warn!(subject = %route.subject, error = %e, "NATS publish failed");
        return finish(code::INTERNAL, "internal server error (NATS communication)");
    }
    answer::respond(state, sub, deadline, label, started, resend).await
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
    use crate::grpc::status::code_name;
    use narun_wire::grpc::{percent_decode, percent_encode};
    use std::time::Duration;

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
        // A client cannot set the deadline the app sees.
        assert!(is_reserved("narun-timeout-ms") && is_reserved("narun-grpc-stream"));
    }
}
