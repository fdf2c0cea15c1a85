//! NATS requests across a lost connection and a moving service: what the gateway retries.
//!
//! async-nats keeps a request pending across a reconnect until its timeout, though the
//! request or its reply died with the old connection: without help, a request in flight
//! when the gateway's NATS server is killed waits the route's whole `timeout` (15 s by
//! default) and ends in a 504. With the client's
//! [`ConnectionEvents`](narun_wire::connect::ConnectionEvents) (narund gives them,
//! [`crate::Gateway::set_connection_events`]) [`request`] notices the loss at once:
//!
//! | what happened | idempotent request (`GET`, `HEAD`) | any other method |
//! |---|---|---|
//! | the connection was lost before the reply | sent again as soon as the client is connected to the next server | 503 at once (`Retry-After: 1`): it may have run, the client decides |
//! | no responders (the service's instances are moving to another server) | sent again after 25 ms, 50 ms, … (≤ 200 ms apart) for up to [`NO_RESPONDERS_RETRY`] | 503 at once |
//!
//! A gRPC call (`crate::grpc`) is one published request whatever its method: when NATS
//! answers it with no responders, nobody received it, so it is sent again by the same
//! pauses and window ([`resend_undelivered`]); anything else (a lost connection, a reply
//! of any kind, the window passed) ends the resending: a request that may have been
//! delivered is never sent twice.
//!
//! Every retry stays within the route's `timeout`, counted from the first attempt, and
//! carries the time left in `Narun-Timeout-Ms`. An idempotent request that arrives while
//! the client is reconnecting waits up to [`RECONNECT_WAIT`] for the connection
//! ([`reconnected_in_time`]) before it is refused with a 503. Without connection events (a
//! gateway embedded with a bare client) only the no-responders rule applies.

use async_nats::{HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;
use narun_wire::connect::ConnectionEvents;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long an idempotent request that found no responders is retried (a service whose
/// instances reconnect to another server is back within this).
pub const NO_RESPONDERS_RETRY: Duration = Duration::from_millis(500);
/// First pause after no responders; doubles up to [`NO_RESPONDERS_PAUSE_MAX`].
pub const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(25);
/// Longest pause between two attempts after no responders.
pub const NO_RESPONDERS_PAUSE_MAX: Duration = Duration::from_millis(200);

/// How long an idempotent request that arrives while the client is disconnected waits for
/// the connection before its 503 (a failover to the next server takes milliseconds).
pub const RECONNECT_WAIT: Duration = Duration::from_millis(500);

/// Whether the client is connected within [`RECONNECT_WAIT`], for an idempotent
/// `method` and when the connection events are known; false at once otherwise.
pub(crate) async fn reconnected_in_time(failover: &Failover, method: &http::Method) -> bool {
    match failover.events.get() {
        Some(ev) if idempotent(method) => tokio::time::timeout(RECONNECT_WAIT, ev.connected())
            .await
            .is_ok(),
        _ => false,
    }
}

/// The gateway's view of its client's connection (set once, by the embedder).
#[derive(Default)]
pub(crate) struct Failover {
    events: OnceLock<ConnectionEvents>,
}

impl Failover {
    /// Use `events` from now on (later calls are ignored).
    pub(crate) fn set(&self, events: ConnectionEvents) {
        let _ = self.events.set(events);
    }
}

/// Whether a request with `method` may be sent twice.
pub(crate) fn idempotent(method: &http::Method) -> bool {
    *method == http::Method::GET || *method == http::Method::HEAD
}

/// Why [`request`] gave up.
#[derive(Debug)]
pub(crate) enum Failure {
    /// What async-nats said about the last attempt.
    Nats(async_nats::RequestError),
    /// The connection was lost before the reply of a request that is not retried.
    ConnectionLost,
}

/// What the next step is after one attempt's failure (pure: the retry rules above).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send again after this pause.
    Retry(Duration),
    /// Send again once connected.
    RetryWhenConnected,
    GiveUp,
}

/// The rules of the table in the module docs. `attempt` counts from 1 (the attempt that
/// just failed), `elapsed` since the first one, `left` the route's time left.
pub(crate) fn next(
    idempotent: bool,
    lost: bool,
    no_responders: bool,
    attempt: u32,
    elapsed: Duration,
    left: Duration,
) -> Next {
    if !idempotent || left.is_zero() {
        return Next::GiveUp;
    }
    if lost {
        return Next::RetryWhenConnected;
    }
    if no_responders && elapsed < NO_RESPONDERS_RETRY {
        let pause = NO_RESPONDERS_PAUSE
            .saturating_mul(1 << attempt.saturating_sub(1).min(8))
            .min(NO_RESPONDERS_PAUSE_MAX)
            .min(left);
        return Next::Retry(pause);
    }
    Next::GiveUp
}

/// A request that no responder received (NATS "no responders": it was never delivered,
/// so sending it again cannot run it twice) may be sent again whatever its method: the
/// gRPC gateway's rule for every call. The pause before the next attempt, or `None` once
/// [`NO_RESPONDERS_RETRY`] has passed since the first attempt or no time is `left`.
/// `attempt` counts from 1 (the attempt that just found no responders).
pub(crate) fn resend_undelivered(
    attempt: u32,
    elapsed: Duration,
    left: Duration,
) -> Option<Duration> {
    match next(true, false, true, attempt, elapsed, left) {
        Next::Retry(pause) => Some(pause),
        Next::RetryWhenConnected | Next::GiveUp => None,
    }
}

/// Send `payload` with the headers `headers` builds to `subject` and wait for the reply,
/// for at most `timeout` in all, retrying by the rules above. The headers carry the
/// deadline of the first attempt (`Narun-Timeout-Ms` = `timeout`); each retry's is set to
/// the time left. They are built per attempt, not copied: a request that is sent once
/// (most) builds them once and moves them into the message.
/// `retry_no_responders = false` leaves "no responders" to the caller (the gateway then
/// waits for the service to appear, [`crate::responders`], instead of resending blindly).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn request(
    client: &async_nats::Client,
    failover: &Failover,
    subject: &async_nats::Subject,
    payload: Bytes,
    headers: &(dyn Fn() -> HeaderMap + Sync),
    timeout: Duration,
    idempotent: bool,
    retry_no_responders: bool,
) -> Result<Message, Failure> {
    use narun_wire::names::{TIMEOUT_MS, timeout_ms_value};
    let events = failover.events.get();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = if attempt == 1 {
            timeout
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        // The first attempt carries the caller's deadline header (pre-built per route);
        // a retry the time left.
        let mut sent_headers = headers();
        if attempt > 1 {
            sent_headers.insert(TIMEOUT_MS, timeout_ms_value(left));
        }
        let req = async_nats::Request::new()
            .payload(payload.clone())
            .headers(sent_headers)
            .timeout(Some(left));
        let sent = client.send_request(subject.clone(), req);
        let losses = events.map(|e| e.link().losses);
        let (result, lost) = match events {
            Some(ev) => match ev.unless_lost(sent).await {
                Ok(r) => (r, false),
                Err(_) => (
                    Err(async_nats::RequestError::new(RequestErrorKind::Other)),
                    true,
                ),
            },
            None => (sent.await, false),
        };
        let err = match result {
            Ok(msg) => return Ok(msg),
            Err(e) => e,
        };
        let no_responders =
            retry_no_responders && matches!(err.kind(), RequestErrorKind::NoResponders);
        let left = deadline.saturating_duration_since(Instant::now());
        match next(
            idempotent,
            lost,
            no_responders,
            attempt,
            start.elapsed(),
            left,
        ) {
            Next::Retry(pause) => tokio::time::sleep(pause).await,
            Next::RetryWhenConnected => {
                if let (Some(ev), Some(before)) = (events, losses) {
                    let wait = ev.reconnected_after(before);
                    if tokio::time::timeout(left, wait).await.is_err() {
                        return Err(Failure::Nats(async_nats::RequestError::new(
                            RequestErrorKind::TimedOut,
                        )));
                    }
                }
                tracing::debug!(%subject, attempt, "NATS connection lost mid-request: sending again");
            }
            Next::GiveUp if lost => return Err(Failure::ConnectionLost),
            Next::GiveUp => return Err(Failure::Nats(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn only_idempotent_requests_are_sent_again() {
        let ms = Duration::from_millis;
        // Not idempotent: never again, whatever happened.
        for (lost, nr) in [(true, false), (false, true), (false, false)] {
            assert_eq!(next(false, lost, nr, 1, ms(0), S), Next::GiveUp);
        }
        // Lost connection: again once connected.
        assert_eq!(
            next(true, true, false, 3, ms(900), S),
            Next::RetryWhenConnected
        );
        // No responders: growing pauses, within the retry window and the time left.
        assert_eq!(next(true, false, true, 1, ms(0), S), Next::Retry(ms(25)));
        assert_eq!(next(true, false, true, 2, ms(30), S), Next::Retry(ms(50)));
        assert_eq!(next(true, false, true, 9, ms(400), S), Next::Retry(ms(200)));
        assert_eq!(
            next(true, false, true, 30, ms(400), ms(10)),
            Next::Retry(ms(10))
        );
        assert_eq!(
            next(true, false, true, 5, NO_RESPONDERS_RETRY, S),
            Next::GiveUp
        );
        // Out of time, or another error (a timeout, a bad payload): give up.
        assert_eq!(
            next(true, true, false, 1, ms(0), Duration::ZERO),
            Next::GiveUp
        );
        assert_eq!(next(true, false, false, 1, ms(0), S), Next::GiveUp);
        assert!(idempotent(&http::Method::GET) && idempotent(&http::Method::HEAD));
    }

    #[test]
    fn an_undelivered_request_is_sent_again_within_the_window_only() {
        let ms = Duration::from_millis;
        assert_eq!(resend_undelivered(1, ms(0), S), Some(ms(25)));
        assert_eq!(resend_undelivered(2, ms(30), S), Some(ms(50)));
        assert_eq!(resend_undelivered(9, ms(499), S), Some(ms(200)));
        assert_eq!(resend_undelivered(3, ms(100), ms(7)), Some(ms(7)));
        assert_eq!(resend_undelivered(5, NO_RESPONDERS_RETRY, S), None);
        assert_eq!(resend_undelivered(1, ms(0), Duration::ZERO), None);
        assert!(!idempotent(&http::Method::POST) && !idempotent(&http::Method::PUT));
    }
}
