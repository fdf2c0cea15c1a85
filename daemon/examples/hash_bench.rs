//! SHA-256 of a 256 MiB file through narund's io_uring path vs `openssl dgst -sha256` (the
//! hardware's speed: SHA-NI / ARMv8 crypto) and `sha256sum`, in the same run.
//!
//! ```text
//! cargo run --release -p narund --example hash_bench [-- <dir>]
//! ```
//! The file is written to `<dir>` (default: the system temp dir) and read once before timing, so
//! every contender hashes from the page cache; they take turns for 5 rounds and the medians
//! are reported, with the CPU time each used.

use std::io::Write;
use std::time::{Duration, Instant};

use narund::uring::{UringHandle, UringMode};

const SIZE: usize = 256 * 1024 * 1024;
const RUNS: usize = 5;

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

    // Alternating rounds; each contender's median (and CPU time per run: RUSAGE_SELF for
    // narund's paths, RUSAGE_CHILDREN for the spawned tools).
    let mut times: [Vec<Duration>; 4] = Default::default();
    let mut cpu: [Duration; 4] = [Duration::ZERO; 4];
    let mut digest = String::new();
    for _ in 0..RUNS {
        let c = cpu_time(libc::RUSAGE_SELF);
        let t = Instant::now();
        digest = hex(&uring.hash_file(&path).await?);
        times[0].push(t.elapsed());
        cpu[0] += cpu_time(libc::RUSAGE_SELF) - c;

        let c = cpu_time(libc::RUSAGE_SELF);
        let t = Instant::now();
        let d = hex(&plain.hash_file(&path).await?);
        times[1].push(t.elapsed());
        cpu[1] += cpu_time(libc::RUSAGE_SELF) - c;
        anyhow::ensure!(d == digest, "fallback digest differs");

        for (i, tool) in [
            (2, &["openssl", "dgst", "-sha256", "-r"][..]),
            (3, &["sha256sum"][..]),
        ] {
            let c = cpu_time(libc::RUSAGE_CHILDREN);
            let t = Instant::now();
            let out = std::process::Command::new(tool[0])
                .args(&tool[1..])
                .arg(&path)
                .output()?;
            times[i].push(t.elapsed());
            cpu[i] += cpu_time(libc::RUSAGE_CHILDREN) - c;
            anyhow::ensure!(out.status.success(), "{} failed", tool[0]);
            let sum = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(sum.starts_with(&digest), "{} disagrees: {sum}", tool[0]);
        }
    }
    println!(
        "file: {} ({} MiB, page cache warm), {RUNS} alternating rounds, medians",
        path.display(),
        SIZE >> 20
    );
    println!("sha256: {digest}");
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let names = [
        "io_uring path ",
        "fallback path ",
        "openssl dgst  ",
        "sha256sum     ",
    ];
    let mut med = [Duration::ZERO; 4];
    for i in 0..4 {
        med[i] = median(&mut times[i]);
        println!(
            "{} : {:>8.1} ms  {:>7.1} MiB/s  CPU {:>7.1} ms/run",
            names[i],
            med[i].as_secs_f64() * 1e3,
            mib_s(med[i]),
            cpu[i].as_secs_f64() * 1e3 / RUNS as f64
        );
    }
    println!(
        "ratio io_uring/openssl throughput: {:.2} (target >= 0.9: the hardware's speed)",
        mib_s(med[0]) / mib_s(med[2])
    );
    println!(
        "ratio by CPU time, openssl/io_uring: {:.2} (the same under load from other processes)",
        cpu[2].as_secs_f64() / cpu[0].as_secs_f64()
    );
    println!(
        "ratio io_uring/sha256sum throughput: {:.2} (coreutils has no SHA-NI/ARMv8 path)",
        mib_s(med[0]) / mib_s(med[3])
    );
    Ok(())
}

/// User + system CPU time of this process (`RUSAGE_SELF`) or its waited-for children.
fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
