//! The upload progress bar: bytes sent of the total, a bar, the rate and the time left,
//! redrawn in place on stderr at most ten times a second.
//!
//! Shown only when stderr is a terminal (a pipe or a file gets no progress noise, and
//! `--dry-run` uploads nothing). [`Progress`] wraps the file being uploaded and counts
//! what the object store reads from it; the object store sends each chunk as it reads
//! it, so what was read is what was sent, within one chunk (128 KiB).
//!
//! A leaf module: no NATS, no command.

use crate::output::human_size;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

/// Time between two redraws.
const REDRAW: Duration = Duration::from_millis(100);
/// Width of the bar in characters.
const BAR: usize = 24;

/// Whether a progress bar may be drawn: stderr is a terminal.
pub fn wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// An [`AsyncRead`] that draws a progress bar of what has been read from `inner`.
pub struct Progress<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last: Option<Instant>,
    finished: bool,
}

impl<R> Progress<R> {
    /// Count `total` bytes read from `inner`, drawing `label` before the bar.
    pub fn new(inner: R, label: String, total: u64) -> Self {
        Progress {
            inner,
            label,
            total,
            done: 0,
            start: Instant::now(),
            last: None,
            finished: false,
        }
    }

    fn draw(&mut self, now: Instant) {
        self.last = Some(now);
        let line = render(
            &self.label,
            self.done,
            self.total,
            now.duration_since(self.start),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    /// Draw the final state and end the line (once; also called at end of file).
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.draw(Instant::now());
            let _ = writeln!(std::io::stderr());
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Progress<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = buf.filled().len() - before;
            self.done += n as u64;
            let now = Instant::now();
            if n == 0 {
                self.finish();
            } else if self.last.is_none_or(|t| now.duration_since(t) >= REDRAW) {
                self.draw(now);
            }
        }
        res
    }
}

/// `hello-v1-linux-amd64 [=========>    ] 3.2 MiB / 10.0 MiB  31%  12.5 MiB/s  ETA 1s`.
pub fn render(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (frac * BAR as f64).round() as usize;
    let bar: String = (0..BAR)
        .map(|i| match i.cmp(&filled) {
            std::cmp::Ordering::Less => '=',
            std::cmp::Ordering::Equal => '>',
            std::cmp::Ordering::Greater => ' ',
        })
        .collect();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if done >= total {
        "0s".to_string()
    } else if rate > 0.0 {
        crate::output::human_duration(Duration::from_secs_f64(
            ((total - done) as f64 / rate).min(86_400.0 * 365.0),
        ))
    } else {
        "?".to_string()
    };
    format!(
        "{label} [{bar}] {} / {}  {:>3}%  {}/s  ETA {eta}",
        human_size(done),
        human_size(total),
        (frac * 100.0).floor() as u64,
        human_size(rate as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bytes_rate_and_eta() {
        let s = render(
            "obj",
            5 * 1024 * 1024,
            10 * 1024 * 1024,
            Duration::from_secs(1),
        );
        assert_eq!(
            s,
            "obj [============>           ] 5.0 MiB / 10.0 MiB   50%  5.0 MiB/s  ETA 1s"
        );
        let s = render("obj", 0, 100, Duration::ZERO);
        assert!(s.contains("ETA ?") && s.contains("  0%"), "{s}");
        let s = render("obj", 100, 100, Duration::from_millis(10));
        assert!(s.contains("100%") && s.contains("ETA 0s"), "{s}");
        // An empty file is complete at once.
        assert!(render("obj", 0, 0, Duration::ZERO).contains("100%"));
    }
}
