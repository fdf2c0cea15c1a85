//! Async jobs: HTTP requests the gateway stores in JetStream and runs later
//! (docs/jobs.md, "Async requests").
//!
//! ```text
//! client ── POST /report (route async = true) ──▶ gateway ── KV narun-job-state: <id> = queued
//!        ◀── 202 Accepted, Location: /_jobs/<id> ──┘       └─ publish narun.jobs.<service> (stream narun-jobs)
//!
//! worker (durable pull consumer narun-job-workers) ── takes the message, records the attempt,
//!   calls the service like a normal request (Narun-Job-Id, Narun-Job-Attempt headers),
//!   stores the response (KV narun-job-results, or object store narun-job-blobs when large),
//!   marks the job done, and only then acks the message.
//! ```
//!
//! Everything the gateway, its workers and narunctl must agree on lives here: the stream,
//! consumer, bucket and header names, the [`Envelope`] headers a queued message carries,
//! the [`JobRecord`] JSON kept per job, and the retry rules ([`verdict`], [`backoff`]) as
//! pure functions.
//!
//! Delivery is at-least-once (a worker that dies mid-attempt leaves the message unacked,
//! and JetStream hands it out again); the job id makes it exactly-once from the client's
//! view: a job whose record says `done` is never run again, and the service sees the job id
//! and the attempt number so it can deduplicate its own side effects.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The work-queue stream that holds queued requests (`narun.jobs.>`).
pub const STREAM: &str = "narun-jobs";
/// Subjects of queued requests: `narun.jobs.<service>` ([`subject`]).
pub const SUBJECT_PREFIX: &str = "narun.jobs";
/// The durable pull consumer the gateways' workers share.
pub const CONSUMER: &str = "narun-job-workers";
/// KV bucket: key = job id, value = [`JobRecord`] JSON. TTL = the gateway's retention.
pub const STATE_BUCKET: &str = "narun-job-state";
/// KV bucket: key = job id, value = the job's response as Binary HTTP (small results).
pub const RESULTS_BUCKET: &str = "narun-job-results";
/// Object store: large results (`<id>.result`) and the requests of failed or cancelled
/// jobs, kept for `narunctl jobs retry` (`<id>.request`).
pub const BLOBS_BUCKET: &str = "narun-job-blobs";
/// The gateway's job API: `GET /_jobs/<id>`, `GET /_jobs/<id>/result`, `DELETE /_jobs/<id>`.
pub const HTTP_PREFIX: &str = "/_jobs/";

/// Header the service sees (and the 202 answer carries): the job id.
pub const ID_HEADER: &str = "Narun-Job-Id";
/// Header the service sees: the attempt number, from 1.
pub const ATTEMPT_HEADER: &str = "Narun-Job-Attempt";

/// Largest `max_attempts` a route may set.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// `narun.jobs.<service>`: the subject a job for `service` (the route's target) is queued on.
pub fn subject(service: &str) -> String {
    format!("{SUBJECT_PREFIX}.{service}")
}

/// Object name of a large result in [`BLOBS_BUCKET`].
pub fn result_object(id: &str) -> String {
    format!("{id}.result")
}

/// Object name of a kept request in [`BLOBS_BUCKET`].
pub fn request_object(id: &str) -> String {
    format!("{id}.request")
}

/// A fresh job id: 128 bits from the kernel's random source, as 32 lower-case hex
/// characters. Not a NUID: NUIDs share a prefix per process and count up by a small step,
/// so one job id would let a client guess the next ones (and the id is what lets a client
/// read a job's result). `Err` only when the kernel gives no randomness.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why a job id is not one: `None` when `id` is 1–64 characters of `[A-Za-z0-9_-]` (the
/// ids narun makes are NUIDs; `narunctl jobs retry` appends `-r<n>` to message ids only).
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("the job id is empty".into());
    }
    if id.len() > 64 {
        return Some(format!(
            "the job id is {} characters long (at most 64)",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Some(format!(
            "the job id contains {c:?} (only letters, digits, '-' and '_')"
        ));
    }
    None
}

/// Headers of a queued message besides the [`ID_HEADER`]: how to call the service.
pub mod headers {
    /// The route's configured path (the worker finds the route's metrics by it).
    pub const ROUTE: &str = "Narun-Job-Route";
    /// The NATS subject to call (service name of a bhttp route, subject of a raw route).
    pub const TARGET: &str = "Narun-Job-Target";
    /// `bhttp` or `raw`.
    pub const MODE: &str = "Narun-Job-Mode";
    /// Timeout of one attempt.
    pub const TIMEOUT_MS: &str = "Narun-Job-Timeout-Ms";
    /// Attempts before the job fails.
    pub const MAX_ATTEMPTS: &str = "Narun-Job-Max-Attempts";
    /// First pause before a retry (doubles per failed attempt).
    pub const BACKOFF_MS: &str = "Narun-Job-Backoff-Ms";
    /// The client's `ip:port` (raw routes' `X-Original-RemoteAddr`).
    pub const PEER: &str = "Narun-Job-Peer";
    /// JetStream's de-duplication id (`Nats-Msg-Id`): the job id, `-r<n>` for a retry.
    pub const MSG_ID: &str = "Nats-Msg-Id";
}

/// How a queued job calls its service: the message headers of [`headers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub route: String,
    pub target: String,
    pub mode: String,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    #[serde(default)]
    pub peer: String,
}

/// A queued message whose headers are not a job's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a narun job message: {0}")]
pub struct EnvelopeError(pub String);

impl Envelope {
    /// The message headers; `msg_id` becomes `Nats-Msg-Id` (JetStream de-duplication).
    pub fn to_headers(&self, msg_id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut set = |k: &'static str, v: &str| {
            if let Ok(v) = v.parse::<async_nats::HeaderValue>() {
                h.insert(k, v);
            }
        };
        set(ID_HEADER, &self.id);
        set(headers::MSG_ID, msg_id);
        set(headers::ROUTE, &self.route);
        set(headers::TARGET, &self.target);
        set(headers::MODE, &self.mode);
        set(headers::TIMEOUT_MS, &self.timeout_ms.to_string());
        set(headers::MAX_ATTEMPTS, &self.max_attempts.to_string());
        set(headers::BACKOFF_MS, &self.backoff_ms.to_string());
        set(headers::PEER, &self.peer);
        h
    }

    /// Read the headers of a queued message.
    pub fn from_headers(h: Option<&HeaderMap>) -> Result<Envelope, EnvelopeError> {
        let h = h.ok_or_else(|| EnvelopeError("no headers".into()))?;
        let get = |k: &str| -> Result<String, EnvelopeError> {
            h.get(k)
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| EnvelopeError(format!("no {k} header")))
        };
        let num = |k: &str| -> Result<u64, EnvelopeError> {
            get(k)?
                .trim()
                .parse()
                .map_err(|_| EnvelopeError(format!("{k} is not a number")))
        };
        let id = get(ID_HEADER)?;
        if let Some(p) = id_problem(&id) {
            return Err(EnvelopeError(p));
        }
        Ok(Envelope {
            id,
            route: get(headers::ROUTE)?,
            target: get(headers::TARGET)?,
            mode: get(headers::MODE)?,
            timeout_ms: num(headers::TIMEOUT_MS)?,
            max_attempts: (num(headers::MAX_ATTEMPTS)? as u32).clamp(1, MAX_ATTEMPTS_LIMIT),
            backoff_ms: num(headers::BACKOFF_MS)?,
            peer: get(headers::PEER).unwrap_or_default(),
        })
    }
}

/// The buckets of a job's state and results.
#[derive(Clone)]
pub struct Stores {
    /// [`STATE_BUCKET`].
    pub state: async_nats::jetstream::kv::Store,
    /// [`RESULTS_BUCKET`].
    pub results: async_nats::jetstream::kv::Store,
    /// [`BLOBS_BUCKET`].
    pub blobs: async_nats::jetstream::object_store::ObjectStore,
}

/// Open the job buckets, creating them when they do not exist: every value expires after
/// `retention`. Existing buckets are used as they are.
pub async fn ensure_stores(
    js: &async_nats::jetstream::Context,
    retention: Duration,
    replicas: Option<usize>,
) -> Result<Stores, crate::jetstream::JetStreamError> {
    use crate::jetstream::{JetStreamError, ensure_kv, open_object_store, replicas_or_default};
    let replicas = replicas_or_default(js, replicas);
    let state = ensure_kv(
        js,
        STATE_BUCKET,
        "narun async jobs: state and attempts per job id",
        1,
        Some(retention),
        replicas,
    )
    .await?;
    let results = ensure_kv(
        js,
        RESULTS_BUCKET,
        "narun async jobs: responses (Binary HTTP) per job id",
        1,
        Some(retention),
        replicas,
    )
    .await?;
    let blobs = match open_object_store(js, BLOBS_BUCKET).await? {
        Some(b) => b,
        None => js
            .create_object_store(async_nats::jetstream::object_store::Config {
                bucket: BLOBS_BUCKET.into(),
                description: Some(
                    "narun async jobs: large responses, requests kept for retry".into(),
                ),
                max_age: retention,
                num_replicas: replicas.clamp(1, crate::jetstream::MAX_REPLICAS),
                ..Default::default()
            })
            .await
            .map_err(|e| JetStreamError::Create {
                what: "object store",
                bucket: BLOBS_BUCKET.into(),
                message: e.to_string(),
            })?,
    };
    Ok(Stores {
        state,
        results,
        blobs,
    })
}

/// Open the job buckets; `Ok(None)` when there are none (no async route ever ran).
pub async fn open_stores(
    js: &async_nats::jetstream::Context,
) -> Result<Option<Stores>, crate::jetstream::JetStreamError> {
    use crate::jetstream::{open_kv, open_object_store};
    let (Some(state), Some(results), Some(blobs)) = (
        open_kv(js, STATE_BUCKET).await?,
        open_kv(js, RESULTS_BUCKET).await?,
        open_object_store(js, BLOBS_BUCKET).await?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Stores {
        state,
        results,
        blobs,
    }))
}

/// Open the work-queue stream [`STREAM`], creating it when it does not exist: every
/// `narun.jobs.>` message until a worker acks it, at most `max_bytes` in all (a full queue
/// refuses new jobs), messages up to the server's `max_payload`, duplicates (same
/// `Nats-Msg-Id`) dropped for 2 minutes.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    max_bytes: i64,
    replicas: Option<usize>,
) -> Result<async_nats::jetstream::stream::Stream, crate::jetstream::JetStreamError> {
    use async_nats::jetstream::stream;
    let replicas = crate::jetstream::replicas_or_default(js, replicas);
    js.get_or_create_stream(stream::Config {
        name: STREAM.into(),
        description: Some("narun async jobs: queued HTTP requests (Binary HTTP)".into()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        max_bytes,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas.clamp(1, crate::jetstream::MAX_REPLICAS),
        ..Default::default()
    })
    .await
    .map_err(|e| crate::jetstream::JetStreamError::Create {
        what: "stream",
        bucket: STREAM.into(),
        message: e.to_string(),
    })
}

/// Why [`update`] did not change a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("no job {0} (unknown, or its record expired after the retention time)")]
    NotFound(String),
    /// The change does not apply to the job's state (the reason names it).
    #[error("{0}")]
    Refused(String),
    #[error("job store: {0}")]
    Store(String),
}

/// Read job `id`'s record and its KV revision; `Ok(None)` when there is none.
pub async fn read(
    state: &async_nats::jetstream::kv::Store,
    id: &str,
) -> Result<Option<(JobRecord, u64)>, UpdateError> {
    let entry = state
        .entry(id)
        .await
        .map_err(|e| UpdateError::Store(format!("reading job {id}: {e}")))?;
    match entry {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            let rec = serde_json::from_slice(&e.value)
                .map_err(|err| UpdateError::Store(format!("job {id}: bad record: {err}")))?;
            Ok(Some((rec, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Change job `id`'s record with `change` (which may refuse with a reason), written only
/// if nobody changed it meanwhile (compare-and-set on the KV revision; re-read and
/// re-applied when somebody did). Returns the record as written.
pub async fn update(
    state: &async_nats::jetstream::kv::Store,
    id: &str,
    mut change: impl FnMut(&mut JobRecord) -> Result<(), String>,
) -> Result<JobRecord, UpdateError> {
    use async_nats::jetstream::kv::UpdateErrorKind;
    for _ in 0..16 {
        let Some((mut rec, rev)) = read(state, id).await? else {
            return Err(UpdateError::NotFound(id.into()));
        };
        change(&mut rec).map_err(UpdateError::Refused)?;
        rec.updated = now();
        let json = serde_json::to_vec(&rec).expect("a record serializes");
        match state.update(id, json.into(), rev).await {
            Ok(_) => return Ok(rec),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(UpdateError::Store(format!("writing job {id}: {e}"))),
        }
    }
    Err(UpdateError::Store(format!(
        "job {id} keeps changing under us; try again"
    )))
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Stored, waiting for a worker.
    Queued,
    /// A worker is calling the service.
    Running,
    /// An attempt failed; the next one waits for its backoff.
    Retrying,
    /// The service answered (any status below 500); the result is stored.
    Done,
    /// Every attempt failed (or the request can never succeed).
    Failed,
    /// Cancelled while queued or retrying (`DELETE /_jobs/<id>`, `narunctl jobs cancel`).
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Done, failed or cancelled: no worker will touch it again (until a retry).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// One call of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// From 1; the service saw it in [`ATTEMPT_HEADER`].
    pub attempt: u32,
    /// RFC 3339 UTC.
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// The node whose gateway ran it.
    pub node: String,
    /// The HTTP status of the answer (the gateway's own for timeouts, no responders, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a job's response is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    pub status: u16,
    /// Bytes of the response body.
    pub body_bytes: u64,
    /// `kv` ([`RESULTS_BUCKET`]) or `object` ([`BLOBS_BUCKET`], [`result_object`]).
    pub stored: String,
}

/// The value of a job in [`STATE_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    /// The service (the route's target subject).
    pub service: String,
    pub route: String,
    pub method: String,
    /// Path and query of the request.
    pub path: String,
    pub mode: String,
    pub created: String,
    pub updated: String,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_ms: u64,
    /// Attempts made before the current run (a `narunctl jobs retry` starts a new run with
    /// `max_attempts` more attempts).
    #[serde(default)]
    pub run_base: u32,
    /// Times the job was retried by an operator.
    #[serde(default)]
    pub retries: u32,
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<StoredResult>,
    /// Why the job failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who submitted the job through a route with `auth`: the identity the gateway
    /// authenticated (`""` when it had none it could name). Only that client (or a
    /// `[gateway.jobs] auth` credential) may read or cancel the job over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The host the request was routed by (virtual hosts): with `route`, which route's
    /// `auth` guards the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl JobRecord {
    /// A queued job for `env`'s request `method` `path`.
    pub fn queued(env: &Envelope, method: &str, path: &str) -> JobRecord {
        let now = now();
        JobRecord {
            id: env.id.clone(),
            state: JobState::Queued,
            service: env.target.clone(),
            route: env.route.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
            mode: env.mode.clone(),
            created: now.clone(),
            updated: now,
            max_attempts: env.max_attempts,
            timeout_ms: env.timeout_ms,
            backoff_ms: env.backoff_ms,
            run_base: 0,
            retries: 0,
            attempts: Vec::new(),
            next_attempt_at: None,
            result: None,
            error: None,
            owner: None,
            host: None,
        }
    }

    /// The envelope to queue this job again with.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            id: self.id.clone(),
            route: self.route.clone(),
            target: self.service.clone(),
            mode: self.mode.clone(),
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            backoff_ms: self.backoff_ms,
            peer: String::new(),
        }
    }

    /// Attempts made in the current run.
    pub fn attempts_in_run(&self) -> u32 {
        (self.attempts.len() as u32).saturating_sub(self.run_base)
    }

    /// Whether `DELETE` may cancel it: only a job no worker is calling the service for.
    pub fn cancel_problem(&self) -> Option<String> {
        match self.state {
            JobState::Queued | JobState::Retrying => None,
            s => Some(format!(
                "job {} is {}: only queued or retrying jobs can be cancelled",
                self.id,
                s.as_str()
            )),
        }
    }

    /// Whether `narunctl jobs retry` may queue it again: failed or cancelled jobs.
    pub fn retry_problem(&self) -> Option<String> {
        match self.state {
            JobState::Failed | JobState::Cancelled => None,
            s => Some(format!(
                "job {} is {}: only failed or cancelled jobs can be retried",
                self.id,
                s.as_str()
            )),
        }
    }

    /// Mark the last attempt interrupted: a worker died (or lost its lease) while it ran.
    pub fn close_interrupted_attempt(&mut self) {
        if let Some(a) = self.attempts.last_mut()
            && a.finished.is_none()
        {
            a.finished = Some(now());
            a.error = Some("interrupted: the worker stopped before the service answered".into());
        }
    }
}

/// How an attempt ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The service answered below 500: the job is done (a 4xx is the service's answer).
    Answered,
    /// 5xx, timeout, no responders, NATS down: worth another attempt.
    Transient,
    /// The request can never succeed (e.g. too large for the server): no retry.
    Permanent,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Done,
    /// Run again after this pause.
    Retry(Duration),
    Failed,
}

/// Pause before retry number `failures` (1 = after the first failed attempt): `base`,
/// doubling per failure, capped at `max`.
pub fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max)
}

/// The retry rule: `attempts` made in this run (the one that just ended included) of
/// `max_attempts`.
pub fn verdict(
    outcome: Outcome,
    attempts: u32,
    max_attempts: u32,
    base: Duration,
    max: Duration,
) -> Verdict {
    match outcome {
        Outcome::Answered => Verdict::Done,
        Outcome::Permanent => Verdict::Failed,
        Outcome::Transient if attempts >= max_attempts => Verdict::Failed,
        Outcome::Transient => Verdict::Retry(backoff(base, max, attempts)),
    }
}

/// The outcome of an answer with HTTP `status`.
pub fn outcome_of_status(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::Transient
    } else {
        Outcome::Answered
    }
}

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `d` from now, RFC 3339 UTC.
pub fn after(d: Duration) -> String {
    rfc3339(time::OffsetDateTime::now_utc() + d)
}

/// `t` as RFC 3339.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn retries_back_off_exponentially_up_to_max_attempts() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(S, max, 1), S);
        assert_eq!(backoff(S, max, 2), 2 * S);
        assert_eq!(backoff(S, max, 3), 4 * S);
        assert_eq!(backoff(S, max, 4), max);
        assert_eq!(backoff(S, max, 40), max);
        assert_eq!(verdict(Outcome::Transient, 1, 3, S, max), Verdict::Retry(S));
        assert_eq!(
            verdict(Outcome::Transient, 2, 3, S, max),
            Verdict::Retry(2 * S)
        );
        assert_eq!(verdict(Outcome::Transient, 3, 3, S, max), Verdict::Failed);
        assert_eq!(verdict(Outcome::Answered, 3, 3, S, max), Verdict::Done);
        assert_eq!(verdict(Outcome::Permanent, 1, 3, S, max), Verdict::Failed);
        assert_eq!(outcome_of_status(404), Outcome::Answered);
        assert_eq!(outcome_of_status(503), Outcome::Transient);
    }

    #[test]
    fn ids_are_checked() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(id_problem(&a), None);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        // Nothing shared between two ids but chance (a NUID shares 12 characters).
        let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        assert!(common < 8, "{a} {b}");
        assert!(id_problem("").unwrap().contains("empty"));
        assert!(id_problem("../x").unwrap().contains("'.'"));
        assert!(id_problem(&"a".repeat(65)).unwrap().contains("65"));
    }

    #[test]
    fn envelopes_round_trip_through_headers() {
        let env = Envelope {
            id: new_id().unwrap(),
            route: "/report".into(),
            target: "reports".into(),
            mode: "bhttp".into(),
            timeout_ms: 1500,
            max_attempts: 3,
            backoff_ms: 100,
            peer: "127.0.0.1:5555".into(),
        };
        let h = env.to_headers(&env.id);
        assert_eq!(h.get(headers::MSG_ID).unwrap().as_str(), env.id);
        assert_eq!(Envelope::from_headers(Some(&h)).unwrap(), env);
        assert!(Envelope::from_headers(None).is_err());
        let mut bad = h.clone();
        bad.insert(headers::TIMEOUT_MS, "soon");
        assert!(
            Envelope::from_headers(Some(&bad))
                .unwrap_err()
                .0
                .contains("Narun-Job-Timeout-Ms")
        );
    }

    #[test]
    fn only_waiting_jobs_cancel_and_only_finished_ones_retry() {
        let env = Envelope {
            id: "j1".into(),
            route: "/r".into(),
            target: "s".into(),
            mode: "bhttp".into(),
            timeout_ms: 1,
            max_attempts: 1,
            backoff_ms: 1,
            peer: String::new(),
        };
        let mut r = JobRecord::queued(&env, "POST", "/r");
        assert_eq!(r.cancel_problem(), None);
        assert!(r.retry_problem().unwrap().contains("is queued"));
        r.state = JobState::Running;
        assert!(r.cancel_problem().unwrap().contains("job j1 is running"));
        r.state = JobState::Done;
        assert!(r.cancel_problem().unwrap().contains("is done"));
        r.state = JobState::Failed;
        assert_eq!(r.retry_problem(), None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"failed\""), "{json}");
        assert_eq!(serde_json::from_str::<JobRecord>(&json).unwrap(), r);
    }
}
