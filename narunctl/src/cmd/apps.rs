//! `narunctl apps ls|info|delete|restart`: the deployed apps (specs in `app-configs`)
//! and, from the node heartbeats, where their instances run.
//!
//! `restart NAME [--node NODE]… [--instance ID]` asks each node that runs the app to
//! restart its instances. The nodes come from `--node`, else from the heartbeats in
//! `node-runner-states` (every node whose `instances[]` lists the app). Each gets one core
//! NATS request on `narun.control.<node>.restart` with `{"app": NAME}` (and
//! `"instance"`); narund restarts the instances one at a time and answers when they are
//! all ready again (or when one did not come back) with a [`RestartReply`]. Nodes are
//! asked in parallel; each may take `--restart-timeout`.

use crate::cli::{AppsCmd, ConnArgs, RestartArgs};
use crate::output::{ask_yes, print_json, print_table};
use crate::session::{Session, node_instances, node_status};
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream::kv;
use narun_spec::AppSpec;
use narun_wire::events::{RestartReply, RestartRequest};
use narun_wire::jetstream::APP_CONFIGS;
use narun_wire::names;
use std::time::Duration;

/// Run an `apps` subcommand.
pub async fn run(conn: &ConnArgs, cmd: AppsCmd) -> Result<()> {
    match cmd {
        AppsCmd::Ls(j) => ls(conn, j.json).await,
        AppsCmd::Info { name, json } => info(conn, &name, json.json).await,
        AppsCmd::Delete { name, yes } => delete(conn, &name, yes).await,
        AppsCmd::Restart(args) => restart(conn, args).await,
        AppsCmd::Diff(args) => super::diff::run(conn, args).await,
    }
}

/// Short description of the node selectors: `node-1 x2, role=edge x1`.
fn describe_nodes(spec: &AppSpec) -> String {
    if spec.nodes.is_empty() {
        return "-".into();
    }
    spec.nodes
        .iter()
        .map(|n| {
            let target = match (&n.name, &n.labels) {
                (Some(name), _) => name.clone(),
                (None, Some(l)) if l.is_empty() => "*".into(),
                (None, Some(l)) => l
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                (None, None) => "?".into(),
            };
            format!("{target} x{}", n.replicas)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stored spec entry of `name` (apps info, apps restart).
async fn stored_entry(session: &Session, name: &str) -> Result<kv::Entry> {
    let store = session.open_kv(&APP_CONFIGS).await?.ok_or_else(|| {
        anyhow!("app {name} not found: bucket app-configs does not exist (nothing deployed yet)")
    })?;
    session
        .bounded(&format!("reading app-configs/{name}"), store.entry(name))
        .await?
        .filter(|e| e.operation == kv::Operation::Put)
        .ok_or_else(|| anyhow!("app {name} not found in app-configs (see `narunctl apps ls`)"))
}

async fn ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let session = Session::connect(conn, "apps").await?;
    let specs = session.load_specs().await?;
    let states = session.node_states().await?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (key, spec) in specs {
        match spec {
            Ok(spec) => {
                let desired: u32 = states
                    .iter()
                    .map(|s| spec.desired_replicas(&s.node_id, &s.labels))
                    .sum();
                let running: usize = states.iter().map(|s| node_instances(s, &key).len()).sum();
                out.push(serde_json::json!({
                    "name": key, "tag": spec.tag, "nodes": spec.nodes,
                    "desired_on_live_nodes": desired, "running": running,
                }));
                rows.push(vec![
                    key,
                    spec.tag.clone(),
                    describe_nodes(&spec),
                    format!("{running}/{desired}"),
                ]);
            }
            Err(e) => {
                out.push(serde_json::json!({"name": key, "error": e}));
                rows.push(vec![
                    key,
                    "?".into(),
                    format!("invalid spec: {e}"),
                    "-".into(),
                ]);
            }
        }
    }
    if json {
        print_json(&out)?;
    } else {
        print_table(&["APP", "TAG", "NODES/REPLICAS", "RUNNING/DESIRED"], &rows);
    }
    Ok(())
}

async fn info(conn: &ConnArgs, name: &str, json: bool) -> Result<()> {
    let session = Session::connect(conn, "apps").await?;
    let entry = stored_entry(&session, name).await?;
    let (value, revision) = (entry.value, entry.revision);
    let spec = AppSpec::from_kv_bytes(&value)
        .map_err(|e| anyhow!("the stored spec of {name} cannot be parsed: {e}"))?;
    let states = session.node_states().await?;
    let mut nodes = Vec::new();
    for s in &states {
        let desired = spec.desired_replicas(&s.node_id, &s.labels);
        let instances = node_instances(s, name);
        if desired == 0 && instances.is_empty() {
            continue;
        }
        nodes.push((
            s.node_id.clone(),
            node_status(s),
            desired.to_string(),
            instances,
        ));
    }
    for sel in &spec.nodes {
        if let Some(n) = &sel.name
            && !states.iter().any(|s| &s.node_id == n)
        {
            nodes.push((
                n.clone(),
                "offline/unknown".into(),
                sel.replicas.to_string(),
                Vec::new(),
            ));
        }
    }
    if json {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|(n, st, d, i)| serde_json::json!({"node": n, "status": st, "desired": d, "running": i.len(), "instances": i}))
            .collect();
        let out = serde_json::json!({"spec": spec, "revision": revision, "config_hash": spec.config_hash(), "nodes": nodes});
        print_json(&out)?;
        return Ok(());
    }
    println!(
        "App {name} (tag {}, revision {revision}, config hash {})",
        spec.tag,
        spec.config_hash()
    );
    print_json(&spec)?;
    println!();
    let rows: Vec<Vec<String>> = nodes
        .into_iter()
        .map(|(n, st, d, i)| {
            let ids = if i.is_empty() {
                "-".into()
            } else {
                i.join(",")
            };
            vec![n, st, d, i.len().to_string(), ids]
        })
        .collect();
    print_table(
        &["NODE", "STATUS", "DESIRED", "RUNNING", "INSTANCES"],
        &rows,
    );
    Ok(())
}

async fn delete(conn: &ConnArgs, name: &str, yes: bool) -> Result<()> {
    let session = Session::connect(conn, "apps").await?;
    let store = session
        .open_kv(&APP_CONFIGS)
        .await?
        .ok_or_else(|| anyhow!("app {name} not found: bucket app-configs does not exist"))?;
    let exists = session
        .bounded(&format!("reading app-configs/{name}"), store.get(name))
        .await?;
    if exists.is_none() {
        bail!("app {name} not found in app-configs (see `narunctl apps ls`)");
    }
    // Asked even without a terminal on stdin (unlike `confirm`): EOF is a "no".
    if !yes {
        ask_yes(&format!(
            "Delete app {name}? Its instances will be stopped on every node."
        ))?;
    }
    session
        .bounded(&format!("deleting app-configs/{name}"), store.delete(name))
        .await?;
    println!("deleted app {name}");
    Ok(())
}

/// `apps restart`: see the module doc.
async fn restart(conn: &ConnArgs, args: RestartArgs) -> Result<()> {
    let name = args.name.as_str();
    let session = Session::connect(conn, "restart").await?;
    stored_entry(&session, name).await?;

    let nodes: Vec<String> = if args.node.is_empty() {
        session
            .node_states()
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
    let replies = futures_util::future::join_all(nodes.iter().map(|node| {
        ask(
            &session.client,
            node,
            name,
            body.clone(),
            args.restart_timeout,
        )
    }))
    .await;

    let failed = replies.iter().filter(|r| !r.error.is_empty()).count();
    if args.json.json {
        print_json(&replies)?;
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
