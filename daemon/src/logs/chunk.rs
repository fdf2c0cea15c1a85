//! What the spool holds: a [`Chunk`] is the lines of one pipe read, kept as raw text (no JSON
//! yet) with the [`Stream`] they came from and what each costs in the spool's bound.

use std::sync::Arc;

use async_nats::Subject;
use narun_wire::events::LogLineJson;

/// Book-keeping bytes charged per spooled line on top of its text (its end offset).
pub(super) const LINE_OVERHEAD: usize = 4;
/// Book-keeping bytes charged per spooled chunk (one pipe read) on top of its timestamp.
const CHUNK_OVERHEAD: usize = 192;

/// Where one app's lines go: shared by its sinks and their spooled lines.
pub(super) struct Target {
    /// `logs.<app>.<node>`, built once.
    pub(super) subject: Subject,
    pub(super) app: Arc<str>,
}

/// One output stream of one instance: where its lines go and the fixed head of their JSON.
pub(super) struct Stream {
    pub(super) target: Arc<Target>,
    pub(super) json: LogLineJson,
}

/// Flag in [`Chunk::ends`]: the line is a `partial` piece of a longer line.
pub(super) const PARTIAL: u32 = 1 << 31;

/// The lines of one pipe read (or one line of narund's own), kept as the app wrote them until
/// the server has confirmed them.
///
/// Lines become JSON only when they are published, so a spooled line costs its own bytes plus
/// [`LINE_OVERHEAD`] (the JSON envelope would be 2–3× that for short lines), and the reading
/// thread does no more than split and copy.
pub(super) struct Chunk {
    pub(super) stream: Arc<Stream>,
    /// When the read returned: one timestamp for the lines that arrived together.
    pub(super) timestamp: String,
    /// The lines back to back, without their newlines; possibly invalid UTF-8 (made lossy
    /// when serialized).
    pub(super) text: Vec<u8>,
    /// End of each line in `text`, `| PARTIAL` for a piece of a longer line.
    pub(super) ends: Box<[u32]>,
}

impl Chunk {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .map_or(0, |p| (self.ends[p] & !PARTIAL) as usize)
    }

    /// Line `i`: its bytes and whether it is a partial piece.
    pub(super) fn line(&self, i: usize) -> (&[u8], bool) {
        let end = self.ends[i];
        (
            &self.text[self.start(i)..(end & !PARTIAL) as usize],
            end & PARTIAL != 0,
        )
    }

    /// Bytes accounted in the spool for line `i`.
    pub(super) fn line_size(&self, i: usize) -> usize {
        self.line(i).0.len() + LINE_OVERHEAD
    }

    /// Bytes accounted for lines `from..` together.
    pub(super) fn size_from(&self, from: usize) -> usize {
        self.text.len() - self.start(from) + (self.len() - from) * LINE_OVERHEAD
    }

    /// Bytes accounted for the chunk itself, while any of its lines is spooled.
    pub(super) fn overhead(&self) -> usize {
        CHUNK_OVERHEAD + self.timestamp.len()
    }
}
