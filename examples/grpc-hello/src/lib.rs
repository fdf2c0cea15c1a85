//! `hello.v1.Greeter`: the narun gRPC example.
//!
//! The server is plain tonic code; `main.rs` serves it over NATS with
//! [`narun::serve_grpc`] instead of a TCP listener, and the narun gateway
//! exposes it to gRPC clients (see `docs/grpc.md`).
//!
//! Behaviour (the tests rely on it):
//! * `SayHello{name}` → `"Hello, <name>"`; when the call carries metadata
//!   `x-echo`, its value is appended as `" [x-echo=<value>]"` and sent back as
//!   response header `x-echo`; binary metadata `x-echo-bin` comes back as
//!   response header `x-echo-bin` (same bytes);
//! * name `""` → `INVALID_ARGUMENT "name must not be empty"`;
//! * name `meta-error` → `FAILED_PRECONDITION "with metadata"` carrying
//!   metadata `x-error-detail: precondition` and `x-error-bin: 00 01 02 ff`;
//! * name `details` → `OUT_OF_RANGE "with details"` carrying the rich error
//!   details [`DETAILS`] (`grpc-status-details-bin`);
//! * name `sleep:<ms>` → waits that long before answering;
//! * name `panic` → the handler panics (the library answers INTERNAL);
//! * name `big:<n>` → a reply whose message is `n` bytes of `x` (used to hit
//!   the NATS `max_payload`);
//! * `SayHellos{name}` → 3 replies `"Hello #<i>, <name>"` (`i` = 0, 1, 2), or
//!   `count:<n>` → n replies; name `fail` → response header `x-stream: failing`,
//!   one reply, then `ABORTED "stream failed"` with trailers `x-trailer:
//!   stream-failed` and `x-trailer-bin: de ad be ef`.

use futures_util::Stream;
use std::pin::Pin;
use std::time::Duration;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

/// Generated protobuf types and tonic server/client: `proto/hello.proto` compiled by
/// tonic-prost-build (without the TCP `connect()` helper: clients bring a channel). The
/// output is committed, so a build needs no `protoc`; `tests/generated.rs` keeps it equal
/// to what the proto generates.
pub mod pb {
    include!("generated/hello.v1.rs");
}

use pb::{HelloReply, HelloRequest};

/// The error details of name `details` (opaque bytes here; a real app sends an
/// encoded `google.rpc.Status`).
pub const DETAILS: &[u8] = &[0x08, 0x0b, 0x12, 0x02, b'h', b'i', 0xff];

/// The example implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Greeter;

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl pb::greeter_server::Greeter for Greeter {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let echo = req
            .metadata()
            .get("x-echo")
            .and_then(|v| v.to_str().ok())
            .map(|v| format!(" [x-echo={v}]"))
            .unwrap_or_default();
        let mut head = MetadataMap::new();
        if let Some(v) = req.metadata().get("x-echo") {
            head.insert("x-echo", v.clone());
        }
        if let Some(v) = req.metadata().get_bin("x-echo-bin") {
            head.insert_bin("x-echo-bin", v.clone());
        }
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        if name == "meta-error" {
            let mut m = MetadataMap::new();
            m.insert("x-error-detail", MetadataValue::from_static("precondition"));
            m.insert_bin(
                "x-error-bin",
                MetadataValue::from_bytes(&[0x00, 0x01, 0x02, 0xff]),
            );
            return Err(Status::with_metadata(
                Code::FailedPrecondition,
                "with metadata",
                m,
            ));
        }
        if name == "details" {
            return Err(Status::with_details(
                Code::OutOfRange,
                "with details",
                prost::bytes::Bytes::from_static(DETAILS),
            ));
        }
        if name == "panic" {
            panic!("asked to panic");
        }
        if let Some(n) = name.strip_prefix("big:").and_then(|s| s.parse().ok()) {
            return Ok(Response::new(HelloReply {
                message: "x".repeat(n),
            }));
        }
        if let Some(ms) = name.strip_prefix("sleep:").and_then(|s| s.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut reply = Response::new(HelloReply {
            message: format!("Hello, {name}{echo}"),
        });
        *reply.metadata_mut() = head;
        Ok(reply)
    }

    type SayHellosStream = ReplyStream;

    async fn say_hellos(
        &self,
        req: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHellosStream>, Status> {
        let name = req.into_inner().name;
        let (count, fail) = match name.as_str() {
            "fail" => (1, true),
            n => (
                n.strip_prefix("count:")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(3u32),
                false,
            ),
        };
        let mut items: Vec<Result<HelloReply, Status>> = (0..count)
            .map(|i| {
                Ok(HelloReply {
                    message: format!("Hello #{i}, {name}"),
                })
            })
            .collect();
        if fail {
            let mut trailers = MetadataMap::new();
            trailers.insert("x-trailer", MetadataValue::from_static("stream-failed"));
            trailers.insert_bin(
                "x-trailer-bin",
                MetadataValue::from_bytes(&[0xde, 0xad, 0xbe, 0xef]),
            );
            items.push(Err(Status::with_metadata(
                Code::Aborted,
                "stream failed",
                trailers,
            )));
        }
        let mut reply = Response::new(Box::pin(futures_util::stream::iter(items)) as ReplyStream);
        if fail {
            reply
                .metadata_mut()
                .insert("x-stream", MetadataValue::from_static("failing"));
        }
        Ok(reply)
    }
}

/// The tonic server for [`Greeter`], ready for [`narun::serve_grpc`].
pub fn server() -> pb::greeter_server::GreeterServer<Greeter> {
    pb::greeter_server::GreeterServer::new(Greeter)
}
