//! Reading one pipe: a [`PipeReader`] is the [`PipeSink`](crate::uring::PipeSink) the io_uring
//! thread feeds; [`ChunkLines`] collects the lines of each read into one [`Chunk`] for the spool.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::chunk::{Chunk, PARTIAL, Stream};
use super::forwarder::Shared;
use super::lines::LineSplitter;
use crate::uring::{PIPE_CHUNK, Ready};

/// Per-read vectors of a pipe reader are kept for reuse up to this many lines.
const CHUNK_KEEP_LINES: usize = 2048;

/// One output stream of an instance, fed by the pipe reader ([`crate::uring::PipeSink`]).
pub(super) struct PipeReader {
    pub(super) splitter: LineSplitter,
    pub(super) lines: ChunkLines,
    /// Fired after the last line is spooled.
    pub(super) done: tokio::sync::oneshot::Sender<()>,
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

    fn ready(&mut self) -> Ready {
        let shared = &self.lines.shared;
        let target = &self.lines.stream.target;
        let pending = self.splitter.pending();
        if let Some(n) = shared.spool().read_limit(target.slot, pending, PIPE_CHUNK) {
            return Ready::Read(n);
        }
        // A `block` app's share is full: wait until the publisher frees room (or the forwarder
        // closes). Enabled before the check, so a wake-up in between is not lost.
        let (shared, target) = (shared.clone(), target.clone());
        Ready::Wait(Box::pin(async move {
            let room = target.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let full = shared
                .spool()
                .read_limit(target.slot, pending, PIPE_CHUNK)
                .is_none();
            if full {
                room.await;
            }
        }))
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
        lines.flush_carry();
        let _ = done.send(());
    }
}

/// Collects the lines of one pipe read into a [`Chunk`] (one copy of their bytes, one
/// allocation per read) and hands it to the spool.
pub(super) struct ChunkLines {
    pub(super) stream: Arc<Stream>,
    pub(super) shared: Arc<Shared>,
    /// Timestamp of the lines of the current chunk.
    pub(super) timestamp: String,
    /// The current chunk's lines, back to back.
    pub(super) text: Vec<u8>,
    /// End offset of each line in `text` (`| PARTIAL`); reused between chunks.
    pub(super) ends: Vec<u32>,
}

impl ChunkLines {
    /// Start a chunk of at most `input_len` bytes of lines.
    pub(super) fn begin(&mut self, input_len: usize) {
        self.timestamp = narun_wire::events::now_rfc3339();
        self.text.reserve_exact(input_len);
    }

    pub(super) fn add(&mut self, text: &[u8], partial: bool) {
        self.text.extend_from_slice(text);
        // In range: a chunk holds at most one read plus one line of at most
        // MAX_LINE_BYTES_LIMIT, far below the flag bit.
        let end = self.text.len() as u32;
        self.ends.push(if partial { end | PARTIAL } else { end });
    }

    /// Hand the chunk's lines to the spool.
    pub(super) fn spool(&mut self) {
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
            mark: false,
        };
        self.ends.clear();
        // A read of many tiny lines must not leave a big vector behind for the instance's life.
        if self.ends.capacity() > CHUNK_KEEP_LINES {
            self.ends = Vec::new();
        }
        self.push(chunk);
    }

    fn push(&self, chunk: Chunk) {
        let shared = &self.shared;
        let dropped_before = shared.stats.dropped.load(Ordering::Relaxed);
        shared.spool().push(chunk, &shared.stats);
        shared.wake.notify_one();
        if shared.stats.dropped.load(Ordering::Relaxed) != dropped_before {
            shared.progress.notify_waiters();
        }
    }

    /// The output ended: if the instance has dropped lines not yet reported (no line of it was
    /// left to carry the count), spool a line of narund's that carries them.
    pub(super) fn flush_carry(&mut self) {
        let n = {
            let spool = self.shared.spool();
            spool.carry.get(&self.stream.instance).copied().unwrap_or(0)
        };
        if n == 0 {
            return;
        }
        let text =
            format!("narund: {n} earlier log lines of this instance were dropped (log spool full)");
        self.push(Chunk {
            stream: self.stream.clone(),
            timestamp: narun_wire::events::now_rfc3339(),
            ends: Box::new([text.len() as u32]),
            text: text.into_bytes(),
            mark: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::chunk::LINE_OVERHEAD;
    use crate::logs::forwarder::LogForwarder;
    use crate::logs::spool::tests::peek;
    use crate::uring::UringHandle;

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
}
