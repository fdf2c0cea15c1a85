//! io_uring on a dedicated thread, with a plain-read fallback.
//!
//! `tokio-uring` brings its own current-thread runtime and panics when started inside another tokio
//! runtime, and its files and buffers are `!Send`. narund runs on the multi-thread tokio runtime, so
//! io_uring lives on **one dedicated OS thread** ("narund-uring") and the rest of the daemon talks to
//! it through tokio channels, which work across runtimes:
//!
//! ```text
//!  tokio worker ──Job (mpsc)──▶ narund-uring thread (tokio_uring runtime)
//!        ▲                         │ read_at(256 KiB) ...
//!        └──── chunks (mpsc) ◀─────┘
//! ```
//!
//! [`UringHandle::start`] probes io_uring once: it builds the tokio-uring runtime (which calls
//! `io_uring_setup`) and submits a no-op (which calls `io_uring_enter`). Either can fail with
//! `ENOSYS` (old kernel), `EPERM` (`/proc/sys/kernel/io_uring_disabled`, a container seccomp
//! profile) and so on. When the probe fails, or `NARUND_DISABLE_IO_URING=1` is set, every
//! operation uses ordinary reads instead and [`UringHandle::available`] reports `false` (narund puts
//! it into the node state). Callers never need to care which path ran: both give the same results.
//!
//! Operations:
//! * [`UringHandle::hash_file`]: SHA-256 of a file. The uring thread reads 256 KiB chunks with two
//!   reads in flight and ships them to the caller, which hashes them, so reading and hashing overlap
//!   on two cores. Buffers are recycled, nothing is allocated per chunk.
//! * [`UringHandle::read_pipe`]: a child's stdout/stderr pipe as a stream of byte chunks.
//!   `read_at(buf, 0)` works on pipes (the offset is ignored for non-seekable files).

use std::fs::File as StdFile;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::sys;

/// Environment variable that forces the plain-read fallback (`1`, `true` or `yes`).
pub const DISABLE_ENV: &str = "NARUND_DISABLE_IO_URING";

/// Size of one file read when hashing.
pub const HASH_CHUNK: usize = 256 * 1024;

/// Size of one pipe read. A pipe holds 64 KiB by default, so one read drains it.
pub const PIPE_CHUNK: usize = 64 * 1024;

/// How many file reads are in flight at once while hashing.
const READS_IN_FLIGHT: usize = 2;

/// Whether to try io_uring at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringMode {
    /// Probe io_uring and use it when it works (unless [`DISABLE_ENV`] is set).
    Auto,
    /// Never use io_uring (the fallback paths only).
    Disabled,
}

/// A cheap, cloneable handle to the io_uring thread (or to the fallback).
///
/// The thread stops when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct UringHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `Some` when io_uring works; jobs go to the uring thread.
    jobs: Option<mpsc::UnboundedSender<Job>>,
    /// Why io_uring is not used (`None` when it is).
    unavailable_reason: Option<String>,
}

/// Work sent to the uring thread.
enum Job {
    /// Read a whole file, sending filled buffers to `chunks`; empty buffers come back on `recycle`.
    ReadFile {
        path: PathBuf,
        chunks: mpsc::Sender<io::Result<Vec<u8>>>,
        recycle: mpsc::UnboundedReceiver<Vec<u8>>,
    },
    /// Read a pipe until EOF, handing each chunk to `sink`.
    ReadPipe {
        fd: OwnedFd,
        sink: Box<dyn PipeSink>,
    },
}

/// What a pipe reader does with the bytes it reads ([`UringHandle::read_pipe`]).
///
/// Called on the thread that reads: the io_uring thread, or a fallback task or blocking-pool
/// thread. So the sink works in place, without a copy or a hop to another thread per read,
/// and must be quick and never block or wait (the log forwarder splits lines, writes their
/// JSON and appends them to its spool under a short lock).
pub trait PipeSink: Send + 'static {
    /// The next bytes of the stream, in order; at most [`PIPE_CHUNK`] at a time.
    fn chunk(&mut self, data: &[u8]);
    /// Asked before every read: read now, at most this many bytes (clamped to
    /// 1..=[`PIPE_CHUNK`]), or wait for the future and ask again. Waiting stops reading this
    /// pipe only (backpressure: the writer blocks once the pipe is full); other pipes and
    /// narund go on. Default: always read a full [`PIPE_CHUNK`].
    fn ready(&mut self) -> Ready {
        Ready::Read(PIPE_CHUNK)
    }
    /// End of the stream (EOF, or a read error, which is logged); called once, last. A sink
    /// dropped without `end` means the reader itself was lost (the io_uring thread died).
    fn end(self: Box<Self>);
}

/// What a [`PipeSink`] wants before the next read ([`PipeSink::ready`]).
pub enum Ready {
    /// Read at most this many bytes now.
    Read(usize),
    /// Wait for this, then ask again.
    Wait(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
}

/// How much the next read may take: wait while the sink says so.
async fn read_limit(sink: &mut dyn PipeSink) -> usize {
    loop {
        match sink.ready() {
            Ready::Read(n) => return n.clamp(1, PIPE_CHUNK),
            Ready::Wait(w) => w.await,
        }
    }
}

impl UringHandle {
    /// Start the io_uring thread if io_uring works here, honouring [`DISABLE_ENV`].
    ///
    /// Blocks the calling thread for the probe (well under a millisecond when io_uring works).
    pub fn start() -> UringHandle {
        let disabled = std::env::var(DISABLE_ENV)
            .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
            .unwrap_or(false);
        if disabled {
            return Self::disabled(format!("disabled by {DISABLE_ENV}"));
        }
        Self::start_with(UringMode::Auto)
    }

    /// Start with an explicit mode (ignores [`DISABLE_ENV`]); for configuration and tests.
    pub fn start_with(mode: UringMode) -> UringHandle {
        match mode {
            UringMode::Disabled => Self::disabled("disabled by configuration".into()),
            UringMode::Auto => match spawn_uring_thread() {
                Ok(jobs) => UringHandle {
                    inner: Arc::new(Inner {
                        jobs: Some(jobs),
                        unavailable_reason: None,
                    }),
                },
                Err(e) => {
                    let reason = format!("io_uring unavailable: {e}");
                    tracing::warn!(%reason, "using plain reads instead of io_uring");
                    Self::disabled(reason)
                }
            },
        }
    }

    fn disabled(reason: String) -> UringHandle {
        UringHandle {
            inner: Arc::new(Inner {
                jobs: None,
                unavailable_reason: Some(reason),
            }),
        }
    }

    /// True when operations go through io_uring.
    pub fn available(&self) -> bool {
        self.inner.jobs.is_some()
    }

    /// Why io_uring is not used (`None` when it is).
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.inner.unavailable_reason.as_deref()
    }

    /// SHA-256 of the file at `path`.
    ///
    /// With io_uring the uring thread reads and this task hashes; without it, a blocking-pool
    /// thread reads and hashes. Each hashed chunk is at most [`HASH_CHUNK`] bytes, so the calling
    /// task never holds its worker for long.
    pub async fn hash_file(&self, path: impl AsRef<Path>) -> io::Result<[u8; 32]> {
        let path = path.as_ref().to_path_buf();
        let Some(jobs) = &self.inner.jobs else {
            return hash_file_blocking_pool(path).await;
        };
        let (chunk_tx, mut chunk_rx) = mpsc::channel(READS_IN_FLIGHT);
        let (recycle_tx, recycle_rx) = mpsc::unbounded_channel();
        jobs.send(Job::ReadFile {
            path: path.clone(),
            chunks: chunk_tx,
            recycle: recycle_rx,
        })
        .map_err(|_| uring_thread_gone())?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = chunk_rx.recv().await {
            let chunk = chunk.map_err(|e| annotate(e, &path))?;
            hasher.update(&chunk);
            // The reader may already be gone (EOF); then the buffer is simply freed.
            let _ = recycle_tx.send(chunk);
        }
        Ok(hasher.finalize().into())
    }

    /// Read a pipe (a child's stdout or stderr) until EOF, handing what is read to `sink`
    /// (chunks of at most [`PIPE_CHUNK`] bytes) on the reading thread, then
    /// [`PipeSink::end`] at EOF (all writers closed) or on a read error (logged). The next read
    /// starts when `chunk` returns, so a slow sink slows the reader, never the other way.
    ///
    /// Must be called from within a tokio runtime (the fallback spawns a task on it).
    pub fn read_pipe(&self, fd: OwnedFd, sink: Box<dyn PipeSink>) {
        match &self.inner.jobs {
            Some(jobs) => {
                // io_uring honours O_NONBLOCK by failing reads with EAGAIN instead of waiting,
                // and tokio::process hands out non-blocking pipes: make the fd blocking so the
                // kernel waits for data (io_uring itself never blocks our thread).
                if let Err(e) = sys::fs::set_nonblocking(fd.as_fd(), false) {
                    tracing::warn!(error = %e, "cannot clear O_NONBLOCK on a pipe; using plain reads");
                    crate::spawn(read_pipe_fallback(fd, sink));
                } else if let Err(mpsc::error::SendError(Job::ReadPipe { fd, sink })) =
                    jobs.send(Job::ReadPipe { fd, sink })
                {
                    // The uring thread died (it only stops when every handle is gone, so this
                    // means a bug); keep the logs flowing anyway.
                    crate::spawn(read_pipe_fallback(fd, sink));
                }
            }
            None => {
                crate::spawn(read_pipe_fallback(fd, sink));
            }
        }
    }
}

fn uring_thread_gone() -> io::Error {
    io::Error::other("the narund io_uring thread has stopped")
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
}

/// Start the uring thread and wait for its probe.
fn spawn_uring_thread() -> io::Result<mpsc::UnboundedSender<Job>> {
    let (probe_tx, probe_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
    let (job_tx, job_rx) = mpsc::unbounded_channel::<Job>();
    std::thread::Builder::new()
        .name("narund-uring".into())
        .spawn(move || uring_thread(probe_tx, job_rx))?;
    match probe_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(job_tx),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other(
            "the io_uring probe did not answer within 5 s",
        )),
    }
}

/// Body of the "narund-uring" thread.
fn uring_thread(
    probe: std::sync::mpsc::SyncSender<io::Result<()>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    // tokio_uring::start() would panic when io_uring_setup fails; Runtime::new returns the error.
    let rt = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = probe.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        // io_uring_setup worked; make sure io_uring_enter does too (seccomp may block only that).
        match tokio::time::timeout(Duration::from_secs(2), tokio_uring::no_op()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = probe.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = probe.send(Err(io::Error::other("io_uring no-op did not complete")));
                return;
            }
        }
        let _ = probe.send(Ok(()));
        while let Some(job) = jobs.recv().await {
            match job {
                Job::ReadFile {
                    path,
                    chunks,
                    recycle,
                } => {
                    tokio_uring::spawn(uring_read_file(path, chunks, recycle));
                }
                Job::ReadPipe { fd, sink } => {
                    tokio_uring::spawn(uring_read_pipe(fd, sink));
                }
            }
        }
    });
}

/// Read a file with io_uring, [`READS_IN_FLIGHT`] reads at a time, sending each filled buffer.
async fn uring_read_file(
    path: PathBuf,
    chunks: mpsc::Sender<io::Result<Vec<u8>>>,
    mut recycle: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let file = match tokio_uring::fs::File::open(&path).await {
        Ok(f) => std::rc::Rc::new(f),
        Err(e) => {
            let _ = chunks.send(Err(e)).await;
            return;
        }
    };
    let mut offset: u64 = 0;
    let mut inflight = std::collections::VecDeque::with_capacity(READS_IN_FLIGHT);
    let mut eof = false;
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        // Keep READS_IN_FLIGHT reads submitted. Spawned reads are pushed to the submission queue
        // when first polled and reach the kernel together when this thread parks.
        while !eof && inflight.len() < READS_IN_FLIGHT {
            let buf = spare
                .pop()
                .or_else(|| recycle.try_recv().ok())
                .map(|mut b| {
                    b.clear();
                    b
                })
                .unwrap_or_else(|| Vec::with_capacity(HASH_CHUNK));
            let f = file.clone();
            let at = offset;
            inflight.push_back(tokio_uring::spawn(async move { f.read_at(buf, at).await }));
            offset += HASH_CHUNK as u64;
        }
        let Some(next) = inflight.pop_front() else {
            break;
        };
        let (res, buf) = match next.await {
            Ok(r) => r,
            Err(e) => {
                let _ = chunks.send(Err(io::Error::other(e))).await;
                return;
            }
        };
        match res {
            Ok(0) => {
                eof = true;
                spare.push(buf);
            }
            Ok(n) if n < HASH_CHUNK => {
                // A short read inside a regular file: the file shrank, or the kernel returned
                // less than asked. Restart the pipeline right after this chunk.
                let resume_at = offset - (HASH_CHUNK * (inflight.len() + 1)) as u64 + n as u64;
                for h in inflight.drain(..) {
                    if let Ok((_, b)) = h.await {
                        spare.push(b);
                    }
                }
                if chunks.send(Ok(buf)).await.is_err() {
                    return;
                }
                // Refill the pipeline from there; a zero-length read ends it.
                offset = resume_at;
                continue;
            }
            Ok(_) => {
                if chunks.send(Ok(buf)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = chunks.send(Err(e)).await;
                return;
            }
        }
        if eof {
            // Drain reads issued past EOF (they return 0) so their buffers are not leaked.
            for h in inflight.drain(..) {
                let _ = h.await;
            }
            break;
        }
    }
}

/// Read a pipe with io_uring until EOF.
async fn uring_read_pipe(fd: OwnedFd, mut sink: Box<dyn PipeSink>) {
    use tokio_uring::buf::BoundedBuf;
    let file = tokio_uring::fs::File::from_std(StdFile::from(fd));
    let mut buf = Vec::with_capacity(PIPE_CHUNK);
    loop {
        buf.clear();
        let limit = read_limit(sink.as_mut()).await;
        let (res, b) = file.read_at(buf.slice(..limit), 0).await;
        buf = b.into_inner();
        match res {
            Ok(0) => break,
            Ok(n) => sink.chunk(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading a pipe through io_uring failed; stream closed");
                break;
            }
        }
    }
    let _ = file.close().await;
    sink.end();
}

/// Fallback hash: read and hash on a blocking-pool thread.
async fn hash_file_blocking_pool(path: PathBuf) -> io::Result<[u8; 32]> {
    tokio::task::spawn_blocking(move || hash_file_std(&path))
        .await
        .map_err(io::Error::other)?
}

/// SHA-256 of a file with ordinary blocking reads.
pub fn hash_file_std(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = StdFile::open(path).map_err(|e| annotate(e, path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(annotate(e, path)),
        }
    }
    Ok(hasher.finalize().into())
}

/// Fallback pipe reader: tokio's epoll-driven pipe receiver, or, for an fd that is not a FIFO
/// (a socket or a pty handed in by the caller), a blocking reader thread.
async fn read_pipe_fallback(fd: OwnedFd, mut sink: Box<dyn PipeSink>) {
    use tokio::io::AsyncReadExt;
    let is_fifo = sys::fs::is_fifo(fd.as_fd());
    if !is_fifo {
        let mut f = StdFile::from(fd);
        let _ = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; PIPE_CHUNK];
            let rt = tokio::runtime::Handle::current();
            loop {
                let limit = rt.block_on(read_limit(sink.as_mut()));
                match f.read(&mut buf[..limit]) {
                    Ok(0) => break,
                    Ok(n) => sink.chunk(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading an output stream failed; stream closed");
                        break;
                    }
                }
            }
            sink.end();
        })
        .await;
        return;
    }
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register a pipe with tokio; stream closed");
            sink.end();
            return;
        }
    };
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        let limit = read_limit(sink.as_mut()).await;
        match rx.read(&mut buf[..limit]).await {
            Ok(0) => break,
            Ok(n) => sink.chunk(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading a pipe failed; stream closed");
                break;
            }
        }
    }
    sink.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// io_uring should work unless the kernel switch says otherwise.
    pub(crate) fn io_uring_expected() -> bool {
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map(|v| v.trim() == "0")
            .unwrap_or(true)
    }

    fn sample_file(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        f
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uring_and_fallback_hash_alike() {
        let uring = UringHandle::start_with(UringMode::Auto);
        let plain = UringHandle::start_with(UringMode::Disabled);
        assert!(!plain.available());
        if io_uring_expected() {
            assert!(uring.available(), "{:?}", uring.unavailable_reason());
        }
        // Sizes around the chunk and pipeline boundaries.
        for len in [
            0,
            1,
            HASH_CHUNK - 1,
            HASH_CHUNK,
            HASH_CHUNK + 1,
            3 * HASH_CHUNK + 17,
        ] {
            let f = sample_file(len);
            let expected: [u8; 32] = Sha256::digest(std::fs::read(f.path()).unwrap()).into();
            assert_eq!(
                uring.hash_file(f.path()).await.unwrap(),
                expected,
                "uring, {len} bytes"
            );
            assert_eq!(
                plain.hash_file(f.path()).await.unwrap(),
                expected,
                "plain, {len} bytes"
            );
        }
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        for h in [
            UringHandle::start_with(UringMode::Auto),
            UringHandle::start_with(UringMode::Disabled),
        ] {
            let err = h.hash_file("/nonexistent/narund-x").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }

    /// Collects a pipe's bytes; sends them all at `end`.
    struct Collect {
        tx: mpsc::UnboundedSender<Vec<u8>>,
        got: Vec<u8>,
    }

    impl PipeSink for Collect {
        fn chunk(&mut self, data: &[u8]) {
            assert!(data.len() <= PIPE_CHUNK);
            self.got.extend_from_slice(data);
        }
        fn end(self: Box<Self>) {
            let _ = self.tx.send(self.got);
        }
    }

    #[tokio::test]
    async fn pipe_is_read_to_eof_on_both_paths() {
        for h in [
            UringHandle::start_with(UringMode::Auto),
            UringHandle::start_with(UringMode::Disabled),
        ] {
            let mut child = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg("for i in $(seq 1 2000); do echo line-$i; done")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let out: OwnedFd = child.stdout.take().unwrap().into_owned_fd().unwrap();
            let (tx, mut rx) = mpsc::unbounded_channel();
            h.read_pipe(
                out,
                Box::new(Collect {
                    tx,
                    got: Vec::new(),
                }),
            );
            let all = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("EOF within 10 s")
                .expect("end() is called");
            child.wait().await.unwrap();
            let expected: String = (1..=2000).map(|i| format!("line-{i}\n")).collect();
            assert_eq!(
                String::from_utf8(all).unwrap(),
                expected,
                "uring={}",
                h.available()
            );
        }
    }
}
