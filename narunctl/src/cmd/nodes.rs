//! `narunctl nodes ls|info`: the nodes, from their heartbeats in `node-runner-states`
//! (a node is `offline` once its heartbeat is older than the bucket's TTL), with its
//! instances counted by state ([`crate::status`]).

use crate::cli::{ConnArgs, NodesCmd};
use crate::output::{age, human_duration, human_size, print_json, print_table};
use crate::session::{Session, node_status};
use crate::status::{Bucket, bucket};
use anyhow::{Result, anyhow};
use std::collections::BTreeMap;

/// Run a `nodes` subcommand.
pub async fn run(conn: &ConnArgs, cmd: NodesCmd) -> Result<()> {
    match cmd {
        NodesCmd::Ls(j) => ls(conn, j.json).await,
        NodesCmd::Info { node, json } => info(conn, &node, json.json).await,
    }
}

fn labels_str(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `3 running, 1 failed, 1 restarting` (the buckets of [`crate::status`]; a failed
/// instance is never counted as running), `-` without instances.
fn instances_summary(s: &narun_wire::events::NodeState) -> String {
    if s.instances.is_empty() {
        return match s.managed_instances.len() {
            0 => "-".into(),
            n => format!("{n} managed"),
        };
    }
    let (mut running, mut failed, mut restarting, mut other) = (0, 0, 0, 0);
    for i in &s.instances {
        match bucket(&i.status, i.restarts) {
            Bucket::Running => running += 1,
            Bucket::Failed => failed += 1,
            Bucket::Restarting => restarting += 1,
            Bucket::Other => other += 1,
        }
    }
    [
        (running, "running"),
        (failed, "failed"),
        (restarting, "restarting"),
        (other, "other"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect::<Vec<_>>()
    .join(", ")
}

async fn ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let session = Session::connect(conn, "nodes").await?;
    let states = session.node_states().await?;
    if json {
        print_json(&states)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|s| {
            vec![
                s.node_id.clone(),
                node_status(s),
                age(&s.start_time)
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", s.os, s.arch),
                s.version.clone(),
                labels_str(&s.labels),
                instances_summary(s),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "STATUS",
            "AGE",
            "OS/ARCH",
            "VERSION",
            "LABELS",
            "INSTANCES",
        ],
        &rows,
    );
    Ok(())
}

async fn info(conn: &ConnArgs, node: &str, json: bool) -> Result<()> {
    let session = Session::connect(conn, "nodes").await?;
    let states = session.node_states().await?;
    let near: Vec<String> =
        crate::hint::close_matches(node, states.iter().map(|s| s.node_id.as_str()))
            .into_iter()
            .map(str::to_string)
            .collect();
    let s = states.into_iter().find(|s| s.node_id == node).ok_or_else(|| {
        let near: Vec<&str> = near.iter().map(String::as_str).collect();
        anyhow!(
            "node {node} not found in node-runner-states (offline for more than 45 s, or never started){}",
            crate::hint::did_you_mean(&near)
        )
    })?;
    if json {
        print_json(&s)?;
        return Ok(());
    }
    println!("Node:        {}", s.node_id);
    println!("Status:      {}", node_status(&s));
    println!("Last seen:   {}", s.last_seen);
    println!("Started:     {}", s.start_time);
    println!("Version:     {}", s.version);
    println!("Platform:    {}/{}", s.os, s.arch);
    println!("Labels:      {}", labels_str(&s.labels));
    if !s.cgroup_layout.is_empty() {
        println!(
            "Cgroups:     {} [{}]",
            s.cgroup_layout,
            s.cgroup_controllers.join(",")
        );
    }
    if let Some(u) = s.io_uring {
        println!("io_uring:    {u}");
    }
    if let (Some(l1), Some(l5), Some(l15)) = (s.load1, s.load5, s.load15) {
        println!("Load:        {l1:.2} {l5:.2} {l15:.2}");
    }
    let room = |free: Option<u64>, total: u64| match free {
        Some(f) => format!("{} free of {}", human_size(f), human_size(total)),
        None => human_size(total),
    };
    if let Some(t) = s.mem_total_bytes {
        println!("Memory:      {}", room(s.mem_available_bytes, t));
    }
    if let Some(t) = s.disk_total_bytes {
        println!("Disk:        {} (data_dir)", room(s.disk_free_bytes, t));
    }
    println!();
    if s.instances.is_empty() {
        println!(
            "Managed instances: {}",
            if s.managed_instances.is_empty() {
                "-".into()
            } else {
                s.managed_instances.join(", ")
            }
        );
    } else {
        let now = time::OffsetDateTime::now_utc();
        let rows: Vec<Vec<String>> = s
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.instance_id.clone(),
                    i.app_name.clone(),
                    i.tag.clone(),
                    i.status.to_string(),
                    crate::status::elapsed(&i.since, now)
                        .map_or_else(|| "-".into(), human_duration),
                    i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    i.restarts.to_string(),
                    i.last_failure.as_ref().map_or_else(
                        || "-".into(),
                        |f| {
                            let ago = crate::status::elapsed(&f.time, now)
                                .map(|d| format!(", {} ago", human_duration(d)))
                                .unwrap_or_default();
                            format!(
                                "{}: {}{ago}",
                                f.status,
                                crate::status::describe(f.reason.as_ref(), f.exit_code, &f.error)
                            )
                        },
                    ),
                ]
            })
            .collect();
        print_table(
            &[
                "INSTANCE",
                "APP",
                "TAG",
                "STATUS",
                "SINCE",
                "PID",
                "RESTARTS",
                "LAST FAILURE",
            ],
            &rows,
        );
    }
    Ok(())
}
