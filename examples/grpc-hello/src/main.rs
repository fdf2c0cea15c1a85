//! `grpc-hello`: serves `hello.v1.Greeter` as the NATS Micro service
//! `grpc-hello` (subject `grpc-hello`, endpoint `grpc_handler`).
//!
//! Route it in the gateway config:
//!
//! ```toml
//! [[gateway.routes]]
//! grpc = "hello.v1.Greeter"
//! service = "grpc-hello"
//! ```
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    narun::serve_grpc(
        narun::Options::from_env_or("grpc-hello"),
        grpc_hello::server(),
    )
    .await?;
    Ok(())
}
