//! Every transition of the lifecycle, without processes or a runtime.

use super::*;
use InstanceStatus as S;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

const SEC: Duration = Duration::from_secs(1);

fn policy() -> Policy {
    Policy {
        restart: RestartPolicy::OnFailure,
        start_limit_burst: 5,
        start_limit_interval: Duration::from_secs(10),
        notify: false,
        start_timeout: None,
        watchdog: None,
        stop_timeout: Duration::from_secs(5),
        stop_signal: libc::SIGTERM,
        backoff_max: Duration::from_secs(30),
    }
}

fn notify_policy() -> Policy {
    Policy {
        notify: true,
        start_timeout: Some(Duration::from_secs(3)),
        ..policy()
    }
}

/// A lifecycle and a clock.
struct M {
    lc: Lifecycle,
    now: Instant,
}

impl M {
    fn new(policy: Policy) -> M {
        M {
            lc: Lifecycle::new(policy, 42),
            now: Instant::now(),
        }
    }

    fn on(&mut self, e: Event) -> Vec<Action> {
        self.lc.handle(self.now, e)
    }

    fn after(&mut self, d: Duration, e: Event) -> Vec<Action> {
        self.now += d;
        self.on(e)
    }

    /// Advance to the next deadline and fire it.
    fn timer(&mut self) -> Vec<Action> {
        let at = self.lc.next_deadline().expect("a deadline");
        self.now = self.now.max(at);
        self.on(Event::Timer)
    }

    /// Idle → Started (running, or starting with notify).
    fn running(&mut self, pid: i32) -> Vec<Action> {
        let mut a = self.on(Event::Start);
        a.extend(self.on(Event::Started { pid }));
        a
    }

    fn phase(&self) -> &'static str {
        match self.lc.state() {
            State::Idle => "idle",
            State::Starting => "starting",
            State::Running(_) => "running",
            State::Stopping { .. } => "stopping",
            State::Backoff { .. } => "backoff",
            State::Ended => "ended",
        }
    }
}

fn exit_code(code: i32) -> Event {
    Event::Exited {
        exit: Exit::Status(ExitStatus::from_raw(code << 8)),
        oom: false,
    }
}

fn killed(sig: i32) -> Event {
    Event::Exited {
        exit: Exit::Status(ExitStatus::from_raw(sig)),
        oom: false,
    }
}

fn statuses(actions: &[Action]) -> Vec<S> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(r) => Some(r.status.clone()),
            _ => None,
        })
        .collect()
}

fn reports(actions: &[Action]) -> Vec<&Report> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn last_report(actions: &[Action]) -> &Report {
    reports(actions).last().copied().expect("a report")
}

fn notify(f: impl FnOnce(&mut Message)) -> Event {
    let mut m = Message::default();
    f(&mut m);
    Event::Notify(m)
}

#[test]
fn start_publishes_starting_then_spawns_then_runs() {
    let mut m = M::new(policy());
    let a = m.on(Event::Start);
    assert_eq!(
        a,
        [
            Action::NewRun,
            Action::Publish(Report {
                status: S::Starting,
                pid: None,
                reason: None,
                exit_code: None,
                error: String::new(),
                restarts: 0,
                notify_status: String::new(),
                start_deadline: None,
            }),
            Action::Spawn
        ]
    );
    assert_eq!(m.phase(), "starting");
    let a = m.on(Event::Started { pid: 10 });
    assert_eq!(statuses(&a), [S::Running]);
    assert_eq!(last_report(&a).pid, Some(10));
    assert_eq!(m.phase(), "running");
    assert_eq!(m.lc.main_pid(), Some(10));
    assert_eq!(
        m.lc.next_deadline(),
        None,
        "no notify, no watchdog: no timer"
    );
}

#[test]
fn a_failed_start_ends_the_instance_with_its_reason() {
    let mut m = M::new(policy());
    m.on(Event::Start);
    let a = m.on(Event::StartFailed {
        reason: Reason::Fetch,
        error: "binary x not found".into(),
    });
    assert_eq!(a[0], Action::Log("start failed: binary x not found".into()));
    let r = last_report(&a);
    assert_eq!(
        (r.status.clone(), r.reason.clone()),
        (S::Failed, Some(Reason::Fetch))
    );
    assert_eq!(r.error, "binary x not found");
    assert_eq!(a.last(), Some(&Action::End));
    assert_eq!(m.phase(), "ended");
    // Over is over.
    assert!(m.on(Event::Start).is_empty());
    assert!(m.on(Event::Stop).is_empty());
}

#[test]
fn a_crash_is_reported_then_restarted_after_the_backoff() {
    let mut m = M::new(policy());
    m.running(10);
    let a = m.after(SEC, exit_code(3));
    assert_eq!(a[0], Action::Log("process ended: exit status 3".into()));
    let crashed = reports(&a)[0];
    assert_eq!(crashed.status, S::Crashed);
    assert_eq!(crashed.exit_code, Some(3));
    assert_eq!(crashed.reason, Some(Reason::ExitCode));
    let backoff = reports(&a)[1];
    assert_eq!(backoff.status, S::Backoff);
    assert_eq!(backoff.restarts, 1);
    assert!(
        backoff.error.starts_with("restart 1 in "),
        "{}",
        backoff.error
    );
    assert_eq!(m.phase(), "backoff");
    let until = m.lc.next_deadline().unwrap();
    let delay = until - m.now;
    assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(100));
    // A timer that is not due yet changes nothing.
    assert!(m.on(Event::Timer).is_empty());
    let a = m.timer();
    assert_eq!(statuses(&a), [S::Starting]);
    assert!(a.contains(&Action::Spawn));
    let a = m.on(Event::Started { pid: 11 });
    assert_eq!(
        last_report(&a).restarts,
        1,
        "the restart count is carried on"
    );
}

#[test]
fn the_backoff_doubles_and_resets_after_a_stable_run() {
    let mut m = M::new(Policy {
        start_limit_interval: Duration::ZERO,
        ..policy()
    });
    m.running(10);
    let mut delays = Vec::new();
    for pid in 11..16 {
        m.after(Duration::from_millis(10), exit_code(1));
        delays.push(m.lc.next_deadline().unwrap() - m.now);
        m.timer();
        m.on(Event::Started { pid });
    }
    for (i, d) in delays.iter().enumerate() {
        let base = BACKOFF_START * 2u32.pow(i as u32);
        assert!(*d >= base / 2 && *d <= base, "restart {i}: {d:?}");
    }
    // A run of STABLE_RUN resets the step.
    m.after(STABLE_RUN, exit_code(1));
    assert!(m.lc.next_deadline().unwrap() - m.now <= BACKOFF_START);
}

#[test]
fn backoff_is_capped_and_jittered() {
    let max = Duration::from_secs(2);
    for attempt in 0..40 {
        for jitter in [0.0, 0.5, 0.999] {
            let d = backoff(attempt, max, jitter);
            let base = (BACKOFF_START * 2u32.pow(attempt.min(20))).min(max);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
            assert_eq!(
                d.subsec_nanos() % 1_000_000,
                0,
                "whole ms, as announced: {d:?}"
            );
        }
    }
    let mut lc = Lifecycle::new(policy(), 7);
    for _ in 0..1000 {
        let j = lc.jitter();
        assert!((0.0..1.0).contains(&j), "{j}");
    }
}

#[test]
fn the_start_limit_fails_the_instance() {
    let mut m = M::new(Policy {
        start_limit_burst: 3,
        start_limit_interval: Duration::from_secs(60),
        ..policy()
    });
    m.running(10);
    for pid in 11..13 {
        m.after(Duration::from_millis(10), exit_code(3));
        m.timer();
        m.on(Event::Started { pid });
    }
    // The third crash decides it: the restart after the backoff would be the fourth
    // start within 60 s, so `failed` is published with the crash, not a backoff later.
    let a = m.after(Duration::from_millis(10), exit_code(3));
    let statuses: Vec<S> = a
        .iter()
        .filter_map(|a| match a {
            Action::Publish(r) => Some(r.status.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [S::Crashed, S::Failed], "{a:?}");
    let r = last_report(&a);
    assert_eq!(
        (r.status.clone(), r.reason.clone()),
        (S::Failed, Some(Reason::StartLimit))
    );
    assert!(
        r.error.starts_with("started 3 times within 60s"),
        "{}",
        r.error
    );
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Log(l) if l.starts_with("started 3 times")))
    );
    assert_eq!(a.last(), Some(&Action::End));
    assert_eq!(m.phase(), "ended");
    assert_eq!(m.lc.next_deadline(), None, "no timer left behind");
}

#[test]
fn the_start_limit_counts_the_window_at_the_restart_not_at_the_crash() {
    // One start per second: a crash 960 ms after the start restarts after a backoff of at
    // least 50 ms, when the first start has left the window.
    let mut m = M::new(Policy {
        start_limit_burst: 1,
        start_limit_interval: SEC,
        ..policy()
    });
    m.running(10);
    m.after(Duration::from_millis(960), exit_code(3));
    assert_eq!(m.phase(), "backoff");
    m.timer();
    assert_eq!(m.phase(), "starting");
    // The second run crashes at once: the restart would be the second start within 1 s.
    m.on(Event::Started { pid: 11 });
    let a = m.after(Duration::from_millis(10), exit_code(3));
    assert_eq!(last_report(&a).reason, Some(Reason::StartLimit));
    assert_eq!(m.phase(), "ended");
}

#[test]
fn a_stop_during_the_backoff_still_wins_over_the_start_limit() {
    let mut m = M::new(Policy {
        start_limit_burst: 2,
        start_limit_interval: Duration::from_secs(60),
        ..policy()
    });
    m.running(10);
    m.after(Duration::from_millis(10), exit_code(3));
    assert_eq!(m.phase(), "backoff");
    let a = m.on(Event::Stop);
    assert_eq!(last_report(&a).status, S::Stopped);
}

#[test]
fn starts_outside_the_interval_do_not_count() {
    let mut m = M::new(Policy {
        start_limit_burst: 2,
        start_limit_interval: Duration::from_secs(5),
        ..policy()
    });
    m.running(10);
    for pid in 11..20 {
        // Each run lasts longer than the interval: the window never fills.
        m.after(Duration::from_secs(6), exit_code(1));
        m.timer();
        assert_eq!(m.phase(), "starting", "start {pid}");
        m.on(Event::Started { pid });
    }
}

#[test]
fn the_restart_policy_decides() {
    // (policy, how it ended, restarted?)
    let cases: &[(RestartPolicy, Event, bool)] = &[
        (RestartPolicy::OnFailure, exit_code(0), false),
        (RestartPolicy::OnFailure, exit_code(2), true),
        (RestartPolicy::OnFailure, killed(libc::SIGSEGV), true),
        (RestartPolicy::OnFailure, killed(libc::SIGTERM), false),
        (RestartPolicy::No, exit_code(2), false),
        (RestartPolicy::Always, exit_code(0), true),
        (RestartPolicy::OnSuccess, exit_code(0), true),
        (RestartPolicy::OnSuccess, exit_code(1), false),
        (RestartPolicy::OnAbnormal, exit_code(1), false),
        (RestartPolicy::OnAbnormal, killed(libc::SIGKILL), true),
        (RestartPolicy::OnAbort, killed(libc::SIGSEGV), true),
        (
            RestartPolicy::OnAbnormal,
            Event::Exited {
                exit: Exit::Status(ExitStatus::from_raw(libc::SIGKILL)),
                oom: true,
            },
            true,
        ),
    ];
    for (restart, exit, restarted) in cases {
        let mut m = M::new(Policy {
            restart: restart.clone(),
            ..policy()
        });
        m.running(10);
        let a = m.after(SEC, exit.clone());
        assert_eq!(
            m.phase() == "backoff",
            *restarted,
            "{restart:?} after {exit:?}: {a:?}"
        );
        if !restarted {
            assert_eq!(a.last(), Some(&Action::End));
        }
    }
}

#[test]
fn clean_exit_is_stopped_and_oom_is_named() {
    let mut m = M::new(policy());
    m.running(10);
    let a = m.after(SEC, exit_code(0));
    assert_eq!(statuses(&a), [S::Stopped]);
    assert_eq!(a.last(), Some(&Action::End));

    let mut m = M::new(policy());
    m.running(10);
    let a = m.after(
        SEC,
        Event::Exited {
            exit: Exit::Status(ExitStatus::from_raw(libc::SIGKILL)),
            oom: true,
        },
    );
    assert_eq!(reports(&a)[0].reason, Some(Reason::OomKill));
}

#[test]
fn a_stop_signals_then_reports_stopped_and_ends() {
    let mut m = M::new(policy());
    m.running(10);
    let a = m.after(SEC, Event::Stop);
    assert_eq!(statuses(&a), [S::Stopping]);
    assert_eq!(
        a.last(),
        Some(&Action::Signal {
            pid: 10,
            signal: libc::SIGTERM
        })
    );
    assert_eq!(m.phase(), "stopping");
    assert_eq!(m.lc.next_deadline(), Some(m.now + Duration::from_secs(5)));
    // A second stop while stopping changes nothing.
    assert!(m.on(Event::Stop).is_empty());
    let a = m.after(SEC, killed(libc::SIGTERM));
    assert_eq!(statuses(&a), [S::Stopped]);
    assert_eq!(reports(&a)[0].reason, None);
    assert_eq!(a.last(), Some(&Action::End));
    assert!(!a.iter().any(|x| matches!(x, Action::Log(_))), "{a:?}");
}

#[test]
fn a_process_that_ignores_the_stop_signal_is_killed_after_the_stop_timeout() {
    let mut m = M::new(Policy {
        stop_signal: libc::SIGINT,
        ..policy()
    });
    m.running(10);
    let a = m.on(Event::Stop);
    assert!(a.contains(&Action::Signal {
        pid: 10,
        signal: libc::SIGINT
    }));
    let a = m.timer();
    assert_eq!(a, [Action::KillAll]);
    assert_eq!(m.lc.next_deadline(), None, "killed once");
    let a = m.on(killed(libc::SIGKILL));
    assert_eq!(
        statuses(&a),
        [S::Stopped],
        "asked for: stopped, not crashed"
    );
}

#[test]
fn a_stop_during_the_start_is_done_once_the_process_runs() {
    let mut m = M::new(policy());
    m.on(Event::Start);
    assert!(m.on(Event::Stop).is_empty());
    let a = m.on(Event::Started { pid: 10 });
    assert_eq!(statuses(&a), [S::Running, S::Stopping]);
    assert!(a.contains(&Action::Signal {
        pid: 10,
        signal: libc::SIGTERM
    }));
    let a = m.on(killed(libc::SIGTERM));
    assert_eq!(statuses(&a), [S::Stopped]);

    // … and a start that fails anyway reports the failure.
    let mut m = M::new(policy());
    m.on(Event::Start);
    m.on(Event::Stop);
    let a = m.on(Event::StartFailed {
        reason: Reason::Spawn,
        error: "ENOEXEC".into(),
    });
    assert_eq!(statuses(&a), [S::Failed]);
}

#[test]
fn a_stop_during_the_backoff_ends_at_once() {
    let mut m = M::new(policy());
    m.running(10);
    m.after(SEC, exit_code(1));
    assert_eq!(m.phase(), "backoff");
    let a = m.on(Event::Stop);
    assert_eq!(statuses(&a), [S::Stopped]);
    assert_eq!(a.last(), Some(&Action::End));
}

#[test]
fn a_stop_before_the_first_start_reports_stopped() {
    let mut m = M::new(policy());
    let a = m.on(Event::Stop);
    assert_eq!(statuses(&a), [S::Stopped]);
    assert_eq!(a.last(), Some(&Action::End));
}

#[test]
fn notify_waits_for_ready_then_arms_the_watchdog() {
    let mut m = M::new(Policy {
        watchdog: Some(Duration::from_secs(2)),
        ..notify_policy()
    });
    let a = m.running(10);
    let starting = last_report(&a);
    assert_eq!(starting.status, S::Starting);
    assert_eq!(starting.pid, Some(10));
    assert_eq!(
        starting.start_deadline,
        Some(m.now + Duration::from_secs(3))
    );
    assert_eq!(m.lc.next_deadline(), Some(m.now + Duration::from_secs(3)));
    let a = m.after(SEC, notify(|n| n.ready = true));
    let r = last_report(&a);
    assert_eq!((r.status.clone(), r.start_deadline), (S::Running, None));
    assert_eq!(m.lc.next_deadline(), Some(m.now + Duration::from_secs(2)));
    // A second READY=1 is not news.
    assert!(m.on(notify(|n| n.ready = true)).is_empty());
}

#[test]
fn no_ready_within_the_start_timeout_stops_and_fails_the_start() {
    let mut m = M::new(Policy {
        restart: RestartPolicy::No,
        ..notify_policy()
    });
    m.running(10);
    let a = m.timer();
    assert!(matches!(&a[0], Action::Log(l) if l.contains("no READY=1 within 3 s")));
    let r = last_report(&a);
    assert_eq!(
        (r.status.clone(), r.reason.clone()),
        (S::Stopping, Some(Reason::StartTimeout))
    );
    assert!(a.contains(&Action::Signal {
        pid: 10,
        signal: libc::SIGTERM
    }));
    let a = m.after(SEC, killed(libc::SIGTERM));
    let r = reports(&a)[0];
    assert_eq!(
        (r.status.clone(), r.reason.clone()),
        (S::Failed, Some(Reason::StartTimeout))
    );
    assert!(
        r.error.starts_with("did not send READY=1 within 4 s"),
        "{}",
        r.error
    );
    assert_eq!(a.last(), Some(&Action::End));
}

#[test]
fn a_start_timeout_restarts_under_on_failure() {
    let mut m = M::new(notify_policy());
    m.running(10);
    m.timer();
    m.on(killed(libc::SIGTERM));
    assert_eq!(m.phase(), "backoff", "Timeout is a failure");
}

#[test]
fn extend_timeout_moves_the_start_deadline_forward_only() {
    let mut m = M::new(notify_policy());
    m.running(10);
    let deadline = m.now + Duration::from_secs(3);
    let a = m.after(SEC, notify(|n| n.extend_timeout_usec = Some(10_000_000)));
    let extended = m.now + Duration::from_secs(10);
    assert_eq!(a, [Action::StartDeadline(Some(extended))]);
    assert_eq!(m.lc.next_deadline(), Some(extended));
    // A shorter extension does not pull it back.
    assert!(m.on(notify(|n| n.extend_timeout_usec = Some(1))).is_empty());
    assert!(m.lc.next_deadline().unwrap() > deadline);
}

#[test]
fn a_missed_watchdog_aborts_the_process_and_restarts_it() {
    let mut m = M::new(Policy {
        watchdog: Some(Duration::from_secs(2)),
        ..policy()
    });
    m.running(10);
    assert_eq!(m.lc.next_deadline(), Some(m.now + Duration::from_secs(2)));
    // Pings move the deadline.
    m.after(SEC, notify(|n| n.watchdog_ping = true));
    assert_eq!(m.lc.next_deadline(), Some(m.now + Duration::from_secs(2)));
    let a = m.timer();
    assert!(
        matches!(&a[0], Action::Log(l) if l == "watchdog timeout: no WATCHDOG=1 within 2000 ms; sending SIGABRT")
    );
    assert!(a.contains(&Action::Signal {
        pid: 10,
        signal: libc::SIGABRT
    }));
    let a = m.on(killed(libc::SIGABRT));
    let r = reports(&a)[0];
    assert_eq!(
        (r.status.clone(), r.reason.clone()),
        (S::Crashed, Some(Reason::Watchdog))
    );
    assert!(
        r.error.ends_with("sent SIGABRT: killed by signal SIGABRT"),
        "{}",
        r.error
    );
    assert_eq!(m.phase(), "backoff");
}

#[test]
fn watchdog_trigger_and_a_new_watchdog_period() {
    let mut m = M::new(Policy {
        watchdog: Some(Duration::from_secs(2)),
        ..policy()
    });
    m.running(10);
    m.on(notify(|n| n.watchdog_usec = Some(500_000)));
    assert_eq!(
        m.lc.next_deadline(),
        Some(m.now + Duration::from_millis(500))
    );
    let a = m.on(notify(|n| n.watchdog_trigger = true));
    assert!(matches!(&a[0], Action::Log(l) if l.contains("WATCHDOG=trigger")));
    assert_eq!(last_report(&a).reason, Some(Reason::Watchdog));
    assert_eq!(m.phase(), "stopping");
}

#[test]
fn stopping_on_its_own_disarms_the_timers() {
    let mut m = M::new(Policy {
        watchdog: Some(Duration::from_secs(2)),
        ..notify_policy()
    });
    m.running(10);
    let a = m.on(notify(|n| n.stopping = true));
    assert_eq!(statuses(&a), [S::Stopping]);
    assert_eq!(m.lc.next_deadline(), None);
    assert_eq!(m.phase(), "running", "narund did not stop it");
    let a = m.after(SEC, exit_code(0));
    assert_eq!(statuses(&a), [S::Stopped]);
}

#[test]
fn reloading_then_ready_and_status_text() {
    let mut m = M::new(policy());
    m.running(10);
    let a = m.on(notify(|n| n.reloading = true));
    assert_eq!(statuses(&a), [S::Reloading]);
    let a = m.on(notify(|n| n.ready = true));
    assert_eq!(statuses(&a), [S::Running]);
    // STATUS= republishes the current status with the text; the same text again does not.
    let a = m.on(notify(|n| n.status = Some("serving 3 clients".into())));
    let r = last_report(&a);
    assert_eq!(
        (r.status.clone(), r.notify_status.as_str()),
        (S::Running, "serving 3 clients")
    );
    assert!(
        m.on(notify(|n| n.status = Some("serving 3 clients".into())))
            .is_empty()
    );
    // The text belongs to the run: a new run starts without it.
    m.after(SEC, exit_code(1));
    let a = m.timer();
    assert_eq!(last_report(&a).notify_status, "");
}

#[test]
fn mainpid_moves_signals_and_following_it_keeps_the_status() {
    let mut m = M::new(policy());
    m.running(10);
    let a = m.on(notify(|n| n.main_pid = Some(20)));
    assert_eq!(last_report(&a).pid, Some(20));
    assert_eq!(m.lc.main_pid(), Some(20));
    let a = m.on(Event::FollowMainPid {
        pid: 21,
        message: "the started process exited; following MAINPID 21".into(),
    });
    let r = last_report(&a);
    assert_eq!(
        (r.status.clone(), r.reason.clone(), r.pid),
        (S::Running, Some(Reason::MainPid), Some(21))
    );
    let a = m.on(Event::Stop);
    assert!(a.contains(&Action::Signal {
        pid: 21,
        signal: libc::SIGTERM
    }));
}

#[test]
fn an_adopted_run_is_running_at_once_and_its_unknown_exit_is_a_crash() {
    let mut m = M::new(Policy {
        watchdog: Some(Duration::from_secs(2)),
        ..notify_policy()
    });
    let a = m.on(Event::Adopt {
        pid: 77,
        message: "re-adopted pid 77".into(),
    });
    assert_eq!(a[0], Action::Log("re-adopted pid 77".into()));
    let r = last_report(&a);
    assert_eq!(
        (r.status.clone(), r.reason.clone(), r.pid),
        (S::Running, Some(Reason::Adopted), Some(77))
    );
    assert!(!a.contains(&Action::Spawn) && !a.contains(&Action::NewRun));
    assert_eq!(
        m.lc.next_deadline(),
        Some(m.now + Duration::from_secs(2)),
        "the watchdog runs from the adoption"
    );
    let a = m.after(
        SEC,
        Event::Exited {
            exit: Exit::Unknown,
            oom: false,
        },
    );
    let r = reports(&a)[0];
    assert_eq!(
        (r.status.clone(), r.reason.clone()),
        (S::Crashed, Some(Reason::ExitedAfterAdoption))
    );
    assert_eq!(m.phase(), "backoff", "restarted like a failure");
    let a = m.timer();
    assert!(a.contains(&Action::Spawn), "the next run is a fresh start");
}

#[test]
fn an_unknown_exit_of_a_followed_mainpid_counts_as_clean() {
    let mut m = M::new(policy());
    m.running(10);
    m.on(Event::FollowMainPid {
        pid: 21,
        message: "following".into(),
    });
    let a = m.on(Event::Exited {
        exit: Exit::Unknown,
        oom: false,
    });
    assert_eq!(statuses(&a), [S::Stopped]);
}

#[test]
fn a_stop_while_stopping_for_a_failure_is_honoured_after_the_report() {
    let mut m = M::new(notify_policy());
    m.running(10);
    m.timer(); // start timeout: stopping
    assert!(m.on(Event::Stop).is_empty());
    let a = m.on(killed(libc::SIGTERM));
    assert_eq!(statuses(&a), [S::Failed, S::Backoff, S::Stopped]);
    assert_eq!(a.last(), Some(&Action::End));
}

#[test]
fn datagrams_while_stopping_and_events_out_of_place_are_ignored() {
    let mut m = M::new(policy());
    m.running(10);
    m.on(Event::Stop);
    assert!(m.on(notify(|n| n.ready = true)).is_empty());
    assert!(m.on(Event::Started { pid: 3 }).is_empty());
    assert_eq!(m.phase(), "stopping");
    let mut m = M::new(policy());
    assert!(m.on(Event::Started { pid: 3 }).is_empty());
    assert!(m.on(exit_code(1)).is_empty());
    assert_eq!(m.phase(), "idle");
}

#[test]
fn the_backoff_cap_applies_to_the_next_restart() {
    let mut m = M::new(Policy {
        start_limit_interval: Duration::ZERO,
        ..policy()
    });
    m.lc.set_backoff_max(BACKOFF_START);
    m.running(10);
    for pid in 11..20 {
        m.after(Duration::from_millis(1), exit_code(1));
        assert!(m.lc.next_deadline().unwrap() - m.now <= BACKOFF_START);
        m.timer();
        m.on(Event::Started { pid });
    }
}

#[test]
fn policy_of_a_spec() {
    let spec: AppSpec = serde_json::from_value(serde_json::json!({
        "name": "a", "tag": "v1", "notify": true, "startTimeoutSec": 7, "watchdogSec": 3,
        "stopSignal": "SIGINT", "stopTimeoutSec": 4, "restart": "always",
        "startLimitBurst": 2, "startLimitIntervalSec": 9,
        "nodes": [{"name": "n", "replicas": 1}]
    }))
    .unwrap();
    let p = Policy::of(&spec, SEC);
    assert_eq!(p.start_timeout, Some(Duration::from_secs(7)));
    assert_eq!(p.watchdog, Some(Duration::from_secs(3)));
    assert_eq!(p.stop_signal, libc::SIGINT);
    assert_eq!(p.stop_timeout, Duration::from_secs(4));
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(
        (p.start_limit_burst, p.start_limit_interval),
        (2, Duration::from_secs(9))
    );
    let mut plain = spec;
    plain.notify = false;
    plain.watchdog_sec = Some(0);
    let p = Policy::of(&plain, SEC);
    assert_eq!((p.start_timeout, p.watchdog), (None, None));
}
