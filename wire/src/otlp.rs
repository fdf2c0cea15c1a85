//! OpenTelemetry export of finished spans over OTLP/gRPC (feature `otlp`, off by default).
//!
//! The gateway (feature `otlp`) and the `narun` app library (feature `otlp`) record one span
//! per request they handle, with the W3C ids they already propagate ([`crate::trace`]), and
//! hand it to [`record`]. When [`install`] has been called (both call it at start when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set), a task exports the spans in batches with
//! `opentelemetry-otlp`'s tonic exporter to a collector (`http://host:4317`); otherwise
//! [`record`] does nothing.
//!
//! Spans are built as `opentelemetry_sdk` `SpanData` directly, not through a `tracing`
//! bridge or the SDK's tracer: the ids are the ones on the wire, so the collector joins the
//! gateway's span, the handler's and the handlers of the services it called into one trace.
//!
//! Bounded: at most [`QUEUE`] spans wait for export; beyond that new spans are dropped (and
//! counted, [`dropped`]) rather than slow down requests. An unreachable collector costs one
//! failed export per batch (logged at debug level), never a request.

use crate::trace::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Spans waiting for export at most.
pub const QUEUE: usize = 4096;
/// Spans per export call at most.
pub const BATCH: usize = 512;
/// The standard variable naming the collector (`http://host:4317`).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// What a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Handling a request (the app's handler, the gateway's forwarding).
    Server,
    /// A call to another service.
    Client,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub ctx: TraceContext,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    /// Set when the work failed (the status description).
    pub error: Option<String>,
}

enum Msg {
    Span(Box<Span>),
    Flush(oneshot::Sender<()>),
}

static SINK: OnceLock<mpsc::Sender<Msg>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Why [`install`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP exporter for {endpoint:?}: {reason}")]
    Build { endpoint: String, reason: String },
    #[error("OTLP export is already installed")]
    Installed,
}

/// Export spans to the OTLP/gRPC collector at `endpoint` (e.g. `http://127.0.0.1:4317`) as
/// service `service_name`, from now on. Call within a tokio runtime; once per process.
pub fn install(endpoint: &str, service_name: &str) -> Result<(), OtlpError> {
    let build = |reason: String| OtlpError::Build {
        endpoint: endpoint.to_owned(),
        reason,
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(build(
            "the endpoint must be an http:// or https:// URL".into(),
        ));
    }
    if SINK.get().is_some() {
        return Err(OtlpError::Installed);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| build(e.to_string()))?;
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .build(),
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    SINK.set(tx).map_err(|_| OtlpError::Installed)?;
    let scope = InstrumentationScope::builder("narun")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    tokio::spawn(export_loop(exporter, rx, scope));
    Ok(())
}

/// [`install`] when [`ENDPOINT_ENV`] is set (and not empty); `Ok(false)` when it is not.
pub fn install_from_env(service_name: &str) -> Result<bool, OtlpError> {
    match std::env::var(ENDPOINT_ENV) {
        Ok(e) if !e.trim().is_empty() => install(e.trim(), service_name).map(|()| true),
        _ => Ok(false),
    }
}

/// Whether spans are exported (so whether recording one is worth its cost).
pub fn is_installed() -> bool {
    SINK.get().is_some()
}

/// Spans dropped because the export queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Queue a finished span for export (nothing when not installed; dropped when the queue is
/// full).
pub fn record(span: Span) {
    if let Some(tx) = SINK.get()
        && tx.try_send(Msg::Span(Box::new(span))).is_err()
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wait (at most `timeout`) until every span recorded before has been exported (or its
/// export failed). For shutdown and tests.
pub async fn flush(timeout: Duration) -> bool {
    let Some(tx) = SINK.get() else {
        return true;
    };
    let (done, wait) = oneshot::channel();
    if tx.send(Msg::Flush(done)).await.is_err() {
        return false;
    }
    tokio::time::timeout(timeout, wait).await.is_ok()
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Msg>,
    scope: InstrumentationScope,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Span(s) => batch.push(span_data(*s, &scope)),
                Msg::Flush(f) => flushes.push(f),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty()
            && let Err(e) = exporter.export(std::mem::take(&mut batch)).await
        {
            tracing::debug!(error = %e, "OTLP export failed; its spans are dropped");
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

fn span_data(s: Span, scope: &InstrumentationScope) -> SpanData {
    let state = s
        .ctx
        .state
        .as_deref()
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            OtelTraceId::from_bytes(s.ctx.trace_id.0),
            OtelSpanId::from_bytes(s.ctx.span_id.0),
            TraceFlags::new(s.ctx.flags),
            false,
            state,
        ),
        parent_span_id: s
            .ctx
            .parent_id
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: s.ctx.parent_id.is_some(),
        span_kind: match s.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        },
        name: s.name,
        start_time: s.start,
        end_time: s.end,
        attributes: s
            .attributes
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
