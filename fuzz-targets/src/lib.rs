//! The bodies of narun's fuzz targets: one `pub fn <target>(&[u8])` per target.
//!
//! Each function feeds untrusted bytes to the code that reads them in narund, the
//! gateway or an app, and panics when an invariant breaks (a panic is what a fuzzer
//! reports as a crash). Besides "never panics", they check cheap properties: decoding
//! what was encoded gives the same message back, a spec that validates survives the KV
//! round trip, the gateway routes on exactly the path the app receives.
//!
//! Two callers:
//! * `fuzz/fuzz_targets/<target>.rs` (cargo-fuzz, libFuzzer; outside the workspace,
//!   nightly or `RUSTC_BOOTSTRAP=1`), which calls the function with generated inputs;
//! * `tests/corpus.rs` (stable, part of `cargo test --workspace`), which replays the
//!   committed seed corpus `fuzz/corpus/<target>/*` through them.
//!
//! See `docs/fuzzing.md` for running the fuzzers and adding a target.

use http::Method;
use narun_gateway::fuzzing::{Routed, Routes};
use narun_spec::AppSpec;
use narun_wire::bhttp;
use narun_wire::secrets::{MasterKey, StoredSecret};
use narund::instance::notify::{MAX_DATAGRAM, Message};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A fuzz target's body: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and `fuzz_targets/` file.
pub const TARGETS: &[(&str, Target)] = &[
    ("bhttp_request", bhttp_request),
    ("bhttp_response", bhttp_response),
    ("spec", spec),
    ("secret", secret),
    ("sd_notify", sd_notify),
    ("gateway_path", gateway_path),
    ("elf", elf),
];

/// BHTTP request decoding (app side, [`bhttp::decode_request`]): never panics, and a
/// decoded request encodes (gateway side) and decodes again to the same method, URI,
/// headers and body.
pub fn bhttp_request(data: &[u8]) {
    let Ok(req) = bhttp::decode_request(data) else {
        return;
    };
    let (parts, body) = req.into_parts();
    let wire = bhttp::encode_request(&parts, &body);
    let again = bhttp::decode_request(&wire)
        .unwrap_or_else(|e| panic!("re-encoded request does not decode: {e}"));
    assert_eq!(again.method(), parts.method);
    // The app's handler sees path() and query(): both survive (an empty path reads as `/`).
    let path = |u: &http::Uri| match u.path() {
        "" => "/".to_string(),
        p => p.to_string(),
    };
    assert_eq!(path(again.uri()), path(&parts.uri));
    assert_eq!(again.uri().query(), parts.uri.query());
    assert_eq!(again.body(), &body);
    // The encoder drops hop-by-hop headers (and re-derives host/content-length);
    // everything else arrives in the same order.
    let conn = bhttp::connection_tokens(&parts.headers);
    let kept = |h: &http::HeaderMap| end_to_end(h, &conn, &["host", "content-length"]);
    assert_eq!(kept(again.headers()), kept(&parts.headers));
}

/// The fields of `h` that travel end to end (not hop-by-hop, not in `derived`), sorted by
/// name (stable: values of one name keep their order), `cookie` values joined with `; `:
/// the BHTTP reader joins the `cookie` fields of a section (RFC 9113 §8.2.3 cookie crumbs),
/// and a cookie in the trailer section becomes a second one in the header section.
fn end_to_end(h: &http::HeaderMap, conn: &[String], derived: &[&str]) -> Vec<(String, Vec<u8>)> {
    let travels = |n: &str| !derived.contains(&n) && !bhttp::is_hop_by_hop(n, conn);
    let mut v: Vec<(String, Vec<u8>)> = h
        .iter()
        .filter(|(n, _)| n.as_str() != "cookie" && travels(n.as_str()))
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let crumbs: Vec<&[u8]> = h.get_all("cookie").iter().map(|c| c.as_bytes()).collect();
    if !crumbs.is_empty() && travels("cookie") {
        v.push(("cookie".to_string(), crumbs.join(&b"; "[..])));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// BHTTP response decoding (gateway side, [`bhttp::decode_response`]): never panics,
/// and a decoded response round-trips through the app-side encoder.
pub fn bhttp_response(data: &[u8]) {
    let Ok(resp) = bhttp::decode_response(data) else {
        return;
    };
    let (parts, body) = resp.into_parts();
    let wire = bhttp::encode_response(&parts, &body);
    let again = bhttp::decode_response(&wire)
        .unwrap_or_else(|e| panic!("re-encoded response does not decode: {e}"));
    assert_eq!(again.status(), parts.status);
    assert_eq!(again.body(), &body);
    let conn = bhttp::connection_tokens(&parts.headers);
    let kept = |h: &http::HeaderMap| end_to_end(h, &conn, &["content-length"]);
    assert_eq!(kept(again.headers()), kept(&parts.headers));
}

/// An app spec as narunctl reads a file and narund an `app-configs` value.
///
/// The first byte picks the reader: `T` TOML, `Y` YAML, `J` JSON (each on the rest of
/// the input); anything else hands the whole input to [`AppSpec::from_kv_bytes`]
/// (narund's path: JSON or YAML). Then: parsing, validation and everything narund
/// derives from a spec never panic; parsing leaves the spec normalised; a valid spec
/// reads back identically from its KV JSON and is accepted as a KV entry.
pub fn spec(data: &[u8]) {
    let parsed = match data.split_first() {
        Some((b'T', rest)) => std::str::from_utf8(rest).map(AppSpec::from_toml_str),
        Some((b'Y', rest)) => std::str::from_utf8(rest).map(AppSpec::from_yaml_str),
        Some((b'J', rest)) => std::str::from_utf8(rest).map(AppSpec::from_json_str),
        _ => Ok(AppSpec::from_kv_bytes(data)),
    };
    let Ok(Ok(spec)) = parsed else {
        return;
    };
    let mut normalised = spec.clone();
    normalised.normalize();
    // Compared as Debug text: `cpuCores = nan` parses (validation refuses it) and NaN != NaN.
    assert_eq!(
        format!("{normalised:?}"),
        format!("{spec:?}"),
        "parsing must leave the spec normalised"
    );
    let _ = spec.warnings();
    let _ = spec.supported_on_narund();
    if spec.validate().is_err() {
        return;
    }
    let _ = spec.config_hash();
    let _ = spec.run_hash();
    let labels = BTreeMap::from([("role".to_string(), "edge".to_string())]);
    let _ = spec.desired_replicas("node-1", &labels);
    let _ = spec.binary_object_name("linux", "arm64");
    let stored = spec.to_kv_json();
    let back = AppSpec::from_kv_bytes(&stored)
        .unwrap_or_else(|e| panic!("the KV JSON of a valid spec does not parse: {e}"));
    assert_eq!(back, spec, "a valid spec must read back identically");
    assert_eq!(back.config_hash(), spec.config_hash());
    AppSpec::from_kv_entry(&spec.name, &stored)
        .unwrap_or_else(|e| panic!("the KV entry of a valid spec is refused: {e}"));
}

/// The master key the `secret` seeds were sealed with (the key of the doc example in
/// `wire/src/secrets.rs`): bytes 0..32.
pub const SEED_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn seed_key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_base64(SEED_KEY).expect("SEED_KEY is a valid key"))
}

/// A `narun-secrets` KV value as narund reads it before starting an app
/// ([`StoredSecret::from_json`], then [`MasterKey::open`] with the node's key): never
/// panics; a parsed entry serialises and parses back to itself; whatever opens can be
/// sealed again under its name and opens to the same plaintext. The input is also
/// tried as a master key file ([`MasterKey::from_base64`]).
pub fn secret(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(key) = MasterKey::from_base64(text)
    {
        assert_eq!(
            MasterKey::from_base64(&key.to_base64())
                .expect("a key's base64 form parses")
                .to_base64(),
            key.to_base64()
        );
    }
    let Ok(stored) = StoredSecret::from_json("fuzz", data) else {
        return;
    };
    let again = StoredSecret::from_json("fuzz", &stored.to_json())
        .unwrap_or_else(|e| panic!("a parsed secret does not read back: {e}"));
    assert!(
        again == stored,
        "a parsed secret must read back identically"
    );
    let key = seed_key();
    let Ok(plain) = key.open(&stored) else {
        return;
    };
    // Only a name that was sealed can open (it is the AAD), so it must be a valid one.
    let resealed = key
        .seal(&stored.name, &plain, None, Some(&stored))
        .unwrap_or_else(|e| panic!("a secret that opened cannot be sealed again: {e}"));
    assert_eq!(key.open(&resealed).expect("a fresh seal opens"), plain);
    if !stored.created_at.is_empty() {
        assert_eq!(resealed.created_at, stored.created_at, "created_at kept");
    }
}

/// One sd_notify datagram as narund's per-run notify socket reads it
/// ([`Message::parse`]): never panics; every value it keeps is one the protocol allows
/// (a positive `MAINPID`, a positive `WATCHDOG_USEC`, a one-line `STATUS`); and the
/// parsed message, written back as a datagram, parses to itself.
pub fn sd_notify(data: &[u8]) {
    // narund drops longer datagrams whole before parsing.
    if data.len() > MAX_DATAGRAM {
        return;
    }
    let m = Message::parse(data);
    if let Some(pid) = m.main_pid {
        assert!(pid > 0, "MAINPID={pid} accepted");
    }
    if let Some(usec) = m.watchdog_usec {
        assert!(usec > 0, "WATCHDOG_USEC=0 accepted");
    }
    if let Some(status) = &m.status {
        assert!(!status.contains('\n'), "STATUS spans lines");
    }
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    };
    if m.ready {
        line("READY", "1");
    }
    if m.reloading {
        line("RELOADING", "1");
    }
    if m.stopping {
        line("STOPPING", "1");
    }
    if let Some(s) = &m.status {
        line("STATUS", s);
    }
    if let Some(p) = m.main_pid {
        line("MAINPID", &p.to_string());
    }
    if m.watchdog_ping {
        line("WATCHDOG", "1");
    }
    if m.watchdog_trigger {
        line("WATCHDOG", "trigger");
    }
    if let Some(u) = m.watchdog_usec {
        line("WATCHDOG_USEC", &u.to_string());
    }
    if let Some(u) = m.extend_timeout_usec {
        line("EXTEND_TIMEOUT_USEC", &u.to_string());
    }
    assert_eq!(Message::parse(out.as_bytes()), m);
}

/// The gateway's route table, as configured in the gateway's docs and tests.
fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        Routes::new(&[
            ("/", Some(&["GET"])),
            ("/api/", None),
            ("/api/admin/", Some(&["POST"])),
            ("/api/v1/", Some(&["GET", "POST"])),
            ("/health", None),
            ("/hello/", None),
        ])
    })
}

/// The gateway's request-path handling: the input is a request target as a client
/// sends it (`/a/b?q`, or absolute form) and is parsed as hyper does. Then: routing
/// never panics; a path with neither `%`, `\\` nor dot segments is never refused; what is
/// forwarded has no dot segments, no escaped `/`, `\` or control characters, and routes
/// to the same route again unchanged (normalising is idempotent); an exact route gets
/// only its own path, a prefix route only paths under it and only when no longer prefix
/// matches; and the app receives, after the BHTTP round trip, exactly the path the
/// gateway routed on (and the query as sent).
pub fn gateway_path(data: &[u8]) {
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let raw = uri.path();
    let routed = routes().route(&Method::GET, raw);
    let dot = raw.split('/').any(|s| s == "." || s == "..");
    if !dot && !raw.contains('%') && !raw.contains('\\') {
        assert_ne!(routed, Routed::BadPath, "{raw:?} refused");
    }
    let (route, path) = match &routed {
        Routed::BadPath => return,
        Routed::NotFound => {
            assert!(!raw.starts_with('/'), "{raw:?} not routed to `/`");
            return;
        }
        Routed::MethodNotAllowed(_) => return,
        Routed::Found { route, path } => (route, path),
    };
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} forwarded with dot segments: {path:?}"
    );
    let lower = path.to_ascii_lowercase();
    for bad in ["%2f", "%5c", "%00"] {
        assert!(!lower.contains(bad), "{raw:?} forwarded as {path:?}");
    }
    assert_eq!(
        routes().route(&Method::GET, path),
        routed,
        "normalising {raw:?} twice routes elsewhere"
    );
    if route.ends_with('/') {
        assert!(
            path.starts_with(route.as_str()),
            "{path:?} routed to {route}"
        );
        for longer in ["/api/", "/api/admin/", "/api/v1/", "/hello/"] {
            if longer.len() > route.len() {
                assert!(!path.starts_with(longer), "{path:?} routed to {route}");
            }
        }
    } else {
        assert_eq!(path, route, "exact route");
    }
    // What the app sees: the gateway encodes the request, the app decodes it.
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let (parts, ()) = http::Request::get(target.as_str())
        .body(())
        .expect("a normalised path builds a request")
        .into_parts();
    let app = bhttp::decode_request(&bhttp::encode_request(&parts, b""))
        .unwrap_or_else(|e| panic!("the app cannot decode a routed request: {e}"));
    assert_eq!(app.uri().path(), path, "the app sees another path");
    assert_eq!(app.uri().query(), uri.query(), "the app sees another query");
}

/// ELF header inspection (narunctl before upload, narund before exec,
/// [`narun_wire::elf::inspect`]): never panics; what it accepts is an executable
/// (`ET_EXEC`/`ET_DYN`) whose class and byte order are the header's own, that is judged
/// the same way twice, and whose platform check never panics either; the section table
/// and the embedded spec ([`narun_wire::elf::embedded_spec`]) never panic either.
pub fn elf(data: &[u8]) {
    use narun_wire::elf::{Class, ElfInfo, Endian, inspect};
    let first = inspect(data);
    assert_eq!(first, inspect(data), "inspect is not deterministic");
    if let Ok(info) = &first {
        assert!(data.len() >= 20 && data[..4] == *b"\x7fELF");
        let class = match data[4] {
            1 => Class::Elf32,
            2 => Class::Elf64,
            c => panic!("accepted EI_CLASS {c}"),
        };
        let endian = match data[5] {
            1 => Endian::Little,
            2 => Endian::Big,
            e => panic!("accepted EI_DATA {e}"),
        };
        assert_eq!((info.class, info.endian), (class, endian));
        let _ = info.platform();
        let _ = info.check_runs_here();
        let _ = info.check_runs_on(ElfInfo::HOST);
        let _ = info.target().to_string();
    }
    if let Err(e) = &first {
        let _ = e.to_string();
    }
    // The section table and the embedded spec (`.narun`, narunctl deploy/inspect): never a
    // panic; a spec found is the decoding of the section's bytes, and found again.
    let mut file = std::io::Cursor::new(data);
    match narun_wire::elf::embedded_spec(&mut file) {
        Ok(Some(text)) => {
            let section = narun_wire::elf::read_section(
                &mut std::io::Cursor::new(data),
                narun_wire::elf::SPEC_SECTION,
                narun_wire::elf::MAX_SPEC_SECTION,
            )
            .expect("the section was read once")
            .expect("the section exists");
            assert_eq!(
                narun_wire::elf::decode_spec_section(&section)
                    .ok()
                    .as_deref(),
                Some(text.as_str())
            );
            assert!(first.is_ok(), "a spec read from a file inspect refuses");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
