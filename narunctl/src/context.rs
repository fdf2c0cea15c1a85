//! The context file: defaults for the global flags, so an operator does not type
//! `--nats`, `--creds`, … on every command.
//!
//! Where it is: `--context-file PATH` (env `NARUNCTL_CONFIG`), else
//! `$XDG_CONFIG_HOME/narun/config.toml`, else `~/.config/narun/config.toml`. A missing
//! default file means "no defaults", silently; a missing file that was named explicitly is
//! a usage error.
//!
//! What is in it (TOML): top-level keys are defaults for every context; named contexts
//! (like `nats context`) override them; `current` names the context used when neither
//! `--context NAME` nor env `NARUN_CONTEXT` selects one:
//!
//! ```toml
//! timeout = "10s"
//! current = "lab"
//!
//! [contexts.lab]
//! nats = "nats://lab-nats:4222"
//! creds = "~/.config/narun/lab.creds"   # ~ is $HOME; relative paths are relative to this file
//!
//! [contexts.prod]
//! nats = "tls://nats.prod.example:4222"
//! tls_ca = "prod-ca.pem"
//! master_key_file = "/secure/narun-master.key"
//! ```
//!
//! Keys: `nats creds nkey user (or nats_user) password tls_ca tls_cert tls_key timeout stream_replicas
//! master_key_file`. `nats` may list several servers of a cluster, comma separated.
//! Precedence, per setting: flag > environment > selected context > top level > built-in
//! default. Bad TOML, an unknown key, a bad value or an unknown context name are usage
//! errors (exit 2) that name the file, the line and the key.

use crate::cli::{Cli, Command, ConnArgs, SecretCmd};
use clap::parser::ValueSource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults for the global flags (one context, or the file's top level).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub nats: Option<String>,
    pub creds: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    #[serde(alias = "nats_user")]
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub timeout: Option<Duration>,
    pub master_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_replicas")]
    pub stream_replicas: Option<usize>,
}

/// The whole file. serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
/// top-level settings are listed again here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    current: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Settings>,
    nats: Option<String>,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
    #[serde(alias = "nats_user")]
    user: Option<String>,
    password: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_timeout")]
    timeout: Option<Duration>,
    master_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_replicas")]
    stream_replicas: Option<usize>,
}

fn de_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::cli::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("timeout: {e}")))
}

fn de_replicas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = u64::deserialize(d)?;
    crate::cli::parse_replicas(&n.to_string())
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("stream_replicas: {e}")))
}

/// A context file problem: printed as `error: <message>`, exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ContextError(String);

impl Settings {
    /// `self` where set, else `base`.
    fn or(self, base: Settings) -> Settings {
        Settings {
            nats: self.nats.or(base.nats),
            creds: self.creds.or(base.creds),
            nkey: self.nkey.or(base.nkey),
            user: self.user.or(base.user),
            password: self.password.or(base.password),
            tls_ca: self.tls_ca.or(base.tls_ca),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            timeout: self.timeout.or(base.timeout),
            master_key_file: self.master_key_file.or(base.master_key_file),
            stream_replicas: self.stream_replicas.or(base.stream_replicas),
        }
    }

    /// Paths: `~/…` is below `home`; relative paths are relative to `dir` (the file's
    /// directory), so a context file works from any working directory.
    fn resolve_paths(mut self, dir: &Path, home: Option<&Path>) -> Settings {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.take() {
                let s = path.to_string_lossy();
                *p = Some(match (s.strip_prefix("~/"), home) {
                    (Some(rest), Some(h)) => h.join(rest),
                    _ if path.is_relative() => dir.join(path),
                    _ => path,
                });
            }
        };
        for p in [
            &mut self.creds,
            &mut self.nkey,
            &mut self.tls_ca,
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.master_key_file,
        ] {
            fix(p);
        }
        self
    }
}

/// The default location: `$XDG_CONFIG_HOME/narun/config.toml` (when set to an absolute
/// path, as the XDG spec requires), else `$HOME/.config/narun/config.toml`.
pub fn default_path(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match xdg_config_home.filter(|x| Path::new(x).is_absolute()) {
        Some(x) => Some(Path::new(x).join("narun/config.toml")),
        None => home
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(h).join(".config/narun/config.toml")),
    }
}

/// Parse the text of a context file and pick the context: `selected` (from `--context`
/// or `NARUN_CONTEXT`), else the file's `current`, else only the top level.
pub fn parse(
    text: &str,
    path: &Path,
    selected: Option<&str>,
    home: Option<&Path>,
) -> Result<Settings, ContextError> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        ContextError(format!(
            "context file {}{at}: {} (see `narunctl --help` and docs/narunctl.md, \"Context file\")",
            path.display(),
            e.message().trim_end()
        ))
    })?;
    let top = Settings {
        nats: file.nats,
        creds: file.creds,
        nkey: file.nkey,
        user: file.user,
        password: file.password,
        tls_ca: file.tls_ca,
        tls_cert: file.tls_cert,
        tls_key: file.tls_key,
        timeout: file.timeout,
        master_key_file: file.master_key_file,
        stream_replicas: file.stream_replicas,
    };
    let (name, from) = match (selected, file.current.as_deref()) {
        (Some(n), _) => (Some(n), "--context/NARUN_CONTEXT"),
        (None, Some(n)) => (Some(n), "current"),
        (None, None) => (None, ""),
    };
    let chosen = match name {
        None => top,
        Some(n) => match file.contexts.get(n) {
            Some(c) => c.clone().or(top),
            None => {
                let known: Vec<&str> = file.contexts.keys().map(String::as_str).collect();
                return Err(ContextError(format!(
                    "context {n:?} (from {from}) is not defined in {}: it has {}",
                    path.display(),
                    if known.is_empty() {
                        "no [contexts.NAME] tables".to_string()
                    } else {
                        format!("contexts {}", known.join(", "))
                    }
                )));
            }
        },
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok(chosen.resolve_paths(dir, home))
}

/// Read the context file the command line and environment point at. `Ok(None)`: no
/// file at the default location.
pub fn load(
    explicit: Option<&Path>,
    selected: Option<&str>,
) -> Result<Option<Settings>, ContextError> {
    let home = std::env::var("HOME").ok();
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match default_path(
            std::env::var("XDG_CONFIG_HOME").ok().as_deref(),
            home.as_deref(),
        ) {
            Some(p) => p,
            None if selected.is_some() => {
                return Err(ContextError(
                    "--context/NARUN_CONTEXT given, but there is no context file (HOME is not set; use --context-file)".into(),
                ));
            }
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            if let Some(n) = selected {
                return Err(ContextError(format!(
                    "context {n:?} selected, but there is no context file at {} (create it, or use --context-file)",
                    path.display()
                )));
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(ContextError(crate::hint::read_error(
                "the context file",
                &path,
                &e,
            )));
        }
    };
    parse(&text, &path, selected, home.as_deref().map(Path::new)).map(Some)
}

/// Fill the global settings that neither a flag nor the environment gave from `ctx`.
/// `given(id)` says whether the argument `id` came from the command line or the
/// environment.
pub fn overlay(cli: &mut Cli, ctx: Settings, given: impl Fn(&str) -> bool) {
    let ConnArgs {
        nats,
        creds,
        nkey,
        user,
        password,
        tls_ca,
        tls_cert,
        tls_key,
        timeout,
        stream_replicas,
    } = &mut cli.conn;
    fn set<T>(given: bool, slot: &mut T, v: Option<T>) {
        if !given && let Some(v) = v {
            *slot = v;
        }
    }
    fn set_opt<T>(given: bool, slot: &mut Option<T>, v: Option<T>) {
        if !given && v.is_some() {
            *slot = v;
        }
    }
    set(given("nats"), nats, ctx.nats);
    set_opt(given("creds"), creds, ctx.creds);
    set_opt(given("nkey"), nkey, ctx.nkey);
    set_opt(given("user"), user, ctx.user);
    set_opt(given("password"), password, ctx.password);
    set_opt(given("tls_ca"), tls_ca, ctx.tls_ca);
    set_opt(given("tls_cert"), tls_cert, ctx.tls_cert);
    set_opt(given("tls_key"), tls_key, ctx.tls_key);
    set(given("timeout"), timeout, ctx.timeout);
    set_opt(
        given("stream_replicas"),
        stream_replicas,
        ctx.stream_replicas,
    );
    // Any master key from a flag or the environment (file or base64) beats the file.
    if let Command::Secret(SecretCmd::Set(args)) = &mut cli.cmd
        && args.key.master_key_file.is_none()
        && args.key.master_key.is_none()
    {
        args.key.master_key_file = ctx.master_key_file;
    }
}

/// Parse the command line (clap exits 2 on usage errors), then apply the context file.
pub fn parse_cli() -> Result<Cli, ContextError> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    apply(&mut cli, &matches)?;
    Ok(cli)
}

/// [`load`] the file `cli` selects and [`overlay`] it.
pub fn apply(cli: &mut Cli, matches: &clap::ArgMatches) -> Result<(), ContextError> {
    let Some(ctx) = load(
        cli.context.context_file.as_deref(),
        cli.context.context.as_deref(),
    )?
    else {
        return Ok(());
    };
    overlay(cli, ctx, |id| given(matches, id));
    Ok(())
}

/// Whether argument `id` was set on the command line or through its environment
/// variable (not by its default). Global arguments are propagated to the top-level
/// matches by clap, wherever they appear on the line.
fn given(matches: &clap::ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    const FILE: &str = r#"
timeout = "9s"
nats = "nats://top:4222"
current = "lab"

[contexts.lab]
nats = "nats://lab:4222"
creds = "lab.creds"

[contexts.prod]
nats = "tls://prod:4222"
tls_ca = "~/ca.pem"
timeout = "1m"
master_key_file = "/keys/master"
"#;

    fn ctx(selected: Option<&str>) -> Settings {
        parse(
            FILE,
            Path::new("/etc/narun-test/config.toml"),
            selected,
            Some(Path::new("/home/op")),
        )
        .unwrap()
    }

    fn cli(args: &[&str]) -> (Cli, clap::ArgMatches) {
        let m = Cli::command()
            .try_get_matches_from(std::iter::once("narunctl").chain(args.iter().copied()))
            .unwrap();
        (Cli::from_arg_matches(&m).unwrap(), m)
    }

    #[test]
    fn stream_replicas_come_from_the_file_unless_a_flag_gives_them() {
        let path = Path::new("/etc/narun-test/config.toml");
        let text = "stream_replicas = 3\n[contexts.one]\nstream_replicas = 1\n";
        let top = parse(text, path, None, None).unwrap();
        assert_eq!(top.stream_replicas, Some(3));
        assert_eq!(
            parse(text, path, Some("one"), None)
                .unwrap()
                .stream_replicas,
            Some(1)
        );
        let (mut c, m) = cli(&["apps", "ls"]);
        overlay(&mut c, top.clone(), |id| given(&m, id));
        assert_eq!(c.conn.stream_replicas, Some(3));
        let (mut c, m) = cli(&["--stream-replicas", "5", "apps", "ls"]);
        overlay(&mut c, top, |id| given(&m, id));
        assert_eq!(c.conn.stream_replicas, Some(5));
        for bad in ["stream_replicas = 0", "stream_replicas = 6"] {
            let e = parse(bad, path, None, None).unwrap_err().to_string();
            assert!(e.contains("stream_replicas") && e.contains(":1"), "{e}");
        }
        assert!(crate::cli::parse_replicas("x").is_err());
    }

    #[test]
    fn current_context_over_top_level_with_paths_resolved() {
        let c = ctx(None);
        assert_eq!(c.nats.as_deref(), Some("nats://lab:4222"));
        assert_eq!(
            c.timeout,
            Some(Duration::from_secs(9)),
            "from the top level"
        );
        assert_eq!(
            c.creds.as_deref(),
            Some(Path::new("/etc/narun-test/lab.creds"))
        );
        let p = ctx(Some("prod"));
        assert_eq!(p.nats.as_deref(), Some("tls://prod:4222"));
        assert_eq!(p.timeout, Some(Duration::from_secs(60)));
        assert_eq!(p.tls_ca.as_deref(), Some(Path::new("/home/op/ca.pem")));
        assert_eq!(p.creds, None);
    }

    #[test]
    fn flag_beats_context_beats_default() {
        // Context over the built-in defaults.
        let (mut c, m) = cli(&["apps", "ls"]);
        overlay(&mut c, ctx(None), |id| given(&m, id));
        assert_eq!(c.conn.nats, "nats://lab:4222");
        assert_eq!(c.conn.timeout, Duration::from_secs(9));
        // A flag (before or after the subcommand) wins over the context.
        let (mut c, m) = cli(&["apps", "ls", "--nats", "nats://flag:1", "--timeout", "2s"]);
        overlay(&mut c, ctx(None), |id| given(&m, id));
        assert_eq!(c.conn.nats, "nats://flag:1");
        assert_eq!(c.conn.timeout, Duration::from_secs(2));
        assert_eq!(
            c.conn.creds.as_deref(),
            Some(Path::new("/etc/narun-test/lab.creds")),
            "settings without a flag still come from the context"
        );
        let (mut c, m) = cli(&["--nats", "nats://flag:2", "nodes", "ls"]);
        overlay(&mut c, ctx(None), |id| given(&m, id));
        assert_eq!(c.conn.nats, "nats://flag:2");
    }

    #[test]
    fn environment_beats_context() {
        // What clap reports as ValueSource::EnvVariable: `given` is true for it.
        let (mut c, _) = cli(&["apps", "ls"]);
        c.conn.nats = "nats://from-env:4222".into();
        overlay(&mut c, ctx(None), |id| id == "nats");
        assert_eq!(c.conn.nats, "nats://from-env:4222");
        assert_eq!(c.conn.timeout, Duration::from_secs(9));
    }

    #[test]
    fn master_key_file_only_without_any_master_key_flag() {
        let (mut c, m) = cli(&[
            "--context",
            "prod",
            "secret",
            "set",
            "--app",
            "a",
            "db",
            "v",
        ]);
        overlay(&mut c, ctx(Some("prod")), |id| given(&m, id));
        let Command::Secret(SecretCmd::Set(a)) = &c.cmd else {
            panic!()
        };
        assert_eq!(
            a.key.master_key_file.as_deref(),
            Some(Path::new("/keys/master"))
        );
        let (mut c, m) = cli(&[
            "secret",
            "set",
            "--app",
            "a",
            "db",
            "v",
            "--master-key",
            "AAAA",
        ]);
        overlay(&mut c, ctx(Some("prod")), |id| given(&m, id));
        let Command::Secret(SecretCmd::Set(a)) = &c.cmd else {
            panic!()
        };
        assert_eq!(a.key.master_key_file, None);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let p = Path::new("/x/config.toml");
        let e = parse("nats = \"a\"\n\nnatz = \"b\"\n", p, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("context file /x/config.toml:3: "), "{e}");
        assert!(e.contains("natz"), "{e}");
        let e = parse(
            "[contexts.a]\nnats = \"x\"\ntimout = \"1s\"\n",
            p,
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(":3: ") && e.contains("timout"), "{e}");
        let e = parse("timeout = \"5x\"\n", p, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: ") && e.contains("timeout: "), "{e}");
        let e = parse("nats = [\n", p, None, None).unwrap_err().to_string();
        assert!(e.starts_with("context file /x/config.toml:"), "{e}");
        let e = parse(FILE, p, Some("nope"), None).unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("lab, prod"), "{e}");
    }

    #[test]
    fn default_location() {
        assert_eq!(
            default_path(Some("/xdg"), Some("/home/a")),
            Some(PathBuf::from("/xdg/narun/config.toml"))
        );
        assert_eq!(
            default_path(Some("relative"), Some("/home/a")),
            Some(PathBuf::from("/home/a/.config/narun/config.toml"))
        );
        assert_eq!(
            default_path(None, Some("/home/a")),
            Some(PathBuf::from("/home/a/.config/narun/config.toml"))
        );
        assert_eq!(default_path(None, None), None);
    }
}
