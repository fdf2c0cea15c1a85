//! `[memory]`: a real narund with the default `exec_readaround = false` has advised every
//! mapping of its own binary `MADV_RANDOM` (`rr` in the mapping's `VmFlags` in
//! `/proc/<pid>/smaps`) by the time it heart-beats; with `true` none of them is. Once it has
//! settled (`settle_trim_secs`) it pages its binary out again, which `/proc` shows.
//!
//! The tests run one narund at a time ([`SERIAL`]): `MADV_PAGEOUT` skips pages that another
//! process maps, and every narund here maps the same binary.

use async_nats::jetstream::kv;
use narun_test_support::{Narund, NatsServer, T, buckets, heartbeat, workspace_bin};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The values of the `key:` lines of each mapping of the file `bin` in `/proc/<pid>/smaps`.
fn binary_mapping_fields(pid: u32, bin: &Path, key: &str) -> Vec<String> {
    let meta = std::fs::metadata(bin).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[0].contains('-') && f[3].contains(':') {
            in_bin = f[4].parse::<u64>().ok() == Some(meta.ino())
                && f.get(5).map(Path::new) == Some(bin);
        } else if let Some(v) = line
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .filter(|_| in_bin)
        {
            out.push(v.trim().to_string());
        }
    }
    out
}

/// `VmFlags` of each mapping of the file `bin` in `/proc/<pid>/smaps`.
fn vm_flags_of_mappings(pid: u32, bin: &Path) -> Vec<String> {
    binary_mapping_fields(pid, bin, "VmFlags")
}

/// Resident KiB of the mappings of the file `bin` in `/proc/<pid>/smaps`.
fn resident_kib_of(pid: u32, bin: &Path) -> u64 {
    binary_mapping_fields(pid, bin, "Rss")
        .iter()
        .map(|v| v.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Start narund for `node` with `memory` as its `[memory]` section, wait for its first
/// heartbeat (`main()` trims before the runtime starts, so any heartbeat comes after it), and
/// return the `VmFlags` of its binary's mappings.
async fn flags_with(
    server: &NatsServer,
    states: &kv::Store,
    node: &str,
    memory: &str,
) -> Vec<String> {
    let bin = workspace_bin("narund", "narund", &[]);
    let mut watch = states.watch(node).await.unwrap();
    let mut narund = Narund::start(server, node, &format!("[memory]\n{memory}\n"));
    heartbeat(
        &mut watch,
        &format!("narund's first state ({memory})"),
        |_| true,
    )
    .await;
    let flags = vm_flags_of_mappings(narund.pid() as u32, &bin);
    narund.terminate().await;
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_reads_its_binary_page_by_page_unless_configured_otherwise() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let _one_narund = SERIAL.lock().await;
    let has_rr = |f: &String| f.split_whitespace().any(|x| x == "rr");

    let trimmed = flags_with(&server, &b.states, "mem-default", "").await;
    assert!(
        trimmed.len() >= 2,
        "narund's binary should have text and data mappings: {trimmed:?}"
    );
    assert!(
        trimmed.iter().all(has_rr),
        "with the default every mapping of narund's binary is MADV_RANDOM (rr): {trimmed:?}"
    );

    let kernel = flags_with(
        &server,
        &b.states,
        "mem-readaround",
        "exec_readaround = true",
    )
    .await;
    assert!(kernel.len() >= 2, "{kernel:?}");
    assert!(
        !kernel.iter().any(has_rr),
        "with exec_readaround = true no mapping is MADV_RANDOM: {kernel:?}"
    );
}

/// narund pages its binary out again once nothing has changed for `settle_trim_secs`: right
/// after, less than half of the binary is resident than just before (both read from
/// `/proc/self/smaps` by narund, around its `madvise`; in the debug build here 14 MiB →
/// a few hundred KiB). The test's own look at `/proc/<pid>/smaps` comes later and races with
/// the idle loops faulting their code back in, in read-ahead sized pieces (the debug
/// binary's are spread over 6 MiB within a second), so it is only printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_trims_its_binary_again_once_settled() {
    use tokio::io::AsyncBufReadExt;
    let _one_narund = SERIAL.lock().await;
    let server = NatsServer::start();
    let bin = workspace_bin("narund", "narund", &[]);
    // A freshly linked binary is dirty in the page cache until written back, and reclaim
    // (MADV_PAGEOUT) skips dirty file pages: start from the state of an installed binary.
    std::fs::File::open(&bin).unwrap().sync_all().unwrap();
    let mut narund = Narund::builder(&server, "mem-settle")
        .config("[memory]\nsettle_trim_secs = 1\n")
        .env("NARUND_LOG", "warn,narund::memory=debug")
        .stderr_piped()
        .start();
    let pid = narund.pid() as u32;
    let stderr = tokio::process::ChildStderr::from_std(narund.take_stderr().unwrap()).unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let (before, after, outside) = tokio::time::timeout(T, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("narund's stderr ended before it trimmed");
            if line.contains("trimmed again") {
                let outside = resident_kib_of(pid, &bin);
                let field = |name: &str| -> u64 {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                        .parse()
                        .unwrap()
                };
                return (
                    field("resident_before_kib"),
                    field("resident_after_kib"),
                    outside,
                );
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("narund did not trim within {:?}", T));
    eprintln!(
        "narund's binary: {before} KiB resident before the settle trim, {after} KiB right after \
         it, {outside} KiB when this test looked"
    );
    assert!(
        before >= 256 && after * 2 < before,
        "the settle trim should page out most of the binary: {before} KiB resident before, \
         {after} KiB after"
    );
    narund.terminate().await;
}
