//! What the spool holds: a [`Chunk`] is the lines of one pipe read, kept as raw text (no JSON
//! yet) with the [`Stream`] they came from and what each costs in the spool's bound.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_nats::Subject;
use narun_wire::events::LogLineJson;
use tokio::sync::Notify;

/// Book-keeping bytes charged per spooled line on top of its text (its end offset).
pub(super) const LINE_OVERHEAD: usize = 4;
/// Book-keeping bytes charged per spooled chunk (one pipe read) on top of its timestamp.
const CHUNK_OVERHEAD: usize = 192;
/// Most a chunk's own overhead can be ([`Chunk::overhead`]: an RFC 3339 timestamp with
/// nanoseconds is 30 bytes).
pub(super) const CHUNK_OVERHEAD_MAX: usize = CHUNK_OVERHEAD + 64;

/// Most distinct log subjects kept as `&'static str` for the life of the process (see
/// [`log_subject`]); apps beyond that get a reference-counted subject.
const STATIC_SUBJECTS_MAX: usize = 1024;

/// `logs.<app>.<node>` as a [`Subject`] that costs nothing to clone.
///
/// async-nats takes a publish's subject by value and clones it once more inside `publish`; a
/// subject built from a `String` is a reference-counted `Bytes`, so every line paid four
/// atomic reference-count operations for it (about a sixth of the publishing thread's work
/// per line in `log_bench`), where a raw publisher's `&'static str` pays none. So each
/// distinct subject is leaked once and reused: a few dozen bytes per app name this node ever
/// forwarded logs for, at most [`STATIC_SUBJECTS_MAX`] of them (then it falls back to the
/// counted subject).
pub(super) fn log_subject(app: &str, node: &str) -> Subject {
    static SUBJECTS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let subject = narun_wire::names::log_subject(app, node);
    let mut known = SUBJECTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = known.get(subject.as_str()) {
        return Subject::from_static(s);
    }
    if known.len() >= STATIC_SUBJECTS_MAX {
        return Subject::from(subject);
    }
    let s: &'static str = Box::leak(subject.into_boxed_str());
    known.insert(s);
    Subject::from_static(s)
}

/// Where one app's lines go: shared by a sink and its spooled lines.
pub(super) struct Target {
    /// `logs.<app>.<node>`, built once.
    pub(super) subject: Subject,
    pub(super) app: Arc<str>,
    /// The app's slot in [`Spool::apps`](super::spool::Spool::apps).
    pub(super) slot: usize,
    /// The app's [`AppShare::room`](super::spool::AppShare::room): its `block` readers wait on it.
    pub(super) room: Arc<Notify>,
}

/// One output stream of one instance: where its lines go and the fixed head of their JSON.
pub(super) struct Stream {
    pub(super) target: Arc<Target>,
    /// The instance id: dropped lines are counted per instance.
    pub(super) instance: Arc<str>,
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
    /// A line of narund's that only carries a drop count (written when an instance's output
    /// ends with drops not yet reported): dropping it loses no line of the app.
    pub(super) mark: bool,
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
