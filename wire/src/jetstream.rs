//! JetStream helpers that work on every nats-server version we meet in the field.
//!
//! async-nats' `create_key_value` first asks the server for the account info, and
//! the reply of nats-server < 2.10 (Debian 12 ships 2.9.10) does not parse
//! ("data did not match any variant of untagged enum Response"). [`ensure_kv`]
//! therefore creates the bucket's backing stream `KV_<bucket>` itself (exactly
//! the stream `create_key_value` would make) and then opens it with
//! `get_key_value`, which only needs the stream info.
//!
//! ```no_run
//! # async fn demo(client: async_nats::Client) -> Result<(), narun_wire::jetstream::JetStreamError> {
//! use std::time::Duration;
//! let js = async_nats::jetstream::new(client);
//! let states = narun_wire::jetstream::ensure_kv(
//!     &js, "node-runner-states", "narun node heartbeats", 1, Some(Duration::from_secs(45)),
//! ).await?;
//! states.put("node-1", "{}".into()).await.ok();
//! # Ok(()) }
//! ```

use async_nats::jetstream::{self, kv, object_store};
use std::time::Duration;

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

fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("10059")
}

/// Open the KV bucket `bucket`, creating it when it does not exist.
///
/// `history` is the number of values kept per key (1 = latest only), `max_age`
/// the TTL of every value (`None` = keep for ever). An existing bucket is used
/// as it is (its settings are not changed).
pub async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    history: i64,
    max_age: Option<Duration>,
) -> Result<kv::Store, JetStreamError> {
    match js.get_key_value(bucket).await {
        Ok(store) => return Ok(store),
        Err(e) if is_not_found(&e.to_string()) => {}
        Err(e) => {
            return Err(JetStreamError::Open {
                what: "KV bucket",
                bucket: bucket.into(),
                message: e.to_string(),
            });
        }
    }
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.to_string()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history.max(1),
            max_age: max_age.unwrap_or_default(),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        let message = e.to_string();
        // Someone else created it between our two requests: fine.
        if !message.to_ascii_lowercase().contains("already in use") {
            return Err(JetStreamError::Create {
                what: "KV bucket",
                bucket: bucket.into(),
                message,
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
) -> Result<object_store::ObjectStore, JetStreamError> {
    match js.get_object_store(bucket).await {
        Ok(store) => return Ok(store),
        Err(e) if is_not_found(&e.to_string()) => {}
        Err(e) => {
            return Err(JetStreamError::Open {
                what: "object store",
                bucket: bucket.into(),
                message: e.to_string(),
            });
        }
    }
    js.create_object_store(object_store::Config {
        bucket: bucket.to_string(),
        description: Some(description.to_string()),
        ..Default::default()
    })
    .await
    .map_err(|e| JetStreamError::Create {
        what: "object store",
        bucket: bucket.into(),
        message: e.to_string(),
    })
}
