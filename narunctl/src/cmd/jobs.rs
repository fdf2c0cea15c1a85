//! `narunctl jobs ls|show|retry|cancel`: the async jobs of the gateway's `async` routes
//! (docs/jobs.md), read from and written to the buckets of [`narun_wire::jobs`].
//!
//! `ls` builds its rows from sources (each turns its records into [`Row`]s): the async
//! jobs ([`async_rows`]) and, with `--app`, the attempts of that app's scheduled runs of
//! the last week ([`scheduled_rows`], from the `narun-status` stream); then it filters,
//! sorts newest first and prints them.
//!
//! `cancel` and `retry` change a job's record with a compare-and-set
//! ([`narun_wire::jobs::update`]), so they never overwrite what a worker wrote meanwhile;
//! `retry` then queues the request kept for it again (`Nats-Msg-Id` `<id>-r<n>`).

use crate::cli::{ConnArgs, JobsCmd, JobsLsArgs};
use crate::output::{age, human_duration, human_size, print_json, print_table};
use crate::session::Session;
use anyhow::{Result, anyhow, bail};
use narun_wire::jobs::{self as wire, JobRecord, JobState, Stores};
use tokio::io::AsyncReadExt;

/// Run a `jobs` subcommand.
pub async fn run(conn: &ConnArgs, cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::Ls(args) => ls(conn, args).await,
        JobsCmd::Show { id, json } => show(conn, &id, json.json).await,
        JobsCmd::Retry { id } => retry(conn, &id).await,
        JobsCmd::Cancel { id } => cancel(conn, &id).await,
    }
}

/// One line of `jobs ls`, whatever the kind of job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub id: String,
    /// `async` (a gateway job) or `scheduled` (an attempt of a `runMode = "job"` app).
    pub kind: &'static str,
    pub state: String,
    /// The app or service it belongs to.
    pub service: String,
    /// What ran: `METHOD path` for an async job; `<trigger> on <node>` for a scheduled run.
    pub request: String,
    pub attempts: u32,
    /// RFC 3339.
    pub created: String,
}

/// Which jobs `ls` shows.
struct Filter {
    app: Option<String>,
    service: Option<String>,
    state: Option<String>,
}

impl Filter {
    fn keeps(&self, row: &Row) -> bool {
        self.app.as_ref().is_none_or(|a| *a == row.service)
            && self.service.as_ref().is_none_or(|s| *s == row.service)
            && self.state.as_ref().is_none_or(|s| *s == row.state)
    }
}

const STATES: [&str; 6] = [
    "queued",
    "running",
    "retrying",
    "done",
    "failed",
    "cancelled",
];

async fn stores(session: &Session) -> Result<Option<Stores>> {
    session
        .bounded("opening the job buckets", wire::open_stores(&session.js))
        .await
}

async fn need_stores(session: &Session) -> Result<Stores> {
    stores(session).await?.ok_or_else(|| {
        anyhow!(
            "no jobs: the bucket {} does not exist (no gateway with an async route has run)",
            wire::STATE_BUCKET
        )
    })
}

fn check_id(id: &str) -> Result<()> {
    match wire::id_problem(id) {
        Some(p) => bail!("{p}: {id:?}"),
        None => Ok(()),
    }
}

/// The async jobs' rows.
async fn async_rows(session: &Session) -> Result<Vec<Row>> {
    let Some(stores) = stores(session).await? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for (key, value) in session.kv_entries(&stores.state).await? {
        match serde_json::from_slice::<JobRecord>(&value) {
            Ok(r) => rows.push(Row {
                id: r.id,
                kind: "async",
                state: r.state.as_str().into(),
                service: r.service,
                request: format!("{} {}", r.method, r.path),
                attempts: r.attempts.len() as u32,
                created: r.created,
            }),
            Err(e) => eprintln!("warning: job {key}: unreadable record: {e}"),
        }
    }
    Ok(rows)
}

/// How far back `jobs ls --app` looks for scheduled runs.
const SCHEDULED_HISTORY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The last outcome of each attempt of `app`'s scheduled runs (`id` = `<run id>/<attempt>`).
/// No history stream: a note on stderr and no rows (async jobs are still listed).
async fn scheduled_rows(session: &Session, app: &str) -> Result<Vec<Row>> {
    let runs = match crate::cmd::runs::list_runs(session, app, None, SCHEDULED_HISTORY).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: scheduled runs not listed: {e:#}");
            return Ok(Vec::new());
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    for r in runs {
        let id = format!("{}/{}", r.job.id, r.job.attempt);
        let trigger = serde_json::to_value(r.job.trigger)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let row = Row {
            id,
            kind: "scheduled",
            state: r.job.outcome.clone(),
            service: app.to_string(),
            request: format!("{trigger} on {}", r.node_id),
            attempts: r.job.attempt,
            created: r.time,
        };
        // Events come oldest first: a later one of the same attempt and node replaces it.
        match rows
            .iter_mut()
            .find(|x| x.id == row.id && x.request == row.request)
        {
            Some(x) => *x = row,
            None => rows.push(row),
        }
    }
    Ok(rows)
}

async fn ls(conn: &ConnArgs, args: JobsLsArgs) -> Result<()> {
    if let Some(s) = &args.state
        && !STATES.contains(&s.as_str())
    {
        bail!("--state {s:?}: expected one of {}", STATES.join(", "));
    }
    let session = Session::connect(conn, "jobs").await?;
    let filter = Filter {
        app: args.app,
        service: args.service,
        state: args.state,
    };
    let mut rows = async_rows(&session).await?;
    if let Some(app) = &filter.app {
        rows.extend(scheduled_rows(&session, app).await?);
    }
    rows.retain(|r| filter.keeps(r));
    // RFC 3339 UTC strings sort by time.
    rows.sort_by(|a, b| b.created.cmp(&a.created));
    rows.truncate(args.limit);
    if args.json.json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.kind.into(),
                r.state.clone(),
                r.service.clone(),
                r.request.clone(),
                r.attempts.to_string(),
                age(&r.created).map_or("-".into(), human_duration),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "KIND", "STATE", "SERVICE", "REQUEST", "ATTEMPTS", "AGE",
        ],
        &table,
    );
    Ok(())
}

async fn show(conn: &ConnArgs, id: &str, json: bool) -> Result<()> {
    check_id(id)?;
    let session = Session::connect(conn, "jobs").await?;
    let stores = need_stores(&session).await?;
    let (rec, _) = session
        .bounded("reading the job", wire::read(&stores.state, id))
        .await?
        .ok_or_else(|| anyhow!("{}", wire::UpdateError::NotFound(id.into())))?;
    if json {
        return print_json(&rec);
    }
    println!("id:       {}", rec.id);
    println!("state:    {}", rec.state.as_str());
    println!(
        "service:  {} (route {}, {})",
        rec.service, rec.route, rec.mode
    );
    println!("request:  {} {}", rec.method, rec.path);
    println!("created:  {}", rec.created);
    println!("updated:  {}", rec.updated);
    println!(
        "attempts: {} in this run of at most {} ({} in all, retried {} time(s))",
        rec.attempts_in_run(),
        rec.max_attempts,
        rec.attempts.len(),
        rec.retries
    );
    for a in &rec.attempts {
        println!(
            "  attempt {}  {} .. {}  node {}  {}{}",
            a.attempt,
            a.started,
            a.finished.as_deref().unwrap_or("(running)"),
            a.node,
            a.status.map_or("-".into(), |s| s.to_string()),
            a.error
                .as_deref()
                .map_or(String::new(), |e| format!("  {e}"))
        );
    }
    if let Some(next) = &rec.next_attempt_at {
        println!("next:     {next}");
    }
    match &rec.result {
        Some(r) => println!(
            "result:   {} with {} body ({}; GET /_jobs/{}/result)",
            r.status,
            human_size(r.body_bytes),
            r.stored,
            rec.id
        ),
        None => println!("result:   none"),
    }
    if let Some(e) = &rec.error {
        println!("error:    {e}");
    }
    Ok(())
}

async fn cancel(conn: &ConnArgs, id: &str) -> Result<()> {
    check_id(id)?;
    let session = Session::connect(conn, "jobs").await?;
    let stores = need_stores(&session).await?;
    let rec = session
        .bounded(
            "cancelling the job",
            wire::update(&stores.state, id, |rec| {
                if let Some(p) = rec.cancel_problem() {
                    return Err(p);
                }
                rec.state = JobState::Cancelled;
                rec.next_attempt_at = None;
                rec.error = Some("cancelled".into());
                Ok(())
            }),
        )
        .await?;
    println!("cancelled job {} ({} {})", rec.id, rec.method, rec.path);
    Ok(())
}

async fn retry(conn: &ConnArgs, id: &str) -> Result<()> {
    check_id(id)?;
    let session = Session::connect(conn, "jobs").await?;
    let stores = need_stores(&session).await?;
    let (rec, _) = session
        .bounded("reading the job", wire::read(&stores.state, id))
        .await?
        .ok_or_else(|| anyhow!("{}", wire::UpdateError::NotFound(id.into())))?;
    if let Some(p) = rec.retry_problem() {
        bail!("{p}");
    }
    let request = session
        .bounded("reading the kept request", async {
            let mut obj = stores.blobs.get(wire::request_object(id)).await?;
            let mut buf = Vec::new();
            obj.read_to_end(&mut buf).await?;
            Ok::<_, async_nats::Error>(buf)
        })
        .await
        .map_err(|e| anyhow!("job {id} cannot be retried: its request was not kept ({e})"))?;
    let rec = session
        .bounded(
            "queueing the job again",
            wire::update(&stores.state, id, |rec| {
                if let Some(p) = rec.retry_problem() {
                    return Err(p);
                }
                rec.state = JobState::Queued;
                rec.run_base = rec.attempts.len() as u32;
                rec.retries += 1;
                rec.result = None;
                rec.error = None;
                rec.next_attempt_at = None;
                Ok(())
            }),
        )
        .await?;
    let headers = rec.envelope().to_headers(&format!("{id}-r{}", rec.retries));
    session
        .bounded("publishing the job", async {
            session
                .js
                .publish_with_headers(wire::subject(&rec.service), headers, request.into())
                .await?
                .await
        })
        .await?;
    println!(
        "queued job {} again ({} {}; up to {} more attempts)",
        rec.id, rec.method, rec.path, rec.max_attempts
    );
    Ok(())
}
