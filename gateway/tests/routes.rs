//! Routes that change while the gateway runs, against a real nats-server: routes services
//! declare in their Micro metadata (`narun.routes`, declared with the narun app library),
//! and named gateways' route sets from KV, reloaded on change and on SIGHUP.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use narun::{DeclaredRoute, Options};
use narun_test_support::{NatsServer, T, wait_for};
use narun_wire::connect::NatsSettings;
use narun_wire::micro::PingResponse;
use narun_wire::routes::{self as wire, RoutesStatus};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Looks every 200 ms: a service that leaves loses its routes after two missed looks.
const FAST: &str = "service_routes_interval_ms = 200\n";

/// A narun app named `name` answering `"<name> <path>"`, with `opts`' metadata.
async fn app(server: &NatsServer, name: &str, opts: Options) -> narun::Server {
    let label = name.to_owned();
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let body = format!("{label} {}", req.uri().path());
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    });
    let mut opts = opts.nats(NatsSettings {
        url: server.url(),
        ..Default::default()
    });
    opts.name = name.to_owned();
    narun::Server::start(opts, svc).await.expect("start app")
}

/// GET `url` until it answers `status` (bounded by `within`); the reply.
async fn until(url: &str, status: StatusCode, within: Duration) -> Reply {
    wait_for(&format!("{url} -> {status}"), within, || async {
        let r = get(url).await;
        (r.status == status).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_route_is_served_while_its_service_runs() {
    let server = NatsServer::start();
    let gw = start_gateway(gateway_client(&server).await, &format!("[gateway]\n{FAST}")).await;
    let greeter = app(
        &server,
        "greeter",
        Options::new("x")
            .route("/greeter/", &["GET"])
            .declare_route({
                let mut r = DeclaredRoute::new("/greeter/slow");
                r.timeout_sec = Some(1);
                r
            }),
    )
    .await;
    let r = until(&gw.url("/greeter/world"), StatusCode::OK, T).await;
    assert_eq!(r.text(), "greeter /greeter/world");
    let r = send(
        Request::post(gw.url("/greeter/world"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        get(&gw.url("/greeter/slow")).await.text(),
        "greeter /greeter/slow"
    );

    // The service leaves: its routes go within two looks (and a gather window).
    greeter.shutdown().await;
    let left = Instant::now();
    until(
        &gw.url("/greeter/world"),
        StatusCode::NOT_FOUND,
        Duration::from_secs(5),
    )
    .await;
    assert!(left.elapsed() < Duration::from_secs(5));
    assert_eq!(
        get(&gw.url("/greeter/slow")).await.status,
        StatusCode::NOT_FOUND
    );

    // And come back with it.
    let _again = app(
        &server,
        "greeter",
        Options::new("x").route("/greeter/", &[]),
    )
    .await;
    until(&gw.url("/greeter/again"), StatusCode::OK, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_declarations_are_refused_and_operator_routes_win() {
    let server = NatsServer::start();
    let client = server.connect().await;
    wait_connected(&client).await;
    let op = echo_service(&client, "opsvc").await;
    let gw = start_gateway(
        gateway_client(&server).await,
        &format!(
            "[gateway]\n{FAST}[[gateway.routes]]\npath = \"/op/\"\nservice = \"opsvc\"\n\
             [[gateway.routes]]\npath = \"/exact\"\nmethods = [\"GET\"]\nservice = \"opsvc\"\n"
        ),
    )
    .await;
    // Claims the operator's paths (equal, under its prefix, another method on an exact
    // one), the gateway's own, and one free path.
    let _evil = app(
        &server,
        "evil",
        Options::new("x")
            .route("/op/", &[])
            .route("/op/inner/", &[])
            .route("/exact", &["POST"])
            .route("/_jobs/x", &[])
            .route("/evil/", &[]),
    )
    .await;
    let _junk = app(
        &server,
        "junk",
        Options::new("x").metadata(wire::METADATA_KEY, "{\"path\": garbage"),
    )
    .await;
    let many: Vec<String> = (0..wire::MAX_DECLARED_ROUTES + 1)
        .map(|i| format!(r#"{{"path":"/many{i}"}}"#))
        .collect();
    let _many = app(
        &server,
        "many",
        Options::new("x").metadata(wire::METADATA_KEY, format!("[{}]", many.join(","))),
    )
    .await;
    let huge = format!(r#"[{{"path":"/huge","x":"{}"}}]"#, "a".repeat(64 * 1024));
    let _huge = app(
        &server,
        "huge",
        Options::new("x").metadata(wire::METADATA_KEY, huge),
    )
    .await;
    // A real service that declares nothing, and a liar answering discovery in its name.
    let _victim = app(&server, "victim", Options::new("x")).await;
    let liar = server.connect().await;
    let mut pings = liar.subscribe("$SRV.PING").await.unwrap();
    let looks = Arc::new(AtomicUsize::new(0));
    let seen = looks.clone();
    let responder = liar.clone();
    tokio::spawn(async move {
        while let Some(m) = pings.next().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let forged = PingResponse {
                kind: "io.nats.micro.v1.ping_response".into(),
                name: "victim".into(),
                id: "FORGED".into(),
                version: "1.0.0".into(),
                metadata: [(
                    wire::METADATA_KEY.to_string(),
                    r#"[{"path":"/victim/"}]"#.to_string(),
                )]
                .into(),
            };
            if let Some(reply) = m.reply {
                let _ = responder
                    .publish(reply, serde_json::to_vec(&forged).unwrap().into())
                    .await;
            }
        }
    });
    narun_test_support::synced(&liar).await;

    // The free path is served: looks happen.
    let r = until(&gw.url("/evil/x"), StatusCode::OK, T).await;
    assert_eq!(r.text(), "evil /evil/x");
    // Three more looks: whatever was refused stays refused.
    let now = looks.load(Ordering::SeqCst);
    wait_for("three more looks", T, || async {
        (looks.load(Ordering::SeqCst) >= now + 3).then_some(())
    })
    .await;
    for path in ["/op/x", "/op/inner/x"] {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(
            r.headers["x-app"], "echo",
            "{path} goes to the operator's service"
        );
        assert!(r.json()["uri"].as_str().unwrap().ends_with(path), "{path}");
    }
    let r = send(Request::post(gw.url("/exact")).body(full("")).unwrap()).await;
    assert_eq!(
        r.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "POST /exact stays the operator's"
    );
    for path in ["/_jobs/x", "/many0", "/huge", "/victim/x"] {
        assert_eq!(
            get(&gw.url(path)).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert!(op.count() >= 2);
    assert_eq!(
        get(&gw.metrics_url("/healthz")).await.status,
        StatusCode::OK
    );
}

/// Put `text` as gateway `name`'s route set; the status the gateway publishes for it.
async fn put_set(
    kv: &async_nats::jetstream::kv::Store,
    status: &mut async_nats::Subscriber,
    name: &str,
    text: &str,
) -> RoutesStatus {
    let rev = kv
        .put(wire::kv_key(name), text.to_owned().into())
        .await
        .unwrap();
    next_status(status, rev).await
}

async fn next_status(status: &mut async_nats::Subscriber, rev: u64) -> RoutesStatus {
    tokio::time::timeout(T, async {
        loop {
            let m = status.next().await.expect("status subscription");
            let s: RoutesStatus = serde_json::from_slice(&m.payload).unwrap();
            if s.revision == rev {
                return s;
            }
        }
    })
    .await
    .expect("a status for the revision")
}

/// The next status of `rev` published by gateway instance `instance` (other gateways of
/// the same name answer the same revision too; a dropped one may still be stopping).
async fn next_status_from(
    status: &mut async_nats::Subscriber,
    rev: u64,
    instance: &str,
) -> RoutesStatus {
    loop {
        let s = next_status(status, rev).await;
        if s.instance == instance {
            return s;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_gateways_serve_their_kv_route_sets() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let _shop = echo_service(&client, "shop").await;
    let _blog = echo_service(&client, "blog").await;
    let js = async_nats::jetstream::new(client.clone());
    let kv = wire::GATEWAY_ROUTES.ensure(&js).await.unwrap();
    let mut edge_status = client
        .subscribe(wire::status_subject("edge"))
        .await
        .unwrap();
    let mut core_status = client
        .subscribe(wire::status_subject("core"))
        .await
        .unwrap();
    // A set stored before the gateway starts is served from the start.
    let first = kv
        .put(
            wire::kv_key("edge"),
            "[[routes]]\npath = \"/shop/\"\nservice = \"shop\"\n".into(),
        )
        .await
        .unwrap();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    let config = |name: &str| {
        format!(
            "[gateway]\nname = \"{name}\"\nservice_routes = false\n\
             [[gateway.routes]]\npath = \"/fixed\"\nservice = \"blog\"\n"
        )
    };
    let edge = start_gateway(gateway_client(&server).await, &config("edge")).await;
    let s = next_status(&mut edge_status, first).await;
    assert!(s.accepted && s.routes == 1, "{s:?}");
    assert_eq!(get(&edge.url("/shop/a")).await.headers["x-app"], "echo");
    let core = start_gateway(gateway_client(&server).await, &config("core")).await;

    // Each named gateway serves its own set.
    let s = put_set(
        &kv,
        &mut core_status,
        "core",
        "[[routes]]\npath = \"/blog/\"\nservice = \"blog\"\n",
    )
    .await;
    assert!(s.accepted, "{s:?}");
    assert_eq!(get(&core.url("/blog/a")).await.status, StatusCode::OK);
    assert_eq!(
        get(&core.url("/shop/a")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&edge.url("/blog/a")).await.status,
        StatusCode::NOT_FOUND
    );

    // A change is served without a restart.
    let s = put_set(
        &kv,
        &mut edge_status,
        "edge",
        "[[routes]]\npath = \"/shop2/\"\nservice = \"shop\"\n",
    )
    .await;
    assert!(s.accepted, "{s:?}");
    assert_eq!(
        get(&edge.url("/shop/a")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&edge.url("/shop2/a")).await.status, StatusCode::OK);

    // Bad sets are refused whole: the previous one stays, the status says why.
    for (bad, why) in [
        ("[[routes]\n", "not a TOML route set"),
        (
            "[[routes]]\npath = \"/ok/\"\nservice = \"shop\"\n[[routes]]\npath = \"/fixed\"\nservice = \"shop\"\n",
            "routes[1]: any method on /fixed is already routed by gateway.routes[0]",
        ),
        (
            "[[routes]]\npath = \"/ok/\"\nservice = \"shop\"\nhost = \"BAD\"\n",
            "routes[0].host",
        ),
    ] {
        let s = put_set(&kv, &mut edge_status, "edge", bad).await;
        assert!(!s.accepted, "{bad}: {s:?}");
        let err = s.error.unwrap_or_default();
        assert!(err.contains(why), "{bad}: {err}");
        assert_eq!(get(&edge.url("/shop2/a")).await.status, StatusCode::OK);
        assert_eq!(get(&edge.url("/ok/a")).await.status, StatusCode::NOT_FOUND);
    }

    // A gateway that starts on a refused set serves the newest valid one the key kept.
    let bad_rev = kv
        .entry(wire::kv_key("edge"))
        .await
        .unwrap()
        .unwrap()
        .revision;
    let edge2 = start_gateway(gateway_client(&server).await, &config("edge")).await;
    let s = loop {
        let s = next_status(&mut edge_status, bad_rev).await;
        if s.instance == edge2.service_id {
            break s;
        }
    };
    assert!(!s.accepted, "{s:?}");
    assert!(
        s.error
            .as_deref()
            .unwrap_or_default()
            .contains("serving revision"),
        "{s:?}"
    );
    assert_eq!(get(&edge2.url("/shop2/a")).await.status, StatusCode::OK);
    drop(edge2);

    // A set whose JWT key file is missing is refused; once the file exists, SIGHUP
    // reads the key again and serves it (no KV change).
    std::fs::remove_file(key_file.path()).unwrap();
    let jwt = format!(
        "[[routes]]\npath = \"/private/\"\nservice = \"shop\"\n\
         [routes.auth.jwt]\nkeys = [{{ alg = \"HS256\", file = \"{}\" }}]\n",
        key_file.path().display()
    );
    let rev = kv
        .put(wire::kv_key("edge"), jwt.clone().into())
        .await
        .unwrap();
    let s = next_status_from(&mut edge_status, rev, &edge.service_id).await;
    assert!(!s.accepted, "{s:?}");
    std::fs::write(key_file.path(), [7u8; 32]).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let s = next_status_from(&mut edge_status, s.revision, &edge.service_id).await;
    assert!(s.accepted, "{s:?}");
    assert_eq!(
        get(&edge.url("/private/a")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&edge.url("/shop2/a")).await.status,
        StatusCode::NOT_FOUND
    );

    // Deleting the key leaves the configured routes only.
    let rev = kv.delete(wire::kv_key("edge")).await.map(|_| ()).ok();
    assert!(rev.is_some());
    until(&edge.url("/private/a"), StatusCode::NOT_FOUND, T).await;
    assert_eq!(get(&edge.url("/fixed")).await.status, StatusCode::OK);
}
