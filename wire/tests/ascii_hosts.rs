//! Which non-ASCII host names the server URLs accept, now that `url` has no Unicode back end.
//!
//! The workspace pins `idna_adapter` to 1.0 (wire/Cargo.toml), which keeps ICU4X's tables out
//! of every binary. `url` runs IDNA only for its "special" schemes: for `ws://`/`wss://`
//! server URLs a non-ASCII host is now refused (with ICU4X it was mapped to punycode), while
//! `nats://` and `tls://` hosts are opaque to `url` and never went through IDNA (a non-ASCII
//! one stays percent-encoded and fails at name resolution, as before). Punycode works
//! everywhere. This test pins that behaviour; it fails if the pin is dropped.

use narun_wire::connect::NatsSettings;

fn settings(url: &str) -> NatsSettings {
    NatsSettings {
        url: url.into(),
        ..NatsSettings::default()
    }
}

#[test]
fn ascii_and_punycode_hosts_are_servers() {
    let addrs = settings(
        "nats://nats.example:4222, tls://xn--bcher-kva.example:4223, ws://xn--bcher-kva.example:80",
    )
    .server_addrs()
    .unwrap();
    assert_eq!(addrs.len(), 3);
    assert_eq!(addrs[1].host(), "xn--bcher-kva.example");
    assert_eq!(addrs[2].host(), "xn--bcher-kva.example");
}

#[test]
fn a_non_ascii_websocket_host_is_refused_with_the_url() {
    let err = settings("nats://a:4222,ws://bücher.example:80")
        .server_addrs()
        .unwrap_err()
        .to_string();
    assert!(err.contains("ws://bücher.example:80"), "{err}");
}

#[test]
fn a_non_ascii_nats_host_is_opaque_as_before() {
    let addrs = settings("nats://bücher.example:4222")
        .server_addrs()
        .unwrap();
    assert_eq!(addrs[0].host(), "b%C3%BCcher.example");
}
