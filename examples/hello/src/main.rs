//! `hello`: a small axum app served over NATS with the narun library.
//!
//! Run it next to a gateway route `{ path = "/hello/", service = "hello" }`:
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 hello
//! curl http://127.0.0.1:8080/hello/world?greeting=Hi
//! ```
//!
//! Routes (all under `/hello/`, because the gateway forwards the full path):
//! * `GET /hello/{name}?greeting=…` → `Hi, name!` plus who answered (instance id)
//! * `POST /hello/echo` → echoes the body with the request's content type
//! * `GET /hello/slow?ms=…` → answers after a delay (to see concurrency)
//! * `GET /hello/headers` → the request headers as JSON (to see what the gateway adds)
#![forbid(unsafe_code)]

use axum::{
    Json, Router,
    extract::{Path, Query},
    http::HeaderMap,
    response::IntoResponse,
    routing::{get, post},
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Greeting {
    greeting: Option<String>,
}

#[derive(Deserialize)]
struct Delay {
    ms: Option<u64>,
}

fn router() -> Router {
    Router::new()
        .route("/hello/echo", post(echo))
        .route("/hello/slow", get(slow))
        .route("/hello/headers", get(headers))
        .route("/hello/{name}", get(greet))
        .route("/hello/", get(|| async { "Hello from narun!\n" }))
}

async fn greet(Path(name): Path<String>, Query(q): Query<Greeting>) -> String {
    let who = std::env::var("NARUN_INSTANCE_ID").unwrap_or_else(|_| "local".into());
    format!(
        "{}, {name}! (from {who})\n",
        q.greeting.as_deref().unwrap_or("Hello")
    )
}

async fn echo(headers: HeaderMap, body: axum::body::Bytes) -> impl IntoResponse {
    let ct = headers
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".parse().unwrap());
    ([("content-type", ct)], body)
}

async fn slow(Query(d): Query<Delay>) -> String {
    let ms = d.ms.unwrap_or(100).min(60_000);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

async fn headers(headers: HeaderMap) -> Json<BTreeMap<String, String>> {
    Json(
        headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colours on a terminal only: under narund stdout is a pipe into the log stream.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let opts = narun::Options::from_env_or("hello").description("narun example: hello");
    narun::serve(opts, router()).await?;
    Ok(())
}
