//! The two example apps as real processes against a real nats-server: `shop` starts
//! first and a call to it waits for `prices` (started 300 ms later), then answers with
//! the quote `prices` made; an unknown item is `prices`' 404 passed on by `shop`; the
//! example specs are valid.

use narun::{CallError, Client};
use narun_test_support::{NatsServer, T};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A binary of this package, killed when dropped.
struct App(Child);

impl App {
    fn start(bin: &str, server: &NatsServer) -> App {
        App(Command::new(bin)
            .env("NATS_URL", server.url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(client: &Client, service: &str, path: &str) -> Result<(u16, String), CallError> {
    let req = http::Request::get(path).body(bytes::Bytes::new()).unwrap();
    let resp = client.request(service, req).await?;
    Ok((
        resp.status().as_u16(),
        String::from_utf8_lossy(resp.body()).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_calls_prices() {
    let server = NatsServer::start();
    let client = Client::new(server.connect().await)
        .with_timeout(T)
        .wait_for_responder(T);
    let _shop = App::start(env!("CARGO_BIN_EXE_shop"), &server);
    // shop serves (this call waited for it) while prices does not run yet.
    let (status, body) = get(&client, "shop", "/shop/nothing").await.unwrap();
    assert_eq!(status, 404, "{body}");
    // shop's call to prices waits (up to 5 s); prices starts 300 ms after it began.
    let call = tokio::spawn({
        let client = client.clone();
        async move { get(&client, "shop", "/shop/buy/apple?qty=3").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "shop answered without prices");
    let _prices = App::start(env!("CARGO_BIN_EXE_prices"), &server);
    let r = tokio::time::timeout(T, call).await.unwrap().unwrap();
    let (status, body) = r.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "3 x apple = 150 cents (priced by local, sold by local)\n"
    );

    // prices' own 404 travels back through shop.
    let (status, body) = get(&client, "shop", "/shop/buy/durian").await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no price for \"durian\""), "{body}");
}

#[test]
fn the_example_specs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["prices.toml", "shop.toml"] {
        let spec = narun_spec::AppSpec::from_path(dir.join(f)).unwrap();
        spec.validate().unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(spec.warnings().is_empty(), "{f}: {:?}", spec.warnings());
    }
    let shop = narun_spec::AppSpec::from_path(dir.join("shop.toml")).unwrap();
    assert_eq!(shop.calls, ["prices"]);
    assert_eq!(shop.after, ["prices"]);
}
