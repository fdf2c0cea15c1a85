//! The releases of each app that became ready, remembered for `apps rollback`.
//!
//! Every `--wait` that ends ready (`deploy`, `apps scale`, `apps rollback`) records the
//! spec it waited for as the newest [`Release`] of the app in the KV bucket
//! `narun-releases` (key = app name, value = [`Releases`], the last
//! [`Releases::KEEP`]). `apps rollback NAME` writes back the newest one whose tag differs
//! from the current spec's. `app-configs` keeps one revision per key (Go's bucket), so
//! its own history cannot say which specs were good; this record can, because only a
//! rollout seen ready is written.
//!
//! A leaf module: it knows the wire contract and nothing of the commands.

use anyhow::{Result, anyhow};
use async_nats::jetstream::{self, kv};
use narun_spec::AppSpec;
use narun_wire::events::{Release, Releases, now_rfc3339};
use narun_wire::jetstream::APP_RELEASES;
use std::time::Duration;

/// The remembered releases of `app` (none when the bucket or the key does not exist).
pub async fn load(js: &jetstream::Context, app: &str, timeout: Duration) -> Result<Releases> {
    let Some(store) = within(timeout, "opening narun-releases", APP_RELEASES.open(js)).await?
    else {
        return Ok(Releases::default());
    };
    let value = within(
        timeout,
        &format!("reading narun-releases/{app}"),
        store.get(app),
    )
    .await?;
    Ok(match value {
        Some(v) => serde_json::from_slice(&v)
            .map_err(|e| anyhow!("narun-releases/{app} is not valid JSON: {e}"))?,
        None => Releases::default(),
    })
}

/// Record `spec` (as stored in `app-configs`) as the newest good release of its app.
/// Read-modify-write with compare-and-set, retried when another narunctl wrote between.
pub async fn record(
    js: &jetstream::Context,
    spec: &AppSpec,
    timeout: Duration,
    replicas: Option<usize>,
) -> Result<()> {
    let store = within(
        timeout,
        "opening narun-releases",
        APP_RELEASES.ensure_replicas(js, replicas),
    )
    .await?;
    let value: serde_json::Value = serde_json::from_slice(&spec.to_kv_json())?;
    let release = Release {
        tag: spec.tag.clone(),
        config_hash: spec.config_hash(),
        spec: value,
        time: now_rfc3339(),
    };
    let key = spec.name.as_str();
    for _ in 0..5 {
        let entry = within(timeout, "reading narun-releases", store.entry(key)).await?;
        let (mut releases, revision) = match entry {
            Some(e) if e.operation == kv::Operation::Put => (
                serde_json::from_slice::<Releases>(&e.value).unwrap_or_default(),
                e.revision,
            ),
            Some(e) => (Releases::default(), e.revision),
            None => (Releases::default(), 0),
        };
        releases.record(release.clone());
        let bytes: bytes::Bytes = serde_json::to_vec(&releases)?.into();
        let written = if revision == 0 {
            tokio::time::timeout(timeout, store.create(key, bytes))
                .await
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        } else {
            tokio::time::timeout(timeout, store.update(key, bytes, revision))
                .await
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        };
        match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => continue, // someone else wrote: read again
            Err(_) => {
                return Err(anyhow!(
                    "writing narun-releases/{key}: no answer within {timeout:?}"
                ));
            }
        }
    }
    Err(anyhow!(
        "writing narun-releases/{key}: kept conflicting with other writers"
    ))
}

async fn within<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T> {
    crate::session::bounded(timeout, what, fut).await
}
