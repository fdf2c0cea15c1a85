//! `configured`: an app that carries its own spec and reads a typed configuration.
//!
//! * Its default spec is `examples/configured/narun.toml`, embedded into the binary's
//!   `.narun` section by `narun::embed_spec!`: `narunctl deploy ./configured` needs no spec
//!   file, `narunctl inspect ./configured` shows it.
//! * Its greeting comes from its configuration in KV (`narun::config`), set with
//!   `narunctl config set greeter greeter.toml` and followed while it runs:
//!
//! ```text
//! greeting = "Hi"
//! max_name_len = 20
//! ```
//!
//! A configuration that does not validate (`max_name_len = 0`) is rejected by the app,
//! which keeps the previous one and logs why.
//!
//! Routes: `GET /greeter/{name}` → `Hi, name! (config revision N)`.
#![deny(unsafe_code)]

use axum::{Router, extract::Path, extract::State, routing::get};
use serde::Deserialize;

narun::embed_spec!("../narun.toml");

/// The app's configuration (`narun-config`, key `greeter`).
#[derive(Debug, Deserialize)]
struct Settings {
    greeting: String,
    #[serde(default = "default_max")]
    max_name_len: usize,
}

fn default_max() -> usize {
    32
}

fn validate(s: &Settings) -> Result<(), String> {
    if s.greeting.trim().is_empty() {
        return Err("greeting must not be empty".into());
    }
    if s.max_name_len == 0 {
        return Err("max_name_len must be at least 1".into());
    }
    Ok(())
}

async fn greet(State(cfg): State<narun::Config<Settings>>, Path(name): Path<String>) -> String {
    let s = cfg.get();
    let name: String = name.chars().take(s.max_name_len).collect();
    format!(
        "{}, {name}! (config revision {})\n",
        s.greeting,
        cfg.revision()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let options = narun::Options::from_env_or("greeter");
    let nats = options.nats.connect(&options.name).await?;
    let cfg = narun::ConfigOptions::<Settings>::new()
        .app(std::env::var("NARUN_APP_NAME").unwrap_or_else(|_| options.name.clone()))
        .default_value(Settings {
            greeting: "Hello".into(),
            max_name_len: default_max(),
        })
        .validate(validate)
        .watch(&nats)
        .await?;
    let app = Router::new()
        .route("/greeter/{name}", get(greet))
        .with_state(cfg);
    narun::serve(options, app).await?;
    Ok(())
}
