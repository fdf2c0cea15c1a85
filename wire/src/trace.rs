//! W3C Trace Context (`traceparent`, `tracestate`): how one request's trace travels from the
//! gateway through NATS to an app's handler and on to the services it calls.
//!
//! # The contract
//!
//! * A NATS request to a narun service may carry the NATS headers [`TRACEPARENT_HEADER`] and
//!   [`TRACESTATE_HEADER`] (lower case, the W3C names), with W3C values:
//!   `traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`. The parent id is
//!   the span id of the caller's span.
//! * The narun gateway **starts** a trace when the client sent no `traceparent` (fresh random
//!   trace id), **continues** the client's trace when its `traceparent` is valid, and
//!   **ignores** a malformed one (it starts a fresh trace instead, and drops the `tracestate`
//!   with it, as W3C asks). Either way it sends the request on with its own span id as the
//!   parent, in the NATS headers and, for BHTTP routes, as the HTTP `traceparent` header the
//!   handler sees (the client's own value never reaches the app unchecked).
//! * The `narun` app library runs each handler inside a span of its own (a new span id, the
//!   caller's as parent) and stamps outgoing `narun::Client` calls with it.
//!
//! Values are **hostile input**: [`TraceParent::parse`] is strict (exactly the W3C grammar,
//! lower-case hex only, neither id all zeros, version `ff` refused) and never panics;
//! [`valid_tracestate`] keeps a `tracestate` only when it is a short list of printable
//! `key=value` members.
//!
//! Ids come from [`TraceId::random`]/[`SpanId::random`]: a per-thread SplitMix64 generator
//! seeded once from getrandom(2) — unpredictable enough for sampling and collision freedom
//! (W3C asks no more), and a few nanoseconds per id on the request path.
//!
//! # Trace ids in log lines
//!
//! An app that logs inside a handler span with `tracing-subscriber`'s default format prints
//! `trace_id=<32 hex>` in its lines; narund's log forwarder lifts the first such id of a line
//! into the `trace_id` field of the JSON log record ([`find_trace_id`]).

use std::cell::Cell;
use std::fmt;

/// The W3C `traceparent` header name (HTTP and NATS).
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header name (HTTP and NATS).
pub const TRACESTATE: &str = "tracestate";
/// [`TRACEPARENT`] as a NATS header name.
pub const TRACEPARENT_HEADER: async_nats::HeaderName =
    async_nats::HeaderName::from_static(TRACEPARENT);
/// [`TRACESTATE`] as a NATS header name.
pub const TRACESTATE_HEADER: async_nats::HeaderName =
    async_nats::HeaderName::from_static(TRACESTATE);

/// Longest `tracestate` kept (W3C: implementations should propagate at least 512 bytes).
pub const MAX_TRACESTATE: usize = 512;
/// Most `tracestate` list members kept (W3C's limit).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The `sampled` bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A 16-byte trace id; never all zeros when parsed or generated.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; never all zeros when parsed or generated.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The next 64 random bits of this thread's generator (SplitMix64, seeded from getrandom(2)
/// on first use; a failed getrandom falls back to the clock and the thread's address).
fn next_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        if x == 0 {
            let mut seed = [0u8; 8];
            if getrandom::getrandom(&mut seed).is_err() {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                seed = (t ^ (s as *const Cell<u64> as usize as u64)).to_le_bytes();
            }
            x = u64::from_le_bytes(seed) | 1;
        }
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

impl TraceId {
    /// A fresh random trace id (never all zeros).
    pub fn random() -> TraceId {
        loop {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&next_u64().to_be_bytes());
            b[8..].copy_from_slice(&next_u64().to_be_bytes());
            if b != [0; 16] {
                return TraceId(b);
            }
        }
    }

    /// Lower-case hex, as W3C writes it.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl SpanId {
    /// A fresh random span id (never all zeros).
    pub fn random() -> SpanId {
        loop {
            let b = next_u64().to_be_bytes();
            if b != [0; 8] {
                return SpanId(b);
            }
        }
    }

    /// Lower-case hex, as W3C writes it.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    f.write_str(std::str::from_utf8(&buf[..2 * bytes.len()]).expect("hex is ASCII"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// A parsed `traceparent`: whose trace, which span is the parent, the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span id.
    pub parent_id: SpanId,
    pub flags: u8,
}

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error(
        "traceparent is {0} bytes long; version 00 is exactly 55 (00-<32 hex>-<16 hex>-<2 hex>)"
    )]
    Length(usize),
    #[error("traceparent {field} is not lower-case hex of the right length")]
    Hex { field: &'static str },
    #[error("traceparent fields must be separated by '-'")]
    Delimiter,
    #[error("traceparent version ff is invalid")]
    Version,
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
}

/// `N` bytes from `2N` lower-case hex characters (upper case is refused, as W3C's grammar says).
fn hex<const N: usize>(s: &[u8], field: &'static str) -> Result<[u8; N], TraceParentError> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return Err(TraceParentError::Hex { field });
    }
    for (i, o) in out.iter_mut().enumerate() {
        let (Some(h), Some(l)) = (nibble(s[2 * i]), nibble(s[2 * i + 1])) else {
            return Err(TraceParentError::Hex { field });
        };
        *o = h << 4 | l;
    }
    Ok(out)
}

impl TraceParent {
    /// Parse a `traceparent` value strictly (W3C Trace Context level 1): version `00` is
    /// exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later version is read by its first 55
    /// bytes when a `-` or the end follows them; version `ff`, upper-case hex, all-zero ids,
    /// and any other length are refused. Surrounding blanks (OWS) are allowed.
    pub fn parse(value: &str) -> Result<TraceParent, TraceParentError> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        if v.len() < 55 {
            return Err(TraceParentError::Length(v.len()));
        }
        let version = hex::<1>(&v[..2], "version")?[0];
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        if version == 0 && v.len() != 55 {
            return Err(TraceParentError::Length(v.len()));
        }
        if version != 0 && v.len() > 55 && v[55] != b'-' {
            return Err(TraceParentError::Delimiter);
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return Err(TraceParentError::Delimiter);
        }
        let trace_id = hex::<16>(&v[3..35], "trace-id")?;
        let parent_id = hex::<8>(&v[36..52], "parent-id")?;
        let flags = hex::<1>(&v[53..55], "trace-flags")?[0];
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroParentId);
        }
        Ok(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            // A later version's flags are read as version 00's: only known bits travel on.
            flags: if version == 0 {
                flags
            } else {
                flags & FLAG_SAMPLED
            },
        })
    }

    /// The value, version `00`.
    pub fn to_header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// `value` when it is a `tracestate` worth passing on: at most [`MAX_TRACESTATE`] bytes of
/// printable ASCII, at most [`MAX_TRACESTATE_MEMBERS`] comma-separated members, each empty
/// or `key=value` with a non-empty key and value. Anything else is dropped (`None`).
pub fn valid_tracestate(value: &str) -> Option<&str> {
    let v = value.trim_matches([' ', '\t']);
    if v.is_empty() || v.len() > MAX_TRACESTATE || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    let mut members = 0;
    for m in v.split(',') {
        let m = m.trim_matches([' ', '\t']);
        if m.is_empty() {
            continue;
        }
        members += 1;
        let (k, val) = m.split_once('=')?;
        if k.is_empty() || val.is_empty() || k.contains(' ') || members > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    (members > 0).then_some(v)
}

/// The trace a piece of work belongs to: its own span, its parent's, and what travels on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// This span (the gateway's, a handler's).
    pub span_id: SpanId,
    /// The caller's span, `None` at the root of a trace.
    pub parent_id: Option<SpanId>,
    pub flags: u8,
    /// A valid `tracestate` to pass on unchanged.
    pub state: Option<String>,
}

impl TraceContext {
    /// A new trace (random trace and span ids, sampled).
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags: FLAG_SAMPLED,
            state: None,
        }
    }

    /// A new span (random span id) in the trace of `parent`, a child of its span.
    pub fn child_of(parent: &TraceParent, state: Option<&str>) -> TraceContext {
        TraceContext {
            trace_id: parent.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(parent.parent_id),
            flags: parent.flags,
            state: state.and_then(valid_tracestate).map(str::to_owned),
        }
    }

    /// The span a receiver of `traceparent`/`tracestate` works in: a child of a valid
    /// `traceparent`, else the root of a new trace (a malformed value is ignored: the error
    /// says why, and its `tracestate` goes with it).
    pub fn continue_or_start(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> (TraceContext, Option<TraceParentError>) {
        match traceparent.map(TraceParent::parse) {
            Some(Ok(p)) => (TraceContext::child_of(&p, tracestate), None),
            Some(Err(e)) => (TraceContext::root(), Some(e)),
            None => (TraceContext::root(), None),
        }
    }

    /// The context a receiver may take on, `None` when `traceparent` is missing or malformed.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let p = TraceParent::parse(traceparent?).ok()?;
        Some(TraceContext::child_of(&p, tracestate))
    }

    /// A child span of this one (same trace, new span id, this span as parent).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// What a call made from this span carries: this span as the callee's parent.
    pub fn outgoing(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }

    /// The `traceparent` value of [`outgoing`](Self::outgoing).
    pub fn traceparent(&self) -> String {
        self.outgoing().to_header()
    }

    /// Set `traceparent` (and `tracestate` when there is one) in NATS headers (fresh ones:
    /// a `tracestate` they held is left alone).
    pub fn inject(&self, headers: &mut async_nats::HeaderMap) {
        headers.insert(TRACEPARENT_HEADER, self.traceparent().as_str());
        // Valid states are printable ASCII: a NATS header value as they are.
        if let Some(s) = &self.state {
            headers.insert(TRACESTATE_HEADER, s.as_str());
        }
    }

    /// The context of NATS headers ([`from_headers`](Self::from_headers)).
    pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
        let h = headers?;
        Self::from_headers(
            Some(h.get(TRACEPARENT_HEADER)?.as_str()),
            h.get(TRACESTATE_HEADER).map(|v| v.as_str()),
        )
    }
}

/// The first `trace_id=<32 lower-case hex>` of a log line (as `tracing-subscriber`'s default
/// format prints a handler span's field), the 32 hex bytes; `None` when the line has none.
/// A memchr-accelerated search: lines without `trace_id=` cost one vectorised scan.
pub fn find_trace_id(line: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"trace_id=";
    // Built once: `memmem::find` would build its searcher again for every line.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let mut rest = line;
    while let Some(i) = FINDER.find(rest) {
        let after = &rest[i + KEY.len()..];
        if let Some(id) = after.get(..32)
            && id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && !after
                .get(32)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            && id.iter().any(|b| *b != b'0')
        {
            return Some(id);
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example_and_writes_it_back() {
        let p = TraceParent::parse(GOOD).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled());
        assert_eq!(p.to_header(), GOOD);
        assert_eq!(TraceParent::parse(&format!(" {GOOD}\t")).unwrap(), p);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!TraceParent::parse(&unsampled).unwrap().sampled());
    }

    #[test]
    fn refuses_every_malformed_value() {
        use TraceParentError::*;
        let cases: Vec<(String, TraceParentError)> = vec![
            (String::new(), Length(0)),
            (GOOD[..54].into(), Length(54)),
            (format!("{GOOD}0"), Length(56)),
            (format!("{GOOD}-extra"), Length(61)),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
                ZeroParentId,
            ),
            (GOOD.replacen("00", "ff", 1), Version),
            (GOOD.replacen("00", "0x", 1), Hex { field: "version" }),
            (GOOD.to_uppercase(), Hex { field: "trace-id" }),
            (GOOD.replace("4bf92f", "4BF92F"), Hex { field: "trace-id" }),
            (
                GOOD.replace("00f067aa", "00F067AA"),
                Hex { field: "parent-id" },
            ),
            (
                GOOD.replace("-01", "-0G"),
                Hex {
                    field: "trace-flags",
                },
            ),
            (GOOD.replacen('-', "_", 1), Delimiter),
            (GOOD.replace("-00f0", "_00f0"), Delimiter),
            (
                // Right length, fields shifted: a short trace-id.
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01".into(),
                Delimiter,
            ),
            (
                // Later version: more must follow after a '-'.
                format!("01-{}x", &GOOD[3..]),
                Delimiter,
            ),
            ("é".repeat(28), Hex { field: "version" }),
        ];
        for (value, want) in cases {
            assert_eq!(TraceParent::parse(&value), Err(want.clone()), "{value:?}");
            // The message names what is wrong.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let v = format!("cc-{}-what-comes-next", &GOOD[3..]);
        let p = TraceParent::parse(&v).unwrap();
        assert_eq!(p.to_header(), GOOD, "written back as version 00");
        let v = format!("01-{}", &GOOD[3..].replace("-01", "-ff"));
        assert_eq!(TraceParent::parse(&v).unwrap().flags, FLAG_SAMPLED);
    }

    #[test]
    fn continue_start_and_ignore() {
        let (c, e) = TraceContext::continue_or_start(Some(GOOD), Some("vendor=abc"));
        assert!(e.is_none());
        assert_eq!(c.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id.unwrap().to_string(), "00f067aa0ba902b7");
        assert_ne!(c.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(c.state.as_deref(), Some("vendor=abc"));
        let out = TraceParent::parse(&c.traceparent()).unwrap();
        assert_eq!((out.trace_id, out.parent_id), (c.trace_id, c.span_id));

        let (fresh, e) = TraceContext::continue_or_start(None, Some("vendor=abc"));
        assert!(e.is_none());
        assert_eq!((fresh.parent_id, fresh.state.as_deref()), (None, None));
        let (bad, e) = TraceContext::continue_or_start(Some("00-zz"), Some("vendor=abc"));
        assert_eq!(e, Some(TraceParentError::Length(5)));
        assert_ne!(bad.trace_id, c.trace_id);
        assert_eq!(
            bad.state, None,
            "tracestate goes with a refused traceparent"
        );
        assert!(TraceContext::from_headers(Some("junk"), None).is_none());

        let child = c.child();
        assert_eq!(
            (child.trace_id, child.parent_id),
            (c.trace_id, Some(c.span_id))
        );
    }

    #[test]
    fn random_ids_differ_and_are_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = TraceId::random();
            assert_ne!(t.0, [0; 16]);
            assert!(seen.insert(t));
            assert_ne!(SpanId::random().0, [0; 8]);
        }
        // Another thread has its own generator, seeded on its own.
        let other = std::thread::spawn(TraceId::random).join().unwrap();
        assert!(!seen.contains(&other));
    }

    #[test]
    fn tracestate_is_kept_only_when_well_formed() {
        assert_eq!(
            valid_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
            Some("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")
        );
        for bad in [
            "",
            "   ",
            "novalue",
            "=x",
            "k=",
            "k=v\n",
            "k=\u{e9}",
            &"k=v,".repeat(33),
            &format!("k={}", "v".repeat(MAX_TRACESTATE)),
        ] {
            assert_eq!(valid_tracestate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn inject_and_read_back_from_nats_headers() {
        let (c, _) = TraceContext::continue_or_start(Some(GOOD), Some("a=b"));
        let mut h = async_nats::HeaderMap::new();
        h.insert(TRACEPARENT_HEADER, "00-junk");
        c.inject(&mut h);
        let got = TraceContext::from_nats(Some(&h)).unwrap();
        assert_eq!(got.trace_id, c.trace_id);
        assert_eq!(got.parent_id, Some(c.span_id));
        assert_eq!(got.state.as_deref(), Some("a=b"));
        assert!(TraceContext::from_nats(None).is_none());
    }

    #[test]
    fn trace_ids_in_log_lines() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let line = format!(
            "2026-01-01T00:00:00Z  INFO request{{trace_id={id} span_id=00f067aa0ba902b7}}: hi"
        );
        assert_eq!(find_trace_id(line.as_bytes()), Some(id.as_bytes()));
        assert_eq!(
            find_trace_id(format!("x trace_id=short trace_id={id}").as_bytes()),
            Some(id.as_bytes()),
            "the first valid one"
        );
        for none in [
            "no trace here".to_string(),
            format!("trace_id={}", id.to_uppercase()),
            format!("trace_id={id}0"),
            format!("trace_id={}", &id[..31]),
            format!("trace_id={}", "0".repeat(32)),
            "trace_id=".into(),
        ] {
            assert_eq!(find_trace_id(none.as_bytes()), None, "{none}");
        }
        assert_eq!(find_trace_id(b"\xff\xfetrace_id=\xff"), None);
    }
}
