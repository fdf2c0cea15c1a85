//! Orphans: narund is a *child subreaper* ([`become_subreaper`]): when an app double-forks
//! and the middle process exits, the grandchild is re-parented to narund instead of PID 1
//! (which on some devices does not reap). [`spawn_reaper`] reaps those orphans. It must
//! never reap a child that tokio's `Child::wait` is waiting for (the exit status would be
//! lost), so it only reaps zombies whose pid is not in `TRACKED`; a pid enters that set
//! while the set's lock is held around `spawn` ([`super::process::Kernel`]), so no window
//! exists where a direct child is untracked, and leaves it once it was waited for.

use std::sync::Mutex;
use std::time::Duration;

/// Pids of the children tokio is waiting for (never reaped by [`reap_orphans`]).
pub(crate) static TRACKED: Mutex<std::collections::BTreeSet<i32>> =
    Mutex::new(std::collections::BTreeSet::new());

/// Make narund a child subreaper: orphaned descendants are re-parented to narund (and
/// reaped by [`spawn_reaper`]) instead of PID 1.
pub fn become_subreaper() -> std::io::Result<()> {
    crate::sys::process::set_child_subreaper()
}

/// Reap zombie children that are not tracked (orphans re-parented to us). Returns how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    let tracked = TRACKED.lock().unwrap();
    let mut reaped = 0;
    // Fast path: ask the kernel which child has exited (without reaping it). None: nothing
    // to do (the idle case, which used to read every /proc/<pid>/stat of the machine every
    // 5 s). An untracked one: an orphan, reap it and ask again. A tracked one: tokio reaps
    // it, but it may hide orphans behind it: scan /proc as before.
    loop {
        match crate::sys::process::peek_exited_child() {
            None => return reaped,
            Some(pid) if !tracked.contains(&pid) => {
                if crate::sys::process::waitpid_nohang(pid).is_none() {
                    break; // gone meanwhile (cannot happen while we hold TRACKED): scan
                }
                reaped += 1;
            }
            Some(_) => break,
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if tracked.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may contain spaces and parens; split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(me) {
            // A specific zombie child of ours that nobody else waits for.
            if crate::sys::process::waitpid_nohang(pid).is_some() {
                reaped += 1;
            }
        }
    }
    reaped
}

/// Reap orphans on every SIGCHLD until `stop` (several children exiting together may raise
/// one SIGCHLD: each pass reaps every zombie there is, so nothing waits for a timer). With
/// a `beat`, the loop answers [`crate::liveness`]'s asks at its wait; the reaping itself is
/// declared as bounded work. No SIGCHLD stream: a pass every [`REAP_EVERY`].
pub fn spawn_reaper(
    beat: Option<crate::liveness::Beat>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    crate::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut chld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGCHLD stream; reaping every 5 s");
                None
            }
        };
        loop {
            let wait = async {
                match &mut chld {
                    Some(s) => {
                        let _ = s.recv().await;
                    }
                    None => tokio::time::sleep(REAP_EVERY).await,
                }
            };
            let asked = async {
                match &beat {
                    Some(b) => b.asked().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = asked => {
                    if let Some(b) = &beat {
                        b.beat();
                    }
                    continue;
                }
                _ = stop.cancelled() => return,
            }
            let _busy = beat
                .as_ref()
                .map(|b| b.busy("reaping orphans", Duration::from_secs(30)));
            let n = tokio::task::spawn_blocking(reap_orphans).await.unwrap_or(0);
            if n > 0 {
                tracing::debug!(n, "reaped orphaned processes");
            }
        }
    })
}

/// Wait of the orphan reaper between two passes when narund has no SIGCHLD stream.
pub const REAP_EVERY: Duration = Duration::from_secs(5);
