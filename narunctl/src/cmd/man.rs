//! `narunctl man [--out DIR]`: roff man pages generated from the command line definition
//! ([`crate::cli`]).

use crate::cli::{Cli, ManArgs};
use crate::output::write_stdout;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::{Path, PathBuf};

/// With `--out DIR`, write the pages there and print their paths; without it, print
/// `narunctl.1`.
pub fn run(args: ManArgs) -> Result<()> {
    let mut page = Vec::new();
    let written = man_pages(args.out.as_deref(), &mut page).context("writing the man pages")?;
    for p in written {
        println!("wrote {}", p.display());
    }
    write_stdout(&page)
}

/// Man pages: with `dir`, `narunctl.1` and one `narunctl-<sub>[-<sub>].1` per
/// subcommand are written there and their paths returned; without it,
/// `narunctl.1` goes to `out`.
fn man_pages(dir: Option<&Path>, out: &mut dyn std::io::Write) -> std::io::Result<Vec<PathBuf>> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(out)?;
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir)?;
    // `build` names each subcommand page after its path (`narunctl-images-ls`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    fn walk(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, written)?;
        }
        Ok(())
    }
    let mut written = Vec::new();
    walk(&cmd, dir, &mut written)?;
    Ok(written)
}
