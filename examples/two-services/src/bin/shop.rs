//! `shop`: `GET /shop/buy/{item}?qty=N` asks `prices` for a quote through
//! [`narun::Client`] and answers in words. It may start before `prices`: each call waits
//! up to 5 s for an instance of `prices` to appear, within the caller's deadline.
#![forbid(unsafe_code)]

use axum::{
    Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::get,
};
use serde::Deserialize;
use std::time::Duration;
use two_services::{Quote, QuoteRequest, instance};

#[derive(Deserialize)]
struct Qty {
    qty: Option<u32>,
}

async fn buy(
    State(prices): State<narun::Client>,
    Path(item): Path<String>,
    Query(q): Query<Qty>,
) -> (StatusCode, String) {
    let req = QuoteRequest {
        item,
        qty: q.qty.unwrap_or(1),
    };
    match prices
        .call::<_, Quote>("prices", "/prices/quote", &req)
        .await
    {
        Ok(quote) => (
            StatusCode::OK,
            format!(
                "{} x {} = {} cents (priced by {}, sold by {})\n",
                quote.qty,
                quote.item,
                quote.total_cents,
                quote.priced_by,
                instance()
            ),
        ),
        // The callee's own 4xx (an unknown item) is passed on; its failures become 502,
        // 503 (no instance of prices) or 504 (no answer in time).
        Err(e) => (e.status(), format!("{e}\n")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    two_services::init_logging();
    let opts = narun::Options::from_env_or("shop");
    // The same NATS settings (URL, the app's own credentials and inbox prefix).
    let nats = opts.nats.connect("shop-client").await?;
    let prices = narun::Client::new(nats)
        .with_timeout(Duration::from_secs(10))
        .wait_for_responder(Duration::from_secs(5));
    let app = Router::new()
        .route("/shop/buy/{item}", get(buy))
        .with_state(prices);
    narun::serve(opts, app).await?;
    Ok(())
}
