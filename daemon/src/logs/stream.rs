//! Optional log history: the JetStream stream `narun-logs` that captures `logs.>`.
//!
//! App output goes out with core NATS publishes (like Go), so a line nobody is
//! subscribed to is gone. With `[logs] stream = true` narund creates (or updates) a
//! stream [`STREAM`] on the subjects `logs.>`: the NATS server then keeps every line
//! of every app on every node, bounded by age (`stream_max_age_sec`) and size
//! (`stream_max_bytes`, oldest lines dropped first), and `narunctl logs APP --since 10m`
//! replays them. narund itself keeps publishing exactly as before; the stream is a
//! server-side copy, so enabling it costs the devices nothing.
//!
//! The stream is account-wide: every narund that has `stream = true` applies its limits
//! at start (the last one wins), so give all nodes the same values. A narund with
//! `stream = false` (the default) leaves an existing stream alone.
//!
//! ```no_run
//! # async fn demo(client: async_nats::Client) -> Result<(), narund::logs::stream::LogStreamError> {
//! let js = async_nats::jetstream::new(client);
//! let limits = narund::logs::stream::Limits { max_age_sec: 86_400, max_bytes: 256 << 20 };
//! narund::logs::stream::ensure(&js, &limits).await?;
//! # Ok(()) }
//! ```

use async_nats::jetstream::{self, stream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name of the stream (`narunctl logs` looks for this name).
pub const STREAM: &str = narun_wire::names::LOG_STREAM;
/// Subjects it captures: every `logs.<app>.<node>`.
pub const SUBJECTS: &str = "logs.>";
/// Bound of each JetStream request made here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Retention limits of the stream; 0 = no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Lines older than this are dropped (seconds).
    pub max_age_sec: u64,
    /// When the stream is larger than this, the oldest lines are dropped (bytes).
    pub max_bytes: u64,
}

impl Limits {
    /// From narund's `[logs]` section.
    pub fn from_config(c: &super::LogsConfig) -> Limits {
        Limits {
            max_age_sec: c.stream_max_age_sec,
            max_bytes: c.stream_max_bytes,
        }
    }
}

/// The stream could not be created or updated.
#[derive(Debug, thiserror::Error)]
pub enum LogStreamError {
    #[error(
        "creating the log stream {STREAM}: {0} (is JetStream enabled, and may this account create streams? Set [logs] stream = false to run without log history)"
    )]
    Create(String),
    #[error(
        "updating the log stream {STREAM}: {0} (another narund may have created it with settings that cannot change, e.g. the storage type; delete it with `nats stream rm {STREAM}` to recreate it)"
    )]
    Update(String),
    #[error("the log stream {STREAM}: no answer from JetStream within {REQUEST_TIMEOUT:?}")]
    Timeout,
}

/// The stream configuration for `limits`.
pub fn config(limits: &Limits) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some(
            "narun app log lines (logs.<app>.<node>), for narunctl logs --since".into(),
        ),
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

/// Create the stream, or update its limits when it exists with other ones.
pub async fn ensure(js: &jetstream::Context, limits: &Limits) -> Result<(), LogStreamError> {
    ensure_replicas(js, limits, None).await
}

/// [`ensure`]; a new stream gets `replicas` (`None`: the cluster's default,
/// `narun_wire::jetstream::default_replicas`), an existing one keeps its own (`narunctl
/// admin replicas` changes them).
pub async fn ensure_replicas(
    js: &jetstream::Context,
    limits: &Limits,
    replicas: Option<usize>,
) -> Result<(), LogStreamError> {
    let mut wanted = config(limits);
    match tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(STREAM))
        .await
        .map_err(|_| LogStreamError::Timeout)?
    {
        Ok(mut existing) => {
            let info = tokio::time::timeout(REQUEST_TIMEOUT, existing.info())
                .await
                .map_err(|_| LogStreamError::Timeout)?
                .map_err(|e| LogStreamError::Update(e.to_string()))?;
            let c = &info.config;
            if c.subjects == wanted.subjects
                && c.max_age == wanted.max_age
                && c.max_bytes == wanted.max_bytes
                && c.discard == wanted.discard
            {
                return Ok(());
            }
            wanted.num_replicas = c.num_replicas;
            tokio::time::timeout(REQUEST_TIMEOUT, js.update_stream(wanted))
                .await
                .map_err(|_| LogStreamError::Timeout)?
                .map_err(|e| LogStreamError::Update(e.to_string()))?;
            tracing::info!(stream = STREAM, ?limits, "log stream limits updated");
            Ok(())
        }
        Err(_) => {
            wanted.num_replicas = narun_wire::jetstream::replicas_or_default(js, replicas);
            tokio::time::timeout(REQUEST_TIMEOUT, js.create_stream(wanted))
                .await
                .map_err(|_| LogStreamError::Timeout)?
                .map_err(|e| LogStreamError::Create(e.to_string()))?;
            tracing::info!(stream = STREAM, ?limits, "log stream created");
            Ok(())
        }
    }
}

/// Keep the stream in place while narund runs: [`ensure`] as soon as NATS is connected
/// (retrying with a backoff up to 60 s while it fails), then again every
/// [`RECHECK`] (a server whose JetStream storage was wiped gets it back). Ends when
/// `stop` becomes true. Failures are logged, never fatal: apps and live logs do not
/// depend on the stream.
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
            match ensure_replicas(&js, &limits, replicas).await {
                Ok(()) => {
                    delay = Duration::from_secs(1);
                    RECHECK
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "log history not available");
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

/// Interval between checks that the stream still exists.
pub const RECHECK: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_the_stream_config() {
        let c = config(&Limits {
            max_age_sec: 3600,
            max_bytes: 1 << 20,
        });
        assert_eq!(c.name, "narun-logs");
        assert_eq!(c.subjects, ["logs.>"]);
        assert_eq!(c.max_age, Duration::from_secs(3600));
        assert_eq!(c.max_bytes, 1 << 20);
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        let unlimited = config(&Limits {
            max_age_sec: 0,
            max_bytes: 0,
        });
        assert_eq!(unlimited.max_age, Duration::ZERO);
        assert_eq!(unlimited.max_bytes, -1);
    }

    #[test]
    fn shipped_config_has_the_defaults() {
        let c = crate::config::Config::from_toml(include_str!("../../config/narund.toml")).unwrap();
        let d = crate::logs::LogsConfig::default();
        assert!(!d.stream, "log history is opt-in");
        assert_eq!(c.logs.stream, d.stream);
        assert_eq!(Limits::from_config(&c.logs), Limits::from_config(&d));
    }

    #[tokio::test]
    async fn ensure_creates_then_updates_the_limits() {
        let server = narun_test_support::NatsServer::start();
        let js = jetstream::new(server.connect().await);
        let a = Limits {
            max_age_sec: 60,
            max_bytes: 1 << 20,
        };
        ensure(&js, &a).await.unwrap();
        let mut s = js.get_stream(STREAM).await.unwrap();
        assert_eq!(
            s.info().await.unwrap().config.max_age,
            Duration::from_secs(60)
        );
        // Lines published to any app/node land in it (the ack says it is stored).
        js.publish("logs.app.node", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let b = Limits {
            max_age_sec: 0,
            max_bytes: 2 << 20,
        };
        ensure(&js, &b).await.unwrap();
        let info = s.info().await.unwrap().clone();
        assert_eq!(info.config.max_age, Duration::ZERO);
        assert_eq!(info.config.max_bytes, 2 << 20);
        assert_eq!(info.state.messages, 1, "the update keeps the stored lines");
        ensure(&js, &b).await.unwrap();
    }
}
