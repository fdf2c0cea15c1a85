//! Dynamic users: one uid/gid per app, like systemd's `DynamicUser=`.
//!
//! An app whose spec names no `user`, on a node whose `[apps] default_user` is empty (the
//! default), runs under a uid of its own, so co-tenants cannot read each other's
//! `/proc/<pid>/environ`, work dirs or mounted files:
//!
//! * **From a range**: `[apps] dynamic_uid_range` (default systemd's `[61184, 65519]`), uid ==
//!   gid, no supplementary groups.
//! * **Stable**: the first choice of an app is a hash of its name (FNV-1a, fixed across
//!   builds) into the range, then the next free id (linear probing). The choice is recorded in
//!   `<data_dir>/state/dynamic-users.json` ([`crate::state`]) and reused at every start, also
//!   after narund restarts; two apps never get the same id while the record exists.
//!   Records are never released automatically (work dirs are kept too, and a new app must not
//!   inherit the files of an old one).
//! * **Never a real user**: ids present as a uid in `/etc/passwd` or a gid in `/etc/group`
//!   are skipped; a recorded id that has since appeared there is replaced (with a warning).
//! * **Identity**: `USER`/`LOGNAME` = `narun-<app>` ([`user_name`]), `HOME` = the instance's
//!   work dir (mode 0700, owned by the app's uid).
//!
//! The allocation is pure ([`allocate`]); [`system_ids`] reads the two files. The record
//! lives in the node's local state (`crate::state::Local::dynamic_uid`), which calls
//! [`allocate`] under its lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{AppIdentity, PrivilegeError};

/// systemd's range for dynamic users (`DYNAMIC_UID_MIN..=DYNAMIC_UID_MAX`).
pub const DEFAULT_RANGE: (u32, u32) = (61184, 65519);

/// Prefix of the user name of a dynamic user (`USER`, `LOGNAME`).
pub const USER_PREFIX: &str = "narun-";

/// Why an app has no identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Resolving a named user failed.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// Every id of the range is taken.
    #[error(
        "no free dynamic uid for app {app:?}: all of [apps] dynamic_uid_range {first}..={last} are \
         used by other apps (recorded in {record}) or by /etc/passwd and /etc/group; widen the range \
         in narund.toml, or remove the entries of deleted apps from the record (and their \
         instance dirs) while narund is stopped"
    )]
    Exhausted {
        app: String,
        first: u32,
        last: u32,
        record: PathBuf,
    },
    /// The record could not be written: a later narund might give the id to another app.
    #[error("cannot record the dynamic uid of app {app:?}: {message}")]
    Record { app: String, message: String },
}

/// The user name of app `app`'s dynamic user: `narun-` and the app name with every
/// character outside `[A-Za-z0-9_-]` replaced by `_`, at most 32 bytes (the Linux limit).
pub fn user_name(app: &str) -> String {
    let mut s = String::from(USER_PREFIX);
    s.extend(app.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
    s.truncate(32);
    s
}

/// 64-bit FNV-1a: a hash that is the same in every build and on every architecture.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The id for `app`: its recorded id if that is still in `range`, not used by another
/// recorded app and not in `system`; otherwise the first free id from the hash of its name
/// (linear probing, wrapping in the range). `None` when the range is full.
pub fn allocate(
    app: &str,
    range: (u32, u32),
    recorded: &BTreeMap<String, u32>,
    system: &BTreeSet<u32>,
) -> Option<u32> {
    let (first, last) = range;
    if first > last {
        return None;
    }
    let others: BTreeSet<u32> = recorded
        .iter()
        .filter(|(a, _)| a.as_str() != app)
        .map(|(_, u)| *u)
        .collect();
    let free = |u: u32| !others.contains(&u) && !system.contains(&u);
    if let Some(&u) = recorded.get(app)
        && (first..=last).contains(&u)
        && free(u)
    {
        return Some(u);
    }
    let size = u64::from(last - first) + 1;
    let start = fnv1a(app.as_bytes()) % size;
    (0..size)
        .map(|i| first + ((start + i) % size) as u32)
        .find(|u| free(*u))
}

/// Every uid of `/etc/passwd` and every gid of `/etc/group` (unreadable files count as
/// empty: the ids narund hands out are then still unique among apps).
pub fn system_ids() -> BTreeSet<u32> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    ids_in(&read("/etc/passwd"), &read("/etc/group"))
}

/// The uids (field 3) of passwd text and the gids (field 3) of group text.
pub fn ids_in(passwd: &str, group: &str) -> BTreeSet<u32> {
    passwd
        .lines()
        .chain(group.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(':').nth(2)?.trim().parse().ok())
        .collect()
}

/// The identity of app `app` under dynamic uid `uid`, with `HOME` = `work`.
pub fn identity(app: &str, uid: u32, work: &Path) -> AppIdentity {
    AppIdentity {
        user: user_name(app),
        uid,
        gid: uid,
        home: work.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(a, u)| (a.to_string(), *u)).collect()
    }

    #[test]
    fn stable_and_in_range() {
        let none = BTreeSet::new();
        let a = allocate("web", DEFAULT_RANGE, &BTreeMap::new(), &none).unwrap();
        assert!((61184..=65519).contains(&a));
        assert_eq!(
            allocate("web", DEFAULT_RANGE, &BTreeMap::new(), &none),
            Some(a)
        );
        // The same in every build: FNV-1a of "web" into the default range.
        assert_eq!(a, 61184 + (fnv1a(b"web") % 4336) as u32);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        // A recorded id is kept even if the hash points elsewhere.
        let rec = map(&[("web", 62000)]);
        assert_eq!(allocate("web", DEFAULT_RANGE, &rec, &none), Some(62000));
    }

    #[test]
    fn collisions_probe_linearly_and_wrap() {
        let none = BTreeSet::new();
        let range = (100, 103);
        let want = 100 + (fnv1a(b"b") % 4) as u32;
        let rec = map(&[("a", want)]);
        let got = allocate("b", range, &rec, &none).unwrap();
        assert_eq!(got, if want == 103 { 100 } else { want + 1 });
        // System ids are skipped, recorded ones that became system ids are replaced.
        let sys: BTreeSet<u32> = [want].into();
        let rec = map(&[("b", want)]);
        let got = allocate("b", range, &rec, &sys).unwrap();
        assert_ne!(got, want);
        // A recorded id out of a changed range is replaced.
        let rec = map(&[("b", 5)]);
        assert!((100..=103).contains(&allocate("b", range, &rec, &none).unwrap()));
        // Full range.
        let rec = map(&[("a", 100), ("c", 101), ("d", 102)]);
        let sys: BTreeSet<u32> = [103].into();
        assert_eq!(allocate("b", range, &rec, &sys), None);
        assert_eq!(allocate("b", (5, 4), &BTreeMap::new(), &none), None);
        // One-id range, and the top of u32.
        assert_eq!(allocate("x", (7, 7), &BTreeMap::new(), &none), Some(7));
        let top = (u32::MAX - 1, u32::MAX - 1);
        assert_eq!(
            allocate("x", top, &BTreeMap::new(), &none),
            Some(u32::MAX - 1)
        );
    }

    #[test]
    fn every_app_gets_its_own_id_until_the_range_is_full() {
        let range = (1000, 1099);
        let sys: BTreeSet<u32> = [1000, 1050].into();
        let mut rec = BTreeMap::new();
        for i in 0..98 {
            let app = format!("app{i}");
            let u = allocate(&app, range, &rec, &sys).unwrap();
            assert!(!sys.contains(&u) && !rec.values().any(|v| *v == u));
            rec.insert(app, u);
        }
        assert_eq!(allocate("one-more", range, &rec, &sys), None);
        // Existing apps keep theirs.
        assert_eq!(allocate("app7", range, &rec, &sys), Some(rec["app7"]));
    }

    #[test]
    fn names_and_system_ids() {
        assert_eq!(user_name("web"), "narun-web");
        assert_eq!(user_name("a.b/c d"), "narun-a_b_c_d");
        assert_eq!(user_name(&"x".repeat(100)).len(), 32);
        let ids = ids_in(
            "root:x:0:0::/root:/bin/sh\n# c\nbad\nu:x:61200:5::/:/bin/sh\n",
            "root:x:0:\nsys:x:61300:\n",
        );
        assert_eq!(ids, [0, 61200, 61300].into());
        let id = identity("web", 61999, Path::new("/w"));
        assert_eq!(
            (id.uid, id.gid, id.user.as_str()),
            (61999, 61999, "narun-web")
        );
        assert_eq!(id.home, Path::new("/w"));
    }
}
