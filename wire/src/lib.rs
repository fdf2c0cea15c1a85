//! The narun wire contract, shared by the `narun` app library, the gateway,
//! narund and narunctl.
//!
//! * [`names`]: bucket, subject and environment variable names (Go compatible).
//! * [`events`]: the JSON shapes of log lines, status events and node state.
//! * [`bhttp`]: HTTP requests and responses as Binary HTTP (RFC 9292) payloads.
//! * [`micro`]: NATS Micro (ADR-32) services: endpoints, stats, discovery.
//! * [`grpc`]: `grpc-timeout` and `grpc-message` conventions shared by the gRPC gateway and apps.
//! * [`connect`]: NATS connection settings (URL, auth, TLS) and the app env contract.
//! * [`jetstream`]: KV buckets and object stores that open on every server version.
//! * `secrets` (feature `secrets`): AES-256-GCM secrets of the `narun-secrets` bucket.

pub mod bhttp;
pub mod connect;
pub mod events;
pub mod grpc;
pub mod jetstream;
pub mod micro;
pub mod names;
#[cfg(feature = "secrets")]
pub mod secrets;
