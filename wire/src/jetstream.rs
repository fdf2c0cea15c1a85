//! JetStream helpers that work on every nats-server version we meet in the field.
//!
//! async-nats' `create_key_value` first asks the server for the account info, and
//! the reply of nats-server < 2.10 (Debian 12 ships 2.9.10) does not parse
//! ("data did not match any variant of untagged enum Response"). [`ensure_kv`]
//! therefore creates the bucket's backing stream `KV_<bucket>` itself (exactly
//! the stream `create_key_value` would make) and then opens it with
//! `get_key_value`, which only needs the stream info.
//!
//!
//! ## Replicas
//!
//! Every stream narun creates (the KV buckets, the object stores, the log stream) gets
//! the same number of replicas: the configured `stream_replicas`, else
//! [`default_replicas`]: 3 when the server's INFO announces 3 or more servers in its
//! cluster (`connect_urls`), else 1. A bucket that exists is used as it is; `narunctl
//! admin replicas N` changes the replicas of existing ones in place ([`set_replicas`]).
//!
//! ```no_run
//! # async fn demo(client: async_nats::Client) -> Result<(), narun_wire::jetstream::JetStreamError> {
//! use std::time::Duration;
//! let js = async_nats::jetstream::new(client);
//! let states = narun_wire::jetstream::ensure_kv(
//!     &js, "node-runner-states", "narun node heartbeats", 1, Some(Duration::from_secs(45)), 1,
//! ).await?;
//! states.put("node-1", "{}".into()).await.ok();
//! # Ok(()) }
//! ```

use crate::names;
use async_nats::jetstream::{self, kv, object_store};
use std::time::Duration;

/// A KV bucket of the contract: its name and the settings it is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBucket {
    pub name: &'static str,
    pub description: &'static str,
    /// Values kept per key (1 = latest only).
    pub history: i64,
    /// TTL of every value (`None` = kept for ever).
    pub max_age: Option<Duration>,
}

/// An object store of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectBucket {
    pub name: &'static str,
    pub description: &'static str,
}

/// `app-configs`: key = app name, value = the app spec (Go's description).
pub const APP_CONFIGS: KvBucket = KvBucket {
    name: names::APP_CONFIGS_BUCKET,
    description: "Stores application service specifications for node runners.",
    history: 1,
    max_age: None,
};

/// `node-runner-states`: key = node id, value = [`crate::events::NodeState`]; entries
/// expire [`names::NODE_STATE_TTL_SECS`] after the last heartbeat.
pub const NODE_STATES: KvBucket = KvBucket {
    name: names::NODE_STATES_BUCKET,
    description: "narun node heartbeats",
    history: 1,
    max_age: Some(Duration::from_secs(names::NODE_STATE_TTL_SECS)),
};

/// `narun-secrets`: key = secret name, value = encrypted secret JSON.
pub const SECRETS: KvBucket = KvBucket {
    name: names::SECRETS_BUCKET,
    description: "narun secrets (AES-256-GCM, AAD = name)",
    history: 1,
    max_age: None,
};

/// `narun-releases`: key = app name, value = [`crate::events::Releases`], the app's
/// releases that became ready (narun addition; written by narunctl, read by `narunctl apps
/// rollback`).
pub const APP_RELEASES: KvBucket = KvBucket {
    name: names::RELEASES_BUCKET,
    description: "narun releases that became ready, per app (for narunctl apps rollback)",
    history: 1,
    max_age: None,
};

/// `narun-locks`: the app library's locks and leader elections (narun addition; one
/// key per lock, compare-and-set on the revision, leases renewed by the holder).
pub const LOCKS: KvBucket = KvBucket {
    name: names::LOCKS_BUCKET,
    description: "narun locks and leader elections (narun::lock)",
    history: 1,
    max_age: None,
};

/// `app-binaries`: app binaries named `<app>-<tag>-<os>-<arch>` (Go's description).
pub const APP_BINARIES: ObjectBucket = ObjectBucket {
    name: names::APP_BINARIES_BUCKET,
    description: "Stores application binaries.",
};

/// `narun-files`: shared files mounted into app work dirs (Go's description).
pub const FILES: ObjectBucket = ObjectBucket {
    name: names::FILES_BUCKET,
    description: names::FILES_DESCRIPTION,
};

/// The most replicas JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

/// Replicas for new streams when none are configured: 3 when the server `client` is
/// connected to announces 3 or more servers in its cluster (INFO `connect_urls`, which
/// lists every member's client URL, its own included), else 1. A server configured with
/// `no_advertise` announces none: set the replicas explicitly there.
pub fn default_replicas(client: &async_nats::Client) -> usize {
    replicas_for_servers(announced_servers(&client.server_info()))
}

/// Distinct servers an INFO announces (at least 1: the one that sent it).
pub fn announced_servers(info: &async_nats::ServerInfo) -> usize {
    // Counted without sorting (no sort instance in every binary for a handful of URLs).
    let urls = &info.connect_urls;
    let distinct = (0..urls.len())
        .filter(|&i| !urls[..i].contains(&urls[i]))
        .count();
    distinct.max(1)
}

/// The default replicas for a cluster of `servers`.
pub fn replicas_for_servers(servers: usize) -> usize {
    if servers >= 3 { 3 } else { 1 }
}

/// `configured`, else [`default_replicas`] of the client behind `js`.
pub fn replicas_or_default(js: &jetstream::Context, configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| default_replicas(&js.client()))
}

impl KvBucket {
    /// Open the bucket, creating it when it does not exist ([`ensure_kv`]) with
    /// [`default_replicas`].
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<kv::Store, JetStreamError> {
        self.ensure_replicas(js, None).await
    }

    /// Open the bucket, creating it when it does not exist with `replicas` (`None`:
    /// [`default_replicas`]).
    pub async fn ensure_replicas(
        &self,
        js: &jetstream::Context,
        replicas: Option<usize>,
    ) -> Result<kv::Store, JetStreamError> {
        let replicas = replicas_or_default(js, replicas);
        ensure_kv(
            js,
            self.name,
            self.description,
            self.history,
            self.max_age,
            replicas,
        )
        .await
    }

    /// The name of the bucket's backing stream.
    pub fn stream_name(&self) -> String {
        format!("KV_{}", self.name)
    }

    /// Open the bucket; `Ok(None)` when it does not exist.
    pub async fn open(&self, js: &jetstream::Context) -> Result<Option<kv::Store>, JetStreamError> {
        open_kv(js, self.name).await
    }
}

impl ObjectBucket {
    /// Open the object store, creating it when it does not exist ([`ensure_object_store`]).
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
    ) -> Result<object_store::ObjectStore, JetStreamError> {
        self.ensure_replicas(js, None).await
    }

    /// Open the object store, creating it when it does not exist with `replicas`
    /// (`None`: [`default_replicas`]).
    pub async fn ensure_replicas(
        &self,
        js: &jetstream::Context,
        replicas: Option<usize>,
    ) -> Result<object_store::ObjectStore, JetStreamError> {
        let replicas = replicas_or_default(js, replicas);
        ensure_object_store(js, self.name, self.description, replicas).await
    }

    /// The name of the store's backing stream.
    pub fn stream_name(&self) -> String {
        format!("OBJ_{}", self.name)
    }

    /// Open the object store; `Ok(None)` when it does not exist.
    pub async fn open(
        &self,
        js: &jetstream::Context,
    ) -> Result<Option<object_store::ObjectStore>, JetStreamError> {
        open_object_store(js, self.name).await
    }
}

/// A bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("opening {what} '{bucket}': {message} (is JetStream enabled on the NATS server?)")]
    Open {
        what: &'static str,
        bucket: String,
        message: String,
    },
    #[error("creating {what} '{bucket}': {message} (does this account allow creating streams?)")]
    Create {
        what: &'static str,
        bucket: String,
        message: String,
    },
}

/// Whether `err` (or an error it wraps) is JetStream's "stream not found" (code 10059): the
/// bucket whose backing stream was asked for does not exist. Typed, not matched on text.
pub fn is_stream_not_found(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<jetstream::context::GetStreamError>()
            && let jetstream::context::GetStreamErrorKind::JetStream(js) = e.kind()
        {
            return js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND;
        }
        if let Some(e) = e.downcast_ref::<jetstream::Error>() {
            return e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND;
        }
        cur = e.source();
    }
    false
}

/// Open the KV bucket `bucket`; `Ok(None)` when it does not exist.
pub async fn open_kv(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<kv::Store>, JetStreamError> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(Some(store)),
        Err(e) if is_stream_not_found(&e) => Ok(None),
        Err(e) => Err(JetStreamError::Open {
            what: "KV bucket",
            bucket: bucket.into(),
            message: e.to_string(),
        }),
    }
}

/// Open the object store `bucket`; `Ok(None)` when it does not exist.
pub async fn open_object_store(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<object_store::ObjectStore>, JetStreamError> {
    match js.get_object_store(bucket).await {
        Ok(store) => Ok(Some(store)),
        Err(e) if is_stream_not_found(&e) => Ok(None),
        Err(e) => Err(JetStreamError::Open {
            what: "object store",
            bucket: bucket.into(),
            message: e.to_string(),
        }),
    }
}

/// Open the KV bucket `bucket`, creating it when it does not exist.
///
/// `history` is the number of values kept per key (1 = latest only), `max_age`
/// the TTL of every value (`None` = keep for ever), `replicas` the copies JetStream
/// keeps (1 to [`MAX_REPLICAS`], at most the servers of the cluster). An existing bucket
/// is used as it is (its settings are not changed).
pub async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    history: i64,
    max_age: Option<Duration>,
    replicas: usize,
) -> Result<kv::Store, JetStreamError> {
    let config = kv_stream_config(bucket, description, history, max_age, replicas);
    ensure_kv_stream(js, bucket, config).await
}

/// The backing stream `KV_<bucket>` [`ensure_kv`] creates (what async-nats'
/// `create_key_value` would make).
pub fn kv_stream_config(
    bucket: &str,
    description: &str,
    history: i64,
    max_age: Option<Duration>,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history.max(1),
        max_age: max_age.unwrap_or_default(),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas.clamp(1, MAX_REPLICAS),
        ..Default::default()
    }
}

/// Open the KV bucket `bucket`, creating its backing stream with `config` (a
/// [`kv_stream_config`], possibly with more settings) when it does not exist. An existing
/// bucket is used as it is.
pub async fn ensure_kv_stream(
    js: &jetstream::Context,
    bucket: &str,
    config: jetstream::stream::Config,
) -> Result<kv::Store, JetStreamError> {
    if let Some(store) = open_kv(js, bucket).await? {
        return Ok(store);
    }
    let created = js.create_stream(config).await;
    if let Err(e) = created {
        // Someone else created it between our two requests: fine.
        let exists = matches!(
            e.kind(),
            jetstream::context::CreateStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
        );
        if !exists {
            return Err(JetStreamError::Create {
                what: "KV bucket",
                bucket: bucket.into(),
                message: e.to_string(),
            });
        }
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| JetStreamError::Open {
            what: "KV bucket",
            bucket: bucket.into(),
            message: e.to_string(),
        })
}

/// Open the object store `bucket`, creating it when it does not exist.
pub async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, JetStreamError> {
    if let Some(store) = open_object_store(js, bucket).await? {
        return Ok(store);
    }
    js.create_object_store(object_store::Config {
        bucket: bucket.to_string(),
        description: Some(description.to_string()),
        num_replicas: replicas.clamp(1, MAX_REPLICAS),
        ..Default::default()
    })
    .await
    .map_err(|e| JetStreamError::Create {
        what: "object store",
        bucket: bucket.into(),
        message: e.to_string(),
    })
}

/// Every stream of the contract, by name: the KV buckets' `KV_<bucket>`, the object
/// stores' `OBJ_<bucket>`, the log stream and the status stream (what `narunctl admin
/// replicas` changes).
pub fn contract_streams() -> Vec<String> {
    let mut v: Vec<String> = [APP_CONFIGS, NODE_STATES, SECRETS, APP_RELEASES, LOCKS]
        .iter()
        .map(KvBucket::stream_name)
        .collect();
    v.extend([APP_BINARIES, FILES].iter().map(ObjectBucket::stream_name));
    v.push(names::LOG_STREAM.to_string());
    v.push(names::STATUS_STREAM.to_string());
    v
}

/// One stream's replicas before and after [`set_replicas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChange {
    pub stream: String,
    pub from: usize,
    pub to: usize,
}

/// Change the replicas of the existing stream `stream` to `replicas` in place (a stream
/// update: JetStream adds or removes peers and copies the data; the stream stays usable).
/// `Ok(None)` when the stream does not exist; with `dry_run` nothing changes and the
/// change that would be made is returned.
pub async fn set_replicas(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
    dry_run: bool,
) -> Result<Option<ReplicaChange>, JetStreamError> {
    let err = |message: String| JetStreamError::Create {
        what: "stream",
        bucket: stream.into(),
        message,
    };
    let mut handle = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(e) if is_stream_not_found(&e) => return Ok(None),
        Err(e) => {
            return Err(JetStreamError::Open {
                what: "stream",
                bucket: stream.into(),
                message: e.to_string(),
            });
        }
    };
    let info = handle.info().await.map_err(|e| err(e.to_string()))?;
    let mut config = info.config.clone();
    let change = ReplicaChange {
        stream: stream.into(),
        from: config.num_replicas,
        to: replicas,
    };
    if dry_run || config.num_replicas == replicas {
        return Ok(Some(change));
    }
    config.num_replicas = replicas;
    js.update_stream(config)
        .await
        .map_err(|e| err(format!("changing replicas to {replicas}: {e}")))?;
    Ok(Some(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_or_more_servers_get_three_replicas() {
        let info = |urls: &[&str]| async_nats::ServerInfo {
            connect_urls: urls.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(announced_servers(&info(&[])), 1);
        assert_eq!(announced_servers(&info(&["a:1", "a:1", "b:1"])), 2);
        for (n, want) in [(1, 1), (2, 1), (3, 3), (4, 3), (7, 3)] {
            assert_eq!(replicas_for_servers(n), want, "{n} servers");
        }
        let urls: Vec<String> = (0..5).map(|i| format!("h{i}:4222")).collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        assert_eq!(replicas_for_servers(announced_servers(&info(&refs))), 3);
    }
}
