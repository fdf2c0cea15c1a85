//! SHA-256 of a 256 MiB file through narund's io_uring path vs `sha256sum`, in the same run.
//!
//! ```text
//! cargo run --release -p narund --example hash_bench [-- <dir>]
//! ```
//! The file is written to `<dir>` (default: the system temp dir) and read once before timing, so
//! both contenders hash from the page cache; each is run 3 times and the best time is reported.

use std::io::Write;
use std::time::{Duration, Instant};

use narund::uring::{UringHandle, UringMode};

const SIZE: usize = 256 * 1024 * 1024;
const RUNS: usize = 3;

fn mib_s(d: Duration) -> f64 {
    SIZE as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    let mut x: u64 = 0x0123_4567_89ab_cdef;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..SIZE / block.len() {
        for b in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    let path = file.path().to_path_buf();
    // Warm the page cache.
    std::hint::black_box(std::fs::read(&path)?);

    let uring = UringHandle::start_with(UringMode::Auto);
    let plain = UringHandle::start_with(UringMode::Disabled);
    anyhow::ensure!(
        uring.available(),
        "io_uring unavailable: {:?}",
        uring.unavailable_reason()
    );

    let mut best_uring = Duration::MAX;
    let mut best_plain = Duration::MAX;
    let mut best_sum = Duration::MAX;
    let mut digest = String::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        digest = hex(&uring.hash_file(&path).await?);
        best_uring = best_uring.min(t.elapsed());

        let t = Instant::now();
        let d = hex(&plain.hash_file(&path).await?);
        best_plain = best_plain.min(t.elapsed());
        anyhow::ensure!(d == digest, "fallback digest differs");

        let t = Instant::now();
        let out = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()?;
        best_sum = best_sum.min(t.elapsed());
        anyhow::ensure!(out.status.success(), "sha256sum failed");
        let sum = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(sum.starts_with(&digest), "sha256sum disagrees: {sum}");
    }
    println!(
        "file: {} ({} MiB, page cache warm), best of {RUNS}",
        path.display(),
        SIZE >> 20
    );
    println!("sha256: {digest}");
    println!(
        "io_uring path : {:>8.1} ms  {:>7.1} MiB/s",
        best_uring.as_secs_f64() * 1e3,
        mib_s(best_uring)
    );
    println!(
        "fallback path : {:>8.1} ms  {:>7.1} MiB/s",
        best_plain.as_secs_f64() * 1e3,
        mib_s(best_plain)
    );
    println!(
        "sha256sum     : {:>8.1} ms  {:>7.1} MiB/s",
        best_sum.as_secs_f64() * 1e3,
        mib_s(best_sum)
    );
    println!(
        "ratio io_uring/sha256sum throughput: {:.2} (target >= 0.95)",
        mib_s(best_uring) / mib_s(best_sum)
    );
    Ok(())
}
