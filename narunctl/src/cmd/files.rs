//! `narunctl files add|ls|rm`: shared files for spec `mounts`.
//!
//! Files live in the object store `narun-files` (Go: "Shared files for Narun applications"),
//! one object per logical name, with the Go metadata `original-filename` and
//! `upload-timestamp`. A spec mounts one with
//! `mounts: [{path: conf/app.toml, source: {objectStore: NAME}}]`; narund places it in the
//! instance work dir, verified by its SHA-256 digest, at every start.

use crate::cli::{ConnArgs, FilesCmd};
use crate::output::{confirm, print_json, print_table, rfc3339};
use crate::session::{Session, bounded, collect_each};
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::object_store;
use narun_wire::jetstream::FILES;
use narun_wire::names;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Run a `files` subcommand.
pub async fn run(conn: &ConnArgs, cmd: FilesCmd) -> Result<()> {
    match cmd {
        FilesCmd::Add {
            name,
            path,
            upload_timeout,
        } => add(conn, &name, &path, upload_timeout).await,
        FilesCmd::Ls(j) => ls(conn, j.json).await,
        FilesCmd::Rm { name, yes } => rm(conn, &name, yes).await,
    }
}

async fn add(conn: &ConnArgs, name: &str, path: &Path, upload_timeout: Duration) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid file name {name:?}: it must not be empty or contain '/'");
    }
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let session = Session::connect(conn, "files").await?;
    let store = session.ensure_object_store(&FILES).await?;
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let object = object_store::ObjectMetadata {
        name: name.to_string(),
        description: Some(format!("Shared file '{name}' uploaded from '{base}'")),
        metadata: HashMap::from([
            (names::FILE_META_ORIGINAL_FILENAME.to_string(), base),
            (names::FILE_META_UPLOAD_TIMESTAMP.to_string(), now),
        ]),
        ..Default::default()
    };
    let info = bounded(
        upload_timeout,
        &format!("uploading {} as {name}", path.display()),
        store.put(object, &mut file),
    )
    .await?;
    println!(
        "uploaded {} -> {name} ({} bytes, {})",
        path.display(),
        info.size,
        info.digest.as_deref().unwrap_or("no digest")
    );
    Ok(())
}

async fn ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let session = Session::connect(conn, "files").await?;
    let mut infos = Vec::new();
    if let Some(store) = session.open_object_store(&FILES).await? {
        let list = session.bounded("listing files", store.list()).await?;
        infos = collect_each(list, session.timeout, "listing files").await?;
        infos.retain(|i| !i.deleted);
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let modified = |i: &object_store::ObjectInfo| rfc3339(i.modified).unwrap_or_default();
    let meta =
        |i: &object_store::ObjectInfo, k: &str| i.metadata.get(k).cloned().unwrap_or_default();
    if json {
        let rows: Vec<serde_json::Value> = infos
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "size": i.size,
                    "modified": modified(i),
                    "original_filename": meta(i, names::FILE_META_ORIGINAL_FILENAME),
                    "upload_timestamp": meta(i, names::FILE_META_UPLOAD_TIMESTAMP),
                    "digest": i.digest.clone().unwrap_or_default(),
                    "description": i.description.clone().unwrap_or_default(),
                })
            })
            .collect();
        print_json(&rows)?;
        return Ok(());
    }
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.size.to_string(),
                dash(modified(i)),
                dash(meta(i, names::FILE_META_ORIGINAL_FILENAME)),
                dash(i.digest.clone().unwrap_or_default()),
            ]
        })
        .collect();
    print_table(
        &["NAME", "SIZE", "MODIFIED", "ORIGINAL FILENAME", "DIGEST"],
        &rows,
    );
    Ok(())
}

async fn rm(conn: &ConnArgs, name: &str, yes: bool) -> Result<()> {
    let session = Session::connect(conn, "files").await?;
    let store = session.open_object_store(&FILES).await?.ok_or_else(|| {
        anyhow!(
            "file {name} not found: object store {} does not exist",
            names::FILES_BUCKET
        )
    })?;
    match tokio::time::timeout(session.timeout, store.info(name)).await {
        Ok(Ok(i)) if !i.deleted => {}
        Ok(Ok(_)) => bail!("file {name} not found (see `narunctl files ls`)"),
        Ok(Err(e)) if e.kind() == object_store::InfoErrorKind::NotFound => {
            bail!("file {name} not found (see `narunctl files ls`)")
        }
        Ok(Err(e)) => bail!("reading file {name}: {e}"),
        Err(_) => bail!(
            "reading file {name}: no answer within {:?}",
            session.timeout
        ),
    }
    if !yes {
        confirm(&format!(
            "Delete file {name}? Apps mounting it will fail to start."
        ))?;
    }
    session
        .bounded(&format!("deleting file {name}"), store.delete(name))
        .await?;
    println!("deleted file {name}");
    Ok(())
}
