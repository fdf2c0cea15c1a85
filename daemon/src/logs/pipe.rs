//! Reading one pipe: a [`PipeReader`] is the [`PipeSink`](crate::uring::PipeSink) the io_uring
//! thread feeds; [`ChunkLines`] collects the lines of each read into one [`Chunk`] for the spool.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::chunk::{Chunk, PARTIAL, Stream};
use super::forwarder::Shared;
use super::lines::LineSplitter;
use crate::uring::{PIPE_CHUNK, Ready};
use tokio_util::sync::CancellationToken;

/// Per-read vectors of a pipe reader are kept for reuse up to this many lines.
const CHUNK_KEEP_LINES: usize = 2048;

/// One output stream of an instance, fed by the pipe reader ([`crate::uring::PipeSink`]).
pub(super) struct PipeReader {
    pub(super) splitter: LineSplitter,
    pub(super) lines: ChunkLines,
    /// Fired after the last line is spooled.
    pub(super) done: tokio::sync::oneshot::Sender<()>,
    /// The run is over ([`RunLogs::end`](super::RunLogs::end)): never wait for room again.
    pub(super) run_ended: CancellationToken,
    /// The next read's lines are counted as dropped, not spooled: the run is over and its
    /// app's share is full.
    pub(super) discard: bool,
}

impl crate::uring::PipeSink for PipeReader {
    fn chunk(&mut self, data: &[u8]) {
        if std::mem::take(&mut self.discard) {
            let mut n = 0u64;
            self.splitter.feed_bytes(data, &mut |_, _| n += 1);
            self.lines.drop_lines(n);
            return;
        }
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
        if self.run_ended.is_cancelled() {
            // The run is over: no writer is left to hold back, and the pipe's EOF comes only
            // after what is still in it is read. Read it, and count what does not fit as
            // dropped (on the instance's mark line) rather than wait for NATS.
            self.discard = true;
            return Ready::Read(PIPE_CHUNK);
        }
        // A `block` app's share is full: wait until the publisher frees room (or the forwarder
        // closes, or the run ends). Enabled before the check, so a wake-up in between is not
        // lost.
        let (shared, target) = (shared.clone(), target.clone());
        let run_ended = self.run_ended.clone();
        Ready::Wait(Box::pin(async move {
            let room = target.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let full = shared
                .spool()
                .read_limit(target.slot, pending, PIPE_CHUNK)
                .is_none();
            if full {
                tokio::select! {
                    _ = room => {}
                    _ = run_ended.cancelled() => {}
                }
            }
        }))
    }

    fn end(self: Box<Self>) {
        let PipeReader {
            mut splitter,
            mut lines,
            done,
            ..
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

    /// `n` lines of this stream are lost (read after its run ended, with its app's share
    /// full): counted, and carried to the instance's next line or its mark line.
    pub(super) fn drop_lines(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
        *self
            .shared
            .spool()
            .carry
            .entry(self.stream.instance.clone())
            .or_default() += n;
        self.shared.progress.notify_waiters();
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

    /// A `block` reader waits while its share is full; once its run has ended it stops
    /// waiting, and what it reads then (the rest of the pipe) is counted as dropped and
    /// reported on the instance's mark line when the output ends.
    #[tokio::test]
    async fn a_reader_waiting_for_room_stops_waiting_when_its_run_ends() {
        use crate::logs::spool::Overflow;
        use crate::uring::PipeSink;
        let shared = test_shared(8192, 1024);
        let fwd = LogForwarder {
            shared: shared.clone(),
            uring: UringHandle::start_with(crate::uring::UringMode::Disabled),
        };
        let sink = fwd.sink_with("hello", "hello-0", Overflow::Block);
        let run_ended = CancellationToken::new();
        let (done, eof) = tokio::sync::oneshot::channel();
        let mut reader = PipeReader {
            splitter: LineSplitter::new(1024),
            lines: sink.lines("stdout"),
            done,
            run_ended: run_ended.clone(),
            discard: false,
        };
        let mut spooled = 0;
        let mut wait = loop {
            match reader.ready() {
                Ready::Read(n) => {
                    let k = (n / 16).max(1);
                    reader.chunk(&b"0123456789abcde\n".repeat(k));
                    spooled += k;
                    assert!(spooled < 10_000, "never told to wait");
                }
                Ready::Wait(w) => break w,
            }
        };
        assert_eq!(shared.spool().lines, spooled);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut wait)
                .await
                .is_err(),
            "waits while the share is full"
        );
        run_ended.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("the end of the run ends the wait");
        assert!(matches!(reader.ready(), Ready::Read(PIPE_CHUNK)));
        reader.chunk(b"x\ny\nz\n");
        assert_eq!(shared.stats.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(shared.spool().lines, spooled, "nothing more spooled");
        Box::new(reader).end();
        eof.await.expect("end() reports the end");
        let mut spool = shared.spool();
        assert_eq!(spool.lines, spooled + 1);
        // The app's lines are seqs 1..=spooled; confirmed, the mark line is next.
        spool.confirm(spooled as u64, &mut Vec::new());
        let (sent, _) = peek(&mut spool);
        assert_eq!(sent.len(), 1);
        let mark = &sent.last().expect("the mark line").1;
        assert_eq!(mark.dropped_before, 3);
        assert!(
            mark.message.contains("3 earlier log lines"),
            "{}",
            mark.message
        );
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
}
