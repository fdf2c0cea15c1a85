//! `narunctl logs`: app log lines (`logs.<app>.<node>`) like `journalctl -f` or
//! `kubectl logs -f --tail`: the last lines, then new ones as they come.
//!
//! * History comes from the JetStream stream `narun-logs` (narund `[logs] stream =
//!   true`): the last `--tail N` lines (10 by default), or those of the last `--since D`
//!   (with `--tail`, at most N of them). History and new lines come through **one**
//!   ordered consumer, so nothing is lost or printed twice where the history ends;
//!   `--no-follow` stops after the history.
//! * Where the last N lines start is found with the server's own counts: a consumer's
//!   `num_pending` is the number of matching lines from its start sequence on, so a
//!   galloping then binary search over start sequences ([`tail_start`]) finds the
//!   sequence with exactly N matching lines after it, in O(log n) short-lived consumers,
//!   whatever other apps wrote in between. The server filters by subject (app, node),
//!   not instance: with `--instance` the window is widened until it holds N lines of it.
//! * Without the stream there is no history: narunctl says so and follows live lines
//!   from a core subscription.
//! * A named app (or `--node`) must exist somewhere: in `app-configs`, in a node's
//!   heartbeat, or in the log history; otherwise the error lists close names, instead of
//!   following a typo forever in silence.
//! * Columns: time (UTC, milliseconds), node, instance, stream, message. App output is
//!   cleaned by [`clean_controls`]: colours kept on a terminal, stripped into a pipe
//!   (`--color always|never` overrides); cursor moves, titles and other controls always
//!   removed. `--raw` prints the JSON as received.

use crate::cli::{ColorWhen, ConnArgs, LogsArgs};
use crate::follow::{self, Messages, sigint};
use crate::hint::{close_matches, did_you_mean, subject_token_problem};
use crate::output::clean_controls;
use crate::session::{Session, bounded};
use anyhow::{Result, bail};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use narun_wire::events::LogLine;
use narun_wire::names;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Lines of history without `--tail` and `--since`.
pub const DEFAULT_TAIL: u64 = 10;

/// `logs`: see the module docs.
pub async fn run(conn: &ConnArgs, args: LogsArgs) -> Result<()> {
    for (what, v) in [("app name", &args.app), ("--node", &args.node)] {
        if let Some(p) = v.as_deref().and_then(subject_token_problem) {
            bail!("{what} {p}");
        }
    }
    let session = Session::connect(conn, "logs").await?;
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
    check_known(&session, stream.as_ref(), &args).await?;
    let tail = match (args.tail, args.since) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAIL),
    };
    let mut printer = Printer::new(&args);
    match stream {
        Some(stream) => from_stream(&session, stream, &subject, &args, tail, &mut printer).await,
        None => {
            let wants_history = args.since.is_some() || tail != Some(0);
            let why = format!(
                "no log history: the stream {} does not exist (narund keeps one with `[logs] stream = true`)",
                names::LOG_STREAM
            );
            if args.no_follow {
                bail!("{why}, and --no-follow leaves nothing to show");
            }
            if wants_history {
                eprintln!("note: {why}; showing live lines only");
            }
            follow::live(&session, &subject, |p| printer.print(p)).await
        }
    }
}

/// Refuse an app or node nobody knows: not in `app-configs`, not in any heartbeat and
/// without a single line in the log history. The error names close matches.
async fn check_known(
    session: &Session,
    stream: Option<&jetstream::stream::Stream>,
    args: &LogsArgs,
) -> Result<()> {
    if args.app.is_none() && args.node.is_none() {
        return Ok(());
    }
    let states = session.node_states().await?;
    if let Some(app) = &args.app {
        let mut apps: Vec<String> = session
            .load_specs()
            .await?
            .into_iter()
            .flat_map(|(key, spec)| [Some(key), spec.ok().map(|s| s.name)])
            .flatten()
            .collect();
        apps.extend(
            states
                .iter()
                .flat_map(|s| s.instances.iter().map(|i| i.app_name.clone())),
        );
        let known = apps.iter().any(|a| a == app)
            || has_history(session, stream, &names::log_subject(app, "*")).await;
        if !known {
            apps.sort();
            apps.dedup();
            let near = close_matches(app, apps.iter().map(String::as_str));
            bail!(
                "no app named {app:?}: it is not deployed (app-configs), no node runs it and it has no log lines{}{} (`narunctl apps ls` lists the apps)",
                if stream.is_some() {
                    format!(" in {}", names::LOG_STREAM)
                } else {
                    String::new()
                },
                did_you_mean(&near)
            );
        }
    }
    if let Some(node) = &args.node {
        let nodes: Vec<&str> = states.iter().map(|s| s.node_id.as_str()).collect();
        let known = nodes.contains(&node.as_str())
            || has_history(session, stream, &names::log_subject("*", node)).await;
        if !known {
            let near = close_matches(node, nodes.iter().copied());
            bail!(
                "unknown node {node:?}: no heartbeat in {} and no log lines from it{} (`narunctl nodes ls` lists the nodes)",
                names::NODE_STATES_BUCKET,
                did_you_mean(&near)
            );
        }
    }
    Ok(())
}

/// Whether the log stream holds a line on `subject` (a wildcard subject: the server
/// looks up the last message matching it).
async fn has_history(
    session: &Session,
    stream: Option<&jetstream::stream::Stream>,
    subject: &str,
) -> bool {
    let Some(stream) = stream else { return false };
    matches!(
        tokio::time::timeout(
            session.timeout,
            stream.get_last_raw_message_by_subject(subject)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Prints log messages: columns padded to the widest node and instance seen so far.
struct Printer {
    raw: bool,
    colors: bool,
    instance: Option<String>,
    node_width: usize,
    instance_width: usize,
    out: std::io::Stdout,
}

impl Printer {
    fn new(args: &LogsArgs) -> Printer {
        let out = std::io::stdout();
        Printer {
            raw: args.raw,
            colors: match args.color {
                ColorWhen::Auto => out.is_terminal(),
                ColorWhen::Always => true,
                ColorWhen::Never => false,
            },
            instance: args.instance.clone(),
            node_width: 0,
            instance_width: 0,
            out,
        }
    }

    /// Whether a message passes `--instance` (a line that is not JSON does).
    fn wanted(&self, payload: &[u8]) -> bool {
        match (&self.instance, serde_json::from_slice::<LogLine>(payload)) {
            (Some(want), Ok(l)) => &l.instance_id == want,
            _ => true,
        }
    }

    /// Print one message; false when stdout is closed (e.g. piped into `head`).
    fn print(&mut self, payload: &[u8]) -> bool {
        if !self.wanted(payload) {
            return true;
        }
        let line = serde_json::from_slice::<LogLine>(payload);
        let text = match (&line, self.raw) {
            (Ok(l), false) => self.format(l),
            (_, true) => String::from_utf8_lossy(payload).into_owned(),
            (Err(_), false) => {
                clean_controls(&String::from_utf8_lossy(payload), self.colors).into_owned()
            }
        };
        let mut out = self.out.lock();
        writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
    }

    fn format(&mut self, l: &LogLine) -> String {
        self.node_width = self.node_width.max(l.node_id.chars().count());
        self.instance_width = self.instance_width.max(l.instance_id.chars().count());
        let mut s = format!(
            "{}  {:<nw$}  {:<iw$}  {:<6}  {}",
            short_time(&l.timestamp),
            clean_controls(&l.node_id, false),
            clean_controls(&l.instance_id, false),
            clean_controls(&l.stream, false),
            clean_controls(&l.message, self.colors),
            nw = self.node_width,
            iw = self.instance_width,
        );
        if l.dropped_before > 0 {
            s.push_str(&format!(
                "  [{} line(s) dropped before this one]",
                l.dropped_before
            ));
        }
        s
    }
}

/// An RFC 3339 timestamp in UTC with milliseconds (`2026-12-03T22:41:07.123Z`), or the
/// text as it is when it does not parse.
pub fn short_time(ts: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    const FMT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::parse(ts, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(FMT).ok())
        .unwrap_or_else(|| clean_controls(ts, false).into_owned())
}

/// Lines on `subject` from `policy` on, as the server counts them now.
async fn pending_from(
    stream: &jetstream::stream::Stream,
    subject: &str,
    policy: DeliverPolicy,
    timeout: Duration,
) -> Result<u64> {
    use jetstream::consumer::{AckPolicy, pull};
    let consumer = bounded(
        timeout,
        &format!("counting lines in {}", names::LOG_STREAM),
        stream.create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            deliver_policy: policy,
            ack_policy: AckPolicy::None,
            // Removed below; if narunctl dies first, the server removes it soon.
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        }),
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    // Best effort: an ephemeral consumer also goes away by itself.
    let _ = tokio::time::timeout(timeout, stream.delete_consumer(&name)).await;
    Ok(pending)
}

/// Where the last `n` lines on `subject` start: the highest stream sequence from which
/// `n` matching lines remain (`All` when there are at most `n`). `pending(s)` only falls
/// as `s` grows, by at most one per sequence: gallop back from the end doubling the
/// window until it holds `n` lines, then bisect.
async fn tail_start(
    stream: &mut jetstream::stream::Stream,
    subject: &str,
    n: u64,
    timeout: Duration,
) -> Result<DeliverPolicy> {
    let total = pending_from(stream, subject, DeliverPolicy::All, timeout).await?;
    if total <= n {
        return Ok(DeliverPolicy::All);
    }
    let state = bounded(
        timeout,
        &format!("reading the state of {}", names::LOG_STREAM),
        stream.info(),
    )
    .await?
    .state
    .clone();
    let (first, end) = (state.first_sequence, state.last_sequence + 1);
    let at = |s: u64| DeliverPolicy::ByStartSequence { start_sequence: s };
    // Invariant: pending(lo) >= n > pending(hi).
    let mut hi = end;
    let mut window = n.max(1);
    let mut lo = loop {
        let s = end.saturating_sub(window).max(first);
        if s == first || pending_from(stream, subject, at(s), timeout).await? >= n {
            break s;
        }
        hi = s;
        window = window.saturating_mul(2);
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pending_from(stream, subject, at(mid), timeout).await? >= n {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(at(lo))
}

/// Where the history starts: the later of `--since` and the last `tail` lines (the one
/// with fewer lines after it).
async fn start_policy(
    stream: &mut jetstream::stream::Stream,
    subject: &str,
    since: Option<DeliverPolicy>,
    tail: Option<u64>,
    timeout: Duration,
) -> Result<DeliverPolicy> {
    Ok(match (since, tail) {
        (_, Some(0)) => DeliverPolicy::New,
        (Some(since), None) => since,
        (None, None) => DeliverPolicy::All,
        (since, Some(n)) => {
            let by_since = match since {
                Some(p) => Some((pending_from(stream, subject, p, timeout).await?, p)),
                None => None,
            };
            match by_since {
                Some((count, p)) if count <= n => p,
                _ => tail_start(stream, subject, n, timeout).await?,
            }
        }
    })
}

/// The next stored line of `messages`, waiting at most `timeout` (history is already stored).
async fn next_stored(messages: &mut Messages, subject: &str, timeout: Duration) -> Result<Vec<u8>> {
    match follow::next(messages, names::LOG_STREAM, subject, Some(timeout)).await? {
        Some(m) => Ok(m.payload.to_vec()),
        None => bail!(
            "reading the history of {subject} from {}: no line within {timeout:?}",
            names::LOG_STREAM
        ),
    }
}

async fn from_stream(
    session: &Session,
    mut stream: jetstream::stream::Stream,
    subject: &str,
    args: &LogsArgs,
    tail: Option<u64>,
    printer: &mut Printer,
) -> Result<()> {
    let timeout = session.timeout;
    let mut interrupt = sigint()?;
    let since = args.since.map(|d| DeliverPolicy::ByStartTime {
        start_time: time::OffsetDateTime::now_utc()
            - time::Duration::try_from(d).unwrap_or(time::Duration::ZERO),
    });
    let follow = !args.no_follow;
    let then = if follow {
        ", then following (Ctrl-C to stop)"
    } else {
        ""
    };
    // The server filters by app and node, not by instance: with --instance, the window of
    // the last N lines of the subject is widened (x4 each round, read again) until it
    // holds N lines of the instance or reaches the start (stream or --since).
    let instance_tail = match (&args.instance, tail) {
        (Some(_), Some(n)) if n > 0 && n < u64::MAX => Some(n),
        _ => None,
    };
    let mut messages = if let Some(n) = instance_tail {
        let mut window = n;
        let (messages, kept) = loop {
            let policy = start_policy(&mut stream, subject, since, Some(window), timeout).await?;
            let (mut messages, pending) =
                follow::open_ordered(session, &stream, names::LOG_STREAM, subject, policy).await?;
            let mut kept = std::collections::VecDeque::new();
            let mut matched = 0u64;
            for _ in 0..pending {
                let payload = next_stored(&mut messages, subject, timeout).await?;
                if printer.wanted(&payload) {
                    matched += 1;
                    if kept.len() as u64 == n {
                        kept.pop_front();
                    }
                    kept.push_back(payload);
                }
            }
            let whole = !matches!(policy, DeliverPolicy::ByStartSequence { .. });
            if matched >= n || whole || window == u64::MAX {
                break (messages, kept);
            }
            window = window.saturating_mul(4);
        };
        eprintln!(
            "{} line(s) of {subject} (instance {}) from the stream {}{then}",
            kept.len(),
            args.instance.as_deref().unwrap_or_default(),
            names::LOG_STREAM
        );
        for payload in kept {
            if !printer.print(&payload) {
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        messages
    } else {
        let policy = start_policy(&mut stream, subject, since, tail, timeout).await?;
        let (mut messages, pending) =
            follow::open_ordered(session, &stream, names::LOG_STREAM, subject, policy).await?;
        eprintln!(
            "{pending} line(s) of {subject} from the stream {}{then}",
            names::LOG_STREAM
        );
        for _ in 0..pending {
            tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                payload = next_stored(&mut messages, subject, timeout) => {
                    if !printer.print(&payload?) {
                        return Ok(());
                    }
                }
            }
        }
        if !follow {
            return Ok(());
        }
        messages
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = follow::next(&mut messages, names::LOG_STREAM, subject, None) => {
                let Some(msg) = msg? else { continue };
                if !printer.print(&msg.payload) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shortened_to_utc_milliseconds() {
        assert_eq!(
            short_time("2026-12-03T22:41:07.123456789Z"),
            "2026-12-03T22:41:07.123Z"
        );
        assert_eq!(
            short_time("2026-12-03T23:41:07+01:00"),
            "2026-12-03T22:41:07.000Z"
        );
        assert_eq!(short_time("yesterday\u{1b}[2J"), "yesterday");
    }
}
