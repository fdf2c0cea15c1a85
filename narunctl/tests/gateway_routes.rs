//! `narunctl gateway routes set|get|rm` against a real nats-server and a real narund whose
//! gateway is named `edge`: a stored set is served (the route answers 503, nobody serves
//! it, instead of 404), a bad set fails the command with the gateway's reasons while the
//! previous set stays in service, `rm` leaves the configured routes only.

use narun_test_support::{
    Narund, NatsServer, T, expect_failed, expect_ok, free_ports, http1, narunctl, wait_for,
};

/// The status of `GET path` on the gateway at `port`, once it accepts connections.
async fn status(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    Some(http1::get(&mut s, path).await.status)
}

async fn until(port: u16, path: &str, want: u16) {
    wait_for(&format!("GET {path} -> {want}"), T, || async {
        (status(port, path).await == Some(want)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_sets_are_stored_served_refused_and_removed() {
    let server = NatsServer::start();
    let [http, metrics] = free_ports();
    let _narund = Narund::builder(&server, "gw-node")
        .features(&["gateway"])
        .config(&format!(
            "[gateway]\nenabled = true\nname = \"edge\"\nservice_routes = false\n\
             http_addr = \"127.0.0.1:{http}\"\nmetrics_addr = \"127.0.0.1:{metrics}\"\n\
             [[gateway.routes]]\npath = \"/hello/\"\nservice = \"hello\"\n"
        ))
        .start();
    // The configured route: nobody serves it (503); an unknown path is 404.
    until(http, "/hello/x", 503).await;
    assert_eq!(status(http, "/shop/x").await, Some(404));

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("edge.toml");
    std::fs::write(
        &good,
        "[[routes]]\npath = \"/shop/\"\nservice = \"shop\"\n\n\
         [[routes]]\npath = \"/blog/\"\nmethods = [\"GET\"]\nservice = \"blog\"\n",
    )
    .unwrap();
    let out = expect_ok(
        &narunctl(
            &server.url(),
            &["gateway", "routes", "set", "edge", good.to_str().unwrap()],
        )
        .await,
    );
    assert!(out.contains("stored gateway.edge.routes revision"), "{out}");
    assert!(out.contains("serving 2 routes"), "{out}");
    assert_eq!(status(http, "/shop/x").await, Some(503));

    let got = expect_ok(&narunctl(&server.url(), &["gateway", "routes", "get", "edge"]).await);
    assert_eq!(got, std::fs::read_to_string(&good).unwrap());

    // A set that takes a configured path and has a bad one: refused whole, exit 1.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[routes]]\npath = \"/hello/\"\nservice = \"other\"\n\
         [[routes]]\npath = \"blog\"\nservice = \"blog\"\n",
    )
    .unwrap();
    let out = narunctl(
        &server.url(),
        &["gateway", "routes", "set", "edge", bad.to_str().unwrap()],
    )
    .await;
    let err = expect_failed(&out);
    assert!(err.contains("1 gateway(s) refused the route set"), "{err}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("routes[0]: any method on /hello/ is already routed by gateway.routes[0]")
            && said.contains("routes[1].path: \"blog\" must start with '/'"),
        "{said}"
    );
    assert_eq!(
        status(http, "/shop/x").await,
        Some(503),
        "the previous set stays"
    );

    // Not TOML: refused before anything is stored; a bad name likewise.
    let junk = dir.path().join("junk.toml");
    std::fs::write(&junk, "[[routes]\n").unwrap();
    let err = expect_failed(
        &narunctl(
            &server.url(),
            &["gateway", "routes", "set", "edge", junk.to_str().unwrap()],
        )
        .await,
    );
    assert!(err.contains("not a TOML route set"), "{err}");
    let err = expect_failed(&narunctl(&server.url(), &["gateway", "routes", "get", "a.b"]).await);
    assert!(err.contains("\"a.b\" is not a gateway name"), "{err}");

    expect_ok(&narunctl(&server.url(), &["gateway", "routes", "rm", "edge"]).await);
    until(http, "/shop/x", 404).await;
    assert_eq!(status(http, "/hello/x").await, Some(503));
}
