//! When a new run counts as ready, and how long the apply lock may be held.
//!
//! A rolling replace (and `narunctl apps restart`) stops the old run of an index only
//! once the new one is ready: with `notify = true` once it sent `READY=1`, else once it
//! has been `running` for `settleSec` ([`narun_wire::status::SettleRule`], the rule
//! `narunctl deploy --wait` uses too). `wait_settled` waits for that or says why not.

use crate::instance::{FETCH_TIMEOUT, InstanceHandle, Snapshot};
use narun_spec::AppSpec;
use narun_wire::status::{InstanceStatus, Reason, SettleRule};
use std::time::Duration;

/// Longest time one apply of `spec` may hold the apply lock when it touches `instances`
/// instance slots (scale-down stops and replacements, one at a time): per slot a fetch, the
/// start timeout, the settle time and two stops (new run stopped on failure, or the old
/// one on success), plus a margin. Only a wedge exceeds it ([`crate::liveness`]).
pub(crate) fn apply_budget(spec: &AppSpec, instances: u32) -> Duration {
    let per_slot = FETCH_TIMEOUT
        + Duration::from_secs(spec.start_timeout_sec.saturating_add(spec.settle_sec))
        + 2 * stop_budget(spec.stop_timeout_sec);
    per_slot.saturating_mul(instances.max(1)) + Duration::from_secs(30)
}

/// Longest time a stop may take: the stop timeout, `cgroup.kill` and reaping.
pub(crate) fn stop_budget(stop_timeout_sec: u64) -> Duration {
    Duration::from_secs(stop_timeout_sec.saturating_add(30))
}

/// Why a new run did not become ready.
#[derive(Debug, Clone)]
pub(crate) struct NotReady {
    /// Short reason for `rolled_back`: `start-timeout`, `watchdog`, `crashed`, `oom-kill`,
    /// `verify`, `fetch`, `start-limit`, …
    pub(crate) reason: Reason,
    pub(crate) error: String,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.error)
    }
}

/// The short rollback reason for the state a new run ended up in.
fn not_ready(s: &Snapshot, error: String) -> NotReady {
    let reason = match &s.reason {
        None | Some(Reason::ExitCode | Reason::Signal | Reason::Wait) => Reason::Crashed,
        Some(r) => r.clone(),
    };
    NotReady {
        reason,
        error: if s.error.is_empty() {
            error
        } else {
            format!("{error}: {}", s.error)
        },
    }
}

/// Wait until a new instance is ready: with `notify: true`, until it sent `READY=1`
/// (status `running`; the instance's lifecycle enforces `startTimeoutSec` and its
/// `EXTEND_TIMEOUT_USEC=` extensions); without, until it is `running` and stays so for
/// `settleSec`. Bounded: fetching may take [`FETCH_TIMEOUT`], a
/// notify start its (moving) deadline plus the time to stop it.
///
/// The caller holds the apply lock; each wait's bound is added to its declared budget
/// (`liveness`), so a start the app keeps extending (`EXTEND_TIMEOUT_USEC=`) is progress
/// for narund's own watchdog, not a wedge.
pub(crate) async fn wait_settled(
    h: &InstanceHandle,
    liveness: &crate::liveness::Liveness,
) -> Result<(), NotReady> {
    let failed = |s: &Snapshot| s.ended || s.status.is_down();
    let stop_bound = Duration::from_secs(h.spec.stop_timeout_sec) + Duration::from_secs(15);
    let s = loop {
        let s = h.snapshot();
        if s.status == InstanceStatus::Running || failed(&s) {
            break s;
        }
        let bound = match s.start_deadline {
            Some(d) => d.saturating_duration_since(tokio::time::Instant::now()) + stop_bound,
            None if s.pid.is_some() => stop_bound,
            // Waiting for the spec's `after` services first: their timeout too (0, no
            // end: the usual bound; the replacement is then rolled back, the old run
            // keeps serving).
            None if s.reason == Some(Reason::After) => {
                FETCH_TIMEOUT
                    + Duration::from_secs(
                        h.spec
                            .start_timeout_sec
                            .max(1)
                            .saturating_add(h.spec.after_timeout_sec),
                    )
            }
            None => FETCH_TIMEOUT + Duration::from_secs(h.spec.start_timeout_sec.max(1)),
        };
        liveness.extend_apply(bound + Duration::from_secs(30));
        let deadline = s.start_deadline;
        match h
            .wait_for(bound, |n| {
                n.status == InstanceStatus::Running
                    || failed(n)
                    || n.start_deadline != deadline
                    || n.pid != s.pid
                    || n.reason != s.reason
            })
            .await
        {
            Ok(_) => continue,
            Err(s) => {
                return Err(NotReady {
                    reason: if h.spec.notify {
                        Reason::StartTimeout
                    } else {
                        Reason::NotRunning
                    },
                    error: if s.error.is_empty() {
                        format!("still {} after {bound:?}", s.status)
                    } else {
                        format!("still {} after {bound:?}: {}", s.status, s.error)
                    },
                });
            }
        }
    };
    if s.status != InstanceStatus::Running {
        let error = format!("{} before it was ready", s.status);
        return Err(not_ready(&s, error));
    }
    if h.spec.notify {
        return Ok(());
    }
    let pid = s.pid;
    let settle = SettleRule::new(h.spec.notify, h.spec.settle_sec).settle_time();
    if let Ok(s) = h
        .wait_for(settle, |s| !s.status.is_up() || s.pid != pid)
        .await
    {
        let error = format!("{} within settleSec ({} s)", s.status, settle.as_secs());
        return Err(not_ready(&s, error));
    }
    Ok(())
}
