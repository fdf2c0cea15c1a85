//! The lifecycle of one instance as a pure state machine: events in, actions out, no I/O.
//!
//! ```text
//!                 ┌────────────── Stop ─────────────────────────────────────────┐
//!                 │                                                             ▼
//!  Idle ──Start──► Starting ──Started──► Running ──Exited──► (policy?) ──yes──► Backoff
//!                    │                    │  ▲  │                │ no            │ elapsed
//!                    │ StartFailed        │  │  │ notify: READY  ▼               ▼
//!                    ▼                    │  └──┘             Ended ◄── start limit ── (start)
//!                  Ended (failed)         │ Stop, start timeout, watchdog
//!                                         ▼
//!                                      Stopping ──(stop timeout: KillAll)──Exited──► Ended / policy
//!  Idle ──Adopt──► Running (a run of a previous narund, ready at once)
//! ```
//!
//! The driver (`instance/task.rs`) owns the process, the cgroup, the notify socket and the
//! clock; it feeds what happens as [`Event`]s (with the time) and carries out the
//! [`Action`]s that come back, in order. Everything that decides — the restart policy
//! (systemd's matrix), backoff with jitter, the start limit, the start timeout and its
//! extensions, the watchdog, what a stop means, how an exit is reported — lives here and is
//! unit-tested without processes, NATS or a runtime.
//!
//! Timers are state: [`Lifecycle::next_deadline`] says when the driver must come back with
//! [`Event::Timer`].

use super::exit::{Exit, Outcome, outcome};
use super::notify::Message;
use narun_spec::{AppSpec, ExitKind, RestartPolicy};
use narun_wire::status::{InstanceStatus, Reason};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// A run at least this long resets the restart backoff to its first step.
pub const STABLE_RUN: Duration = Duration::from_secs(10);
/// First restart delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);

/// What the lifecycle needs from the spec (and the node's backoff cap).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    /// `startLimitBurst` starts per `startLimitIntervalSec` (an interval of zero: no limit).
    pub start_limit_burst: u32,
    pub start_limit_interval: Duration,
    /// `notify = true`: ready only after `READY=1`.
    pub notify: bool,
    /// With `notify`: `READY=1` must arrive within this (`startTimeoutSec`; `None` = 0 = never).
    pub start_timeout: Option<Duration>,
    /// `watchdogSec`.
    pub watchdog: Option<Duration>,
    /// `stopTimeoutSec`: after the stop signal, how long until everything is killed.
    pub stop_timeout: Duration,
    /// `stopSignal`.
    pub stop_signal: i32,
    /// `apps.restart_backoff_max_sec` of the node (reloadable).
    pub backoff_max: Duration,
}

impl Policy {
    /// The policy of `spec` on a node whose restart backoff is capped at `backoff_max`.
    pub fn of(spec: &AppSpec, backoff_max: Duration) -> Policy {
        Policy {
            restart: spec.restart.clone(),
            start_limit_burst: spec.start_limit_burst,
            start_limit_interval: Duration::from_secs(spec.start_limit_interval_sec),
            notify: spec.notify,
            start_timeout: (spec.notify && spec.start_timeout_sec > 0)
                .then(|| Duration::from_secs(spec.start_timeout_sec)),
            watchdog: spec
                .watchdog_sec
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            stop_timeout: Duration::from_secs(spec.stop_timeout_sec),
            stop_signal: spec.stop_signal.number().unwrap_or(libc::SIGTERM),
            backoff_max,
        }
    }
}

/// Something that happened to the instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Begin: the first start.
    Start,
    /// Continue a verified run of a previous narund instead of starting one (`pid` is its
    /// main process); it was `running` (ready) when it was recorded.
    Adopt { pid: i32, message: String },
    /// The process was spawned (after [`Action::Spawn`]).
    Started { pid: i32 },
    /// The start did not get to a process (fetch, verify, user, spawn, cgroup, …).
    StartFailed { reason: Reason, error: String },
    /// The started process exited and narund follows the app's `MAINPID=` process now.
    FollowMainPid { pid: i32, message: String },
    /// The main process ended (the driver has cleaned up the run: nothing of it is left).
    /// `oom`: the cgroup saw an OOM kill during the run.
    Exited { exit: Exit, oom: bool },
    /// An sd_notify datagram from a process of the instance. A `MAINPID=` outside the
    /// instance must have been removed by the driver.
    Notify(Message),
    /// Stop for good (scale down, spec change, delete, shutdown).
    Stop,
    /// [`Lifecycle::next_deadline`] has passed.
    Timer,
}

/// A status event to publish, and the instance's snapshot as of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: InstanceStatus,
    pub pid: Option<i32>,
    pub reason: Option<Reason>,
    pub exit_code: Option<i32>,
    pub error: String,
    pub restarts: u32,
    /// The app's last `STATUS=` text in this run.
    pub notify_status: String,
    /// While `starting` with `notify = true`: when the start times out.
    pub start_deadline: Option<Instant>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A new run begins: a fresh run id, no `STATUS=` text.
    NewRun,
    /// Publish a status event (and update the snapshot).
    Publish(Report),
    /// A line of narund's own on the instance's stderr log (without the `narund: ` prefix).
    Log(String),
    /// Fetch, prepare and spawn; answer with [`Event::Started`] or [`Event::StartFailed`].
    Spawn,
    /// Send `signal` to `pid`.
    Signal { pid: i32, signal: i32 },
    /// SIGKILL everything of the run (`cgroup.kill`, or the process group).
    KillAll,
    /// The start deadline moved (`EXTEND_TIMEOUT_USEC=`); nothing is published.
    StartDeadline(Option<Instant>),
    /// Nothing runs and nothing will be restarted: the instance is over.
    End,
}

/// Why narund is stopping a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopWhy {
    /// It was asked to ([`Event::Stop`]): an intentional stop, reported `stopped`.
    Asked,
    /// No `READY=1` within `startTimeoutSec`.
    StartTimeout,
    /// The watchdog expired, or the app sent `WATCHDOG=trigger`: what happened.
    Watchdog(String),
}

/// One run of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The pid that receives signals: the started process, or the app's `MAINPID=`.
    pub pid: i32,
    pub started: Instant,
    /// A run of a previous narund (its exit status is unknown).
    pub adopted: bool,
    /// `READY=1` received (always true without `notify`).
    pub ready: bool,
    pub reloading: bool,
    pub start_deadline: Option<Instant>,
    pub watchdog_period: Option<Duration>,
    /// Armed once the run is ready; each `WATCHDOG=1` moves it.
    pub watchdog_deadline: Option<Instant>,
}

/// Where the instance is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Nothing started yet.
    Idle,
    /// Fetching, preparing or spawning.
    Starting,
    /// The process runs.
    Running(Run),
    /// narund is ending the run and waits for the exit; `kill_at` is when everything is
    /// killed (`None` once it was).
    Stopping {
        run: Run,
        why: StopWhy,
        kill_at: Option<Instant>,
    },
    /// Waiting before the next start.
    Backoff { until: Instant },
    /// Over.
    Ended,
}

/// The lifecycle of one instance (see the module docs).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    policy: Policy,
    state: State,
    /// Start times inside the start-limit window.
    starts: VecDeque<Instant>,
    /// Restarts since the last stable run (the backoff step).
    attempt: u32,
    /// Restarts of this instance.
    restarts: u32,
    /// A stop was asked for while starting or stopping for another reason.
    stop_asked: bool,
    /// The last published status.
    status: InstanceStatus,
    notify_status: String,
    /// xorshift state for the backoff jitter.
    rng: u64,
}

impl Lifecycle {
    /// A lifecycle in [`State::Idle`]; `seed` drives the backoff jitter.
    pub fn new(policy: Policy, seed: u64) -> Lifecycle {
        Lifecycle {
            policy,
            state: State::Idle,
            starts: VecDeque::new(),
            attempt: 0,
            restarts: 0,
            stop_asked: false,
            status: InstanceStatus::Starting,
            notify_status: String::new(),
            rng: seed | 1,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The pid signals go to, while a run exists.
    pub fn main_pid(&self) -> Option<i32> {
        match &self.state {
            State::Running(r) | State::Stopping { run: r, .. } => Some(r.pid),
            _ => None,
        }
    }

    /// The node's backoff cap changed (SIGHUP); it applies to the next restart.
    pub fn set_backoff_max(&mut self, max: Duration) {
        self.policy.backoff_max = max;
    }

    /// When the driver must come back with [`Event::Timer`].
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Running(r) => earliest(r.start_deadline, r.watchdog_deadline),
            State::Stopping { kill_at, .. } => *kill_at,
            State::Backoff { until } => Some(*until),
            _ => None,
        }
    }

    /// Handle `event` that happened at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let state = std::mem::replace(&mut self.state, State::Ended);
        self.state = match (state, event) {
            (State::Ended, _) => State::Ended,

            (State::Idle, Event::Start) => self.start(now, &mut out),
            (State::Idle, Event::Adopt { pid, message }) => {
                let run = Run {
                    pid,
                    started: now,
                    adopted: true,
                    ready: true,
                    reloading: false,
                    start_deadline: None,
                    watchdog_period: self.policy.watchdog,
                    watchdog_deadline: self.policy.watchdog.map(|p| now + p),
                };
                out.push(Action::Log(message.clone()));
                self.publish(
                    &mut out,
                    InstanceStatus::Running,
                    Some(pid),
                    Some(Reason::Adopted),
                    None,
                    message,
                    None,
                );
                State::Running(run)
            }
            (State::Idle, Event::Stop) => {
                self.stop_asked = true;
                self.start(now, &mut out)
            }

            (State::Starting, Event::Started { pid }) => {
                let mut run = Run {
                    pid,
                    started: now,
                    adopted: false,
                    ready: !self.policy.notify,
                    reloading: false,
                    start_deadline: self.policy.start_timeout.map(|t| now + t),
                    watchdog_period: self.policy.watchdog,
                    watchdog_deadline: None,
                };
                if run.ready {
                    run.watchdog_deadline = run.watchdog_period.map(|p| now + p);
                }
                let status = if run.ready {
                    InstanceStatus::Running
                } else {
                    InstanceStatus::Starting
                };
                let deadline = run.start_deadline;
                self.publish(&mut out, status, Some(pid), None, None, "", deadline);
                if self.stop_asked {
                    self.begin_stop(now, run, StopWhy::Asked, &mut out)
                } else {
                    State::Running(run)
                }
            }
            (State::Starting, Event::StartFailed { reason, error }) => {
                out.push(Action::Log(format!("start failed: {error}")));
                self.publish(
                    &mut out,
                    InstanceStatus::Failed,
                    None,
                    Some(reason),
                    None,
                    error,
                    None,
                );
                self.end(&mut out)
            }
            (State::Starting, Event::Stop) => {
                // Seen once the start is over (a fetch is not interrupted).
                self.stop_asked = true;
                State::Starting
            }

            (State::Running(run), Event::Stop) => {
                self.begin_stop(now, run, StopWhy::Asked, &mut out)
            }
            (State::Running(mut run), Event::FollowMainPid { pid, message }) => {
                run.pid = pid;
                out.push(Action::Log(message.clone()));
                let status = self.status.clone();
                self.publish(
                    &mut out,
                    status,
                    Some(pid),
                    Some(Reason::MainPid),
                    None,
                    message,
                    run.start_deadline,
                );
                State::Running(run)
            }
            (State::Running(run), Event::Exited { exit, oom }) => {
                let o = outcome(&exit, oom);
                let o = if run.adopted && exit == Exit::Unknown {
                    // Not narund's child: nothing tells whether it exited 0 or crashed.
                    Outcome {
                        kind: ExitKind::ExitCode,
                        status: InstanceStatus::Crashed,
                        exit_code: -1,
                        reason: Reason::ExitedAfterAdoption,
                        error: "the re-adopted process exited; its exit status is unknown (it is not narund's child since narund restarted)".into(),
                    }
                } else {
                    o
                };
                self.after_run(now, run.started, o, &mut out)
            }
            (State::Running(run), Event::Timer) => {
                if run.start_deadline.is_some_and(|d| d <= now) {
                    let msg = format!(
                        "no READY=1 within {} s (startTimeoutSec); stopping it",
                        now.saturating_duration_since(run.started).as_secs()
                    );
                    out.push(Action::Log(msg.clone()));
                    self.publish(
                        &mut out,
                        InstanceStatus::Stopping,
                        Some(run.pid),
                        Some(Reason::StartTimeout),
                        None,
                        msg,
                        None,
                    );
                    self.signal_stop(
                        now,
                        run,
                        StopWhy::StartTimeout,
                        self.policy.stop_signal,
                        &mut out,
                    )
                } else if run.watchdog_deadline.is_some_and(|d| d <= now) {
                    let period = run.watchdog_period.unwrap_or_default();
                    let why = format!(
                        "watchdog timeout: no WATCHDOG=1 within {} ms",
                        period.as_millis()
                    );
                    self.watchdog_stop(now, run, why, &mut out)
                } else {
                    State::Running(run)
                }
            }
            (State::Running(run), Event::Notify(m)) => self.on_notify(now, run, m, &mut out),

            (State::Stopping { run, why, .. }, Event::Timer) => {
                out.push(Action::KillAll);
                State::Stopping {
                    run,
                    why,
                    kill_at: None,
                }
            }
            (state @ State::Stopping { .. }, Event::Stop) => {
                self.stop_asked = true;
                state
            }
            (State::Stopping { run, why, .. }, Event::Exited { exit, oom }) => {
                let o = outcome(&exit, oom);
                match why {
                    StopWhy::Asked => {
                        self.publish(
                            &mut out,
                            InstanceStatus::Stopped,
                            None,
                            None,
                            None,
                            "",
                            None,
                        );
                        self.end(&mut out)
                    }
                    StopWhy::StartTimeout => {
                        let o = Outcome {
                            kind: ExitKind::Timeout,
                            status: InstanceStatus::Failed,
                            exit_code: o.exit_code,
                            reason: Reason::StartTimeout,
                            error: format!(
                                "did not send READY=1 within {} s (startTimeoutSec), stopped: {}",
                                now.saturating_duration_since(run.started).as_secs(),
                                o.error
                            ),
                        };
                        self.after_run(now, run.started, o, &mut out)
                    }
                    StopWhy::Watchdog(why) => {
                        let o = Outcome {
                            kind: ExitKind::Watchdog,
                            status: InstanceStatus::Crashed,
                            exit_code: o.exit_code,
                            reason: Reason::Watchdog,
                            error: format!("{why}, sent SIGABRT: {}", o.error),
                        };
                        self.after_run(now, run.started, o, &mut out)
                    }
                }
            }

            (State::Backoff { until }, Event::Timer) if until <= now => self.start(now, &mut out),
            (State::Backoff { .. }, Event::Stop) => {
                self.stop_asked = true;
                self.start(now, &mut out)
            }

            // Everything else changes nothing: a timer that is not due, a datagram while
            // stopping, a second start, …
            (state, _) => state,
        };
        out
    }

    /// A start (first, after the backoff, or to report a stop asked for meanwhile).
    fn start(&mut self, now: Instant, out: &mut Vec<Action>) -> State {
        if self.stop_asked {
            self.publish(out, InstanceStatus::Stopped, None, None, None, "", None);
            return self.end(out);
        }
        // Start limit (systemd StartLimitBurst/StartLimitIntervalSec).
        if self.start_limit_hit(now, out) {
            return self.end(out);
        }
        if !self.policy.start_limit_interval.is_zero() {
            self.starts.push_back(now);
        }
        out.push(Action::NewRun);
        self.notify_status.clear();
        self.publish(out, InstanceStatus::Starting, None, None, None, "", None);
        out.push(Action::Spawn);
        State::Starting
    }

    /// Would a start at `at` exceed the start limit (systemd's StartLimitBurst within
    /// StartLimitIntervalSec)? Then log it and publish `failed` with reason `start-limit`.
    /// Starts that have left the window at `at` are forgotten (they would be by then).
    fn start_limit_hit(&mut self, at: Instant, out: &mut Vec<Action>) -> bool {
        let interval = self.policy.start_limit_interval;
        if interval.is_zero() {
            return false;
        }
        while self
            .starts
            .front()
            .is_some_and(|t| at.saturating_duration_since(*t) > interval)
        {
            self.starts.pop_front();
        }
        if self.starts.len() < self.policy.start_limit_burst as usize {
            return false;
        }
        let msg = format!(
            "started {} times within {}s (startLimitBurst/startLimitIntervalSec); not restarting until the spec is applied again",
            self.starts.len(),
            interval.as_secs()
        );
        out.push(Action::Log(msg.clone()));
        self.publish(
            out,
            InstanceStatus::Failed,
            None,
            Some(Reason::StartLimit),
            None,
            msg,
            None,
        );
        true
    }

    /// A run ended on its own or after narund stopped it for a failure: report it, then
    /// restart after the backoff when the policy says so.
    fn after_run(
        &mut self,
        now: Instant,
        started: Instant,
        o: Outcome,
        out: &mut Vec<Action>,
    ) -> State {
        out.push(Action::Log(format!("process ended: {}", o.error)));
        self.publish(
            out,
            o.status,
            None,
            Some(o.reason.clone()),
            Some(o.exit_code),
            o.error,
            None,
        );
        if !self.policy.restart.restarts_after(o.kind) {
            return self.end(out);
        }
        if now.saturating_duration_since(started) >= STABLE_RUN {
            self.attempt = 0;
        }
        let delay = backoff(self.attempt, self.policy.backoff_max, self.jitter());
        // The restart after the backoff would hit the start limit: say so now, at the
        // transition, not when the backoff has passed (nothing can change the outcome in
        // between but a stop, which ends the instance as well).
        if !self.stop_asked && self.start_limit_hit(now + delay, out) {
            return self.end(out);
        }
        self.attempt = self.attempt.saturating_add(1);
        self.restarts += 1;
        let msg = format!("restart {} in {} ms", self.restarts, delay.as_millis());
        self.publish(
            out,
            InstanceStatus::Backoff,
            None,
            Some(o.reason),
            None,
            msg,
            None,
        );
        if self.stop_asked {
            return self.start(now, out);
        }
        State::Backoff { until: now + delay }
    }

    /// An intentional stop: `stopping`, then the stop signal.
    fn begin_stop(&mut self, now: Instant, run: Run, why: StopWhy, out: &mut Vec<Action>) -> State {
        self.publish(
            out,
            InstanceStatus::Stopping,
            Some(run.pid),
            None,
            None,
            "",
            None,
        );
        self.signal_stop(now, run, why, self.policy.stop_signal, out)
    }

    fn signal_stop(
        &mut self,
        now: Instant,
        run: Run,
        why: StopWhy,
        signal: i32,
        out: &mut Vec<Action>,
    ) -> State {
        out.push(Action::Signal {
            pid: run.pid,
            signal,
        });
        State::Stopping {
            run,
            why,
            kill_at: Some(now + self.policy.stop_timeout),
        }
    }

    fn watchdog_stop(
        &mut self,
        now: Instant,
        run: Run,
        why: String,
        out: &mut Vec<Action>,
    ) -> State {
        let msg = format!("{why}; sending SIGABRT");
        out.push(Action::Log(msg.clone()));
        self.publish(
            out,
            InstanceStatus::Stopping,
            Some(run.pid),
            Some(Reason::Watchdog),
            None,
            msg,
            None,
        );
        self.signal_stop(now, run, StopWhy::Watchdog(why), libc::SIGABRT, out)
    }

    /// One sd_notify datagram (systemd's semantics, see [`super::notify`]).
    fn on_notify(
        &mut self,
        now: Instant,
        mut run: Run,
        m: Message,
        out: &mut Vec<Action>,
    ) -> State {
        let mut republish = false;
        if let Some(text) = m.status
            && self.notify_status != text
        {
            self.notify_status = text;
            republish = true;
        }
        if let Some(pid) = m.main_pid
            && pid != run.pid
        {
            run.pid = pid;
            republish = true;
        }
        if let Some(usec) = m.watchdog_usec {
            run.watchdog_period = Some(Duration::from_micros(usec));
            if run.watchdog_deadline.is_some() {
                run.watchdog_deadline = Some(now + Duration::from_micros(usec));
            }
        }
        if let (Some(usec), Some(deadline)) = (m.extend_timeout_usec, run.start_deadline) {
            let extended = now + Duration::from_micros(usec);
            if extended > deadline {
                run.start_deadline = Some(extended);
                out.push(Action::StartDeadline(Some(extended)));
            }
        }
        if m.watchdog_ping
            && let (Some(_), Some(period)) = (run.watchdog_deadline, run.watchdog_period)
        {
            run.watchdog_deadline = Some(now + period);
        }
        if m.watchdog_trigger {
            return self.watchdog_stop(
                now,
                run,
                "the app asked for it (WATCHDOG=trigger)".into(),
                out,
            );
        }
        if m.stopping {
            // Shutting down on its own: no watchdog, no start timeout (systemd does the same).
            run.watchdog_deadline = None;
            run.start_deadline = None;
            self.publish(
                out,
                InstanceStatus::Stopping,
                Some(run.pid),
                None,
                None,
                "",
                None,
            );
            return State::Running(run);
        }
        if m.reloading {
            run.reloading = true;
            self.publish(
                out,
                InstanceStatus::Reloading,
                Some(run.pid),
                None,
                None,
                "",
                None,
            );
            republish = false;
        }
        if m.ready && (!run.ready || run.reloading) {
            if !run.ready {
                run.ready = true;
                run.start_deadline = None;
                run.watchdog_deadline = run.watchdog_period.map(|p| now + p);
            }
            run.reloading = false;
            self.publish(
                out,
                InstanceStatus::Running,
                Some(run.pid),
                None,
                None,
                "",
                None,
            );
            republish = false;
        }
        if republish {
            let status = self.status.clone();
            self.publish(
                out,
                status,
                Some(run.pid),
                None,
                None,
                "",
                run.start_deadline,
            );
        }
        State::Running(run)
    }

    fn end(&mut self, out: &mut Vec<Action>) -> State {
        out.push(Action::End);
        State::Ended
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        out: &mut Vec<Action>,
        status: InstanceStatus,
        pid: Option<i32>,
        reason: Option<Reason>,
        exit_code: Option<i32>,
        error: impl Into<String>,
        start_deadline: Option<Instant>,
    ) {
        self.status = status.clone();
        // The snapshot keeps a start deadline only while `starting`.
        let start_deadline = start_deadline.filter(|_| status == InstanceStatus::Starting);
        out.push(Action::Publish(Report {
            status,
            pid,
            reason,
            exit_code,
            error: error.into(),
            restarts: self.restarts,
            notify_status: self.notify_status.clone(),
            start_deadline,
        }));
    }

    /// Uniform in [0, 1) (xorshift64*: jitter only, not for anything secret).
    fn jitter(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Delay before restart number `attempt` (0-based): 100 ms · 2^attempt capped at `max`,
/// with "equal jitter" (half fixed, half `jitter` ∈ [0, 1)) so instances that crashed
/// together do not restart in lock-step. In whole milliseconds: the `backoff` event says
/// "restart N in X ms", and that is then exactly the delay (tokio's timer works in
/// milliseconds anyway).
pub fn backoff(attempt: u32, max: Duration, jitter: f64) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << attempt.min(20))
        .min(max.max(BACKOFF_START));
    let half = base / 2;
    let d = half + half.mul_f64(jitter.clamp(0.0, 1.0));
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
