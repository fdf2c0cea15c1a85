//! Privileges: narund's own capabilities, and the uid/gid/capabilities an app runs with.
//!
//! narund runs as root because it creates cgroups, changes users and binds to what apps need. Two things
//! keep that power contained:
//!
//! 1. **narund's own bounding set** ([`drop_own_bounding_set`] with [`NARUND_CAPS`]): called first thing in
//!    `main()`, before the tokio runtime starts threads (capabilities are per thread; new threads inherit
//!    them). Nothing narund or its children ever do can regain a dropped capability.
//! 2. **The node's capability policy** ([`grant_capabilities`]): a spec gets a capability only when the node
//!    lists it in `[apps] allowed_capabilities` (default: `CAP_NET_BIND_SERVICE` alone), and a
//!    root-equivalent one ([`ROOT_EQUIVALENT_CAPS`]: it gives root, or power over narund or other apps)
//!    only when the node also says `allow_root = true`. Anything else refuses the start (reason
//!    `capability`, the capability named): a capability is never silently dropped, never granted.
//! 3. **Per app** ([`AppIdentity`] → [`PrivilegePlan`] → [`sys::exec`] in `pre_exec`): the parent resolves the
//!    user from `/etc/passwd` and computes capability masks; the child, between `fork` and `exec`, drops
//!    the bounding set to exactly the granted capabilities, switches uid/gid with no supplementary
//!    groups, keeps exactly the granted capabilities (as *ambient* capabilities, so they survive `exec`
//!    of an ordinary binary), locks the securebits (`NOROOT`, `NO_SETUID_FIXUP`, `KEEP_CAPS_LOCKED`,
//!    `NO_CAP_AMBIENT_RAISE`, each locked: uid 0 and setuid-root binaries gain nothing at `exec`) and
//!    sets `no_new_privs`. An app that runs as root (explicitly, with `allow_root`) has uid 0 but only
//!    its granted capabilities, and cannot regain others.
//! 4. **One identity per app** ([`dynamic`]): an app whose spec names no user, on a node whose
//!    `default_user` is empty (the default), runs under a uid/gid of its own from
//!    `[apps] dynamic_uid_range`, recorded in the data dir, like systemd's `DynamicUser=`.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use narund::privileges::{AppIdentity, PrivilegePlan};
//! use caps::Capability;
//!
//! let who = AppIdentity::resolve(Some("www"), "narun", false)?;
//! let plan = PrivilegePlan::new(&who, &[Capability::CAP_NET_BIND_SERVICE])?;
//! let mut cmd = std::process::Command::new("/usr/bin/web");
//! cmd.env("HOME", &who.home).env("USER", &who.user);
//! // cgroup placement first (needs root), then the privilege drop:
//! // cg.place_command(&mut cmd)?;
//! plan.install(&mut cmd);
//! cmd.spawn()?;
//! # Ok(()) }
//! ```
//!
//! **Owns** narund's own capability bounding set and every app's identity and capabilities.
//! **May call** nothing else in narund; instances install a [`PrivilegePlan`] per start.
//!
//! Why not `Command::uid()/gid()`: std switches the uid *before* running `pre_exec` closures, and by then
//! the permitted set is empty, so ambient capabilities can no longer be raised (EPERM).

use std::io;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use libc::c_int;

use crate::sys;

pub mod dynamic;

/// The capabilities narund keeps in its own bounding set (and therefore the most any app can get).
///
/// | capability | why narund needs it |
/// |---|---|
/// | `CAP_CHOWN` | hand instance work dirs and fetched files to the app's uid/gid |
/// | `CAP_DAC_OVERRIDE` | read/write cgroupfs, the cache and app dirs regardless of their modes |
/// | `CAP_FOWNER` | chmod/utime files it does not own (cache entries, work dirs) |
/// | `CAP_KILL` | signal apps running under other uids |
/// | `CAP_SETUID`, `CAP_SETGID` | switch the child to the app's uid/gid and clear supplementary groups |
/// | `CAP_SETPCAP` | drop bounding-set entries (own start-up and every child) |
/// | `CAP_NET_BIND_SERVICE` | pass on to apps that bind ports < 1024 (and the embedded gateway) |
/// | `CAP_SYS_ADMIN` | namespaces and mounts for isolation (`unshare --net`, `setns`, bind mounts); plain cgroupfs writes only need `CAP_DAC_OVERRIDE` |
/// | `CAP_SYS_RESOURCE` | raise rlimits for apps (e.g. `RLIMIT_NOFILE`) above the hard limit |
pub const NARUND_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_KILL,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_RESOURCE,
];

/// Capabilities that need `allow_root = true` on the node even when `[apps] allowed_capabilities`
/// lists them: each gives root (files, users, the kernel) or power over narund and the other apps.
/// The others (`CAP_NET_BIND_SERVICE`, `CAP_NET_RAW`, `CAP_NET_BROADCAST`, `CAP_IPC_LOCK`,
/// `CAP_SYS_NICE`, `CAP_SYS_RESOURCE`, `CAP_SYS_TIME`, `CAP_SYS_PACCT`, `CAP_SYS_TTY_CONFIG`,
/// `CAP_LEASE`, `CAP_AUDIT_WRITE`, `CAP_AUDIT_READ`, `CAP_SYSLOG`, `CAP_WAKE_ALARM`,
/// `CAP_BLOCK_SUSPEND`) affect the node but do not let an app become root or reach another app.
pub const ROOT_EQUIVALENT_CAPS: &[(&str, &str)] = &[
    (
        "CAP_CHOWN",
        "chown any file, e.g. /etc/shadow or a setuid binary",
    ),
    ("CAP_DAC_OVERRIDE", "read and write any file"),
    (
        "CAP_DAC_READ_SEARCH",
        "read any file (the master key, /etc/shadow) and open any file by handle",
    ),
    ("CAP_FOWNER", "chmod any file"),
    ("CAP_FSETID", "keep setuid/setgid bits on files it changes"),
    ("CAP_KILL", "signal any process: narund and the other apps"),
    ("CAP_SETGID", "become any group"),
    ("CAP_SETUID", "become any user, root included"),
    ("CAP_SETPCAP", "change capability sets and securebits"),
    (
        "CAP_LINUX_IMMUTABLE",
        "change immutable and append-only files",
    ),
    (
        "CAP_NET_ADMIN",
        "reconfigure the node's network, firewall and routes",
    ),
    ("CAP_IPC_OWNER", "use any process's System V IPC objects"),
    ("CAP_SYS_MODULE", "load kernel modules"),
    (
        "CAP_SYS_RAWIO",
        "raw access to devices, I/O ports and memory",
    ),
    ("CAP_SYS_CHROOT", "chroot into a tree of its own making"),
    (
        "CAP_SYS_PTRACE",
        "trace any process: narund and the other apps",
    ),
    (
        "CAP_SYS_ADMIN",
        "mounts, namespaces and most of what root can do",
    ),
    ("CAP_SYS_BOOT", "reboot the node or kexec another kernel"),
    ("CAP_MKNOD", "create device nodes (raw disks, /dev/mem)"),
    ("CAP_AUDIT_CONTROL", "turn kernel auditing off"),
    ("CAP_SETFCAP", "give files capabilities"),
    (
        "CAP_MAC_OVERRIDE",
        "bypass the LSM (SELinux, AppArmor, Smack)",
    ),
    ("CAP_MAC_ADMIN", "change the LSM's policy"),
    (
        "CAP_PERFMON",
        "observe the kernel and other processes with perf",
    ),
    ("CAP_BPF", "load BPF programs into the kernel"),
    (
        "CAP_CHECKPOINT_RESTORE",
        "checkpoint and restore other processes",
    ),
];

/// Why [`ROOT_EQUIVALENT_CAPS`] lists `cap` (`CAP_X` spelling), or `None` if it does not.
pub fn root_equivalent(cap: &str) -> Option<&'static str> {
    ROOT_EQUIVALENT_CAPS
        .iter()
        .find(|(name, _)| *name == cap)
        .map(|(_, why)| *why)
}

/// A capability the node does not grant ([`grant_capabilities`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityRefused {
    /// Not a Linux capability narun knows.
    #[error(
        "capability {cap:?} is not a Linux capability narund knows; remove it from the app spec"
    )]
    Unknown {
        /// As the spec spells it.
        cap: String,
    },
    /// Not in `[apps] allowed_capabilities`.
    #[error(
        "capability {cap} is not allowed on this node (narund.toml [apps] allowed_capabilities = [{allowed}]); \
         remove it from the app spec, or add it to allowed_capabilities on the nodes that should grant it{root}"
    )]
    NotAllowed {
        /// `CAP_X`.
        cap: String,
        /// The node's list, for the message.
        allowed: String,
        /// A note when the capability is root-equivalent.
        root: &'static str,
    },
    /// Root-equivalent, and the node does not allow root apps.
    #[error(
        "capability {cap} is root-equivalent ({why}) and this node does not allow root apps \
         (allow_root = false in narund.toml); remove it from the app spec, or set allow_root = true \
         on the nodes that should grant it"
    )]
    NeedsRoot {
        /// `CAP_X`.
        cap: String,
        /// What it gives.
        why: &'static str,
    },
}

/// The node's capability policy, a pure function: the capabilities of `requested` (a spec's
/// `capabilities`, any spelling) when every one is in `allowed` (narund.toml's
/// `allowed_capabilities`, any spelling) and, if it is root-equivalent ([`ROOT_EQUIVALENT_CAPS`]),
/// `allow_root` is set. The first one that is not is the error; nothing is ever dropped.
pub fn grant_capabilities(
    requested: &[String],
    allowed: &[String],
    allow_root: bool,
) -> std::result::Result<Vec<Capability>, CapabilityRefused> {
    let allowed: Vec<String> = allowed
        .iter()
        .map(|c| narun_spec::normalize_capability(c))
        .collect();
    let mut granted = Vec::with_capacity(requested.len());
    for c in requested {
        let cap = narun_spec::normalize_capability(c);
        let parsed = narun_spec::capability_number(&cap)
            .and_then(|_| cap.parse::<Capability>().ok())
            .ok_or_else(|| CapabilityRefused::Unknown { cap: c.clone() })?;
        let why = root_equivalent(&cap);
        if !allowed.contains(&cap) {
            return Err(CapabilityRefused::NotAllowed {
                cap,
                allowed: allowed.join(", "),
                root: if why.is_some() {
                    " (it is root-equivalent: it also needs allow_root = true)"
                } else {
                    ""
                },
            });
        }
        if let Some(why) = why
            && !allow_root
        {
            return Err(CapabilityRefused::NeedsRoot { cap, why });
        }
        if !granted.contains(&parsed) {
            granted.push(parsed);
        }
    }
    Ok(granted)
}

/// Errors while setting up privileges (all in the parent; `pre_exec` failures surface from `spawn()`).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The user does not exist in `/etc/passwd`.
    #[error(
        "user {user:?} does not exist in {}; create it (e.g. `useradd --system {user}`) or change `user` \
         in the app spec / default_user in narund.toml",
        passwd.display()
    )]
    UnknownUser {
        /// The requested name.
        user: String,
        /// The file searched.
        passwd: PathBuf,
    },
    /// The app would run as uid 0 without being allowed to.
    #[error("refusing to run app as root (uid 0, user {user:?}): {reason}")]
    RootNotAllowed {
        /// The user name that resolved to uid 0.
        user: String,
        /// What to change.
        reason: &'static str,
    },
    /// A requested capability is not in narund's bounding set (or unknown to the kernel).
    #[error(
        "capability {cap} is not available to narund (not in its bounding set, or unknown to this kernel); \
         remove it from the app spec or add it to NARUND_CAPS"
    )]
    CapabilityUnavailable {
        /// The capability.
        cap: Capability,
    },
    /// narund lacks a capability needed to change privileges.
    #[error("narund lacks {cap} ({what}); run narund as root")]
    NotPrivileged {
        /// The missing capability.
        cap: Capability,
        /// What it was needed for.
        what: &'static str,
    },
    /// Reading a file failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A capability call failed.
    #[error("{what}: {source}")]
    Caps {
        /// What narund was doing.
        what: String,
        /// The error from the `caps` crate.
        source: caps::errors::CapsError,
    },
    /// A raw syscall failed.
    #[error("{what}: {source}")]
    Os {
        /// What narund was doing.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

type Result<T, E = PrivilegeError> = std::result::Result<T, E>;

fn caps_err(what: impl Into<String>) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    let what = what.into();
    move |source| PrivilegeError::Caps { what, source }
}

/// Highest capability number the running kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn cap_last_cap() -> Result<c_int> {
    let p = Path::new("/proc/sys/kernel/cap_last_cap");
    let text = std::fs::read_to_string(p).map_err(|source| PrivilegeError::Read {
        path: p.into(),
        source,
    })?;
    text.trim().parse().map_err(|_| PrivilegeError::Read {
        path: p.into(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// Bit mask (bit n = capability n) of a capability list.
pub fn mask_of(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// Restrict the **calling thread** (call it in `main()` before any thread exists) to `keep`:
///
/// * bounding set = `keep` (every other capability `0..=cap_last_cap` is dropped for good),
/// * effective = permitted = `keep ∩ permitted`, inheritable and ambient cleared.
///
/// Returns the mask of capabilities removed from the bounding set. Without `CAP_SETPCAP` (narund not
/// started as root) this is [`PrivilegeError::NotPrivileged`]; the caller may decide to continue.
pub fn drop_own_bounding_set(keep: &[Capability]) -> Result<u64> {
    let last = cap_last_cap()?;
    let keep_mask = mask_of(keep);
    let mut dropped = 0u64;
    let mut needs_drop = false;
    for cap in 0..=last.min(63) {
        if keep_mask & (1u64 << cap) == 0 && bounding_has(cap) {
            needs_drop = true;
        }
    }
    if needs_drop
        && !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(caps_err("read effective capabilities"))?
    {
        return Err(PrivilegeError::NotPrivileged {
            cap: Capability::CAP_SETPCAP,
            what: "needed to drop capabilities from the bounding set",
        });
    }
    for cap in 0..=last.min(63) {
        if keep_mask & (1u64 << cap) != 0 || !bounding_has(cap) {
            continue;
        }
        if let Err(source) = sys::process::capbset_drop(cap) {
            return Err(PrivilegeError::Os {
                what: format!("PR_CAPBSET_DROP capability {cap}"),
                source,
            });
        }
        dropped |= 1u64 << cap;
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("read permitted"))?;
    let keep_set: CapsHashSet = keep.iter().copied().collect();
    let new: CapsHashSet = permitted.intersection(&keep_set).copied().collect();
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, &new).map_err(caps_err("set effective"))?;
    caps::set(None, CapSet::Permitted, &new).map_err(caps_err("set permitted"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clear inheritable"))?;
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clear ambient"))?;
    }
    Ok(dropped)
}

fn bounding_has(cap: c_int) -> bool {
    sys::process::capbset_read(cap)
}

/// One `/etc/passwd` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: libc::uid_t,
    /// Primary group id.
    pub gid: libc::gid_t,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
}

/// Parse one `name:passwd:uid:gid:gecos:home:shell` line (`None` for comments, NIS `+` lines, garbage).
pub fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    let f: Vec<&str> = line.trim_end_matches(['\n', '\r']).split(':').collect();
    if f.len() < 7 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_owned(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
        shell: f[6].to_owned(),
    })
}

/// Find `user` in passwd text: by name, or, if `user` is all digits, by uid.
pub fn lookup_passwd(text: &str, user: &str) -> Option<PasswdEntry> {
    let entries = || text.lines().filter_map(parse_passwd_line);
    entries().find(|e| e.name == user).or_else(|| {
        let uid: libc::uid_t = user.parse().ok()?;
        entries().find(|e| e.uid == uid)
    })
}

/// The user an app runs as, resolved in the parent (never inside `pre_exec`: no file I/O or allocation
/// is allowed there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppIdentity {
    /// User name (for `USER`/`LOGNAME`).
    pub user: String,
    /// User id.
    pub uid: libc::uid_t,
    /// Primary group id; supplementary groups are always cleared.
    pub gid: libc::gid_t,
    /// Home directory (for `HOME`).
    pub home: PathBuf,
}

impl AppIdentity {
    /// Resolve from `/etc/passwd`.
    ///
    /// * `user`: the app spec's `user` (`None` or `""` = not set).
    /// * `default_user`: narund.toml's user for apps that do not name one.
    /// * `allow_root`: node policy; even then uid 0 is used only when the spec names that user itself.
    pub fn resolve(
        user: Option<&str>,
        default_user: &str,
        allow_root: bool,
    ) -> Result<AppIdentity> {
        let path = Path::new("/etc/passwd");
        let text = std::fs::read_to_string(path).map_err(|source| PrivilegeError::Read {
            path: path.into(),
            source,
        })?;
        Self::resolve_in(&text, path, user, default_user, allow_root)
    }

    /// [`resolve`](Self::resolve) over given passwd text (`path` only for messages).
    pub fn resolve_in(
        passwd: &str,
        path: &Path,
        user: Option<&str>,
        default_user: &str,
        allow_root: bool,
    ) -> Result<AppIdentity> {
        let explicit = user.filter(|u| !u.is_empty());
        let name = explicit.unwrap_or(default_user);
        let entry = lookup_passwd(passwd, name).ok_or_else(|| PrivilegeError::UnknownUser {
            user: name.to_owned(),
            passwd: path.into(),
        })?;
        if entry.uid == 0 {
            if explicit.is_none() {
                return Err(PrivilegeError::RootNotAllowed {
                    user: entry.name,
                    reason: "the default user must not be root; apps run as root only when their \
                             spec says user = \"root\"",
                });
            }
            if !allow_root {
                return Err(PrivilegeError::RootNotAllowed {
                    user: entry.name,
                    reason: "this node does not allow root apps (allow_root = false in narund.toml)",
                });
            }
        }
        Ok(AppIdentity {
            user: entry.name,
            uid: entry.uid,
            gid: entry.gid,
            home: entry.home,
        })
    }
}

/// Everything the privilege drop in `pre_exec` ([`sys::exec::drop_privileges_in_pre_exec`]) needs,
/// computed in the parent. `Copy`, no heap: safe to move into a `pre_exec` closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivilegePlan {
    /// Target uid (all of real/effective/saved).
    pub uid: libc::uid_t,
    /// Target gid (all of real/effective/saved).
    pub gid: libc::gid_t,
    /// Capabilities kept (bit n = capability n): bounding, permitted, effective, inheritable, ambient.
    pub keep_caps: u64,
    /// Highest capability number of the running kernel.
    pub cap_last_cap: c_int,
}

impl PrivilegePlan {
    /// Plan for `identity` keeping `keep`. Checks in the parent that narund can do it: every kept
    /// capability must be in the calling thread's bounding set, and narund must hold `CAP_SETUID`,
    /// `CAP_SETGID` and `CAP_SETPCAP`.
    pub fn new(identity: &AppIdentity, keep: &[Capability]) -> Result<PrivilegePlan> {
        let last = cap_last_cap()?;
        let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read bounding set"))?;
        for cap in keep {
            if c_int::from(cap.index()) > last || !bounding.contains(cap) {
                return Err(PrivilegeError::CapabilityUnavailable { cap: *cap });
            }
        }
        let effective = caps::read(None, CapSet::Effective).map_err(caps_err("read effective"))?;
        for (cap, what) in [
            (
                Capability::CAP_SETPCAP,
                "needed to drop the app's bounding set",
            ),
            (Capability::CAP_SETUID, "needed to switch the app's uid"),
            (
                Capability::CAP_SETGID,
                "needed to switch the app's gid and groups",
            ),
        ] {
            if !effective.contains(&cap) {
                return Err(PrivilegeError::NotPrivileged { cap, what });
            }
        }
        Ok(PrivilegePlan {
            uid: identity.uid,
            gid: identity.gid,
            keep_caps: mask_of(keep),
            cap_last_cap: last,
        })
    }

    /// Register the privilege drop ([`sys::exec::drop_privileges_in_pre_exec`]) of this plan on
    /// `cmd`. Register cgroup placement *before* this (it needs the parent's privileges);
    /// `pre_exec` closures run in registration order. For tokio use `cmd.as_std_mut()`.
    pub fn install(self, cmd: &mut std::process::Command) {
        sys::exec::drop_privileges_before_exec(
            cmd,
            self.uid,
            self.gid,
            self.keep_caps,
            self.cap_last_cap,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# comment
+nisuser::::::
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
broken:x:notanumber:1:x:/:/bin/sh
";

    fn resolve(user: Option<&str>, default: &str, allow_root: bool) -> Result<AppIdentity> {
        AppIdentity::resolve_in(PASSWD, Path::new("/etc/passwd"), user, default, allow_root)
    }

    #[test]
    fn passwd_parsing() {
        let e = lookup_passwd(PASSWD, "www").unwrap();
        assert_eq!((e.uid, e.gid), (33, 33));
        assert_eq!(e.home, Path::new("/var/www"));
        assert_eq!(lookup_passwd(PASSWD, "65534").unwrap().name, "nobody");
        assert!(lookup_passwd(PASSWD, "broken").is_none());
        assert!(lookup_passwd(PASSWD, "+nisuser").is_none());
        assert!(lookup_passwd(PASSWD, "ghost").is_none());
    }

    #[test]
    fn resolution_rules() {
        assert_eq!(resolve(None, "nobody", false).unwrap().uid, 65534);
        assert_eq!(resolve(Some(""), "nobody", false).unwrap().uid, 65534);
        assert_eq!(resolve(Some("www"), "nobody", false).unwrap().uid, 33);
        assert_eq!(resolve(Some("root"), "nobody", true).unwrap().uid, 0);
        // Root only when named by the spec, and only if the node allows it.
        let e = resolve(None, "root", true).unwrap_err();
        assert!(e.to_string().contains("default user"), "{e}");
        let e = resolve(Some("root"), "nobody", false).unwrap_err();
        assert!(e.to_string().contains("allow_root"), "{e}");
        let e = resolve(Some("ghost"), "nobody", true).unwrap_err();
        assert!(
            e.to_string().contains("\"ghost\"") && e.to_string().contains("/etc/passwd"),
            "{e}"
        );
    }

    fn names(caps: &[&str]) -> Vec<String> {
        caps.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn capability_policy_for_every_capability() {
        for (n, cap) in narun_spec::CAPABILITIES.iter().enumerate() {
            let parsed: Capability = cap.parse().unwrap();
            assert_eq!(usize::from(parsed.index()), n, "{cap}");
            let root_eq = root_equivalent(cap).is_some();
            let spellings = [
                cap.to_string(),
                cap.trim_start_matches("CAP_").to_ascii_lowercase(),
            ];
            for requested in &spellings {
                for listed in &spellings {
                    for allow_root in [false, true] {
                        let requested = std::slice::from_ref(requested);
                        // Listed (in any spelling), alone or among others.
                        for allowed in [
                            vec![listed.clone()],
                            vec!["CAP_NET_BIND_SERVICE".into(), listed.clone()],
                        ] {
                            let got = grant_capabilities(requested, &allowed, allow_root);
                            if root_eq && !allow_root {
                                let e = got.unwrap_err();
                                assert!(
                                    matches!(&e, CapabilityRefused::NeedsRoot { cap: c, .. } if c == cap),
                                    "{e}"
                                );
                                let msg = e.to_string();
                                assert!(msg.contains(cap) && msg.contains("allow_root"), "{msg}");
                            } else {
                                assert_eq!(got, Ok(vec![parsed]), "{cap} {allow_root}");
                            }
                        }
                        // Not listed: refused whatever allow_root says.
                        let others: Vec<String> = narun_spec::CAPABILITIES
                            .iter()
                            .filter(|c| *c != cap)
                            .map(|c| c.to_string())
                            .collect();
                        for allowed in [vec![], others] {
                            let e =
                                grant_capabilities(requested, &allowed, allow_root).unwrap_err();
                            assert!(
                                matches!(&e, CapabilityRefused::NotAllowed { cap: c, .. } if c == cap),
                                "{e}"
                            );
                            let msg = e.to_string();
                            assert!(
                                msg.contains(&format!("capability {cap} is not allowed"))
                                    && msg.contains("allowed_capabilities"),
                                "{msg}"
                            );
                            assert_eq!(msg.contains("root-equivalent"), root_eq, "{msg}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn root_equivalent_capabilities() {
        let listed: Vec<&str> = ROOT_EQUIVALENT_CAPS.iter().map(|(c, _)| *c).collect();
        for cap in &listed {
            assert!(narun_spec::capability_number(cap).is_some(), "{cap}");
        }
        for cap in [
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_SYS_ADMIN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_CHOWN",
            "CAP_SYS_PTRACE",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_BPF",
            "CAP_SETPCAP",
            "CAP_SETFCAP",
            "CAP_MKNOD",
            "CAP_SYS_BOOT",
            "CAP_MAC_ADMIN",
            "CAP_MAC_OVERRIDE",
            "CAP_LINUX_IMMUTABLE",
            "CAP_PERFMON",
            "CAP_CHECKPOINT_RESTORE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_NET_ADMIN",
        ] {
            assert!(listed.contains(&cap), "{cap}");
        }
        for cap in ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_NICE"] {
            assert!(!listed.contains(&cap), "{cap}");
        }
        let mut dedup = listed.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), listed.len());
    }

    #[test]
    fn capability_policy_lists() {
        let default = names(&["CAP_NET_BIND_SERVICE"]);
        assert_eq!(grant_capabilities(&[], &default, false), Ok(vec![]));
        assert_eq!(grant_capabilities(&[], &[], false), Ok(vec![]));
        // Duplicates are granted once; the first refused one is named.
        assert_eq!(
            grant_capabilities(
                &names(&["net_bind_service", "CAP_NET_BIND_SERVICE"]),
                &default,
                false
            ),
            Ok(vec![Capability::CAP_NET_BIND_SERVICE])
        );
        let e = grant_capabilities(
            &names(&["CAP_NET_BIND_SERVICE", "CAP_SETUID"]),
            &default,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("capability CAP_SETUID is not allowed on this node")
                && e.contains("[CAP_NET_BIND_SERVICE]"),
            "{e}"
        );
        let e = grant_capabilities(&names(&["CAP_NOPE"]), &default, true).unwrap_err();
        assert!(matches!(e, CapabilityRefused::Unknown { .. }), "{e}");
        let e = grant_capabilities(&names(&["CAP_SETUID"]), &names(&["CAP_SETUID"]), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CAP_SETUID is root-equivalent (become any user, root included)"),
            "{e}"
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask_of(&[Capability::CAP_NET_BIND_SERVICE]), 0x400);
        assert_eq!(mask_of(&[]), 0);
        assert_eq!(NARUND_CAPS.len(), 10);
    }
}
