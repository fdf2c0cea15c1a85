//! A server-side history of what narund publishes with core NATS: a JetStream stream
//! kept in place while narund runs.
//!
//! narund publishes log lines and status events with plain core NATS publishes (like Go),
//! so a message nobody is subscribed to is gone. An operator who wants history turns on
//! a stream in `narund.toml` (`[logs] stream = true`, `[events] stream = true`): the NATS
//! server then keeps a copy, bounded by age and size (oldest first), and `narunctl logs
//! --since` / `narunctl events` replay it. Each such stream is one [`HistoryStream`]:
//! its name, subjects and the config section that turns it on; this module creates or
//! updates it ([`HistoryStream::ensure`]) and keeps it in place ([`HistoryStream::run`]).
//!
//! The streams are account-wide: every narund with the stream on applies its limits at
//! start (the last one wins), and a narund with it off leaves an existing stream alone.

use async_nats::jetstream::{self, stream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bound of each JetStream request made here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between checks that a stream still exists (a server whose JetStream storage
/// was wiped gets it back).
pub const RECHECK: Duration = Duration::from_secs(60);

/// Retention limits of a history stream; 0 = no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Messages older than this are dropped (seconds).
    pub max_age_sec: u64,
    /// When the stream is larger than this, the oldest messages are dropped (bytes).
    pub max_bytes: u64,
}

/// One history stream: what it captures and which config section turns it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryStream {
    /// Stream name (`narunctl` looks for it by this name).
    pub name: &'static str,
    /// The one subject filter it captures, e.g. `logs.>`.
    pub subjects: &'static str,
    /// The stream's description on the server.
    pub description: &'static str,
    /// What it keeps, for messages: "log", "status".
    pub what: &'static str,
    /// The `narund.toml` section with its `stream = …` switch, e.g. `[logs]`.
    pub section: &'static str,
}

/// A history stream could not be created or updated.
#[derive(Debug, thiserror::Error)]
pub enum HistoryStreamError {
    #[error(
        "creating the {what} stream {name}: {reason} (is JetStream enabled, and may this account create streams? Set {section} stream = false to run without {what} history)"
    )]
    Create {
        what: &'static str,
        name: &'static str,
        section: &'static str,
        reason: String,
    },
    #[error(
        "updating the {what} stream {name}: {reason} (another narund may have created it with settings that cannot change, e.g. the storage type; delete it with `nats stream rm {name}` to recreate it)"
    )]
    Update {
        what: &'static str,
        name: &'static str,
        reason: String,
    },
    #[error("the {what} stream {name}: no answer from JetStream within {REQUEST_TIMEOUT:?}")]
    Timeout {
        what: &'static str,
        name: &'static str,
    },
}

impl HistoryStream {
    /// The stream configuration for `limits` (1 replica; [`Self::ensure`] picks them).
    pub fn config(&self, limits: &Limits) -> stream::Config {
        stream::Config {
            name: self.name.to_string(),
            description: Some(self.description.to_string()),
            subjects: vec![self.subjects.to_string()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(limits.max_age_sec),
            max_bytes: if limits.max_bytes == 0 {
                -1
            } else {
                i64::try_from(limits.max_bytes).unwrap_or(i64::MAX)
            },
            num_replicas: 1,
            ..Default::default()
        }
    }

    async fn within<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, HistoryStreamError> {
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| HistoryStreamError::Timeout {
                what: self.what,
                name: self.name,
            })
    }

    fn update_error(&self, e: impl std::fmt::Display) -> HistoryStreamError {
        HistoryStreamError::Update {
            what: self.what,
            name: self.name,
            reason: e.to_string(),
        }
    }

    /// Create the stream (with `replicas`, `None`: the cluster's default,
    /// `narun_wire::jetstream::default_replicas`), or update its limits when it exists
    /// with other ones (keeping its own replicas: `narunctl admin replicas` changes them).
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
        limits: &Limits,
        replicas: Option<usize>,
    ) -> Result<(), HistoryStreamError> {
        let mut wanted = self.config(limits);
        match self.within(js.get_stream(self.name)).await? {
            Ok(mut existing) => {
                let info = self
                    .within(existing.info())
                    .await?
                    .map_err(|e| self.update_error(e))?;
                let c = &info.config;
                if c.subjects == wanted.subjects
                    && c.max_age == wanted.max_age
                    && c.max_bytes == wanted.max_bytes
                    && c.discard == wanted.discard
                {
                    return Ok(());
                }
                wanted.num_replicas = c.num_replicas;
                self.within(js.update_stream(wanted))
                    .await?
                    .map_err(|e| self.update_error(e))?;
                tracing::info!(
                    stream = self.name,
                    ?limits,
                    "{} stream limits updated",
                    self.what
                );
            }
            Err(_) => {
                wanted.num_replicas = narun_wire::jetstream::replicas_or_default(js, replicas);
                self.within(js.create_stream(wanted)).await?.map_err(|e| {
                    HistoryStreamError::Create {
                        what: self.what,
                        name: self.name,
                        section: self.section,
                        reason: e.to_string(),
                    }
                })?;
                tracing::info!(stream = self.name, ?limits, "{} stream created", self.what);
            }
        }
        Ok(())
    }

    /// Keep the stream in place while narund runs: [`Self::ensure`] as soon as NATS is
    /// connected (retrying with a backoff up to 60 s while it fails), then again every
    /// [`RECHECK`]. Ends when `stop` is cancelled. Failures are logged, never fatal: apps,
    /// live logs and live events do not depend on the stream.
    pub async fn run(
        self,
        client: async_nats::Client,
        limits: Limits,
        replicas: Option<usize>,
        stop: CancellationToken,
    ) {
        let js = jetstream::new(client.clone());
        let mut delay = Duration::from_secs(1);
        loop {
            let next = if client.connection_state() != async_nats::connection::State::Connected {
                Duration::from_secs(1)
            } else {
                match self.ensure(&js, &limits, replicas).await {
                    Ok(()) => {
                        delay = Duration::from_secs(1);
                        RECHECK
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "{} history not available", self.what);
                        let d = delay;
                        delay = (delay * 2).min(Duration::from_secs(60));
                        d
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: HistoryStream = HistoryStream {
        name: "narun-test-history",
        subjects: "test.>",
        description: "test",
        what: "test",
        section: "[test]",
    };

    #[test]
    fn limits_map_to_the_stream_config() {
        let c = TEST.config(&Limits {
            max_age_sec: 3600,
            max_bytes: 1 << 20,
        });
        assert_eq!(c.name, "narun-test-history");
        assert_eq!(c.subjects, ["test.>"]);
        assert_eq!(c.max_age, Duration::from_secs(3600));
        assert_eq!(c.max_bytes, 1 << 20);
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        let unlimited = TEST.config(&Limits {
            max_age_sec: 0,
            max_bytes: 0,
        });
        assert_eq!(unlimited.max_age, Duration::ZERO);
        assert_eq!(unlimited.max_bytes, -1);
    }

    #[test]
    fn errors_name_the_stream_and_the_switch() {
        let e = HistoryStreamError::Create {
            what: TEST.what,
            name: TEST.name,
            section: TEST.section,
            reason: "no JetStream".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("narun-test-history") && s.contains("[test] stream = false"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn ensure_creates_then_updates_the_limits() {
        let server = narun_test_support::NatsServer::start();
        let js = jetstream::new(server.connect().await);
        let a = Limits {
            max_age_sec: 60,
            max_bytes: 1 << 20,
        };
        TEST.ensure(&js, &a, None).await.unwrap();
        let mut s = js.get_stream(TEST.name).await.unwrap();
        assert_eq!(
            s.info().await.unwrap().config.max_age,
            Duration::from_secs(60)
        );
        // Messages on its subjects land in it (the ack says it is stored).
        js.publish("test.app.node", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let b = Limits {
            max_age_sec: 0,
            max_bytes: 2 << 20,
        };
        TEST.ensure(&js, &b, None).await.unwrap();
        let info = s.info().await.unwrap().clone();
        assert_eq!(info.config.max_age, Duration::ZERO);
        assert_eq!(info.config.max_bytes, 2 << 20);
        assert_eq!(
            info.state.messages, 1,
            "the update keeps the stored messages"
        );
        TEST.ensure(&js, &b, None).await.unwrap();
    }
}
