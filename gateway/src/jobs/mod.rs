//! Async requests: routes with `async = true` (or `"allow"` + `Prefer: respond-async`)
//! answer `202 Accepted` once the request is stored in JetStream, and workers run it later.
//!
//! ```text
//! enqueue (this file)                 worker.rs                          api.rs
//! ──────────────────                  ─────────                          ──────
//! body read within the limits         durable pull consumer,             GET    /_jobs/<id>
//! KV narun-job-state <id> = queued    at most `workers` jobs at once     GET    /_jobs/<id>/result
//! publish narun.jobs.<service>        record the attempt, call the       DELETE /_jobs/<id>
//!   (Nats-Msg-Id = id), await the     service (proxy::call), store the
//!   stream's ack                      result, then ack; a failure: NAK
//! 202 + Location: /_jobs/<id>         with the backoff as delay
//! ```
//!
//! Nothing of a job stays in the gateway's memory: the body is charged to the memory
//! budget while it is read and published, then dropped; a worker holds at most one
//! message per free worker slot (the pull batch is the number of free slots). The names
//! and the retry rules are the wire contract's ([`narun_wire::jobs`]).

pub(crate) mod api;
pub(crate) mod worker;

use crate::Shared;
use crate::config::{
    AsyncMode, DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BACKOFF_MS, JobsConfig, RouteConfig,
};
use crate::proxy::{GwError, Peer, Resp};
use crate::router::Target;
use async_nats::jetstream;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use narun_wire::jobs::{self as wire, Envelope, JobRecord, Stores};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::OnceCell;

/// `gateway_jobs_total{event}`: what happened to jobs at this gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobEvent {
    /// `accepted` (202), `refused` (503: queue full or unavailable), `done`, `retried`
    /// (an attempt failed, another follows), `failed` (no attempt left).
    pub event: &'static str,
}

/// Bytes a queued message carries besides the request (the envelope headers).
const ENVELOPE_ROOM: usize = 1024;

/// How one route runs its requests as jobs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobRoute {
    pub mode: AsyncMode,
    pub max_attempts: u32,
    pub backoff: Duration,
}

impl JobRoute {
    /// The job settings of route `r`; `None` when it is not async.
    pub(crate) fn of(r: &RouteConfig) -> Option<JobRoute> {
        let mode = r.async_mode();
        (mode != AsyncMode::Off).then(|| JobRoute {
            mode,
            max_attempts: r.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            backoff: Duration::from_millis(r.retry_backoff_ms.unwrap_or(DEFAULT_RETRY_BACKOFF_MS)),
        })
    }
}

/// Whether a request becomes a job: `Some(prefer)` (`prefer` = the client asked with
/// `Prefer: respond-async`, answered with `Preference-Applied`), `None` = answer it now.
pub(crate) fn wanted(mode: AsyncMode, headers: &http::HeaderMap) -> Option<bool> {
    let prefer = headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    });
    match mode {
        AsyncMode::Off => None,
        AsyncMode::Always => Some(prefer),
        AsyncMode::Allow => prefer.then_some(true),
    }
}

/// The gateway's job machinery: settings, the node name attempts are recorded with, and
/// the stream and buckets, opened (or created) on first use, since the gateway starts
/// while NATS may still be down.
pub(crate) struct Jobs {
    pub js: jetstream::Context,
    pub config: JobsConfig,
    /// `[gateway.jobs.auth]`: opens every job's `/_jobs/` API ([`api`]).
    pub auth: Option<std::sync::Arc<crate::auth::Policy>>,
    node: OnceLock<String>,
    ready: OnceCell<Stores>,
    events: Family<JobEvent, Counter>,
}

impl Jobs {
    pub(crate) fn new(
        client: &async_nats::Client,
        config: JobsConfig,
        auth: Option<std::sync::Arc<crate::auth::Policy>>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Jobs {
        let events = Family::<JobEvent, Counter>::default();
        registry.register(
            "gateway_jobs",
            "Async jobs at this gateway by event: accepted, refused, done, retried, failed",
            events.clone(),
        );
        Jobs {
            js: jetstream::new(client.clone()),
            config,
            auth,
            node: OnceLock::new(),
            ready: OnceCell::new(),
            events,
        }
    }

    /// Count a job `event` (`gateway_jobs_total`).
    pub(crate) fn count(&self, event: &'static str) {
        self.events.get_or_create(&JobEvent { event }).inc();
    }

    pub(crate) fn set_node(&self, node: String) {
        let _ = self.node.set(node);
    }

    /// The node attempts are recorded with (narund's node id; else the default node id
    /// of this host, `narun_wire::names::default_node_id`).
    pub(crate) fn node(&self) -> &str {
        self.node.get_or_init(|| {
            narun_wire::names::default_node_id().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no node id for job attempts: recording them as \"unknown\"");
                "unknown".to_string()
            })
        })
    }

    /// The job buckets and the stream, created when missing.
    pub(crate) async fn stores(&self) -> Result<&Stores, String> {
        self.ready
            .get_or_try_init(|| async {
                wire::ensure_stream(&self.js, self.config.max_queue_bytes as i64, None)
                    .await
                    .map_err(|e| e.to_string())?;
                wire::ensure_stores(
                    &self.js,
                    Duration::from_secs(self.config.retention_sec),
                    None,
                )
                .await
                .map_err(|e| e.to_string())
            })
            .await
    }
}

fn unavailable(what: impl std::fmt::Display) -> GwError {
    GwError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Job queue unavailable: {what}"),
    )
}

/// Store the request as a job and answer `202 Accepted` (`Location: /_jobs/<id>`,
/// `Narun-Job-Id`). The request is durably stored (the stream acknowledged it) before
/// the answer; any failure before that is the client's to retry (503).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn enqueue(
    state: &Shared,
    jobs: &Jobs,
    target: &Target,
    req: Request<hyper::body::Incoming>,
    normalised: Option<String>,
    peer: &Peer,
    rid: &HeaderValue,
    prefer: bool,
) -> Result<Resp, GwError> {
    let Some(route) = target.jobs else {
        return Err(GwError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "route is not async",
        ));
    };
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(unavailable("the gateway is not connected to NATS"));
    }
    let reserve = ENVELOPE_ROOM + target.path.len() + target.subject.len();
    let (parts, body, lease) =
        crate::proxy::read_request(state, req, normalised, peer, rid, Some(reserve)).await?;
    let stores = match jobs.stores().await {
        Ok(s) => s,
        Err(e) => {
            jobs.count("refused");
            return Err(unavailable(e));
        }
    };
    let id = match wire::new_id() {
        Ok(id) => id,
        Err(e) => {
            jobs.count("refused");
            return Err(unavailable(format!(
                "no job id: the kernel gave no randomness: {e}"
            )));
        }
    };
    let env = Envelope {
        id,
        route: target.path.to_string(),
        target: target.subject.to_string(),
        mode: target.mode.as_str().into(),
        timeout_ms: target.timeout.as_millis().min(u64::MAX as u128) as u64,
        max_attempts: route.max_attempts,
        backoff_ms: route.backoff.as_millis().min(u64::MAX as u128) as u64,
        peer: peer.addr_text.clone(),
    };
    let payload = narun_wire::bhttp::encode_request(&parts, &body);
    drop(body);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut record = JobRecord::queued(&env, parts.method.as_str(), &path);
    // Who may see the job: the route's `auth` identity, and the host it was routed by
    // (api.rs). `Narun-Auth-User` is the gateway's own (clients' are removed).
    if target.auth.is_some() {
        let user = parts.headers.get(&crate::proxy::AUTH_USER);
        record.owner = Some(user.and_then(|u| u.to_str().ok()).unwrap_or("").to_owned());
    }
    record.host = match parts.uri.authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
    };
    let json = serde_json::to_vec(&record).expect("a record serializes");
    // The record first: a worker that takes the message always finds it.
    if let Err(e) = stores.state.create(&env.id, json.into()).await {
        jobs.count("refused");
        return Err(unavailable(format!("writing the job record: {e}")));
    }
    let published = async {
        jobs.js
            .publish_with_headers(
                wire::subject(&target.subject),
                env.to_headers(&env.id),
                Bytes::from(payload),
            )
            .await?
            .await
    }
    .await;
    drop(lease);
    if let Err(e) = published {
        let _ = stores.state.purge(&env.id).await;
        tracing::warn!(id = %env.id, error = %e, "queueing a job failed");
        jobs.count("refused");
        return Err(unavailable(format!(
            "storing the request: {e} (the queue may be full: [gateway.jobs] max_queue_bytes)"
        )));
    }
    jobs.count("accepted");
    Ok(accepted(&record, prefer))
}

/// `202 Accepted` for a stored job.
fn accepted(record: &JobRecord, prefer: bool) -> Resp {
    let location = format!("{}{}", wire::HTTP_PREFIX, record.id);
    let body = serde_json::json!({
        "id": record.id,
        "state": record.state,
        "location": location,
    });
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = StatusCode::ACCEPTED;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&record.id) {
        h.insert(wire::ID_HEADER, v);
    }
    if prefer {
        h.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_respond_async_decides_on_allow_routes_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(wanted(AsyncMode::Off, &h), None);
        assert_eq!(wanted(AsyncMode::Allow, &h), None);
        assert_eq!(wanted(AsyncMode::Always, &h), Some(false));
        h.insert("prefer", HeaderValue::from_static("wait=10, Respond-Async"));
        assert_eq!(wanted(AsyncMode::Allow, &h), Some(true));
        assert_eq!(wanted(AsyncMode::Always, &h), Some(true));
        assert_eq!(wanted(AsyncMode::Off, &h), None);
        h.insert("prefer", HeaderValue::from_static("respond-asyncx"));
        assert_eq!(wanted(AsyncMode::Allow, &h), None);
    }
}
