//! One call: the path picks the route, the deadline is set, the request
//! headers become NATS headers, the one request message is read and unframed,
//! and the request is published to the route's subject; [`super::answer`]
//! takes it from there.

use crate::limits::{BodyError, Listener};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use narun_wire::grpc::{header, request_metadata, single_message, timeout_value};
use narun_wire::names::{GRPC_METHOD_HEADER, TIMEOUT_MS, timeout_ms_value};
use std::sync::Arc;
use std::time::Instant;

use super::status::trailers_only;
use super::{
    GrpcResponse, MAX_REQUEST_MESSAGE, STREAM_HEADER, State, answer, code, parse_grpc_timeout,
};

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
    request_metadata(req.headers(), &mut nh);
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
    nh.insert(header::TIMEOUT, timeout_value(left).as_str());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::status::code_name;
    use narun_wire::grpc::{is_reserved_request_header, percent_decode, percent_encode};
    use std::time::Duration;

    #[test]
    fn timeouts_and_reserved_names() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(percent_decode(&percent_encode("é 100%")), "é 100%");
        assert_eq!(code_name(4), "DEADLINE_EXCEEDED");
        let is_reserved = is_reserved_request_header;
        assert!(is_reserved("grpc-timeout") && is_reserved("te") && !is_reserved("x-echo"));
        // A client cannot set the deadline the app sees.
        assert!(is_reserved("narun-timeout-ms") && is_reserved("narun-grpc-stream"));
    }
}
