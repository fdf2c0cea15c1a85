//! App stdout/stderr → lines → `logs.<app>.<node>`, with an offline spool.
//!
//! Every instance's stdout and stderr are pipes. A [`LogSink`] (one per instance) reads each pipe
//! through the [`UringHandle`] (io_uring or plain reads) and, on the reading thread itself (a
//! [`PipeSink`](crate::uring::PipeSink)), splits the bytes into lines with a [`LineSplitter`]
//! and appends each read's lines, as one chunk of raw text, to the node-wide **spool** of the
//! [`LogForwarder`]. One publisher task, on narund's runtime, drains the spool to NATS: it turns
//! each line into the Go-shaped JSON [`LogLine`](narun_wire::events::LogLine) as it sends it.
//!
//! ```text
//!  app ─pipe─▶ read_pipe ─chunk─▶ LineSplitter ─text─▶ spool (bounded by bytes) ─▶ publisher ─JSON─▶ NATS
//!                                                          ▲ oldest dropped           │ marker
//!                                                          └──── removed on ack ◀─────┘ echo
//! ```
//!
//! The spool keeps text, not JSON, so a 100-byte line costs about 104 bytes of the bound rather
//! than the ~300 its JSON and bookkeeping would take: an outage of the same length needs a third
//! of the memory.
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

pub mod stream;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
/// Longest line limit accepted ([`LogForwarderConfig::max_line_bytes`] is capped to it): NATS's
/// own ceiling for a message, and small enough for the spool's 31-bit line offsets.
pub const MAX_LINE_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// Book-keeping bytes charged per spooled line on top of its text (its end offset).
const LINE_OVERHEAD: usize = 4;
/// Book-keeping bytes charged per spooled chunk (one pipe read) on top of its timestamp.
const CHUNK_OVERHEAD: usize = 192;
/// Spool queue slots (chunks) kept allocated when it empties after a burst.
const SPOOL_KEEP_CAPACITY: usize = 256;
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

/// One output stream of one instance: where its lines go and the fixed head of their JSON.
struct Stream {
    target: Arc<Target>,
    json: LogLineJson,
}

/// Flag in [`Chunk::ends`]: the line is a `partial` piece of a longer line.
const PARTIAL: u32 = 1 << 31;

/// The lines of one pipe read (or one line of narund's own), kept as the app wrote them until
/// the server has confirmed them.
///
/// Lines become JSON only when they are published, so a spooled line costs its own bytes plus
/// [`LINE_OVERHEAD`] (the JSON envelope would be 2–3× that for short lines), and the reading
/// thread does no more than split and copy.
struct Chunk {
    stream: Arc<Stream>,
    /// When the read returned: one timestamp for the lines that arrived together.
    timestamp: String,
    /// The lines back to back, without their newlines; possibly invalid UTF-8 (made lossy
    /// when serialized).
    text: Vec<u8>,
    /// End of each line in `text`, `| PARTIAL` for a piece of a longer line.
    ends: Box<[u32]>,
}

impl Chunk {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .map_or(0, |p| (self.ends[p] & !PARTIAL) as usize)
    }

    /// Line `i`: its bytes and whether it is a partial piece.
    fn line(&self, i: usize) -> (&[u8], bool) {
        let end = self.ends[i];
        (
            &self.text[self.start(i)..(end & !PARTIAL) as usize],
            end & PARTIAL != 0,
        )
    }

    /// Bytes accounted in the spool for line `i`.
    fn line_size(&self, i: usize) -> usize {
        self.line(i).0.len() + LINE_OVERHEAD
    }

    /// Bytes accounted for lines `from..` together.
    fn size_from(&self, from: usize) -> usize {
        self.text.len() - self.start(from) + (self.len() - from) * LINE_OVERHEAD
    }

    /// Bytes accounted for the chunk itself, while any of its lines is spooled.
    fn overhead(&self) -> usize {
        CHUNK_OVERHEAD + self.timestamp.len()
    }
}

/// A chunk in the spool: line `i` has sequence number `first_seq + i`; lines before `head`
/// are confirmed or dropped.
struct Spooled {
    chunk: Arc<Chunk>,
    first_seq: u64,
    head: usize,
}

impl Spooled {
    /// Sequence number after this chunk's last line.
    fn end_seq(&self) -> u64 {
        self.first_seq + self.chunk.len() as u64
    }
}

/// Lines taken from the spool to publish: ranges of chunks, and what the spool knows about
/// single lines among them. Rendered to JSON by [`Batch::render`] outside the spool's lock.
#[derive(Default)]
struct Batch {
    /// (chunk, sequence number of `range.start`, lines).
    parts: Vec<(Arc<Chunk>, u64, std::ops::Range<usize>)>,
    /// (seq, lines dropped just before it), ascending.
    dropped: Vec<(u64, u64)>,
    /// Lines removed as unpublishable, ascending: skipped.
    removed: Vec<u64>,
    /// Estimated JSON bytes.
    bytes: usize,
    /// Sequence number of the last line.
    last: u64,
}

/// A line ready to publish.
struct Outgoing {
    seq: u64,
    subject: Subject,
    payload: Bytes,
}

impl Batch {
    fn clear(&mut self) {
        self.parts.clear();
        self.dropped.clear();
        self.removed.clear();
        self.bytes = 0;
    }

    /// The JSON of every line into one buffer, appended to `out` as one slice per line; lines
    /// that carry a drop count add `(app, count)` to `dropped` for a warning.
    ///
    /// A line whose JSON is over `max_payload` (the server's limit; it could never be
    /// published) is left out and its seq added to `too_big`; the next line of the batch
    /// reports it in `dropped_before`, as [`Spool::remove`] then records for a resend.
    fn render(
        &self,
        max_payload: usize,
        out: &mut Vec<Outgoing>,
        dropped: &mut Vec<(Arc<str>, u64)>,
        too_big: &mut Vec<u64>,
    ) {
        let mut buf = Vec::with_capacity(self.bytes);
        let mut ends = Vec::with_capacity(self.parts.iter().map(|p| p.2.len()).sum());
        let mut drops = self.dropped.iter().peekable();
        let mut removed = self.removed.iter().peekable();
        // Drops to report on the next line rendered (lines left out as too big).
        let mut left_out = 0;
        for (chunk, first, range) in &self.parts {
            let target = &chunk.stream.target;
            for (seq, i) in (*first..).zip(range.clone()) {
                let mut skip = false;
                while let Some(&s) = removed.next_if(|&&s| s <= seq) {
                    skip |= s == seq;
                }
                if skip {
                    continue;
                }
                let mut n = std::mem::take(&mut left_out);
                while let Some((s, k)) = drops.next_if(|(s, _)| *s <= seq) {
                    if *s == seq {
                        n += *k;
                    }
                }
                let (text, partial) = chunk.line(i);
                let start = buf.len();
                chunk
                    .stream
                    .json
                    .write(&mut buf, text, &chunk.timestamp, partial, n);
                if buf.len() - start > max_payload {
                    buf.truncate(start);
                    too_big.push(seq);
                    left_out = n + 1;
                    continue;
                }
                if n > 0 {
                    dropped.push((target.app.clone(), n));
                }
                ends.push((seq, target, buf.len()));
            }
        }
        let all = Bytes::from(buf);
        let mut start = 0;
        for (seq, target, end) in ends {
            out.push(Outgoing {
                seq,
                subject: target.subject.clone(),
                payload: all.slice(start..end),
            });
            start = end;
        }
    }
}

/// Unconfirmed lines, oldest first. Lines with `seq <= sent_upto` are in flight.
///
/// Sequence numbers are contiguous from [`front_seq`](Self::front_seq) to `next_seq - 1`;
/// a line that can never be published keeps its number (in `removed`) until it is confirmed
/// away with the lines around it.
struct Spool {
    chunks: VecDeque<Spooled>,
    /// Lines spooled, not counting removed ones.
    lines: usize,
    bytes: usize,
    limit: usize,
    next_seq: u64,
    sent_upto: u64,
    /// Dropped lines not yet attached to a line (only while every spooled line is in flight).
    carry: u64,
    /// Lines dropped just before line `seq` (empty unless the spool overflowed).
    dropped: BTreeMap<u64, u64>,
    /// Lines that cannot be published (empty unless one was too big for the server).
    removed: BTreeSet<u64>,
}

impl Spool {
    fn new(limit: usize) -> Spool {
        Spool {
            chunks: VecDeque::new(),
            lines: 0,
            bytes: 0,
            limit,
            next_seq: 1,
            sent_upto: 0,
            carry: 0,
            dropped: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }

    /// Sequence number of the oldest unconfirmed line.
    fn front_seq(&self) -> Option<u64> {
        self.chunks.front().map(|c| c.first_seq + c.head as u64)
    }

    /// The first spooled line at or after `seq` that is not removed.
    fn live_from(&self, mut seq: u64) -> Option<u64> {
        while self.removed.contains(&seq) {
            seq += 1;
        }
        (seq < self.next_seq).then_some(seq)
    }

    /// Where the first line not sent yet is, or will be (`next_seq` when all are sent).
    fn unsent_from(&self) -> u64 {
        (self.sent_upto + 1).max(self.front_seq().unwrap_or(self.next_seq))
    }

    /// The first line that has not been sent yet.
    fn first_unsent(&self) -> Option<u64> {
        self.live_from(self.unsent_from())
    }

    /// Record `n` dropped lines on the first live line at or after `seq`, or on the next line
    /// spooled if there is none.
    fn attach_dropped(&mut self, seq: u64, n: u64) {
        if n == 0 {
            return;
        }
        match self.live_from(seq) {
            Some(s) => *self.dropped.entry(s).or_default() += n,
            None => self.carry += n,
        }
    }

    /// Report `n` dropped lines on the first line not sent yet (or the next one spooled).
    fn report_dropped(&mut self, n: u64) {
        self.attach_dropped(self.unsent_from(), n);
    }

    fn push(&mut self, chunk: Chunk, stats: &Counters) {
        if chunk.len() == 0 {
            return;
        }
        let first_seq = self.next_seq;
        self.next_seq += chunk.len() as u64;
        self.lines += chunk.len();
        self.bytes += chunk.overhead() + chunk.size_from(0);
        self.chunks.push_back(Spooled {
            chunk: Arc::new(chunk),
            first_seq,
            head: 0,
        });
        // A carry exists only while every earlier line is sent: it lands on `first_seq`.
        let carry = std::mem::take(&mut self.carry);
        self.report_dropped(carry);
        // Over the bound: drop the oldest, but always keep the newest line.
        while self.bytes > self.limit && self.lines > 1 {
            let (seq, live) = self.pop_line().expect("lines > 1");
            let mut n = self.dropped.remove(&seq).unwrap_or(0);
            if live {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            self.report_dropped(n);
        }
    }

    /// Take the oldest line off the spool: its seq, and false if it was a removed one (no
    /// longer counted).
    fn pop_line(&mut self) -> Option<(u64, bool)> {
        let front = self.chunks.front_mut()?;
        let seq = front.first_seq + front.head as u64;
        let size = front.chunk.line_size(front.head);
        front.head += 1;
        if front.head == front.chunk.len() {
            let done = self.chunks.pop_front().expect("front exists");
            self.bytes -= done.chunk.overhead();
        }
        let live = self.removed.is_empty() || !self.removed.remove(&seq);
        if live {
            self.bytes -= size;
            self.lines -= 1;
        }
        Some((seq, live))
    }

    /// Everything unconfirmed is to be sent again.
    fn rewind(&mut self) {
        self.sent_upto = 0;
        let carry = std::mem::take(&mut self.carry);
        self.report_dropped(carry);
    }

    /// The server confirmed every line up to `seq`; returns how many lines that removed.
    fn confirm(&mut self, seq: u64) -> u64 {
        let mut n = 0;
        while let Some(front) = self.chunks.front() {
            if front.first_seq + front.head as u64 > seq {
                break;
            }
            if front.end_seq() <= seq + 1 && self.removed.is_empty() {
                // The usual case: the whole rest of the chunk at once.
                let done = self.chunks.pop_front().expect("front exists");
                let k = done.chunk.len() - done.head;
                self.bytes -= done.chunk.overhead() + done.chunk.size_from(done.head);
                self.lines -= k;
                n += k as u64;
            } else {
                n += u64::from(self.pop_line().expect("front exists").1);
            }
        }
        if !self.dropped.is_empty() {
            // Counts on confirmed lines went out with them.
            self.dropped = self.dropped.split_off(&(seq + 1));
        }
        // After a burst (an outage, a chatty app) give the queue's memory back, so an idle
        // narund does not keep the peak; shrinking to 2× only below 1/8 keeps this amortized O(1)
        // and rare.
        if self.chunks.capacity() > SPOOL_KEEP_CAPACITY
            && self.chunks.len() < self.chunks.capacity() / 8
        {
            self.chunks
                .shrink_to((self.chunks.len() * 2).max(SPOOL_KEEP_CAPACITY));
        }
        n
    }

    /// Take the next lines to send into `batch` (empty on entry), up to the batch limits, and
    /// count them as sent. False if there is nothing to send.
    fn next_batch(&mut self, batch: &mut Batch) -> bool {
        let Some(start) = self.first_unsent() else {
            return false;
        };
        let mut i = self.chunks.partition_point(|c| c.end_seq() <= start);
        let (mut seq, mut lines) = (start, 0);
        while let Some(c) = self.chunks.get(i) {
            let chunk = &c.chunk;
            let per_line = chunk.stream.json.overhead(chunk.timestamp.len());
            let from = (seq - c.first_seq) as usize;
            let mut to = from;
            while to < chunk.len() && lines < BATCH_LINES {
                let size = chunk.line(to).0.len() + per_line;
                if batch.bytes + size > BATCH_BYTES && lines > 0 {
                    break;
                }
                batch.bytes += size;
                lines += 1;
                to += 1;
            }
            if to > from {
                batch.parts.push((chunk.clone(), seq, from..to));
                seq += (to - from) as u64;
            }
            if to < chunk.len() {
                break;
            }
            i += 1;
        }
        if lines == 0 {
            return false;
        }
        batch.last = seq - 1;
        let range = start..=batch.last;
        batch
            .dropped
            .extend(self.dropped.range(range.clone()).map(|(&s, &n)| (s, n)));
        batch.removed.extend(self.removed.range(range));
        // Counted as sent now, under the lock: a drop reported from here on lands on a line
        // after this batch, never on one already rendered.
        self.sent_upto = self.sent_upto.max(batch.last);
        true
    }

    /// Remove the line `seq` (one that can never be published; the caller counts it as
    /// dropped); returns its app.
    fn remove(&mut self, seq: u64) -> Option<Arc<str>> {
        if seq < self.front_seq()? || seq >= self.next_seq || self.removed.contains(&seq) {
            return None;
        }
        let c = &self.chunks[self.chunks.partition_point(|c| c.end_seq() <= seq)];
        let size = c.chunk.line_size((seq - c.first_seq) as usize);
        let app = c.chunk.stream.target.app.clone();
        self.removed.insert(seq);
        self.bytes -= size;
        self.lines -= 1;
        // Reported on the next line (with what this one carried), as `Batch::render` does.
        let n = 1 + self.dropped.remove(&seq).unwrap_or(0);
        self.attach_dropped(seq + 1, n);
        Some(app)
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
            max_line_bytes: max_line_bytes.min(MAX_LINE_BYTES_LIMIT),
            spool: Mutex::new(Spool::new(spool_bytes)),
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
            spooled_lines: spool.lines,
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
            let done = self.shared.spool().front_seq().is_none_or(|s| s > target);
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
        // narund's own lines are short; the cap only keeps the offsets in range.
        let text = &text.as_bytes()[..text.len().min(MAX_LINE_BYTES_LIMIT)];
        let mut lines = self.lines(stream);
        lines.begin(text.len());
        lines.add(text, false);
        lines.spool();
    }

    fn lines(&self, stream: &str) -> ChunkLines {
        ChunkLines {
            stream: Arc::new(Stream {
                target: self.target.clone(),
                json: LogLineJson::new(
                    &self.instance_id,
                    &self.target.app,
                    &self.shared.node_id,
                    stream,
                ),
            }),
            shared: self.shared.clone(),
            timestamp: String::new(),
            text: Vec::new(),
            ends: Vec::new(),
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
        // One timestamp per chunk: its lines arrived together. They hold at most this read
        // and what the splitter kept of the previous one.
        lines.begin(data.len() + self.splitter.pending());
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

/// Collects the lines of one pipe read into a [`Chunk`] (one copy of their bytes, one
/// allocation per read) and hands it to the spool.
struct ChunkLines {
    stream: Arc<Stream>,
    shared: Arc<Shared>,
    /// Timestamp of the lines of the current chunk.
    timestamp: String,
    /// The current chunk's lines, back to back.
    text: Vec<u8>,
    /// End offset of each line in `text` (`| PARTIAL`); reused between chunks.
    ends: Vec<u32>,
}

impl ChunkLines {
    /// Start a chunk of at most `input_len` bytes of lines.
    fn begin(&mut self, input_len: usize) {
        self.timestamp = narun_wire::events::now_rfc3339();
        self.text.reserve_exact(input_len);
    }

    fn add(&mut self, text: &[u8], partial: bool) {
        self.text.extend_from_slice(text);
        // In range: a chunk holds at most one read plus one line of at most
        // MAX_LINE_BYTES_LIMIT, far below the flag bit.
        let end = self.text.len() as u32;
        self.ends.push(if partial { end | PARTIAL } else { end });
    }

    /// Hand the chunk's lines to the spool.
    fn spool(&mut self) {
        if self.ends.is_empty() {
            return; // a piece of a line: it waits in the splitter
        }
        let mut text = std::mem::take(&mut self.text);
        // Only what the lines use stays allocated while they are spooled (the newlines are
        // gone; an in-place shrink in the allocator).
        text.shrink_to_fit();
        let chunk = Chunk {
            stream: self.stream.clone(),
            timestamp: std::mem::take(&mut self.timestamp),
            text,
            ends: self.ends.as_slice().into(),
        };
        self.ends.clear();
        // A read of many tiny lines must not leave a big vector behind for the instance's life.
        if self.ends.capacity() > CHUNK_KEEP_LINES {
            self.ends = Vec::new();
        }
        let shared = &self.shared;
        let dropped_before = shared.stats.dropped.load(Ordering::Relaxed);
        shared.spool().push(chunk, &shared.stats);
        shared.wake.notify_one();
        if shared.stats.dropped.load(Ordering::Relaxed) != dropped_before {
            shared.progress.notify_waiters();
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
    let mut plan = Batch::default();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut too_big: Vec<u64> = Vec::new();
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

        if markers.len() < WINDOW && shared.spool().next_batch(&mut plan) {
            // JSON is made here, outside the spool's lock, into one buffer per batch.
            let max_payload = match client.max_payload() {
                0 => usize::MAX, // not known yet
                n => n,
            };
            plan.render(max_payload, &mut batch, &mut dropped, &mut too_big);
            let last = plan.last;
            plan.clear();
            for (app, n) in dropped.drain(..) {
                tracing::warn!(app = %app, dropped = n, "log lines were dropped (spool full, or too big for the server)");
            }
            for seq in too_big.drain(..) {
                if let Some(app) = shared.spool().remove(seq) {
                    tracing::warn!(app = %app, max_payload,
                        "dropping a log line whose JSON is bigger than the server's max_payload; lower logs.max_line_bytes");
                    shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            for e in batch.drain(..) {
                match client.publish(e.subject, e.payload).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == async_nats::client::PublishErrorKind::Send => {
                        tracing::warn!("NATS client closed; log forwarder stops");
                        return;
                    }
                    Err(err) => {
                        // An app name that is not a valid subject (or a max_payload that shrank
                        // on a reconnect): this line can never be published.
                        // (Unless the spool overflowed meanwhile and dropped it already.)
                        if let Some(app) = shared.spool().remove(e.seq) {
                            tracing::warn!(app = %app, error = %err,
                                "dropping a log line that cannot be published");
                            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            let _ = client
                .publish(ack_subject.clone(), Bytes::from(last.to_string()))
                .await;
            markers.push_back((last, Instant::now()));
            continue;
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

    fn test_stream(stream: &str) -> Arc<Stream> {
        Arc::new(Stream {
            target: Arc::new(Target {
                subject: Subject::from("logs.hello.node-1"),
                app: "hello".into(),
            }),
            json: LogLineJson::new("hello-0", "hello", "node-1", stream),
        })
    }

    /// A chunk of `lines` (text, partial), stamped 2026-01-01.
    fn test_chunk(lines: &[(&str, bool)]) -> Chunk {
        let mut text = Vec::new();
        let mut ends = Vec::new();
        for (l, partial) in lines {
            text.extend_from_slice(l.as_bytes());
            ends.push(text.len() as u32 | if *partial { PARTIAL } else { 0 });
        }
        Chunk {
            stream: test_stream("stdout"),
            timestamp: "2026-01-01T00:00:00Z".into(),
            text,
            ends: ends.into(),
        }
    }

    fn x() -> Chunk {
        test_chunk(&[("x", false)])
    }

    /// The lines the spool would send next, rendered, without marking them sent.
    /// (seq, line) as sent, and (app, count) drop warnings.
    type Peeked = (Vec<(u64, LogLine)>, Vec<(Arc<str>, u64)>);

    fn peek(spool: &mut Spool) -> Peeked {
        let sent_upto = spool.sent_upto;
        let mut plan = Batch::default();
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        if spool.next_batch(&mut plan) {
            plan.render(usize::MAX, &mut out, &mut dropped, &mut Vec::new());
            assert_eq!(plan.last, out.last().map_or(plan.last, |o| o.seq));
        }
        spool.sent_upto = sent_upto;
        let lines = out
            .iter()
            .map(|o| {
                assert_eq!(o.subject.as_str(), "logs.hello.node-1");
                (o.seq, serde_json::from_slice(&o.payload).unwrap())
            })
            .collect();
        (lines, dropped)
    }

    fn seqs(spool: &mut Spool) -> Vec<u64> {
        peek(spool).0.into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn json_matches_the_wire_type_including_dropped_before() {
        let mut spool = Spool::new(usize::MAX);
        let stats = Counters::default();
        spool.push(test_chunk(&[("hi \"there\"", true)]), &stats);
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
        let mut plan = Batch::default();
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        assert!(spool.next_batch(&mut plan));
        plan.render(usize::MAX, &mut out, &mut dropped, &mut Vec::new());
        assert_eq!(out[0].payload, serde_json::to_vec(&wire).unwrap());
        spool.dropped.insert(1, 42);
        spool.rewind();
        (plan, out) = (Batch::default(), Vec::new());
        assert!(spool.next_batch(&mut plan));
        plan.render(usize::MAX, &mut out, &mut dropped, &mut Vec::new());
        wire.dropped_before = 42;
        assert_eq!(out[0].payload, serde_json::to_vec(&wire).unwrap());
        assert_eq!((&*dropped[0].0, dropped[0].1), ("hello", 42));
    }

    fn test_shared(limit: usize, max_line_bytes: usize) -> Arc<Shared> {
        Arc::new(Shared::new("node-1".into(), max_line_bytes, limit))
    }

    /// The chunk path (raw bytes → one chunk per read → JSON when sent) sends exactly what
    /// serde_json makes of the lines the `&str` splitter produces (lossy UTF-8 included).
    #[test]
    fn chunk_lines_send_the_serde_json_of_each_line() {
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
            lines.begin(c.len() + splitter.pending());
            splitter.feed_bytes(c, &mut |t, p| lines.add(t, p));
            lines.spool();
        }
        lines.begin(splitter.pending());
        splitter.finish_bytes(&mut |t, p| lines.add(t, p));
        lines.spool();
        sink.line("stdout", "from narund");
        expected.push(("from narund".into(), false));

        let mut spool = shared.spool();
        assert_eq!(spool.lines, expected.len());
        let (sent, _) = peek(&mut spool);
        assert_eq!(sent.len(), expected.len());
        for (i, ((seq, line), (text, partial))) in sent.iter().zip(&expected).enumerate() {
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
            assert_eq!(*seq, i as u64 + 1);
        }
        // Accounting: every chunk's overhead plus every line's text and offset.
        let accounted: usize = spool
            .chunks
            .iter()
            .map(|c| c.chunk.overhead() + c.chunk.size_from(c.head))
            .sum();
        assert_eq!(spool.bytes, accounted);
        let text: usize = expected.iter().map(|(t, _)| t.len()).sum();
        // (lossy U+FFFD is 3 bytes in the JSON, 1 byte in the spool)
        assert!(spool.bytes < text + expected.len() * LINE_OVERHEAD + 6 * 256);
    }

    #[test]
    fn spool_drops_oldest_and_reports_on_the_next_unsent_line() {
        let stats = Counters::default();
        let one = x().overhead() + x().size_from(0);
        let mut spool = Spool::new(one * 3);
        for _ in 0..5 {
            spool.push(x(), &stats);
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(seqs(&mut spool), [3, 4, 5]);
        assert_eq!(spool.dropped.get(&3), Some(&2));

        // Lines 3..5 are in flight; dropping 3 reports on 6, the first unsent line.
        spool.sent_upto = 5;
        spool.push(x(), &stats);
        assert_eq!(spool.front_seq(), Some(4));
        let (sent, dropped) = peek(&mut spool);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0, &*dropped[0].0, dropped[0].1), (6, "hello", 3));
        // The count is in the JSON as sent.
        assert_eq!(sent[0].1.dropped_before, 3);

        // Confirmation removes what the server has, and its drop counts.
        assert_eq!(spool.confirm(5), 2);
        assert_eq!((spool.lines, spool.bytes), (1, one));
        assert_eq!(spool.confirm(6), 1);
        assert!(spool.dropped.is_empty());
        assert_eq!((spool.lines, spool.bytes), (0, 0));

        // After a burst the queue's memory is given back as lines are confirmed.
        spool.limit = usize::MAX;
        for _ in 0..100_000 {
            spool.push(x(), &stats);
        }
        let peak = spool.chunks.capacity();
        assert!(peak >= 100_000);
        let last = spool.next_seq - 1;
        assert_eq!(spool.confirm(last), 100_000);
        assert!(
            spool.chunks.capacity() <= SPOOL_KEEP_CAPACITY * 2,
            "{}",
            spool.chunks.capacity()
        );
        assert_eq!(spool.bytes, 0);
    }

    /// Lines of one chunk are dropped, sent, confirmed and removed one by one.
    #[test]
    fn lines_inside_a_chunk_are_handled_one_by_one() {
        let stats = Counters::default();
        let abc = || test_chunk(&[("a", false), ("bb", true), ("ccc", false)]);
        let size = abc().overhead() + abc().size_from(0);
        // Room for two chunks but their first two lines.
        let mut spool = Spool::new(2 * size - abc().line_size(0) - abc().line_size(1));
        spool.push(abc(), &stats);
        spool.push(abc(), &stats); // seqs 4..6: drops 1, 2 (and frees no chunk yet)
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(seqs(&mut spool), [3, 4, 5, 6]);
        let (sent, _) = peek(&mut spool);
        assert_eq!(sent[0].1.dropped_before, 2);
        assert_eq!(
            sent.iter()
                .map(|(_, l)| (l.message.as_str(), l.partial))
                .collect::<Vec<_>>(),
            [("ccc", false), ("a", false), ("bb", true), ("ccc", false)]
        );
        assert_eq!(
            spool.bytes,
            2 * abc().overhead() + abc().size_from(2) + abc().size_from(0)
        );

        // Send 3..6; line 5 cannot be published; confirm up to 4 (mid-chunk).
        let mut plan = Batch::default();
        assert!(spool.next_batch(&mut plan));
        assert_eq!((plan.last, spool.sent_upto), (6, 6));
        assert_eq!(spool.remove(5).as_deref(), Some("hello"));
        assert_eq!(spool.remove(5), None); // once
        assert_eq!(spool.lines, 3);
        // Reported on the next line (already rendered here: it goes out on a resend).
        assert_eq!(spool.dropped.get(&6), Some(&1));
        assert_eq!(spool.confirm(4), 2);
        assert_eq!(spool.front_seq(), Some(5));
        // A rewind resends 6 only (5 is removed), carrying the count.
        spool.rewind();
        let (sent, _) = peek(&mut spool);
        assert_eq!((sent.len(), sent[0].0, sent[0].1.dropped_before), (1, 6, 1));
        // A removed line's own count moves on with it.
        assert_eq!(spool.remove(6).as_deref(), Some("hello"));
        assert_eq!((spool.carry, spool.lines), (2, 0));
        spool.push(x(), &stats);
        let (sent, _) = peek(&mut spool);
        assert_eq!((sent[0].0, sent[0].1.dropped_before), (7, 2));
        assert_eq!(spool.confirm(7), 1);
        assert!(spool.removed.is_empty() && spool.chunks.is_empty());
        assert_eq!((spool.lines, spool.bytes), (0, 0));
    }

    /// A line over the server's max_payload is left out of the batch and reported on the next
    /// line; removing it from the spool then records the same count for a resend.
    #[test]
    fn lines_too_big_for_the_server_are_left_out_and_reported() {
        let stats = Counters::default();
        let mut spool = Spool::new(usize::MAX);
        let big = "b".repeat(500);
        spool.push(
            test_chunk(&[("a", false), (&big, false), (&big, true), ("c", false)]),
            &stats,
        );
        spool.dropped.insert(2, 5);
        let mut plan = Batch::default();
        let (mut out, mut dropped, mut too_big) = (Vec::new(), Vec::new(), Vec::new());
        assert!(spool.next_batch(&mut plan));
        plan.render(400, &mut out, &mut dropped, &mut too_big);
        assert_eq!(too_big, [2, 3]);
        let sent: Vec<(u64, LogLine)> = out
            .iter()
            .map(|o| (o.seq, serde_json::from_slice(&o.payload).unwrap()))
            .collect();
        assert_eq!(
            sent.iter()
                .map(|(s, l)| (*s, l.message.as_str(), l.dropped_before))
                .collect::<Vec<_>>(),
            [(1, "a", 0), (4, "c", 7)]
        );
        assert_eq!((&*dropped[0].0, dropped[0].1), ("hello", 7));
        for seq in too_big {
            assert!(spool.remove(seq).is_some());
        }
        assert_eq!(spool.dropped.get(&4), Some(&7));
        assert_eq!(spool.lines, 2);
        // A resend renders the same.
        spool.rewind();
        let (again, _) = peek(&mut spool);
        assert_eq!(
            again
                .iter()
                .map(|(s, l)| (*s, l.dropped_before))
                .collect::<Vec<_>>(),
            [(1, 0), (4, 7)]
        );
    }

    /// A batch stops at the line and byte limits, mid-chunk, and the next one goes on from there.
    #[test]
    fn batches_respect_their_limits_and_continue_mid_chunk() {
        let stats = Counters::default();
        let mut spool = Spool::new(usize::MAX);
        let line = "y".repeat(1000);
        let many: Vec<(&str, bool)> = vec![(line.as_str(), false); 3000];
        spool.push(test_chunk(&many), &stats);
        spool.push(test_chunk(&many), &stats);
        let mut next = 1;
        loop {
            let (sent, _) = peek(&mut spool);
            if sent.is_empty() {
                break;
            }
            assert!(sent.len() <= BATCH_LINES);
            let bytes: usize = sent.iter().map(|(_, l)| l.message.len() + 100).sum();
            assert!(bytes <= BATCH_BYTES + 100 * sent.len(), "{bytes}");
            assert_eq!(sent[0].0, next);
            assert!(sent.windows(2).all(|w| w[1].0 == w[0].0 + 1));
            next = sent.last().unwrap().0 + 1;
            spool.sent_upto = next - 1;
        }
        assert_eq!(next, 6001);
        assert_eq!(spool.confirm(6000), 6000);
    }
}
