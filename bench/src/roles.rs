//! The servers of the comparison, each run as its own process (`narun-bench serve <role>`,
//! re-executed by the bench), so every side pays the same process split as a real
//! deployment: gateway process ↔ nats-server ↔ app process.
//!
//! | role | what it is |
//! |---|---|
//! | `narun-gateway` | `narun_gateway::Gateway`, as narund embeds it: HTTP route `/bench/` (bhttp → service `benchapp`), HTTP route `/raw/` (`mode = "raw"` → subject `handecho`), gRPC route `hello.v1.Greeter` → service `grpc-hello` |
//! | `narun-app` | an axum router echoing the body, served over NATS by `narun::Server` (service `benchapp`), like `examples/hello` |
//! | `narun-grpc-app` | `examples/grpc-hello` served over NATS by `narun::GrpcServer` (service `grpc-hello`) |
//! | `hand-gateway` | what a user would write instead of narun: an axum server forwarding `POST /bench/echo` with async-nats `request` to `handecho`, and a tonic `Greeter` forwarding `SayHello` to `handhello`; plus the ceilings without NATS: `POST /direct/echo` answered by axum itself, and a second tonic listener (`grpc_direct`) answering `SayHello` itself |
//! | `raw-responders` | raw async-nats responders: `handecho` echoes the payload, `handhello` decodes a `HelloRequest` and answers the `HelloReply` |
//!
//! A role prints one line `READY key=value…` (its listening addresses) on stdout once it
//! serves, and exits when its stdin closes (the bench went away).

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use narun_wire::connect::NatsSettings;
use std::time::Duration;

/// Service / subject names shared by the roles and the bench.
pub const NARUN_APP: &str = "benchapp";
pub const NARUN_GRPC_APP: &str = "grpc-hello";
pub const HAND_ECHO: &str = "handecho";
pub const HAND_HELLO: &str = "handhello";

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Role {
    NarunGateway,
    NarunApp,
    NarunGrpcApp,
    HandGateway,
    RawResponders,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::NarunGateway => "narun-gateway",
            Role::NarunApp => "narun-app",
            Role::NarunGrpcApp => "narun-grpc-app",
            Role::HandGateway => "hand-gateway",
            Role::RawResponders => "raw-responders",
        }
    }
}

/// Serve `role` until stdin closes.
pub async fn serve(role: Role, nats_url: String) -> anyhow::Result<()> {
    let settings = NatsSettings {
        url: nats_url,
        ..Default::default()
    };
    // Exit with the parent: its end of our stdin closes when it goes away.
    let parent_gone = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let ready = match role {
        Role::NarunGateway => narun_gateway(&settings).await?,
        Role::NarunApp => narun_app(&settings).await?,
        Role::NarunGrpcApp => narun_grpc_app(&settings).await?,
        Role::HandGateway => hand_gateway(&settings).await?,
        Role::RawResponders => raw_responders(&settings).await?,
    };
    println!("READY {ready}");
    let _ = parent_gone.await;
    std::process::exit(0);
}

async fn narun_gateway(settings: &NatsSettings) -> anyhow::Result<String> {
    let config: narun_gateway::GatewayConfig = toml::from_str(&format!(
        r#"
        enabled = true
        http_addr = "127.0.0.1:0"
        grpc_addr = "127.0.0.1:0"
        metrics_addr = "127.0.0.1:0"
        # The load generator is one client host with a keep-alive pool per path
        # (64 connections each): above the default 128 per client address.
        max_connections_per_ip = 512
        [[routes]]
        path = "/bench/"
        methods = ["POST"]
        service = "{NARUN_APP}"
        [[routes]]
        path = "/raw/"
        methods = ["POST"]
        mode = "raw"
        subject = "{HAND_ECHO}"
        [[routes]]
        grpc = "hello.v1.Greeter"
        service = "{NARUN_GRPC_APP}"
        "#
    ))
    .context("gateway config")?;
    let client = settings.connect("bench narun gateway").await?;
    anyhow::ensure!(
        narun_wire::connect::sync_with_server(&client, Duration::from_secs(10)).await,
        "nats-server did not answer the gateway's connection"
    );
    let gateway = narun_gateway::Gateway::bind(config, client).await?;
    let ready = format!(
        "http={} metrics={} grpc={}",
        gateway.http_addr(),
        gateway.metrics_addr(),
        gateway.grpc_addr().context("no gRPC listener")?
    );
    tokio::spawn(gateway.run(std::future::pending()));
    Ok(ready)
}

async fn narun_app(settings: &NatsSettings) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/bench/echo",
        axum::routing::post(|b: Bytes| async move { b }),
    );
    let server =
        narun::Server::start(narun::Options::new(NARUN_APP).nats(settings.clone()), app).await?;
    std::mem::forget(server);
    Ok(String::new())
}

async fn narun_grpc_app(settings: &NatsSettings) -> anyhow::Result<String> {
    let server = narun::GrpcServer::start(
        narun::Options::new(NARUN_GRPC_APP).nats(settings.clone()),
        grpc_hello::server(),
    )
    .await?;
    std::mem::forget(server);
    Ok(String::new())
}

/// The hand-written gateway: axum + async-nats `request`, tonic + async-nats `request`.
async fn hand_gateway(settings: &NatsSettings) -> anyhow::Result<String> {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::serve::ListenerExt;

    let client = async_nats::connect(&settings.url).await?;
    let app = axum::Router::new()
        .route(
            "/bench/echo",
            axum::routing::post(
                |State(nats): State<async_nats::Client>, body: Bytes| async move {
                    match nats.request(HAND_ECHO, body).await {
                        Ok(m) => m.payload.into_response(),
                        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                    }
                },
            ),
        )
        // The HTTP-only ceiling of this server: the same body echoed without NATS.
        .route(
            "/direct/echo",
            axum::routing::post(|body: Bytes| async move { body }),
        )
        .with_state(client.clone());
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http.local_addr()?;
    let http = http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(http, app).await });

    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?
        .with_nodelay(Some(true));
    let grpc_addr = incoming.local_addr()?;
    let greeter = grpc_hello::pb::greeter_server::GreeterServer::new(Forwarder(client));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(greeter)
            .serve_with_incoming(incoming),
    );
    // The gRPC ceiling: tonic answering `SayHello` itself, no NATS.
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?
        .with_nodelay(Some(true));
    let direct_addr = incoming.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc_hello::pb::greeter_server::GreeterServer::new(Direct))
            .serve_with_incoming(incoming),
    );
    Ok(format!(
        "http={http_addr} grpc={grpc_addr} grpc_direct={direct_addr}"
    ))
}

/// A tonic service answering `SayHello` itself, with the raw responder's work
/// (decode the request, format the greeting): the gRPC ceiling, no NATS.
struct Direct;

#[tonic::async_trait]
impl grpc_hello::pb::greeter_server::Greeter for Direct {
    async fn say_hello(
        &self,
        req: tonic::Request<grpc_hello::pb::HelloRequest>,
    ) -> Result<tonic::Response<grpc_hello::pb::HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(grpc_hello::pb::HelloReply {
            message: format!("Hello, {}", req.into_inner().name),
        }))
    }

    type SayHellosStream =
        futures_util::stream::Empty<Result<grpc_hello::pb::HelloReply, tonic::Status>>;

    async fn say_hellos(
        &self,
        _req: tonic::Request<grpc_hello::pb::HelloRequest>,
    ) -> Result<tonic::Response<Self::SayHellosStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not served"))
    }
}

/// A hand-written tonic service that forwards `SayHello` over NATS.
struct Forwarder(async_nats::Client);

#[tonic::async_trait]
impl grpc_hello::pb::greeter_server::Greeter for Forwarder {
    async fn say_hello(
        &self,
        req: tonic::Request<grpc_hello::pb::HelloRequest>,
    ) -> Result<tonic::Response<grpc_hello::pb::HelloReply>, tonic::Status> {
        use prost::Message;
        let payload = req.into_inner().encode_to_vec();
        let m = self
            .0
            .request(HAND_HELLO, payload.into())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let reply = grpc_hello::pb::HelloReply::decode(m.payload)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(reply))
    }

    type SayHellosStream =
        futures_util::stream::Empty<Result<grpc_hello::pb::HelloReply, tonic::Status>>;

    async fn say_hellos(
        &self,
        _req: tonic::Request<grpc_hello::pb::HelloRequest>,
    ) -> Result<tonic::Response<Self::SayHellosStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not forwarded"))
    }
}

/// Raw async-nats responders: the cheapest possible app.
async fn raw_responders(settings: &NatsSettings) -> anyhow::Result<String> {
    use grpc_hello::pb::{HelloReply, HelloRequest};
    use prost::Message;

    let client = async_nats::connect(&settings.url).await?;
    let mut echo = client.queue_subscribe(HAND_ECHO, "q".into()).await?;
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = c.publish(reply, m.payload).await;
            }
        }
    });
    let mut hello = client.queue_subscribe(HAND_HELLO, "q".into()).await?;
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(m) = hello.next().await {
            let Some(reply) = m.reply else { continue };
            let answer = match HelloRequest::decode(m.payload) {
                Ok(r) => HelloReply {
                    message: format!("Hello, {}", r.name),
                }
                .encode_to_vec(),
                Err(_) => Vec::new(),
            };
            let _ = c.publish(reply, answer.into()).await;
        }
    });
    client.flush().await?;
    narun_wire::connect::sync_with_server(&client, Duration::from_secs(10)).await;
    Ok(String::new())
}

/// A role running as a child process; killed on drop.
pub struct Proc {
    pub role: Role,
    pub child: std::process::Child,
    /// `key=value` pairs of its READY line.
    pub ready: std::collections::HashMap<String, String>,
}

impl Proc {
    pub fn spawn(role: Role, nats_url: &str) -> anyhow::Result<Proc> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["serve", role.name(), "--nats", nats_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("NARUN_SERVICE_NAME")
            .env_remove("NARUN_APP_NAME")
            .spawn()
            .with_context(|| format!("spawning {}", role.name()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let Some(rest) = line.trim().strip_prefix("READY") else {
            let _ = child.kill();
            anyhow::bail!("{} did not start (said {line:?})", role.name());
        };
        let ready = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Proc { role, child, ready })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self, key: &str) -> anyhow::Result<std::net::SocketAddr> {
        self.ready
            .get(key)
            .with_context(|| format!("{} reported no {key} address", self.role.name()))?
            .parse()
            .context("address")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of process `pid` so far, in microseconds, from
/// `/proc/<pid>/stat` (all threads, clock ticks of 10 ms: USER_HZ is 100 on Linux).
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the `(comm)`: state is the first, utime the 12th, stime the 13th.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10_000
}
