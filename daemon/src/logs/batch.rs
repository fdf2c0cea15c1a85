//! What the publisher sends next: a [`Batch`] of spooled lines (ranges of chunks), rendered to
//! JSON outside the spool's lock into one buffer, one [`Outgoing`] slice per line.

use std::sync::Arc;

use async_nats::Subject;
use bytes::Bytes;

use super::chunk::Chunk;

/// Lines per batch (one marker per batch).
pub(super) const BATCH_LINES: usize = 4096;
/// Bytes per batch.
pub(super) const BATCH_BYTES: usize = 512 * 1024;

/// Lines taken from the spool to publish: ranges of chunks, and what the spool knows about
/// single lines among them. Rendered to JSON by [`Batch::render`] outside the spool's lock.
#[derive(Default)]
pub(super) struct Batch {
    /// (chunk, sequence number of `range.start`, lines).
    pub(super) parts: Vec<(Arc<Chunk>, u64, std::ops::Range<usize>)>,
    /// (seq, lines dropped just before it), ascending.
    pub(super) dropped: Vec<(u64, u64)>,
    /// Lines removed as unpublishable, ascending: skipped.
    pub(super) removed: Vec<u64>,
    /// Estimated JSON bytes.
    pub(super) bytes: usize,
    /// Sequence number of the last line.
    pub(super) last: u64,
}

/// A line ready to publish.
pub(super) struct Outgoing {
    pub(super) seq: u64,
    pub(super) subject: Subject,
    pub(super) payload: Bytes,
}

impl Batch {
    pub(super) fn clear(&mut self) {
        self.parts.clear();
        self.dropped.clear();
        self.removed.clear();
        self.bytes = 0;
    }

    /// The JSON of every line into one buffer, appended to `out` as one slice per line; lines
    /// that carry a drop count add `(app, count)` to `dropped` for a warning.
    ///
    /// A line whose JSON is over `max_payload` (the server's limit; it could never be
    /// published) is left out and its seq added to `too_big`; the next line of the same
    /// instance in the batch reports it in `dropped_before`, as
    /// [`Spool::remove`](super::spool::Spool::remove) then records for a resend.
    pub(super) fn render(
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
        // Drops to report on the next line rendered of an instance (lines left out as too big).
        let mut left_out: Vec<(&Arc<str>, u64)> = Vec::new();
        for (chunk, first, range) in &self.parts {
            let target = &chunk.stream.target;
            let instance = &chunk.stream.instance;
            for (seq, i) in (*first..).zip(range.clone()) {
                let mut skip = false;
                while let Some(&s) = removed.next_if(|&&s| s <= seq) {
                    skip |= s == seq;
                }
                if skip {
                    continue;
                }
                let mut n = 0;
                if !left_out.is_empty()
                    && let Some(k) = left_out.iter().position(|(id, _)| *id == instance)
                {
                    n = left_out.swap_remove(k).1;
                }
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
                    left_out.push((instance, n + 1));
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
