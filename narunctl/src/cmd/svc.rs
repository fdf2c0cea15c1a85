//! `narunctl svc`: NATS Micro (ADR-32) discovery by scatter-gather.
//!
//! Every micro service instance subscribes to `$SRV.<VERB>`,
//! `$SRV.<VERB>.<name>` and `$SRV.<VERB>.<name>.<id>` (VERB = PING, INFO,
//! STATS). We publish one request with a private reply inbox and collect the
//! answers until `--timeout` passes or nobody has answered for a short quiet
//! period. A `503` status message means "no responders": nobody is listening.

use crate::cli::{ConnArgs, SvcCmd};
use crate::output::{print_json, print_table};
use crate::session::Session;
use anyhow::{Result, anyhow, bail};
use futures_util::StreamExt;
use narun_wire::micro::{InfoResponse, PingResponse, StatsResponse};
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};

/// After the first answer, stop once no other answer arrived for this long.
const QUIET: Duration = Duration::from_millis(300);

/// Run an `svc` subcommand.
pub async fn run(conn: &ConnArgs, cmd: SvcCmd) -> Result<()> {
    let session = Session::connect(conn, "svc").await?;
    let (client, timeout) = (&session.client, session.timeout);
    match cmd {
        SvcCmd::Ls(j) => {
            let mut infos: Vec<InfoResponse> = answers(client, "INFO", None, timeout).await?;
            infos.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            if j.json {
                print_json(&infos)?;
            } else {
                let rows: Vec<Vec<String>> = infos
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.version.clone(),
                            i.id.clone(),
                            i.description.clone(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "VERSION", "ID", "DESCRIPTION"], &rows);
            }
        }
        SvcCmd::Info { name, json } => {
            let mut infos: Vec<InfoResponse> =
                answers(client, "INFO", Some(&name), timeout).await?;
            none_found(infos.is_empty(), &name, timeout)?;
            infos.sort_by(|a, b| a.id.cmp(&b.id));
            if json.json {
                print_json(&infos)?;
                return Ok(());
            }
            for (n, i) in infos.iter().enumerate() {
                if n > 0 {
                    println!();
                }
                println!("Service:     {} {}", i.name, i.version);
                println!("ID:          {}", i.id);
                println!("Description: {}", i.description);
                for (k, v) in &i.metadata {
                    println!("Metadata:    {k}={v}");
                }
                let rows: Vec<Vec<String>> = i
                    .endpoints
                    .iter()
                    .map(|e| vec![e.name.clone(), e.subject.clone(), e.queue_group.clone()])
                    .collect();
                print_table(&["ENDPOINT", "SUBJECT", "QUEUE GROUP"], &rows);
            }
        }
        SvcCmd::Stats { name, json } => {
            let mut stats: Vec<StatsResponse> =
                answers(client, "STATS", Some(&name), timeout).await?;
            none_found(stats.is_empty(), &name, timeout)?;
            stats.sort_by(|a, b| a.id.cmp(&b.id));
            if json.json {
                print_json(&stats)?;
                return Ok(());
            }
            let mut rows = Vec::new();
            for s in &stats {
                for e in &s.endpoints {
                    rows.push(vec![
                        s.id.clone(),
                        e.name.clone(),
                        e.num_requests.to_string(),
                        e.queue_group.clone(),
                        e.num_errors.to_string(),
                        format!("{:?}", Duration::from_nanos(e.processing_time)),
                        format!("{:?}", Duration::from_nanos(e.average_processing_time)),
                    ]);
                }
            }
            print_table(
                &[
                    "ID",
                    "ENDPOINT",
                    "REQUESTS",
                    "QUEUE GROUP",
                    "ERRORS",
                    "PROCESSING TIME",
                    "AVERAGE TIME",
                ],
                &rows,
            );
        }
        SvcCmd::Ping { name, json } => {
            let mut pings: Vec<(PingResponse, Duration)> =
                gather(client, "PING", name.as_deref(), timeout).await?;
            if let Some(name) = &name {
                none_found(pings.is_empty(), name, timeout)?;
            }
            pings.sort_by(|a, b| (&a.0.name, &a.0.id).cmp(&(&b.0.name, &b.0.id)));
            if json.json {
                let out: Vec<_> = pings
                    .iter()
                    .map(|(p, rtt)| serde_json::json!({"ping": p, "rtt_ms": rtt.as_secs_f64() * 1000.0}))
                    .collect();
                print_json(&out)?;
            } else {
                for (p, rtt) in &pings {
                    println!("{} {} {} rtt={rtt:?}", p.name, p.id, p.version);
                }
                eprintln!("{} answer(s)", pings.len());
            }
        }
    }
    Ok(())
}

fn none_found(empty: bool, name: &str, timeout: Duration) -> Result<()> {
    if empty {
        bail!("no instance of service {name} answered within {timeout:?} (see `narunctl svc ls`)");
    }
    Ok(())
}

/// [`gather`] without the round-trip times.
async fn answers<T: DeserializeOwned>(
    client: &async_nats::Client,
    verb: &str,
    name: Option<&str>,
    timeout: Duration,
) -> Result<Vec<T>> {
    Ok(gather(client, verb, name, timeout)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// Publish `$SRV.<verb>[.<name>]` and collect the parsed answers with the time
/// each took. Answers that do not parse are reported on stderr and skipped.
async fn gather<T: DeserializeOwned>(
    client: &async_nats::Client,
    verb: &str,
    name: Option<&str>,
    timeout: Duration,
) -> Result<Vec<(T, Duration)>> {
    let subject = match name {
        Some(n) => format!("$SRV.{verb}.{n}"),
        None => format!("$SRV.{verb}"),
    };
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| anyhow!("subscribing to the reply inbox: {e}"))?;
    let start = Instant::now();
    client
        .publish_with_reply(subject.clone(), inbox, bytes::Bytes::new())
        .await
        .map_err(|e| anyhow!("publishing {subject}: {e}"))?;
    let deadline = start + timeout;
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = if out.is_empty() {
            deadline - now
        } else {
            QUIET.min(deadline - now)
        };
        let msg = match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // Nobody subscribes to the subject: no service at all.
            break;
        }
        match serde_json::from_slice::<T>(&msg.payload) {
            Ok(v) => out.push((v, start.elapsed())),
            Err(e) => eprintln!(
                "warning: ignoring an unparsable {verb} answer ({e}): {}",
                String::from_utf8_lossy(&msg.payload)
            ),
        }
    }
    Ok(out)
}
