//! `narunctl logs`: app log lines (`logs.<app>.<node>`), from the `narun-logs` stream
//! when it exists (history with `--since`, then live), otherwise live from a core
//! subscription.

use crate::cli::{ConnArgs, LogsArgs};
use crate::session::{Session, bounded};
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream;
use futures_util::StreamExt;
use narun_wire::events::LogLine;
use narun_wire::names;
use std::io::Write;
use std::time::Duration;

/// `logs`: from the `narun-logs` stream when it exists (history with `--since`, then
/// live, all through one ordered consumer, so nothing is lost or repeated where the
/// history ends), otherwise live lines from a core subscription.
pub async fn run(conn: &ConnArgs, args: LogsArgs) -> Result<()> {
    let session = Session::connect(conn, "logs").await?;
    let client = &session.client;
    let subject = names::log_subject(
        args.app.as_deref().unwrap_or("*"),
        args.node.as_deref().unwrap_or("*"),
    );
    let stream =
        match tokio::time::timeout(session.timeout, session.js.get_stream(names::LOG_STREAM)).await
        {
            Ok(Ok(s)) => Some(s),
            // Not found, or no JetStream at all: live lines only.
            Ok(Err(_)) => None,
            Err(_) => bail!(
                "looking up the log stream {}: no answer within {:?}",
                names::LOG_STREAM,
                session.timeout
            ),
        };
    match stream {
        Some(stream) => from_stream(client, stream, &subject, &args, session.timeout).await,
        None => {
            if args.since.is_some() {
                eprintln!(
                    "note: no log history: the stream {} does not exist (set `[logs] stream = true` in narund's config); showing live lines only",
                    names::LOG_STREAM
                );
            }
            live(client, &subject, &args, session.timeout).await
        }
    }
}

/// A SIGINT (Ctrl-C) listener, registered now: one listener for the whole command, so
/// a signal that arrives while a message is being printed is not lost (a fresh
/// `tokio::signal::ctrl_c()` per loop turn misses signals between turns, and once tokio
/// owns SIGINT a missed one is ignored for good).
fn sigint() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow!("installing the SIGINT handler: {e}"))
}

/// Print one log message; false when stdout is closed (e.g. piped into `head`).
fn print_log(out: &mut impl Write, payload: &[u8], args: &LogsArgs) -> bool {
    let line = serde_json::from_slice::<LogLine>(payload);
    if let (Some(want), Ok(l)) = (&args.instance, &line)
        && &l.instance_id != want
    {
        return true;
    }
    let text = match (&line, args.raw) {
        (Ok(l), false) => format!(
            "[{}] [{}] [{}] {}",
            l.timestamp, l.instance_id, l.stream, l.message
        ),
        _ => String::from_utf8_lossy(payload).into_owned(),
    };
    writeln!(out, "{text}").is_ok()
}

async fn live(
    client: &async_nats::Client,
    subject: &str,
    args: &LogsArgs,
    timeout: Duration,
) -> Result<()> {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| anyhow!("subscribing to {subject}: {e}"))?;
    if !narun_wire::connect::sync_with_server(client, timeout).await {
        bail!("subscribing to {subject}: the server did not confirm within {timeout:?}");
    }
    let mut interrupt = sigint()?;
    eprintln!("following {subject} (Ctrl-C to stop)");
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = sub.next() => {
                let Some(msg) = msg else { bail!("the NATS subscription to {subject} ended") };
                if !print_log(&mut stdout, &msg.payload, args) {
                    return Ok(());
                }
            }
        }
    }
}

async fn from_stream(
    client: &async_nats::Client,
    stream: jetstream::stream::Stream,
    subject: &str,
    args: &LogsArgs,
    timeout: Duration,
) -> Result<()> {
    use jetstream::consumer::{DeliverPolicy, push};
    let mut interrupt = sigint()?;
    let deliver_policy = match args.since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc()
                - time::Duration::try_from(since).unwrap_or(time::Duration::ZERO),
        },
        None => DeliverPolicy::New,
    };
    // Without --since narunctl always follows (like Go's `narun logs`).
    let follow = args.follow || args.since.is_none();
    let consumer = bounded(
        timeout,
        &format!("creating a consumer on {}", names::LOG_STREAM),
        stream.create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject.to_string(),
            deliver_policy,
            ..Default::default()
        }),
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    match (args.since, follow) {
        (Some(since), true) => eprintln!(
            "{pending} line(s) of {subject} from the last {since:?} (stream {}), then following (Ctrl-C to stop)",
            names::LOG_STREAM
        ),
        (Some(since), false) => eprintln!(
            "{pending} line(s) of {subject} from the last {since:?} (stream {})",
            names::LOG_STREAM
        ),
        (None, _) => eprintln!(
            "following {subject} (stream {}; Ctrl-C to stop)",
            names::LOG_STREAM
        ),
    }
    if !follow && pending == 0 {
        return Ok(());
    }
    let mut messages = bounded(timeout, "starting the log consumer", consumer.messages()).await?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = messages.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => bail!("reading {subject} from {}: {e}", names::LOG_STREAM),
                    None => bail!("the consumer on {} ended", names::LOG_STREAM),
                };
                if !print_log(&mut stdout, &msg.payload, args) {
                    return Ok(());
                }
                // The history is printed once the server has nothing more pending.
                if !follow && msg.info().is_ok_and(|i| i.pending == 0) {
                    stdout.flush().ok();
                    return Ok(());
                }
            }
        }
    }
}
