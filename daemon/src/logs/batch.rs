//! What the publisher sends next: a [`Batch`] of spooled lines (ranges of chunks), rendered to
//! JSON outside the spool's lock by [`Render`], one line at a time into one reused buffer, each
//! line split off as its own [`Outgoing`] payload right before it is published.

use std::sync::Arc;

use async_nats::Subject;
use bytes::{Bytes, BytesMut};
use narun_wire::events::LogLineJson;

use super::chunk::Chunk;

/// Lines per batch (one marker per batch).
pub(super) const BATCH_LINES: usize = 4096;
/// Bytes per batch.
pub(super) const BATCH_BYTES: usize = 512 * 1024;

/// Lines taken from the spool to publish: ranges of chunks, and what the spool knows about
/// single lines among them. Rendered to JSON by [`Render`] outside the spool's lock.
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

    /// Every line's JSON at once, appended to `out` (see [`Render`], which this drives; the
    /// publisher renders one line at a time instead, right before it publishes it).
    #[cfg(test)]
    pub(super) fn render(
        &self,
        max_payload: usize,
        out: &mut Vec<Outgoing>,
        dropped: &mut Vec<(Arc<str>, u64)>,
        too_big: &mut Vec<u64>,
    ) {
        let mut buf = BytesMut::with_capacity(self.bytes);
        let mut lines = Render::new(self, max_payload);
        while let Some(o) = lines.next(&mut buf, dropped, too_big) {
            out.push(o);
        }
    }
}

/// Renders the lines of a [`Batch`] one at a time, in order, each into `buf` and split off
/// as its own `Bytes` (the lines of a batch share `buf`'s allocation; once async-nats has
/// copied them all into its write buffer, the next batch reuses it: no allocation, no fresh
/// pages per batch, and each line is published while its JSON is still in the cache).
///
/// Lines removed as unpublishable are skipped. A line carries the drops recorded just before
/// it (`dropped_before`; each `(app, count)` is also added to `dropped` for a warning). A
/// line whose JSON is over `max_payload` (the server's limit; it could never be published)
/// is left out and its seq added to `too_big`; the next line of the same instance in the
/// batch reports it in `dropped_before`, as
/// [`Spool::remove`](super::spool::Spool::remove) then records for a resend.
pub(super) struct Render<'a> {
    batch: &'a Batch,
    max_payload: usize,
    /// Next line: index into `batch.parts` and offset in that part's range.
    part: usize,
    at: usize,
    /// Next entries of `batch.dropped` and `batch.removed` not yet passed.
    drops: usize,
    removed: usize,
    /// Drops to report on the next line rendered of an instance (lines left out as too big).
    left_out: Vec<(&'a Arc<str>, u64)>,
    /// The end of the JSON of the current part's lines (its chunk's timestamp), made once.
    field: Vec<u8>,
}

impl<'a> Render<'a> {
    pub(super) fn new(batch: &'a Batch, max_payload: usize) -> Render<'a> {
        Render {
            batch,
            max_payload,
            part: 0,
            at: 0,
            drops: 0,
            removed: 0,
            left_out: Vec::new(),
            field: Vec::new(),
        }
    }

    /// The next line to publish, rendered into `buf` (which it leaves empty), or `None` at
    /// the end of the batch.
    pub(super) fn next(
        &mut self,
        buf: &mut BytesMut,
        dropped: &mut Vec<(Arc<str>, u64)>,
        too_big: &mut Vec<u64>,
    ) -> Option<Outgoing> {
        loop {
            let (chunk, first, range) = self.batch.parts.get(self.part)?;
            if self.at >= range.len() {
                self.part += 1;
                self.at = 0;
                continue;
            }
            if self.at == 0 {
                self.field.clear();
                LogLineJson::timestamp_field(&mut self.field, &chunk.timestamp);
            }
            let (seq, i) = (first + self.at as u64, range.start + self.at);
            self.at += 1;
            let removed = &self.batch.removed;
            let mut skip = false;
            while let Some(&s) = removed.get(self.removed).filter(|&&s| s <= seq) {
                skip |= s == seq;
                self.removed += 1;
            }
            if skip {
                continue;
            }
            let target = &chunk.stream.target;
            let instance = &chunk.stream.instance;
            let mut n = 0;
            if !self.left_out.is_empty()
                && let Some(k) = self.left_out.iter().position(|(id, _)| *id == instance)
            {
                n = self.left_out.swap_remove(k).1;
            }
            let drops = &self.batch.dropped;
            while let Some(&(s, k)) = drops.get(self.drops).filter(|(s, _)| *s <= seq) {
                if s == seq {
                    n += k;
                }
                self.drops += 1;
            }
            let (text, partial) = chunk.line(i);
            buf.clear();
            chunk
                .stream
                .json
                .write_stamped(buf, text, &self.field, partial, n);
            if buf.len() > self.max_payload {
                buf.clear();
                too_big.push(seq);
                self.left_out.push((instance, n + 1));
                continue;
            }
            if n > 0 {
                dropped.push((target.app.clone(), n));
            }
            return Some(Outgoing {
                seq,
                subject: target.subject.clone(),
                payload: buf.split().freeze(),
            });
        }
    }
}
