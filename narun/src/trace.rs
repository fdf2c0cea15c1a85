//! Tracing: W3C trace context from the caller, through the handler, to the calls it makes.
//!
//! Every request a narun service handles (HTTP or gRPC) runs
//!
//! * inside a [`tracing`] span `request` with the fields `trace_id` and `span_id` (at level
//!   INFO), so every event the handler logs carries them; with `tracing-subscriber`'s default
//!   format a line reads `… INFO request{trace_id=4bf9… span_id=00f0…}: message`, and narund
//!   lifts the `trace_id` into the JSON log record it publishes (docs/app-library.md);
//! * with a **current trace context** ([`current`]): the caller's trace when the request
//!   carried a valid `traceparent` NATS header (the narun gateway always sends one), a new
//!   span id for this handler with the caller's span as parent; a new trace when there was
//!   none or it was malformed ([`narun_wire::trace`] has the strict parser).
//!
//! A [`crate::Client`] call made while handling the request carries the trace on:
//! `traceparent` = the same trace id, this handler's span id as the parent (and the caller's
//! valid `tracestate` unchanged). A call made outside any handler starts a new trace.
//! [`in_context`] runs other work (a spawned task, a background job) in a context of its own.
//!
//! With the cargo feature `otlp` the handler spans can also be exported to an OpenTelemetry
//! collector: see docs/app-library.md ("Tracing").

pub use narun_wire::trace::{SpanId, TraceContext, TraceId, TraceParent};

use std::future::Future;

tokio::task_local! {
    /// The trace context of the request being handled (set by the request runner).
    static CURRENT: TraceContext;
}

/// The trace context of the request this task is handling, `None` outside a handler (or
/// [`in_context`]). A task spawned from a handler does not inherit it: wrap its future in
/// [`in_context`] with `current()` to keep the trace.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Run `fut` with `ctx` as its current trace context (what [`crate::Client`] calls from it
/// carry).
pub async fn in_context<F: Future>(ctx: TraceContext, fut: F) -> F::Output {
    CURRENT.scope(ctx, fut).await
}

/// The context a request with these NATS headers is handled in.
pub(crate) fn incoming(headers: Option<&async_nats::HeaderMap>) -> TraceContext {
    TraceContext::from_nats(headers).unwrap_or_else(TraceContext::root)
}

/// Run a handler's future in `ctx`, inside its `request` span.
#[cfg(not(feature = "otlp"))]
pub(crate) fn handle<F: Future>(ctx: TraceContext, fut: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let span = tracing::info_span!("request", trace_id = %ctx.trace_id, span_id = %ctx.span_id);
    CURRENT.scope(ctx, fut.instrument(span))
}

/// Run a handler's future in `ctx`, inside its `request` span; when OTLP export is on, the
/// span is exported when the handler ends (or is dropped at its deadline).
#[cfg(feature = "otlp")]
pub(crate) fn handle<F: Future>(ctx: TraceContext, fut: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let span = tracing::info_span!("request", trace_id = %ctx.trace_id, span_id = %ctx.span_id);
    let export = otlp::is_installed().then(|| otlp::Exported {
        ctx: ctx.clone(),
        start: std::time::SystemTime::now(),
        done: false,
    });
    CURRENT.scope(
        ctx,
        async move {
            let mut export = export;
            let out = fut.await;
            if let Some(e) = &mut export {
                e.done = true;
            }
            out
        }
        .instrument(span),
    )
}

/// OpenTelemetry export (feature `otlp`): each handler's span, with the ids above, sent to
/// an OTLP/gRPC collector. The library turns it on when the service starts if
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4317`), with the service's
/// name as `service.name`; [`install`] does it by hand. See [`narun_wire::otlp`].
#[cfg(feature = "otlp")]
pub mod otlp {
    pub use narun_wire::otlp::{ENDPOINT_ENV, OtlpError, dropped, flush, install, is_installed};

    /// A handler's span, recorded when dropped (finished, or cancelled at its deadline).
    pub(crate) struct Exported {
        pub(crate) ctx: super::TraceContext,
        pub(crate) start: std::time::SystemTime,
        pub(crate) done: bool,
    }

    impl Drop for Exported {
        fn drop(&mut self) {
            narun_wire::otlp::record(narun_wire::otlp::Span {
                ctx: self.ctx.clone(),
                name: "request".into(),
                kind: narun_wire::otlp::Kind::Server,
                start: self.start,
                end: std::time::SystemTime::now(),
                attributes: Vec::new(),
                error: (!self.done).then(|| "dropped: the caller's deadline passed".into()),
            });
        }
    }
}

/// Stamp an outgoing call's NATS headers: the current context's trace with its span as the
/// parent, or a new trace outside a handler.
pub(crate) fn inject(headers: &mut async_nats::HeaderMap) {
    match CURRENT.try_with(|c| c.inject(headers)) {
        Ok(()) => {}
        Err(_) => TraceContext::root().inject(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_carry_the_current_span_as_parent() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let ctx = TraceContext::child_of(&parent, Some("k=v"));
        assert!(current().is_none());
        let (seen, headers) = handle(ctx.clone(), async {
            let mut h = async_nats::HeaderMap::new();
            inject(&mut h);
            (current(), h)
        })
        .await;
        assert_eq!(seen.as_ref(), Some(&ctx));
        let callee = TraceContext::from_nats(Some(&headers)).unwrap();
        assert_eq!(callee.trace_id, parent.trace_id);
        assert_eq!(callee.parent_id, Some(ctx.span_id));
        assert_eq!(callee.state.as_deref(), Some("k=v"));

        // Outside a handler: a new trace each time.
        let mut h = async_nats::HeaderMap::new();
        inject(&mut h);
        let fresh = TraceContext::from_nats(Some(&h)).unwrap();
        assert_ne!(fresh.trace_id, parent.trace_id);
        // A request without (or with a malformed) traceparent is handled in a new trace.
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(narun_wire::trace::TRACEPARENT_HEADER, "00-nope");
        let c = incoming(Some(&bad));
        assert_eq!(c.parent_id, None);
        assert_ne!(c.trace_id, parent.trace_id);
    }
}
