//! The sd_notify server narund runs for each app instance (systemd's protocol, so apps
//! written for `Type=notify` units work unchanged).
//!
//! # Protocol
//!
//! An app finds the socket in `NOTIFY_SOCKET` and sends datagrams of newline-separated
//! `KEY=VALUE` lines (`sd_notify(3)`). narund understands:
//!
//! | key | effect |
//! |---|---|
//! | `READY=1` | `starting` → `running` (only meaningful with `notify: true`); `reloading` → `running` |
//! | `RELOADING=1` | status `reloading` until the next `READY=1` |
//! | `STOPPING=1` | status `stopping` (the app is shutting down on its own); the watchdog is disarmed |
//! | `STATUS=text` | free text, kept in the snapshot and published in status events (`notify_status`) |
//! | `MAINPID=pid` | the pid that receives the stop signal and `SIGABRT`; only accepted if that pid is inside the instance |
//! | `WATCHDOG=1` | watchdog ping |
//! | `WATCHDOG=trigger` | fail the watchdog now (`SIGABRT`, reason `watchdog`) |
//! | `WATCHDOG_USEC=n` | change the watchdog period of this run |
//! | `EXTEND_TIMEOUT_USEC=n` | while starting: the start timeout becomes at least *n* µs from now |
//!
//! Everything else (`ERRNO=`, `FDSTORE=1`, `BARRIER=1`, …) is ignored; file descriptors
//! sent along (`SCM_RIGHTS`) are closed at once.
//!
//! # Who may talk
//!
//! The socket has `SO_PASSCRED` on, so the kernel attaches the sender's pid/uid/gid
//! (`SCM_CREDENTIALS`) to every datagram, whether or not the sender sent credentials
//! itself. A datagram is accepted only when that pid is a member of the instance
//! ([`Membership`]): inside the instance's cgroup (or a cgroup below it), or, on hosts
//! without cgroup v2, the main process or one of its descendants. This is systemd's
//! `NotifyAccess=all` restricted to the service's own processes. A datagram from a
//! process that has exited before narund reads it cannot be attributed and is dropped
//! (the same race exists in systemd without pidfds). Datagrams longer than
//! [`MAX_DATAGRAM`] bytes are dropped whole.
//!
//! # Socket file
//!
//! `<runtime_dir>/instances/<instance>/notify-<run>`: one socket per *run*, because during
//! a replace the old and the new run of an instance live side by side and each must only
//! hear its own processes. The instance directory is owned by the app's user (mode
//! 0700) and so is the socket (0600): the app can connect after dropping privileges,
//! other users cannot. The file is removed when the [`NotifySocket`] is dropped.
//!
//! # Watchdog and `WATCHDOG_PID`
//!
//! narund sets `WATCHDOG_USEC` but not `WATCHDOG_PID`: the environment of a
//! `std::process::Command` is fixed before `fork`, so the child's pid is not known yet,
//! and setting it in `pre_exec` would need `setenv` (not async-signal-safe). Without
//! `WATCHDOG_PID`, libsystemd's `sd_watchdog_enabled()` and the `sd-notify` crate (used by
//! the `narun` app library) accept the watchdog in any process that sees the variable.

use crate::sys::socket::recv_with_credentials;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// Mode of `<runtime_dir>/instances/<instance>/`: root's, enterable by the app (which
/// connects to its socket inside), not listable or writable by anyone else.
pub const SOCKET_DIR_MODE: u32 = 0o711;

/// Longest datagram narund accepts (systemd's limit for notification messages).
pub const MAX_DATAGRAM: usize = 4096;

/// Longest path that fits `sockaddr_un.sun_path` (108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors of setting up a notify socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The socket path does not fit in a unix socket address.
    #[error(
        "notify socket path {path} is {len} bytes, longer than the {MAX_SOCKET_PATH} bytes a unix socket address can hold; set a shorter runtime_dir in narund.toml"
    )]
    PathTooLong { path: PathBuf, len: usize },
    /// A file system or socket call failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub use crate::sys::socket::Credentials;

/// One received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The payload (at most [`MAX_DATAGRAM`] bytes).
    pub data: Vec<u8>,
    /// The sender (always present with `SO_PASSCRED` on Linux).
    pub sender: Option<Credentials>,
    /// The datagram was longer than [`MAX_DATAGRAM`] and must be ignored.
    pub truncated: bool,
}

/// The keys narund acts on, parsed from one datagram. Unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub reloading: bool,
    pub stopping: bool,
    /// `STATUS=` (may be empty: clears the text).
    pub status: Option<String>,
    pub main_pid: Option<i32>,
    /// `WATCHDOG=1`.
    pub watchdog_ping: bool,
    /// `WATCHDOG=trigger`.
    pub watchdog_trigger: bool,
    pub watchdog_usec: Option<u64>,
    pub extend_timeout_usec: Option<u64>,
}

impl Message {
    /// Parse `KEY=VALUE` lines. Lines that are not valid UTF-8, have no `=`, or carry a
    /// value narund does not understand are skipped (systemd does the same).
    pub fn parse(data: &[u8]) -> Message {
        let mut m = Message::default();
        for line in data.split(|b| *b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "READY" => m.ready |= value == "1",
                "RELOADING" => m.reloading |= value == "1",
                "STOPPING" => m.stopping |= value == "1",
                "STATUS" => m.status = Some(value.to_string()),
                "MAINPID" => {
                    if let Some(pid) = value.parse::<i32>().ok().filter(|p| *p > 0) {
                        m.main_pid = Some(pid);
                    }
                }
                "WATCHDOG" => match value {
                    "1" => m.watchdog_ping = true,
                    "trigger" => m.watchdog_trigger = true,
                    _ => {}
                },
                "WATCHDOG_USEC" => {
                    if let Some(u) = value.parse::<u64>().ok().filter(|u| *u > 0) {
                        m.watchdog_usec = Some(u);
                    }
                }
                "EXTEND_TIMEOUT_USEC" => {
                    if let Ok(u) = value.parse::<u64>() {
                        m.extend_timeout_usec = Some(u);
                    }
                }
                _ => {}
            }
        }
        m
    }
}

/// The per-run notify socket (a bound unix datagram socket with `SO_PASSCRED`).
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Bind a socket at `path` (an existing file there is replaced). The parent directory
    /// is created (root's, [`SOCKET_DIR_MODE`]) and the socket is handed to `owner` (uid,
    /// gid) when given, mode 0600, so the app that dropped privileges can still send. Must run inside a tokio runtime.
    pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> Result<NotifySocket, NotifyError> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(NotifyError::PathTooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| NotifyError::Io {
                what,
                path: p,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            // narund's own directory (root's, also when an older narund handed it to the
            // app): the app can enter it but not create, rename or replace anything in it,
            // so the socket below is changed by path safely.
            let fd = crate::sys::beneath::open_dir_nofollow(dir).map_err(io("opening", dir))?;
            if owner.is_some() {
                crate::sys::beneath::fchown(fd.as_fd(), 0, 0).map_err(io("chown", dir))?;
            }
            crate::sys::beneath::fchmod(fd.as_fd(), SOCKET_DIR_MODE).map_err(io("chmod", dir))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing the old socket", path)(e)),
        }
        let sock = UnixDatagram::bind(path).map_err(io("binding", path))?;
        let me = NotifySocket {
            sock,
            path: path.to_path_buf(),
        };
        crate::sys::socket::set_passcred(me.sock.as_fd())
            .map_err(io("setting SO_PASSCRED on", path))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown", path))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", path))?;
        Ok(me)
    }

    /// A datagram that is already queued, without waiting (`None` when there is none).
    /// Used to read what a process sent just before it exited.
    pub fn try_recv(&self) -> io::Result<Option<Datagram>> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        match recv_with_credentials(self.sock.as_fd(), &mut buf) {
            Ok((n, sender, truncated)) => {
                buf.truncate(n);
                Ok(Some(Datagram {
                    data: buf,
                    sender,
                    truncated,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the socket is (the value of the app's `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receive the next datagram with its sender's credentials.
    pub async fn recv(&self) -> io::Result<Datagram> {
        let fd = self.sock.as_fd();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (n, sender, truncated) = self
            .sock
            .async_io(Interest::READABLE, || recv_with_credentials(fd, &mut buf))
            .await?;
        buf.truncate(n);
        Ok(Datagram {
            data: buf,
            sender,
            truncated,
        })
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Which processes belong to an instance (and may therefore notify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Members are the processes in this cgroup (path as in `/proc/<pid>/cgroup`, e.g.
    /// `/narun.apps/narun-hello-0-1a2b`) or in a cgroup below it.
    Cgroup(String),
    /// No cgroup: members are this pid and its descendants.
    Descendants(i32),
}

impl Membership {
    /// The membership of an instance whose main process is `main_pid`. With a cgroup
    /// (`cgroup_path` = its path as `/proc/<pid>/cgroup` shows it) the path is read from
    /// `/proc/<main_pid>/cgroup` (exact, also under cgroup namespaces), or taken from
    /// `cgroup_path` when the process is already gone.
    pub fn of_instance(main_pid: i32, cgroup_path: Option<&str>) -> Membership {
        let Some(path) = cgroup_path else {
            return Membership::Descendants(main_pid);
        };
        Membership::Cgroup(proc_cgroup(main_pid).unwrap_or_else(|| path.to_string()))
    }

    /// Whether `pid` is a member now.
    pub fn contains(&self, pid: i32) -> bool {
        if pid <= 0 {
            return false;
        }
        match self {
            Membership::Cgroup(path) => proc_cgroup(pid).is_some_and(|p| cgroup_within(&p, path)),
            Membership::Descendants(root) => is_descendant(pid, *root),
        }
    }
}

/// `path` is `base` or below it.
pub fn cgroup_within(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base
        || base.is_empty()
        || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// The cgroup v2 path of `pid` (the `0::` line of `/proc/<pid>/cgroup`).
pub fn proc_cgroup(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// The parent pid of `pid` (from `/proc/<pid>/stat`).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid …": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` is `ancestor` or one of its descendants (walks parent pids, at most 256 steps).
pub fn is_descendant(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    for _ in 0..256 {
        if p == ancestor {
            return true;
        }
        match parent_pid(p) {
            Some(pp) if pp > 0 && pp != p => p = pp,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_ignores_the_rest() {
        let m = Message::parse(
            b"READY=1\nSTATUS=serving 3 clients\nFOO=bar\nnoequals\nWATCHDOG=1\nMAINPID=42\nEXTEND_TIMEOUT_USEC=5000000\nWATCHDOG_USEC=2000000",
        );
        assert_eq!(
            m,
            Message {
                ready: true,
                status: Some("serving 3 clients".into()),
                watchdog_ping: true,
                main_pid: Some(42),
                extend_timeout_usec: Some(5_000_000),
                watchdog_usec: Some(2_000_000),
                ..Default::default()
            }
        );
        let m = Message::parse(b"WATCHDOG=trigger\nRELOADING=1\nSTOPPING=1\nMAINPID=-3\nREADY=0");
        assert!(m.watchdog_trigger && m.reloading && m.stopping);
        assert!(!m.ready && m.main_pid.is_none() && !m.watchdog_ping);
        assert_eq!(Message::parse(b"STATUS=\xff\xfe"), Message::default());
        assert_eq!(Message::parse(b"STATUS=").status.as_deref(), Some(""));
    }

    #[test]
    fn cgroup_paths_nest_on_component_boundaries() {
        assert!(cgroup_within("/a/narun-x-0-1", "/a/narun-x-0-1"));
        assert!(cgroup_within("/a/narun-x-0-1/sub", "/a/narun-x-0-1"));
        assert!(!cgroup_within("/a/narun-x-0-10", "/a/narun-x-0-1"));
        assert!(!cgroup_within("/a", "/a/narun-x-0-1"));
    }

    #[test]
    fn descendants_are_found_through_parent_pids() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(is_descendant(pid, me));
        assert!(is_descendant(me, me));
        assert!(!is_descendant(me, pid));
        assert!(Membership::Descendants(me).contains(pid));
        assert!(!Membership::Descendants(pid).contains(me));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn receives_credentials_and_drops_oversized_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inst/notify-1");
        let sock = NotifySocket::bind(&path, None).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nSTATUS=hi", &path).unwrap();
        let d = sock.recv().await.unwrap();
        assert_eq!(Message::parse(&d.data).status.as_deref(), Some("hi"));
        let me = d.sender.expect("SO_PASSCRED gives credentials");
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.uid, crate::sys::process::getuid());
        assert!(!d.truncated);
        client
            .send_to(&vec![b'x'; MAX_DATAGRAM + 1], &path)
            .unwrap();
        assert!(sock.recv().await.unwrap().truncated);
        // Membership by cgroup: we are in our own cgroup.
        if let Some(own) = proc_cgroup(std::process::id() as i32) {
            assert!(Membership::Cgroup(own.clone()).contains(me.pid));
            assert!(!Membership::Cgroup(format!("{own}/not-us")).contains(me.pid));
        }
        drop(sock);
        assert!(!path.exists(), "the socket file is removed on drop");
    }

    #[test]
    fn too_long_paths_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            NotifySocket::bind(&long, None),
            Err(NotifyError::PathTooLong { .. })
        ));
    }
}
