//! `prices`: quotes items (`POST /prices/quote` with a [`QuoteRequest`]) for `shop`.
#![forbid(unsafe_code)]

use axum::{Json, Router, http::StatusCode, routing::post};
use two_services::{Quote, QuoteRequest, instance, unit_price};

async fn quote(Json(r): Json<QuoteRequest>) -> Result<Json<Quote>, (StatusCode, String)> {
    let unit = unit_price(&r.item)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no price for {:?}", r.item)))?;
    Ok(Json(Quote {
        total_cents: unit * u64::from(r.qty),
        unit_cents: unit,
        item: r.item,
        qty: r.qty,
        priced_by: instance(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    two_services::init_logging();
    let app = Router::new().route("/prices/quote", post(quote));
    narun::serve(narun::Options::from_env_or("prices"), app).await?;
    Ok(())
}
