//! `narunctl gateway routes set|get|rm NAME`: the route set of a named gateway, stored under
//! `gateway.<name>.routes` in the `narun-gateway-routes` bucket ([`narun_wire::routes`]).
//!
//! `set` checks only that the file is a TOML document (the gateways check the routes,
//! against their own configured routes and key files), stores it, and reports what each
//! running gateway of that name published on `narun.gateway.<name>.routes.status`: served,
//! or refused with the reasons (the gateway then keeps serving its previous set). A
//! refusal makes `set` fail; no answer within `--timeout` is a warning (no gateway of that
//! name is running, or it cannot reach KV).

use crate::cli::{ConnArgs, GatewayCmd, GatewayRoutesCmd};
use crate::session::Session;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use narun_wire::routes::{self as wire, RoutesStatus};
use std::io::Read;
use std::time::Duration;

/// How long `set` keeps listening for more gateways after the first answer.
const MORE_ANSWERS: Duration = Duration::from_millis(300);

/// Run a `gateway` subcommand.
pub async fn run(conn: &ConnArgs, cmd: GatewayCmd) -> Result<()> {
    match cmd {
        GatewayCmd::Routes(GatewayRoutesCmd::Set { name, file }) => set(conn, &name, &file).await,
        GatewayCmd::Routes(GatewayRoutesCmd::Get { name }) => get(conn, &name).await,
        GatewayCmd::Routes(GatewayRoutesCmd::Rm { name }) => rm(conn, &name).await,
    }
}

fn check_name(name: &str) -> Result<()> {
    if !wire::valid_gateway_name(name) {
        bail!("{name:?} is not a gateway name: 1 to 64 of A-Z, a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

async fn set(conn: &ConnArgs, name: &str, file: &std::path::Path) -> Result<()> {
    check_name(name)?;
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the route set from stdin")?;
    } else {
        text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    if let Err(e) = text.parse::<toml::Table>() {
        bail!("{}: not a TOML route set: {e}", file.display());
    }
    let session = Session::connect(conn, "gateway").await?;
    let kv = session.ensure_kv(&wire::GATEWAY_ROUTES).await?;
    let mut status = session
        .bounded(
            "subscribing to the gateways' answers",
            session.client.subscribe(wire::status_subject(name)),
        )
        .await?;
    let revision = session
        .bounded(
            "storing the route set",
            kv.put(wire::kv_key(name), text.into()),
        )
        .await?;
    println!("stored {} revision {revision}", wire::kv_key(name));
    let mut answers: Vec<RoutesStatus> = Vec::new();
    let mut wait = session.timeout;
    while let Ok(Some(m)) = tokio::time::timeout(wait, status.next()).await {
        let Ok(s) = serde_json::from_slice::<RoutesStatus>(&m.payload) else {
            continue;
        };
        if s.revision != revision {
            continue;
        }
        answers.push(s);
        wait = MORE_ANSWERS;
    }
    if answers.is_empty() {
        eprintln!(
            "warning: no gateway named {name:?} answered within {:?} (is one running with [gateway] name = {name:?}?)",
            session.timeout
        );
        return Ok(());
    }
    let mut refused = 0;
    for a in &answers {
        if a.accepted {
            println!(
                "gateway {name} ({}): serving {} routes",
                a.instance, a.routes
            );
        } else {
            refused += 1;
            println!(
                "gateway {name} ({}): refused, still serving its previous set:",
                a.instance
            );
            for line in a.error.as_deref().unwrap_or_default().lines() {
                println!("  {line}");
            }
        }
    }
    if refused > 0 {
        bail!("{refused} gateway(s) refused the route set");
    }
    Ok(())
}

async fn get(conn: &ConnArgs, name: &str) -> Result<()> {
    check_name(name)?;
    let session = Session::connect(conn, "gateway").await?;
    let Some(kv) = session.open_kv(&wire::GATEWAY_ROUTES).await? else {
        bail!(
            "no route set for gateway {name:?} (the bucket {} does not exist)",
            wire::GATEWAY_ROUTES.name
        );
    };
    match session
        .bounded("reading the route set", kv.get(wire::kv_key(name)))
        .await?
    {
        Some(v) => {
            print!("{}", String::from_utf8_lossy(&v));
            Ok(())
        }
        None => bail!("no route set for gateway {name:?}"),
    }
}

async fn rm(conn: &ConnArgs, name: &str) -> Result<()> {
    check_name(name)?;
    let session = Session::connect(conn, "gateway").await?;
    let Some(kv) = session.open_kv(&wire::GATEWAY_ROUTES).await? else {
        bail!("no route set for gateway {name:?}");
    };
    session
        .bounded("removing the route set", kv.delete(wire::kv_key(name)))
        .await?;
    println!("removed {}", wire::kv_key(name));
    Ok(())
}
