//! narund's sd_notify server for apps, app watchdogs and readiness-gated updates, against
//! a real nats-server, real processes (small python3 apps that speak sd_notify over
//! `socket.AF_UNIX, SOCK_DGRAM`, uploaded as the binary) and real cgroups.
//!
//! Each test deploys the way narunctl does (object in `app-binaries`, JSON spec in
//! `app-configs`) and observes what an operator sees: `status.<app>.<node>` events, the
//! node state's instance list, `/proc`.

mod common;

use common::Harness;
use narun_test_support::apps::{SILENT_SLEEPER, py_notify};
use narun_test_support::{T, alive, wait_for, wait_gone};
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// Apps are deployed with one replica, `restart: no`.
async fn harness() -> Harness {
    Harness::builder("app-notify")
        .config(|c| c.apps.restart_backoff_max_sec = 1)
        .spec_fields(json!({"settleSec": 1, "stopTimeoutSec": 2, "restart": "no"}))
        .start()
        .await
}

fn env_var(pid: i32, key: &str) -> Option<String> {
    narun_test_support::environ(pid).get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_app_stays_starting_until_ready_and_status_text_is_published() {
    let h = harness().await;
    let app = py_notify(
        r#"
notify("STATUS=warming up")
time.sleep(1.5)
notify("READY=1\nSTATUS=serving")
time.sleep(1000)
"#,
    );
    h.deploy(
        "late",
        "v1",
        &app,
        json!({"notify": true, "startTimeoutSec": 20}),
    )
    .await;
    let (warm_at, warm) = h
        .wait_event_at("STATUS=warming up", |e| e.notify_status == "warming up")
        .await;
    assert_eq!(
        warm.status,
        InstanceStatus::Starting,
        "not ready before READY=1: {warm:?}"
    );
    let pid = warm.pid.expect("a starting notify app has its pid");
    let snap = h.sup.snapshot("late", 0).unwrap();
    assert_eq!(snap.status, InstanceStatus::Starting, "{snap:?}");
    assert_eq!(snap.pid, Some(pid));
    assert!(snap.start_deadline.is_some());
    assert!(env_var(pid, "NOTIFY_SOCKET").is_some_and(|p| p.contains("/instances/late-0/notify-")));
    assert_eq!(env_var(pid, "WATCHDOG_USEC"), None, "no watchdogSec");

    let (run_at, running) = h
        .wait_event_at("running", |e| {
            e.app_name == "late" && e.status == InstanceStatus::Running
        })
        .await;
    assert!(run_at > warm_at);
    assert_eq!(running.pid, Some(pid), "the same process became ready");
    assert_eq!(running.notify_status, "serving");
    let inst = h.sup.instances();
    assert_eq!(inst[0].status, InstanceStatus::Running);
    assert_eq!(inst[0].notify_status, "serving");
    h.finish().await;
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_within_the_start_timeout_fails_the_start() {
    let h = harness().await;
    let app = py_notify("notify(\"STATUS=never ready\")\ntime.sleep(1000)\n");
    h.deploy(
        "never",
        "v1",
        &app,
        json!({"notify": true, "startTimeoutSec": 1}),
    )
    .await;
    let (_, starting) = h
        .wait_event_at("never-0 starting with pid", |e| {
            e.app_name == "never" && e.status == InstanceStatus::Starting && e.pid.is_some()
        })
        .await;
    let pid = starting.pid.unwrap();
    let (_, failed) = h
        .wait_event_at("start-timeout", |e| {
            e.app_name == "never" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(failed.reason, Some(Reason::StartTimeout), "{failed:?}");
    assert!(failed.error.contains("READY=1"), "{}", failed.error);
    wait_gone(pid).await;
    assert!(
        !h.events("never")
            .iter()
            .any(|e| e.status == InstanceStatus::Running),
        "never reported running"
    );
    // restart: no → the instance has ended.
    wait_for("never-0 ended", T, || async {
        h.sup.snapshot("never", 0).filter(|s| s.ended).map(|_| ())
    })
    .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_timeout_usec_gives_a_slow_start_more_time() {
    let h = harness().await;
    let app = py_notify(
        r#"
notify("EXTEND_TIMEOUT_USEC=6000000")
time.sleep(2)
notify("READY=1")
time.sleep(1000)
"#,
    );
    h.deploy(
        "slow",
        "v1",
        &app,
        json!({"notify": true, "startTimeoutSec": 1}),
    )
    .await;
    let (_, running) = h
        .wait_event_at("slow running", |e| {
            e.app_name == "slow"
                && (e.status == InstanceStatus::Running || e.status == InstanceStatus::Failed)
        })
        .await;
    assert_eq!(running.status, InstanceStatus::Running, "{running:?}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_from_outside_the_instance_are_ignored() {
    let h = harness().await;
    // Blocks SIGUSR1, says "armed", waits for SIGUSR1, says "after". It never sends READY=1.
    let app = py_notify(
        r#"
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
notify("STATUS=armed")
signal.sigwait([signal.SIGUSR1])
notify("STATUS=after")
time.sleep(1000)
"#,
    );
    h.deploy(
        "guard",
        "v1",
        &app,
        json!({"notify": true, "startTimeoutSec": 60}),
    )
    .await;
    let (_, armed) = h
        .wait_event_at("armed", |e| e.notify_status == "armed")
        .await;
    let pid = armed.pid.unwrap();
    let path = env_var(pid, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    // This test process is not in the instance's cgroup.
    let outsider = std::os::unix::net::UnixDatagram::unbound().unwrap();
    outsider
        .send_to(b"READY=1\nSTATUS=forged", &path)
        .expect("root can reach the socket");
    // The app's own datagram is queued after ours: once its STATUS is seen, ours was read.
    let t0 = std::time::Instant::now();
    // SAFETY: kill(2) on the app's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let (_, after) = h
        .wait_event_at("after", |e| e.notify_status == "after")
        .await;
    eprintln!(
        "measured: SIGUSR1 → app's STATUS= datagram → narund (cgroup check) → status event received: {:?}",
        t0.elapsed()
    );
    assert_eq!(after.status, InstanceStatus::Starting, "{after:?}");
    let ev = h.events("guard");
    assert!(
        !ev.iter()
            .any(|e| e.status == InstanceStatus::Running || e.notify_status == "forged"),
        "a datagram from outside the cgroup was accepted: {ev:#?}"
    );
    assert_eq!(
        h.sup.snapshot("guard", 0).unwrap().status,
        InstanceStatus::Starting
    );
    h.finish().await;
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_watchdog_aborts_and_restarts_with_reason_watchdog() {
    let h = harness().await;
    let app = py_notify(
        r#"
notify("READY=1")
for _ in range(3):
    notify("WATCHDOG=1")
    time.sleep(0.3)
time.sleep(1000)
"#,
    );
    h.deploy(
        "wd",
        "v1",
        &app,
        json!({"notify": true, "watchdogSec": 1, "restart": "on-watchdog"}),
    )
    .await;
    let (_, first) = h
        .wait_event_at("wd running", |e| {
            e.app_name == "wd" && e.status == InstanceStatus::Running
        })
        .await;
    let pid = first.pid.unwrap();
    assert_eq!(env_var(pid, "WATCHDOG_USEC").as_deref(), Some("1000000"));
    assert_eq!(env_var(pid, "WATCHDOG_PID"), None);
    let (crash_at, crashed) = h
        .wait_event_at("watchdog crash", |e| {
            e.app_name == "wd" && e.status == InstanceStatus::Crashed
        })
        .await;
    assert_eq!(crashed.reason, Some(Reason::Watchdog), "{crashed:?}");
    assert!(
        crashed.error.contains("WATCHDOG=1") && crashed.error.contains("killed by signal SIGABRT"),
        "the app died of narund's SIGABRT: {}",
        crashed.error
    );
    wait_gone(pid).await;
    // on-watchdog restarts it: a new run, a new pid.
    let (_, again) = h
        .wait_event_at("wd running again", |e| {
            e.app_name == "wd" && e.status == InstanceStatus::Running && e.pid != Some(pid)
        })
        .await;
    assert!(again.restarts.unwrap_or(0) >= 1, "{again:?}");
    let (back_at, backoff) = h
        .wait_event_at("backoff", |e| {
            e.app_name == "wd" && e.status == InstanceStatus::Backoff
        })
        .await;
    assert!(back_at > crash_at);
    assert_eq!(backoff.reason, Some(Reason::Watchdog));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_trigger_aborts_at_once() {
    let h = harness().await;
    let app = py_notify(
        r#"
notify("READY=1")
time.sleep(0.2)
notify("WATCHDOG=trigger")
time.sleep(1000)
"#,
    );
    h.deploy("trig", "v1", &app, json!({"notify": true})).await;
    let (_, running) = h
        .wait_event_at("trig running", |e| {
            e.app_name == "trig" && e.status == InstanceStatus::Running
        })
        .await;
    let pid = running.pid.unwrap();
    let (_, crashed) = h
        .wait_event_at("trigger", |e| {
            e.app_name == "trig" && e.status == InstanceStatus::Crashed
        })
        .await;
    assert_eq!(crashed.reason, Some(Reason::Watchdog));
    assert!(
        crashed.error.contains("WATCHDOG=trigger"),
        "{}",
        crashed.error
    );
    assert!(
        crashed.error.contains("killed by signal SIGABRT"),
        "the app died of narund's SIGABRT: {}",
        crashed.error
    );
    wait_gone(pid).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_until_ready_again() {
    let h = harness().await;
    let app = py_notify(
        r#"
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
notify("READY=1")
notify("RELOADING=1\nSTATUS=reloading config")
signal.sigwait([signal.SIGUSR1])
notify("READY=1\nSTATUS=reloaded")
time.sleep(1000)
"#,
    );
    h.deploy("rl", "v1", &app, json!({"notify": true})).await;
    let (_, reloading) = h
        .wait_event_at("reloading", |e| {
            e.app_name == "rl" && e.status == InstanceStatus::Reloading
        })
        .await;
    let pid = reloading.pid.unwrap();
    assert_eq!(
        h.sup.snapshot("rl", 0).unwrap().status,
        InstanceStatus::Reloading
    );
    // SAFETY: kill(2) on the app's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let (_, back) = h
        .wait_event_at("running after reload", |e| {
            e.app_name == "rl"
                && e.status == InstanceStatus::Running
                && e.notify_status == "reloaded"
        })
        .await;
    assert_eq!(back.pid, Some(pid));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_that_never_becomes_ready_is_rolled_back_and_reported() {
    let h = harness().await;
    h.deploy("roll", "v1", SILENT_SLEEPER, json!({})).await;
    let (_, v1) = h
        .wait_event_at("v1 running", |e| {
            e.app_name == "roll" && e.status == InstanceStatus::Running
        })
        .await;
    let old_pid = v1.pid.unwrap();
    assert_eq!(
        env_var(old_pid, "NOTIFY_SOCKET"),
        None,
        "no NOTIFY_SOCKET without notify/watchdogSec"
    );

    let never = py_notify("time.sleep(1000)\n");
    h.deploy(
        "roll",
        "v2",
        &never,
        json!({"notify": true, "startTimeoutSec": 1}),
    )
    .await;
    let (_, rb) = h
        .wait_event_at("rolled_back", |e| {
            e.app_name == "roll" && e.status == InstanceStatus::RolledBack
        })
        .await;
    assert_eq!(rb.reason, Some(Reason::StartTimeout), "{rb:?}");
    assert_eq!(rb.tag, "v2");
    assert_eq!(rb.instance_id, "roll-0");
    assert_eq!(rb.pid, Some(old_pid), "the old run keeps serving");
    assert!(alive(old_pid));
    let new_pid = h
        .events("roll")
        .iter()
        .find(|e| e.tag == "v2" && e.status == InstanceStatus::Starting && e.pid.is_some())
        .and_then(|e| e.pid)
        .expect("the new run was started");
    wait_gone(new_pid).await;

    // The heartbeat lists the instance with the old tag and the rollback.
    let state = narund::node::heartbeat::node_state(
        &h.sup,
        narun_wire::status::NodeStatus::Running,
        "",
        true,
    );
    let inst = state
        .instances
        .iter()
        .find(|i| i.instance_id == "roll-0")
        .unwrap();
    assert_eq!(inst.tag, "v1");
    assert_eq!(inst.pid, Some(old_pid));
    assert_eq!(inst.status, InstanceStatus::Running);
    let info = inst
        .rolled_back
        .as_ref()
        .expect("rollback in the node state");
    assert_eq!(
        (info.tag.as_str(), info.reason.clone()),
        ("v2", Some(Reason::StartTimeout))
    );
    assert_eq!(state.instances.len(), 1, "exactly one roll-0");

    // A newer revision that works replaces the old run and clears the report.
    h.deploy("roll", "v3", SILENT_SLEEPER, json!({})).await;
    let (_, v3) = h
        .wait_event_at("v3 running", |e| {
            e.app_name == "roll" && e.tag == "v3" && e.status == InstanceStatus::Running
        })
        .await;
    wait_gone(old_pid).await;
    wait_for("rollback report cleared", T, || async {
        h.sup
            .instances()
            .iter()
            .find(|i| i.instance_id == "roll-0" && i.tag == "v3" && i.rolled_back.is_none())
            .map(|_| ())
    })
    .await;
    assert!(alive(v3.pid.unwrap()));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mainpid_receives_the_stop_signal() {
    let h = harness().await;
    // The started process ignores SIGTERM and waits for its child, which declares itself
    // the main process. A stop that signalled the started process would hang until
    // stopTimeoutSec (20 s) and cgroup.kill.
    let app = py_notify(
        r#"
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    notify("MAINPID=%d\nREADY=1\nSTATUS=child is main" % os.getpid())
    time.sleep(1000)
    os._exit(0)
os.waitpid(pid, 0)
sys.exit(0)
"#,
    );
    h.deploy(
        "mp",
        "v1",
        &app,
        json!({"notify": true, "stopTimeoutSec": 20}),
    )
    .await;
    let (_, running) = h
        .wait_event_at("mp running", |e| {
            e.app_name == "mp" && e.status == InstanceStatus::Running
        })
        .await;
    assert_eq!(running.notify_status, "child is main");
    let main = running.pid.unwrap();
    let started = h
        .events("mp")
        .iter()
        .find(|e| e.status == InstanceStatus::Starting && e.pid.is_some())
        .and_then(|e| e.pid)
        .unwrap();
    assert_ne!(main, started, "the event carries the MAINPID");
    let t0 = std::time::Instant::now();
    h.configs.delete("mp").await.unwrap();
    h.wait_event("mp stopped", |e| {
        e.app_name == "mp" && e.status == InstanceStatus::Stopped
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the stop signal went to MAINPID: stopped in {:?}",
        t0.elapsed()
    );
    wait_gone(main).await;
    wait_gone(started).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narun_library_app_reports_ready_and_feeds_its_watchdog() {
    let h = harness().await;
    // The `hello` example (the narun app library): READY=1 once it serves on NATS, then
    // WATCHDOG=1 at half of WATCHDOG_USEC. The 100 MB debug binary is not uploaded: a tiny
    // wrapper execs a copy that `nobody` can read (same pid, same cgroup).
    let bin = narun_test_support::workspace_bin("hello", "hello", &[]);
    let copy = h.data.path().join("hello-bin");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = format!("#!/bin/sh\nexec {}\n", copy.display());
    h.deploy(
        "lib",
        "v1",
        &wrapper,
        json!({"notify": true, "watchdogSec": 2, "startTimeoutSec": 30}),
    )
    .await;
    let (_, running) = h
        .wait_event_at("lib running", |e| {
            e.app_name == "lib"
                && (e.status == InstanceStatus::Running || e.status == InstanceStatus::Failed)
        })
        .await;
    assert_eq!(running.status, InstanceStatus::Running, "{running:?}");
    assert!(
        running.notify_status.starts_with("serving"),
        "STATUS= from the library: {running:?}"
    );
    let pid = running.pid.unwrap();
    // Three watchdog periods: without the library's pings narund would abort it after 2 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ev = h.events("lib");
    assert!(
        !ev.iter()
            .any(|e| e.status == InstanceStatus::Crashed || e.reason == Some(Reason::Watchdog)),
        "the watchdog fired although the library pings: {ev:#?}"
    );
    let snap = h.sup.snapshot("lib", 0).unwrap();
    assert_eq!((snap.status.as_str(), snap.pid), ("running", Some(pid)));
    h.finish().await;
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forking_daemon_is_followed_through_mainpid() {
    let h = harness().await;
    // Classic daemon: the started process forks, the child declares itself the main
    // process and ready, then the parent exits 0. The instance must keep running with the
    // child, and the child's own exit (SIGKILL here) must be what ends the run.
    let app = py_notify(
        r#"
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    notify("MAINPID=%d\nREADY=1\nSTATUS=daemonized" % os.getpid())
    os.write(w, b"x")
    os.close(w)
    time.sleep(1000)
    os._exit(0)
os.close(w)
os.read(r, 1)
sys.exit(0)
"#,
    );
    h.deploy("fork", "v1", &app, json!({"notify": true})).await;
    let (_, running) = h
        .wait_event_at("fork running", |e| {
            e.app_name == "fork" && e.status == InstanceStatus::Running
        })
        .await;
    let main = running.pid.unwrap();
    let (_, followed) = h
        .wait_event_at("MAINPID followed", |e| {
            e.app_name == "fork" && e.reason == Some(Reason::MainPid)
        })
        .await;
    assert_eq!(followed.status, InstanceStatus::Running, "{followed:?}");
    assert_eq!(followed.pid, Some(main));
    let snap = h.sup.snapshot("fork", 0).unwrap();
    assert_eq!((snap.status.as_str(), snap.pid), ("running", Some(main)));
    assert!(alive(main));
    // SAFETY: kill(2) on the daemon's pid.
    assert_eq!(unsafe { libc::kill(main, libc::SIGKILL) }, 0);
    let (_, crashed) = h
        .wait_event_at("fork crashed", |e| {
            e.app_name == "fork" && e.status == InstanceStatus::Crashed
        })
        .await;
    assert!(
        crashed.error.contains("killed by signal SIGKILL"),
        "the followed process's own exit status: {crashed:?}"
    );
    h.finish().await;
}

/// narund's own watchdog gating (narund::liveness): a rollout that holds the apply lock for
/// seconds (a notify app that never sends READY=1, `startTimeoutSec` 2) is progress, while a
/// holder of the apply lock that overruns its declared budget makes the reconciler, which
/// waits for it, count as stuck; once the lock is free again, everything is fine again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_gating_tells_a_long_rollout_from_a_wedged_reconciler() {
    let h = harness().await;
    // Far below the rollout's length: only the declared budget can keep the check green.
    let stall = Duration::from_millis(300);
    h.sup.liveness().set_stall_after(stall);
    h.deploy("gate", "v1", SILENT_SLEEPER, json!({})).await;
    h.wait_event("v1 running", |e| {
        e.app_name == "gate" && e.status == InstanceStatus::Running
    })
    .await;

    // Idle for a while: the reconciler's and heartbeat's beats keep it green.
    let idle_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < idle_until {
        h.sup.liveness().check().expect("idle narund is healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let never = py_notify("time.sleep(1000)\n");
    let began = std::time::Instant::now();
    h.deploy(
        "gate",
        "v2",
        &never,
        json!({"notify": true, "startTimeoutSec": 2}),
    )
    .await;
    let rolled_back = tokio::time::timeout(T, async {
        loop {
            h.sup
                .liveness()
                .check()
                .expect("a rollout within its budget is progress");
            if h.events("gate")
                .iter()
                .any(|e| e.status == InstanceStatus::RolledBack)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(rolled_back.is_ok(), "no rollback: {:#?}", h.events("gate"));
    assert!(
        began.elapsed() > Duration::from_secs(2),
        "the rollout held the apply lock for {:?}: too short to prove anything",
        began.elapsed()
    );

    // A holder that hangs: it declares 500 ms and keeps the lock. The reconciler gets a new
    // spec and waits for the lock.
    let hold = h
        .sup
        .serial(
            "a test holder that hangs".into(),
            Duration::from_millis(500),
        )
        .await;
    h.deploy("gate", "v3", SILENT_SLEEPER, json!({})).await;
    let stuck = wait_for("the check to report the wedge", T, || async {
        h.sup.liveness().check().err()
    })
    .await;
    assert!(
        stuck.contains("reconciler") && stuck.contains("a test holder that hangs"),
        "{stuck}"
    );
    drop(hold);
    h.wait_event("v3 running", |e| {
        e.app_name == "gate" && e.tag == "v3" && e.status == InstanceStatus::Running
    })
    .await;
    wait_for("healthy again", T, || async {
        h.sup.liveness().check().ok()
    })
    .await;
    h.finish().await;
}
