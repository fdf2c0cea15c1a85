//! gRPC text conventions shared by the gateway and the app library:
//! `grpc-timeout` values and `grpc-message` percent-encoding
//! (see the gRPC over HTTP/2 protocol description).

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

#[cfg(test)]
mod tests {
    use super::*;

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
