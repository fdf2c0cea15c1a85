//! gRPC status: the codes' names (the `grpc_code` label) and answers that carry
//! only a status. The codes and the mapping of ADR-32 service errors to codes
//! are shared with the app library (`narun_wire::grpc`).

use http::{HeaderValue, Response};

use super::GrpcResponse;

/// gRPC status codes (shared with the app library, `narun_wire::grpc`).
pub use narun_wire::grpc::code;
pub(super) use narun_wire::grpc::put_status;

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
