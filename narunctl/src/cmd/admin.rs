//! `narunctl admin replicas N [--dry-run]`: move narun's buckets and streams to N replicas.
//!
//! Buckets made before a cluster existed (or by a narund that had `stream_replicas = 1`)
//! have one replica: losing the server that holds it stops spec writes and heartbeats.
//! JetStream changes the replicas of a stream in place (a stream update with another
//! `num_replicas`: the new peers catch up from the leader while the stream stays in use;
//! nats-server 2.9.10 does this for R1 → R3 and back). This command does that for every
//! stream of the contract ([`narun_wire::jetstream::contract_streams`]) that exists, one
//! after the other, and prints one line per stream: `changed`, `unchanged`, `would change`
//! (`--dry-run`), or `missing`. A stream that cannot change (fewer servers than replicas)
//! is an error naming it; the streams before it keep their new replicas.

use crate::cli::{AdminCmd, ConnArgs};
use crate::output::{print_json, print_table};
use crate::session::Session;
use anyhow::Result;
use narun_wire::jetstream;

/// Run an `admin` subcommand.
pub async fn run(conn: &ConnArgs, cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Replicas {
            replicas,
            dry_run,
            json,
        } => set_replicas(conn, replicas, dry_run, json.json).await,
    }
}

/// One line of the report.
#[derive(Debug, serde::Serialize)]
struct Row {
    stream: String,
    from: Option<usize>,
    to: usize,
    action: &'static str,
}

async fn set_replicas(conn: &ConnArgs, replicas: usize, dry_run: bool, json: bool) -> Result<()> {
    let session = Session::connect(conn, "admin").await?;
    let mut rows = Vec::new();
    for stream in jetstream::contract_streams() {
        let what = format!("setting the replicas of {stream}");
        let change = session
            .bounded(
                &what,
                jetstream::set_replicas(&session.js, &stream, replicas, dry_run),
            )
            .await?;
        rows.push(match change {
            None => Row {
                stream,
                from: None,
                to: replicas,
                action: "missing",
            },
            Some(c) => Row {
                stream,
                from: Some(c.from),
                to: c.to,
                action: match (c.from == c.to, dry_run) {
                    (true, _) => "unchanged",
                    (false, true) => "would change",
                    (false, false) => "changed",
                },
            },
        });
    }
    if json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.stream.clone(),
                r.from.map_or("-".into(), |n| n.to_string()),
                r.to.to_string(),
                r.action.to_string(),
            ]
        })
        .collect();
    print_table(&["STREAM", "REPLICAS", "WANTED", "ACTION"], &table);
    Ok(())
}
