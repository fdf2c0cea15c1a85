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
//! `stream = false` (the default) leaves an existing stream alone. Creating and keeping
//! it is [`crate::history_stream`]'s job.

use crate::history_stream::{HistoryStream, Limits};

/// Name of the stream (`narunctl events` looks for this name).
pub const STREAM: &str = narun_wire::names::STATUS_STREAM;
/// Subjects it captures: every `status.<app>.<node>`.
pub const SUBJECTS: &str = "status.>";

/// The status event history stream.
pub const HISTORY: HistoryStream = HistoryStream {
    name: STREAM,
    subjects: SUBJECTS,
    description: "narun status events (status.<app>.<node>), for narunctl events",
    what: "status",
    section: "[events]",
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream;
    use std::time::Duration;

    #[test]
    fn the_default_limits_map_to_the_stream_config() {
        let c = HISTORY.config(&EventsConfig::default().limits());
        assert_eq!(c.name, "narun-status");
        assert_eq!(c.subjects, ["status.>"]);
        assert_eq!(c.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.max_bytes, 64 << 20);
    }

    #[test]
    fn shipped_config_has_the_defaults() {
        let c = crate::config::Config::from_toml(include_str!("../../config/narund.toml")).unwrap();
        let d = EventsConfig::default();
        assert!(!d.stream, "event history is opt-in");
        assert_eq!(c.events, d);
    }

    #[tokio::test]
    async fn status_events_land_in_it() {
        let server = narun_test_support::NatsServer::start();
        let js = jetstream::new(server.connect().await);
        HISTORY
            .ensure(&js, &EventsConfig::default().limits(), None)
            .await
            .unwrap();
        js.publish("status.app.node", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let mut s = js.get_stream(STREAM).await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 1);
    }
}
