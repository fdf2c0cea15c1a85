//! `narunctl events`: the status events narund publishes on `status.<app>.<node>` (every
//! transition of every instance: `starting`, `running`, `crashed`, `backoff`, `failed`,
//! `rolled_back`, … with the reason), one line each.
//!
//! With the `narun-status` stream (narund `[events] stream = true`, docs/config.md) the
//! history of the last `--since` is read through one ordered consumer, which then keeps
//! delivering new events with `--follow` (nothing is lost or repeated where the history
//! ends). Without the stream the server keeps no events: narunctl says so on stderr and
//! follows live events from a core subscription until Ctrl-C.

use crate::cli::{ConnArgs, EventsArgs};
use crate::follow::{self, sigint};
use crate::session::Session;
use anyhow::{Result, bail};
use async_nats::jetstream;
use narun_wire::events::StatusEvent;
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::io::Write;

/// Run `events`.
pub async fn run(conn: &ConnArgs, args: EventsArgs) -> Result<()> {
    for (flag, value) in [("--app", &args.app), ("--node", &args.node)] {
        if let Some(v) = value {
            check_token(flag, v)?;
        }
    }
    let session = Session::connect(conn, "events").await?;
    let subject = names::status_subject(
        args.app.as_deref().unwrap_or("*"),
        args.node.as_deref().unwrap_or("*"),
    );
    let stream =
        match tokio::time::timeout(session.timeout, session.js.get_stream(names::STATUS_STREAM))
            .await
        {
            Ok(Ok(s)) => Some(s),
            // Not found, or no JetStream at all: live events only.
            Ok(Err(_)) => None,
            Err(_) => bail!(
                "looking up the status stream {}: no answer within {:?}",
                names::STATUS_STREAM,
                session.timeout
            ),
        };
    match stream {
        Some(stream) => from_stream(&session, stream, &subject, &args).await,
        None => {
            eprintln!(
                "note: no event history: the stream {} does not exist (set `[events] stream = true` in narund's config); showing live events only",
                names::STATUS_STREAM
            );
            let mut stdout = std::io::stdout();
            follow::live(&session, &subject, |p| {
                print_event(&mut stdout, p, args.json)
            })
            .await
        }
    }
}

/// An app name or node id must be one NATS subject token: not empty, no `.`, `*`, `>`
/// or white space (else the subscription would match other apps, or be refused).
fn check_token(flag: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 256
        || v.chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        bail!(
            "{flag} {v:?}: not an app name or node id (one NATS subject token: 1 to 256 \
             characters, no '.', '*', '>' or white space)"
        );
    }
    Ok(())
}

/// One event as a line: time, node, instance, tag, status, then what explains it.
pub fn format_event(ev: &StatusEvent) -> String {
    let mut detail = Vec::new();
    if ev.status == InstanceStatus::RolledBack {
        // narund's text names both tags: `tag v2 did not become ready (…): …; web-0 keeps
        // running tag v1`.
        detail.push(if ev.error.is_empty() {
            format!(
                "tag {} did not become ready ({}); the previous spec keeps running",
                ev.tag,
                crate::status::describe(ev.reason.as_ref(), None, "")
            )
        } else {
            ev.error.clone()
        });
    } else if ev.reason.is_some() || !ev.error.is_empty() {
        detail.push(crate::status::describe(
            ev.reason.as_ref(),
            ev.exit_code,
            &ev.error,
        ));
    }
    if let Some(pid) = ev.pid {
        detail.push(format!("pid {pid}"));
    }
    if let Some(r) = ev.restarts {
        detail.push(format!("restarts {r}"));
    }
    if !ev.notify_status.is_empty() {
        detail.push(format!("STATUS={}", ev.notify_status));
    }
    let instance = if ev.instance_id.is_empty() {
        ev.app_name.as_str()
    } else {
        ev.instance_id.as_str()
    };
    format!(
        "{:<30}  {:<12}  {:<14}  {:<8}  {:<12}  {}",
        ev.time,
        ev.node_id,
        instance,
        if ev.tag.is_empty() { "-" } else { &ev.tag },
        ev.status,
        detail.join(", ")
    )
    .trim_end()
    .to_string()
}

/// `1h`, `7d`, `90s`: a whole number of the largest unit that divides it (what an
/// operator typed for --since), else `human_duration`.
fn round_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => crate::output::human_duration(d),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => crate::output::human_duration(d),
    }
}

/// Print one event; false when stdout is closed (e.g. piped into `head`).
fn print_event(out: &mut impl Write, payload: &[u8], json: bool) -> bool {
    let text = match serde_json::from_slice::<StatusEvent>(payload) {
        Ok(ev) if !json => format_event(&ev),
        _ => String::from_utf8_lossy(payload).into_owned(),
    };
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

async fn from_stream(
    session: &Session,
    stream: jetstream::stream::Stream,
    subject: &str,
    args: &EventsArgs,
) -> Result<()> {
    use jetstream::consumer::DeliverPolicy;
    let timeout = session.timeout;
    let mut interrupt = sigint()?;
    let start_time = time::OffsetDateTime::now_utc()
        - time::Duration::try_from(args.since).unwrap_or(time::Duration::ZERO);
    let (mut messages, pending) = follow::open_ordered(
        session,
        &stream,
        names::STATUS_STREAM,
        subject,
        DeliverPolicy::ByStartTime { start_time },
    )
    .await?;
    let since = round_duration(args.since);
    if args.follow {
        eprintln!(
            "{pending} event(s) of {subject} from the last {since} (stream {}), then following (Ctrl-C to stop)",
            names::STATUS_STREAM
        );
    } else {
        eprintln!(
            "{pending} event(s) of {subject} from the last {since} (stream {})",
            names::STATUS_STREAM
        );
        if pending == 0 {
            return Ok(());
        }
    }
    let mut stdout = std::io::stdout();
    // Without --follow, a history that stops arriving is over (bounded like every answer).
    let idle = if args.follow { None } else { Some(timeout) };
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = follow::next(&mut messages, names::STATUS_STREAM, subject, idle) => {
                let Some(msg) = msg? else {
                    bail!("reading {subject} from {}: no answer within {timeout:?}", names::STATUS_STREAM)
                };
                if !print_event(&mut stdout, &msg.payload, args.json) {
                    return Ok(());
                }
                if !args.follow && msg.info().is_ok_and(|i| i.pending == 0) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::status::Reason;

    #[test]
    fn filters_are_single_subject_tokens() {
        assert!(check_token("--app", "web-1_x").is_ok());
        for bad in ["", "a.b", "*", ">", "a b", "x\ny", &"n".repeat(257)] {
            let e = check_token("--node", bad).unwrap_err().to_string();
            assert!(e.starts_with("--node "), "{e}");
        }
    }

    #[test]
    fn since_reads_as_typed() {
        use std::time::Duration;
        assert_eq!(round_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(round_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(round_duration(Duration::from_secs(600)), "10m");
        assert_eq!(round_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn lines_say_what_happened() {
        let ev = StatusEvent {
            instance_id: "web-0".into(),
            node_id: "n1".into(),
            status: InstanceStatus::Crashed,
            exit_code: Some(3),
            error: "exit status 3".into(),
            time: "2026-01-01T00:00:00Z".into(),
            reason: Some(Reason::ExitCode),
            tag: "v1".into(),
            restarts: Some(2),
            ..Default::default()
        };
        let line = format_event(&ev);
        assert!(line.starts_with("2026-01-01T00:00:00Z"), "{line}");
        assert!(
            line.contains("web-0")
                && line.contains("crashed")
                && line.ends_with("exit code 3, restarts 2"),
            "{line}"
        );
        let rb = StatusEvent {
            status: InstanceStatus::RolledBack,
            reason: Some(Reason::StartTimeout),
            tag: "v2".into(),
            error: String::new(),
            ..ev
        };
        assert!(
            format_event(&rb).contains(
                "tag v2 did not become ready (readiness timeout); the previous spec keeps running"
            ),
            "{}",
            format_event(&rb)
        );
    }
}
