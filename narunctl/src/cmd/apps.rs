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

use crate::cli::{AppsCmd, ConnArgs, RestartArgs, RollbackArgs, ScaleArgs};
use crate::output::{ask_yes, human_duration, print_json, print_table};
use crate::session::{Session, node_instances, node_status};
use crate::status::{AppCounts, count_app};
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
        AppsCmd::Scale(args) => scale(conn, args).await,
        AppsCmd::Rollback(args) => rollback(conn, args).await,
    }
}

/// Short description of the node selectors: `node-1 x2, role=edge x1`.
fn describe_nodes(spec: &AppSpec) -> String {
    if spec.nodes.is_empty() {
        return "-".into();
    }
    spec.nodes
        .iter()
        .map(|n| format!("{} x{}", describe_selector(n), n.replicas))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one selector selects: `node-1`, `role=edge,zone=a`, `*`.
fn describe_selector(n: &narun_spec::NodeSelector) -> String {
    match (&n.name, &n.labels) {
        (Some(name), _) => name.clone(),
        (None, Some(l)) if l.is_empty() => "*".into(),
        (None, Some(l)) => l
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        (None, None) => "?".into(),
    }
}

/// The stored spec entry of `name` (apps info, apps restart).
async fn stored_entry(session: &Session, name: &str) -> Result<kv::Entry> {
    let store = session.open_kv(&APP_CONFIGS).await?.ok_or_else(|| {
        anyhow!("app {name} not found: bucket app-configs does not exist (nothing deployed yet)")
    })?;
    match session
        .bounded(&format!("reading app-configs/{name}"), store.entry(name))
        .await?
        .filter(|e| e.operation == kv::Operation::Put)
    {
        Some(e) => Ok(e),
        None => Err(app_not_found(session, &store, name).await),
    }
}

/// "app X not found", with the deployed apps closest to `name` (a mistyped name).
async fn app_not_found(session: &Session, store: &kv::Store, name: &str) -> anyhow::Error {
    let keys = session.kv_keys(store).await.unwrap_or_default();
    let near = crate::hint::close_matches(name, keys.iter().map(String::as_str));
    anyhow!(
        "app {name} not found in app-configs{} (see `narunctl apps ls`)",
        crate::hint::did_you_mean(&near)
    )
}

async fn ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let session = Session::connect(conn, "apps").await?;
    let specs = session.load_specs().await?;
    let states = session.node_states().await?;
    let now = time::OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (key, spec) in specs {
        match spec {
            Ok(spec) => {
                let c = count_app(&spec, &states, node_status, now);
                let last = waiting_for_after(&states, &key).unwrap_or_else(|| last_column(&c, now));
                out.push(serde_json::json!({
                    "name": key, "tag": spec.tag, "nodes": spec.nodes,
                    "desired_on_live_nodes": c.desired, "desired": c.desired,
                    "running": c.running, "ready": c.ready, "failed": c.failed,
                    "restarting": c.restarting, "rollbacks": c.rollbacks(),
                    "last": c.last(), "per_node": c.nodes,
                }));
                rows.push(vec![
                    key,
                    spec.tag.clone(),
                    describe_nodes(&spec),
                    c.desired.to_string(),
                    c.running.to_string(),
                    c.ready.to_string(),
                    c.failed.to_string(),
                    c.restarting.to_string(),
                    last,
                ]);
            }
            Err(e) => {
                out.push(serde_json::json!({"name": key, "error": e}));
                rows.push(vec![
                    key,
                    "?".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("invalid spec: {e}"),
                ]);
            }
        }
    }
    if json {
        print_json(&out)?;
    } else {
        print_table(
            &[
                "APP",
                "TAG",
                "NODES/REPLICAS",
                "DESIRED",
                "RUNNING",
                "READY",
                "FAILED",
                "RESTARTING",
                "LAST",
            ],
            &rows,
        );
    }
    Ok(())
}

/// `waiting for db (web-0)` when an instance of `app` waits for its spec's `after`
/// services (status `starting`, reason `after`): what the LAST column shows then.
fn waiting_for_after(states: &[narun_wire::events::NodeState], app: &str) -> Option<String> {
    let waiting: Vec<String> = states
        .iter()
        .flat_map(|s| s.instances.iter())
        .filter(|i| i.app_name == app && i.reason == Some(narun_wire::status::Reason::After))
        .filter(|i| i.status == narun_wire::status::InstanceStatus::Starting)
        .map(|i| format!("{} ({})", i.error, i.instance_id))
        .collect();
    (!waiting.is_empty()).then(|| waiting.join("; "))
}

/// The LAST column: the newest failure or rollback (`rolled back v2 → v1: …`) with the
/// instance and how long ago, else `-`.
fn last_column(c: &AppCounts, now: time::OffsetDateTime) -> String {
    match c.last() {
        Some(l) if l.rollback => format!("rolled back {}", l.short(now)),
        Some(l) => l.short(now),
        None => "-".into(),
    }
}

async fn info(conn: &ConnArgs, name: &str, json: bool) -> Result<()> {
    let session = Session::connect(conn, "apps").await?;
    let entry = stored_entry(&session, name).await?;
    let (value, revision) = (entry.value, entry.revision);
    let spec = AppSpec::from_kv_bytes(&value)
        .map_err(|e| anyhow!("the stored spec of {name} cannot be parsed: {e}"))?;
    let states = session.node_states().await?;
    let now = time::OffsetDateTime::now_utc();
    let c = count_app(&spec, &states, node_status, now);
    let rule = narun_wire::status::SettleRule::new(spec.notify, spec.settle_sec);
    let instances: Vec<(String, &narun_wire::events::InstanceState)> = states
        .iter()
        .flat_map(|s| {
            s.instances
                .iter()
                .filter(|i| i.app_name == name)
                .map(|i| (s.node_id.clone(), i))
        })
        .collect();
    if json {
        let inst: Vec<_> = instances
            .iter()
            .map(|(node, i)| {
                let mut v = serde_json::to_value(i).unwrap_or_default();
                v["node"] = node.clone().into();
                v["ready"] = crate::status::is_ready(i, rule, now).into();
                v
            })
            .collect();
        let nodes: Vec<_> = c
            .nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or_default();
                v["status"] = n.node_status.clone().into();
                v
            })
            .collect();
        let out = serde_json::json!({
            "spec": spec, "revision": revision, "config_hash": spec.config_hash(),
            "desired": c.desired, "running": c.running, "ready": c.ready,
            "failed": c.failed, "restarting": c.restarting,
            "rollbacks": c.rollbacks(), "last": c.last(),
            "nodes": nodes, "instances": inst,
        });
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
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.node_status.clone(),
                n.desired.to_string(),
                n.running.to_string(),
                n.ready.to_string(),
                n.failed.to_string(),
                n.restarting.to_string(),
                if n.instances.is_empty() {
                    "-".into()
                } else {
                    n.instances.join(",")
                },
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "STATUS",
            "DESIRED",
            "RUNNING",
            "READY",
            "FAILED",
            "RESTARTING",
            "INSTANCES",
        ],
        &rows,
    );
    if !instances.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = instances
            .iter()
            .map(|(node, i)| {
                let since = crate::status::elapsed(&i.since, now)
                    .map_or_else(|| "-".into(), human_duration);
                let status = if crate::status::is_ready(i, rule, now) {
                    format!("{} (ready)", i.status)
                } else {
                    i.status.to_string()
                };
                let mut why = Vec::new();
                if i.reason == Some(narun_wire::status::Reason::After) && !i.error.is_empty() {
                    why.push(i.error.clone());
                }
                if let Some(rb) = &i.rolled_back {
                    why.push(format!(
                        "rolled back {}",
                        crate::status::describe_rollback(rb, &i.tag)
                    ));
                }
                if let Some(f) = &i.last_failure {
                    let ago = crate::status::elapsed(&f.time, now)
                        .map(|d| format!(", {} ago", human_duration(d)))
                        .unwrap_or_default();
                    why.push(format!(
                        "last {}: {}{ago}",
                        f.status,
                        crate::status::describe(f.reason.as_ref(), f.exit_code, &f.error)
                    ));
                }
                vec![
                    i.instance_id.clone(),
                    node.clone(),
                    i.tag.clone(),
                    status,
                    since,
                    i.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    i.restarts.to_string(),
                    if why.is_empty() {
                        "-".into()
                    } else {
                        why.join("; ")
                    },
                ]
            })
            .collect();
        print_table(
            &[
                "INSTANCE", "NODE", "TAG", "STATUS", "SINCE", "PID", "RESTARTS", "REASON",
            ],
            &rows,
        );
    }
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
        return Err(app_not_found(&session, &store, name).await);
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
    use crate::session::{NodeAskError, ask_node};
    match ask_node::<RestartReply>(client, subject, body, timeout).await {
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
            "node {node} does not answer restart requests (offline, or a Go node-runner \
             or an older narund without `apps restart`)"
        )),
        Err(NodeAskError::TimedOut) => failed(format!(
            "no answer from node {node} within {timeout:?} (its instances may still be \
             restarting; see `narunctl apps info {app}`; raise --restart-timeout)"
        )),
        Err(NodeAskError::Other(e)) => failed(format!("restart request to node {node}: {e}")),
    }
}

/// Write `spec` as the new value of `app-configs/<name>` if it is still at `revision`
/// (compare-and-set, like `deploy`); with `wait`, follow the rollout like `deploy --wait`
/// (subscribed before the write; a failure names `verb`). Returns the new revision.
async fn write_spec(
    session: &Session,
    verb: &str,
    spec: &AppSpec,
    revision: u64,
    wait: Option<Duration>,
    done: impl FnOnce(u64),
) -> Result<()> {
    let name = spec.name.as_str();
    spec.validate()
        .map_err(|e| anyhow!("the new spec of {name} is not valid (nothing was written):\n{e}"))?;
    let store = session
        .open_kv(&APP_CONFIGS)
        .await?
        .ok_or_else(|| anyhow!("bucket app-configs does not exist"))?;
    let follower = match wait {
        Some(_) => Some(crate::rollout::Follower::subscribe(session, name).await?),
        None => None,
    };
    let value: bytes::Bytes = spec.to_kv_json().into();
    let written = value.clone();
    let new_revision =
        match tokio::time::timeout(session.timeout, store.update(name, value, revision)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => bail!(
                "conflict: the stored spec of {name} changed since it was read (revision \
             {revision}); nothing was written, check `narunctl apps info {name}` and retry"
            ),
            Ok(Err(e)) => bail!("writing the spec of {name}: {e}"),
            Err(_) => bail!(
                "writing the spec of {name}: no answer within {:?}",
                session.timeout
            ),
        };
    done(new_revision);
    if let (Some(follower), Some(timeout)) = (follower, wait) {
        let stored = AppSpec::from_kv_bytes(&written)
            .map_err(|e| anyhow!("the spec just written cannot be parsed back: {e}"))?;
        follower.wait(verb, stored, timeout).await?;
    }
    Ok(())
}

/// `role=edge,zone=a` as labels; the error names the piece that is not `KEY=VALUE`.
fn parse_selector(s: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| {
                anyhow!("--selector: {part:?} is not KEY=VALUE (e.g. role=edge,zone=a)")
            })?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    if out.is_empty() {
        bail!("--selector: no KEY=VALUE given (e.g. role=edge)");
    }
    Ok(out)
}

/// `apps scale`: see [`ScaleArgs`].
async fn scale(conn: &ConnArgs, args: ScaleArgs) -> Result<()> {
    let name = args.name.as_str();
    if args.replicas < 0 {
        bail!("replicas must be 0 or more, not {}", args.replicas);
    }
    let selector = args.selector.as_deref().map(parse_selector).transpose()?;
    let session = Session::connect(conn, "scale").await?;
    let entry = stored_entry(&session, name).await?;
    let mut spec = AppSpec::from_kv_bytes(&entry.value)
        .map_err(|e| anyhow!("the stored spec of {name} cannot be parsed: {e}"))?;
    let index = match (&args.node, &selector) {
        (Some(node), _) => spec
            .nodes
            .iter()
            .position(|n| n.name.as_deref() == Some(node.as_str())),
        (None, Some(labels)) => spec
            .nodes
            .iter()
            .position(|n| n.name.is_none() && n.labels.as_ref() == Some(labels)),
        (None, None) if spec.nodes.len() == 1 => Some(0),
        (None, None) => bail!(
            "{name} has {} node selectors ({}): say which one with --node NODE or --selector K=V",
            spec.nodes.len(),
            describe_nodes(&spec)
        ),
    };
    let index = match index {
        Some(i) => i,
        None => {
            spec.nodes.push(match (&args.node, selector) {
                (Some(node), _) => narun_spec::NodeSelector::by_name(node.clone(), 0),
                (None, Some(labels)) => narun_spec::NodeSelector::by_labels(labels, 0),
                (None, None) => unreachable!("a spec with one selector has index 0"),
            });
            spec.nodes.len() - 1
        }
    };
    let before = spec.nodes[index].replicas;
    spec.nodes[index].replicas = args.replicas;
    let target = describe_selector(&spec.nodes[index]);
    if before == args.replicas {
        println!("{name} already has {before} replica(s) on {target}; nothing written");
        return Ok(());
    }
    write_spec(&session, "scale", &spec, entry.revision, args.wait, |rev| {
        println!(
            "scaled {name} on {target}: {before} → {} replica(s) (app-configs revision {rev})",
            args.replicas
        )
    })
    .await
}

/// `apps rollback`: see [`RollbackArgs`].
async fn rollback(conn: &ConnArgs, args: RollbackArgs) -> Result<()> {
    let name = args.name.as_str();
    let session = Session::connect(conn, "rollback").await?;
    let entry = stored_entry(&session, name).await?;
    // A stored spec that does not parse (written by another tool) is a reason to roll
    // back, not an obstacle: a remembered release is then written with its own selectors.
    let current = match AppSpec::from_kv_bytes(&entry.value) {
        Ok(spec) => Some(spec),
        Err(e) => {
            eprintln!("warning: the stored spec of {name} cannot be parsed: {e}");
            None
        }
    };
    let current_tag = current.as_ref().map_or("", |c| c.tag.as_str()).to_string();
    let releases = crate::releases::load(&session.js, name, session.timeout).await?;
    let remembered = match &args.to {
        Some(tag) => releases.with_tag(tag),
        None => releases.previous(&current_tag),
    };
    let current = match (current, remembered) {
        (Some(c), _) => c,
        (None, Some(r)) => {
            let bytes = serde_json::to_vec(&r.spec)?;
            let target = AppSpec::from_kv_bytes(&bytes).map_err(|e| {
                anyhow!(
                    "the remembered spec of {name}:{} cannot be parsed: {e}",
                    r.tag
                )
            })?;
            let to = target.tag.clone();
            let source = format!("the release that was ready at {}", r.time);
            return write_spec(&session, "rollback", &target, entry.revision, args.wait, |rev| {
                println!(
                    "rolled back {name}: unreadable spec → {to} ({source}; app-configs revision {rev})"
                )
            })
            .await;
        }
        (None, None) => bail!(
            "the stored spec of {name} cannot be parsed and no good release of it is \
             remembered{}; deploy a valid spec",
            args.to
                .as_ref()
                .map(|t| format!(" with tag {t}"))
                .unwrap_or_default()
        ),
    };
    let (mut target, source) = match (remembered, &args.to) {
        (Some(r), _) => {
            let bytes = serde_json::to_vec(&r.spec)?;
            let spec = AppSpec::from_kv_bytes(&bytes).map_err(|e| {
                anyhow!(
                    "the remembered spec of {name}:{} cannot be parsed: {e}",
                    r.tag
                )
            })?;
            (spec, format!("the release that was ready at {}", r.time))
        }
        (None, Some(tag)) => {
            let mut spec = current.clone();
            spec.tag = tag.clone();
            (
                spec,
                "the current spec with this tag (no release of it is remembered)".into(),
            )
        }
        (None, None) => {
            // narund rolled a failed rollout back: its nodes still run the old tag.
            let states = session.node_states().await?;
            let running: Option<String> = states
                .iter()
                .flat_map(|s| s.instances.iter())
                .filter(|i| i.app_name == name && i.tag != current.tag && i.status.is_up())
                .map(|i| i.tag.clone())
                .next();
            match running {
                Some(tag) => {
                    let mut spec = current.clone();
                    spec.tag = tag;
                    (spec, "the tag its nodes still run".into())
                }
                None => bail!(
                    "no earlier good release of {name} is remembered (narunctl remembers a \
                     release when `deploy --wait`, `apps scale --wait` or `apps rollback --wait` \
                     sees it ready) and no node runs another tag than {}; name one with --to TAG",
                    current.tag
                ),
            }
        }
    };
    // Placement is not part of a release: the current selectors stay.
    target.nodes = current.nodes.clone();
    if target.config_hash() == current.config_hash() {
        println!(
            "{name} already runs the spec of {}:{}; nothing written",
            name, target.tag
        );
        return Ok(());
    }
    // The binary must still be there (`images rm` may have removed it).
    let found = match session
        .open_object_store(&narun_wire::jetstream::APP_BINARIES)
        .await?
    {
        Some(store) => {
            let mut found = Vec::new();
            for arch in ["amd64", "arm64", "arm", "riscv64", "386"] {
                let object = target.binary_object_name("linux", arch);
                if let Ok(Ok(info)) =
                    tokio::time::timeout(session.timeout, store.info(&object)).await
                    && !info.deleted
                {
                    found.push(object);
                }
            }
            found
        }
        None => Vec::new(),
    };
    if found.is_empty() {
        bail!(
            "cannot roll {name} back to {}: no binary {} in app-binaries (removed with \
             `images rm`?); deploy it again instead",
            target.tag,
            target.binary_object_name("linux", "<arch>")
        );
    }
    let from = current.tag.clone();
    let to = target.tag.clone();
    write_spec(
        &session,
        "rollback",
        &target,
        entry.revision,
        args.wait,
        |rev| println!("rolled back {name}: {from} → {to} ({source}; app-configs revision {rev})"),
    )
    .await
}
