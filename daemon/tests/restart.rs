//! Restarts of a crash-looping app by the real `narund` binary (real nats-server, real
//! processes and cgroups; docs/supervisor.md, "Restarts"): every run starts inside its
//! own cgroup, through `clone3(CLONE_INTO_CGROUP)` and through the `fork` fallback
//! (`NARUND_SPAWN=fork`), and the start-limit failure is published with the crash that
//! decides it, not a backoff later. The latency itself is measured by
//! `daemon/examples/restart_bench.rs`, not here.

use futures_util::StreamExt;
use narun_test_support::{Narund, NatsServer, T, buckets, synced};
use narun_wire::events::{LogLine, StatusEvent};
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The app: says which cgroup it is in (the v2 line of its own `/proc/<pid>/cgroup`,
/// read before it does anything else), then crashes.
const CRASHER: &str =
    "#!/bin/sh\necho \"cgroup $NARUN_RUN_ID $(grep ^0:: /proc/$$/cgroup)\"\nexit 3\n";
const BURST: usize = 5;

async fn crash_loop(fork: bool) {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let mut status = client
        .subscribe(names::status_subject("crashy", "n1"))
        .await
        .unwrap();
    let mut logs = client
        .subscribe(names::log_subject("crashy", "n1"))
        .await
        .unwrap();
    synced(&client).await;
    let mut builder = Narund::builder(&server, "n1")
        .env("NARUND_LOG", "info")
        .stderr_piped();
    if fork {
        builder = builder.env("NARUND_SPAWN", "fork");
    }
    let mut narund = builder.start();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = narund.take_stderr().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    b.upload("crashy", "v1", CRASHER).await;
    b.put_spec(
        "crashy",
        &json!({"name": "crashy", "tag": "v1", "nodes": [{"name": "n1", "replicas": 1}],
                "startLimitBurst": BURST, "startLimitIntervalSec": 60}),
    )
    .await;

    // Every status event, with when it arrived, until the start-limit failure.
    let mut events: Vec<(Instant, StatusEvent)> = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(m) = status.next().await {
            let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            let failed = ev.status == InstanceStatus::Failed;
            events.push((Instant::now(), ev));
            if failed {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no failed event within {T:?}: {events:#?}"));
    let statuses: Vec<&str> = events.iter().map(|(_, e)| e.status.as_str()).collect();
    let mut want = Vec::new();
    for i in 0..BURST {
        want.extend(["starting", "running", "crashed"]);
        want.push(if i + 1 < BURST { "backoff" } else { "failed" });
    }
    assert_eq!(statuses, want, "{events:#?}");
    let (failed_at, failed) = events.last().unwrap();
    assert_eq!(failed.reason, Some(Reason::StartLimit));
    // The failure is published with the crash that decides it (before: after the backoff
    // of that crash, ≥ 800 ms for the fifth).
    let (crashed_at, _) = &events[events.len() - 2];
    let delay = failed_at.duration_since(*crashed_at);
    assert!(
        delay < Duration::from_millis(500),
        "start-limit failure {delay:?} after the crash"
    );

    // Each run was in its own instance cgroup from its first instruction on.
    let runs: Vec<String> = events
        .iter()
        .filter(|(_, e)| e.status == InstanceStatus::Running)
        .map(|(_, e)| e.run_id.clone())
        .collect();
    assert_eq!(runs.len(), BURST);
    let mut lines = Vec::new();
    tokio::time::timeout(T, async {
        while lines.len() < BURST {
            let Some(m) = logs.next().await else { break };
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            if l.message.starts_with("cgroup ") {
                lines.push(l);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {BURST} cgroup lines: {lines:#?}", lines.len()));
    for l in &lines {
        let mut words = l.message.split(' ').skip(1);
        let (run, cgroup) = (words.next().unwrap(), words.next().unwrap_or(""));
        assert!(runs.iter().any(|r| r == run), "{l:?} of a run in {runs:?}");
        assert!(
            cgroup.starts_with("0::/narun-test-")
                && cgroup.ends_with(&format!("/narun-crashy-0-{}", &run[..8])),
            "{l:?}"
        );
    }

    // The way the runs were started.
    let text = log.lock().unwrap().clone();
    if fork {
        assert!(
            text.contains("apps start with fork + cgroup.procs (NARUND_SPAWN=fork"),
            "{text}"
        );
        assert!(!text.contains("apps start with clone3"), "{text}");
    } else {
        assert!(
            text.contains("apps start with clone3(CLONE_INTO_CGROUP)"),
            "{text}"
        );
        assert!(!text.contains("clone3(CLONE_INTO_CGROUP) is not"), "{text}");
        assert!(!text.contains("clone3(CLONE_INTO_CGROUP) failed"), "{text}");
    }
    narund.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_runs_start_inside_their_cgroups_with_clone3() {
    crash_loop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_runs_start_inside_their_cgroups_with_the_fork_fallback() {
    crash_loop(true).await;
}
