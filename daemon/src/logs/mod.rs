//! App stdout/stderr → lines → `logs.<app>.<node>`, with an offline spool.
//!
//! **Owns** everything between an instance's stdout/stderr pipes and NATS: reading the pipes,
//! splitting them into lines, the node-wide offline spool, publishing with confirmation, and the
//! optional JetStream log history ([`stream`]).
//!
//! **May call** [`crate::uring`] (pipe reads on the io_uring thread); nothing else in narund.
//! It owns its configuration section ([`LogsConfig`], `[logs]` in `narund.toml`). The node
//! creates the [`LogForwarder`], each instance its [`LogSink`]; [`crate::daemon`] runs
//! [`stream::run`].
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | this overview; the public API, re-exported from the files below |
//! | `forwarder.rs` | [`LogForwarder`] and its settings, [`LogSink`], [`LogStats`]; the publisher task |
//! | `pipe.rs` | reading one pipe: the lines of each read → one chunk in the spool |
//! | `lines.rs` | [`LineSplitter`]: bytes → lines, long lines in `partial` pieces |
//! | `chunk.rs` | the spooled unit: one read's lines as raw text, and what it costs in the bound |
//! | `spool.rs` | the bounded spool: oldest dropped, sequence numbers, confirmation, the next batch |
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
//! # The app is never blocked by NATS
//!
//! Reading a pipe only ever waits for the spool's mutex (held for microseconds); it never awaits
//! NATS. When the spool exceeds its byte bound the **oldest** lines are dropped and counted
//! ([`LogStats::dropped`]); the next line that is delivered carries `dropped_before = n` (a narun
//! addition to the Go JSON) and narund logs a warning. The pipe is therefore always drained and the
//! app never stalls on a full pipe, whatever NATS does. (Go's runner stops draining a stream after a
//! line over 64 KiB; here long lines are split into pieces marked `partial`.)
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
    LogSink, LogStats, MAX_LINE_BYTES_LIMIT, WINDOW,
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
