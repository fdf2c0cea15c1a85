//! The node's [`LogForwarder`] (one spool, one publisher task for all instances), the
//! per-instance [`LogSink`]s, and the publisher: spool → NATS, confirmed by echoed markers.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use narun_wire::events::LogLineJson;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, Render};
use super::chunk::{Stream, Target};
use super::lines::LineSplitter;
use super::pipe::{ChunkLines, PipeReader};
use super::spool::{Counters, Overflow, Spool};
use crate::uring::UringHandle;

/// Longest line forwarded in one message; longer lines are split (Go's scanner limit).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// Default spool bound: 8 MiB of serialized lines.
pub const DEFAULT_SPOOL_BYTES: usize = 8 * 1024 * 1024;

/// Batches sent but not yet confirmed.
pub const WINDOW: usize = 16;
/// A marker not echoed within this time means the batch is resent.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Render buffer capacity the publisher keeps while it has nothing to send.
const RENDER_BUF_KEEP: usize = 64 * 1024;
/// How often the publisher looks at the connection state while disconnected.
const RECONNECT_POLL: Duration = Duration::from_millis(50);
/// Longest line limit accepted ([`LogForwarderConfig::max_line_bytes`] is capped to it): NATS's
/// own ceiling for a message, and small enough for the spool's 31-bit line offsets.
pub const MAX_LINE_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// What the forwarder, the pipe readers of its sinks and the publisher task share.
pub(super) struct Shared {
    node_id: String,
    max_line_bytes: usize,
    spool: Mutex<Spool>,
    pub(super) stats: Counters,
    /// Wakes the publisher: new lines, or close.
    pub(super) wake: Notify,
    /// Wakes `flush` waiters: lines confirmed or dropped.
    pub(super) progress: Notify,
    closed: AtomicBool,
}

impl Shared {
    /// An empty spool of at most `spool_bytes`, nothing sent yet.
    pub(super) fn new(node_id: String, max_line_bytes: usize, spool_bytes: usize) -> Shared {
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

    pub(super) fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
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
    pub(super) shared: Arc<Shared>,
    pub(super) uring: UringHandle,
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
        let task = crate::spawn(publisher(shared.clone(), client));
        (LogForwarder { shared, uring }, task)
    }

    /// A sink for one instance of `app`; its lines go to `logs.<app>.<node>`. Overflow
    /// policy `drop`.
    pub fn sink(&self, app: &str, instance_id: &str) -> LogSink {
        self.sink_with(app, instance_id, Overflow::Drop)
    }

    /// A sink for one instance of `app` with the app's overflow policy (the spec's
    /// `logOverflow`; the newest sink of an app sets it for the app).
    pub fn sink_with(&self, app: &str, instance_id: &str, overflow: Overflow) -> LogSink {
        let (slot, room) = self.shared.spool().register(app, overflow);
        LogSink {
            shared: self.shared.clone(),
            uring: self.uring.clone(),
            target: Arc::new(Target {
                subject: super::chunk::log_subject(app, &self.shared.node_id),
                app: app.into(),
                slot,
                room,
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

    /// Lines and bytes received from the apps since the start (spooled, whatever became
    /// of them), for `/metrics`.
    pub fn received(&self) -> (u64, u64) {
        let spool = self.shared.spool();
        (spool.next_seq - 1, spool.received_bytes)
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
                .oldest_pending()
                .is_none_or(|s| s > target);
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
        // Nothing will be confirmed any more: `block` readers must not wait for it.
        let rooms = self.shared.spool().all_drop();
        for room in rooms {
            room.notify_waiters();
        }
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
    ///
    /// A `block` app's reader waits for room in the spool for as long as it takes; an
    /// instance's runs use [`RunLogs`], whose readers stop waiting when the run ends.
    pub fn attach(&self, stream: &str, fd: OwnedFd) -> JoinHandle<()> {
        self.attach_until(stream, fd, CancellationToken::new())
    }

    /// Like [`attach`](Self::attach); once `run_ended` is cancelled, a reader never waits
    /// for room any more (see [`RunLogs::end`]).
    fn attach_until(
        &self,
        stream: &str,
        fd: OwnedFd,
        run_ended: CancellationToken,
    ) -> JoinHandle<()> {
        let (done, eof) = tokio::sync::oneshot::channel();
        self.uring.read_pipe(
            fd,
            Box::new(PipeReader {
                splitter: LineSplitter::new(self.shared.max_line_bytes),
                lines: self.lines(stream),
                done,
                run_ended,
                discard: false,
            }),
        );
        crate::spawn(async move {
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

    pub(super) fn lines(&self, stream: &str) -> ChunkLines {
        ChunkLines {
            stream: Arc::new(Stream {
                target: self.target.clone(),
                instance: self.instance_id.clone(),
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

/// The log readers of one run of an instance (its stdout and stderr pipes).
///
/// A reader ends at EOF, once every process of the run that held a write end is gone. A
/// `block` app's reader that waits for room in the spool (NATS is down, the app's share is
/// full) does not read, so it would never see that EOF: [`end`](Self::end) tells it the run is
/// over, and the reader then reads what is left in the pipe and counts the lines that do not
/// fit the share as dropped (on the instance's own mark line) instead of waiting. So no reader,
/// pipe or slot of the spool outlives its run, and no write is waited for that nobody makes.
#[derive(Default)]
pub struct RunLogs {
    tasks: Vec<JoinHandle<()>>,
    ended: CancellationToken,
}

impl RunLogs {
    pub fn new() -> RunLogs {
        RunLogs::default()
    }

    /// Forward the pipe `fd` of this run as `stream` through `sink` (see [`LogSink::attach`]).
    pub fn attach(&mut self, sink: &LogSink, stream: &str, fd: OwnedFd) {
        self.tasks
            .push(sink.attach_until(stream, fd, self.ended.clone()));
    }

    /// The run is over (its processes are gone): wait up to `grace` for the readers to drain
    /// their pipes to EOF; then make any reader still waiting for room stop waiting, and wait
    /// up to `grace` again. False if a reader is still running after that (a process outside
    /// the run holds a write end of its pipe).
    pub async fn end(self, grace: Duration) -> bool {
        let tasks = self.tasks;
        let all = async move {
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_ok() {
            return true;
        }
        self.ended.cancel();
        tokio::time::timeout(grace, all).await.is_ok()
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
    let mut buf = BytesMut::new();
    let mut too_big: Vec<u64> = Vec::new();
    let mut dropped: Vec<(Arc<str>, u64)> = Vec::new();
    let mut timeouts_in_a_row = 0u32;
    let mut rooms = Vec::new();
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if client.connection_state() != State::Connected {
            let idle = {
                let mut spool = shared.spool();
                if !markers.is_empty() || spool.sent_upto != 0 || spool.in_limbo() {
                    markers.clear();
                    spool.rewind(&shared.stats, true);
                }
                spool.lines == 0
            };
            if idle {
                // Nothing to send: no polling until there is (or the forwarder closes).
                shared.wake.notified().await;
            } else if sleep_or_closed(&shared, RECONNECT_POLL).await {
                return;
            }
            continue;
        }

        if markers.len() < WINDOW && shared.spool().next_batch(&mut plan) {
            // JSON is made here, outside the spool's lock, one line at a time into `buf`,
            // and each line is published while it is still in the cache. `buf` keeps its
            // allocation from batch to batch: once async-nats has copied the last batch's
            // lines, `reserve` takes the same memory back.
            let max_payload = match client.max_payload() {
                0 => usize::MAX, // not known yet
                n => n,
            };
            buf.reserve(plan.bytes);
            let mut lines = Render::new(&plan, max_payload);
            while let Some(e) = lines.next(&mut buf, &mut dropped, &mut too_big) {
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
            let last = plan.last;
            plan.clear();
            // One warning per app and batch (a flood marks many lines).
            while let Some((app, mut n)) = dropped.pop() {
                dropped.retain(|(a, k)| {
                    let same = Arc::ptr_eq(a, &app) || **a == *app;
                    n += if same { *k } else { 0 };
                    !same
                });
                tracing::warn!(app = %app, dropped = n, "log lines were dropped (spool full, or too big for the server)");
            }
            for seq in too_big.drain(..) {
                if let Some(app) = shared.spool().remove(seq) {
                    tracing::warn!(app = %app, max_payload,
                        "dropping a log line whose JSON is bigger than the server's max_payload; lower logs.max_line_bytes");
                    shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = client
                .publish(ack_subject.clone(), Bytes::from(last.to_string()))
                .await;
            markers.push_back((last, Instant::now()));
            continue;
        }

        // Nothing to send: an idle narund does not keep a burst's render buffer.
        if markers.len() < WINDOW && buf.capacity() > RENDER_BUF_KEEP {
            buf = BytesMut::new();
        }
        // Idle (nothing in flight): no timer at all; new lines or a close wake the loop.
        let deadline = markers.front().map(|(_, at)| *at + ACK_TIMEOUT);
        let ack_timeout = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
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
                let n = shared.spool().confirm(seq, &mut rooms);
                shared.stats.published.fetch_add(n, Ordering::Relaxed);
                shared.progress.notify_waiters();
                for room in rooms.drain(..) {
                    room.notify_waiters();
                }
            }
            _ = shared.wake.notified() => {}
            _ = ack_timeout => {
                if !markers.is_empty() {
                    timeouts_in_a_row += 1;
                    if timeouts_in_a_row == 3 {
                        tracing::error!("NATS never confirms log lines; is the connection built with no_echo? lines are resent");
                    } else {
                        tracing::warn!("log lines not confirmed within {ACK_TIMEOUT:?}; resending");
                    }
                    markers.clear();
                    // Same connection: what was written is still on its way.
                    shared.spool().rewind(&shared.stats, false);
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
