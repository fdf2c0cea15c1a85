//! The node-wide spool: every line not yet confirmed by the server, in order, bounded by bytes
//! (oldest dropped first and counted), with the sequence numbers the publisher's markers confirm.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::batch::{BATCH_BYTES, BATCH_LINES, Batch};
use super::chunk::Chunk;

/// Spool queue slots (chunks) kept allocated when it empties after a burst.
const SPOOL_KEEP_CAPACITY: usize = 256;

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
}

/// Unconfirmed lines, oldest first. Lines with `seq <= sent_upto` are in flight.
///
/// Sequence numbers are contiguous from [`front_seq`](Self::front_seq) to `next_seq - 1`;
/// a line that can never be published keeps its number (in `removed`) until it is confirmed
/// away with the lines around it.
pub(super) struct Spool {
    pub(super) chunks: VecDeque<Spooled>,
    /// Lines spooled, not counting removed ones.
    pub(super) lines: usize,
    pub(super) bytes: usize,
    limit: usize,
    pub(super) next_seq: u64,
    pub(super) sent_upto: u64,
    /// Dropped lines not yet attached to a line (only while every spooled line is in flight).
    carry: u64,
    /// Lines dropped just before line `seq` (empty unless the spool overflowed).
    dropped: BTreeMap<u64, u64>,
    /// Lines that cannot be published (empty unless one was too big for the server).
    removed: BTreeSet<u64>,
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
            carry: 0,
            dropped: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }

    /// Sequence number of the oldest unconfirmed line.
    pub(super) fn front_seq(&self) -> Option<u64> {
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

    pub(super) fn push(&mut self, chunk: Chunk, stats: &Counters) {
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
    pub(super) fn rewind(&mut self) {
        self.sent_upto = 0;
        let carry = std::mem::take(&mut self.carry);
        self.report_dropped(carry);
    }

    /// The server confirmed every line up to `seq`; returns how many lines that removed.
    pub(super) fn confirm(&mut self, seq: u64) -> u64 {
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
    pub(super) fn next_batch(&mut self, batch: &mut Batch) -> bool {
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
    pub(super) fn remove(&mut self, seq: u64) -> Option<Arc<str>> {
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
