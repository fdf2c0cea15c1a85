//! narund's command line: six options, each with an environment fallback.
//!
//! Parsed with [`lexopt`] rather than clap: narund's whole command line is these six options,
//! and clap's builder, help renderer and derive code cost ~130 KB of a firmware narund that
//! must fit in 4 MB (docs/benchmarks.md, "Binary size, firmware profile"). narunctl, with
//! dozens of verbs, keeps clap.
//!
//! Precedence: a flag beats its environment variable, which beats the configuration file
//! (the file is applied in `main`). An empty environment variable counts as unset.

use std::ffi::OsString;
use std::path::PathBuf;

/// What to do, from the arguments.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run (or with `check_config`, check the configuration and exit).
    Run(Cli),
    /// Print [`HELP`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// narund's options after flags and environment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cli {
    /// `-c`, `--config`, `NARUND_CONFIG`: the configuration file. When not given,
    /// /etc/narun/narund.toml is used if it exists.
    pub config: Option<PathBuf>,
    /// `--node-id`, `NARUND_NODE_ID`: overrides `node_id`.
    pub node_id: Option<String>,
    /// `--nats-url`, `NATS_URL`: NATS server URL(s), overrides `nats.url`.
    pub nats_url: Option<String>,
    /// `--data-dir`, `NARUND_DATA_DIR`: overrides `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--runtime-dir`, `NARUND_RUNTIME_DIR`: overrides `runtime_dir`.
    pub runtime_dir: Option<PathBuf>,
    /// `--check-config`: check the configuration as a start would, print the effective
    /// settings and exit 0, or print every problem and exit 2.
    pub check_config: bool,
}

/// `narund --help`.
pub const HELP: &str = "\
narun node daemon: runs apps from NATS, exposes them over HTTP

Usage: narund [OPTIONS]

Options:
  -c, --config <CONFIG>            Configuration file. When not given, /etc/narun/narund.toml
                                   is used if it exists [env: NARUND_CONFIG=]
      --node-id <NODE_ID>          Node id. Overrides `node_id` [env: NARUND_NODE_ID=]
      --nats-url <NATS_URL>        NATS server URL(s), comma-separated. Overrides `nats.url`
                                   [env: NATS_URL=]
      --data-dir <DATA_DIR>        Data directory. Overrides `data_dir` [env: NARUND_DATA_DIR=]
      --runtime-dir <RUNTIME_DIR>  Runtime directory. Overrides `runtime_dir`
                                   [env: NARUND_RUNTIME_DIR=]
      --check-config               Check the configuration as a start would (files,
                                   directories, cgroup root), print the effective settings and
                                   exit 0; or print every problem and exit 2
  -h, --help                       Print help
  -V, --version                    Print version
";

/// A command line narund cannot use; the message names the argument and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}\n\nUsage: narund [OPTIONS]   (narund --help lists them)")]
pub struct CliError(String);

/// Parse the process's arguments and environment.
pub fn parse() -> Result<Command, CliError> {
    parse_from(std::env::args_os().skip(1), |name| std::env::var_os(name))
}

/// Parse `args` (without the program name), looking environment fallbacks up with `env`.
pub fn parse_from<I, E>(args: I, env: E) -> Result<Command, CliError>
where
    I: IntoIterator<Item = OsString>,
    E: Fn(&str) -> Option<OsString>,
{
    use lexopt::prelude::*;
    let mut cli = Cli::default();
    let mut parser = lexopt::Parser::from_args(args);
    loop {
        let arg = parser.next().map_err(err)?;
        let Some(arg) = arg else { break };
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('c') | Long("config") => cli.config = Some(parser.value().map_err(err)?.into()),
            Long("node-id") => cli.node_id = Some(utf8(parser.value().map_err(err)?, "--node-id")?),
            Long("nats-url") => {
                cli.nats_url = Some(utf8(parser.value().map_err(err)?, "--nats-url")?)
            }
            Long("data-dir") => cli.data_dir = Some(parser.value().map_err(err)?.into()),
            Long("runtime-dir") => cli.runtime_dir = Some(parser.value().map_err(err)?.into()),
            Long("check-config") => cli.check_config = true,
            other => return Err(err(other.unexpected())),
        }
    }
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if cli.config.is_none() {
        cli.config = set("NARUND_CONFIG").map(PathBuf::from);
    }
    if cli.node_id.is_none() {
        cli.node_id = set("NARUND_NODE_ID")
            .map(|v| utf8(v, "NARUND_NODE_ID"))
            .transpose()?;
    }
    if cli.nats_url.is_none() {
        cli.nats_url = set("NATS_URL").map(|v| utf8(v, "NATS_URL")).transpose()?;
    }
    if cli.data_dir.is_none() {
        cli.data_dir = set("NARUND_DATA_DIR").map(PathBuf::from);
    }
    if cli.runtime_dir.is_none() {
        cli.runtime_dir = set("NARUND_RUNTIME_DIR").map(PathBuf::from);
    }
    Ok(Command::Run(cli))
}

fn err(e: lexopt::Error) -> CliError {
    CliError(format!("error: {e}"))
}

fn utf8(v: OsString, what: &str) -> Result<String, CliError> {
    v.into_string()
        .map_err(|v| CliError(format!("error: {what} is not valid UTF-8: {v:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        parse_from(args.iter().map(OsString::from), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Cli {
        match parse(args, env).expect("parses") {
            Command::Run(cli) => cli,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn no_arguments_is_a_run_with_nothing_set() {
        assert_eq!(run(&[], &[]), Cli::default());
    }

    #[test]
    fn every_flag_in_both_spellings() {
        let cli = run(
            &[
                "-c",
                "/a.toml",
                "--node-id=n1",
                "--nats-url",
                "nats://a:4222,nats://b:4222",
                "--data-dir",
                "/d",
                "--runtime-dir=/r",
                "--check-config",
            ],
            &[],
        );
        assert_eq!(
            cli,
            Cli {
                config: Some("/a.toml".into()),
                node_id: Some("n1".into()),
                nats_url: Some("nats://a:4222,nats://b:4222".into()),
                data_dir: Some("/d".into()),
                runtime_dir: Some("/r".into()),
                check_config: true,
            }
        );
        assert_eq!(
            run(&["--config=/b.toml"], &[]).config,
            Some("/b.toml".into())
        );
        assert_eq!(run(&["-c/x.toml"], &[]).config, Some("/x.toml".into()));
    }

    #[test]
    fn environment_fills_what_flags_leave_unset() {
        let env = [
            ("NARUND_CONFIG", "/env.toml"),
            ("NARUND_NODE_ID", "env-node"),
            ("NATS_URL", "nats://env:4222"),
            ("NARUND_DATA_DIR", "/env-data"),
            ("NARUND_RUNTIME_DIR", "/env-run"),
        ];
        let cli = run(&[], &env);
        assert_eq!(cli.config, Some("/env.toml".into()));
        assert_eq!(cli.node_id.as_deref(), Some("env-node"));
        assert_eq!(cli.nats_url.as_deref(), Some("nats://env:4222"));
        assert_eq!(cli.data_dir, Some("/env-data".into()));
        assert_eq!(cli.runtime_dir, Some("/env-run".into()));
        // A flag wins over its variable.
        let cli = run(&["--node-id", "flag-node", "-c", "/flag.toml"], &env);
        assert_eq!(cli.node_id.as_deref(), Some("flag-node"));
        assert_eq!(cli.config, Some("/flag.toml".into()));
        // An empty variable is unset.
        assert_eq!(run(&[], &[("NARUND_NODE_ID", "")]).node_id, None);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["--help"], &[]).unwrap(), Command::Help);
        assert_eq!(parse(&["-h"], &[]).unwrap(), Command::Help);
        assert_eq!(parse(&["-V"], &[]).unwrap(), Command::Version);
        assert_eq!(parse(&["--version"], &[]).unwrap(), Command::Version);
        for flag in [
            "--config",
            "--node-id",
            "--nats-url",
            "--data-dir",
            "--runtime-dir",
            "--check-config",
        ] {
            assert!(HELP.contains(flag), "--help must list {flag}");
        }
    }

    #[test]
    fn bad_command_lines_name_the_argument() {
        for (args, names) in [
            (&["--bogus"][..], "--bogus"),
            (&["-x"][..], "-x"),
            (&["--config"][..], "--config"),
            (&["--node-id"][..], "--node-id"),
            (&["stray"][..], "stray"),
            (&["--check-config=yes"][..], "--check-config"),
        ] {
            let e = parse(args, &[]).expect_err("must be refused").to_string();
            assert!(e.contains(names), "{args:?}: {e}");
            assert!(e.contains("narund --help"), "{args:?}: {e}");
        }
    }
}
