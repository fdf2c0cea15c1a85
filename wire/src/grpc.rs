//! gRPC over NATS, the parts both ends share: the gateway and the app library's
//! channel (`narun::grpc::channel`) call, `narun::serve_grpc` answers.
//!
//! * text conventions: `grpc-timeout` values, `grpc-message` percent-encoding
//!   (see the gRPC over HTTP/2 protocol description);
//! * the request: the one gRPC message unframed ([`single_message`]), the call's
//!   metadata as NATS headers ([`request_metadata`]), the deadline
//!   ([`timeout_value`]);
//! * the answer: [`ReplyReader`] reads the NATS replies of one call (narun's
//!   numbered stream messages and final status, or a Go-style single reply) into
//!   messages, metadata and a status, with no I/O; [`put_status`] writes a status
//!   into HTTP/2 headers or trailers.
//!
//! The framing itself is described in `docs/grpc.md`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::str::FromStr;
use std::time::Duration;

/// NATS request header: the caller (the Rust gateway) accepts the narun stream framing.
pub const STREAM_HEADER: &str = "Narun-Grpc-Stream";
/// NATS reply header: sequence number (0, 1, …) of a streamed response message.
pub const SEQ_HEADER: &str = "Narun-Grpc-Seq";
/// NATS reply header: final message of a streamed answer, decimal gRPC status code.
pub const STATUS_HEADER: &str = "Narun-Grpc-Status";
/// NATS reply header: status message of the final message (percent-encoded).
pub const MESSAGE_HEADER: &str = "Narun-Grpc-Message";

/// gRPC's own HTTP/2 header names (lower case, as HTTP/2 carries them).
pub mod header {
    pub const STATUS: &str = "grpc-status";
    pub const MESSAGE: &str = "grpc-message";
    pub const TIMEOUT: &str = "grpc-timeout";
    pub const ENCODING: &str = "grpc-encoding";
    pub const ACCEPT_ENCODING: &str = "grpc-accept-encoding";
    /// [`crate::names::GRPC_METHOD_HEADER`] in lower case.
    pub const ORIGINAL_METHOD: &str = "x-original-grpc-method";
    /// The rich error details (`google.rpc.Status`), metadata an app may send.
    pub const STATUS_DETAILS: &str = "grpc-status-details-bin";
}

/// Headers that describe a transport — the HTTP/2 connection, NATS, narun's own
/// framing and deadline (`narun-*`) — rather than call metadata; neither the gateway
/// nor the app library passes them on as metadata. `lower_name` must be lower case.
pub fn is_transport_header(lower_name: &str) -> bool {
    lower_name.starts_with("nats-")
        || lower_name.starts_with("narun-")
        || matches!(
            lower_name,
            header::ORIGINAL_METHOD
                | "content-type"
                | "content-length"
                | "te"
                | "host"
                | "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "upgrade"
        )
}

/// Response header and trailer names an app's gRPC server may not send to the
/// client (the app library does not forward them, the gateway drops them): the
/// transport names of [`is_transport_header`], HTTP/2 pseudo-headers and hop-by-hop
/// headers, and gRPC's own protocol headers — the gateway writes `grpc-status` and
/// `grpc-message` from the call's status, and a `grpc-encoding` would misdescribe the
/// frames it builds — except [`header::STATUS_DETAILS`]. `lower_name` must be lower case.
pub fn is_reserved_response_header(lower_name: &str) -> bool {
    is_transport_header(lower_name)
        || lower_name.starts_with(':')
        || (lower_name.starts_with("grpc-") && lower_name != header::STATUS_DETAILS)
        || crate::bhttp::HOP_BY_HOP.contains(&lower_name)
}

/// Parse a `grpc-timeout` value: 1 to 8 ASCII digits and a unit
/// (`H` hours, `M` minutes, `S` seconds, `m` ms, `u` µs, `n` ns).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.len() < 2 || v.len() > 9 || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Percent-encode a status message for `grpc-message`: printable ASCII except
/// `%` stays, every other byte becomes `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode a percent-encoded `grpc-message`; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// gRPC status codes.
pub mod code {
    pub const OK: u16 = 0;
    pub const CANCELLED: u16 = 1;
    pub const UNKNOWN: u16 = 2;
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const NOT_FOUND: u16 = 5;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const DATA_LOSS: u16 = 15;
    pub const UNAUTHENTICATED: u16 = 16;
}

/// Map an ADR-32 error code (`Nats-Service-Error-Code`) to a gRPC status code.
///
/// narun consumers send the decimal gRPC code (`"3"`); the consumer adapters
/// themselves use HTTP-like codes (`400` missing method header, `500`, `501`
/// unknown method), mapped to their gRPC meaning. Anything else is `UNKNOWN`.
pub fn status_from_service_error(c: &str) -> u16 {
    match c.trim().parse::<u16>() {
        Ok(c @ 1..=16) => c,
        Ok(400) => code::INVALID_ARGUMENT,
        Ok(401) => code::UNAUTHENTICATED,
        Ok(403) => code::PERMISSION_DENIED,
        Ok(404) => code::NOT_FOUND,
        Ok(429) => code::RESOURCE_EXHAUSTED,
        Ok(500) => code::INTERNAL,
        Ok(501) => code::UNIMPLEMENTED,
        Ok(503) => code::UNAVAILABLE,
        Ok(504) => code::DEADLINE_EXCEEDED,
        _ => code::UNKNOWN,
    }
}

/// `grpc-status` (and `grpc-message` when `message` is not empty) into a header
/// or trailer block.
pub fn put_status(h: &mut http::HeaderMap, c: u16, message: &str) {
    h.insert(header::STATUS, http::HeaderValue::from(c));
    if !message.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&percent_encode(message))
    {
        h.insert(header::MESSAGE, v);
    }
}

/// A `grpc-timeout` value for what is left of a call's budget: whole
/// milliseconds, at least 1 (a spent budget is not sent at all).
pub fn timeout_value(left: Duration) -> String {
    format!("{}m", left.as_millis().clamp(1, 99_999_999))
}

/// One message in the 5-byte gRPC framing (uncompressed).
pub fn frame(m: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + m.len());
    b.put_u8(0);
    b.put_u32(m.len() as u32);
    b.put_slice(m);
    b.freeze()
}

/// The one request message of a unary or server-streaming call, unframed: what
/// travels as the NATS payload. The error is the gRPC status to answer.
pub fn single_message(mut body: Bytes) -> Result<Bytes, (u16, &'static str)> {
    if body.len() < 5 {
        return Err((code::INTERNAL, "the call carried no request message"));
    }
    if body[0] != 0 {
        return Err((
            code::UNIMPLEMENTED,
            "compressed messages are not supported over narun (use identity)",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.advance(5);
    if body.len() < len {
        return Err((code::INTERNAL, "truncated gRPC request message"));
    }
    if body.len() > len {
        return Err((
            code::UNIMPLEMENTED,
            "client streaming is not supported over narun (one request message per call)",
        ));
    }
    Ok(body)
}

/// Request headers that are not call metadata: gRPC protocol headers (the
/// deadline travels on its own), HTTP/2 connection-level headers, names the
/// NATS transport uses itself, and the W3C trace headers (the caller sets its own
/// child context, [`crate::trace`]). `lower_name` must be lower case.
pub fn is_reserved_request_header(lower_name: &str) -> bool {
    lower_name.starts_with("grpc-")
        || is_transport_header(lower_name)
        || matches!(
            lower_name,
            "proxy-connection" | "user-agent" | "traceparent" | "tracestate"
        )
}

/// A call's request metadata (HTTP/2 headers) appended to the NATS headers of
/// its request: reserved names ([`is_reserved_request_header`]) and values NATS
/// cannot carry are left out; `-bin` values stay base64.
pub fn request_metadata(from: &http::HeaderMap, to: &mut async_nats::HeaderMap) {
    for (name, value) in from {
        if is_reserved_request_header(name.as_str()) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            async_nats::HeaderName::from_str(name.as_str()),
            value
                .to_str()
                .map_err(|_| ())
                .and_then(|v| async_nats::HeaderValue::from_str(v).map_err(|_| ())),
        ) else {
            continue;
        };
        to.append(n, v);
    }
}

/// The metadata an app sent as NATS headers of a reply, as HTTP/2 headers:
/// lower-case names, reserved names ([`is_reserved_response_header`]) dropped,
/// and names or values HTTP cannot carry dropped.
pub fn response_metadata(h: Option<&async_nats::HeaderMap>) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (name, values) in h.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        let lower = name.to_ascii_lowercase();
        if is_reserved_response_header(&lower) {
            continue;
        }
        let Ok(n) = http::HeaderName::from_bytes(lower.as_bytes()) else {
            continue;
        };
        for v in values {
            if let Ok(v) = http::HeaderValue::from_str(v.as_str()) {
                out.append(n.clone(), v);
            }
        }
    }
    out
}

/// What one NATS reply of a call says ([`ReplyReader::read`]).
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// A response message. `head` is the response header metadata, with the
    /// first message of a stream only.
    Message {
        message: Bytes,
        head: Option<http::HeaderMap>,
    },
    /// The call's status and the metadata that came with it (its trailers, or
    /// the one header block of a status-only answer).
    End {
        code: u16,
        message: String,
        trailers: http::HeaderMap,
    },
}

impl Reply {
    /// An end without metadata.
    pub fn end(c: u16, message: impl Into<String>) -> Reply {
        Reply::End {
            code: c,
            message: message.into(),
            trailers: http::HeaderMap::new(),
        }
    }
}

/// Reads the replies of one gRPC call made with [`STREAM_HEADER`], in the order
/// NATS delivers them, without I/O (the caller handles the no-responders status,
/// timeouts and the end of the subscription):
///
/// * `Narun-Grpc-Status` ends the call with that code, its message
///   (`Narun-Grpc-Message`, else `Nats-Service-Error`) and the other headers as
///   trailers;
/// * `Narun-Grpc-Seq: n` is message `n` (its headers, for `n = 0`, the response
///   header metadata); a gap ends the call with `DATA_LOSS`;
/// * anything else is a Go-style single reply: an ADR-32 error
///   (`Nats-Service-Error-Code`) ends the call; a plain reply is the one message,
///   and [`ReplyReader::pending_end`] then gives `OK`.
#[derive(Debug, Default)]
pub struct ReplyReader {
    next_seq: u64,
    pending_end: Option<(u16, String)>,
}

impl ReplyReader {
    pub fn new() -> ReplyReader {
        ReplyReader::default()
    }

    /// The end owed after a single reply's message, once.
    pub fn pending_end(&mut self) -> Option<Reply> {
        self.pending_end.take().map(|(c, m)| Reply::end(c, m))
    }

    /// Read one reply (its NATS headers and payload).
    pub fn read(&mut self, headers: Option<&async_nats::HeaderMap>, payload: Bytes) -> Reply {
        use crate::names::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        if let Some(status) = get(STATUS_HEADER) {
            let c = status.trim().parse().unwrap_or(code::UNKNOWN);
            let message = get(MESSAGE_HEADER)
                .map(percent_decode)
                .or_else(|| get(SERVICE_ERROR_HEADER).map(str::to_owned))
                .unwrap_or_default();
            return Reply::End {
                code: c,
                message,
                trailers: response_metadata(headers),
            };
        }
        if let Some(seq) = get(SEQ_HEADER) {
            let seq: u64 = seq.trim().parse().unwrap_or(u64::MAX);
            if seq != self.next_seq {
                return Reply::end(
                    code::DATA_LOSS,
                    format!(
                        "response stream lost messages over NATS (expected #{}, got #{seq})",
                        self.next_seq
                    ),
                );
            }
            self.next_seq += 1;
            return Reply::Message {
                message: payload,
                head: (seq == 0).then(|| response_metadata(headers)),
            };
        }
        if let Some(c) = get(SERVICE_ERROR_CODE_HEADER) {
            let message = get(SERVICE_ERROR_HEADER).unwrap_or_default().to_owned();
            return Reply::end(status_from_service_error(c), message);
        }
        self.pending_end = Some((code::OK, String::new()));
        Reply::Message {
            message: payload,
            head: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_error_codes() {
        assert_eq!(status_from_service_error("3"), code::INVALID_ARGUMENT);
        assert_eq!(status_from_service_error("16"), code::UNAUTHENTICATED);
        assert_eq!(status_from_service_error("400"), code::INVALID_ARGUMENT);
        assert_eq!(status_from_service_error("404"), code::NOT_FOUND);
        assert_eq!(status_from_service_error("500"), code::INTERNAL);
        assert_eq!(status_from_service_error("501"), code::UNIMPLEMENTED);
        assert_eq!(status_from_service_error("503"), code::UNAVAILABLE);
        assert_eq!(status_from_service_error("0"), code::UNKNOWN);
        assert_eq!(status_from_service_error("17"), code::UNKNOWN);
        assert_eq!(status_from_service_error("teapot"), code::UNKNOWN);
    }

    #[test]
    fn framing() {
        assert_eq!(frame(b"hi").as_ref(), &[0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(single_message(frame(&[8, 1])).unwrap().as_ref(), &[8, 1]);
        assert_eq!(single_message(frame(b"")).unwrap(), Bytes::new());
        assert_eq!(single_message(Bytes::new()).unwrap_err().0, code::INTERNAL);
        assert_eq!(
            single_message(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
                .unwrap_err()
                .0,
            code::UNIMPLEMENTED
        );
        assert_eq!(
            single_message(Bytes::from_static(&[1, 0, 0, 0, 0]))
                .unwrap_err()
                .0,
            code::UNIMPLEMENTED
        );
        assert_eq!(
            single_message(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))
                .unwrap_err()
                .0,
            code::INTERNAL
        );
        assert_eq!(timeout_value(Duration::ZERO), "1m");
        assert_eq!(timeout_value(Duration::from_secs(2)), "2000m");
        assert_eq!(
            parse_grpc_timeout(&timeout_value(Duration::from_secs(1 << 40))),
            Some(Duration::from_millis(99_999_999))
        );
    }

    #[test]
    fn request_metadata_without_reserved_names() {
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("grpc-timeout", "1S"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "tonic"),
            ("narun-timeout-ms", "99999"),
            ("narun-grpc-stream", "0"),
            ("x-original-grpc-method", "/forged/Method"),
            ("nats-service-error-code", "0"),
            ("x-echo", "one"),
            ("x-echo", "two"),
            ("x-echo-bin", "AAEC"),
        ] {
            h.append(
                http::HeaderName::from_static(n),
                http::HeaderValue::from_static(v),
            );
        }
        h.append(
            "x-opaque",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let mut nh = async_nats::HeaderMap::new();
        request_metadata(&h, &mut nh);
        let mut names: Vec<String> = nh.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["x-echo", "x-echo-bin"]);
        let echo: Vec<&str> = nh.get_all("x-echo").map(|v| v.as_str()).collect();
        assert_eq!(echo, ["one", "two"]);
    }

    #[test]
    fn reply_metadata_without_reserved_names() {
        let mut h = async_nats::HeaderMap::new();
        for (n, v) in [
            ("Narun-Grpc-Seq", "0"),
            ("Narun-Grpc-Status", "0"),
            ("Nats-Service-Error", "x"),
            ("grpc-status", "0"),
            ("grpc-message", "forged"),
            ("Content-Type", "text/html"),
            ("connection", "close"),
            ("X-Custom", "v"),
            ("x-bin-bin", "AAEC"),
            ("grpc-status-details-bin", "CAM"),
        ] {
            h.append(n, v);
        }
        let m = response_metadata(Some(&h));
        let mut names: Vec<&str> = m.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["grpc-status-details-bin", "x-bin-bin", "x-custom"]);
        assert!(response_metadata(None).is_empty());
    }

    fn headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, *v);
        }
        h
    }

    #[test]
    fn reply_reader_stream() {
        let mut r = ReplyReader::new();
        let m0 = headers(&[(SEQ_HEADER, "0"), ("x-stream", "on")]);
        let Reply::Message { message, head } = r.read(Some(&m0), Bytes::from_static(b"a")) else {
            panic!("message 0");
        };
        assert_eq!(message, "a");
        assert_eq!(head.unwrap()["x-stream"], "on");
        let m1 = headers(&[(SEQ_HEADER, "1")]);
        assert_eq!(
            r.read(Some(&m1), Bytes::from_static(b"b")),
            Reply::Message {
                message: Bytes::from_static(b"b"),
                head: None
            }
        );
        let end = headers(&[
            (STATUS_HEADER, "10"),
            (MESSAGE_HEADER, "100%25 failed"),
            ("Nats-Service-Error-Code", "10"),
            ("x-trailer", "t"),
        ]);
        let Reply::End {
            code: c,
            message,
            trailers,
        } = r.read(Some(&end), Bytes::new())
        else {
            panic!("end");
        };
        assert_eq!((c, message.as_str()), (10, "100% failed"));
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["x-trailer"], "t");
        assert_eq!(r.pending_end(), None);
    }

    #[test]
    fn reply_reader_gap_and_single_replies() {
        let mut r = ReplyReader::new();
        let m1 = headers(&[(SEQ_HEADER, "1")]);
        let Reply::End { code: c, .. } = r.read(Some(&m1), Bytes::new()) else {
            panic!("gap");
        };
        assert_eq!(c, code::DATA_LOSS);
        // A Go-style plain reply: the message, then OK.
        let mut r = ReplyReader::new();
        assert_eq!(
            r.read(None, Bytes::from_static(b"m")),
            Reply::Message {
                message: Bytes::from_static(b"m"),
                head: None
            }
        );
        assert_eq!(r.pending_end(), Some(Reply::end(code::OK, "")));
        assert_eq!(r.pending_end(), None);
        // A Go-style ADR-32 error.
        let e = headers(&[
            ("Nats-Service-Error-Code", "501"),
            ("Nats-Service-Error", "unknown method"),
        ]);
        assert_eq!(
            ReplyReader::new().read(Some(&e), Bytes::new()),
            Reply::end(code::UNIMPLEMENTED, "unknown method")
        );
    }

    #[test]
    fn status_headers() {
        let mut h = http::HeaderMap::new();
        put_status(&mut h, 10, "é");
        assert_eq!(h[header::STATUS], "10");
        assert_eq!(h[header::MESSAGE], "%C3%A9");
        let mut h = http::HeaderMap::new();
        put_status(&mut h, code::OK, "");
        assert!(h.get(header::MESSAGE).is_none());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("+5S"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn reserved_response_headers() {
        for name in [
            "content-type",
            "content-length",
            "grpc-status",
            "grpc-message",
            "grpc-encoding",
            "grpc-accept-encoding",
            "grpc-timeout",
            ":status",
            "te",
            "trailer",
            "connection",
            "transfer-encoding",
            "nats-service-error-code",
            "narun-grpc-status",
            "narun-timeout-ms",
            "x-original-grpc-method",
        ] {
            assert!(is_reserved_response_header(name), "{name}");
        }
        for name in [
            "x-custom",
            "x-trace-bin",
            "grpc-status-details-bin",
            "set-cookie",
        ] {
            assert!(!is_reserved_response_header(name), "{name}");
        }
        assert!(is_transport_header("narun-timeout-ms"));
    }

    #[test]
    fn messages_round_trip() {
        let s = "é 100% done\nnext";
        let e = percent_encode(s);
        assert!(e.is_ascii() && !e.contains('\n'));
        assert_eq!(percent_decode(&e), s);
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
