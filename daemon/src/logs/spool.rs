//! The node-wide spool: every line not yet confirmed by the server, in order, bounded by bytes,
//! with the sequence numbers the publisher's markers confirm, and each app's share of it.
//!
//! # Per-app truth
//!
//! Every line belongs to one app (its [`Target`](super::chunk::Target), a slot in
//! [`Spool::apps`]) and one instance. When the spool is over its bound, lines are dropped from
//! **one app's own oldest lines**: the app that is adding lines, if it holds at least the
//! average share, else the `drop` app that holds the most. An app below the average never loses
//! a line because another one is chatty, and `block` apps never lose lines to the bound (their
//! readers stop instead, [`Spool::read_limit`]).
//!
//! A dropped line is counted on **its own instance**: the count rides on the next unsent line of
//! that instance (`dropped_before`, on the app's own subject), or waits in `carry` for that
//! instance's next line (at the latest a mark line when its output ends). A line already sent
//! but not confirmed yet is not lost when it leaves the spool: it waits in `limbo` until its
//! marker confirms it (delivered) or the publisher rewinds (then it counts as dropped). So the
//! sum of the `dropped_before` of an app's lines is exactly the number of its lines that never
//! reached the server while it stayed connected.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::batch::{BATCH_BYTES, BATCH_LINES, Batch};
use super::chunk::{CHUNK_OVERHEAD_MAX, Chunk, LINE_OVERHEAD, Stream};

/// Spool queue slots (chunks) kept allocated when it empties after a burst.
const SPOOL_KEEP_CAPACITY: usize = 256;
/// Sent lines dropped from the spool kept waiting for their marker across a late-marker rewind.
const LIMBO_MAX: usize = 1 << 16;
/// A `block` app with nothing spooled may always read this much (progress even when its share
/// is smaller than one read).
pub(super) const MIN_READ: usize = 4096;

/// What an app's lines do when its share of the spool is full (the spec's `logOverflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the app's oldest lines, counted exactly.
    #[default]
    Drop,
    /// Stop reading the app's pipes until its lines are confirmed.
    Block,
}

impl From<&narun_spec::LogOverflow> for Overflow {
    /// `block` blocks; `drop` (and anything invalid, which validation refuses) drops.
    fn from(p: &narun_spec::LogOverflow) -> Overflow {
        match p {
            narun_spec::LogOverflow::Block => Overflow::Block,
            _ => Overflow::Drop,
        }
    }
}

/// A chunk in the spool: line `i` has sequence number `first_seq + i`; lines before `head`
/// are confirmed or dropped.
pub(super) struct Spooled {
    pub(super) chunk: Arc<Chunk>,
    first_seq: u64,
    pub(super) head: usize,
}

impl Spooled {
    /// Sequence number after this chunk's last line.
    fn end_seq(&self) -> u64 {
        self.first_seq + self.chunk.len() as u64
    }

    fn head_seq(&self) -> u64 {
        self.first_seq + self.head as u64
    }
}

/// One app's part of the spool.
pub(super) struct AppShare {
    pub(super) name: Arc<str>,
    pub(super) policy: Overflow,
    /// Wakes its `block` readers when its lines are confirmed. Every [`Target`] of the app holds
    /// a clone: a count above 1 means the app is active (it has sinks or spooled lines).
    ///
    /// [`Target`]: super::chunk::Target
    pub(super) room: Arc<Notify>,
    /// A reader waits on `room`.
    paused: bool,
    pub(super) lines: usize,
    pub(super) bytes: usize,
    /// `first_seq` of its chunks in [`Spool::chunks`], oldest first.
    chunks: VecDeque<u64>,
}

impl AppShare {
    fn active(&self) -> bool {
        Arc::strong_count(&self.room) > 1 || self.lines > 0
    }
}

/// A line that left the spool after it was sent, before it was confirmed: delivered if its
/// marker comes back, dropped on a rewind.
struct Limbo {
    stream: Arc<Stream>,
    /// Its `dropped_before` as sent.
    count: u64,
    mark: bool,
}

/// Unconfirmed lines, oldest first. Lines with `seq <= sent_upto` are in flight.
///
/// Sequence numbers grow with every line spooled; lines dropped from the middle of the spool
/// (another app's lines were older) leave gaps. A line that can never be published keeps its
/// number (in `removed`) until it is confirmed away with the lines around it.
pub(super) struct Spool {
    pub(super) chunks: VecDeque<Spooled>,
    /// Lines spooled, not counting removed ones.
    pub(super) lines: usize,
    pub(super) bytes: usize,
    pub(super) limit: usize,
    pub(super) next_seq: u64,
    pub(super) sent_upto: u64,
    /// Per app, indexed by `Target::slot`.
    pub(super) apps: Vec<AppShare>,
    /// Dropped lines of an instance not yet attached to one of its lines.
    pub(super) carry: HashMap<Arc<str>, u64>,
    /// Lines dropped just before line `seq` (of the same instance).
    pub(super) dropped: BTreeMap<u64, u64>,
    /// Lines that cannot be published (empty unless one was too big for the server).
    removed: BTreeSet<u64>,
    /// Sent lines dropped before their confirmation, by seq.
    limbo: BTreeMap<u64, Limbo>,
    /// Bytes of every line ever spooled (`/metrics`; `next_seq - 1` counts the lines).
    pub(super) received_bytes: u64,
}

impl Spool {
    pub(super) fn new(limit: usize) -> Spool {
        Spool {
            chunks: VecDeque::new(),
            lines: 0,
            bytes: 0,
            limit,
            next_seq: 1,
            sent_upto: 0,
            apps: Vec::new(),
            carry: HashMap::new(),
            dropped: BTreeMap::new(),
            removed: BTreeSet::new(),
            limbo: BTreeMap::new(),
            received_bytes: 0,
        }
    }

    /// The slot of `app` (created, or reused from an app nothing refers to any more), with its
    /// policy set to `policy` (the newest sink's spec wins); and its `room` to share.
    pub(super) fn register(&mut self, app: &str, policy: Overflow) -> (usize, Arc<Notify>) {
        let slot = match self.apps.iter().position(|a| &*a.name == app) {
            Some(i) => i,
            None => match self.apps.iter().position(|a| !a.active()) {
                Some(i) => {
                    let a = &mut self.apps[i];
                    a.name = app.into();
                    a.paused = false;
                    a.chunks = VecDeque::new();
                    i
                }
                None => {
                    self.apps.push(AppShare {
                        name: app.into(),
                        policy,
                        room: Arc::new(Notify::new()),
                        paused: false,
                        lines: 0,
                        bytes: 0,
                        chunks: VecDeque::new(),
                    });
                    self.apps.len() - 1
                }
            },
        };
        self.apps[slot].policy = policy;
        (slot, self.apps[slot].room.clone())
    }

    /// Every app drops from now on (the forwarder is closed: nothing will be confirmed); the
    /// `room`s of paused readers, to wake them.
    pub(super) fn all_drop(&mut self) -> Vec<Arc<Notify>> {
        for a in &mut self.apps {
            a.policy = Overflow::Drop;
            a.paused = false;
        }
        self.apps.iter().map(|a| a.room.clone()).collect()
    }

    /// Bytes of the bound an app may hold under `block`: the bound shared by the active apps.
    pub(super) fn share(&self) -> usize {
        self.limit / self.apps.iter().filter(|a| a.active()).count().max(1)
    }

    /// How many bytes a reader of app `slot` may read now, with `pending` bytes waiting in its
    /// splitter: everything for a `drop` app; for a `block` app what surely fits in its share
    /// (a read of `n` bytes becomes at most `n + 1` lines of [`LINE_OVERHEAD`] each plus one
    /// chunk's overhead), at least [`MIN_READ`] while it has nothing spooled. `None`: wait
    /// (the app is marked paused; the publisher wakes its `room` when lines are confirmed).
    pub(super) fn read_limit(&mut self, slot: usize, pending: usize, max: usize) -> Option<usize> {
        let a = &self.apps[slot];
        if a.policy == Overflow::Drop {
            return Some(max);
        }
        let free = self.share().saturating_sub(a.bytes);
        let fits =
            free.saturating_sub(CHUNK_OVERHEAD_MAX + pending + LINE_OVERHEAD) / (1 + LINE_OVERHEAD);
        let n = if a.bytes == 0 {
            fits.max(MIN_READ)
        } else {
            fits
        };
        if n == 0 {
            self.apps[slot].paused = true;
            return None;
        }
        Some(n.min(max))
    }

    /// Sent lines dropped from the spool wait for their marker.
    pub(super) fn in_limbo(&self) -> bool {
        !self.limbo.is_empty()
    }

    /// Sequence number of the oldest unconfirmed line.
    pub(super) fn front_seq(&self) -> Option<u64> {
        self.chunks.front().map(Spooled::head_seq)
    }

    /// The oldest line sent and not confirmed or dropped yet, or still spooled.
    pub(super) fn oldest_pending(&self) -> Option<u64> {
        let limbo = self.limbo.keys().next().copied();
        match (self.front_seq(), limbo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Index in `chunks` of the chunk that holds `seq` or the first one after it.
    fn chunk_at(&self, seq: u64) -> usize {
        self.chunks.partition_point(|c| c.end_seq() <= seq)
    }

    /// The first spooled line at or after `seq` that is not removed.
    fn live_from(&self, seq: u64) -> Option<u64> {
        let mut s = seq;
        for c in self.chunks.range(self.chunk_at(seq)..) {
            s = s.max(c.head_seq());
            while s < c.end_seq() && self.removed.contains(&s) {
                s += 1;
            }
            if s < c.end_seq() {
                return Some(s);
            }
        }
        None
    }

    /// Where the first line not sent yet is, or will be (`next_seq` when all are sent).
    fn unsent_from(&self) -> u64 {
        (self.sent_upto + 1).max(self.front_seq().unwrap_or(self.next_seq))
    }

    /// The first line that has not been sent yet.
    fn first_unsent(&self) -> Option<u64> {
        self.live_from(self.unsent_from())
    }

    /// Record `n` dropped lines of `stream`'s instance on its first live line at or after
    /// `seq` (and not sent yet, unless `sent_too`), or on its next line spooled if there is
    /// none.
    fn attach_dropped(&mut self, stream: &Stream, seq: u64, n: u64, sent_too: bool) {
        if n == 0 {
            return;
        }
        let from = if sent_too {
            seq
        } else {
            seq.max(self.unsent_from())
        };
        let slot = stream.target.slot;
        let start = self.apps[slot].chunks.partition_point(|&f| {
            // chunks of this app that end before `from` are of no use
            let i = self.chunks.partition_point(|c| c.first_seq < f);
            self.chunks[i].end_seq() <= from
        });
        for &first in self.apps[slot].chunks.range(start..) {
            let c = &self.chunks[self.chunks.partition_point(|c| c.first_seq < first)];
            if *c.chunk.stream.instance != *stream.instance {
                continue;
            }
            let mut s = from.max(c.head_seq());
            while s < c.end_seq() && self.removed.contains(&s) {
                s += 1;
            }
            if s < c.end_seq() {
                *self.dropped.entry(s).or_default() += n;
                return;
            }
        }
        *self.carry.entry(stream.instance.clone()).or_default() += n;
    }

    /// Spool the lines of `chunk`, then drop lines while over the bound (never the newest).
    pub(super) fn push(&mut self, chunk: Chunk, stats: &Counters) {
        if chunk.len() == 0 {
            return;
        }
        let first_seq = self.next_seq;
        let slot = chunk.stream.target.slot;
        let size = chunk.overhead() + chunk.size_from(0);
        self.next_seq += chunk.len() as u64;
        self.lines += chunk.len();
        self.bytes += size;
        // The lines' text (without the accounting overheads).
        let text = chunk.size_from(0) - chunk.len() * super::chunk::LINE_OVERHEAD;
        self.received_bytes += text as u64;
        let app = &mut self.apps[slot];
        app.lines += chunk.len();
        app.bytes += size;
        app.chunks.push_back(first_seq);
        if !self.carry.is_empty()
            && let Some(n) = self.carry.remove(&chunk.stream.instance)
        {
            *self.dropped.entry(first_seq).or_default() += n;
        }
        self.chunks.push_back(Spooled {
            chunk: Arc::new(chunk),
            first_seq,
            head: 0,
        });
        self.overflow(slot, stats);
    }

    /// While over the bound, drop one app's oldest line (see the module docs).
    fn overflow(&mut self, pusher: usize, stats: &Counters) {
        if self.bytes <= self.limit {
            return;
        }
        let holding = self.apps.iter().filter(|a| a.lines > 0).count().max(1);
        while self.bytes > self.limit && self.lines > 1 {
            let p = &self.apps[pusher];
            // (u64: `bytes * holding` may not fit a 32-bit usize.)
            let at_least_average = p.bytes as u64 * holding as u64 >= self.bytes as u64;
            let victim = if p.policy == Overflow::Drop && p.lines > 0 && at_least_average {
                Some(pusher)
            } else {
                self.apps
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.policy == Overflow::Drop && a.lines > 0)
                    .max_by_key(|(_, a)| a.bytes)
                    .map(|(i, _)| i)
            };
            let Some(victim) = victim else {
                return; // only `block` lines: their readers wait instead
            };
            self.drop_oldest(victim, stats);
        }
    }

    /// Drop app `slot`'s oldest line and account for it.
    fn drop_oldest(&mut self, slot: usize, stats: &Counters) {
        let Some(&first) = self.apps[slot].chunks.front() else {
            return;
        };
        let at = self.chunks.partition_point(|c| c.first_seq < first);
        let stream = self.chunks[at].chunk.stream.clone();
        let mark = self.chunks[at].chunk.mark;
        let (seq, live) = self.pop_line(at);
        let count = self.dropped.remove(&seq).unwrap_or(0);
        if !live {
            return; // a removed line: already counted, its count moved on
        }
        if seq <= self.sent_upto {
            self.limbo.insert(
                seq,
                Limbo {
                    stream,
                    count,
                    mark,
                },
            );
            return;
        }
        if !mark {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.attach_dropped(&stream, seq + 1, count + u64::from(!mark), false);
    }

    /// Take the oldest line of chunk `at` off the spool: its seq, and false if it was a removed
    /// one (no longer counted).
    fn pop_line(&mut self, at: usize) -> (u64, bool) {
        let c = &mut self.chunks[at];
        let seq = c.head_seq();
        let size = c.chunk.line_size(c.head);
        let slot = c.chunk.stream.target.slot;
        c.head += 1;
        if c.head == c.chunk.len() {
            let done = self.chunks.remove(at).expect("index exists");
            self.bytes -= done.chunk.overhead();
            let app = &mut self.apps[slot];
            app.bytes -= done.chunk.overhead();
            let _front = app.chunks.pop_front();
            debug_assert_eq!(_front, Some(done.first_seq));
        }
        let live = self.removed.is_empty() || !self.removed.remove(&seq);
        if live {
            self.bytes -= size;
            self.lines -= 1;
            let app = &mut self.apps[slot];
            app.bytes -= size;
            app.lines -= 1;
        }
        (seq, live)
    }

    /// Everything unconfirmed is to be sent again. `disconnected`: the connection the sent
    /// lines were written on is gone, so sent lines dropped meanwhile are lost. Otherwise (a
    /// marker late, the same connection) they are still on their way in order: they stay in
    /// limbo and a later marker confirms them (at most [`LIMBO_MAX`]; past it the oldest
    /// count as lost, so a server that never echoes cannot grow it).
    pub(super) fn rewind(&mut self, stats: &Counters, disconnected: bool) {
        self.sent_upto = 0;
        let lost = if disconnected {
            std::mem::take(&mut self.limbo)
        } else if self.limbo.len() > LIMBO_MAX {
            let keep = *self
                .limbo
                .keys()
                .nth(self.limbo.len() - LIMBO_MAX)
                .expect("in range");
            let newer = self.limbo.split_off(&keep);
            std::mem::replace(&mut self.limbo, newer)
        } else {
            BTreeMap::new()
        };
        for (seq, l) in lost {
            if !l.mark {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.attach_dropped(&l.stream, seq + 1, l.count + u64::from(!l.mark), false);
        }
    }

    /// The server confirmed every line up to `seq`; returns how many lines that removed
    /// (including sent lines that had left the spool), and wakes paused `block` readers.
    pub(super) fn confirm(&mut self, seq: u64, wake: &mut Vec<Arc<Notify>>) -> u64 {
        let mut n = 0;
        while let Some(front) = self.chunks.front() {
            if front.head_seq() > seq {
                break;
            }
            if front.end_seq() <= seq + 1 && self.removed.is_empty() {
                // The usual case: the whole rest of the chunk at once.
                let done = self.chunks.pop_front().expect("front exists");
                let k = done.chunk.len() - done.head;
                let size = done.chunk.overhead() + done.chunk.size_from(done.head);
                self.bytes -= size;
                self.lines -= k;
                let app = &mut self.apps[done.chunk.stream.target.slot];
                app.bytes -= size;
                app.lines -= k;
                let _front = app.chunks.pop_front();
                debug_assert_eq!(_front, Some(done.first_seq));
                n += k as u64;
            } else {
                n += u64::from(self.pop_line(0).1);
            }
        }
        if !self.limbo.is_empty() {
            let later = self.limbo.split_off(&(seq + 1));
            n += std::mem::replace(&mut self.limbo, later).len() as u64;
        }
        if !self.dropped.is_empty() {
            // Counts on confirmed lines went out with them.
            self.dropped = self.dropped.split_off(&(seq + 1));
        }
        for a in &mut self.apps {
            if a.paused {
                a.paused = false;
                wake.push(a.room.clone());
            }
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
    pub(super) fn next_batch(&mut self, batch: &mut Batch) -> bool {
        let Some(start) = self.first_unsent() else {
            return false;
        };
        let mut i = self.chunk_at(start);
        let (mut seq, mut lines) = (start, 0);
        while let Some(c) = self.chunks.get(i) {
            let chunk = &c.chunk;
            let per_line = chunk.stream.json.overhead(chunk.timestamp.len());
            let from = (seq.max(c.first_seq) - c.first_seq) as usize;
            let from = from.max(c.head);
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
                batch
                    .parts
                    .push((chunk.clone(), c.first_seq + from as u64, from..to));
                batch.last = c.first_seq + to as u64 - 1;
            }
            if to < chunk.len() {
                break;
            }
            seq = c.end_seq();
            i += 1;
        }
        if lines == 0 {
            return false;
        }
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
    pub(super) fn remove(&mut self, seq: u64) -> Option<Arc<str>> {
        if seq >= self.next_seq || self.removed.contains(&seq) {
            return None;
        }
        let c = self.chunks.get(self.chunk_at(seq))?;
        if seq < c.head_seq() {
            return None;
        }
        let size = c.chunk.line_size((seq - c.first_seq) as usize);
        let stream = c.chunk.stream.clone();
        self.removed.insert(seq);
        self.bytes -= size;
        self.lines -= 1;
        let app = &mut self.apps[stream.target.slot];
        app.bytes -= size;
        app.lines -= 1;
        // Reported on the next line of its instance (with what this one carried), even one
        // in flight, as `Batch::render` did.
        let n = 1 + self.dropped.remove(&seq).unwrap_or(0);
        self.attach_dropped(&stream, seq + 1, n, true);
        Some(stream.target.app.clone())
    }
}

/// Lines confirmed and dropped ([`LogStats`](super::LogStats)): the spool counts its drops, the
/// publisher its confirmations and the lines it cannot publish.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) published: AtomicU64,
    pub(super) dropped: AtomicU64,
}

// (`pub(super)`: `peek` also serves the test of the chunk path in `pipe.rs`.)
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::logs::chunk::{PARTIAL, Stream, Target};
    use async_nats::Subject;
    use narun_wire::events::{LogLine, LogLineJson};

    fn test_stream(stream: &str) -> Arc<Stream> {
        Arc::new(Stream {
            target: Arc::new(Target {
                subject: Subject::from("logs.hello.node-1"),
                app: "hello".into(),
                slot: 0,
                room: Arc::new(tokio::sync::Notify::new()),
            }),
            instance: "hello-0".into(),
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
            mark: false,
        }
    }

    /// A spool of at most `limit` bytes where app `hello` has slot 0.
    pub(crate) fn test_spool(limit: usize) -> Spool {
        let mut spool = Spool::new(limit);
        assert_eq!(spool.register("hello", Overflow::Drop).0, 0);
        spool
    }

    fn x() -> Chunk {
        test_chunk(&[("x", false)])
    }

    /// The lines the spool would send next, rendered, without marking them sent.
    /// (seq, line) as sent, and (app, count) drop warnings.
    pub(crate) type Peeked = (Vec<(u64, LogLine)>, Vec<(Arc<str>, u64)>);

    pub(crate) fn peek(spool: &mut Spool) -> Peeked {
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
        let mut spool = test_spool(usize::MAX);
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
            trace_id: None,
        };
        let mut plan = Batch::default();
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        assert!(spool.next_batch(&mut plan));
        plan.render(usize::MAX, &mut out, &mut dropped, &mut Vec::new());
        assert_eq!(out[0].payload, serde_json::to_vec(&wire).unwrap());
        spool.dropped.insert(1, 42);
        spool.rewind(&stats, true);
        (plan, out) = (Batch::default(), Vec::new());
        assert!(spool.next_batch(&mut plan));
        plan.render(usize::MAX, &mut out, &mut dropped, &mut Vec::new());
        wire.dropped_before = 42;
        assert_eq!(out[0].payload, serde_json::to_vec(&wire).unwrap());
        assert_eq!((&*dropped[0].0, dropped[0].1), ("hello", 42));
    }

    #[test]
    fn spool_drops_oldest_and_reports_on_the_next_unsent_line() {
        let stats = Counters::default();
        let one = x().overhead() + x().size_from(0);
        let mut spool = test_spool(one * 3);
        for _ in 0..5 {
            spool.push(x(), &stats);
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(seqs(&mut spool), [3, 4, 5]);
        assert_eq!(spool.dropped.get(&3), Some(&2));

        // Lines 3..5 are in flight: dropping 3 is no loss yet (it was sent); it waits in limbo.
        spool.sent_upto = 5;
        spool.push(x(), &stats);
        assert_eq!(spool.front_seq(), Some(4));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        let (sent, dropped) = peek(&mut spool);
        assert_eq!((sent.len(), sent[0].0, sent[0].1.dropped_before), (1, 6, 0));
        assert!(dropped.is_empty());

        // Confirmation removes what the server has (3 included: it arrived), and its drop
        // counts.
        assert_eq!(spool.confirm(5, &mut Vec::new()), 3);
        assert_eq!((spool.lines, spool.bytes), (1, one));
        assert_eq!(spool.confirm(6, &mut Vec::new()), 1);
        assert!(spool.dropped.is_empty() && spool.limbo.is_empty());
        assert_eq!((spool.lines, spool.bytes), (0, 0));

        // The same, but the connection is lost before the marker: 7 was sent, then dropped,
        // then everything rewound: 7 is lost, and counted on the next line of its instance.
        for _ in 0..3 {
            spool.push(x(), &stats); // 7, 8, 9
        }
        spool.sent_upto = 9;
        spool.push(x(), &stats); // 10: drops 7 into limbo
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        spool.rewind(&stats, true);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        let (sent, dropped) = peek(&mut spool);
        assert_eq!(
            sent.iter()
                .map(|(s, l)| (*s, l.dropped_before))
                .collect::<Vec<_>>(),
            [(8, 1), (9, 0), (10, 0)]
        );
        assert_eq!((&*dropped[0].0, dropped[0].1), ("hello", 1));
        assert_eq!(spool.confirm(10, &mut Vec::new()), 3);

        // A marker only late (same connection): the sent line dropped meanwhile is still on its
        // way; it stays in limbo across the rewind and the next marker confirms it.
        for _ in 0..3 {
            spool.push(x(), &stats); // 11, 12, 13
        }
        spool.sent_upto = 13;
        spool.push(x(), &stats); // 14: drops 11 into limbo
        spool.rewind(&stats, false);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        let (sent, _) = peek(&mut spool);
        assert!(sent.iter().all(|(_, l)| l.dropped_before == 0));
        assert_eq!(spool.oldest_pending(), Some(11));
        assert_eq!(spool.confirm(14, &mut Vec::new()), 4);
        assert!(!spool.in_limbo());

        // After a burst the queue's memory is given back as lines are confirmed.
        spool.limit = usize::MAX;
        for _ in 0..100_000 {
            spool.push(x(), &stats);
        }
        let peak = spool.chunks.capacity();
        assert!(peak >= 100_000);
        let last = spool.next_seq - 1;
        assert_eq!(spool.confirm(last, &mut Vec::new()), 100_000);
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
        let mut spool = test_spool(2 * size - abc().line_size(0) - abc().line_size(1));
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
        assert_eq!(spool.confirm(4, &mut Vec::new()), 2);
        assert_eq!(spool.front_seq(), Some(5));
        // A rewind resends 6 only (5 is removed), carrying the count.
        spool.rewind(&stats, true);
        let (sent, _) = peek(&mut spool);
        assert_eq!((sent.len(), sent[0].0, sent[0].1.dropped_before), (1, 6, 1));
        // A removed line's own count moves on with it.
        assert_eq!(spool.remove(6).as_deref(), Some("hello"));
        assert_eq!((spool.carry.get("hello-0"), spool.lines), (Some(&2), 0));
        spool.push(x(), &stats);
        let (sent, _) = peek(&mut spool);
        assert_eq!((sent[0].0, sent[0].1.dropped_before), (7, 2));
        assert_eq!(spool.confirm(7, &mut Vec::new()), 1);
        assert!(spool.removed.is_empty() && spool.chunks.is_empty());
        assert_eq!((spool.lines, spool.bytes), (0, 0));
    }

    /// A line over the server's max_payload is left out of the batch and reported on the next
    /// line; removing it from the spool then records the same count for a resend.
    #[test]
    fn lines_too_big_for_the_server_are_left_out_and_reported() {
        let stats = Counters::default();
        let mut spool = test_spool(usize::MAX);
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
        spool.rewind(&stats, true);
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
        let mut spool = test_spool(usize::MAX);
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
        assert_eq!(spool.confirm(6000, &mut Vec::new()), 6000);
    }

    /// A one-line chunk `text` of `instance` of the app in `slot`.
    fn line_of(spool: &Spool, slot: usize, instance: &str, text: &str) -> Chunk {
        let app = spool.apps[slot].name.clone();
        let mut c = test_chunk(&[(text, false)]);
        c.stream = Arc::new(Stream {
            target: Arc::new(Target {
                subject: Subject::from(format!("logs.{app}.node-1")),
                app: app.clone(),
                slot,
                room: spool.apps[slot].room.clone(),
            }),
            instance: instance.into(),
            json: LogLineJson::new(instance, &app, "node-1", "stdout"),
        });
        c
    }

    /// Everything the spool would send, as (instance, message, dropped_before), marking it sent.
    fn drain(spool: &mut Spool) -> Vec<(String, String, u64)> {
        let mut all = Vec::new();
        loop {
            let mut plan = Batch::default();
            if !spool.next_batch(&mut plan) {
                return all;
            }
            let mut out = Vec::new();
            plan.render(usize::MAX, &mut out, &mut Vec::new(), &mut Vec::new());
            for o in out {
                let l: LogLine = serde_json::from_slice(&o.payload).unwrap();
                assert_eq!(o.subject.as_str(), format!("logs.{}.node-1", l.app_name));
                all.push((l.instance_id, l.message, l.dropped_before));
            }
        }
    }

    /// A chatty app drops its own oldest lines, never those of a quiet one; each drop count
    /// rides on a line of the instance that lost the lines, and they sum to its losses.
    #[test]
    fn drops_are_taken_from_and_counted_on_the_chatty_instance() {
        let stats = Counters::default();
        let one = x().overhead() + x().size_from(0);
        let mut spool = Spool::new(one * 10);
        // (Holding the rooms, as their sinks' targets do, keeps the slots apart.)
        let (a, _ra) = spool.register("chatty", Overflow::Drop);
        let (b, _rb) = spool.register("quiet", Overflow::Drop);
        spool.push(line_of(&spool, b, "quiet-0", "q"), &stats);
        spool.push(line_of(&spool, b, "quiet-0", "q"), &stats);
        for i in 0..100 {
            let inst = if i % 2 == 0 { "chatty-0" } else { "chatty-1" };
            spool.push(line_of(&spool, a, inst, "c"), &stats);
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 92);
        let sent = drain(&mut spool);
        let count = |inst: &str| {
            let lines = sent.iter().filter(|l| l.0 == inst);
            (lines.clone().count(), lines.map(|l| l.2).sum::<u64>())
        };
        assert_eq!(count("quiet-0"), (2, 0));
        // 50 lines each; what arrived + the drop marks = what was written.
        let (n0, d0) = count("chatty-0");
        let (n1, d1) = count("chatty-1");
        assert_eq!((n0 as u64 + d0, n1 as u64 + d1), (50, 50), "{sent:?}");
        assert_eq!(d0 + d1, 92);
        assert_eq!(spool.apps[b].lines, 2);
        assert_eq!(spool.apps[a].lines + spool.apps[b].lines, spool.lines);
        assert_eq!(spool.apps[a].bytes + spool.apps[b].bytes, spool.bytes);
    }

    /// A `block` app is never dropped from: a drop app beside it loses lines instead, and the
    /// block app's reader is told to wait once its share is full, then woken by a confirmation.
    #[test]
    fn block_apps_are_never_dropped_and_wait_for_room() {
        let stats = Counters::default();
        let mut spool = Spool::new(64 * 1024);
        let (blk, room) = spool.register("careful", Overflow::Block);
        let (drp, _rd) = spool.register("chatty", Overflow::Drop);
        // Two apps are active (their targets hold the rooms): a share is half the bound.
        let keep = [
            line_of(&spool, blk, "careful-0", ""),
            line_of(&spool, drp, "chatty-0", ""),
        ];
        assert_eq!(spool.share(), 32 * 1024);
        let text = "b".repeat(1000);
        let mut pushed = 0;
        while let Some(n) = spool.read_limit(blk, 0, 64 * 1024) {
            // A read of n bytes: here one line of up to 1000.
            let line = &text[..n.min(1000)];
            spool.push(line_of(&spool, blk, "careful-0", line), &stats);
            pushed += 1;
            assert!(pushed < 100, "never paused");
        }
        assert!(
            spool.apps[blk].bytes <= spool.share(),
            "{}",
            spool.apps[blk].bytes
        );
        for _ in 0..1000 {
            spool.push(line_of(&spool, drp, "chatty-0", &text), &stats);
        }
        assert!(spool.bytes <= spool.limit);
        assert_eq!(spool.apps[blk].lines, pushed);
        assert!(stats.dropped.load(Ordering::Relaxed) > 900);
        // Confirming wakes the paused reader's room, and it may read again.
        let mut wake = Vec::new();
        let last = spool.next_seq - 1;
        drain(&mut spool);
        spool.confirm(last, &mut wake);
        assert_eq!(wake.len(), 1);
        assert!(Arc::ptr_eq(&wake[0], &room));
        assert!(spool.read_limit(blk, 0, 64 * 1024).is_some());
        drop(keep);
    }
}
