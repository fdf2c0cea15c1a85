//! `narunctl`: the narun operator CLI.
//!
//! Commands read and write the same NATS resources as the Go `narun` CLI:
//! specs in the KV bucket `app-configs`, binaries in the object store
//! `app-binaries`, node heartbeats in `node-runner-states`, logs on
//! `logs.<app>.<node>`, and NATS Micro (ADR-32) discovery on `$SRV.*`.
//! See `docs/narunctl.md` for the full reference.
//!
//! Exit codes: 0 success, 1 the operation failed (one `error: …` line on
//! stderr, with a hint where one helps: [`hint`]), 2 usage error (printed by clap).
//! A closed stdout (`narunctl nodes ls | head -1`) ends narunctl quietly with 0.
//!
//! Modules: [`cli`] (the clap types) and [`context`] (the context file) make the
//! command line; [`cmd`] has one module per verb; they share [`session`] (NATS, the
//! buckets, shared state) and [`output`] (tables, JSON, prompts), which import no
//! command. [`rollout`] follows `deploy --wait`; [`plan`] is what a deploy would change
//! (`deploy`, `--dry-run`, `apps diff`); [`progress`] draws the upload progress bar;
//! `narun_wire::elf` reads a binary's platform.
//! Only this file calls into [`cmd`].

#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod context;
mod follow;
mod hint;
mod output;
mod plan;
mod progress;
mod releases;
mod rollout;
mod session;
mod status;

use anyhow::Result;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    // `| head` closing stdout is not a failure, in any command.
    hint::quiet_on_broken_pipe();
    // Usage errors exit 2: clap's own, and a bad context file.
    let cli = match context::parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if old_user_flag(std::env::args().skip(1)) {
        eprintln!(
            "warning: --user is the old spelling of --nats-user (the NATS user name); in narun `user` means an app's Unix user, so use --nats-user"
        );
    }
    // One thread: narunctl waits on NATS. (Without tokio's multi-thread runtime in the build,
    // a firmware build of `-p narund -p narunctl` keeps it out of narund too: docs/design.md,
    // "Threads".)
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if hint::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line (or one block for multi-line causes such as spec errors),
            // never a backtrace; a permission error without a hint of its own gets one.
            let text = format!("{e:#}");
            match hint::generic_permission_hint(&text) {
                Some(h) => eprintln!("error: {text} ({h})"),
                None => eprintln!("error: {text}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the command line uses `--user` (the hidden alias of `--nats-user`) before any
/// `--`.
fn old_user_flag(args: impl Iterator<Item = String>) -> bool {
    args.take_while(|a| a != "--")
        .any(|a| a == "--user" || a.starts_with("--user="))
}

/// Run one parsed command line.
async fn dispatch(cli: Cli) -> Result<()> {
    let conn = cli.conn;
    match cli.cmd {
        Command::Deploy(args) => cmd::deploy::run(&conn, args).await,
        Command::Apps(c) => cmd::apps::run(&conn, c).await,
        Command::Nodes(c) => cmd::nodes::run(&conn, c).await,
        Command::Logs(args) => cmd::logs::run(&conn, args).await,
        Command::Svc(c) => cmd::svc::run(&conn, c).await,
        Command::Request(args) => cmd::request::run(&conn, args).await,
        Command::Secret(c) => cmd::secret::run(&conn, c).await,
        Command::Files(c) => cmd::files::run(&conn, c).await,
        Command::Images(c) => cmd::images::run(&conn, c).await,
        Command::Completions(args) => cmd::completions::run(args),
        Command::Man(args) => cmd::man::run(args),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Admin(c) => cmd::admin::run(&conn, c).await,
        Command::Events(args) => cmd::events::run(&conn, args).await,
        Command::Jobs(c) => cmd::jobs::run(&conn, c).await,
        Command::Run(args) => cmd::runs::run_now(&conn, args).await,
        Command::Runs(c) => cmd::runs::run(&conn, c).await,
        Command::Gateway(c) => cmd::gateway::run(&conn, c).await,
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Config(c) => cmd::config::run(&conn, c).await,
    }
}
