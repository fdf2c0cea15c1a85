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
//! `stream = false` (the default) leaves an existing stream alone. Creating and keeping
//! it is [`crate::history_stream`]'s job, shared with the status event history.
//!
//! ```no_run
//! # async fn demo(client: async_nats::Client) -> Result<(), narund::history_stream::HistoryStreamError> {
//! let js = async_nats::jetstream::new(client);
//! let limits = narund::logs::stream::Limits { max_age_sec: 86_400, max_bytes: 256 << 20 };
//! narund::logs::stream::HISTORY.ensure(&js, &limits, None).await?;
//! # Ok(()) }
//! ```

use crate::history_stream::HistoryStream;
pub use crate::history_stream::Limits;

/// Name of the stream (`narunctl logs` looks for this name).
pub const STREAM: &str = narun_wire::names::LOG_STREAM;
/// Subjects it captures: every `logs.<app>.<node>`.
pub const SUBJECTS: &str = "logs.>";

/// The log history stream.
pub const HISTORY: HistoryStream = HistoryStream {
    name: STREAM,
    subjects: SUBJECTS,
    description: "narun app log lines (logs.<app>.<node>), for narunctl logs --since",
    what: "log",
    section: "[logs]",
};

impl Limits {
    /// From narund's `[logs]` section.
    pub fn from_config(c: &super::LogsConfig) -> Limits {
        Limits {
            max_age_sec: c.stream_max_age_sec,
            max_bytes: c.stream_max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream;

    #[test]
    fn the_stream_captures_every_log_subject() {
        let c = HISTORY.config(&Limits::from_config(&super::super::LogsConfig::default()));
        assert_eq!(c.name, "narun-logs");
        assert_eq!(c.subjects, ["logs.>"]);
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
    async fn app_lines_land_in_it() {
        let server = narun_test_support::NatsServer::start();
        let js = jetstream::new(server.connect().await);
        let limits = Limits {
            max_age_sec: 60,
            max_bytes: 1 << 20,
        };
        HISTORY.ensure(&js, &limits, None).await.unwrap();
        js.publish("logs.app.node", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let mut s = js.get_stream(STREAM).await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 1);
    }
}
