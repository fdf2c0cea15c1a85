//! `narunctl secret set|ls|rm`: encrypted values for `valueFromSecret`.
//!
//! Secrets live in the KV bucket `narun-secrets` (history 1) as the Go `StoredSecret` JSON,
//! encrypted with AES-256-GCM under the fleet's master key, with the secret's name and the
//! apps that may use it (`--app`, or `--any-app`) as additional data
//! ([`narun_wire::secrets`]). narunctl encrypts on the operator's machine: the plaintext
//! never travels over NATS. Only narund (with the same master key) decrypts, when it starts
//! an app in the secret's scope whose spec says `valueFromSecret: NAME`.

use crate::cli::{ConnArgs, MasterKeyArgs, SecretCmd, SecretSetArgs};
use crate::output::{confirm, print_json, print_table};
use crate::session::{Session, collect_each};
use anyhow::{Context, Result, anyhow, bail};
use narun_wire::jetstream::SECRETS;
use narun_wire::names;
use narun_wire::secrets::{MasterKey, Scope, StoredSecret};
use std::io::Read;

/// Run a `secret` subcommand.
pub async fn run(conn: &ConnArgs, cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::Set(args) => set(conn, args).await,
        SecretCmd::Ls(j) => ls(conn, j.json).await,
        SecretCmd::Rm { name, yes } => rm(conn, &name, yes).await,
    }
}

/// The master key from `--master-key-file` (env `NARUN_MASTER_KEY_PATH`), else
/// `--master-key` (env `NARUN_MASTER_KEY`), like the Go CLI where the path wins.
fn master_key(k: &MasterKeyArgs) -> Result<MasterKey> {
    if let Some(path) = &k.master_key_file {
        return Ok(MasterKey::load(path)?);
    }
    if let Some(b64) = &k.master_key {
        return Ok(MasterKey::from_base64(b64)?);
    }
    bail!(
        "no master key: pass --master-key-file FILE (or set NARUN_MASTER_KEY_PATH), or set \
         NARUN_MASTER_KEY to the base64 key; create one with `head -c 32 /dev/urandom | base64`"
    )
}

/// The plaintext: VALUE, the bytes of --from-file, or stdin (one trailing newline removed,
/// so `echo s3cret | narunctl secret set NAME` stores `s3cret`).
fn plaintext(args: &SecretSetArgs) -> Result<Vec<u8>> {
    let bytes = if let Some(v) = &args.value {
        v.clone().into_bytes()
    } else if let Some(f) = &args.from_file {
        std::fs::read(f).with_context(|| format!("reading {}", f.display()))?
    } else {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the value from stdin")?;
        if buf.ends_with(b"\n") {
            buf.pop();
            if buf.ends_with(b"\r") {
                buf.pop();
            }
        }
        buf
    };
    // narund puts the value into an environment variable: it must be UTF-8 without NUL.
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow!("the value is not valid UTF-8; an environment variable cannot hold it (base64-encode binary data)"))?;
    if text.contains('\0') {
        bail!("the value contains a NUL byte; an environment variable cannot hold it");
    }
    Ok(bytes)
}

/// The scope of `set`: `--any-app`, else the `--app`s (clap requires one of them).
fn scope(args: &SecretSetArgs) -> Result<Scope> {
    if args.any_app {
        return Ok(Scope::AnyApp);
    }
    Ok(Scope::apps(args.app.iter().cloned())?)
}

async fn set(conn: &ConnArgs, args: SecretSetArgs) -> Result<()> {
    narun_wire::secrets::validate_name(&args.name)?;
    let scope = scope(&args)?;
    let key = master_key(&args.key)?;
    let value = plaintext(&args)?;
    let session = Session::connect(conn, "secret").await?;
    let kv = session.ensure_kv(&SECRETS).await?;
    let existing = session
        .bounded(
            &format!("reading {}/{}", names::SECRETS_BUCKET, args.name),
            kv.get(&args.name),
        )
        .await?
        .and_then(|v| StoredSecret::from_json(&args.name, &v).ok());
    let stored = key.seal_scoped(
        &args.name,
        &value,
        args.description.as_deref(),
        existing.as_ref(),
        &scope,
    )?;
    session
        .bounded(
            &format!("writing {}/{}", names::SECRETS_BUCKET, args.name),
            kv.put(&args.name, stored.to_json().into()),
        )
        .await?;
    println!(
        "secret {} {} for {scope}",
        args.name,
        if existing.is_some() {
            "updated"
        } else {
            "created"
        }
    );
    Ok(())
}

async fn ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let session = Session::connect(conn, "secret").await?;
    let mut rows: Vec<serde_json::Value> = Vec::new();
    if let Some(kv) = session.open_kv(&SECRETS).await? {
        let keys = session.bounded("listing secrets", kv.keys()).await?;
        let mut names_ = collect_each(keys, session.timeout, "listing secrets").await?;
        names_.sort();
        for name in names_ {
            let v = session
                .bounded(&format!("reading secret {name}"), kv.get(&name))
                .await?;
            // Only metadata: the ciphertext is never printed. The scope is what the KV
            // says; narund authenticates it with the master key at every start.
            let s = v.and_then(|v| StoredSecret::from_json(&name, &v).ok());
            let apps = match s.as_ref().map(StoredSecret::scope) {
                Some(Ok(Scope::Unscoped)) | None => serde_json::Value::Null,
                Some(Ok(Scope::AnyApp)) => serde_json::json!(["*"]),
                Some(Ok(Scope::Apps(a))) => serde_json::json!(a),
                Some(Err(_)) => serde_json::json!("invalid"),
            };
            rows.push(serde_json::json!({
                "name": name,
                "apps": apps,
                "description": s.as_ref().map(|s| s.description.clone()).unwrap_or_default(),
                "created_at": s.as_ref().map(|s| s.created_at.clone()).unwrap_or_default(),
                "updated_at": s.as_ref().map(|s| s.updated_at.clone()).unwrap_or_default(),
            }));
        }
    }
    if json {
        print_json(&rows)?;
        return Ok(());
    }
    let cell = |r: &serde_json::Value, k: &str| {
        let s = r[k].as_str().unwrap_or_default();
        if s.is_empty() {
            "-".into()
        } else {
            s.to_string()
        }
    };
    let apps = |r: &serde_json::Value| match &r["apps"] {
        serde_json::Value::Null => "(unscoped)".to_string(),
        serde_json::Value::Array(a) if a.len() == 1 && a[0] == "*" => "(any app)".into(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(","),
        other => other.as_str().unwrap_or_default().to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                cell(r, "name"),
                apps(r),
                cell(r, "updated_at"),
                cell(r, "description"),
            ]
        })
        .collect();
    print_table(&["NAME", "APPS", "UPDATED", "DESCRIPTION"], &table);
    Ok(())
}

async fn rm(conn: &ConnArgs, name: &str, yes: bool) -> Result<()> {
    let session = Session::connect(conn, "secret").await?;
    let kv = session.open_kv(&SECRETS).await?.ok_or_else(|| {
        anyhow!(
            "secret {name} not found: bucket {} does not exist",
            names::SECRETS_BUCKET
        )
    })?;
    let exists = session
        .bounded(&format!("reading secret {name}"), kv.get(name))
        .await?;
    if exists.is_none() {
        bail!("secret {name} not found (see `narunctl secret ls`)");
    }
    if !yes {
        confirm(&format!(
            "Delete secret {name}? Apps using it will fail to start."
        ))?;
    }
    // Purge (like Go): no history of the ciphertext stays in the stream.
    session
        .bounded(&format!("purging secret {name}"), kv.purge(name))
        .await?;
    println!("deleted secret {name}");
    Ok(())
}
