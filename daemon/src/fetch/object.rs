//! Reading one object of a JetStream object store chunk by chunk, with errors instead of
//! panics.
//!
//! async-nats' `Object` (what `ObjectStore::get` returns) creates the ordered consumer that
//! delivers the chunks lazily inside `poll_read` and `unwrap`s the result: a stream without a
//! leader (a cluster member just died), a consumer limit or a timeout panics there. narund
//! used to catch that panic with `catch_unwind`; the firmware build (`panic = "abort"`,
//! Cargo.toml and docs/design.md "Panics in the firmware build") cannot, so narund reads the
//! chunks itself, the way the object store lays them out:
//!
//! 1. the object's info (`ObjectStore::info`: the last message on `$O.<bucket>.M.<name>`);
//!    a deleted object is not found, a link within the same bucket is followed (at most
//!    [`MAX_LINKS`] hops), a link into another bucket is refused;
//! 2. an ordered push consumer on the bucket's stream `OBJ_<bucket>`, filtered to the
//!    chunk subject `$O.<bucket>.C.<nuid>`: creating it is a request that can fail, and
//!    its failure is an [`ObjectError::Consumer`];
//! 3. the chunks in order until the consumer reports none pending (the object's chunk
//!    count: an empty object has no chunks and needs no consumer).
//!
//! The digest is not checked here: the caller hashes the bytes it wrote (through io_uring)
//! and compares them with what it expects and with the store's `info.digest`.

use async_nats::jetstream::{self, consumer::push, object_store::ObjectStore};
use bytes::Bytes;
use futures_util::StreamExt;

/// How many links [`Chunks::open`] follows before it gives up (a loop of links).
pub const MAX_LINKS: usize = 8;

/// An object store bucket with the JetStream context its chunks are read through.
///
/// Derefs to the [`ObjectStore`], so `info`, `put` and the rest are called on it as before.
#[derive(Clone)]
pub struct Bucket {
    store: ObjectStore,
    js: jetstream::Context,
    name: String,
}

impl Bucket {
    /// `store` is the bucket `name` opened through `js`.
    pub fn new(js: &jetstream::Context, name: &str, store: ObjectStore) -> Self {
        Bucket {
            store,
            js: js.clone(),
            name: name.to_string(),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for Bucket {
    type Target = ObjectStore;
    fn deref(&self) -> &ObjectStore {
        &self.store
    }
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No such object (or it was deleted).
    #[error("no such object")]
    NotFound,
    /// The info request got no answer in time.
    #[error("{0}")]
    TimedOut(String),
    /// The info request failed, or the object is a link that is not followed.
    #[error("{0}")]
    Info(String),
    /// The consumer that delivers the chunks could not be created (no stream leader, a
    /// consumer limit, no answer).
    #[error("creating the consumer for its chunks: {0}")]
    Consumer(String),
    /// The chunks stopped, or one of them could not be read.
    #[error("reading the object stream: {0}")]
    Stream(String),
}

/// The chunks of one object, in order.
pub struct Chunks {
    info: jetstream::object_store::ObjectInfo,
    messages: Option<push::Ordered>,
    done: bool,
}

impl Chunks {
    /// Look `object` up in `bucket` and subscribe to its chunks.
    pub async fn open(bucket: &Bucket, object: &str) -> Result<Chunks, ObjectError> {
        use jetstream::object_store::InfoErrorKind;
        let mut name = object.to_string();
        let mut hops = 0;
        let info = loop {
            let info = bucket.store.info(&name).await.map_err(|e| match e.kind() {
                InfoErrorKind::NotFound => ObjectError::NotFound,
                InfoErrorKind::TimedOut => ObjectError::TimedOut(e.to_string()),
                _ => ObjectError::Info(e.to_string()),
            })?;
            if info.deleted {
                return Err(ObjectError::NotFound);
            }
            let Some(link) = info.options.as_ref().and_then(|o| o.link.as_ref()) else {
                break info;
            };
            let target = match (&link.name, link.bucket == bucket.name) {
                (Some(target), true) => target.clone(),
                (Some(_), false) => {
                    return Err(ObjectError::Info(format!(
                        "'{name}' is a link into bucket '{}': links to other buckets are not followed",
                        link.bucket
                    )));
                }
                (None, _) => {
                    return Err(ObjectError::Info(format!(
                        "'{name}' is a link to a whole bucket, not to an object"
                    )));
                }
            };
            hops += 1;
            if hops > MAX_LINKS {
                return Err(ObjectError::Info(format!(
                    "'{object}': more than {MAX_LINKS} links in a row"
                )));
            }
            name = target;
        };
        if info.chunks == 0 {
            return Ok(Chunks {
                info,
                messages: None,
                done: true,
            });
        }
        let stream = bucket
            .js
            .get_stream_no_info(format!("OBJ_{}", bucket.name))
            .await
            .map_err(|e| ObjectError::Consumer(e.to_string()))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: bucket.js.client().new_inbox(),
                filter_subject: format!("$O.{}.C.{}", bucket.name, info.nuid),
                ..Default::default()
            })
            .await
            .map_err(|e| ObjectError::Consumer(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ObjectError::Consumer(e.to_string()))?;
        Ok(Chunks {
            info,
            messages: Some(messages),
            done: false,
        })
    }

    /// The object's info (of the link's target when it was a link).
    pub fn info(&self) -> &jetstream::object_store::ObjectInfo {
        &self.info
    }

    /// The next chunk, `None` after the last one.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ObjectError> {
        if self.done {
            return Ok(None);
        }
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let message = match messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(ObjectError::Stream(e.to_string())),
            None => {
                return Err(ObjectError::Stream(
                    "the subscription ended before the whole object was read".into(),
                ));
            }
        };
        let pending = message
            .info()
            .map_err(|e| ObjectError::Stream(e.to_string()))?
            .pending;
        if pending == 0 {
            self.done = true;
            self.messages = None;
        }
        Ok(Some(message.message.payload))
    }
}
