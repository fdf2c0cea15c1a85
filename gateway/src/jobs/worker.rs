//! The job workers: a durable pull consumer ([`wire::CONSUMER`], shared by every gateway
//! of the cluster) on the `narun-jobs` stream, at most `workers` jobs at once.
//!
//! One job, one message:
//!
//! 1. The record says `done`, `failed` or `cancelled`: nothing to run (a redelivery after
//!    a crash between the result and the ack, or a cancelled job). The request of a
//!    failed or cancelled job is kept for `narunctl jobs retry`; the message is acked.
//! 2. Otherwise the attempt is recorded first (`running`, attempt n, time, node; a
//!    previous `running` attempt that never finished was interrupted by a dead worker),
//!    then the service is called like a normal request ([`crate::proxy::call`]) with
//!    `Narun-Job-Id` and `Narun-Job-Attempt`. While it runs the message's ack deadline is
//!    pushed back every `ack_wait_sec / 3` (JetStream "in progress").
//! 3. The answer decides ([`wire::verdict`]): below 500, the response is stored and the job
//!    is `done`; 5xx, a timeout or no responders: `retrying` and a NAK with the backoff as
//!    delay (JetStream redelivers it then, to any gateway), or `failed` when the attempts
//!    are used up. The message is acked only after the record is written.
//!
//! A worker killed at any point leaves the message unacked: it comes back after
//! `ack_wait_sec`, and step 1 or 2 picks it up where it was.

use super::Jobs;
use crate::Shared;
use crate::config::RouteMode;
use crate::proxy::GwError;
use crate::router::{Match, Target};
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderValue;
use http_body_util::BodyExt;
use narun_wire::jobs::{self as wire, Attempt, Envelope, JobState, Outcome, StoredResult, Verdict};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Why an attempt's end is not recorded: another attempt of the job runs now.
const SUPERSEDED: &str = "superseded";

/// Run the workers until `stop` turns true. Errors (NATS down, the stream missing) are
/// retried every second; jobs in progress when it stops are left to JetStream.
pub(crate) async fn run(shared: Arc<Shared>, jobs: Arc<Jobs>, mut stop: watch::Receiver<bool>) {
    let workers = jobs.config.workers.max(1) as usize;
    let slots = Arc::new(Semaphore::new(workers));
    loop {
        if *stop.borrow() {
            return;
        }
        let consumer = async {
            jobs.stores().await?;
            let stream = jobs
                .js
                .get_stream(wire::STREAM)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .get_or_create_consumer(
                    wire::CONSUMER,
                    pull::Config {
                        durable_name: Some(wire::CONSUMER.into()),
                        description: Some("narun gateway job workers".into()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(jobs.config.ack_wait_sec),
                        max_deliver: -1,
                        max_ack_pending: 100_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let consumer: jetstream::consumer::Consumer<pull::Config> = match consumer {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "job workers: waiting for the job stream");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // A small batch: at most one message per worker waits in memory.
        let messages = consumer
            .stream()
            .max_messages_per_batch(workers)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "job workers: pulling failed");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let slot = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                s = slots.clone().acquire_owned() => s.expect("never closed"),
            };
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                m = messages.next() => m,
            };
            match next {
                Some(Ok(msg)) => {
                    let (shared, jobs) = (shared.clone(), jobs.clone());
                    tokio::spawn(async move {
                        run_one(&shared, &jobs, msg).await;
                        drop(slot);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "job workers: pull error");
                }
                None => break,
            }
        }
    }
}

/// What an attempt ended with.
struct Ended {
    outcome: Outcome,
    status: u16,
    error: Option<String>,
    /// The response to store, when it is the job's result.
    response: Option<Vec<u8>>,
    body_bytes: u64,
}

async fn run_one(shared: &Shared, jobs: &Jobs, msg: jetstream::Message) {
    let env = match Envelope::from_headers(msg.headers.as_ref()) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "dropping a message that is not a job");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let stores = match jobs.stores().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "job store unavailable; the job comes back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    let request = narun_wire::bhttp::decode_request_shared(msg.payload.clone());
    // Record the attempt (or find there is nothing to do).
    let node = jobs.node().to_owned();
    let mut attempt_no = 0;
    let mut in_run = 0;
    let started = wire::update(&stores.state, &env.id, |rec| {
        if rec.state.is_final() {
            return Err(rec.state.as_str().to_owned());
        }
        if rec.state == JobState::Running {
            rec.close_interrupted_attempt();
        }
        if rec.attempts_in_run() >= rec.max_attempts {
            return Err("exhausted".into());
        }
        attempt_no = rec.attempts.len() as u32 + 1;
        rec.attempts.push(Attempt {
            attempt: attempt_no,
            started: wire::now(),
            finished: None,
            node: node.clone(),
            status: None,
            error: None,
        });
        in_run = rec.attempts_in_run();
        rec.state = JobState::Running;
        rec.next_attempt_at = None;
        Ok(())
    })
    .await;
    match started {
        Ok(_) => {}
        Err(wire::UpdateError::Refused(why)) if why == "exhausted" => {
            // Every attempt of this run was interrupted (workers died mid-call).
            let _ = wire::update(&stores.state, &env.id, |rec| {
                rec.state = JobState::Failed;
                rec.error = Some("no attempts left (the last ones were interrupted)".into());
                Ok(())
            })
            .await;
            keep_request(stores, &env.id, &msg.payload).await;
            let _ = msg.double_ack().await;
            return;
        }
        Err(wire::UpdateError::Refused(state)) => {
            if state != "done" {
                keep_request(stores, &env.id, &msg.payload).await;
            }
            let _ = msg.double_ack().await;
            return;
        }
        Err(wire::UpdateError::NotFound(_)) => {
            tracing::warn!(id = %env.id, "job without a record (expired?): dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        Err(wire::UpdateError::Store(e)) => {
            tracing::debug!(id = %env.id, error = %e, "job store error; the job comes back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    }
    // The call, with "in progress" acks while it runs.
    let ended = {
        let call = attempt(shared, &env, request, attempt_no);
        tokio::pin!(call);
        let every = Duration::from_secs(jobs.config.ack_wait_sec).max(Duration::from_secs(1)) / 3;
        loop {
            tokio::select! {
                ended = &mut call => break ended,
                _ = tokio::time::sleep(every) => { let _ = msg.ack_with(AckKind::Progress).await; }
            }
        }
    };
    let verdict = wire::verdict(
        ended.outcome,
        in_run,
        env.max_attempts,
        Duration::from_millis(env.backoff_ms),
        Duration::from_secs(jobs.config.max_backoff_sec),
    );
    // The result is stored before the record says so.
    let mut stored = None;
    // A retry keeps no response; a done or failed job keeps its last one.
    if let (Verdict::Done | Verdict::Failed, Some(bytes)) = (verdict, &ended.response) {
        match store_result(shared, stores, &env.id, bytes).await {
            Ok(kind) => {
                stored = Some(StoredResult {
                    status: ended.status,
                    body_bytes: ended.body_bytes,
                    stored: kind.into(),
                })
            }
            Err(e) => {
                tracing::warn!(id = %env.id, error = %e, "storing a job result failed; the job comes back");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        }
    }
    let next_at = match verdict {
        Verdict::Retry(d) => Some(wire::after(d)),
        _ => None,
    };
    let written = wire::update(&stores.state, &env.id, |rec| {
        // Only the attempt the record says is running may end it: a second delivery (a
        // retry queued while this one ran, a redelivery after a stall) has taken over,
        // and its outcome, not this one's, decides (else a late 503 could turn `done`
        // back into `retrying`).
        let current = rec.attempts.last().map(|a| a.attempt);
        if rec.state != JobState::Running || current != Some(attempt_no) {
            return Err(SUPERSEDED.into());
        }
        if let Some(a) = rec
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.attempt == attempt_no)
        {
            a.finished = Some(wire::now());
            a.status = Some(ended.status);
            a.error = ended.error.clone();
        }
        match verdict {
            Verdict::Done => {
                rec.state = JobState::Done;
                rec.result = stored.clone();
                rec.error = None;
            }
            Verdict::Failed => {
                rec.state = JobState::Failed;
                rec.result = stored.clone();
                rec.error = Some(ended.error.clone().unwrap_or_else(|| {
                    format!("the service answered {} on every attempt", ended.status)
                }));
            }
            Verdict::Retry(_) => {
                rec.state = JobState::Retrying;
                rec.next_attempt_at = next_at.clone();
            }
        }
        Ok(())
    })
    .await;
    if let Err(wire::UpdateError::Refused(why)) = &written
        && why == SUPERSEDED
    {
        tracing::info!(id = %env.id, attempt = attempt_no, "a newer attempt of this job took over; this one's outcome is dropped");
        let _ = msg.double_ack().await;
        return;
    }
    if let Err(e) = written {
        tracing::warn!(id = %env.id, error = %e, "recording a job attempt failed; the job comes back");
        let _ = msg
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    match verdict {
        Verdict::Retry(d) => {
            jobs.count("retried");
            let _ = msg.ack_with(AckKind::Nak(Some(d))).await;
        }
        Verdict::Failed => {
            jobs.count("failed");
            keep_request(stores, &env.id, &msg.payload).await;
            let _ = msg.double_ack().await;
        }
        Verdict::Done => {
            jobs.count("done");
            let _ = msg.double_ack().await;
        }
    }
}

/// Call the service once for job `env`.
async fn attempt(
    shared: &Shared,
    env: &Envelope,
    request: Result<http::Request<Bytes>, narun_wire::bhttp::BhttpError>,
    attempt_no: u32,
) -> Ended {
    let failed = |outcome, status: u16, error: String| Ended {
        outcome,
        status,
        error: Some(error),
        response: None,
        body_bytes: 0,
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return failed(
                Outcome::Permanent,
                400,
                format!("the stored request does not decode: {e}"),
            );
        }
    };
    let (mut parts, body) = request.into_parts();
    for (name, value) in [
        (wire::ID_HEADER, env.id.clone()),
        (wire::ATTEMPT_HEADER, attempt_no.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, v);
        }
    }
    let rid = parts
        .headers
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    // The route as configured now (its metrics and stats); else as it was queued.
    let fresh;
    let router = shared.router.load();
    let target: &Target = match router.find(&parts.method, &env.route).m {
        Match::Found(t) if *t.subject == *env.target => t,
        _ => {
            let mode = if env.mode == "raw" {
                RouteMode::Raw
            } else {
                RouteMode::Bhttp
            };
            fresh = Target::new(
                &env.route,
                mode,
                &env.target,
                Duration::from_millis(env.timeout_ms.max(1)),
                Default::default(),
            );
            &fresh
        }
    };
    let answer = crate::proxy::call(shared, target, &parts, body, &env.peer, &rid).await;
    match answer {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let (rparts, rbody) = resp.into_parts();
            let rbody = rbody
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let outcome = wire::outcome_of_status(status);
            Ended {
                outcome,
                status,
                error: (outcome != Outcome::Answered)
                    .then(|| format!("the service answered {status}")),
                body_bytes: rbody.len() as u64,
                response: Some(narun_wire::bhttp::encode_response(&rparts, &rbody)),
            }
        }
        Err(GwError { status, msg }) => {
            let s = status.as_u16();
            let outcome = if s >= 500 {
                Outcome::Transient
            } else {
                Outcome::Permanent
            };
            failed(outcome, s, msg.into_owned())
        }
    }
}

/// Store a job's response: in the results bucket when it fits comfortably in one
/// message, else in the object store.
async fn store_result(
    shared: &Shared,
    stores: &wire::Stores,
    id: &str,
    bytes: &[u8],
) -> Result<&'static str, String> {
    if bytes.len() <= shared.client.max_payload() / 2 {
        stores
            .results
            .put(id, Bytes::copy_from_slice(bytes))
            .await
            .map_err(|e| e.to_string())?;
        Ok("kv")
    } else {
        let mut reader = bytes;
        stores
            .blobs
            .put(wire::result_object(id).as_str(), &mut reader)
            .await
            .map_err(|e| e.to_string())?;
        Ok("object")
    }
}

/// Keep the request of a failed or cancelled job for `narunctl jobs retry` (best effort).
async fn keep_request(stores: &wire::Stores, id: &str, payload: &Bytes) {
    let mut reader: &[u8] = payload;
    if let Err(e) = stores
        .blobs
        .put(wire::request_object(id).as_str(), &mut reader)
        .await
    {
        tracing::warn!(id, error = %e, "keeping the request of a finished job failed");
    }
}
