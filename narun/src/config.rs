//! Typed app configuration from KV, hot-reloaded: [`config`], [`ConfigOptions`], [`Config`].
//!
//! An app's configuration is one JSON object under its name in the KV bucket
//! `narun-config` ([`narun_wire::app_config`]), written by `narunctl config set|edit APP`
//! (which accepts JSON or TOML and checks it before writing). The app deserializes it into
//! its own type with serde, checks it with an optional validation function, and follows
//! every change the bucket republishes to `narun.cfg.<app>`:
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
//! * **How changes arrive**: the bucket republishes every write of a key `<app>` to
//!   `narun.cfg.<app>` ([`narun_wire::app_config::republish`]). The library subscribes to
//!   that subject first, then reads the current value with a JetStream direct get of its
//!   key, then applies each republished value whose stream sequence (`Nats-Sequence`) is
//!   newer than the last one it saw (applied or rejected).
//! * **Permissions**: the app's NATS user needs only to subscribe to `narun.cfg.<app>` and
//!   to publish the direct get of its own key ([`narun_wire::app_config::read_permissions`],
//!   [`narun_wire::app_config::subscribe_permissions`]); the users narund mints for apps
//!   have exactly that. No consumer is created (async-nats' `Store::watch` is not used): a
//!   user allowed to create push consumers could have the server deliver to any subject.
//! * **Reconnects**: changes republished while the connection was down are not queued
//!   anywhere, so the library reads its key again (a direct get) after every reconnect
//!   (it looks at the client's connect count every second) and, in any case, every 30 s
//!   (a change republished before a cluster learned of the subscription, a bucket whose
//!   republish an older nats-server would not add).
//!   After a restart of the server the next change arrives at once (tested).

use futures_util::StreamExt;
use narun_wire::app_config;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound of the direct get of the value.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the library reads its key again even without a reconnect.
const REREAD_EVERY: Duration = Duration::from_secs(30);
/// How often the client's connect count is looked at (local, no request).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How soon a failed read (no bucket yet, no answer) is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

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

/// One message of the key (a direct get answer or a republished change): its stream
/// sequence (the KV revision), the `KV-Operation` header, the value.
struct Stored {
    sequence: u64,
    operation: Option<String>,
    payload: bytes::Bytes,
}

impl Stored {
    /// `None` without a valid `Nats-Sequence` header (not from the stream).
    fn of(m: async_nats::Message) -> Option<Stored> {
        let headers = m.headers.as_ref()?;
        let sequence = headers.get("Nats-Sequence")?.as_str().parse().ok()?;
        let operation = headers.get("KV-Operation").map(|v| v.as_str().to_owned());
        Some(Stored {
            sequence,
            operation,
            payload: m.payload,
        })
    }
}

/// Why the key could not be read.
enum ReadError {
    /// No answer: the bucket does not exist (yet: nobody ran `narunctl config set`; the
    /// server answers no direct get of a missing stream), or this user may not read the
    /// key (the server drops the request).
    NoAnswer,
    Other(String),
}

/// Read the current message of `app`'s key with a direct get: `Ok(None)` when the key has
/// none.
async fn read(nats: &async_nats::Client, app: &str) -> Result<Option<Stored>, ReadError> {
    let request = nats.request(app_config::direct_get_subject(app), bytes::Bytes::new());
    let m = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Err(_) => return Err(ReadError::NoAnswer),
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut
            ) =>
        {
            return Err(ReadError::NoAnswer);
        }
        Ok(Err(e)) => return Err(ReadError::Other(e.to_string())),
        Ok(Ok(m)) => m,
    };
    match m.status {
        Some(s) if s == async_nats::StatusCode::NOT_FOUND => Ok(None),
        Some(s) if s != async_nats::StatusCode::OK => Err(ReadError::Other(format!(
            "direct get answered {s} {}",
            m.description.as_deref().unwrap_or("")
        ))),
        _ => Stored::of(m)
            .map(Some)
            .ok_or_else(|| ReadError::Other("direct get answer without Nats-Sequence".into())),
    }
}

impl<T> ConfigOptions<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// Start watching: the current value (or the default), then every change.
    ///
    /// When the bucket `narun-config` does not exist yet and a default is given, the
    /// default is used (after the 5 s the direct get waits for an answer) and the stored
    /// value once the bucket exists (republished at once, and looked for every 10 s).
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
        // Subscribe first, then read: a change committed after the read is republished to
        // the subscription.
        let changes = nats
            .subscribe(app_config::change_subject(&app))
            .await
            .map_err(|e| watch_err(e.to_string()))?;
        let stored = match read(nats, &app).await {
            Ok(s) => Some(s),
            Err(ReadError::NoAnswer) => {
                tracing::warn!(app = %app, bucket = app_config::BUCKET, timeout = ?REQUEST_TIMEOUT,
                    "no answer to the direct get of the configuration: no bucket yet, or this app's NATS user may not read its key");
                if self.default.is_none() {
                    return Err(ConfigError::Missing { app });
                }
                None
            }
            Err(ReadError::Other(reason)) => return Err(watch_err(reason)),
        };
        // The stored value first, when there is one.
        let mut first: Option<Current<T>> = None;
        let mut problem: Option<(u64, String)> = None;
        let mut seen = 0;
        if let Some(Some(m)) = &stored {
            seen = m.sequence;
            match decode(m.operation.as_deref(), &m.payload, self.validate.as_ref()) {
                Update::Apply(v) => {
                    first = Some(Current {
                        value: Arc::new(v),
                        revision: m.sequence,
                    })
                }
                Update::Deleted => {}
                Update::Rejected(reason) => problem = Some((m.sequence, reason)),
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
        let follower = Follower {
            nats: nats.clone(),
            app: app.clone(),
            tx,
            validate: self.validate,
            seen,
        };
        // Without a bucket, look for it again soon.
        let next_read = Instant::now()
            + if stored.is_some() {
                REREAD_EVERY
            } else {
                RETRY_EVERY
            };
        let task = tokio::spawn(follower.run(changes, next_read));
        Ok(Config {
            rx,
            app: Arc::from(app.as_str()),
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// The background task: applies republished changes and re-reads after reconnects.
struct Follower<T> {
    nats: async_nats::Client,
    app: String,
    tx: watch::Sender<Current<T>>,
    validate: Option<Validator<T>>,
    /// The newest stream sequence of the key seen (applied, rejected or deleted).
    seen: u64,
}

impl<T: DeserializeOwned> Follower<T> {
    async fn run(mut self, mut changes: async_nats::Subscriber, mut next_read: Instant) {
        let stats = self.nats.statistics();
        let mut connects = stats.connects.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                m = changes.next() => match m {
                    Some(m) => match Stored::of(m) {
                        Some(s) => self.apply(s),
                        None => tracing::debug!(app = %self.app, "a message without Nats-Sequence on the change subject; ignored"),
                    },
                    None => break,
                },
                _ = tick.tick() => {}
            }
            // A reconnect: changes may have been republished while the connection was down.
            let now_connects = stats.connects.load(Ordering::Relaxed);
            if now_connects != connects {
                connects = now_connects;
                next_read = Instant::now();
            }
            if Instant::now() < next_read {
                continue;
            }
            match read(&self.nats, &self.app).await {
                Ok(stored) => {
                    if let Some(s) = stored {
                        self.apply(s);
                    }
                    failing = false;
                    next_read = Instant::now() + REREAD_EVERY;
                }
                Err(e) => {
                    if !failing {
                        let reason = match e {
                            ReadError::NoAnswer => {
                                format!("no answer within {REQUEST_TIMEOUT:?} (no bucket yet?)")
                            }
                            ReadError::Other(reason) => reason,
                        };
                        tracing::debug!(app = %self.app, %reason, "cannot read the configuration; retrying");
                        failing = true;
                    }
                    next_read = Instant::now() + RETRY_EVERY;
                }
            }
        }
        tracing::warn!(app = %self.app, "configuration watch ended");
    }

    /// Apply a message of the key newer than any seen, if it deserializes and validates.
    fn apply(&mut self, m: Stored) {
        if m.sequence <= self.seen {
            return;
        }
        self.seen = m.sequence;
        let (app, revision) = (&self.app, m.sequence);
        let current = self.tx.borrow().revision;
        match decode(m.operation.as_deref(), &m.payload, self.validate.as_ref()) {
            Update::Apply(v) => {
                tracing::info!(app = %app, revision, "configuration updated");
                self.tx.send_replace(Current {
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
