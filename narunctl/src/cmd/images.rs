//! `narunctl images ls | rm`: the app binaries in the `app-binaries` object store.
//!
//! `deploy` stores each binary as `<app>-<tag>-<os>-<arch>` with the Go CLI's metadata
//! keys (`narun-app-name`, `narun-version-tag`, `narun-goos`, `narun-goarch`,
//! `narun-original-file`), so binaries uploaded by the Go `narun deploy` are listed the
//! same way. `ls` prints the columns of Go's `narun list-images`; objects without the
//! metadata (uploaded by hand) show `-`.
//!
//! `rm` deletes objects. Deleting the binary of a running app does not stop it (narund
//! keeps its verified copy in the local cache), but a node that has not cached it yet,
//! or a restart after the cache was cleaned, cannot start it any more: `rm` warns when
//! a stored spec still refers to an object, and asks for confirmation on a terminal.

use crate::cli::{ConnArgs, ImagesCmd};
use crate::output::{ask_yes, human_size, print_json, print_table, rfc3339};
use crate::session::{Session, bounded};
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream::object_store;
use futures_util::StreamExt;
use narun_wire::jetstream::APP_BINARIES;
use narun_wire::names;
use std::io::IsTerminal;
use std::time::Duration;

/// Run an `images` subcommand.
pub async fn run(conn: &ConnArgs, cmd: ImagesCmd) -> Result<()> {
    match cmd {
        ImagesCmd::Ls(j) => ls(conn, j.json).await,
        ImagesCmd::Rm { objects, yes } => rm(conn, &objects, yes).await,
    }
}

/// Every live (not deleted) object, sorted by name.
async fn list(
    store: &object_store::ObjectStore,
    timeout: Duration,
) -> Result<Vec<object_store::ObjectInfo>> {
    let mut out: Vec<object_store::ObjectInfo> = bounded(timeout, "listing app-binaries", async {
        let mut list = store.list().await?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info?;
            if !info.deleted {
                out.push(info);
            }
        }
        Ok::<_, async_nats::Error>(out)
    })
    .await?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn meta<'a>(info: &'a object_store::ObjectInfo, key: &str) -> &'a str {
    info.metadata
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .unwrap_or("-")
}

fn modified(info: &object_store::ObjectInfo) -> String {
    rfc3339(info.modified).unwrap_or_else(|| "-".into())
}

async fn ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let session = Session::connect(conn, "images").await?;
    // No `app-binaries` yet: nothing was ever deployed.
    let objects = match session.open_object_store(&APP_BINARIES).await? {
        Some(store) => list(&store, session.timeout).await?,
        None => Vec::new(),
    };
    if json {
        let out: Vec<serde_json::Value> = objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "object": o.name,
                    "size": o.size,
                    "modified": modified(o),
                    "app": o.metadata.get("narun-app-name"),
                    "tag": o.metadata.get("narun-version-tag"),
                    "os": o.metadata.get("narun-goos"),
                    "arch": o.metadata.get("narun-goarch"),
                    "original_file": o.metadata.get("narun-original-file"),
                    "digest": o.digest,
                    "description": o.description,
                })
            })
            .collect();
        print_json(&out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                human_size(o.size as u64),
                modified(o),
                meta(o, "narun-app-name").to_string(),
                meta(o, "narun-version-tag").to_string(),
                meta(o, "narun-goos").to_string(),
                meta(o, "narun-goarch").to_string(),
                o.digest.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "OBJECT NAME",
            "SIZE",
            "MODIFIED",
            "APP NAME",
            "TAG",
            "OS",
            "ARCH",
            "DIGEST",
        ],
        &rows,
    );
    Ok(())
}

async fn rm(conn: &ConnArgs, objects: &[String], yes: bool) -> Result<()> {
    let session = Session::connect(conn, "images").await?;
    let store = session
        .open_object_store(&APP_BINARIES)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "object store {} does not exist (nothing was deployed); nothing to remove",
                names::APP_BINARIES_BUCKET
            )
        })?;
    // Check them all first: a typo must not leave half of the list deleted.
    let mut found = Vec::new();
    for name in objects {
        match tokio::time::timeout(session.timeout, store.info(name)).await {
            Ok(Ok(info)) if !info.deleted => found.push(info),
            Ok(Ok(_)) | Ok(Err(_)) => bail!(
                "image {name} not found in {} (see `narunctl images ls`); nothing was removed",
                names::APP_BINARIES_BUCKET
            ),
            Err(_) => bail!("reading {name}: no answer within {:?}", session.timeout),
        }
    }
    // Warn about binaries a stored spec still uses.
    for (app, spec) in session.load_specs().await? {
        let Ok(spec) = spec else { continue };
        for info in &found {
            let prefix = format!("{}-{}-", spec.name, spec.tag);
            if info.name.starts_with(&prefix) {
                eprintln!(
                    "warning: {} is the binary of app {app} (tag {}): nodes that have not cached it cannot start that app any more",
                    info.name, spec.tag
                );
            }
        }
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to delete without confirmation: stdin is not a terminal; pass -y to delete {}",
                objects.join(" ")
            );
        }
        ask_yes(&format!(
            "Delete {} image(s) ({})?",
            found.len(),
            objects.join(", ")
        ))?;
    }
    for info in found {
        // The server purges every chunk before it answers: that takes longer than one
        // `--timeout` for a large object on a busy or slow disk, and the object is gone
        // all the same. Allow time for the size, and believe the store, not the wait.
        let bound = delete_bound(session.timeout, info.size as u64);
        // Each JetStream request of the deletion (the purge is one) is bounded by its
        // context's timeout: a context of its own allows the purge the longer bound.
        let mut js = session.js.clone();
        js.set_timeout(bound);
        let res = bounded(bound, &format!("deleting {}", info.name), async {
            let store = APP_BINARIES
                .open(&js)
                .await?
                .ok_or_else(|| anyhow!("{} does not exist any more", names::APP_BINARIES_BUCKET))?;
            store.delete(&info.name).await?;
            Ok::<_, anyhow::Error>(())
        })
        .await;
        if let Err(e) = res {
            let gone = matches!(
                tokio::time::timeout(session.timeout, store.info(&info.name)).await,
                Ok(Ok(i)) if i.deleted
            );
            if !gone {
                return Err(e);
            }
            // Marked deleted; the purge of its chunks may not have been sent before the
            // wait ended. Purging them again is harmless.
            let chunks = format!("$O.{}.C.{}", names::APP_BINARIES_BUCKET, info.nuid);
            let purged = bounded(
                bound,
                &format!("purging the chunks of {}", info.name),
                async {
                    let stream = session.js.get_stream(APP_BINARIES.stream_name()).await?;
                    stream.purge().filter(&chunks).await?;
                    Ok::<_, async_nats::Error>(())
                },
            )
            .await;
            if let Err(e) = purged {
                eprintln!("warning: {} is deleted, but {e}", info.name);
            }
        }
        println!("deleted {} ({})", info.name, human_size(info.size as u64));
    }
    Ok(())
}

/// How long the deletion of an object of `size` bytes may take: `--timeout`, plus a
/// second per 8 MiB of chunks to purge.
fn delete_bound(timeout: Duration, size: u64) -> Duration {
    timeout + Duration::from_secs(size / (8 << 20))
}
