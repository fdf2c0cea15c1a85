//! Locks and leader election over NATS KV: [`lock`], [`try_lock`], [`Lock`].
//!
//! One key per lock in the bucket `narun-locks` (created on first use). Taking a lock is
//! a compare-and-set on the key's revision; the holder renews its lease several times
//! per TTL; a waiter that sees no new revision for a whole TTL takes the lock over, again
//! by compare-and-set, so exactly one waiter wins. The rule and why it never lets two
//! holders act at once are in [`narun_wire::locks`]. Leader election is the same thing:
//! every replica calls [`lock`]; the one that returns leads until [`Lock::lost`]
//! resolves or it calls [`Lock::release`].
//!
//! ```no_run
//! # async fn demo(nats: async_nats::Client) -> Result<(), narun::LockError> {
//! use std::time::Duration;
//! loop {
//!     let leader = narun::lock(&nats, "report-writer", Duration::from_secs(5)).await?;
//!     tokio::select! {
//!         _ = leader.lost() => continue, // someone else leads now: stop, then wait again
//!         _ = async { /* the leader's work */ } => {}
//!     }
//!     leader.release().await?;
//!     break;
//! }
//! # Ok(()) }
//! ```
//!
//! A holder that dies (crash, SIGKILL, power loss) stops renewing: a waiter takes over
//! one TTL after the last renewal it saw. A holder cut off from NATS stops acting as the
//! holder ([`Lock::is_held`] false, [`Lock::lost`] resolves) before anyone can take over.
//! A lease is counted on the monotonic and the wall clock (`Lease`): a holder waking from
//! a suspend longer than its lease is not the holder until a renewal succeeds.
//! [`Lock::release`] lets a renewal on the wire finish before it deletes, and recognises
//! its own late writes by the random token in the value.
//! The app's NATS user must be allowed to use the KV bucket `narun-locks`.
//!
//! **Lock names are per app.** Under narund (`NARUN_APP_NAME` set) lock `leader` of app
//! `web` is the key `web.leader`: apps never contend for each other's locks, and the NATS
//! user narund mints for an app may write only its own keys
//! ([`narun_wire::locks::app_permissions`]). Outside narund the key is the name itself.
//! [`lock_in`] / [`try_lock_in`] name the app explicitly.

use async_nats::jetstream::{self, kv};
use narun_wire::jetstream::LOCKS;
use narun_wire::locks::{LockHolder, MIN_TTL, key, lease_valid_for, name_problem, renew_every};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound of each single NATS/JetStream request made here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest TTL accepted (from us or read from a holder's value).
const MAX_TTL: Duration = Duration::from_secs(3600);

/// Why a lock could not be taken or released.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The name or TTL is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The bucket `narun-locks` could not be opened or created.
    #[error("opening the lock bucket {bucket}: {reason} (is JetStream enabled, and may this app's NATS user use it?)", bucket = narun_wire::names::LOCKS_BUCKET)]
    Bucket { reason: String },
    /// A KV request failed or timed out.
    #[error("lock {name}: {what}: {reason}")]
    Kv {
        name: String,
        what: &'static str,
        reason: String,
    },
}

/// A held lock (a lease). Renewed in the background while it lives; dropping it stops
/// the renewal (the lock then ends one TTL later), [`Lock::release`] frees it at once.
#[derive(Debug)]
pub struct Lock {
    name: String,
    /// The KV key (`<app>.<name>`, or the name).
    key: String,
    store: kv::Store,
    /// `Some(until)`: held until then unless renewed; `None`: lost or released.
    valid: watch::Receiver<Option<Lease>>,
    /// How often [`Lock::lost`] looks at the wall clock (a suspend stops the monotonic one).
    recheck: Duration,
    /// The revision of our last write (for the release).
    revision: watch::Receiver<u64>,
    /// Our value's [`LockHolder::token`].
    token: String,
    /// Tells the renewer to stop after the write it may have on the wire.
    stop: watch::Sender<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

/// Take the lock `name` of this app (`NARUN_APP_NAME`, see the module docs) with a lease
/// of `ttl`, waiting as long as another holder keeps it.
pub async fn lock(nats: &async_nats::Client, name: &str, ttl: Duration) -> Result<Lock, LockError> {
    lock_key(nats, name, &key(this_app().as_deref(), name), ttl).await
}

/// Take the lock `name` of this app if nobody holds it now; `Ok(None)` when someone does.
pub async fn try_lock(
    nats: &async_nats::Client,
    name: &str,
    ttl: Duration,
) -> Result<Option<Lock>, LockError> {
    try_lock_key(nats, name, &key(this_app().as_deref(), name), ttl).await
}

/// [`lock`] for the lock `name` of app `app` (key `<app>.<name>`), whatever
/// `NARUN_APP_NAME` says.
pub async fn lock_in(
    nats: &async_nats::Client,
    app: &str,
    name: &str,
    ttl: Duration,
) -> Result<Lock, LockError> {
    lock_key(nats, name, &key(Some(app), name), ttl).await
}

/// [`try_lock`] for the lock `name` of app `app` (key `<app>.<name>`).
pub async fn try_lock_in(
    nats: &async_nats::Client,
    app: &str,
    name: &str,
    ttl: Duration,
) -> Result<Option<Lock>, LockError> {
    try_lock_key(nats, name, &key(Some(app), name), ttl).await
}

/// The app narund runs this process as (`NARUN_APP_NAME`), if any.
fn this_app() -> Option<String> {
    std::env::var(narun_wire::names::env::APP_NAME)
        .ok()
        .filter(|a| !a.is_empty())
}

async fn lock_key(
    nats: &async_nats::Client,
    name: &str,
    key: &str,
    ttl: Duration,
) -> Result<Lock, LockError> {
    let store = open(nats, name, key, ttl).await?;
    loop {
        if let Some(l) = try_create(&store, name, key, ttl).await? {
            return Ok(l);
        }
        if let Some(l) = wait_and_take_over(&store, name, key, ttl).await? {
            return Ok(l);
        }
    }
}

async fn try_lock_key(
    nats: &async_nats::Client,
    name: &str,
    key: &str,
    ttl: Duration,
) -> Result<Option<Lock>, LockError> {
    let store = open(nats, name, key, ttl).await?;
    try_create(&store, name, key, ttl).await
}

impl Lock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Still the holder: the lease was renewed recently enough that nobody can have
    /// taken over.
    pub fn is_held(&self) -> bool {
        self.valid.borrow().is_some_and(|l| l.valid())
    }

    /// Resolves when the lock is lost: the lease ran out without a renewal (NATS
    /// unreachable, this process stalled) or someone else holds it. Stop acting as the
    /// holder then.
    pub async fn lost(&self) {
        let mut valid = self.valid.clone();
        let mut renewer_gone = false;
        loop {
            let Some(lease) = *valid.borrow_and_update() else {
                return;
            };
            if !lease.valid() {
                return;
            }
            // Wake at the end of the lease, and every `recheck` for the wall clock: after
            // a suspend the monotonic clock has not moved, the wall clock has.
            let wake = lease.until.min(Instant::now() + self.recheck);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                changed = valid.changed(), if !renewer_gone => {
                    // The renewer ended without a verdict: nothing renews any more; wait
                    // for the lease to run out.
                    renewer_gone = changed.is_err();
                }
            }
        }
    }

    /// Give the lock up now: stop renewing and delete the key at our revision (a waiter
    /// takes it at once). Deleting a lock already taken over changes nothing.
    ///
    /// A renewal already on the wire is waited for first (it would otherwise move the
    /// revision under the delete and leave the lock held for a TTL); a renewal the server
    /// applied although its answer never came is recognised by our token in the value.
    pub async fn release(mut self) -> Result<(), LockError> {
        let _ = self.stop.send(true);
        if tokio::time::timeout(REQUEST_TIMEOUT, &mut self.renewer)
            .await
            .is_err()
        {
            self.renewer.abort();
        }
        let mut revision = *self.revision.borrow();
        for _ in 0..2 {
            let res = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.store.delete_expect_revision(&self.key, Some(revision)),
            )
            .await;
            let err = match res {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => kv_error(&self.name, "releasing", e),
                Err(_) => timeout_error(&self.name, "releasing"),
            };
            // The delete is refused when the key moved on: our own late write (delete at
            // its revision), or someone else's now (nothing of ours to delete). The
            // refusal has no error kind of its own: look.
            match tokio::time::timeout(REQUEST_TIMEOUT, self.store.entry(&self.key)).await {
                Ok(Ok(Some(e))) if e.revision != revision => {
                    if e.operation == kv::Operation::Put && token_of(&e.value) == self.token {
                        revision = e.revision;
                        continue;
                    }
                    return Ok(());
                }
                Ok(Ok(None)) => return Ok(()),
                _ => return Err(err),
            }
        }
        Err(kv_error(
            &self.name,
            "releasing",
            "the key kept moving under the delete",
        ))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn kv_error(name: &str, what: &'static str, e: impl std::fmt::Display) -> LockError {
    LockError::Kv {
        name: name.to_string(),
        what,
        reason: e.to_string(),
    }
}

fn timeout_error(name: &str, what: &'static str) -> LockError {
    kv_error(name, what, format!("no answer within {REQUEST_TIMEOUT:?}"))
}

async fn open(
    nats: &async_nats::Client,
    name: &str,
    key: &str,
    ttl: Duration,
) -> Result<kv::Store, LockError> {
    if let Some(p) = name_problem(name) {
        return Err(LockError::Invalid(p));
    }
    if let Some(p) = name_problem(key) {
        return Err(LockError::Invalid(format!("lock {name} of this app: {p}")));
    }
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(LockError::Invalid(format!(
            "lock {name}: ttl {ttl:?} is outside {MIN_TTL:?}..={MAX_TTL:?}"
        )));
    }
    let js = jetstream::new(nats.clone());
    LOCKS.ensure(&js).await.map_err(|e| LockError::Bucket {
        reason: e.to_string(),
    })
}

/// Who we are, for the lock's value.
fn holder() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        env(narun_wire::names::env::INSTANCE_ID),
        env(narun_wire::names::env::NODE_ID),
    ) {
        (Some(i), Some(n)) => format!("{i}@{n}"),
        _ => format!(
            "pid {}@{}",
            std::process::id(),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        ),
    }
}

/// How long a holder may act as the holder: until `until` on the monotonic clock and
/// `wall_until` on the wall clock, both counted from when the last accepted write was
/// sent. The monotonic clock alone stands still while the machine is suspended: a holder
/// that wakes after a suspend longer than the TTL would believe it still holds the lock
/// although a waiter may have taken it over; the wall clock went on. A wall clock stepped
/// forward (NTP) ends a lease early (safe); one stepped back changes nothing (the
/// monotonic bound still holds).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Lease {
    until: Instant,
    wall_until: std::time::SystemTime,
}

impl Lease {
    /// The lease of a write sent at `sent` (both clocks read then), for a lock of `ttl`.
    fn of(sent: (Instant, std::time::SystemTime), ttl: Duration) -> Lease {
        let d = lease_valid_for(ttl);
        Lease {
            until: sent.0 + d,
            wall_until: sent.1 + d,
        }
    }

    fn valid_at(&self, now: (Instant, std::time::SystemTime)) -> bool {
        now.0 < self.until && now.1 < self.wall_until
    }

    fn valid(&self) -> bool {
        self.valid_at(now())
    }
}

/// Both clocks, now.
fn now() -> (Instant, std::time::SystemTime) {
    (Instant::now(), std::time::SystemTime::now())
}

/// A fresh [`LockHolder::token`].
fn new_token() -> String {
    nuid::next().to_string()
}

/// The token in a lock's value (empty when it has none).
fn token_of(value: &[u8]) -> String {
    serde_json::from_slice::<LockHolder>(value)
        .map(|h| h.token)
        .unwrap_or_default()
}

fn value(ttl: Duration, token: &str) -> bytes::Bytes {
    let v = LockHolder {
        token: token.to_string(),
        holder: holder(),
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        since: narun_wire::events::now_rfc3339(),
    };
    serde_json::to_vec(&v).unwrap_or_default().into()
}

async fn try_create(
    store: &kv::Store,
    name: &str,
    key: &str,
    ttl: Duration,
) -> Result<Option<Lock>, LockError> {
    let sent = now();
    let token = new_token();
    match tokio::time::timeout(REQUEST_TIMEOUT, store.create(key, value(ttl, &token))).await {
        Ok(Ok(revision)) => Ok(Some(held(
            store.clone(),
            name,
            key,
            ttl,
            (revision, token),
            sent,
        ))),
        Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Ok(Err(e)) => Err(kv_error(name, "taking", e)),
        Err(_) => Err(timeout_error(name, "taking")),
    }
}

/// Look at the key until it is deleted (`Ok(None)`: try to create it again) or stays
/// unchanged for its holder's TTL (take it over).
///
/// It polls the key with a direct get (a quarter of the holder's TTL apart, 25 ms to
/// 500 ms) rather than watching it: a watch needs a JetStream consumer, and the NATS user
/// narund mints for an app may not create consumers (nats-server does not check who may
/// publish to a consumer's delivery subject, so that permission would let an app publish
/// anywhere; docs/security.md). Seeing a renewal up to one poll late only delays a
/// take-over: the waiter counts the holder's TTL from when it saw the write.
async fn wait_and_take_over(
    store: &kv::Store,
    name: &str,
    key: &str,
    ttl: Duration,
) -> Result<Option<Lock>, LockError> {
    // The last revision seen, and when it stops protecting its holder.
    let mut seen: Option<(u64, Instant)> = None;
    loop {
        let entry = tokio::time::timeout(REQUEST_TIMEOUT, store.entry(key))
            .await
            .map_err(|_| timeout_error(name, "reading"))?
            .map_err(|e| kv_error(name, "reading", e))?;
        let e = match entry {
            Some(e) if e.operation == kv::Operation::Put => e,
            // Deleted, purged or gone: try to create it again.
            _ => return Ok(None),
        };
        // The holder's own TTL decides (a short-TTL waiter must not steal a long lease),
        // bounded like ours.
        let theirs = serde_json::from_slice::<LockHolder>(&e.value)
            .map(|h| Duration::from_millis(h.ttl_ms))
            .unwrap_or(ttl)
            .clamp(MIN_TTL, MAX_TTL);
        let now_at = Instant::now();
        match seen {
            Some((revision, _)) if revision == e.revision => {}
            _ => seen = Some((e.revision, now_at + theirs)),
        }
        let (revision, expiry) = seen.expect("set above");
        if now_at >= expiry {
            let sent = now();
            let token = new_token();
            match tokio::time::timeout(
                REQUEST_TIMEOUT,
                store.update(key, value(ttl, &token), revision),
            )
            .await
            {
                Ok(Ok(r)) => {
                    tracing::info!(lock = name, "took over a lock whose holder went silent");
                    return Ok(Some(held(store.clone(), name, key, ttl, (r, token), sent)));
                }
                // Someone else was first: the next look shows the new revision.
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => seen = None,
                Ok(Err(e)) => return Err(kv_error(name, "taking over", e)),
                Err(_) => seen = None,
            }
            continue;
        }
        let poll = (theirs / 4).clamp(Duration::from_millis(25), Duration::from_millis(500));
        tokio::time::sleep(poll.min(expiry.saturating_duration_since(now_at))).await;
    }
}

/// A lock just written at `revision` with our `token` (the write was sent at `sent`):
/// start renewing.
fn held(
    store: kv::Store,
    name: &str,
    key: &str,
    ttl: Duration,
    (revision, token): (u64, String),
    sent: (Instant, std::time::SystemTime),
) -> Lock {
    let (valid_tx, valid) = watch::channel(Some(Lease::of(sent, ttl)));
    let (rev_tx, rev_rx) = watch::channel(revision);
    let (stop, mut stopped) = watch::channel(false);
    let renewer = {
        let (store, name, key) = (store.clone(), name.to_string(), key.to_string());
        let token = token.clone();
        tokio::spawn(async move {
            let mut revision = revision;
            loop {
                // A release stops the renewer here, never in the middle of a write.
                tokio::select! {
                    _ = tokio::time::sleep(renew_every(ttl)) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                let until = valid_tx.borrow().map_or_else(Instant::now, |l| l.until);
                let sent = now();
                let left = until.saturating_duration_since(sent.0);
                let res =
                    tokio::time::timeout(left, store.update(&key, value(ttl, &token), revision))
                        .await;
                match res {
                    Ok(Ok(r)) if Instant::now() < until => {
                        revision = r;
                        let _ = rev_tx.send(r);
                        let _ = valid_tx.send(Some(Lease::of(sent, ttl)));
                    }
                    Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        // Our own earlier renewal whose answer timed out may have moved
                        // the revision: then it is still ours, renew at that revision
                        // next turn (the lease stays counted from the last answer).
                        let current = tokio::time::timeout(
                            until.saturating_duration_since(Instant::now()),
                            store.entry(&key),
                        )
                        .await;
                        if let Ok(Ok(Some(e))) = current
                            && e.operation == kv::Operation::Put
                            && token_of(&e.value) == token
                            && Instant::now() < until
                        {
                            revision = e.revision;
                            let _ = rev_tx.send(revision);
                            continue;
                        }
                        tracing::warn!(lock = %name, "lock lost: someone else holds it");
                        let _ = valid_tx.send(None);
                        return;
                    }
                    _ if Instant::now() >= until => {
                        tracing::warn!(lock = %name, "lock lost: its lease ran out before a renewal got through");
                        let _ = valid_tx.send(None);
                        return;
                    }
                    // A failed write with time left: try again at the next turn.
                    _ => {}
                }
            }
        })
    };
    Lock {
        name: name.to_string(),
        key: key.to_string(),
        store,
        valid,
        recheck: renew_every(ttl),
        revision: rev_rx,
        token,
        stop,
        renewer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn a_lease_ends_on_either_clock() {
        let ttl = Duration::from_secs(10);
        let sent = (Instant::now(), SystemTime::now());
        let lease = Lease::of(sent, ttl);
        let d = lease_valid_for(ttl);
        assert!(lease.valid_at(sent));
        assert!(lease.valid_at((sent.0 + d / 2, sent.1 + d / 2)));
        // A stalled process: the monotonic clock went on.
        assert!(!lease.valid_at((sent.0 + d, sent.1 + d / 2)));
        // A suspend: the monotonic clock stood still, the wall clock went on.
        assert!(!lease.valid_at((sent.0 + Duration::from_millis(1), sent.1 + ttl * 100)));
        // A wall clock stepped back: the monotonic bound still ends it.
        assert!(!lease.valid_at((sent.0 + d, sent.1 - ttl)));
    }
}
