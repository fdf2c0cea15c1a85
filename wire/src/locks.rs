//! Locks and leader elections of the app library (`narun::lock`): what a lock's key in
//! the KV bucket [`crate::jetstream::LOCKS`] holds, and the lease rule.
//!
//! A lock is one key (the lock's name). Taking it is a compare-and-set: `create` when
//! the key is absent or deleted, `update` at the revision last seen otherwise. The
//! holder renews it by writing it again (`update` at its own revision) several times per
//! TTL. Nothing on the server expires it (nats-server < 2.11 has no per-message TTL):
//! a waiter that has seen **no new revision for a whole TTL** takes it over with
//! `update` at that revision, so two waiters cannot both win, and the holder, which has
//! not renewed for that long, has already given it up (see [`lease_valid_for`]).
//! Clocks of different machines are never compared: each side measures time on its own
//! monotonic clock, from its own events.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The value of a held lock (JSON). Informational: who holds it, for how long a silence
/// ends it; the revision, not this value, decides who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Who holds it: `NARUN_INSTANCE_ID@NARUN_NODE_ID`, else `pid@hostname`.
    pub holder: String,
    /// The lease: a holder silent this long has lost it (milliseconds).
    pub ttl_ms: u64,
    /// When it was taken, RFC 3339 (for people reading the bucket).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
    /// Random per holding (per `Lock`): lets a holder recognise its own write whose answer
    /// it did not get (a renewal that timed out on its side but reached the server).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

/// How long after sending a write that the server accepted a holder may act as the
/// holder: the TTL minus a margin of a fifth of it (at least 1 ms short), so that the
/// holder stops before any waiter, which counts the TTL from when it *saw* that write
/// (after the holder sent it), can take over. Assumes clocks run at the same rate
/// within that margin (20 % is far beyond any crystal's drift).
pub fn lease_valid_for(ttl: Duration) -> Duration {
    let margin = (ttl / 5).max(Duration::from_millis(1));
    ttl.saturating_sub(margin)
}

/// How often a holder renews: three times per TTL, so one lost or slow write still
/// leaves two chances before the lease ends.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// Shortest accepted TTL: below it a loaded machine cannot renew in time.
pub const MIN_TTL: Duration = Duration::from_millis(300);

/// A lock name is one KV key: 1 to 256 of `A-Z a-z 0-9 - _ = /` and `.` not at either
/// end nor twice in a row. `None` when valid, else what is wrong.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 256 {
        return Some(format!("lock name {name:?}: 1 to 256 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/' | '.')))
    {
        return Some(format!(
            "lock name {name:?}: {c:?} is not allowed (letters, digits, - _ = / and .)"
        ));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Some(format!(
            "lock name {name:?}: '.' may not start or end it or come twice in a row"
        ));
    }
    None
}

/// The KV key of lock `name` of app `app`: `<app>.<name>`, so every app has its own lock
/// names and a minted app user may write only its own keys ([`app_permissions`]).
/// `None` (not run by narund: no `NARUN_APP_NAME`): the name itself.
pub fn key(app: Option<&str>, name: &str) -> String {
    match app.filter(|a| !a.is_empty()) {
        Some(app) => format!("{app}.{name}"),
        None => name.to_string(),
    }
}

/// What a NATS user of app `app` must be allowed to publish to for `narun::lock` (narund
/// grants these to the users it mints, on JetStream's default API prefix `$JS.API`):
///
/// * `$JS.API.STREAM.INFO.KV_narun-locks`: open the bucket (narund creates it);
/// * `$KV.narun-locks.<app>.>`: take, renew, release **its own** locks (writes to any
///   other key are refused by the server);
/// * `$JS.API.DIRECT.GET.KV_narun-locks.$KV.narun-locks.<app>.>`: read its own locks
///   (a waiter polls the key: see `narun::lock`).
///
/// No `$JS.API.CONSUMER.CREATE…`: nats-server does not check who may publish to a push
/// consumer's delivery subject, so a user allowed to create consumers could have the
/// server deliver stream messages to any subject (another service, narund's control
/// subjects).
///
/// Replies come to the app's own inbox.
pub fn app_permissions(app: &str) -> Vec<String> {
    let bucket = crate::names::LOCKS_BUCKET;
    vec![
        format!("$JS.API.STREAM.INFO.KV_{bucket}"),
        format!("$KV.{bucket}.{app}.>"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{app}.>"),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_per_app_and_permissions_name_only_its_own() {
        assert_eq!(key(Some("web"), "leader"), "web.leader");
        assert_eq!(key(Some(""), "leader"), "leader");
        assert_eq!(key(None, "jobs/x"), "jobs/x");
        assert_eq!(name_problem(&key(Some("web-1"), "a/b.c")), None);
        let p = app_permissions("web");
        assert!(p.contains(&"$KV.narun-locks.web.>".to_string()), "{p:?}");
        // Writes only under the app's prefix; no wildcard that reaches other buckets.
        for s in &p {
            assert!(s.contains("narun-locks"), "{s}");
            assert!(!s.contains("$KV.narun-locks.>"), "{s}");
        }
    }

    use super::*;

    #[test]
    fn the_holder_stops_before_a_waiter_may_take_over() {
        for ms in [1u64, 2, 5, 300, 1_000, 10_000, 86_400_000] {
            let ttl = Duration::from_millis(ms);
            assert!(lease_valid_for(ttl) < ttl || ttl.is_zero(), "{ms}");
            assert!(renew_every(ttl) < lease_valid_for(ttl) || ms < 5, "{ms}");
        }
        assert_eq!(
            lease_valid_for(Duration::from_secs(10)),
            Duration::from_secs(8)
        );
        assert_eq!(renew_every(Duration::from_secs(3)), Duration::from_secs(1));
    }

    #[test]
    fn names_are_kv_keys() {
        for ok in ["leader", "jobs/cron.nightly", "a-b_c=d", &"x".repeat(256)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a*",
            "a>",
            "ä",
            &"x".repeat(257),
        ] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn the_value_is_plain_json() {
        let h = LockHolder {
            holder: "web-0@n1".into(),
            ttl_ms: 5000,
            since: String::new(),
            token: String::new(),
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"holder":"web-0@n1","ttl_ms":5000}"#);
        assert_eq!(serde_json::from_str::<LockHolder>(&json).unwrap(), h);
    }
}
