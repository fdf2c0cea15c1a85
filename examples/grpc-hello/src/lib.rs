//! `hello.v1.Greeter`: the narun gRPC example.
//!
//! The server is plain tonic code; `main.rs` serves it over NATS with
//! [`narun::serve_grpc`] instead of a TCP listener, and the narun gateway
//! exposes it to gRPC clients (see `docs/grpc.md`).
//!
//! Behaviour (the tests rely on it):
//! * `SayHello{name}` → `"Hello, <name>"`; when the call carries metadata
//!   `x-echo`, its value is appended as `" [x-echo=<value>]"`;
//! * name `""` → `INVALID_ARGUMENT "name must not be empty"`;
//! * name `sleep:<ms>` → waits that long before answering;
//! * name `panic` → the handler panics (the library answers INTERNAL);
//! * name `big:<n>` → a reply whose message is `n` bytes of `x` (used to hit
//!   the NATS `max_payload`);
//! * `SayHellos{name}` → 3 replies `"Hello #<i>, <name>"` (`i` = 0, 1, 2), or
//!   `count:<n>` → n replies; name `fail` → one reply then `ABORTED "stream failed"`.

use futures_util::Stream;
use std::pin::Pin;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Generated protobuf types and tonic server/client.
pub mod pb {
    tonic::include_proto!("hello.v1");
}

use pb::{HelloReply, HelloRequest};

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
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
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
        Ok(Response::new(HelloReply {
            message: format!("Hello, {name}{echo}"),
        }))
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
            items.push(Err(Status::aborted("stream failed")));
        }
        Ok(Response::new(Box::pin(futures_util::stream::iter(items))))
    }
}

/// The tonic server for [`Greeter`], ready for [`narun::serve_grpc`].
pub fn server() -> pb::greeter_server::GreeterServer<Greeter> {
    pb::greeter_server::GreeterServer::new(Greeter)
}
