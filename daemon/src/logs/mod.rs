//! App stdout/stderr → lines → `logs.<app>.<node>`, with an offline spool.
//!
//! **Owns** everything between an instance's stdout/stderr pipes and NATS: reading the pipes,
//! splitting them into lines, the node-wide offline spool, publishing with confirmation, and the
//! optional JetStream log history ([`stream`]).
//!
//! **May call** [`crate::uring`] (pipe reads on the io_uring thread); nothing else in narund.
//! It owns its configuration section ([`LogsConfig`], `[logs]` in `narund.toml`). The node
//! creates the [`LogForwarder`], each instance its [`LogSink`]; [`crate::daemon`] runs
//! [`stream::HISTORY`].
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | this overview; the public API, re-exported from the files below |
//! | `forwarder.rs` | [`LogForwarder`] and its settings, [`LogSink`], [`RunLogs`], [`LogStats`]; the publisher task |
//! | `pipe.rs` | reading one pipe: the lines of each read → one chunk in the spool |
//! | `lines.rs` | [`LineSplitter`]: bytes → lines, long lines in `partial` pieces |
//! | `chunk.rs` | the spooled unit: one read's lines as raw text, and what it costs in the bound |
//! | `spool.rs` | the bounded spool: per-app shares, drops per instance, sequence numbers, confirmation, the next batch |
//! | `batch.rs` | a batch of spooled lines and its JSON rendering |
//! | `stream.rs` | [`stream`]: the JetStream stream `narun-logs` (optional log history) |
//!
//! # How a line travels
//!
//! Every instance's stdout and stderr are pipes. A [`LogSink`] (one per instance) reads each pipe
//! through the [`UringHandle`](crate::uring::UringHandle) (io_uring or plain reads) and, on the
//! reading thread itself (a [`PipeSink`](crate::uring::PipeSink)), splits the bytes into lines
//! with a [`LineSplitter`] and appends each read's lines, as one chunk of raw text, to the
//! node-wide **spool** of the [`LogForwarder`]. One publisher task, on narund's runtime, drains
//! the spool to NATS: it turns each line into the Go-shaped JSON
//! [`LogLine`](narun_wire::events::LogLine) as it sends it.
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
//! # When the spool is full: per-app truth, `drop` or `block`
//!
//! The spool has one byte bound for the node, but every line is accounted to its app (a slot of
//! the spool, [`Overflow`] policy from the spec's `logOverflow`) and its instance:
//!
//! * **`drop`** (the default): reading a pipe only ever waits for the spool's mutex (held for
//!   microseconds), never for NATS, so the app never stalls on its output. Over the bound, the
//!   spool drops **one app's own oldest lines** (the writing app if it holds at least the
//!   average share, else the `drop` app holding the most), counts them ([`LogStats::dropped`])
//!   and attaches the count to the next unsent line **of the same instance**, which carries
//!   `dropped_before = n` on the app's own subject (a narun addition to the Go JSON); if the
//!   instance writes nothing more, a mark line of narund's carries it when its output ends.
//!   A line dropped after it was sent waits for its marker: delivered if confirmed, lost (and
//!   counted) if the connection breaks first (a marker that is only late changes nothing: the
//!   same connection still delivers it in order). So the sum of an app's `dropped_before` is exactly what it lost.
//! * **`block`**: before each read, the pipe reader asks the spool how much the app's share
//!   (bound / apps that log) still surely holds ([`PipeSink::ready`](crate::uring::PipeSink::ready));
//!   when nothing fits, the reader awaits the app's `room` (woken when the publisher's marker
//!   confirms lines) instead of reading. The pipe fills, the app's `write` blocks: no line is
//!   lost, narund's memory stays within the bound, and the io_uring thread and narund's runtime
//!   serve every other pipe meanwhile. A waiting reader does not read, so it cannot see its
//!   pipe's EOF: when the run ends (the app crashed or was stopped during an outage), the
//!   instance tells its [`RunLogs`] so, and the reader stops waiting: it reads what is left in
//!   the pipe, spools what still fits the share and counts the rest as dropped (on the
//!   instance's mark line). No reader, pipe or spool slot outlives its run.
//!
//! (Go's runner stops draining a stream after a line over 64 KiB; here long lines are split into
//! pieces marked `partial`.)
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

mod batch;
mod chunk;
mod forwarder;
mod lines;
mod pipe;
mod spool;
pub mod stream;

pub use forwarder::{
    ACK_TIMEOUT, DEFAULT_MAX_LINE_BYTES, DEFAULT_SPOOL_BYTES, LogForwarder, LogForwarderConfig,
    LogSink, LogStats, MAX_LINE_BYTES_LIMIT, RunLogs, WINDOW,
};
pub use lines::LineSplitter;
pub use spool::Overflow;

/// `[logs]` of `narund.toml`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    pub max_line_bytes: usize,
    pub spool_bytes: usize,
    /// Keep log history on the NATS server: create/update the JetStream stream
    /// `narun-logs` on `logs.>` (see [`crate::logs::stream`]). Off by default.
    pub stream: bool,
    /// Age limit of the stream's lines, seconds (0 = no limit).
    pub stream_max_age_sec: u64,
    /// Size limit of the stream, bytes; the oldest lines go first (0 = no limit).
    pub stream_max_bytes: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_line_bytes: 16 * 1024,
            spool_bytes: 4 * 1024 * 1024,
            stream: false,
            stream_max_age_sec: 24 * 3600,
            stream_max_bytes: 256 * 1024 * 1024,
        }
    }
}
