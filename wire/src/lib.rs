//! The narun wire contract, shared by the `narun` app library, the gateway,
//! narund and narunctl.
//!
//! * [`names`]: bucket, subject and environment variable names (Go compatible).
//! * [`events`]: the JSON shapes of log lines, status events and node state.

pub mod events;
pub mod names;
