//! Is narund making progress? The answer gates narund's own `WATCHDOG=1` to systemd.
//!
//! systemd restarts a `WatchdogSec=` service that stops pinging. Pinging from a timer
//! alone proves only that the timer runs; a reconciler stuck on a lock or a supervisor
//! loop blocked in a system call would keep being "alive". So the loops that matter
//! report here, and the main loop pings only while [`Liveness::check`] says every one of
//! them is fine:
//!
//! * Each loop is a **part** ([`Liveness::register`]). Its idle wait has a branch
//!   [`Beat::asked`] that answers with [`Beat::beat`]: the branch runs only when the loop is
//!   back at its wait. [`Liveness::check`] asks every part (and is called only when
//!   somebody needs the answer: at the watchdog's cadence under systemd, never otherwise),
//!   so an idle narund has no timer of its own for this: no wake-ups. A part that has not
//!   answered an ask within `stall_after` is a wedge.
//! * Work that legitimately takes long is declared with a bound: [`Beat::busy`]
//!   (e.g. a heartbeat put, bounded by its timeout). Overrunning the bound is a wedge.
//! * Spec applies, removals and restarts are serialised by the apply lock, and a rolling
//!   update may hold it for minutes (each replica gets `startTimeoutSec`, `settleSec` and a
//!   stop). The holder declares a budget computed from the spec when it takes the lock
//!   ([`Liveness::hold_apply`]); a part that waits for the lock
//!   ([`Beat::awaiting_apply`]) is fine while the holder is within its budget. So a long
//!   rollout is progress, and a holder that overruns its budget — or a lock held by nobody
//!   who declared one — is a wedge.
//!
//! Not tracked, on purpose: the NATS I/O tasks (log and event publishers). They wait for
//! NATS for as long as it is away, which is normal operation, and they never block an app
//! (the log spool is bounded).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default time after which an idle part that has not answered an ask counts as wedged.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// The progress registry (one per node).
pub struct Liveness {
    stall_after: Mutex<Duration>,
    parts: Mutex<Vec<Arc<Part>>>,
    apply: Mutex<Option<Holder>>,
}

struct Part {
    name: &'static str,
    state: Mutex<PartState>,
    /// Wakes the part's idle wait to beat ([`Beat::asked`]); a permit waits for a part
    /// that is not at its wait.
    ask: tokio::sync::Notify,
}

struct PartState {
    /// Last beat, or last change of activity.
    last: Instant,
    activity: Activity,
    /// When the oldest ask not answered yet was made.
    asked: Option<Instant>,
}

enum Activity {
    Idle,
    Busy { what: String, until: Instant },
    AwaitingApply,
}

struct Holder {
    what: String,
    until: Instant,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new(STALL_AFTER)
    }
}

impl Liveness {
    pub fn new(stall_after: Duration) -> Liveness {
        Liveness {
            stall_after: Mutex::new(stall_after),
            parts: Mutex::new(Vec::new()),
            apply: Mutex::new(None),
        }
    }

    /// Change the allowed extra silence (narund derives it from `WATCHDOG_USEC`).
    pub fn set_stall_after(&self, d: Duration) {
        *self.stall_after.lock().unwrap() = d;
    }

    /// A new part: it answers [`Beat::asked`] with [`Beat::beat`] while idle.
    pub fn register(&self, name: &'static str) -> Beat {
        let part = Arc::new(Part {
            name,
            state: Mutex::new(PartState {
                last: Instant::now(),
                activity: Activity::Idle,
                asked: None,
            }),
            ask: tokio::sync::Notify::new(),
        });
        let mut parts = self.parts.lock().unwrap();
        parts.retain(|p| Arc::strong_count(p) > 1);
        parts.push(part.clone());
        Beat { part }
    }

    /// Declare the holder of the apply lock and its budget, until the guard is dropped.
    pub fn hold_apply(&self, what: impl Into<String>, budget: Duration) -> ApplyHold<'_> {
        *self.apply.lock().unwrap() = Some(Holder {
            what: what.into(),
            until: Instant::now() + budget,
        });
        ApplyHold { liveness: self }
    }

    /// The holder of the apply lock legitimately needs until at least `now + more` (an app
    /// moved its start deadline with `EXTEND_TIMEOUT_USEC=`): its budget grows to cover it.
    /// No effect when nobody holds the lock.
    pub fn extend_apply(&self, more: Duration) {
        if let Some(h) = self.apply.lock().unwrap().as_mut() {
            h.until = h.until.max(Instant::now() + more);
        }
    }

    /// `Ok` while every part makes progress; otherwise what is stuck, in one line. Then
    /// asks every idle part that has no ask pending to beat: the next check sees whether
    /// it answered. (Call it at a cadence of at least `stall_after`: an idle part that
    /// has not answered within `stall_after` of being asked is stuck.)
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        let result = self.verdict_at(now);
        for part in self.parts.lock().unwrap().iter() {
            let mut st = part.state.lock().unwrap();
            if st.asked.is_none() {
                st.asked = Some(now);
                part.ask.notify_one();
            }
        }
        result
    }

    fn verdict_at(&self, now: Instant) -> Result<(), String> {
        let stall_after = *self.stall_after.lock().unwrap();
        let holder = self
            .apply
            .lock()
            .unwrap()
            .as_ref()
            .map(|h| (h.what.clone(), h.until));
        let mut stuck = Vec::new();
        for part in self.parts.lock().unwrap().iter() {
            // Registered parts that are gone (their Beat dropped) are not checked.
            if Arc::strong_count(part) == 1 {
                continue;
            }
            let st = part.state.lock().unwrap();
            let silent = now.saturating_duration_since(st.last);
            match &st.activity {
                Activity::Busy { what, until } if now > *until => stuck.push(format!(
                    "{}: {what} overran its bound by {} s",
                    part.name,
                    now.duration_since(*until).as_secs()
                )),
                Activity::Busy { .. } => {}
                Activity::AwaitingApply => match &holder {
                    Some((what, until)) if now > *until => stuck.push(format!(
                        "{}: waiting for the apply lock, held by {what} {} s past its budget",
                        part.name,
                        now.duration_since(*until).as_secs()
                    )),
                    Some(_) => {}
                    None if silent > stall_after => stuck.push(format!(
                        "{}: waiting {} s for the apply lock, which no declared holder has",
                        part.name,
                        silent.as_secs()
                    )),
                    None => {}
                },
                Activity::Idle => match st.asked {
                    Some(at) if now.saturating_duration_since(at) > stall_after => stuck.push(
                        format!("{}: no progress for {} s", part.name, silent.as_secs()),
                    ),
                    _ => {}
                },
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(stuck.join("; "))
        }
    }
}

/// A part's handle: beat while idle, declare bounded work.
pub struct Beat {
    part: Arc<Part>,
}

impl Beat {
    /// The part is at its idle wait and fine.
    pub fn beat(&self) {
        let mut st = self.part.state.lock().unwrap();
        st.last = Instant::now();
        st.asked = None;
    }

    /// Resolves when [`Liveness::check`] asks this part to [`beat`](Self::beat): a branch of
    /// the part's idle wait. Never resolves while nobody checks.
    pub async fn asked(&self) {
        self.part.ask.notified().await
    }

    /// The part does work that may take up to `bound`, until the guard is dropped.
    pub fn busy(&self, what: impl Into<String>, bound: Duration) -> Busy<'_> {
        self.set(Activity::Busy {
            what: what.into(),
            until: Instant::now() + bound,
        });
        Busy { beat: self }
    }

    /// The part waits for (or runs under) the apply lock, until the guard is dropped: it
    /// is as healthy as the lock's holder.
    pub fn awaiting_apply(&self) -> Busy<'_> {
        self.set(Activity::AwaitingApply);
        Busy { beat: self }
    }

    fn set(&self, activity: Activity) {
        let mut st = self.part.state.lock().unwrap();
        st.activity = activity;
        st.last = Instant::now();
        st.asked = None;
    }
}

/// Guard of [`Beat::busy`] and [`Beat::awaiting_apply`]; dropping it is a beat.
pub struct Busy<'a> {
    beat: &'a Beat,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.beat.set(Activity::Idle);
    }
}

/// Guard of [`Liveness::hold_apply`].
pub struct ApplyHold<'a> {
    liveness: &'a Liveness,
}

impl Drop for ApplyHold<'_> {
    fn drop(&mut self) {
        *self.liveness.apply.lock().unwrap() = None;
        // Waiters were blocked by the holder, not silent: restart their silence clock.
        for part in self.liveness.parts.lock().unwrap().iter() {
            let mut st = part.state.lock().unwrap();
            if matches!(st.activity, Activity::AwaitingApply) {
                st.last = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_part_is_fine_until_it_leaves_an_ask_unanswered_too_long() {
        let l = Liveness::new(2 * S);
        let b = l.register("reconciler");
        let t0 = Instant::now();
        // Nobody asked: a part that never beat is fine (no beats without checks).
        assert!(l.check_at(t0 + 100 * S).is_ok());
        // That check asked; within stall_after of the ask, unanswered is fine.
        assert!(l.check_at(t0 + 102 * S).is_ok());
        let e = l.check_at(t0 + 103 * S).unwrap_err();
        assert!(e.contains("reconciler: no progress"), "{e}");
        b.beat();
        assert!(l.check_at(Instant::now() + S).is_ok());
    }

    #[tokio::test]
    async fn a_check_wakes_the_idle_wait_of_every_part() {
        let l = Liveness::new(S);
        let (a, b) = (l.register("heartbeat"), l.register("reconciler"));
        let nobody = tokio::time::timeout(Duration::from_millis(20), a.asked()).await;
        assert!(nobody.is_err(), "no ask without a check");
        assert!(l.check().is_ok());
        for p in [&a, &b] {
            tokio::time::timeout(S, p.asked())
                .await
                .expect("asked by the check");
            p.beat();
        }
        let t = Instant::now() + 5 * S;
        assert!(l.check_at(t).is_ok(), "both answered");
        assert!(
            l.check_at(t + 2 * S).is_err(),
            "the next ask went unanswered"
        );
    }

    #[test]
    fn busy_within_bound_is_progress_and_overrun_is_not() {
        let l = Liveness::new(S);
        let b = l.register("heartbeat");
        let t0 = Instant::now();
        let g = b.busy("publishing the node state", 60 * S);
        assert!(l.check_at(t0 + 30 * S).is_ok(), "long but within its bound");
        let e = l.check_at(t0 + 62 * S).unwrap_err();
        assert!(e.contains("publishing the node state overran"), "{e}");
        drop(g);
        assert!(l.check().is_ok(), "done: a beat");
    }

    #[test]
    fn waiting_for_the_apply_lock_follows_the_holder() {
        let l = Liveness::new(S);
        let b = l.register("reconciler");
        let t0 = Instant::now();
        let hold = l.hold_apply("rollout of app", 100 * S);
        let w = b.awaiting_apply();
        assert!(
            l.check_at(t0 + 90 * S).is_ok(),
            "a long rollout is progress"
        );
        let e = l.check_at(t0 + 102 * S).unwrap_err();
        assert!(e.contains("held by rollout of app"), "{e}");
        l.extend_apply(200 * S);
        assert!(
            l.check_at(t0 + 150 * S).is_ok(),
            "an extended start moves the holder's budget"
        );
        drop(hold);
        assert!(l.check().is_ok(), "the waiter gets the lock now");
        let e = l.check_at(Instant::now() + 3 * S).unwrap_err();
        assert!(e.contains("no declared holder"), "{e}");
        drop(w);
        assert!(l.check().is_ok());
    }

    #[test]
    fn dropped_parts_are_not_checked() {
        let l = Liveness::new(S);
        let b = l.register("gone");
        drop(b);
        assert!(l.check_at(Instant::now() + 100 * S).is_ok());
    }
}
