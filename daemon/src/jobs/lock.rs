//! The fleet lock of one occurrence (`scope = "fleet"`): a key per (app, occurrence) in
//! the KV bucket `narun-job-locks` ([`narun_wire::runs::JOB_LOCKS`]).
//!
//! * Taking it: `create` (create-if-absent): exactly one node wins.
//! * Holding it: the winner renews `until` (now + [`LOCK_TTL`]) every third of the TTL
//!   with an `update` on the revision it wrote last.
//! * Taking over: a node that finds a `running` lock whose `until` has passed writes its
//!   own with an `update` on the revision it read (compare-and-swap): of several nodes
//!   trying, one succeeds; it goes on with the holder's next attempt.
//! * Ending it: the holder writes `done`; nobody runs that occurrence again (the key lives
//!   a day, the bucket's `max_age`).
//!
//! [`view`] is the pure reading of a lock value; the rest talks to the bucket. `until` is
//! compared with the reader's clock: the nodes' clocks must agree to well within
//! [`LOCK_TTL`] (NTP), or a live holder may be taken over early.

use async_nats::jetstream::kv;
use narun_wire::runs::{JobLock, LOCK_TTL, LockState};
use std::time::Duration;

/// What a lock value means to a node that does not hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The occurrence is done (or the value is unreadable, which only a newer narund
    /// could have written: left alone).
    Done,
    /// A live holder: wait until `until`.
    Held { until: i64 },
    /// The holder stopped renewing: take it over, going on after `attempt`.
    Expired { attempt: u32 },
}

/// Read a lock value at Unix time `now`.
pub fn view(value: &[u8], now: i64) -> View {
    match serde_json::from_slice::<JobLock>(value) {
        Ok(l) if l.state == LockState::Running && l.until < now => {
            View::Expired { attempt: l.attempt }
        }
        Ok(l) if l.state == LockState::Running => View::Held { until: l.until },
        _ => View::Done,
    }
}

/// A lock this node holds.
pub struct Held {
    pub key: String,
    pub revision: u64,
    /// The attempt to run first (after a takeover: the holder's next one).
    pub first_attempt: u32,
}

/// The outcome of [`acquire`].
pub enum Acquired {
    /// This node runs the occurrence.
    Mine(Held),
    /// Another node ran it (`done`).
    Theirs,
}

fn value(node: &str, state: LockState, now: i64, attempt: u32) -> bytes::Bytes {
    let l = JobLock {
        node_id: node.to_string(),
        state,
        until: now + LOCK_TTL.as_secs() as i64,
        attempt,
    };
    serde_json::to_vec(&l).expect("a JobLock serializes").into()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Wait until this node holds the lock of `key` or another node finished the occurrence.
/// Errors of the bucket (NATS away) are retried every second; the caller bounds the wait
/// (it is dropped when the run is cancelled).
pub async fn acquire(kv: &kv::Store, key: &str, node: &str) -> Acquired {
    loop {
        let now = unix_now();
        match kv
            .create(key, value(node, LockState::Running, now, 0))
            .await
        {
            Ok(revision) => {
                return Acquired::Mine(Held {
                    key: key.to_string(),
                    revision,
                    first_attempt: 1,
                });
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::debug!(key, error = %e, "job lock: create failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let entry = match kv.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => e,
            // Deleted in between: try to create it again.
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(key, error = %e, "job lock: read failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match view(&entry.value, unix_now()) {
            View::Done => return Acquired::Theirs,
            View::Held { until } => {
                let wait = (until - unix_now() + 1).clamp(1, LOCK_TTL.as_secs() as i64);
                tokio::time::sleep(Duration::from_secs(wait as u64)).await;
            }
            View::Expired { attempt } => {
                let v = value(node, LockState::Running, unix_now(), attempt);
                if let Ok(revision) = kv.update(key, v, entry.revision).await {
                    tracing::info!(key, "job lock: the holder stopped renewing; taking over");
                    return Acquired::Mine(Held {
                        key: key.to_string(),
                        revision,
                        first_attempt: attempt.saturating_add(1).max(1),
                    });
                }
                // Another node took it over first: look again.
            }
        }
    }
}

/// Renew a held lock at `attempt` (or mark it `done`). A failed renewal is logged: the
/// run goes on (another node may take over if the holder is cut off that long).
pub async fn write(kv: &kv::Store, held: &mut Held, node: &str, attempt: u32, done: bool) {
    let state = if done {
        LockState::Done
    } else {
        LockState::Running
    };
    let v = value(node, state, unix_now(), attempt);
    match tokio::time::timeout(LOCK_TTL / 2, kv.update(&held.key, v, held.revision)).await {
        Ok(Ok(rev)) => held.revision = rev,
        Ok(Err(e)) => tracing::warn!(key = %held.key, error = %e, "job lock: cannot renew"),
        Err(_) => tracing::warn!(key = %held.key, "job lock: renewal timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(state: LockState, until: i64, attempt: u32) -> Vec<u8> {
        serde_json::to_vec(&JobLock {
            node_id: "n".into(),
            state,
            until,
            attempt,
        })
        .unwrap()
    }

    #[test]
    fn lock_values_read() {
        assert_eq!(view(&lock(LockState::Done, 0, 1), 100), View::Done);
        assert_eq!(view(&lock(LockState::Done, 500, 1), 100), View::Done);
        assert_eq!(
            view(&lock(LockState::Running, 100, 2), 100),
            View::Held { until: 100 }
        );
        assert_eq!(
            view(&lock(LockState::Running, 99, 2), 100),
            View::Expired { attempt: 2 }
        );
        assert_eq!(view(b"not json", 100), View::Done);
    }
}
