//! sd_notify towards the supervisor (narund or systemd): readiness, watchdog, stopping.
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is not set, so apps behave the
//! same when started by hand.

use sd_notify::NotifyState;

/// Tell the supervisor the service is serving, and start the watchdog pinger
/// when `WATCHDOG_USEC` is set (and `WATCHDOG_PID`, if set, is this process;
/// narund leaves it unset). The pinger sends `WATCHDOG=1` at half the interval,
/// as systemd recommends, and stops when the returned guard is dropped.
pub(crate) fn ready(status: &str) -> Option<WatchdogGuard> {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
    let period = sd_notify::watchdog_enabled()?;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "sd_notify WATCHDOG=1 failed");
            }
        }
    });
    Some(WatchdogGuard(task))
}

/// Tell the supervisor we are shutting down.
pub(crate) fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Stops the watchdog pinger on drop.
pub(crate) struct WatchdogGuard(tokio::task::JoinHandle<()>);

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
