//! The spec's `after = [...]`: before the first start of an instance, wait until every
//! named service answers a NATS Micro discovery ping (`$SRV.PING.<name>`), at most
//! `afterTimeoutSec` (0: no end), then start (anyway, with a warning on the instance's
//! stderr, when the time ran out: a dependency that is down must not keep a device's
//! apps down; see `narun_spec::deps`).
//!
//! While it waits the instance is `starting` with reason `after` and the message
//! "waiting for db, auth" (the services still missing), which `narunctl apps ls` and
//! `apps status` show. The pings use narund's own NATS client, spaced by
//! [`Backoff::services`] (50 ms doubling up to 2 s, jittered): no busy polling. A stop
//! (scale down, spec change, shutdown) ends the wait at once; nothing was fetched.
//! Restarts of a running instance do not wait again.

use super::lifecycle::Report;
use super::task::{Task, stopped};
use narun_wire::discovery::{Backoff, answers};
use narun_wire::status::{InstanceStatus, Reason};
use std::time::Duration;
use tokio::time::Instant;

/// Bound of one discovery ping (an absent service is answered at once with "no
/// responders"; this only matters when the server does not answer at all).
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What came of the wait.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterOutcome {
    /// Every service answered (or there were none to wait for).
    Ready,
    /// `afterTimeoutSec` passed: these never answered; start anyway.
    TimedOut(Vec<String>),
    /// A stop came first: do not start.
    Stopped,
}

/// The status message while `missing` do not answer.
pub(super) fn waiting_message(missing: &[String]) -> String {
    format!("waiting for {}", missing.join(", "))
}

impl Task {
    /// Wait for the spec's `after` services (see the module docs).
    pub(super) async fn wait_after(&mut self) -> AfterOutcome {
        if self.spec.after.is_empty() {
            return AfterOutcome::Ready;
        }
        let secs = self.spec.after_timeout_sec;
        let until = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
        let client = self.host.client.clone();
        let mut stop = self.stop.clone();
        let mut missing = self.spec.after.clone();
        let mut shown: Option<Vec<String>> = None;
        let mut backoff = Backoff::services();
        loop {
            // One round of pings; a stop ends it at once (NATS may be unreachable and
            // each ping wait its bound).
            let round = async {
                let mut still = Vec::new();
                for s in missing {
                    if !answers(&client, &s, PING_TIMEOUT).await {
                        still.push(s);
                    }
                }
                still
            };
            missing = tokio::select! {
                still = round => still,
                _ = stopped(&mut stop) => return AfterOutcome::Stopped,
            };
            if missing.is_empty() {
                if shown.is_some() {
                    tracing::info!(instance = %self.instance_id, "the services of `after` answer; starting");
                }
                return AfterOutcome::Ready;
            }
            if shown.as_ref() != Some(&missing) {
                self.publish(
                    Report {
                        status: InstanceStatus::Starting,
                        pid: None,
                        reason: Some(Reason::After),
                        exit_code: None,
                        error: waiting_message(&missing),
                        restarts: 0,
                        notify_status: String::new(),
                        start_deadline: None,
                    },
                    None,
                );
                shown = Some(missing.clone());
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return AfterOutcome::TimedOut(missing);
            }
            let next = now + backoff.next().unwrap_or(Duration::from_secs(1));
            let next = until.map_or(next, |u| next.min(u));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stopped(&mut stop) => return AfterOutcome::Stopped,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_missing_services() {
        assert_eq!(
            waiting_message(&["db".into(), "auth".into()]),
            "waiting for db, auth"
        );
    }
}
