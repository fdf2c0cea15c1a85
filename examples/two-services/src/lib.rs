//! Two small apps that call each other over NATS with the narun library (no gateway in
//! between): `shop` answers `GET /shop/buy/{item}?qty=N` by asking `prices` for a quote
//! with [`narun::Client`]; `prices` answers `POST /prices/quote`.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 shop &      # may start first: it waits for prices
//! NATS_URL=nats://127.0.0.1:4222 prices &
//! curl http://127.0.0.1:8080/shop/buy/apple?qty=3   # through a gateway route to "shop"
//! ```
//!
//! Deployed with narund: `narunctl deploy examples/two-services/prices.toml`, then
//! `shop.toml`, whose `calls = ["prices"]` lets narund's minted NATS user of `shop` send
//! requests to `prices` (docs/spec.md, "Dependencies"). The request and answer types
//! live here, shared by both binaries.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// What `shop` asks `prices` (`POST /prices/quote`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteRequest {
    pub item: String,
    pub qty: u32,
}

/// What `prices` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub item: String,
    pub qty: u32,
    pub unit_cents: u64,
    pub total_cents: u64,
    /// The instance of `prices` that answered.
    pub priced_by: String,
}

/// The price list of `prices` (cents per unit).
pub fn unit_price(item: &str) -> Option<u64> {
    match item {
        "apple" => Some(50),
        "pear" => Some(70),
        "melon" => Some(300),
        _ => None,
    }
}

/// This process's instance id under narund (`NARUN_INSTANCE_ID`), else `local`.
pub fn instance() -> String {
    std::env::var("NARUN_INSTANCE_ID").unwrap_or_else(|_| "local".into())
}

/// Log to stderr (`RUST_LOG`, default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}
