//! gRPC status: the codes, their names (the `grpc_code` label), the mapping of
//! ADR-32 service errors to codes, and answers that carry only a status.

use http::{HeaderMap, HeaderValue, Response};
use narun_wire::grpc::{header, percent_encode};

use super::GrpcResponse;

/// gRPC status codes.
#[allow(dead_code)]
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

/// Canonical name of a gRPC code (the `grpc_code` label).
pub(super) fn code_name(c: u16) -> &'static str {
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
    .get(usize::from(c))
    .copied()
    .unwrap_or("UNKNOWN")
}

/// Map an ADR-32 error code (`Nats-Service-Error-Code`) to a gRPC status code.
///
/// narun consumers send the decimal gRPC code (`"3"`); the consumer adapters
/// themselves use HTTP-like codes (`400` missing method header, `500`, `501`
/// unknown method), mapped to their gRPC meaning. Anything else is `UNKNOWN`.
pub fn status_from_service_error(code: &str) -> u16 {
    match code.trim().parse::<u16>() {
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

/// A gRPC status answer without messages ("trailers-only").
pub(super) fn trailers_only(code: u16, message: &str) -> GrpcResponse {
    let mut r = Response::new(tonic::body::Body::empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    put_status(h, code, message);
    r
}

pub(super) fn put_status(h: &mut HeaderMap, code: u16, message: &str) {
    h.insert(header::STATUS, HeaderValue::from(code));
    if !message.is_empty()
        && let Ok(v) = HeaderValue::from_str(&percent_encode(message))
    {
        h.insert(header::MESSAGE, v);
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
}
