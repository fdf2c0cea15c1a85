//! The narun wire contract, shared by the `narun` app library, the gateway,
//! narund and narunctl.
//!
//! * [`names`]: bucket, subject and environment variable names (Go compatible).
//! * [`node_id`]: the default node id of a device (provisioning file, machine id, host name).
//! * [`events`]: the JSON shapes of log lines, status events and node state.
//! * [`status`]: instance and node statuses, reasons, and the settle rule (when a new run is ready).
//! * [`bhttp`]: HTTP requests and responses as Binary HTTP (RFC 9292) payloads.
//! * [`micro`]: NATS Micro (ADR-32) services: endpoints, stats, discovery.
//! * [`discovery`]: waiting for a service to appear (`$SRV.PING.<name>`, retry backoff).
//! * [`grpc`]: `grpc-timeout` and `grpc-message` conventions shared by the gRPC gateway and apps.
//! * [`elf`]: which ELF executables narun runs (the header check of narunctl and narund).
//! * [`connect`]: NATS connection settings (URL, auth, TLS) and the app env contract.
//! * [`jetstream`]: the buckets of the contract ([`jetstream::APP_CONFIGS`], …), opened or created on every server version; typed "not found".
//! * [`locks`]: what a lock's key in `narun-locks` holds, and the lease rule of `narun::lock`.
//! * [`jobs`]: async jobs: the `narun-jobs` stream, job records, headers and retry rules.
//! * [`routes`]: routes a service declares in its Micro metadata, and gateway route sets in KV.
//! * [`signing`]: ed25519 signatures of app binaries (`narunctl deploy --sign`, `[deploy] trusted_keys`).
//! * [`app_config`]: app configuration in KV (`narun::config`): bucket, key, values, the read permission.
//! * [`trace`]: W3C `traceparent`/`tracestate`: the strict parser, ids, and how a trace travels.
//! * `otlp` (feature `otlp`): OpenTelemetry export of request spans over OTLP/gRPC.
//! * `secrets` (feature `secrets`): AES-256-GCM secrets of the `narun-secrets` bucket.
#![deny(unsafe_code)]

pub mod app_config;
pub mod bhttp;
pub mod connect;
pub mod discovery;
pub mod elf;
pub mod events;
pub mod grpc;
pub mod jetstream;
pub mod jobs;
pub mod locks;
pub mod micro;
pub mod names;
pub mod node_id;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod routes;
pub mod runs;
#[cfg(feature = "secrets")]
pub mod secrets;
pub mod signing;
pub mod status;
pub mod trace;
