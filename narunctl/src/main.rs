//! `narunctl`: the narun operator CLI.
//!
//! Commands read and write the same NATS resources as the Go `narun` CLI:
//! specs in the KV bucket `app-configs`, binaries in the object store
//! `app-binaries`, node heartbeats in `node-runner-states`, logs on
//! `logs.<app>.<node>`, and NATS Micro (ADR-32) discovery on `$SRV.*`.
//! See `docs/narunctl.md` for the full reference.
//!
//! Exit codes: 0 success, 1 the operation failed (one `error: …` line on
//! stderr), 2 usage error (printed by clap).

mod cli;
mod commands;
mod context;
mod elf;
mod files;
mod images;
mod restart;
mod secret;
mod svc;
mod wait;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors exit 2: clap's own, and a bad context file.
    let cli = match context::parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line (or one block for multi-line causes such as spec errors),
            // never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
