//! Issue 19, per-app truth in logs and `logOverflow`: the real `narund` binary with a tiny log
//! spool, real apps writing flat out, a real nats-server that the test pauses (SIGSTOP) so
//! the spool must overflow.
//!
//! * Two `drop` apps: each app's drop marks (`dropped_before`) arrive on its own subject, on
//!   its own instance's lines, and sum exactly to the lines it lost.
//! * A `block` app: narund stops reading it while its share of the spool is full (the app
//!   blocks in `write`); every one of its lines arrives; a `drop` app beside it keeps being
//!   drained meanwhile.
//! * A `block` app whose run ends while narund waits for room (the app killed during the
//!   outage): narund closes the run's pipes within a few seconds, not when NATS is back, and
//!   every line the app wrote either arrives or is counted on the instance's own mark line.
//! * An invalid `logOverflow` is refused with an error naming the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use narun_test_support::{Narund, NatsServer, T, buckets, heartbeat, wait_for, wait_gone};
use narun_wire::events::{LogLine, StatusEvent};
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;

/// Spool bound of the test narunds: a few hundred short lines.
const SPOOL: &str = "[logs]\nspool_bytes = 16384\n";

/// An app that waits for the file `$GO`, then writes `<prefix>-1` … `<prefix>-<n>` as fast as
/// the shell can (one `write` per line), then sleeps (its output stays open, so narund writes
/// no line of its own on the subject); `n` = 0: writes forever.
fn writer(prefix: &str, n: u64) -> String {
    let cond = if n == 0 {
        "true".to_string()
    } else {
        format!("[ $i -lt {n} ]")
    };
    format!(
        "#!/bin/sh\nwhile [ ! -e \"$GO\" ]; do sleep 0.02; done\n\
         i=0\nwhile {cond}; do i=$((i+1)); echo {prefix}-$i; done\nexec sleep 3600\n"
    )
}

fn spec(app: &str, node: &str, go: &Path, overflow: Option<&str>) -> serde_json::Value {
    let mut s = json!({
        "name": app, "tag": "v1", "restart": "no",
        "nodes": [{"name": node, "replicas": 1}],
        "env": [{"name": "GO", "value": go.to_str().unwrap()}],
    });
    if let Some(o) = overflow {
        s["logOverflow"] = json!(o);
    }
    s
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the pid of the nats-server this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Keeps the paused nats-server from staying paused when the test fails.
struct Paused(u32);

impl Paused {
    fn new(server: &NatsServer) -> Paused {
        let pid = server.pid().expect("nats-server runs");
        signal(pid, libc::SIGSTOP);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// Bytes `pid` has written so far (`wchar` of `/proc/<pid>/io`).
fn written(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar in /proc/<pid>/io")
}

fn blocked_in_pipe_write(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("pipe_write"))
}

/// What arrived on one app's subject: its lines by message, and the drop marks.
#[derive(Default, Debug)]
struct Received {
    /// App lines (duplicates from a resend collapse).
    lines: BTreeSet<String>,
    /// Sum of `dropped_before` per instance.
    marks: BTreeMap<String, u64>,
    /// Lines of other apps or instances seen on this subject.
    strays: Vec<LogLine>,
}

impl Received {
    fn add(&mut self, l: LogLine, app: &str, instance: &str, prefix: &str) {
        if l.app_name != app || l.instance_id != instance {
            self.strays.push(l);
            return;
        }
        *self.marks.entry(l.instance_id.clone()).or_default() += l.dropped_before;
        if l.message.starts_with(prefix) {
            self.lines.insert(l.message);
        }
    }

    fn marked(&self) -> u64 {
        self.marks.values().sum()
    }
}

async fn running_pids(
    states: &mut async_nats::jetstream::kv::Watch,
    ids: &[&str],
) -> BTreeMap<String, i32> {
    let s = heartbeat(states, "the apps running", |s| {
        ids.iter().all(|id| {
            s.instances.iter().any(|i| {
                i.instance_id == *id && i.status == InstanceStatus::Running && i.pid.is_some()
            })
        })
    })
    .await;
    s.instances
        .iter()
        .filter_map(|i| Some((i.instance_id.clone(), i.pid?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drop_apps_get_their_own_exact_drop_marks() {
    const NODE: &str = "drops";
    const N: u64 = 20_000;
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let client = server.connect().await;
    let mut subs = Vec::new();
    for app in ["alpha", "beta"] {
        b.upload(app, "v1", writer(app, N)).await;
        subs.push(
            client
                .subscribe(format!("logs.{app}.{NODE}"))
                .await
                .unwrap(),
        );
    }
    narun_test_support::synced(&client).await;
    let mut states = b.states.watch_with_history(NODE).await.unwrap();
    let _narund = Narund::start(&server, NODE, SPOOL);
    for app in ["alpha", "beta"] {
        b.put_spec(app, &spec(app, NODE, &go, None)).await;
    }
    let pids = running_pids(&mut states, &["alpha-0", "beta-0"]).await;

    // NATS stalls while both write 20 000 lines: far more than the spool holds.
    {
        let _paused = Paused::new(&server);
        std::fs::write(&go, "").unwrap();
        for app in ["alpha", "beta"] {
            let pid = &pids[&format!("{app}-0")];
            let all: u64 = (1..=N).map(|i| format!("{app}-{i}\n").len() as u64).sum();
            wait_for(
                "the apps to write all their lines while NATS is paused",
                T,
                || async { (written(*pid) >= all).then_some(()) },
            )
            .await;
        }
    }

    // Every line is either received or counted by a mark on its own app's subject.
    let mut got: Vec<Received> = Vec::new();
    for (app, sub) in ["alpha", "beta"].into_iter().zip(subs.iter_mut()) {
        let mut r = Received::default();
        let instance = format!("{app}-0");
        let res = tokio::time::timeout(T, async {
            while (r.lines.len() as u64 + r.marked()) < N {
                let m = sub.next().await.expect("subscription open");
                let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
                r.add(l, app, &instance, &format!("{app}-"));
            }
        })
        .await;
        assert!(
            res.is_ok(),
            "{app}: {} lines + {} marked < {N} within {T:?}",
            r.lines.len(),
            r.marked()
        );
        got.push(r);
    }
    // Nothing more may come (a mark counted twice, a stray): what arrives within a moment
    // more is counted too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ((app, sub), r) in ["alpha", "beta"]
        .into_iter()
        .zip(subs.iter_mut())
        .zip(&mut got)
    {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::ZERO, sub.next()).await {
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            r.add(l, app, &format!("{app}-0"), &format!("{app}-"));
        }
        eprintln!(
            "{app}: {} lines received, {} marked as dropped",
            r.lines.len(),
            r.marked()
        );
        assert!(r.strays.is_empty(), "{app}: {:?}", &r.strays[..1]);
        assert!(r.marked() > 0, "{app}: the spool must have overflowed");
        assert_eq!(r.lines.len() as u64 + r.marked(), N, "{app}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_app_loses_nothing_and_a_drop_app_beside_it_keeps_going() {
    const NODE: &str = "block";
    const N: u64 = 30_000;
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let client = server.connect().await;
    b.upload("careful", "v1", writer("careful", N)).await;
    b.upload("chatty", "v1", writer("chatty", 0)).await;
    let mut careful = client
        .subscribe(format!("logs.careful.{NODE}"))
        .await
        .unwrap();
    let mut chatty = client
        .subscribe(format!("logs.chatty.{NODE}"))
        .await
        .unwrap();
    narun_test_support::synced(&client).await;
    let mut states = b.states.watch_with_history(NODE).await.unwrap();
    let _narund = Narund::start(&server, NODE, SPOOL);
    b.put_spec("careful", &spec("careful", NODE, &go, Some("block")))
        .await;
    b.put_spec("chatty", &spec("chatty", NODE, &go, None)).await;
    let pids = running_pids(&mut states, &["careful-0", "chatty-0"]).await;
    let (careful_pid, chatty_pid) = (pids["careful-0"], pids["chatty-0"]);

    {
        let _paused = Paused::new(&server);
        std::fs::write(&go, "").unwrap();
        // narund stops reading `careful` once its share is full: it blocks in write(2)…
        wait_for("careful blocked in pipe_write", T, || async {
            blocked_in_pipe_write(careful_pid).then_some(())
        })
        .await;
        // …while `chatty` is drained all along: it writes MiB after MiB, and `careful` does
        // not write a byte more meanwhile (the first MiB lets narund finish filling careful's
        // share, whose reads are small).
        let chatty_mib = |from: u64| {
            wait_for("chatty writing on", T, move || async move {
                (written(chatty_pid) > from + (1 << 20)).then_some(())
            })
        };
        chatty_mib(written(chatty_pid)).await;
        let careful_at = written(careful_pid);
        chatty_mib(written(chatty_pid)).await;
        assert!(blocked_in_pipe_write(careful_pid));
        assert_eq!(written(careful_pid), careful_at, "careful stays blocked");
    }

    // NATS is back: every careful line arrives (in order, possibly a resent one twice), no
    // drop mark; chatty's lines keep coming, its losses marked on its own subject.
    let mut next = 1;
    let res = tokio::time::timeout(T, async {
        while next <= N {
            let m = careful.next().await.expect("subscription open");
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!((l.app_name.as_str(), l.dropped_before), ("careful", 0));
            let i: u64 = l.message["careful-".len()..].parse().unwrap();
            assert!(
                i <= next,
                "careful line {i} arrived before {next}: a line was lost"
            );
            if i == next {
                next += 1;
            }
        }
    })
    .await;
    assert!(res.is_ok(), "careful: lines up to {next} of {N} arrived");
    let chatty_marks = tokio::time::timeout(T, async {
        loop {
            let m = chatty.next().await.expect("subscription open");
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(l.app_name, "chatty");
            if l.dropped_before > 0 {
                return l.dropped_before;
            }
        }
    })
    .await
    .expect("chatty's drops are marked on its own subject");
    eprintln!("careful: all {N} lines; chatty: a mark of {chatty_marks} dropped lines");
}

/// The pipes (`pipe:[inode]`) `pid` writes its stdout and stderr to.
fn output_pipes(pid: i32) -> Vec<String> {
    [1, 2]
        .iter()
        .map(|fd| {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
            let link = link.to_string_lossy().into_owned();
            assert!(link.starts_with("pipe:"), "fd {fd} of the app is {link}");
            link
        })
        .collect()
}

/// The fds of `pid` open on one of `pipes`.
fn open_on(pid: i32, pipes: &[String]) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_string_lossy().into_owned();
            pipes.contains(&link).then_some(link)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_apps_reader_ends_with_its_run_during_an_outage() {
    const NODE: &str = "blockend";
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let client = server.connect().await;
    b.upload("careful", "v1", writer("careful", 0)).await;
    let mut careful = client
        .subscribe(format!("logs.careful.{NODE}"))
        .await
        .unwrap();
    narun_test_support::synced(&client).await;
    let mut states = b.states.watch_with_history(NODE).await.unwrap();
    let narund = Narund::start(&server, NODE, SPOOL);
    b.put_spec("careful", &spec("careful", NODE, &go, Some("block")))
        .await;
    let pid = running_pids(&mut states, &["careful-0"]).await["careful-0"];
    let pipes = output_pipes(pid);
    assert!(
        !open_on(narund.pid(), &pipes).is_empty(),
        "narund reads them"
    );

    let wrote = {
        let _paused = Paused::new(&server);
        std::fs::write(&go, "").unwrap();
        wait_for("careful blocked in pipe_write", T, || async {
            blocked_in_pipe_write(pid).then_some(())
        })
        .await;
        // The run ends during the outage (restart: no, so no new run takes the slot).
        let wrote = written(pid);
        signal(pid as u32, libc::SIGKILL);
        wait_gone(pid).await;
        // Its reader waited for room NATS cannot give: it must end with the run anyway
        // (narund grants the pipes 2 s to drain first).
        wait_for(
            "narund to close the ended run's log pipes while NATS is still paused",
            Duration::from_secs(15),
            || async { open_on(narund.pid(), &pipes).is_empty().then_some(()) },
        )
        .await;
        wrote
    };

    // What the app wrote: whole lines `careful-1` … `careful-<n>` (one write each).
    let (mut n, mut bytes) = (0u64, 0u64);
    while bytes < wrote {
        n += 1;
        bytes += format!("careful-{n}\n").len() as u64;
    }
    assert_eq!(bytes, wrote, "the app writes whole lines");
    // NATS is back: each of them arrives, or is counted on the instance's mark line.
    let mut r = Received::default();
    let res = tokio::time::timeout(T, async {
        while r.lines.len() as u64 + r.marked() < n {
            let m = careful.next().await.expect("subscription open");
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            r.add(l, "careful", "careful-0", "careful-");
        }
    })
    .await;
    assert!(
        res.is_ok(),
        "{} lines + {} marked < {n} written within {T:?}",
        r.lines.len(),
        r.marked()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::ZERO, careful.next()).await {
        let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
        r.add(l, "careful", "careful-0", "careful-");
    }
    eprintln!(
        "careful: {n} lines written, {} received, {} counted as dropped",
        r.lines.len(),
        r.marked()
    );
    assert!(r.strays.is_empty(), "{:?}", &r.strays[..1]);
    assert!(r.marked() > 0, "the pipe held lines past the share");
    assert_eq!(r.lines.len() as u64 + r.marked(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_log_overflow_is_refused_naming_the_field() {
    const NODE: &str = "badlog";
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let mut events = client.subscribe(format!("status.*.{NODE}")).await.unwrap();
    narun_test_support::synced(&client).await;
    let _narund = Narund::start(&server, NODE, "");
    b.upload("bad", "v1", writer("bad", 1)).await;
    b.put_spec(
        "bad",
        &spec("bad", NODE, Path::new("/nonexistent"), Some("wait")),
    )
    .await;
    let ev = tokio::time::timeout(T, async {
        loop {
            let m = events.next().await.expect("subscription open");
            let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            if ev.app_name == "bad" {
                return ev;
            }
        }
    })
    .await
    .expect("a status event for the invalid spec");
    assert_eq!(ev.status, InstanceStatus::InvalidSpec, "{ev:?}");
    assert_eq!(ev.reason, Some(Reason::InvalidSpec), "{ev:?}");
    assert!(
        ev.error
            .contains("logOverflow: must be one of drop, block, got \"wait\""),
        "{}",
        ev.error
    );
}
