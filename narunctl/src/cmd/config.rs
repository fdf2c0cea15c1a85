//! `narunctl config get|set|edit APP`: the configuration `narun::config` gives an app, one
//! JSON object under the app's name in the KV bucket `narun-config`
//! ([`narun_wire::app_config`]). `set` and `edit` accept JSON or TOML, check it (it must
//! parse, be an object/table and fit [`app_config::MAX_BYTES`]) before anything is
//! written, and store it as JSON, so apps parse one format. What the app's own type and
//! validation accept is checked by the app: a value it rejects leaves it on its previous
//! one (docs/app-library.md).

use crate::cli::{ConfigCmd, ConfigSetArgs, ConnArgs};
use crate::session::Session;
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::kv;
use narun_wire::app_config;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Run `config …`.
pub async fn run(conn: &ConnArgs, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Get { app, toml, json } => get(conn, &app, toml, json).await,
        ConfigCmd::Set(args) => set(conn, args).await,
        ConfigCmd::Edit { app, toml } => edit(conn, &app, toml).await,
    }
}

fn check_app(app: &str) -> Result<()> {
    match app_config::key_problem(app) {
        Some(p) => bail!("{p}"),
        None => Ok(()),
    }
}

/// A document's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Toml,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Some(Format::Json),
            Some("toml") => Some(Format::Toml),
            _ => None,
        }
    }
}

/// Parse a configuration document: JSON or TOML (`format`, else JSON when it starts with
/// `{`, else TOML), into the JSON object to store. `what` names it in errors.
fn parse(text: &str, format: Option<Format>, what: &str) -> Result<serde_json::Value> {
    let format = format.unwrap_or(if text.trim_start().starts_with('{') {
        Format::Json
    } else {
        Format::Toml
    });
    let value = match format {
        Format::Json => serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| anyhow!("{what} is not valid JSON: {e}"))?,
        Format::Toml => {
            let table: toml::Table = toml::from_str(text)
                .map_err(|e| anyhow!("{what} is not valid TOML: {}", e.to_string().trim_end()))?;
            toml_to_json(toml::Value::Table(table))
        }
    };
    let bytes = serde_json::to_vec(&value)?;
    app_config::check_value(&bytes).map_err(|e| anyhow!("{what}: {e}"))
}

/// TOML to JSON: datetimes become their RFC 3339 text.
fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .unwrap_or_else(|| J::String(f.to_string())),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Render a stored value for people: pretty JSON, or TOML.
fn render(value: &serde_json::Value, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Toml => toml::to_string_pretty(value)
            .map_err(|e| anyhow!("this configuration cannot be written as TOML ({e}): use JSON"))?,
    })
}

/// The stored entry of `app`: revision, value, creation time. `None`: none stored.
async fn current(
    session: &Session,
    store: &kv::Store,
    app: &str,
) -> Result<Option<(u64, serde_json::Value, time::OffsetDateTime)>> {
    let entry = session
        .bounded("reading the configuration", store.entry(app))
        .await?;
    let Some(e) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&e.value).map_err(|err| {
        anyhow!(
            "the stored configuration of {app} (revision {}) is not JSON: {err}",
            e.revision
        )
    })?;
    Ok(Some((e.revision, value, e.created)))
}

async fn get(conn: &ConnArgs, app: &str, toml: bool, json: bool) -> Result<()> {
    check_app(app)?;
    let session = Session::connect(conn, "config get").await?;
    let missing = || {
        anyhow!(
            "no configuration for {app} in {} (set one with `narunctl config set {app} FILE`)",
            app_config::BUCKET
        )
    };
    let store = session
        .open_kv(&app_config::KV)
        .await?
        .ok_or_else(missing)?;
    let (revision, value, created) = current(&session, &store, app).await?.ok_or_else(missing)?;
    let created = crate::output::rfc3339(Some(created)).unwrap_or_default();
    if json {
        return crate::output::print_json(&serde_json::json!({
            "app": app,
            "revision": revision,
            "created": created,
            "value": value,
        }));
    }
    eprintln!(
        "# {app}: {} revision {revision}, written {created}",
        app_config::BUCKET
    );
    let text = render(&value, if toml { Format::Toml } else { Format::Json })?;
    crate::output::write_stdout(text.as_bytes())
}

/// Read FILE or stdin (`-`), at most a bit more than a value may have.
fn read_input(path: &Path) -> Result<String> {
    let limit = (app_config::MAX_BYTES * 4) as u64;
    let mut text = String::new();
    let what = if path == Path::new("-") {
        std::io::stdin()
            .take(limit + 1)
            .read_to_string(&mut text)
            .context("reading the configuration from stdin")?;
        "stdin".to_string()
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
        path.display().to_string()
    };
    if text.len() as u64 > limit {
        bail!("{what} has more than {limit} bytes: not a configuration");
    }
    Ok(text)
}

async fn write(
    session: &Session,
    store: &kv::Store,
    app: &str,
    value: &serde_json::Value,
    expected: Option<u64>,
) -> Result<u64> {
    let bytes: bytes::Bytes = serde_json::to_vec(value)?.into();
    let conflict = |rev: u64| {
        anyhow!(
            "conflict: the configuration of {app} is no longer at revision {rev} (someone else changed it); nothing was written"
        )
    };
    match expected {
        None => {
            session
                .bounded("writing the configuration", store.put(app, bytes))
                .await
        }
        Some(0) => match timed(session, store.create(app, bytes)).await? {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(conflict(0)),
            Err(e) => Err(anyhow!("writing the configuration of {app}: {e}")),
        },
        Some(rev) => match timed(session, store.update(app, bytes, rev)).await? {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(conflict(rev)),
            Err(e) => Err(anyhow!("writing the configuration of {app}: {e}")),
        },
    }
}

/// `fut` bounded by `--timeout`, its own error kept.
async fn timed<T>(session: &Session, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(session.timeout, fut)
        .await
        .map_err(|_| {
            anyhow!(
                "writing the configuration: no answer within {:?}",
                session.timeout
            )
        })
}

async fn set(conn: &ConnArgs, args: ConfigSetArgs) -> Result<()> {
    check_app(&args.app)?;
    let text = read_input(&args.file)?;
    let what = if args.file == Path::new("-") {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    // Checked before connecting: nothing is written when it is not a configuration.
    let value = parse(&text, Format::of(&args.file), &what)
        .map_err(|e| anyhow!("{e:#} (nothing was written)"))?;
    let session = Session::connect(conn, "config set").await?;
    let store = ensure_bucket(&session).await?;
    let revision = write(&session, &store, &args.app, &value, args.expect_revision).await?;
    println!(
        "set the configuration of {} ({} revision {revision})",
        args.app,
        app_config::BUCKET
    );
    Ok(())
}

/// The bucket, created (or given its republish, which `narun::config` follows) by
/// [`app_config::ensure`]; a server that refuses the republish is worth a warning, not a
/// failure (apps still see the change at their periodic re-read).
async fn ensure_bucket(session: &Session) -> Result<kv::Store> {
    let (store, state) = session
        .bounded(
            &format!("opening KV bucket {}", app_config::BUCKET),
            app_config::ensure(&session.js, session.replicas),
        )
        .await?;
    if let app_config::RepublishState::Refused(why) = state {
        eprintln!(
            "warning: KV bucket {} does not republish its changes and the server refused to add that ({why}): apps see this change within 30 s, not at once (nats-server 2.10 or newer can add it)",
            app_config::BUCKET
        );
    }
    Ok(store)
}

async fn edit(conn: &ConnArgs, app: &str, toml: bool) -> Result<()> {
    check_app(app)?;
    let format = if toml { Format::Toml } else { Format::Json };
    let session = Session::connect(conn, "config edit").await?;
    let store = ensure_bucket(&session).await?;
    let (revision, value) = match current(&session, &store, app).await? {
        Some((rev, v, _)) => (rev, v),
        None => (0, serde_json::json!({})),
    };
    let before = render(&value, format)?;
    let path = temp_file(app, format, &before)?;
    run_editor(&path)?;
    let after = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the edited {}", path.display()))?;
    if after == before {
        let _ = std::fs::remove_file(&path);
        println!("no change: the configuration of {app} stays at revision {revision}");
        return Ok(());
    }
    let kept = |e: anyhow::Error| {
        anyhow!(
            "{e:#}; nothing was written. Your edit is kept in {p}: fix it and run `narunctl config set {app} {p}`",
            p = path.display()
        )
    };
    let value = parse(&after, Some(format), "the edited configuration").map_err(kept)?;
    let revision = write(&session, &store, app, &value, Some(revision))
        .await
        .map_err(kept)?;
    let _ = std::fs::remove_file(&path);
    println!(
        "set the configuration of {app} ({} revision {revision})",
        app_config::BUCKET
    );
    Ok(())
}

/// A new file (mode 0600) in the temporary directory holding `text`.
fn temp_file(app: &str, format: Format, text: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let ext = match format {
        Format::Json => "json",
        Format::Toml => "toml",
    };
    let dir = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path = dir.join(format!(
            "narun-config-{app}-{}-{attempt}.{ext}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("cannot create a temporary file in {}", dir.display())
}

/// Run `$VISUAL`, else `$EDITOR`, else `vi` on `path` (through `sh`, so an editor with
/// arguments such as `code --wait` works).
fn run_editor(path: &Path) -> Result<()> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("narunctl")
        .arg(path)
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        bail!(
            "the editor {editor:?} failed ({status}); nothing was written (the file is {})",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_become_the_same_json_object() {
        let j = parse(r#"{"greeting": "hi", "n": 2}"#, None, "x").unwrap();
        let t = parse("greeting = \"hi\"\nn = 2\n", None, "x").unwrap();
        assert_eq!(j, t);
        let t = parse("when = 2026-12-04T10:00:00Z\n", Some(Format::Toml), "x").unwrap();
        assert_eq!(t["when"], "2026-12-04T10:00:00Z");
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let e = parse("greeting = ", None, "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml is not valid TOML:"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = parse("{\"a\": }", None, "c").unwrap_err().to_string();
        assert!(e.starts_with("c is not valid JSON:"), "{e}");
        let e = parse("[1, 2]", Some(Format::Json), "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn values_render_as_json_or_toml() {
        let v = serde_json::json!({"a": 1, "b": {"c": "d"}});
        assert_eq!(
            render(&v, Format::Toml).unwrap(),
            "a = 1\n\n[b]\nc = \"d\"\n"
        );
        assert!(render(&serde_json::json!({"a": null}), Format::Toml).is_err());
    }
}
