//! Typed app configuration from KV, hot-reloaded: [`config`], [`ConfigOptions`], [`Config`].
//!
//! An app's configuration is one JSON object under its name in the KV bucket
//! `narun-config` ([`narun_wire::app_config`]), written by `narunctl config set|edit APP`
//! (which accepts JSON or TOML and checks it before writing). The app deserializes it into
//! its own type with serde, checks it with an optional validation function, and follows
//! every change through a KV watch (a JetStream ordered consumer of its key):
//!
//! ```no_run
//! # async fn demo(nats: async_nats::Client) -> Result<(), narun::ConfigError> {
//! #[derive(serde::Deserialize)]
//! struct Settings { greeting: String, max_items: u32 }
//!
//! let mut cfg = narun::ConfigOptions::<Settings>::new()
//!     .validate(|s| if s.max_items == 0 { Err("max_items must be > 0".into()) } else { Ok(()) })
//!     .watch(&nats)
//!     .await?;
//! println!("{}", cfg.get().greeting);         // the current value (an Arc)
//! cfg.changed().await?;                        // resolves when a new valid value arrived
//! println!("now {}", cfg.get().greeting);
//! # Ok(()) }
//! ```
//!
//! * **Start**: the stored value, deserialized and validated; without one (or with an
//!   invalid one) [`ConfigOptions::default_value`] if given, else an error naming the key
//!   and how to set it.
//! * **Changes**: a value that does not deserialize or validate is **rejected**: the
//!   previous value stays, a warning is logged (with the revision and the reason), and
//!   [`Config::changed`] does not fire. A deleted key keeps the previous value too.
//! * **Permissions**: the app's NATS user needs only to create a consumer of its own key
//!   ([`narun_wire::app_config::read_permissions`]); the users narund mints for apps have
//!   exactly that. async-nats' `Store::watch` is not used: its unnamed consumers cannot be
//!   limited to one key.
//! * **Reconnects**: async-nats recreates the ordered consumer (same name) from the last
//!   revision seen; after a restart of the server the next change arrives at once (tested).
//!   A reconnect to a server that still holds the old consumer may be refused until the old
//!   one's 30 s inactivity threshold passes (nats-server's rules for updating a consumer;
//!   not measured), delaying changes by up to ~30 s.

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push::OrderedConfig};
use futures_util::StreamExt;
use narun_wire::app_config;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bound of the consumer creation and of the wait for the first value.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a configuration could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The app name is unknown or not a valid key.
    #[error("{0}")]
    App(String),
    /// No value is stored and no default was given.
    #[error(
        "no configuration for app {app} in KV bucket {bucket} (set one with `narunctl config set {app} FILE`)",
        bucket = app_config::BUCKET
    )]
    Missing { app: String },
    /// The stored value does not deserialize or validate, and no default was given.
    #[error("the configuration of app {app} (revision {revision}) is invalid: {reason}")]
    Invalid {
        app: String,
        revision: u64,
        reason: String,
    },
    /// The watch could not be started, or ended.
    #[error(
        "watching the configuration of app {app}: {reason} (is JetStream enabled, and may this app's NATS user read its key of {bucket}?)",
        bucket = app_config::BUCKET
    )]
    Watch { app: String, reason: String },
}

type Validator<T> = Box<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

/// How to watch an app's configuration: which app, a default, a validation.
pub struct ConfigOptions<T> {
    app: Option<String>,
    default: Option<T>,
    validate: Option<Validator<T>>,
}

impl<T> Default for ConfigOptions<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ConfigOptions<T> {
    /// The configuration of this app: `NARUN_APP_NAME` (set by narund).
    pub fn new() -> Self {
        ConfigOptions {
            app: std::env::var(narun_wire::names::env::APP_NAME)
                .ok()
                .filter(|a| !a.is_empty()),
            default: None,
            validate: None,
        }
    }

    /// The configuration of app `app` instead (an app run by hand, a test).
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }

    /// Used when no value is stored, or the stored one is invalid, at start.
    pub fn default_value(mut self, value: T) -> Self {
        self.default = Some(value);
        self
    }

    /// Checked after deserializing: `Err(reason)` rejects the value (at start: an error;
    /// later: the previous value stays).
    pub fn validate(
        mut self,
        f: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validate = Some(Box::new(f));
        self
    }
}

/// The current configuration, kept up to date in the background. Clones share it; the
/// watch stops when the last clone is dropped.
pub struct Config<T> {
    rx: watch::Receiver<Current<T>>,
    app: Arc<str>,
    _task: Arc<AbortOnDrop>,
}

impl<T> Clone for Config<T> {
    fn clone(&self) -> Self {
        Config {
            rx: self.rx.clone(),
            app: self.app.clone(),
            _task: self._task.clone(),
        }
    }
}

struct Current<T> {
    value: Arc<T>,
    /// KV revision of the value; 0 for the default.
    revision: u64,
}

impl<T> Clone for Current<T> {
    fn clone(&self) -> Self {
        Current {
            value: self.value.clone(),
            revision: self.revision,
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Config<T> {
    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.rx.borrow().value.clone()
    }

    /// The KV revision of the current value (0: the default, nothing valid stored).
    pub fn revision(&self) -> u64 {
        self.rx.borrow().revision
    }

    /// Wait until a new valid value replaced the one last seen through this handle (like
    /// `tokio::sync::watch::Receiver::changed`). Err when the watch ended for good.
    pub async fn changed(&mut self) -> Result<(), ConfigError> {
        self.rx.changed().await.map_err(|_| ConfigError::Watch {
            app: self.app.to_string(),
            reason: "the watch ended".into(),
        })
    }
}

/// Watch this app's configuration ([`ConfigOptions::new`]: the app named by
/// `NARUN_APP_NAME`, no default, no validation beyond deserializing).
pub async fn config<T>(nats: &async_nats::Client) -> Result<Config<T>, ConfigError>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    ConfigOptions::new().watch(nats).await
}

/// What one KV message means for the configuration (pure: unit tested).
#[derive(Debug, PartialEq)]
enum Update<T> {
    /// A valid new value.
    Apply(T),
    /// The key was deleted or purged: keep the value.
    Deleted,
    /// Not acceptable: keep the value; the reason.
    Rejected(String),
}

/// Decode a KV message (`operation`: the `KV-Operation` header, if any).
fn decode<T: DeserializeOwned>(
    operation: Option<&str>,
    payload: &[u8],
    validate: Option<&Validator<T>>,
) -> Update<T> {
    if matches!(operation, Some("DEL" | "PURGE")) {
        return Update::Deleted;
    }
    if payload.len() > app_config::MAX_BYTES {
        return Update::Rejected(format!(
            "{} bytes, more than the {} accepted",
            payload.len(),
            app_config::MAX_BYTES
        ));
    }
    let value: T = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Update::Rejected(format!("does not deserialize: {e}")),
    };
    if let Some(f) = validate
        && let Err(reason) = f(&value)
    {
        return Update::Rejected(format!("does not validate: {reason}"));
    }
    Update::Apply(value)
}

fn operation(m: &async_nats::Message) -> Option<&str> {
    m.headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .map(|v| v.as_str())
}

/// Why the watch could not be opened.
enum OpenError {
    /// The bucket does not exist (yet): nobody ran `narunctl config set`.
    NoBucket,
    Other(String),
}

type Messages = jetstream::consumer::push::Ordered;

/// Create the ordered consumer of `app`'s key: the messages and whether a value is stored.
async fn open(nats: &async_nats::Client, app: &str) -> Result<(Messages, bool), OpenError> {
    let js = jetstream::new(nats.clone());
    // A named consumer: its name and filter are in the API subject, which is what the
    // app's permission allows (narun_wire::app_config).
    let inbox = nats.new_inbox();
    let name = format!(
        "narun_config_{}",
        inbox.rsplit('.').next().unwrap_or("watch")
    );
    let consumer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        js.create_consumer_on_stream(
            OrderedConfig {
                name: Some(name),
                deliver_subject: inbox,
                description: Some(format!("narun::config of {app}")),
                filter_subject: app_config::subject(app),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            },
            app_config::stream(),
        ),
    )
    .await
    .map_err(|_| OpenError::Other(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    .map_err(|e| match e.kind() {
        jetstream::stream::ConsumerErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            OpenError::NoBucket
        }
        _ => OpenError::Other(e.to_string()),
    })?;
    let pending = consumer.cached_info().num_pending > 0;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| OpenError::Other(e.to_string()))?;
    Ok((messages, pending))
}

impl<T> ConfigOptions<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// Start watching: the current value (or the default), then every change.
    ///
    /// When the bucket `narun-config` does not exist yet and a default is given, the
    /// default is used and the watch starts once the bucket exists (looked for every 5 s).
    pub async fn watch(self, nats: &async_nats::Client) -> Result<Config<T>, ConfigError> {
        let app = self.app.clone().ok_or_else(|| {
            ConfigError::App(format!(
                "no app name: {} is not set (run under narund, or use ConfigOptions::app)",
                narun_wire::names::env::APP_NAME
            ))
        })?;
        if let Some(p) = app_config::key_problem(&app) {
            return Err(ConfigError::App(p));
        }
        let watch_err = |reason: String| ConfigError::Watch {
            app: app.clone(),
            reason,
        };
        let (messages, pending) = match open(nats, &app).await {
            Ok((m, p)) => (Some(m), p),
            Err(OpenError::NoBucket) if self.default.is_some() => (None, false),
            Err(OpenError::NoBucket) => return Err(ConfigError::Missing { app }),
            Err(OpenError::Other(reason)) => return Err(watch_err(reason)),
        };
        let mut messages = messages;
        // The stored value first, when there is one.
        let mut first: Option<Current<T>> = None;
        let mut problem: Option<(u64, String)> = None;
        if let (Some(stream), true) = (messages.as_mut(), pending) {
            let m = tokio::time::timeout(REQUEST_TIMEOUT, stream.next())
                .await
                .map_err(|_| watch_err(format!("no value within {REQUEST_TIMEOUT:?}")))?
                .ok_or_else(|| watch_err("the watch ended".into()))?
                .map_err(|e| watch_err(e.to_string()))?;
            let revision = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            match decode(operation(&m), &m.payload, self.validate.as_ref()) {
                Update::Apply(v) => {
                    first = Some(Current {
                        value: Arc::new(v),
                        revision,
                    })
                }
                Update::Deleted => {}
                Update::Rejected(reason) => problem = Some((revision, reason)),
            }
        }
        let first = match (first, self.default, problem) {
            (Some(c), _, _) => c,
            (None, Some(d), problem) => {
                if let Some((revision, reason)) = problem {
                    tracing::warn!(app = %app, revision, %reason, "configuration rejected; using the default");
                }
                Current {
                    value: Arc::new(d),
                    revision: 0,
                }
            }
            (None, None, Some((revision, reason))) => {
                return Err(ConfigError::Invalid {
                    app,
                    revision,
                    reason,
                });
            }
            (None, None, None) => return Err(ConfigError::Missing { app }),
        };
        let (tx, rx) = watch::channel(first);
        let validate = self.validate;
        let nats = nats.clone();
        let name: Arc<str> = Arc::from(app.as_str());
        let task = tokio::spawn(async move {
            let mut messages = match messages {
                Some(m) => m,
                None => loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    match open(&nats, &app).await {
                        Ok((m, _)) => break m,
                        Err(OpenError::NoBucket) => {}
                        Err(OpenError::Other(reason)) => {
                            tracing::warn!(app = %app, %reason, "cannot watch the configuration yet; retrying")
                        }
                    }
                },
            };
            follow(&mut messages, &tx, &app, validate.as_ref()).await;
        });
        Ok(Config {
            rx,
            app: name,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// Apply every change that deserializes and validates, until the watch ends.
async fn follow<T: DeserializeOwned>(
    messages: &mut Messages,
    tx: &watch::Sender<Current<T>>,
    app: &str,
    validate: Option<&Validator<T>>,
) {
    while let Some(m) = messages.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(app = %app, error = %e, "configuration watch: a message was lost; the watch goes on");
                continue;
            }
        };
        let revision = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let current = tx.borrow().revision;
        if revision != 0 && revision <= current {
            continue;
        }
        match decode(operation(&m), &m.payload, validate) {
            Update::Apply(v) => {
                tracing::info!(app = %app, revision, "configuration updated");
                tx.send_replace(Current {
                    value: Arc::new(v),
                    revision,
                });
            }
            Update::Deleted => {
                tracing::warn!(app = %app, revision, kept = current, "configuration deleted; keeping the previous value");
            }
            Update::Rejected(reason) => {
                tracing::warn!(app = %app, revision, kept = current, %reason, "configuration rejected; keeping the previous value");
            }
        }
    }
    tracing::warn!(app = %app, "configuration watch ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct S {
        n: u32,
    }

    #[test]
    fn messages_become_updates() {
        let positive: Validator<S> = Box::new(|s: &S| {
            if s.n > 0 {
                Ok(())
            } else {
                Err("n must be > 0".into())
            }
        });
        assert_eq!(
            decode::<S>(None, br#"{"n": 3}"#, Some(&positive)),
            Update::Apply(S { n: 3 })
        );
        assert_eq!(
            decode::<S>(Some("DEL"), b"", Some(&positive)),
            Update::Deleted
        );
        assert_eq!(decode::<S>(Some("PURGE"), b"", None), Update::Deleted);
        let Update::Rejected(r) = decode::<S>(None, br#"{"n": 0}"#, Some(&positive)) else {
            panic!()
        };
        assert_eq!(r, "does not validate: n must be > 0");
        let Update::Rejected(r) = decode::<S>(None, br#"{"n": "x"}"#, None) else {
            panic!()
        };
        assert!(r.starts_with("does not deserialize: invalid type"), "{r}");
        let big = vec![b' '; app_config::MAX_BYTES + 1];
        let Update::Rejected(r) = decode::<S>(None, &big, None) else {
            panic!()
        };
        assert!(r.contains("more than"), "{r}");
    }
}
