//! Optional status-event history: the JetStream stream `narun-status` that captures
//! `status.>`, for `narunctl events`.
//!
//! Status events ([`narun_wire::events::StatusEvent`]) go out with core NATS publishes
//! (like Go), so an event nobody is subscribed to is gone: without history `narunctl
//! events` shows only what happens while it runs. With `[events] stream = true` narund
//! creates (or updates) the stream [`STREAM`] on `status.>`; the NATS server then keeps
//! every event of every app on every node, bounded by age (`stream_max_age_sec`) and size
//! (`stream_max_bytes`, oldest first), and `narunctl events` prints them before it
//! follows. narund keeps publishing exactly as before: the stream is a server-side copy.
//!
//! Like the log stream ([`crate::logs::stream`]) the stream is account-wide: every narund
//! with `stream = true` applies its limits at start (the last one wins), and a narund with
//! `stream = false` (the default) leaves an existing stream alone.

use crate::logs::stream::Limits;
use async_nats::jetstream::{self, stream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name of the stream (`narunctl events` looks for this name).
pub const STREAM: &str = narun_wire::names::STATUS_STREAM;
/// Subjects it captures: every `status.<app>.<node>`.
pub const SUBJECTS: &str = "status.>";
/// Bound of each JetStream request made here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between checks that the stream still exists.
pub const RECHECK: Duration = Duration::from_secs(60);

/// `[events]` of `narund.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Keep the status events on the NATS server: create/update the JetStream stream
    /// `narun-status` on `status.>`. Off by default.
    pub stream: bool,
    /// Age limit of the stream's events, seconds (0 = no limit).
    pub stream_max_age_sec: u64,
    /// Size limit of the stream, bytes; the oldest events go first (0 = no limit).
    pub stream_max_bytes: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            stream: false,
            stream_max_age_sec: 7 * 24 * 3600,
            stream_max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl EventsConfig {
    /// The stream's retention limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_age_sec: self.stream_max_age_sec,
            max_bytes: self.stream_max_bytes,
        }
    }
}

/// The stream could not be created or updated.
#[derive(Debug, thiserror::Error)]
pub enum StatusStreamError {
    #[error(
        "creating the status stream {STREAM}: {0} (is JetStream enabled, and may this account create streams? Set [events] stream = false to run without event history)"
    )]
    Create(String),
    #[error(
        "updating the status stream {STREAM}: {0} (delete it with `nats stream rm {STREAM}` to recreate it)"
    )]
    Update(String),
    #[error("the status stream {STREAM}: no answer from JetStream within {REQUEST_TIMEOUT:?}")]
    Timeout,
}

/// The stream configuration for `limits`.
pub fn config(limits: &Limits) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some("narun status events (status.<app>.<node>), for narunctl events".into()),
        subjects: vec![SUBJECTS.to_string()],
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

async fn within<T>(fut: impl std::future::Future<Output = T>) -> Result<T, StatusStreamError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| StatusStreamError::Timeout)
}

/// Create the stream (with `replicas`, `None`: the cluster's default), or update its
/// limits when it exists with other ones (keeping its replicas).
pub async fn ensure(
    js: &jetstream::Context,
    limits: &Limits,
    replicas: Option<usize>,
) -> Result<(), StatusStreamError> {
    let mut wanted = config(limits);
    match within(js.get_stream(STREAM)).await? {
        Ok(mut existing) => {
            let info = within(existing.info())
                .await?
                .map_err(|e| StatusStreamError::Update(e.to_string()))?;
            let c = &info.config;
            if c.subjects == wanted.subjects
                && c.max_age == wanted.max_age
                && c.max_bytes == wanted.max_bytes
                && c.discard == wanted.discard
            {
                return Ok(());
            }
            wanted.num_replicas = c.num_replicas;
            within(js.update_stream(wanted))
                .await?
                .map_err(|e| StatusStreamError::Update(e.to_string()))?;
            tracing::info!(stream = STREAM, ?limits, "status stream limits updated");
        }
        Err(_) => {
            wanted.num_replicas = narun_wire::jetstream::replicas_or_default(js, replicas);
            within(js.create_stream(wanted))
                .await?
                .map_err(|e| StatusStreamError::Create(e.to_string()))?;
            tracing::info!(stream = STREAM, ?limits, "status stream created");
        }
    }
    Ok(())
}

/// Keep the stream in place while narund runs: [`ensure`] once NATS is connected
/// (retrying with a backoff up to 60 s), then every [`RECHECK`]. Failures are logged,
/// never fatal: apps and live events do not depend on the stream.
pub async fn run(
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
            match ensure(&js, &limits, replicas).await {
                Ok(()) => {
                    delay = Duration::from_secs(1);
                    RECHECK
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "status event history not available");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_the_stream_config() {
        let c = config(&EventsConfig::default().limits());
        assert_eq!(c.name, "narun-status");
        assert_eq!(c.subjects, ["status.>"]);
        assert_eq!(c.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.max_bytes, 64 << 20);
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        let unlimited = config(&Limits {
            max_age_sec: 0,
            max_bytes: 0,
        });
        assert_eq!(unlimited.max_bytes, -1);
    }

    #[test]
    fn shipped_config_has_the_defaults() {
        let c = crate::config::Config::from_toml(include_str!("../../config/narund.toml")).unwrap();
        let d = EventsConfig::default();
        assert!(!d.stream, "event history is opt-in");
        assert_eq!(c.events, d);
    }

    #[tokio::test]
    async fn ensure_creates_then_updates_the_limits() {
        let server = narun_test_support::NatsServer::start();
        let js = jetstream::new(server.connect().await);
        let a = Limits {
            max_age_sec: 60,
            max_bytes: 1 << 20,
        };
        ensure(&js, &a, None).await.unwrap();
        js.publish("status.app.node", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let b = Limits {
            max_age_sec: 0,
            max_bytes: 2 << 20,
        };
        ensure(&js, &b, None).await.unwrap();
        let mut s = js.get_stream(STREAM).await.unwrap();
        let info = s.info().await.unwrap().clone();
        assert_eq!(info.config.max_age, Duration::ZERO);
        assert_eq!(info.config.max_bytes, 2 << 20);
        assert_eq!(info.state.messages, 1, "the update keeps the stored events");
    }
}
