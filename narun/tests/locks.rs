//! `narun::lock` against a real nats-server: try/release in one process, a lock taken
//! away is noticed, and leader election between three real processes (this test binary
//! run again as a contender): kill or freeze the leader, another leads within the TTL,
//! and never two at once (tenures do not overlap; a fence key written by compare-and-set
//! on every tick of a leader is never refused). A release racing a renewal frees the
//! lock at once.

use futures_util::StreamExt;
use narun_test_support::{NatsServer, T};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const CHILD_ENV: &str = "NARUN_LOCK_TEST_NATS";
const TTL: Duration = Duration::from_millis(1000);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn try_lock_release_and_a_lock_taken_away() {
    let server = NatsServer::start();
    let a = server.connect().await;
    let b = server.connect().await;
    let held = narun::try_lock(&a, "job/x", TTL)
        .await
        .unwrap()
        .expect("free");
    assert!(held.is_held());
    assert!(narun::try_lock(&b, "job/x", TTL).await.unwrap().is_none());
    // Renewals keep it: still held after several TTLs.
    tokio::time::sleep(TTL * 3).await;
    assert!(held.is_held());
    assert!(narun::try_lock(&b, "job/x", TTL).await.unwrap().is_none());
    held.release().await.unwrap();
    let taken = narun::try_lock(&b, "job/x", TTL)
        .await
        .unwrap()
        .expect("released");

    // Someone overwrites the key (an operator, a bug): the holder notices at its next
    // renewal and stops being the holder.
    let js = async_nats::jetstream::new(server.connect().await);
    let kv = js.get_key_value("narun-locks").await.unwrap();
    kv.put("job/x", "{}".into()).await.unwrap();
    tokio::time::timeout(TTL * 2, taken.lost())
        .await
        .expect("lost within the TTL");
    assert!(!taken.is_held());

    // Bad names and TTLs are refused with what is wrong.
    let e = narun::try_lock(&a, "a b", TTL)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"a b\""), "{e}");
    let e = narun::try_lock(&a, "x", Duration::from_millis(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttl"), "{e}");
}

/// `release()` frees the lock at once even when it races a renewal on the wire (the
/// renewer is stopped after its write, not aborted in the middle of it): released just
/// as a renewal is due, over and over, the lock is free for the next taker every time.
#[tokio::test]
async fn a_release_racing_a_renewal_still_frees_the_lock_at_once() {
    let server = NatsServer::start();
    let a = server.connect().await;
    let b = server.connect().await;
    let ttl = Duration::from_millis(300); // renewals every 100 ms
    let mut not_free = Vec::new();
    for i in 0..45u64 {
        let held = narun::try_lock(&a, "race", ttl)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {i}: not free"));
        // Around the first renewal (99, 100 or 101 ms after the take).
        tokio::time::sleep(Duration::from_millis(99 + i % 3)).await;
        held.release().await.unwrap();
        match narun::try_lock(&b, "race", ttl).await.unwrap() {
            Some(l) => l.release().await.unwrap(),
            None => {
                // Still held: a takes it back only once it expires (try_lock does not
                // take over), so stop here.
                not_free.push(i);
                break;
            }
        }
    }
    assert!(
        not_free.is_empty(),
        "still held after release in rounds {not_free:?}"
    );
}

/// One contender (run by `leader_election_between_three_processes` as a child process):
/// leads whenever it holds the lock, printing `acquired`, then a `tick` every 20 ms
/// while [`narun::Lock::is_held`], with wall-clock nanoseconds.
#[tokio::test]
#[ignore = "a child process of leader_election_between_three_processes"]
async fn contender() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let nats = async_nats::connect(url).await.unwrap();
    let fence = async_nats::jetstream::new(nats.clone())
        .get_key_value(FENCE_BUCKET)
        .await
        .unwrap();
    let me = std::process::id();
    loop {
        let lock = narun::lock(&nats, "leader", TTL).await.unwrap();
        println!("acquired {me} {}", now_ns());
        // The fence: every tick of a leader is a compare-and-set on one key at the
        // revision this leader last wrote (or read when it took over). Only leaders write
        // it, so a refused write while `is_held()` means another leader wrote in between:
        // two leaders at once, seen by the server's ordering, no clocks compared.
        let mut rev = fence
            .entry(FENCE_KEY)
            .await
            .unwrap()
            .map_or(0, |e| e.revision);
        // Each tick carries the time read just before `is_held()` said yes: a freeze
        // (SIGSTOP) can land anywhere, also between that check and the fence write or
        // between the write and the print, so the time of the print proves nothing.
        loop {
            let checked = now_ns();
            if !lock.is_held() {
                break;
            }
            match fence.update(FENCE_KEY, me.to_string().into(), rev).await {
                Ok(r) => {
                    rev = r;
                    println!("tick {me} {checked}");
                }
                Err(e) => println!("conflict {me} {checked} {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("lost {me} {}", now_ns());
    }
}

/// The KV bucket and key of the contenders' fence.
const FENCE_BUCKET: &str = "election-fence";
const FENCE_KEY: &str = "leader";

/// `kill -<sig> <pid>`.
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

#[derive(Debug)]
struct Event {
    what: String,
    pid: u32,
    ns: u128,
}

fn spawn_contender(url: &str, tx: mpsc::UnboundedSender<Event>) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "contender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            // The harness may print `test contender ... ` before the first line.
            let f: Vec<&str> = l.split_whitespace().collect();
            if let [.., what @ ("acquired" | "tick" | "lost"), pid, ns] = f[..] {
                let _ = tx.send(Event {
                    what: what.to_string(),
                    pid: pid.parse().unwrap(),
                    ns: ns.parse().unwrap(),
                });
            } else if let Some(i) = f.iter().position(|w| *w == "conflict") {
                let _ = tx.send(Event {
                    what: format!("conflict: {l}"),
                    pid: f[i + 1].parse().unwrap(),
                    ns: f[i + 2].parse().unwrap(),
                });
            }
        }
    });
    child
}

/// The next `acquired`, keeping every event in `log`.
async fn next_acquired(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    log: &mut Vec<Event>,
) -> (u32, u128) {
    let until = tokio::time::Instant::now() + T;
    loop {
        let e = tokio::time::timeout_at(until, rx.recv())
            .await
            .expect("a leader within the bound")
            .expect("contenders running");
        let acquired = (e.what == "acquired").then_some((e.pid, e.ns));
        log.push(e);
        if let Some(a) = acquired {
            return a;
        }
    }
}

#[tokio::test]
async fn leader_election_between_three_processes() {
    let server = NatsServer::start();
    let url = server.url();
    let js = async_nats::jetstream::new(server.connect().await);
    // (ensure_kv: async-nats' create_key_value cannot read nats-server 2.9's answer.)
    let fence = narun_wire::jetstream::ensure_kv(&js, FENCE_BUCKET, "test fence", 1, None, 1)
        .await
        .unwrap();
    fence.put(FENCE_KEY, "none".into()).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut children: Vec<_> = (0..3).map(|_| spawn_contender(&url, tx.clone())).collect();
    let mut log = Vec::new();

    let (mut leader, _) = next_acquired(&mut rx, &mut log).await;
    let mut frozen_at: Option<(u32, u128)> = None;
    // Three rounds: let the leader lead for a few renewals (nobody else may acquire),
    // then take it away without warning, and see another one lead within the TTL:
    // SIGKILL; SIGSTOP for twice the TTL and SIGCONT (a stalled leader that comes back
    // must see it lost the lock before it acts again: the fence below catches it if it
    // does not); SIGKILL again.
    for (round, how) in ["kill", "freeze", "kill"].into_iter().enumerate() {
        let until = tokio::time::Instant::now() + TTL * 2;
        while let Ok(Some(e)) = tokio::time::timeout_at(until, rx.recv()).await {
            assert!(
                e.pid == leader || e.what != "acquired",
                "round {round}: {e:?} while {leader} leads"
            );
            log.push(e);
        }
        let i = children
            .iter()
            .position(|c| c.id() == Some(leader))
            .expect("the leader is one of ours");
        let taken = now_ns();
        if how == "freeze" {
            frozen_at = Some((leader, taken));
        }
        let frozen = if how == "kill" {
            let mut dead = children.remove(i);
            dead.start_kill().unwrap();
            dead.wait().await.unwrap();
            None
        } else {
            signal(leader, "STOP");
            Some(leader)
        };
        let (next, at) = next_acquired(&mut rx, &mut log).await;
        assert_ne!(next, leader, "round {round}");
        let after = Duration::from_nanos((at - taken) as u64);
        // At most one TTL after the last renewal it saw, which came before the kill
        // (plus the scheduling of a loaded machine).
        assert!(
            after <= TTL + Duration::from_millis(700),
            "round {round} ({how}): took {after:?}"
        );
        if let Some(pid) = frozen {
            let stopped_for = Duration::from_nanos((now_ns() - taken) as u64);
            tokio::time::sleep((TTL * 2).saturating_sub(stopped_for)).await;
            signal(pid, "CONT");
        }
        leader = next;
    }
    // Drain what is left (a last tick of a dying process may still be in the pipe).
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }

    // Never two at once, by the server's order: no leader's fence write was refused, and
    // the fence names the last leader (its writes go through). The one write a frozen
    // leader may have in hand is the exception: frozen after `is_held()` said yes and
    // before its write went out, it writes when it is continued, and the fence refuses
    // it (what fencing is for; no lock can stop a process paused mid-action). That
    // write's check came before the freeze.
    let conflicts: Vec<&Event> = log
        .iter()
        .filter(|e| e.what.starts_with("conflict"))
        .filter(|e| !frozen_at.is_some_and(|(pid, at)| e.pid == pid && e.ns < at))
        .collect();
    assert!(conflicts.is_empty(), "two leaders at once: {conflicts:?}");
    let mut watch = fence.watch_with_history(FENCE_KEY).await.unwrap();
    tokio::time::timeout(T, async {
        while let Some(e) = watch.next().await {
            if e.unwrap().value == leader.to_string().as_bytes() {
                return;
            }
        }
    })
    .await
    .expect("the last leader writes the fence");

    // Never two at once: each tenure runs from `acquired` to the process's last tick
    // before its `lost` or its death; no two tenures overlap.
    let mut tenures: Vec<(u32, u128, u128)> = Vec::new();
    for e in &log {
        match e.what.as_str() {
            "acquired" => tenures.push((e.pid, e.ns, e.ns)),
            "tick" => {
                let t = tenures
                    .iter_mut()
                    .rev()
                    .find(|t| t.0 == e.pid)
                    .expect("a tick after an acquire");
                t.2 = t.2.max(e.ns);
            }
            _ => {}
        }
    }
    assert!(tenures.len() >= 3, "{tenures:?}");
    tenures.sort_by_key(|t| t.1);
    for w in tenures.windows(2) {
        assert!(
            w[0].2 < w[1].1,
            "two leaders at once: {} until {} and {} from {}",
            w[0].0,
            w[0].2,
            w[1].0,
            w[1].1
        );
    }
}
