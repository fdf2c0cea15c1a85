//! W3C trace context at the edge: every request the gateway forwards belongs to a trace.
//!
//! The client's `traceparent` is hostile input. The gateway
//!
//! * **continues** the client's trace when it sent exactly one valid `traceparent`
//!   ([`narun_wire::trace::TraceParent::parse`], strict), keeping a well-formed `tracestate`;
//! * **starts** a trace (fresh random trace id) when the client sent none, and when its
//!   value is malformed or repeated: the bad value is ignored (logged at debug level) and
//!   its `tracestate` dropped with it;
//!
//! and in both cases forwards the request as a child of a span of its own (a new span id,
//! the client's span as its parent): `traceparent` = trace id + the gateway's span id. It
//! travels as the NATS headers `traceparent`/`tracestate` (BHTTP, raw and gRPC routes: what
//! the `narun` library reads) and replaces the client's HTTP headers of the same name (what
//! a BHTTP handler, a reverse-proxy upstream or a stored job sees), so the app never sees
//! the client's raw value.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use narun_wire::trace::{TRACEPARENT, TRACEPARENT_HEADER, TRACESTATE, TRACESTATE_HEADER};
use narun_wire::trace::{TraceContext, TraceParentError};
use std::str::FromStr;

// Looked up as names, not `&str`s: a `&str` is parsed into a name on every lookup.
static PARENT: HeaderName = HeaderName::from_static(TRACEPARENT);
static STATE: HeaderName = HeaderName::from_static(TRACESTATE);

/// The context the gateway forwards a request with `h` (HTTP headers or gRPC metadata) in.
pub(crate) fn incoming(h: &HeaderMap) -> TraceContext {
    let mut all = h.get_all(&PARENT).iter();
    let (first, more) = (all.next(), all.next().is_some());
    let parent = match first {
        None => None,
        Some(_) if more => {
            tracing::debug!("ignoring a request's repeated traceparent header: a new trace");
            return TraceContext::root();
        }
        Some(v) => Some(v.to_str().map_err(|_| TraceParentError::Delimiter)),
    };
    let state = h
        .get(&STATE)
        .and_then(|v| v.to_str().ok())
        // W3C allows a tracestate in several headers; the gateway keeps the first only.
        .filter(|_| h.get_all(&STATE).iter().nth(1).is_none());
    match parent {
        None => TraceContext::root(),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "ignoring a request's traceparent: a new trace");
            TraceContext::root()
        }
        Some(Ok(v)) => {
            let (ctx, err) = TraceContext::continue_or_start(Some(v), state);
            if let Some(e) = err {
                tracing::debug!(error = %e, "ignoring a request's traceparent: a new trace");
            }
            ctx
        }
    }
}

/// Replace the request's `traceparent`/`tracestate` with those of the trace it is forwarded
/// in ([`incoming`]), which is returned.
pub(crate) fn rewrite(h: &mut HeaderMap) -> TraceContext {
    let ctx = incoming(h);
    h.remove(&STATE);
    if let Ok(v) = HeaderValue::try_from(ctx.traceparent()) {
        h.insert(PARENT.clone(), v);
    }
    if let Some(s) = ctx
        .state
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        h.insert(STATE.clone(), s);
    }
    ctx
}

/// The gateway's span of one forwarded request, exported to OTLP when dropped (feature
/// `otlp`, with `OTEL_EXPORTER_OTLP_ENDPOINT` set; otherwise nothing is recorded).
#[cfg(feature = "otlp")]
pub(crate) struct Exported {
    ctx: TraceContext,
    name: String,
    start: std::time::SystemTime,
    pub(crate) error: Option<String>,
}

#[cfg(feature = "otlp")]
impl Exported {
    pub(crate) fn start(ctx: &TraceContext, name: String) -> Option<Exported> {
        narun_wire::otlp::is_installed().then(|| Exported {
            ctx: ctx.clone(),
            name,
            start: std::time::SystemTime::now(),
            error: None,
        })
    }
}

#[cfg(feature = "otlp")]
impl Drop for Exported {
    fn drop(&mut self) {
        narun_wire::otlp::record(narun_wire::otlp::Span {
            ctx: self.ctx.clone(),
            name: std::mem::take(&mut self.name).into(),
            kind: narun_wire::otlp::Kind::Server,
            start: self.start,
            end: std::time::SystemTime::now(),
            attributes: Vec::new(),
            error: self.error.take(),
        });
    }
}

/// Copy the (rewritten, hence valid) `traceparent`/`tracestate` of `h` into NATS headers.
pub(crate) fn to_nats(h: &HeaderMap, nh: &mut async_nats::HeaderMap) {
    for (name, nats) in [(&PARENT, TRACEPARENT_HEADER), (&STATE, TRACESTATE_HEADER)] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok())
            && let Ok(v) = async_nats::HeaderValue::from_str(v)
        {
            nh.insert(nats, v);
        }
    }
}

/// `traceparent` or `tracestate`, in any case (copied on by [`to_nats`] or [`incoming`],
/// never verbatim).
pub(crate) fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT) || name.eq_ignore_ascii_case(TRACESTATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::trace::TraceParent;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn continues_a_valid_trace_as_a_child_span() {
        let mut h = headers(&[("traceparent", GOOD.as_bytes()), ("tracestate", b"a=b")]);
        rewrite(&mut h);
        let out = TraceParent::parse(h["traceparent"].to_str().unwrap()).unwrap();
        assert_eq!(out.trace_id.to_string(), &GOOD[3..35]);
        assert_ne!(
            out.parent_id.to_string(),
            &GOOD[36..52],
            "the gateway's span"
        );
        assert_eq!(h["tracestate"], "a=b");
        let mut nh = async_nats::HeaderMap::new();
        to_nats(&h, &mut nh);
        let c = TraceContext::from_nats(Some(&nh)).unwrap();
        assert_eq!(c.trace_id, out.trace_id);
        assert_eq!(c.parent_id, Some(out.parent_id));
        assert_eq!(c.state.as_deref(), Some("a=b"));
    }

    #[test]
    fn starts_a_trace_for_missing_malformed_or_repeated_values() {
        let bad_state: &[u8] = b"a=b";
        for h in [
            headers(&[("tracestate", bad_state)]),
            headers(&[("traceparent", b"00-zz"), ("tracestate", bad_state)]),
            headers(&[
                ("traceparent", GOOD.to_uppercase().as_bytes()),
                ("tracestate", bad_state),
            ]),
            headers(&[("traceparent", b"caf\xe9"), ("tracestate", bad_state)]),
            headers(&[
                ("traceparent", GOOD.as_bytes()),
                ("traceparent", GOOD.as_bytes()),
                ("tracestate", bad_state),
            ]),
        ] {
            let mut h = h;
            rewrite(&mut h);
            let out = TraceParent::parse(h["traceparent"].to_str().unwrap()).unwrap();
            assert_ne!(out.trace_id.to_string(), &GOOD[3..35]);
            assert_eq!(h.get_all("traceparent").iter().count(), 1);
            assert!(
                h.get("tracestate").is_none(),
                "no tracestate without the trace"
            );
        }
        // A hostile tracestate alone is dropped; the trace is continued.
        let mut h = headers(&[("traceparent", GOOD.as_bytes()), ("tracestate", b"x")]);
        rewrite(&mut h);
        assert!(h.get("tracestate").is_none());
        assert!(h["traceparent"].to_str().unwrap().contains(&GOOD[3..35]));
    }
}
