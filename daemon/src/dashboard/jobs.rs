//! The jobs view (`GET api/jobs`): the newest async jobs of the gateways' `async` routes,
//! read from their state bucket ([`narun_wire::jobs::STATE_BUCKET`], docs/jobs.md).
//!
//! The bucket holds one record per job for the gateway's retention (a day by default), so
//! it may hold many: instead of listing every key and reading each value, [`list`] reads
//! only the bucket's newest [`WINDOW`] messages (one ordered consumer from that sequence
//! on) and keeps the latest value of each key among them ([`rows`]). Every job created or
//! changed since the window began is there with its current state; jobs that have not
//! changed for longer are left out, as are deleted ones.
//!
//! The scheduled runs (`runMode = "job"`) are listed beside them: their attempts are
//! status events with a `job` field (docs/jobs.md), read from the `narun-status` stream's
//! newest [`WINDOW`] events ([`run_rows`]; `narunctl runs ls --app` reads them all).
//!
//! A job's record holds the request's method and path (with its query) and its owner; the
//! request itself (headers, body) is in other buckets. None of them is shown: a row is the
//! id, service, route (the gateway's configured path), state, attempts and times only.

use super::api::{ApiError, ApiResult, TIMEOUT, err, now_ms};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use http::StatusCode;
use narun_wire::jobs::{JobRecord, STATE_BUCKET};
use narun_wire::names;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Most jobs listed, newest (by creation) first.
pub const SHOWN: usize = 100;
/// How many of the state bucket's newest messages are read (a job's record is written a
/// few times: queued, running, done).
pub const WINDOW: u64 = 1000;

/// One change of the bucket, in stream order: key, whether it is a put (deletes and
/// purges remove the key), value.
pub type Change = (String, bool, bytes::Bytes);

/// The rows of the jobs view from `changes` (oldest first): the latest value of each key,
/// unreadable records skipped, newest first by the key's first write among `changes` (its
/// creation, for a job created within the window; no sort, whose code narund would
/// carry), at most [`SHOWN`].
pub fn rows(changes: impl IntoIterator<Item = Change>) -> Vec<Value> {
    // One slot per key in the order keys were first written; a delete empties its slot.
    let mut slots: Vec<Option<bytes::Bytes>> = Vec::new();
    let mut slot_of: HashMap<String, usize> = HashMap::new();
    for (key, put, value) in changes {
        match (put, slot_of.get(&key)) {
            (true, Some(&i)) => slots[i] = Some(value),
            (true, None) => {
                slot_of.insert(key, slots.len());
                slots.push(Some(value));
            }
            (false, Some(&i)) => {
                slots[i] = None;
                slot_of.remove(&key);
            }
            (false, None) => {}
        }
    }
    let jobs: Vec<JobRecord> = slots
        .iter()
        .rev()
        .flatten()
        .filter_map(|v| serde_json::from_slice(v).ok())
        .take(SHOWN)
        .collect();
    jobs.iter()
        .filter_map(|j| {
            serde_json::to_value(Row {
                id: &j.id,
                service: &j.service,
                route: &j.route,
                state: j.state.as_str(),
                attempts: j.attempts.len(),
                max_attempts: j.max_attempts,
                retries: j.retries,
                created: &j.created,
                updated: &j.updated,
            })
            .ok()
        })
        .collect()
}

/// A row of the jobs view: nothing of the request.
#[derive(serde::Serialize)]
struct Row<'a> {
    id: &'a str,
    service: &'a str,
    route: &'a str,
    state: &'a str,
    attempts: usize,
    max_attempts: u32,
    retries: u32,
    created: &'a str,
    updated: &'a str,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("reading {STATE_BUCKET}: {e}"),
    )
}

/// The bucket's newest [`WINDOW`] changes, oldest first (none without the bucket).
async fn changes(js: &jetstream::Context) -> Result<Vec<Change>, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let Some(store) = narun_wire::jetstream::open_kv(js, STATE_BUCKET)
        .await
        .map_err(|e| text(&e))?
    else {
        return Ok(Vec::new());
    };
    let info = store.stream.get_info().await.map_err(|e| text(&e))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let last = info.state.last_sequence;
    let start = last
        .saturating_sub(WINDOW - 1)
        .max(info.state.first_sequence)
        .max(1);
    let mut watch = store
        .watch_all_from_revision(start)
        .await
        .map_err(|e| text(&e))?;
    let mut out: Vec<Change> = Vec::new();
    while let Some(e) = watch.next().await {
        let e = e.map_err(|e| text(&e))?;
        // The last message of the window, or the newest of the bucket (the window's end
        // may have expired meanwhile): done.
        let done = e.revision >= last || e.delta == 0;
        out.push((e.key, e.operation == kv::Operation::Put, e.value));
        if done || out.len() as u64 >= WINDOW {
            break;
        }
    }
    Ok(out)
}

/// The rows of the scheduled runs (`runMode = "job"`) from status `events` (JSON, in
/// stream order): per node, app, run and attempt its latest event (a run's `started`
/// event is followed by its outcome), newest first, at most [`SHOWN`]. The events' error
/// text is left out, as the async jobs' is; the exit code says how a run ended. (The
/// events stay `Value`s and are not sorted: the stream's order is the order they were
/// published in, and typed decoding and a sort would add their code to narund.)
pub fn run_rows(events: Vec<Value>) -> Vec<Value> {
    let key = |ev: &Value| {
        let job = &ev["job"];
        (
            ev["node_id"].to_string(),
            ev["app_name"].to_string(),
            job["id"].to_string(),
            job["attempt"].to_string(),
        )
    };
    let mut latest: HashMap<_, usize> = HashMap::new();
    for (i, ev) in events.iter().enumerate() {
        if ev["job"].is_object() {
            latest.insert(key(ev), i);
        }
    }
    let mut out = Vec::new();
    for (i, ev) in events.iter().enumerate().rev() {
        if out.len() == SHOWN {
            break;
        }
        if !ev["job"].is_object() || latest.get(&key(ev)) != Some(&i) {
            continue;
        }
        let job = &ev["job"];
        out.push(json!({
            "app": ev["app_name"], "node": ev["node_id"], "id": job["id"],
            "trigger": job["trigger"], "attempt": job["attempt"],
            "max_attempts": job["max_attempts"], "outcome": job["outcome"],
            "exit_code": ev["exit_code"], "duration_ms": job["duration_ms"], "time": ev["time"],
        }));
    }
    out
}

/// The status stream's newest [`WINDOW`] events, oldest first (none without the stream:
/// narund's `[events] stream` is off). An ordered push consumer, as the KV watches use.
async fn run_events(js: &jetstream::Context) -> Result<Vec<Value>, String> {
    use jetstream::consumer::{DeliverPolicy, push};
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let mut stream = match js.get_stream(names::STATUS_STREAM).await {
        Ok(s) => s,
        Err(e) if narun_wire::jetstream::is_stream_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(text(&e)),
    };
    let state = stream.info().await.map_err(|e| text(&e))?.state.clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let start = state
        .last_sequence
        .saturating_sub(WINDOW - 1)
        .max(state.first_sequence)
        .max(1);
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| text(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| text(&e))?;
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| text(&e))?;
        let info = m.info().map_err(|e| text(&e))?;
        let done = info.stream_sequence >= state.last_sequence || info.pending == 0;
        if let Ok(ev) = serde_json::from_slice::<Value>(&m.payload) {
            out.push(ev);
        }
        if done || out.len() as u64 >= WINDOW {
            break;
        }
    }
    Ok(out)
}

/// `GET api/jobs`: `{"now" (Unix ms, narund's clock), "shown", "jobs": [rows], "runs":
/// [run rows]}`; no jobs when the bucket does not exist (no gateway with an async route
/// has run), no runs without the status stream (`runs_error` says why runs could not be
/// read; the async jobs are shown anyway).
pub async fn list(js: &jetstream::Context) -> ApiResult {
    let jobs = match tokio::time::timeout(TIMEOUT, changes(js)).await {
        Ok(Ok(c)) => rows(c),
        Ok(Err(e)) => return Err(unavailable(e)),
        Err(_) => return Err(unavailable(format!("no answer within {TIMEOUT:?}"))),
    };
    let mut v = json!({"now": now_ms(), "shown": SHOWN, "jobs": jobs, "runs": []});
    match tokio::time::timeout(TIMEOUT, run_events(js)).await {
        Ok(Ok(events)) => v["runs"] = Value::Array(run_rows(events)),
        Ok(Err(e)) => v["runs_error"] = format!("reading {}: {e}", names::STATUS_STREAM).into(),
        Err(_) => {
            v["runs_error"] = format!(
                "reading {}: no answer within {TIMEOUT:?}",
                names::STATUS_STREAM
            )
            .into()
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: &str, created: &str, attempts: usize) -> bytes::Bytes {
        let attempt = json!({"attempt": 1, "started": created, "node": "n1", "status": 503});
        json!({
            "id": id, "state": state, "service": "hello", "route": "/hello/echo",
            "method": "POST", "path": "/hello/echo?token=s3cret-in-query",
            "mode": "bhttp", "created": created, "updated": created,
            "max_attempts": 3, "timeout_ms": 1000, "backoff_ms": 10,
            "attempts": vec![attempt; attempts], "owner": "alice",
            "error": "upstream said: password=hunter2",
        })
        .to_string()
        .into()
    }

    #[test]
    fn latest_value_per_job_newest_first_without_request_details() {
        let changes = vec![
            (
                "a".into(),
                true,
                record("a", "queued", "2026-01-01T00:00:01Z", 0),
            ),
            (
                "b".into(),
                true,
                record("b", "queued", "2026-01-01T00:00:02Z", 0),
            ),
            (
                "a".into(),
                true,
                record("a", "done", "2026-01-01T00:00:01Z", 2),
            ),
            (
                "gone".into(),
                true,
                record("gone", "queued", "2026-01-01T00:00:03Z", 0),
            ),
            ("gone".into(), false, bytes::Bytes::new()),
            ("junk".into(), true, bytes::Bytes::from_static(b"{not json")),
        ];
        let r = rows(changes);
        let ids: Vec<&str> = r.iter().map(|j| j["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(r[1]["state"], "done");
        assert_eq!(r[1]["attempts"], 2);
        assert_eq!(r[1]["max_attempts"], 3);
        assert_eq!(r[1]["route"], "/hello/echo");
        let text = Value::Array(r).to_string();
        for secret in ["s3cret", "hunter2", "alice", "POST"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
    }

    #[test]
    fn runs_latest_event_per_attempt_newest_first_without_error_text() {
        let ev = |node: &str, id: &str, attempt: u32, outcome: &str, time: &str| {
            serde_json::to_value(narun_wire::events::StatusEvent {
                node_id: node.into(),
                app_name: "backup".into(),
                time: time.into(),
                error: "password=hunter2".into(),
                exit_code: (outcome != "started").then_some(3),
                job: Some(narun_wire::runs::JobRun {
                    id: id.into(),
                    attempt,
                    max_attempts: 2,
                    outcome: outcome.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap()
        };
        let plain = serde_json::to_value(narun_wire::events::StatusEvent {
            app_name: "web".into(),
            time: "2026-01-01T00:00:09Z".into(),
            ..Default::default()
        })
        .unwrap();
        let r = run_rows(vec![
            ev("n1", "100", 1, "started", "2026-01-01T00:00:01Z"),
            plain,
            ev("n2", "100", 1, "started", "2026-01-01T00:00:01Z"),
            ev("n1", "100", 1, "retrying", "2026-01-01T00:00:02Z"),
            ev("n1", "100", 2, "started", "2026-01-01T00:00:03Z"),
            ev("n1", "100", 2, "failed", "2026-01-01T00:00:04Z"),
            json!("not an event"),
        ]);
        let got: Vec<(&str, u64, &str)> = r
            .iter()
            .map(|x| {
                (
                    x["node"].as_str().unwrap(),
                    x["attempt"].as_u64().unwrap(),
                    x["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("n1", 2, "failed"),
                ("n1", 1, "retrying"),
                ("n2", 1, "started")
            ]
        );
        assert_eq!(r[0]["exit_code"], 3);
        assert_eq!(r[0]["trigger"], "schedule");
        assert_eq!(r[0]["time"], "2026-01-01T00:00:04Z");
        let text = Value::Array(r).to_string();
        assert!(!text.contains("hunter2"), "{text}");
        // At most SHOWN rows, the newest.
        let many: Vec<Value> = (0..SHOWN + 5)
            .map(|i| ev("n1", &i.to_string(), 1, "succeeded", "2026-01-01T00:00:00Z"))
            .collect();
        let r = run_rows(many);
        assert_eq!(r.len(), SHOWN);
        assert_eq!(r[0]["id"], (SHOWN + 4).to_string());
    }

    #[test]
    fn at_most_shown_rows() {
        let changes = (0..SHOWN + 20).map(|i| {
            let id = format!("j{i:04}");
            let created = format!("2026-01-01T00:{:02}:{:02}Z", i / 60, i % 60);
            (id.clone(), true, record(&id, "queued", &created, 0))
        });
        let r = rows(changes);
        assert_eq!(r.len(), SHOWN);
        assert_eq!(r[0]["id"], format!("j{:04}", SHOWN + 19));
        assert!(rows(Vec::new()).is_empty());
    }
}
