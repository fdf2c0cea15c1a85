//! The floor of narund's size and memory: what any daemon that does narund's job on top
//! of async-nats pays before it supervises anything.
//!
//! ```text
//! scripts/packaging/size-report.sh            # SIZE_BINS includes `floor`
//! NATS_URL=nats://127.0.0.1:4222 target/release/narun-size-floor
//! ```
//!
//! It does what narund does first and keeps doing: connect to NATS with the options narund
//! uses (TLS roots and client certificate, `.creds` file, reconnects forever; rustls with
//! ring, as the workspace configures async-nats), open the `app-configs` KV bucket, watch
//! every key from the start and parse each value as JSON, on tokio's `current_thread`
//! runtime (narund without the gateway). Compare its stripped size and its RSS while it
//! idles connected with narund's: the difference is what narund's own features cost.

use futures_util::StreamExt;
use std::time::Duration;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run() -> Result<(), async_nats::Error> {
    let url = env("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let mut options = async_nats::ConnectOptions::new()
        .name("narun-size-floor")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(Duration::from_secs(20));
    if let Some(ca) = env("NATS_TLS_CA") {
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (env("NATS_TLS_CERT"), env("NATS_TLS_KEY")) {
        options = options
            .add_client_certificate(cert.into(), key.into())
            .require_tls(true);
    }
    if let Some(creds) = env("NATS_CREDS") {
        options = options.credentials_file(creds).await?;
    }
    let servers = url
        .split(',')
        .map(|s| s.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = options.connect(servers).await?;
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("app-configs").await?;
    let mut watch = kv.watch_all_from_revision(1).await?;
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        let value: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or_default();
        println!("{} rev {} {}", entry.key, entry.revision, value.is_object());
    }
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("narun-size-floor: {e}");
        std::process::exit(1);
    }
}
