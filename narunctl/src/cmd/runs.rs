//! `narunctl run APP` (run a job now) and `narunctl runs ls --app APP` (its history).
//!
//! A job's runs are status events whose `job` field is a [`JobRun`] (narund publishes one
//! when an attempt starts and one when it ends, `docs/jobs.md`). The history comes from
//! the `narun-status` stream (narund `[events] stream = true`): [`list_runs`] reads the
//! app's events of the last `--since` and keeps the job ones. `jobs ls --app APP` lists
//! the app's attempts next to its async jobs (through [`list_runs`]); `runs ls` shows every
//! attempt with its exit code, duration and log subject.

use crate::cli::{ConnArgs, RunArgs, RunsCmd, RunsLsArgs};
use crate::output::{print_json, print_table};
use crate::session::{Session, heartbeat_fresh};
use anyhow::{Result, bail};
use async_nats::jetstream;
use narun_wire::events::StatusEvent;
use narun_wire::names;
use narun_wire::runs::{CONTROL_RUN, JobRun, RunReply, RunRequest};
use serde::Serialize;
use std::time::Duration;

/// One attempt of a run, as `runs ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// When the event was published (RFC 3339).
    pub time: String,
    pub node_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(flatten)]
    pub job: JobRun,
}

/// Run `runs …`.
pub async fn run(conn: &ConnArgs, cmd: RunsCmd) -> Result<()> {
    match cmd {
        RunsCmd::Ls(args) => ls(conn, args).await,
    }
}

async fn ls(conn: &ConnArgs, args: RunsLsArgs) -> Result<()> {
    let session = Session::connect(conn, "runs ls").await?;
    let rows = list_runs(&session, &args.app, args.node.as_deref(), args.since).await?;
    if args.json.json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.job.outcome != "started")
        .map(table_row)
        .collect();
    if table.is_empty() {
        eprintln!(
            "no run of {} in the last {}",
            args.app,
            crate::output::human_duration(args.since)
        );
        return Ok(());
    }
    print_table(
        &[
            "TIME", "NODE", "RUN", "TRIGGER", "ATTEMPT", "OUTCOME", "EXIT", "DURATION", "LOGS",
        ],
        &table,
    );
    Ok(())
}

/// A row of the `runs ls` table.
pub fn table_row(r: &RunRow) -> Vec<String> {
    let trigger = serde_json::to_value(r.job.trigger)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    vec![
        r.time.clone(),
        r.node_id.clone(),
        r.job.id.clone(),
        trigger,
        format!("{}/{}", r.job.attempt, r.job.max_attempts),
        r.job.outcome.clone(),
        r.exit_code.map_or("-".into(), |c| c.to_string()),
        r.job
            .duration_ms
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        r.job.log_subject.clone(),
    ]
}

/// The job events of `app` (on `node`, or every node) of the last `since`, oldest first,
/// from the `narun-status` stream. Every event is kept, `started` ones included.
pub async fn list_runs(
    session: &Session,
    app: &str,
    node: Option<&str>,
    since: Duration,
) -> Result<Vec<RunRow>> {
    for (flag, v) in [("--app", Some(app)), ("--node", node)] {
        if let Some(v) = v
            && (v.is_empty() || v.contains(['.', '*', '>', ' ', '\t']))
        {
            bail!("{flag} {v:?}: not an app name or node id (one NATS subject token)");
        }
    }
    let subject = names::status_subject(app, node.unwrap_or("*"));
    let timeout = session.timeout;
    let stream = match tokio::time::timeout(timeout, session.js.get_stream(names::STATUS_STREAM))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => bail!(
            "no run history: the stream {} does not exist (set `[events] stream = true` in narund's config)",
            names::STATUS_STREAM
        ),
        Err(_) => bail!(
            "looking up the status stream {}: no answer within {timeout:?}",
            names::STATUS_STREAM
        ),
    };
    let start_time = time::OffsetDateTime::now_utc()
        - time::Duration::try_from(since).unwrap_or(time::Duration::ZERO);
    let (mut messages, pending) = crate::follow::open_ordered(
        session,
        &stream,
        names::STATUS_STREAM,
        &subject,
        jetstream::consumer::DeliverPolicy::ByStartTime { start_time },
    )
    .await?;
    let mut rows = Vec::new();
    for _ in 0..pending {
        let Some(msg) =
            crate::follow::next(&mut messages, names::STATUS_STREAM, &subject, Some(timeout))
                .await?
        else {
            bail!(
                "reading {subject} from {}: no answer within {timeout:?}",
                names::STATUS_STREAM
            )
        };
        if let Ok(ev) = serde_json::from_slice::<StatusEvent>(&msg.payload)
            && let Some(job) = ev.job
        {
            rows.push(RunRow {
                time: ev.time,
                node_id: ev.node_id,
                exit_code: ev.exit_code,
                error: ev.error,
                job,
            });
        }
        if msg.info().is_ok_and(|i| i.pending == 0) {
            break;
        }
    }
    Ok(rows)
}

/// `narunctl run APP`.
pub async fn run_now(conn: &ConnArgs, args: RunArgs) -> Result<()> {
    let name = args.name.as_str();
    let session = Session::connect(conn, "run").await?;
    let nodes: Vec<String> = if args.node.is_empty() {
        let specs = session.load_specs().await?;
        let spec = match specs.into_iter().find(|(k, _)| k == name) {
            Some((_, Ok(s))) => s,
            Some((_, Err(e))) => bail!("the stored spec of {name} does not parse: {e}"),
            None => bail!("no app {name} in {}", names::APP_CONFIGS_BUCKET),
        };
        if !spec.is_job() {
            bail!(
                "{name} is not a job (its spec has no runMode = \"job\"): `narunctl apps restart {name}` restarts a service"
            );
        }
        session
            .node_states()
            .await?
            .iter()
            .filter(|s| heartbeat_fresh(s) && spec.desired_replicas(&s.node_id, &s.labels) > 0)
            .map(|s| s.node_id.clone())
            .collect()
    } else {
        args.node.clone()
    };
    if nodes.is_empty() {
        bail!(
            "no online node runs {name}: no fresh heartbeat in {} matches its nodes selectors (--node NODE asks a node directly)",
            names::NODE_STATES_BUCKET
        );
    }
    let id = format!(
        "m{}",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
    );
    let body = bytes::Bytes::from(serde_json::to_vec(&RunRequest {
        app: name.to_string(),
        id,
    })?);
    let timeout = session.timeout;
    let replies = futures_util::future::join_all(
        nodes
            .iter()
            .map(|node| ask(&session.client, node, name, body.clone(), timeout)),
    )
    .await;
    let started = replies.iter().filter(|r| r.error.is_empty()).count();
    if args.json.json {
        print_json(&replies)?;
    } else {
        let rows: Vec<Vec<String>> = replies
            .iter()
            .map(|r| {
                vec![
                    r.node_id.clone(),
                    if r.error.is_empty() {
                        "started"
                    } else {
                        "refused"
                    }
                    .into(),
                    if r.job_id.is_empty() {
                        "-".into()
                    } else {
                        r.job_id.clone()
                    },
                    r.error.clone(),
                ]
            })
            .collect();
        print_table(&["NODE", "RESULT", "RUN", "ERROR"], &rows);
    }
    if started == 0 {
        bail!("no node started a run of {name}");
    }
    Ok(())
}

async fn ask(
    client: &async_nats::Client,
    node: &str,
    app: &str,
    body: bytes::Bytes,
    timeout: Duration,
) -> RunReply {
    let failed = |error: String| RunReply {
        node_id: node.to_string(),
        app: app.to_string(),
        error,
        ..Default::default()
    };
    use crate::session::{NodeAskError, ask_node};
    let subject = names::control_subject(node, CONTROL_RUN);
    match ask_node::<RunReply>(client, subject, body, timeout).await {
        Ok(mut r) => {
            if r.node_id.is_empty() {
                r.node_id = node.to_string();
            }
            r
        }
        Err(NodeAskError::Unreadable(e)) => {
            failed(format!("unreadable answer from node {node}: {e}"))
        }
        Err(NodeAskError::NoResponders) => failed(format!(
            "node {node} does not answer run requests (offline, or a narund without jobs)"
        )),
        Err(NodeAskError::TimedOut) => {
            failed(format!("node {node} did not answer within {timeout:?}"))
        }
        Err(NodeAskError::Other(e)) => failed(format!("asking node {node}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::runs::Trigger;

    #[test]
    fn rows_read_as_a_table() {
        let r = RunRow {
            time: "2026-12-04T03:00:01Z".into(),
            node_id: "n1".into(),
            exit_code: Some(3),
            error: "exit status 3".into(),
            job: JobRun {
                id: "1796353200".into(),
                scheduled_at: "2026-12-04T03:00:00Z".into(),
                trigger: Trigger::Schedule,
                attempt: 2,
                max_attempts: 3,
                outcome: "retrying".into(),
                duration_ms: Some(1234),
                log_subject: "logs.j.n1".into(),
                instance: "j-0".into(),
            },
        };
        assert_eq!(
            table_row(&r),
            [
                "2026-12-04T03:00:01Z",
                "n1",
                "1796353200",
                "schedule",
                "2/3",
                "retrying",
                "3",
                "1.2s",
                "logs.j.n1"
            ]
        );
    }
}
