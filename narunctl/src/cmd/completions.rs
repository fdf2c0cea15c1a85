//! `narunctl completions bash|zsh|fish`: the shell completion script, generated from the
//! command line definition ([`crate::cli`]).

use crate::cli::{Cli, CompletionsArgs};
use crate::output::write_stdout;
use anyhow::Result;
use clap::CommandFactory;

/// Print the completion script for `args.shell`.
pub fn run(args: CompletionsArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "narunctl", &mut script);
    write_stdout(&script)
}
