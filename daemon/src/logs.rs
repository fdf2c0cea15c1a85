//! App stdout/stderr → lines → `logs.<app>.<node>`, with an offline spool.
//!
//! Every instance's stdout and stderr are pipes. A [`LogSink`] (one per instance) reads each pipe
//! through the [`UringHandle`] (io_uring or plain reads) and, on the reading thread itself (a
//! [`PipeSink`](crate::uring::PipeSink)), splits the bytes into lines with a [`LineSplitter`],
//! turns each line into the Go-shaped JSON [`LogLine`](narun_wire::events::LogLine) and appends
//! it to the node-wide **spool** of the [`LogForwarder`]. One publisher task, on narund's
//! runtime, drains the spool to NATS.
//!
//! ```text
//!  app ─pipe─▶ read_pipe ─chunk─▶ LineSplitter ─JSON─▶ spool (bounded by bytes) ─▶ publisher ─▶ NATS
//!                                                          ▲ oldest dropped           │ marker
//!                                                          └──── removed on ack ◀─────┘ echo
//! ```
//!
//! # The app is never blocked by NATS
//!
//! Reading a pipe only ever waits for the spool's mutex (held for microseconds); it never awaits
//! NATS. When the spool exceeds its byte bound the **oldest** lines are dropped and counted
//! ([`LogStats::dropped`]); the next line that is delivered carries `dropped_before = n` (a narun
//! addition to the Go JSON) and narund logs a warning. The pipe is therefore always drained and the
//! app never stalls on a full pipe, whatever NATS does. (Go's runner stops draining a stream after a
//! line over 64 KiB; here long lines are split into pieces marked `partial`.)
//!
//! # Nothing below the bound is lost when NATS is down
//!
//! Core NATS publish has no acknowledgement, and async-nats makes it worse for our purpose:
//! `publish()` returns `Ok` while disconnected (the command waits in a 2048-slot channel, then the
//! call blocks), and lines written into a socket just before the server died are silently gone.
//! So lines stay in the spool until the server has **confirmed** them:
//!
//! * The publisher only sends while `client.connection_state()` is `Connected`.
//! * After each batch it publishes a small *marker* (the batch's last sequence number) to a private
//!   inbox subject that it is subscribed to. The server handles one connection's messages in order,
//!   so when the marker comes back, every line before it has reached the server; those lines are
//!   removed from the spool and counted as published. Up to [`WINDOW`] batches are in flight.
//! * On a disconnect (or a marker not echoed within [`ACK_TIMEOUT`]) the publisher rewinds and,
//!   once connected again, resends every unconfirmed line in order.
//!
//! Delivery is therefore *at least once* and in order: a line sent just before an outage whose
//! marker was lost can arrive twice. Subscribers see lines only while subscribed (core NATS, as in
//! Go); async-nats resubscribes on reconnect. The marker needs the connection's default echo: a
//! client built with `no_echo` never confirms anything (the forwarder logs an error and keeps
//! resending).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use narun_wire::events::LogLineJson;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::uring::UringHandle;

/// Longest line forwarded in one message; longer lines are split (Go's scanner limit).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// Default spool bound: 8 MiB of serialized lines.
pub const DEFAULT_SPOOL_BYTES: usize = 8 * 1024 * 1024;

/// Lines per batch (one marker per batch).
const BATCH_LINES: usize = 4096;
/// Bytes per batch.
const BATCH_BYTES: usize = 512 * 1024;
/// Batches sent but not yet confirmed.
pub const WINDOW: usize = 16;
/// A marker not echoed within this time means the batch is resent.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the publisher looks at the connection state while disconnected.
const RECONNECT_POLL: Duration = Duration::from_millis(50);
/// Book-keeping bytes charged per spooled line on top of its payload and subject.
const ENTRY_OVERHEAD: usize = 64;
/// Spool queue slots kept allocated when it empties after a burst.
const SPOOL_KEEP_CAPACITY: usize = 4096;
/// Per-read vectors of a pipe reader are kept for reuse up to this many lines.
const CHUNK_KEEP_LINES: usize = 2048;

// ---------------------------------------------------------------------------------------------
// Line splitting
// ---------------------------------------------------------------------------------------------

/// Splits a byte stream into lines. Pure: no I/O, no allocation per line in the common case.
///
/// * A line ends at `\n`; a `\r` right before it is dropped (`\r\n` endings).
/// * A line longer than `max_line_bytes` is emitted in pieces as the bytes arrive (it never waits
///   for the newline): every piece but the last has `partial = true`, the last piece (ending at the
///   newline or at EOF) has `partial = false`, so a reader can join them back. Pieces are cut at a
///   UTF-8 character boundary when the text is UTF-8.
/// * Invalid UTF-8 becomes U+FFFD (lossy).
/// * [`finish`](Self::finish) emits the unterminated rest at EOF.
///
/// ```
/// use narund::logs::LineSplitter;
/// let mut s = LineSplitter::new(1024);
/// let mut lines = Vec::new();
/// s.feed(b"one\r\ntw", &mut |l: &str, partial| lines.push((l.to_string(), partial)));
/// s.feed(b"o\nthree", &mut |l: &str, partial| lines.push((l.to_string(), partial)));
/// s.finish(&mut |l: &str, partial| lines.push((l.to_string(), partial)));
/// assert_eq!(lines, [("one".into(), false), ("two".into(), false), ("three".into(), false)]);
/// ```
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_line_bytes` (at least 4, so a UTF-8 character fits).
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max_line_bytes.max(4),
        }
    }

    /// Feed a chunk; `emit(text, partial)` is called for every complete line or piece.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(&str, bool)) {
        self.feed_bytes(chunk, &mut |line, partial| {
            emit(&String::from_utf8_lossy(line), partial)
        })
    }

    /// End of stream: emit what is left as a last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str, bool)) {
        self.finish_bytes(&mut |line, partial| emit(&String::from_utf8_lossy(line), partial))
    }

    /// Like [`feed`](Self::feed) but the lines are handed out as raw bytes, possibly invalid
    /// UTF-8 (the forwarder converts them while it serializes, without a `String` per line).
    /// The lines and pieces are the same as `feed`'s.
    pub fn feed_bytes(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !chunk.is_empty() {
            match find_newline(chunk) {
                Some(i) => {
                    let line = &chunk[..i];
                    chunk = &chunk[i + 1..];
                    if self.buf.is_empty() && line.len() <= self.max {
                        // Fast path: the whole line is inside this chunk; no copy.
                        emit(strip_cr(line), false);
                    } else {
                        self.buf.extend_from_slice(line);
                        self.emit_long_pieces(emit);
                        emit(strip_cr(&self.buf), false);
                        self.buf.clear();
                    }
                }
                None => {
                    self.buf.extend_from_slice(chunk);
                    chunk = &[];
                    self.emit_long_pieces(emit);
                }
            }
        }
    }

    /// Like [`finish`](Self::finish), with raw bytes (see [`feed_bytes`](Self::feed_bytes)).
    pub fn finish_bytes(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            emit(strip_cr(&self.buf), false);
            self.buf.clear();
        }
    }

    /// Bytes held back waiting for a newline.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// While more than `max` bytes are buffered, emit `max`-sized partial pieces.
    fn emit_long_pieces(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        let mut start = 0;
        while self.buf.len() - start > self.max {
            let mut cut = start + self.max;
            // Do not split a UTF-8 sequence: back up over continuation bytes (at most 3).
            let floor = cut - 3;
            while cut > floor && (self.buf[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            if (self.buf[cut] & 0xC0) == 0x80 {
                cut = start + self.max; // not UTF-8 anyway
            }
            emit(&self.buf[start..cut], true);
            start = cut;
        }
        if start > 0 {
            self.buf.drain(..start);
        }
    }
}

/// Index of the first `\n` in `bytes`, 8 bytes at a time ("has a zero byte" word trick: the
/// lowest marked byte of a word is always a real match).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ (ONES * b'\n' as u64);
        let marks = w.wrapping_sub(ONES) & !w & HIGH;
        if marks != 0 {
            return Some(i + marks.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    bytes[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

// ---------------------------------------------------------------------------------------------
// Spool
// ---------------------------------------------------------------------------------------------

/// Where one app's lines go: shared by its sinks and their spooled lines.
struct Target {
    /// `logs.<app>.<node>`, built once.
    subject: Subject,
    app: Arc<str>,
}

/// One serialized line waiting for confirmation.
///
/// Its `payload` is a slice of the buffer that holds every line of the pipe read it came from
/// (one allocation per read, not per line); the buffer is freed when its last line is.
struct Entry {
    seq: u64,
    /// JSON of the [`LogLine`](narun_wire::events::LogLine) with `dropped_before` = 0.
    payload: Bytes,
    /// Lines dropped just before this one; spliced into the JSON when sent.
    dropped_before: u64,
    target: Arc<Target>,
}

/// A line taken from the spool for publishing.
struct Outgoing {
    seq: u64,
    subject: Subject,
    payload: Bytes,
}

impl Entry {
    fn size(&self) -> usize {
        self.payload.len() + self.target.subject.len() + ENTRY_OVERHEAD
    }

    /// The payload as sent: with `"dropped_before":n` added when lines were dropped before it.
    fn wire_payload(&self) -> Bytes {
        if self.dropped_before == 0 {
            return self.payload.clone();
        }
        // `dropped_before` is the last field of LogLine and skipped when 0: insert it before `}`.
        let body = &self.payload[..self.payload.len() - 1];
        let mut v = Vec::with_capacity(self.payload.len() + 32);
        v.extend_from_slice(body);
        v.extend_from_slice(format!(",\"dropped_before\":{}}}", self.dropped_before).as_bytes());
        Bytes::from(v)
    }
}

/// Unconfirmed lines, oldest first. Entries with `seq <= sent_upto` are in flight.
struct Spool {
    entries: VecDeque<Entry>,
    bytes: usize,
    limit: usize,
    next_seq: u64,
    sent_upto: u64,
    /// Dropped lines not yet attached to a line (only while every spooled line is in flight).
    carry: u64,
}

impl Spool {
    fn push(&mut self, mut e: Entry, stats: &Counters) {
        e.seq = self.next_seq;
        self.next_seq += 1;
        e.dropped_before += std::mem::take(&mut self.carry);
        self.bytes += e.size();
        self.entries.push_back(e);
        // Over the bound: drop the oldest, but always keep the newest line.
        while self.bytes > self.limit && self.entries.len() > 1 {
            let old = self.entries.pop_front().expect("len > 1");
            self.bytes -= old.size();
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            let n = 1 + old.dropped_before;
            // Report the loss on the first line that has not been sent yet.
            let first_unsent = self.entries.partition_point(|x| x.seq <= self.sent_upto);
            match self.entries.get_mut(first_unsent) {
                Some(next) => next.dropped_before += n,
                None => self.carry += n,
            }
        }
    }

    /// Everything unconfirmed is to be sent again.
    fn rewind(&mut self) {
        self.sent_upto = 0;
        if let Some(front) = self.entries.front_mut() {
            front.dropped_before += std::mem::take(&mut self.carry);
        }
    }

    /// The server confirmed every line up to `seq`.
    fn confirm(&mut self, seq: u64) -> u64 {
        let mut n = 0;
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            let e = self.entries.pop_front().expect("front exists");
            self.bytes -= e.size();
            n += 1;
        }
        // After a burst (an outage, a chatty app) give the queue's memory back, so an idle
        // narund does not keep the peak; shrinking to 2× only below 1/8 keeps this amortized O(1)
        // and rare.
        if self.entries.capacity() > SPOOL_KEEP_CAPACITY
            && self.entries.len() < self.entries.capacity() / 8
        {
            self.entries
                .shrink_to((self.entries.len() * 2).max(SPOOL_KEEP_CAPACITY));
        }
        n
    }

    /// Append the next lines to send to `out` (empty on entry), up to the batch limits; lines
    /// that carry a drop count add `(app, count)` to `dropped` for a warning.
    fn next_batch(&self, out: &mut Vec<Outgoing>, dropped: &mut Vec<(Arc<str>, u64)>) {
        let start = self.entries.partition_point(|x| x.seq <= self.sent_upto);
        let mut bytes = 0;
        for e in self.entries.range(start..).take(BATCH_LINES) {
            bytes += e.payload.len();
            if bytes > BATCH_BYTES && !out.is_empty() {
                break;
            }
            if e.dropped_before > 0 {
                dropped.push((e.target.app.clone(), e.dropped_before));
            }
            out.push(Outgoing {
                seq: e.seq,
                subject: e.target.subject.clone(),
                payload: e.wire_payload(),
            });
        }
    }

    /// Remove the line `seq` (one that can never be published); returns its app.
    fn remove(&mut self, seq: u64) -> Option<Arc<str>> {
        let i = self.entries.iter().position(|e| e.seq == seq)?;
        let e = self.entries.remove(i).expect("index from position");
        self.bytes -= e.size();
        if e.dropped_before > 0 {
            match self.entries.get_mut(i) {
                Some(next) => next.dropped_before += e.dropped_before,
                None => self.carry += e.dropped_before,
            }
        }
        Some(e.target.app.clone())
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
}

struct Shared {
    node_id: String,
    max_line_bytes: usize,
    spool: Mutex<Spool>,
    stats: Counters,
    /// Wakes the publisher: new lines, or close.
    wake: Notify,
    /// Wakes `flush` waiters: lines confirmed or dropped.
    progress: Notify,
    closed: AtomicBool,
}

impl Shared {
    /// An empty spool of at most `spool_bytes`, nothing sent yet.
    fn new(node_id: String, max_line_bytes: usize, spool_bytes: usize) -> Shared {
        Shared {
            node_id,
            max_line_bytes,
            spool: Mutex::new(Spool {
                entries: VecDeque::new(),
                bytes: 0,
                limit: spool_bytes,
                next_seq: 1,
                sent_upto: 0,
                carry: 0,
            }),
            stats: Counters::default(),
            wake: Notify::new(),
            progress: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool inconsistent in a way that matters
        // more than losing logs; keep going.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Counters for the node state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Lines confirmed by the server.
    pub published: u64,
    /// Lines dropped because the spool was full (or a line could not be published at all).
    pub dropped: u64,
    /// Lines waiting in the spool.
    pub spooled_lines: usize,
    /// Bytes accounted in the spool.
    pub spooled_bytes: usize,
}

/// Settings of a [`LogForwarder`].
#[derive(Debug, Clone)]
pub struct LogForwarderConfig {
    /// This node's id (the `<node>` in `logs.<app>.<node>`).
    pub node_id: String,
    /// Bound of the spool in bytes of serialized lines (at least one line is always kept).
    pub spool_bytes: usize,
    /// Lines longer than this are split into `partial` pieces.
    pub max_line_bytes: usize,
}

impl LogForwarderConfig {
    pub fn new(node_id: impl Into<String>) -> Self {
        LogForwarderConfig {
            node_id: node_id.into(),
            spool_bytes: DEFAULT_SPOOL_BYTES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// The node's log forwarder: one spool and one publisher task for all instances.
///
/// Dropping it (or [`close`](Self::close)) stops the publisher; lines still in the spool are lost,
/// so call [`flush`](Self::flush) first on a clean shutdown.
pub struct LogForwarder {
    shared: Arc<Shared>,
    uring: UringHandle,
}

/// Where one instance's output goes. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
    uring: UringHandle,
    target: Arc<Target>,
    instance_id: Arc<str>,
}

impl LogForwarder {
    /// A forwarder publishing on `client` as `node_id`, spooling at most `spool_bytes`.
    /// Returns the forwarder and its publisher task. Must be called inside a tokio runtime.
    pub fn new(
        client: async_nats::Client,
        node_id: impl Into<String>,
        spool_bytes: usize,
        uring: UringHandle,
    ) -> (Self, JoinHandle<()>) {
        let mut config = LogForwarderConfig::new(node_id);
        config.spool_bytes = spool_bytes;
        Self::with_config(client, config, uring)
    }

    /// Like [`new`](Self::new) with every setting.
    pub fn with_config(
        client: async_nats::Client,
        config: LogForwarderConfig,
        uring: UringHandle,
    ) -> (Self, JoinHandle<()>) {
        let shared = Arc::new(Shared::new(
            config.node_id,
            config.max_line_bytes,
            config.spool_bytes,
        ));
        let task = tokio::spawn(publisher(shared.clone(), client));
        (LogForwarder { shared, uring }, task)
    }

    /// A sink for one instance of `app`; its lines go to `logs.<app>.<node>`.
    pub fn sink(&self, app: &str, instance_id: &str) -> LogSink {
        LogSink {
            shared: self.shared.clone(),
            uring: self.uring.clone(),
            target: Arc::new(Target {
                subject: Subject::from(narun_wire::names::log_subject(app, &self.shared.node_id)),
                app: app.into(),
            }),
            instance_id: instance_id.into(),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> LogStats {
        let spool = self.shared.spool();
        LogStats {
            published: self.shared.stats.published.load(Ordering::Relaxed),
            dropped: self.shared.stats.dropped.load(Ordering::Relaxed),
            spooled_lines: spool.entries.len(),
            spooled_bytes: spool.bytes,
        }
    }

    /// Wait until every line spooled before this call is confirmed by the server (or dropped).
    /// Returns false if that did not happen within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.spool().next_seq - 1;
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let done = self
                .shared
                .spool()
                .entries
                .front()
                .is_none_or(|e| e.seq > target);
            if done {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Stop the publisher task.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.close();
    }
}

impl LogSink {
    /// Forward the pipe `fd` (the read end of the child's stdout or stderr) as `stream`
    /// (`"stdout"`/`"stderr"`). The returned task ends at EOF, after the last line is spooled.
    /// Must be called inside a tokio runtime.
    ///
    /// Splitting, JSON and spooling happen on the thread that reads the pipe (the io_uring
    /// thread, a [`PipeSink`](crate::uring::PipeSink)), so app output never queues between threads and narund's
    /// runtime thread only publishes.
    pub fn attach(&self, stream: &str, fd: OwnedFd) -> JoinHandle<()> {
        let (done, eof) = tokio::sync::oneshot::channel();
        self.uring.read_pipe(
            fd,
            Box::new(PipeReader {
                splitter: LineSplitter::new(self.shared.max_line_bytes),
                lines: self.lines(stream),
                done,
            }),
        );
        tokio::spawn(async move {
            let _ = eof.await;
        })
    }

    /// Spool one line produced by narund itself (for example why an instance failed to start).
    pub fn line(&self, stream: &str, text: &str) {
        let mut lines = self.lines(stream);
        lines.begin(text.len());
        lines.add(text.as_bytes(), false);
        lines.spool();
    }

    fn lines(&self, stream: &str) -> ChunkLines {
        ChunkLines {
            json: LogLineJson::new(
                &self.instance_id,
                &self.target.app,
                &self.shared.node_id,
                stream,
            ),
            sink: self.clone(),
            timestamp: String::new(),
            buf: Vec::new(),
            ends: Vec::new(),
            expansion: 3 * 16,
            input_len: 0,
            batch: Vec::new(),
        }
    }

    fn spool_all(&self, batch: &mut Vec<Entry>) {
        if batch.is_empty() {
            return;
        }
        let dropped_before = self.shared.stats.dropped.load(Ordering::Relaxed);
        {
            let mut spool = self.shared.spool();
            for e in batch.drain(..) {
                spool.push(e, &self.shared.stats);
            }
        }
        self.shared.wake.notify_one();
        if self.shared.stats.dropped.load(Ordering::Relaxed) != dropped_before {
            self.shared.progress.notify_waiters();
        }
    }
}

/// One output stream of an instance, fed by the pipe reader ([`crate::uring::PipeSink`]).
struct PipeReader {
    splitter: LineSplitter,
    lines: ChunkLines,
    /// Fired after the last line is spooled.
    done: tokio::sync::oneshot::Sender<()>,
}

impl crate::uring::PipeSink for PipeReader {
    fn chunk(&mut self, data: &[u8]) {
        let lines = &mut self.lines;
        // One timestamp per chunk: its lines arrived together.
        lines.begin(data.len());
        self.splitter
            .feed_bytes(data, &mut |text, partial| lines.add(text, partial));
        lines.spool();
    }

    fn end(self: Box<Self>) {
        let PipeReader {
            mut splitter,
            mut lines,
            done,
        } = *self;
        lines.begin(splitter.pending());
        splitter.finish_bytes(&mut |text, partial| lines.add(text, partial));
        lines.spool();
        let _ = done.send(());
    }
}

/// Turns the lines of one pipe read into spool entries: every line's JSON goes into one buffer
/// (one allocation per read), which is then shared by the entries as [`Bytes`] slices.
struct ChunkLines {
    json: LogLineJson,
    sink: LogSink,
    /// Timestamp of the lines of the current chunk.
    timestamp: String,
    /// JSON of the current chunk's lines, back to back.
    buf: Vec<u8>,
    /// End offset of each line in `buf`.
    ends: Vec<usize>,
    /// JSON bytes per input byte of the previous chunk, in 1/16: sizes the next buffer.
    expansion: usize,
    /// Bytes of app output in the current chunk.
    input_len: usize,
    /// Reused between chunks.
    batch: Vec<Entry>,
}

impl ChunkLines {
    /// Start a chunk of `input_len` bytes of app output.
    fn begin(&mut self, input_len: usize) {
        self.timestamp = narun_wire::events::now_rfc3339();
        // Sized after the previous chunk (plus 1/8) so it rarely grows; shrunk to fit later.
        let guess = input_len * self.expansion / 16 * 9 / 8;
        self.buf = Vec::with_capacity(guess + self.json.overhead(self.timestamp.len()));
        self.input_len = input_len;
    }

    fn add(&mut self, text: &[u8], partial: bool) {
        self.json
            .write(&mut self.buf, text, &self.timestamp, partial, 0);
        self.ends.push(self.buf.len());
    }

    /// Hand the chunk's lines to the spool.
    fn spool(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if self.ends.is_empty() {
            return; // a piece of a line: it waits in the splitter
        }
        if let Some(expansion) = (buf.len() * 16).checked_div(self.input_len) {
            self.expansion = expansion.clamp(16, 64 * 16);
        }
        // Only what the lines use stays allocated while they are spooled (an in-place
        // shrink in the allocator; no copy for the usual sizes).
        buf.shrink_to_fit();
        let all = Bytes::from(buf);
        let mut start = 0;
        for end in self.ends.drain(..) {
            self.batch.push(Entry {
                seq: 0,
                payload: all.slice(start..end),
                dropped_before: 0,
                target: self.sink.target.clone(),
            });
            start = end;
        }
        self.sink.spool_all(&mut self.batch);
        // A read of many tiny lines must not leave big vectors behind for the instance's life.
        if self.batch.capacity() > CHUNK_KEEP_LINES {
            self.batch = Vec::new();
        }
        if self.ends.capacity() > CHUNK_KEEP_LINES {
            self.ends = Vec::new();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

async fn publisher(shared: Arc<Shared>, client: async_nats::Client) {
    let ack_subject = client.new_inbox();
    let mut acks = loop {
        match client.subscribe(ack_subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "log forwarder cannot subscribe for confirmations; retrying");
                if sleep_or_closed(&shared, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    // Markers sent and not yet echoed: (last seq of the batch, when sent).
    let mut markers: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut dropped: Vec<(Arc<str>, u64)> = Vec::new();
    let mut timeouts_in_a_row = 0u32;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if client.connection_state() != State::Connected {
            if !markers.is_empty() || shared.spool().sent_upto != 0 {
                markers.clear();
                shared.spool().rewind();
            }
            if sleep_or_closed(&shared, RECONNECT_POLL).await {
                return;
            }
            continue;
        }

        if markers.len() < WINDOW {
            shared.spool().next_batch(&mut batch, &mut dropped);
            for (app, n) in dropped.drain(..) {
                tracing::warn!(app = %app, dropped = n, "log spool was full: dropped the oldest lines");
            }
            if let Some(last) = batch.last().map(|e| e.seq) {
                for e in batch.drain(..) {
                    match client.publish(e.subject, e.payload).await {
                        Ok(()) => {}
                        Err(err) if err.kind() == async_nats::client::PublishErrorKind::Send => {
                            tracing::warn!("NATS client closed; log forwarder stops");
                            return;
                        }
                        Err(err) => {
                            // Too big for the server's max_payload, or an app name that is not a
                            // valid subject: this line can never be published.
                            let app = shared.spool().remove(e.seq);
                            tracing::warn!(app = app.as_deref().unwrap_or("?"), error = %err,
                                "dropping a log line that cannot be published");
                            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let _ = client
                    .publish(ack_subject.clone(), Bytes::from(last.to_string()))
                    .await;
                {
                    let mut spool = shared.spool();
                    spool.sent_upto = spool.sent_upto.max(last);
                }
                markers.push_back((last, Instant::now()));
                continue;
            }
        }

        let deadline = markers
            .front()
            .map(|(_, at)| *at + ACK_TIMEOUT)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            msg = acks.next() => {
                let Some(msg) = msg else {
                    tracing::warn!("log confirmation subscription ended; log forwarder stops");
                    return;
                };
                let Some(seq) = std::str::from_utf8(&msg.payload).ok().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                timeouts_in_a_row = 0;
                while markers.front().is_some_and(|(s, _)| *s <= seq) {
                    markers.pop_front();
                }
                let n = shared.spool().confirm(seq);
                shared.stats.published.fetch_add(n, Ordering::Relaxed);
                shared.progress.notify_waiters();
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                if !markers.is_empty() {
                    timeouts_in_a_row += 1;
                    if timeouts_in_a_row == 3 {
                        tracing::error!("NATS never confirms log lines; is the connection built with no_echo? lines are resent");
                    } else {
                        tracing::warn!("log lines not confirmed within {ACK_TIMEOUT:?}; resending");
                    }
                    markers.clear();
                    shared.spool().rewind();
                }
            }
        }
    }
}

/// Sleep for `d`; true if the forwarder was closed meanwhile.
async fn sleep_or_closed(shared: &Shared, d: Duration) -> bool {
    let _ = tokio::time::timeout(d, shared.wake.notified()).await;
    shared.closed.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::events::LogLine;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |l: &str, p| out.push((l.to_string(), p)));
        }
        s.finish(&mut |l: &str, p| out.push((l.to_string(), p)));
        out
    }

    fn l(s: &str, p: bool) -> (String, bool) {
        (s.to_string(), p)
    }

    #[test]
    fn lines_across_chunks_and_crlf() {
        assert_eq!(
            split(100, &[b"a\nb", b"c\r", b"\n\nd\r\n"]),
            vec![l("a", false), l("bc", false), l("", false), l("d", false)]
        );
    }

    #[test]
    fn unterminated_rest_is_flushed_at_eof() {
        assert_eq!(split(100, &[b"x\ny"]), vec![l("x", false), l("y", false)]);
        assert!(split(100, &[]).is_empty());
    }

    #[test]
    fn long_lines_are_split_without_waiting_for_the_newline() {
        let mut s = LineSplitter::new(4);
        let mut out = Vec::new();
        s.feed(b"abcdefghij", &mut |t: &str, p| out.push(l(t, p)));
        // Emitted before any newline arrived; at most `max` bytes are held back.
        assert_eq!(out, vec![l("abcd", true), l("efgh", true)]);
        assert_eq!(s.pending(), 2);
        s.feed(b"k\nz\n", &mut |t: &str, p| out.push(l(t, p)));
        assert_eq!(
            out,
            vec![
                l("abcd", true),
                l("efgh", true),
                l("ijk", false),
                l("z", false)
            ]
        );
        // A long line inside one chunk.
        assert_eq!(
            split(4, &[b"123456789\n"]),
            vec![l("1234", true), l("5678", true), l("9", false)]
        );
    }

    #[test]
    fn pieces_do_not_cut_utf8_characters() {
        // "é" is 2 bytes: "aaaé" would be cut inside the character at 4 bytes.
        let out = split(4, &["aaaébb\n".as_bytes()]);
        assert_eq!(out, vec![l("aaa", true), l("ébb", false)]);
        let joined: String = out.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(joined, "aaaébb");
    }

    #[test]
    fn find_newline_finds_the_first_one_anywhere() {
        for len in 0..20 {
            for pos in 0..len {
                for later in [None, Some(pos + 1), Some(len - 1)] {
                    // Bytes around '\n' (0x0a) and with high bits, to tempt the word trick.
                    let mut v: Vec<u8> =
                        (0..len).map(|i| [0x0b, 0x09, 0x8a, 0xff][i % 4]).collect();
                    v[pos] = b'\n';
                    if let Some(l) = later.filter(|&l| l < len) {
                        v[l] = b'\n';
                    }
                    assert_eq!(find_newline(&v), Some(pos), "{v:?}");
                }
            }
            let none: Vec<u8> = (0..len).map(|i| [0x0b, 0x09, 0x8a, 0x00][i % 4]).collect();
            assert_eq!(find_newline(&none), None);
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            split(100, &[b"ok\xff\xfeok\n"]),
            vec![l("ok\u{fffd}\u{fffd}ok", false)]
        );
    }

    fn test_entry(msg: &str) -> Entry {
        let mut json = Vec::new();
        LogLineJson::new("hello-0", "hello", "node-1", "stdout").write(
            &mut json,
            msg.as_bytes(),
            "2026-01-01T00:00:00Z",
            true,
            0,
        );
        Entry {
            seq: 0,
            payload: Bytes::from(json),
            dropped_before: 0,
            target: Arc::new(Target {
                subject: Subject::from("logs.hello.node-1"),
                app: "hello".into(),
            }),
        }
    }

    #[test]
    fn json_matches_the_wire_type_including_dropped_before() {
        let mut e = test_entry("hi \"there\"");
        let mut wire = LogLine {
            instance_id: "hello-0".into(),
            app_name: "hello".into(),
            node_id: "node-1".into(),
            stream: "stdout".into(),
            message: "hi \"there\"".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            partial: true,
            dropped_before: 0,
        };
        assert_eq!(e.wire_payload(), serde_json::to_vec(&wire).unwrap());
        e.dropped_before = 42;
        wire.dropped_before = 42;
        assert_eq!(e.wire_payload(), serde_json::to_vec(&wire).unwrap());
    }

    fn test_shared(limit: usize, max_line_bytes: usize) -> Arc<Shared> {
        Arc::new(Shared::new("node-1".into(), max_line_bytes, limit))
    }

    /// The chunk path (raw bytes → one shared JSON buffer → slices) spools exactly what
    /// serde_json makes of the lines the `&str` splitter produces (lossy UTF-8 included).
    #[test]
    fn chunk_lines_spool_the_serde_json_of_each_line() {
        let shared = test_shared(1 << 20, 8);
        let fwd = LogForwarder {
            shared: shared.clone(),
            uring: UringHandle::start_with(crate::uring::UringMode::Disabled),
        };
        let sink = fwd.sink("hello", "hello-0");
        let chunks: [&[u8]; 4] = [
            b"plain\nquo\"te\n\xff bad\r\n\tta",
            b"b\n\n0123456789abcdef",
            "ééééé\n".as_bytes(),
            b"unterminated",
        ];
        let mut expected = Vec::new();
        let mut reference = LineSplitter::new(8);
        for c in chunks {
            reference.feed(c, &mut |t: &str, p| expected.push((t.to_string(), p)));
        }
        reference.finish(&mut |t: &str, p| expected.push((t.to_string(), p)));

        let mut lines = sink.lines("stderr");
        let mut splitter = LineSplitter::new(8);
        for c in chunks {
            lines.begin(c.len());
            splitter.feed_bytes(c, &mut |t, p| lines.add(t, p));
            lines.spool();
        }
        lines.begin(splitter.pending());
        splitter.finish_bytes(&mut |t, p| lines.add(t, p));
        lines.spool();
        sink.line("stdout", "from narund");
        expected.push(("from narund".into(), false));

        let spool = shared.spool();
        assert_eq!(spool.entries.len(), expected.len());
        for (i, (e, (text, partial))) in spool.entries.iter().zip(&expected).enumerate() {
            let line: LogLine = serde_json::from_slice(&e.payload).unwrap();
            assert_eq!((&line.message, line.partial), (text, *partial), "line {i}");
            assert_eq!(
                line.stream,
                if i + 1 == expected.len() {
                    "stdout"
                } else {
                    "stderr"
                }
            );
            assert_eq!(
                (line.instance_id.as_str(), line.app_name.as_str()),
                ("hello-0", "hello")
            );
            assert_eq!(e.payload, serde_json::to_vec(&line).unwrap(), "line {i}");
            assert_eq!(e.seq, i as u64 + 1);
        }
        assert_eq!(
            spool.bytes,
            spool.entries.iter().map(Entry::size).sum::<usize>()
        );
    }

    #[test]
    fn spool_drops_oldest_and_reports_on_the_next_unsent_line() {
        let stats = Counters::default();
        let one = test_entry("x").size();
        let mut spool = Spool {
            entries: VecDeque::new(),
            bytes: 0,
            limit: one * 3,
            next_seq: 1,
            sent_upto: 0,
            carry: 0,
        };
        for _ in 0..5 {
            spool.push(test_entry("x"), &stats);
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        let seqs: Vec<_> = spool.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(spool.entries[0].dropped_before, 2);

        // Lines 3..5 are in flight; dropping 3 reports on 6, the first unsent line.
        spool.sent_upto = 5;
        spool.push(test_entry("x"), &stats);
        assert_eq!(
            spool.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(spool.entries[2].dropped_before, 3);
        let (mut batch, mut dropped) = (Vec::new(), Vec::new());
        spool.next_batch(&mut batch, &mut dropped);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            (batch[0].seq, &*dropped[0].0, dropped[0].1),
            (6, "hello", 3)
        );
        // The count is in the JSON as sent.
        let sent: LogLine = serde_json::from_slice(&batch[0].payload).unwrap();
        assert_eq!(sent.dropped_before, 3);
        assert_eq!(batch[0].subject.as_str(), "logs.hello.node-1");

        // Confirmation removes what the server has.
        assert_eq!(spool.confirm(5), 2);
        assert_eq!(spool.entries.len(), 1);
        assert_eq!(spool.bytes, one);

        // After a burst the queue's memory is given back as lines are confirmed.
        spool.limit = usize::MAX;
        for _ in 0..100_000 {
            spool.push(test_entry("x"), &stats);
        }
        let peak = spool.entries.capacity();
        assert!(peak >= 100_000);
        let last = spool.next_seq - 1;
        assert_eq!(spool.confirm(last), 100_001);
        assert!(
            spool.entries.capacity() <= SPOOL_KEEP_CAPACITY * 2,
            "{}",
            spool.entries.capacity()
        );
        assert_eq!(spool.bytes, 0);
    }
}
