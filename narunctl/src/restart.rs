//! `apps restart NAME [--node NODE]… [--instance ID]`: ask each node that runs the app
//! to restart its instances.
//!
//! The nodes come from `--node`, else from the heartbeats in `node-runner-states`
//! (every node whose `instances[]` lists the app). Each gets one core NATS request on
//! `narun.control.<node>.restart` with `{"app": NAME}` (and `"instance"`); narund
//! restarts the instances one at a time and answers when they are all ready again
//! (or when one did not come back) with a [`RestartReply`]. Nodes are asked in
//! parallel; each may take `--restart-timeout`.

use crate::cli::{ConnArgs, RestartArgs};
use crate::commands::{bounded, connect, js, node_instances, node_states, open_kv, print_table};
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream::kv;
use narun_wire::events::{RestartReply, RestartRequest};
use narun_wire::names;
use std::time::Duration;

pub async fn run(conn: &ConnArgs, args: RestartArgs) -> Result<()> {
    let name = args.name.as_str();
    let client = connect(conn, "restart").await?;
    let js = js(&client, conn.timeout);
    let store = open_kv(&js, names::APP_CONFIGS_BUCKET, conn.timeout)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "app {name} not found: bucket app-configs does not exist (nothing deployed yet)"
            )
        })?;
    bounded(
        conn.timeout,
        &format!("reading app-configs/{name}"),
        store.entry(name),
    )
    .await?
    .filter(|e| e.operation == kv::Operation::Put)
    .ok_or_else(|| anyhow!("app {name} not found in app-configs (see `narunctl apps ls`)"))?;

    let nodes: Vec<String> = if args.node.is_empty() {
        node_states(&js, conn.timeout)
            .await?
            .iter()
            .filter(|s| {
                let ids = node_instances(s, name);
                match &args.instance {
                    Some(i) => ids.contains(i),
                    None => !ids.is_empty(),
                }
            })
            .map(|s| s.node_id.clone())
            .collect()
    } else {
        args.node.clone()
    };
    if nodes.is_empty() {
        let what = match &args.instance {
            Some(i) => format!("instance {i} of {name}"),
            None => format!("app {name}"),
        };
        bail!(
            "no node runs {what}: no heartbeat in {} lists it (see `narunctl apps info {name}`; \
             --node NODE asks a node directly)",
            names::NODE_STATES_BUCKET
        );
    }

    let request = RestartRequest {
        app: name.to_string(),
        instance: args.instance.clone().unwrap_or_default(),
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&request)?);
    let replies = futures_util::future::join_all(
        nodes
            .iter()
            .map(|node| ask(&client, node, name, body.clone(), args.restart_timeout)),
    )
    .await;

    let failed = replies.iter().filter(|r| !r.error.is_empty()).count();
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&replies)?);
    } else {
        let rows: Vec<Vec<String>> = replies
            .iter()
            .map(|r| {
                vec![
                    r.node_id.clone(),
                    if r.error.is_empty() { "ok" } else { "failed" }.into(),
                    if r.restarted.is_empty() {
                        "-".into()
                    } else {
                        r.restarted.join(",")
                    },
                    if r.error.is_empty() {
                        String::new()
                    } else {
                        r.error.clone()
                    },
                ]
            })
            .collect();
        print_table(&["NODE", "RESULT", "RESTARTED", "ERROR"], &rows);
    }
    if failed > 0 {
        let first = replies
            .iter()
            .find(|r| !r.error.is_empty())
            .map(|r| format!("{}: {}", r.node_id, r.error))
            .unwrap_or_default();
        bail!(
            "restart of {name} failed on {failed} of {} node(s) ({first})",
            replies.len()
        );
    }
    Ok(())
}

/// One node's answer; transport problems become a reply with `error` set.
async fn ask(
    client: &async_nats::Client,
    node: &str,
    app: &str,
    body: bytes::Bytes,
    timeout: Duration,
) -> RestartReply {
    let subject = names::control_subject(node, names::CONTROL_RESTART);
    let failed = |error: String| RestartReply {
        node_id: node.to_string(),
        app: app.to_string(),
        restarted: Vec::new(),
        error,
    };
    let req = async_nats::Request::new()
        .payload(body)
        .timeout(Some(timeout));
    match client.send_request(subject, req).await {
        Ok(msg) => match serde_json::from_slice::<RestartReply>(&msg.payload) {
            Ok(mut r) => {
                if r.node_id.is_empty() {
                    r.node_id = node.to_string();
                }
                r
            }
            Err(e) => failed(format!("unreadable answer from node {node}: {e}")),
        },
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => failed(format!(
                "node {node} does not answer restart requests (offline, or a Go node-runner \
                 or an older narund without `apps restart`)"
            )),
            async_nats::RequestErrorKind::TimedOut => failed(format!(
                "no answer from node {node} within {timeout:?} (its instances may still be \
                 restarting; see `narunctl apps info {app}`; raise --restart-timeout)"
            )),
            _ => failed(format!("restart request to node {node}: {e}")),
        },
    }
}
