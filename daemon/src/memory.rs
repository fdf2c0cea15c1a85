//! narund's own memory footprint: keep only the pages of its binary that it runs resident.
//!
//! # Why
//!
//! Most of narund's resident memory is not memory it allocated: it is the pages of its own
//! executable file, mapped from the page cache. When a process faults on a page of a file
//! mapping that is not cached yet, the kernel does not read just that page: it reads a whole
//! window around it (*read-around*, `read_ahead_kb` of the block device: 128 KiB on a typical
//! eMMC, 8 MiB on the project's build VM) and maps up to 64 KiB of already cached neighbours on
//! every later fault (*fault-around*), whole large folios on recent kernels. The dynamic loader
//! faults on the binary before `main()` even runs (relocations), so on the project machine one
//! fault read the whole 6 MB file and every code path narund ever took mapped its neighbours:
//! 4.5 of 4.6 MiB of the binary were resident although narund executes a fraction of it.
//!
//! # What [`trim_exec_mappings`] does
//!
//! Once, at start-up (before the async runtime starts its threads), for the mappings of
//! narund's own executable file (found in `/proc/self/smaps` by the device and inode of
//! `/proc/self/exe`, or by its path):
//!
//! 1. `madvise(MADV_RANDOM)` on each of them: from now on a fault reads only the page that
//!    is touched (`rr` in the mapping's `VmFlags`), no read-around.
//! 2. `posix_fadvise(POSIX_FADV_DONTNEED)` on the file: drops the pages the read-around put
//!    in the page cache that nobody maps.
//! 3. `madvise(MADV_PAGEOUT)` on the mappings that hold no anonymous (copy-on-write) pages,
//!    i.e. text and read-only data, not the relocated RELRO or `.data`: the kernel unmaps
//!    and reclaims the clean pages only narund maps.
//!
//! After that, narund faults back in, page by page, exactly what it executes and reads. These
//! are real savings, not accounting: the pages leave the page cache too (unless another
//! process maps them). The cost is that the working set is read again from storage as single
//! pages, at start-up (measured in `docs/benchmarks.md`). Nothing is ever written: the pages
//! are clean copies of the file, so a later fault just reads them again.
//!
//! Steps 2 and 3 are best effort: a kernel without `MADV_PAGEOUT` (older than 5.4) or a file
//! in tmpfs (no backing store) keeps the pages, and the report says so.
//!
//! Configured by `[memory] exec_readaround` (see [`MemoryConfig`]).

use crate::sys::mm::Advice;
use serde::Deserialize;
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `[memory]`: narund's own memory footprint.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Let the kernel read narund's binary ahead on page faults (its default behaviour).
    /// `false` (default): at start-up narund limits faults on its own binary to the page
    /// touched and drops what was read ahead so far ([`trim_exec_mappings`]), so only the
    /// code it runs stays resident; and it trims again whenever it has settled
    /// ([`trim_when_settled`]).
    pub exec_readaround: bool,
    /// Seconds without any instance changing state after which narund trims its binary's
    /// pages again (the code of start-up, of a deploy, of a restart leaves); 0 = only at
    /// start-up. Ignored with `exec_readaround = true`.
    pub settle_trim_secs: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            exec_readaround: false,
            settle_trim_secs: DEFAULT_SETTLE_TRIM_SECS,
        }
    }
}

/// Default of `[memory] settle_trim_secs`.
pub const DEFAULT_SETTLE_TRIM_SECS: u64 = 10;

/// At most one settle trim per this long: an app in a crash loop changes state every few
/// seconds to minutes, and each trim costs a few dozen single-page reads of the working set.
pub const MIN_TRIM_GAP: Duration = Duration::from_secs(60);

/// Apply `[memory]` at start-up: unless `exec_readaround` is set, [`trim_exec_mappings`] and
/// log what it did (failures are warnings: narund runs the same, with more pages resident).
pub fn apply(config: &MemoryConfig) {
    if config.exec_readaround {
        tracing::debug!("memory.exec_readaround = true: the kernel reads narund's binary ahead");
        return;
    }
    match trim_exec_mappings() {
        Ok(r) => {
            let fadvise = r.fadvise.as_ref().err();
            let pageout = r.pageout.as_ref().err();
            if fadvise.is_some() || pageout.is_some() {
                tracing::warn!(
                    fadvise = fadvise.map(String::as_str),
                    pageout = pageout.map(String::as_str),
                    "could not drop the binary's read-ahead pages; narund keeps them resident"
                );
            }
            tracing::debug!(
                mappings = r.mappings,
                mapped_kib = r.mapped_bytes / 1024,
                resident_before_kib = r.resident_before_kib,
                resident_after_kib = r.resident_after_kib,
                "binary read page by page from now on (MADV_RANDOM), read-ahead pages dropped"
            );
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot limit read-ahead on narund's binary; more of it stays resident \
             (set [memory] exec_readaround = true to silence this)"
        ),
    }
}

/// Trim again once narund has settled: `settle_trim_secs` after the last instance state
/// change (start-up's own starts included), and again after every later burst of changes
/// (a deploy, a restart, a crash), at most once per [`MIN_TRIM_GAP`]. Returns when `stop`
/// turns true; does nothing with `exec_readaround = true` or `settle_trim_secs = 0`.
///
/// Why: the start-up trim runs before narund has done anything, so the code of its first
/// reconcile (fetching, verifying, spawning, cgroup set-up, the KV replay, JSON of every
/// spec) faults back in, together with the kernel's read-ahead around it, and then stays
/// mapped although an idle narund never runs it again. `MADV_PAGEOUT` gives those pages
/// back; what the idle loops run (timers, heartbeat, pings) faults in again as single
/// pages. `changed` resolves on every instance state change
/// ([`Node::changed`](crate::node::Node::changed)); a change that happens
/// while a trim runs (milliseconds) may be missed, so the pages it touched stay until the
/// next settle.
pub async fn trim_when_settled<F, Fut>(config: MemoryConfig, changed: F, stop: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    if config.exec_readaround || config.settle_trim_secs == 0 {
        return;
    }
    let quiet = Duration::from_secs(config.settle_trim_secs);
    on_settled(quiet, MIN_TRIM_GAP, changed, stop, || async {
        match tokio::task::spawn_blocking(trim_exec_mappings).await {
            Ok(Ok(r)) => {
                tracing::debug!(
                    resident_before_kib = r.resident_before_kib,
                    resident_after_kib = r.resident_after_kib,
                    pageout = ?r.pageout,
                    "settled: pages of narund's binary trimmed again"
                );
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "settled: cannot trim narund's binary; not trying again");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "settled: trim task failed");
                true
            }
        }
    })
    .await
}

/// Run `act` each time `changed` has not resolved for `quiet` (the start counts as a
/// change), at most once per `min_gap`, until `stop` turns true or `act` returns false.
async fn on_settled<F, Fut, A, AFut>(
    quiet: Duration,
    min_gap: Duration,
    mut changed: F,
    stop: CancellationToken,
    mut act: A,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
    A: FnMut() -> AFut,
    AFut: Future<Output = bool>,
{
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        // Settling: until nothing changed for `quiet`.
        loop {
            tokio::select! {
                _ = changed() => continue,
                _ = tokio::time::sleep(quiet) => break,
                _ = stop.cancelled() => return,
            }
        }
        if let Some(at) = last {
            tokio::select! {
                _ = tokio::time::sleep_until(at + min_gap) => {}
                _ = stop.cancelled() => return,
            }
        }
        last = Some(tokio::time::Instant::now());
        if !act().await {
            return;
        }
        // Settled: nothing to do until the next change.
        tokio::select! {
            _ = changed() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One mapping of the executable, as read from `/proc/self/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Anonymous (copy-on-write) pages in the mapping, KiB: relocated data, never paged out.
    anonymous_kib: u64,
    rss_kib: u64,
}

/// What [`trim_exec_mappings`] did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimReport {
    /// Mappings of the executable advised `MADV_RANDOM`.
    pub mappings: usize,
    /// Their total size, bytes.
    pub mapped_bytes: u64,
    /// Resident pages of the executable's mappings before, KiB.
    pub resident_before_kib: u64,
    /// The same, read again right after the pageout (what the other threads fault back in
    /// meanwhile included), KiB; `None` when `/proc/self/smaps` could not be read again.
    pub resident_after_kib: Option<u64>,
    /// Whether the page cache of the file was dropped (`posix_fadvise`); the error otherwise.
    pub fadvise: Result<(), String>,
    /// Mappings given to `MADV_PAGEOUT`; the error when the kernel refused.
    pub pageout: Result<usize, String>,
}

/// Restrict page faults on narund's own executable to the touched page and drop what was
/// read ahead so far; see the [module documentation](self).
///
/// Call it early and once, while the process is single-threaded (not required for
/// correctness: every step is safe with other threads running, they just refault).
///
/// # Errors
///
/// When `/proc/self/exe` or `/proc/self/smaps` cannot be read, no mapping of the executable
/// is found, or `madvise(MADV_RANDOM)` fails. The later, best-effort steps report their
/// errors in the [`TrimReport`] instead.
pub fn trim_exec_mappings() -> io::Result<TrimReport> {
    let exe = std::fs::metadata("/proc/self/exe")?;
    let exe_path = std::fs::read_link("/proc/self/exe")?;
    let (major, minor) = (libc::major(exe.dev()), libc::minor(exe.dev()));
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mappings = exe_mappings(&smaps, major, minor, exe.ino(), &exe_path.to_string_lossy());
    if mappings.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no mapping of {} (device {major}:{minor}, inode {}) in /proc/self/smaps",
                exe_path.display(),
                exe.ino()
            ),
        ));
    }
    let mut report = TrimReport {
        mappings: mappings.len(),
        mapped_bytes: mappings.iter().map(|m| (m.end - m.start) as u64).sum(),
        resident_before_kib: mappings.iter().map(|m| m.rss_kib).sum(),
        resident_after_kib: None,
        fadvise: Ok(()),
        pageout: Ok(0),
    };
    for m in &mappings {
        advise(m, Advice::Random)?;
    }
    report.fadvise = drop_file_cache().map_err(|e| e.to_string());
    let mut paged = 0;
    for m in mappings.iter().filter(|m| m.anonymous_kib == 0) {
        if let Err(e) = advise(m, Advice::PageOut) {
            report.pageout = Err(e.to_string());
            return Ok(report);
        }
        paged += 1;
    }
    report.pageout = Ok(paged);
    report.resident_after_kib = std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .map(|smaps| {
            exe_mappings(&smaps, major, minor, exe.ino(), &exe_path.to_string_lossy())
                .iter()
                .map(|m| m.rss_kib)
                .sum()
        });
    Ok(report)
}

/// `madvise` on the whole of one mapping. Anonymous pages are excluded from
/// [`Advice::PageOut`] by the caller (they would go to swap, not be lost, but there is
/// nothing to gain).
fn advise(m: &Mapping, advice: Advice) -> io::Result<()> {
    crate::sys::mm::madvise(m.start, m.end - m.start, advice).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "madvise({}) on {:#x}-{:#x}: {e}",
                match advice {
                    Advice::Random => "MADV_RANDOM",
                    Advice::PageOut => "MADV_PAGEOUT",
                },
                m.start,
                m.end
            ),
        )
    })
}

/// Drop the executable's cached pages that no process maps.
fn drop_file_cache() -> io::Result<()> {
    use std::os::fd::AsFd;
    let f = std::fs::File::open("/proc/self/exe")?;
    crate::sys::mm::fadvise_dontneed(f.as_fd())
}

/// The mappings of the file `(major:minor, inode)` or `path` in the text of `/proc/<pid>/smaps`.
///
/// A header line is `start-end perms offset major:minor inode   path` (addresses and device
/// numbers in hex, the inode in decimal); the lines after it, up to the next header, are
/// `Key: value kB` fields of that mapping. Both the file identity and the path are matched:
/// on overlayfs the kernel may show the underlying file's device and inode, and a binary
/// replaced by an upgrade shows its path with ` (deleted)`.
fn exe_mappings(smaps: &str, major: u32, minor: u32, inode: u64, path: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        if let Some(h) = parse_header(line) {
            out.extend(current.take());
            let same_file = h.inode == inode && h.dev == (major, minor);
            let name = h.path.strip_suffix(" (deleted)").unwrap_or(h.path);
            if h.inode != 0 && (same_file || name == path) {
                current = Some(Mapping {
                    start: h.start,
                    end: h.end,
                    anonymous_kib: 0,
                    rss_kib: 0,
                });
            }
        } else if let Some(m) = current.as_mut() {
            let kib = |v: &str| {
                v.split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            if let Some(v) = line.strip_prefix("Anonymous:") {
                m.anonymous_kib = kib(v);
            } else if let Some(v) = line.strip_prefix("Rss:") {
                m.rss_kib = kib(v);
            }
        }
    }
    out.extend(current);
    out
}

/// The header line of one mapping in `/proc/<pid>/smaps` (or a line of `maps`).
#[derive(Debug)]
struct Header<'a> {
    start: usize,
    end: usize,
    /// (major, minor) of the file's device; (0, 0) for anonymous memory.
    dev: (u32, u32),
    /// 0 for anonymous memory.
    inode: u64,
    /// File path, `[heap]`, `[stack]`, … or empty.
    path: &'a str,
}

/// `start-end perms offset major:minor inode path` → [`Header`]; `None` for the
/// `Key: value` lines of smaps.
fn parse_header(line: &str) -> Option<Header<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (range, _perms, _offset, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = inode.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(Header {
        start,
        end,
        dev,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `on_settled` with paused time: changes at the given offsets (ms from the start),
    /// quiet 1 s, min gap 60 s; returns when `act` ran, in ms from the start.
    async fn settle_times(changes: &[u64], run_for: Duration) -> Vec<u64> {
        use std::sync::{Arc, Mutex};
        let t0 = tokio::time::Instant::now();
        let notify = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        let stop_rx = stop.clone();
        let acted = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (notify, acted) = (notify.clone(), acted.clone());
            tokio::spawn(async move {
                on_settled(
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                    move || {
                        let n = notify.clone();
                        async move { n.notified().await }
                    },
                    stop_rx,
                    move || {
                        acted.lock().unwrap().push(t0.elapsed().as_millis() as u64);
                        async { true }
                    },
                )
                .await
            })
        };
        for &at in changes {
            tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
            notify.notify_waiters();
        }
        tokio::time::sleep_until(t0 + run_for).await;
        stop.cancel();
        task.await.unwrap();
        Arc::try_unwrap(acted).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn settling_waits_for_quiet_after_the_last_change() {
        // Start counts as a change: trimmed 1 s in.
        assert_eq!(settle_times(&[], Duration::from_secs(5)).await, vec![1000]);
        // Changes every 500 ms until 3 s: one trim, 1 s after the last.
        assert_eq!(
            settle_times(
                &[500, 1000, 1500, 2000, 2500, 3000],
                Duration::from_secs(10)
            )
            .await,
            vec![4000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn later_bursts_trim_again_but_at_most_once_per_gap() {
        // Trim at 1 s; a change at 5 s settles at 6 s but waits for the gap (61 s); a
        // change at 130 s settles at 131 s, past the next gap (121 s).
        assert_eq!(
            settle_times(&[5_000, 130_000], Duration::from_secs(200)).await,
            vec![1_000, 61_000, 131_000]
        );
        // No change after the first trim: nothing more.
        assert_eq!(
            settle_times(&[], Duration::from_secs(300)).await,
            vec![1000]
        );
    }

    const SMAPS: &str = "\
55968034f000-559680513000 r--p 00000000 fd:01 1234      /usr/bin/narund
Size:               1808 kB
Rss:                 676 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
559680513000-5596808ff000 r-xp 001c4000 fd:01 1234      /usr/bin/narund
Rss:                3632 kB
Anonymous:             0 kB
5596808ff000-559680941000 r--p 005b0000 fd:01 1234      /usr/bin/narund
Rss:                 264 kB
Anonymous:           264 kB
5596aa050000-5596aa08f000 rw-p 00000000 00:00 0          [heap]
Rss:                 148 kB
Anonymous:           148 kB
7f7deb764000-7f7deb78a000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 152 kB
Anonymous:             0 kB
";

    #[test]
    fn finds_the_executable_mappings_by_device_and_inode() {
        let m = exe_mappings(SMAPS, 0xfd, 1, 1234, "/elsewhere");
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!((m[0].start, m[0].end), (0x55968034f000, 0x559680513000));
        assert_eq!(m[1].rss_kib, 3632);
        assert_eq!((m[2].anonymous_kib, m[2].rss_kib), (264, 264));
    }

    #[test]
    fn finds_them_by_path_when_the_device_differs_and_after_deletion() {
        // overlayfs: another device and inode, same path.
        assert_eq!(
            exe_mappings(SMAPS, 0x0, 0x2a, 7, "/usr/bin/narund").len(),
            3
        );
        let deleted = SMAPS.replace("/usr/bin/narund", "/usr/bin/narund (deleted)");
        assert_eq!(exe_mappings(&deleted, 0, 0, 7, "/usr/bin/narund").len(), 3);
        // Neither matches: nothing (the heap's inode 0 never matches).
        assert!(exe_mappings(SMAPS, 0xfd, 1, 0, "").is_empty());
    }

    #[test]
    fn trims_the_test_binary_itself() {
        let report = trim_exec_mappings().expect("trim the test binary's own mappings");
        assert!(report.mappings >= 2, "{report:?}");
        // The advice is visible to the kernel: every mapping of this executable now has
        // `rr` (VM_RAND_READ) in its VmFlags.
        let exe = std::fs::metadata("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut flagged = 0;
        let mut in_exe = false;
        for line in smaps.lines() {
            if let Some(h) = parse_header(line) {
                in_exe = h.inode == exe.ino()
                    && h.dev == (libc::major(exe.dev()), libc::minor(exe.dev()));
            } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| in_exe) {
                assert!(
                    flags.split_whitespace().any(|f| f == "rr"),
                    "mapping without rr: {flags}"
                );
                flagged += 1;
            }
        }
        assert_eq!(flagged, report.mappings);
    }
}
