//! `narunctl apps diff`: what `deploy` with the same arguments would change — the diff
//! of the spec against the one stored in `app-configs`, the binaries it would upload (or
//! refuse to replace), and per node which instances would start, be replaced and stop
//! ([`crate::plan`]). It reads, and writes nothing: the same as `deploy --dry-run`, but
//! what a deploy would refuse is only a note and the exit status is 0.

use crate::cli::{ConnArgs, DiffArgs};
use crate::plan::{self, Plan, SpecSource};
use crate::session::Session;
use anyhow::{Result, anyhow};

/// Run `apps diff`.
pub async fn run(conn: &ConnArgs, args: DiffArgs) -> Result<()> {
    let embedded = plan::embedded_spec(&args.binaries)?;
    let (spec, default_node) = plan::build_spec(&SpecSource {
        file: args.file.as_deref(),
        name: args.name.as_deref(),
        tag: args.tag.as_deref(),
        node: &args.node,
        label: &args.label,
        replicas: args.replicas.unwrap_or(1),
        embedded: embedded.as_ref(),
        replicas_given: args.replicas.is_some(),
    })?;
    spec.validate()
        .map_err(|e| anyhow!("invalid app spec:\n{e}"))?;
    let binaries = plan::check_binaries(&args.binaries)?;
    let session = Session::connect(conn, "diff").await?;
    let plan = Plan::gather(&session, spec, default_node, &binaries).await?;
    let refusals = plan.refusals(&binaries, false, false);
    if args.json.json {
        return crate::output::print_json(&plan.to_json(&binaries, &refusals));
    }
    plan.print(&binaries);
    for r in refusals {
        println!();
        println!("note: deploy would refuse this: {r}");
    }
    Ok(())
}
