//! HTTP messages over NATS as Binary HTTP ([RFC 9292]), byte-compatible with the Go narun.
//!
//! The gateway turns an HTTP request into one BHTTP message and sends it as the
//! payload of a NATS request to the service's subject; the app decodes it, runs its
//! handler, and replies with a BHTTP response. The Go gateway and `nconsumer` use
//! `openpcc/bhttp`; what they put on the wire (see `narun-go-reference.md` §1.2–1.3):
//!
//! * requests: known-length (framing `0`) or, for chunked uploads, indeterminate-length
//!   (framing `2`, chunks ≤ 4096 B); an **empty `:scheme`**; `:authority` = the Host;
//!   `:path` = path **plus `?query`**; lower-case field names sorted by name;
//!   no `host`/`transfer-encoding`/`trailer` fields;
//! * responses: indeterminate-length (framing `3`) for non-empty bodies, known-length
//!   with `content-length: 0` for empty ones; trailers are never sent.
//!
//! Decoders here accept all of that, plus truncated messages (a missing trailer or
//! content section reads as empty, as RFC 9292 §3.8 allows) and trailing padding.
//! Encoders produce known-length messages, which Go decodes too.
//!
//! [RFC 9292]: https://www.rfc-editor.org/rfc/rfc9292

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use std::io::Cursor;

/// Why a BHTTP message could not be turned into an HTTP message (or back).
#[derive(Debug, thiserror::Error)]
pub enum BhttpError {
    #[error("malformed BHTTP message: {0}")]
    Malformed(#[from] bhttp::Error),
    #[error("BHTTP message is a {found}, expected a {expected}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("invalid {what} in BHTTP message: {detail}")]
    Invalid { what: &'static str, detail: String },
}

fn invalid(what: &'static str, detail: impl ToString) -> BhttpError {
    BhttpError::Invalid {
        what,
        detail: detail.to_string(),
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus framing headers that must not be
/// forwarded through the gateway in either direction.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// True if `name` (lower-case) is hop-by-hop, or listed in the `Connection` header values.
pub fn is_hop_by_hop(name: &str, connection: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || connection.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Names listed in `Connection:` headers (lower-case), which are hop-by-hop too.
pub fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Encode a request (gateway side), the way the Go gateway does.
///
/// `:scheme` is left empty and `:authority` is the `Host` header (or the URI's
/// authority); `:path` carries the query. Hop-by-hop headers, `host`,
/// `content-length` and `transfer-encoding` are not copied; `content-length` is
/// re-added for non-empty bodies and for POST/PUT/PATCH, like Go.
pub fn encode_request(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let authority = parts
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .or_else(|| {
            parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
        .unwrap_or_default();
    // From path() and query(), not path_and_query(): for an absolute-form target without a
    // path (`GET http://host?q`) the latter is `?q`, which no app can parse as `:path`.
    let uri = &parts.uri;
    let path = match (uri.path(), uri.query()) {
        ("", None) => b"/".to_vec(),
        ("", Some(q)) => format!("/?{q}").into_bytes(),
        (p, None) => p.as_bytes().to_vec(),
        (p, Some(q)) => format!("{p}?{q}").into_bytes(),
    };
    let mut msg = bhttp::Message::request(
        parts.method.as_str().as_bytes().to_vec(),
        Vec::new(),
        authority,
        path,
    );
    let conn = connection_tokens(&parts.headers);
    let mut fields: Vec<(&str, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n != "host" && n != "content-length" && !is_hop_by_hop(n, &conn)
        })
        .map(|(n, v)| (n.as_str(), v.as_bytes().to_vec()))
        .collect();
    let m = &parts.method;
    if !body.is_empty()
        || *m == http::Method::POST
        || *m == http::Method::PUT
        || *m == http::Method::PATCH
    {
        fields.push(("content-length", body.len().to_string().into_bytes()));
    }
    // Go sorts field lines by name; the sort is stable, so repeated names keep their order.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (n, v) in fields {
        msg.put_header(n.as_bytes().to_vec(), v);
    }
    msg.write_content(body);
    write(&msg)
}

/// Decode a request (app side). Accepts known- and indeterminate-length framing,
/// an empty `:scheme`, a query inside `:path`, truncation and padding.
///
/// The `Host` header is set from `:authority` when the message has no `host`
/// field, so handlers see the host the client asked for.
pub fn decode_request(data: &[u8]) -> Result<http::Request<Bytes>, BhttpError> {
    let msg = read(data)?;
    let control = msg.control();
    if !control.is_request() {
        return Err(BhttpError::WrongKind {
            expected: "request",
            found: "response",
        });
    }
    let method = http::Method::from_bytes(control.method().unwrap_or_default())
        .map_err(|e| invalid(":method", e))?;
    let path = control.path().unwrap_or_default();
    let path = if path.is_empty() { &b"/"[..] } else { path };
    let uri = http::Uri::try_from(path).map_err(|e| invalid(":path", e))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    let headers = builder.headers_mut().expect("fresh builder has headers");
    copy_fields(msg.header(), headers)?;
    let authority = control.authority().unwrap_or_default();
    if !authority.is_empty() && !headers.contains_key(http::header::HOST) {
        headers.insert(
            http::header::HOST,
            HeaderValue::from_bytes(authority).map_err(|e| invalid(":authority", e))?,
        );
    }
    // Trailers become headers: handlers built on buffered bodies cannot see them otherwise.
    copy_fields(msg.trailer(), headers)?;
    builder
        .body(Bytes::copy_from_slice(msg.content()))
        .map_err(|e| invalid("request", e))
}

/// Encode a response (app side) as a known-length message.
///
/// Hop-by-hop headers and `content-length` are dropped (the gateway's HTTP
/// server frames the body itself).
pub fn encode_response(parts: &http::response::Parts, body: &[u8]) -> Vec<u8> {
    let mut msg = bhttp::Message::response(
        bhttp::StatusCode::try_from(parts.status.as_u16()).unwrap_or(bhttp::StatusCode::OK),
    );
    let conn = connection_tokens(&parts.headers);
    for (n, v) in parts.headers.iter() {
        let n = n.as_str();
        if n == "content-length" || is_hop_by_hop(n, &conn) {
            continue;
        }
        msg.put_header(n.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    msg.write_content(body);
    write(&msg)
}

/// Decode a response (gateway side). Informational (1xx) responses are skipped;
/// trailers are merged into the headers, as the Go gateway does.
pub fn decode_response(data: &[u8]) -> Result<http::Response<Bytes>, BhttpError> {
    let msg = read(data)?;
    let Some(status) = msg.control().status() else {
        return Err(BhttpError::WrongKind {
            expected: "response",
            found: "request",
        });
    };
    let status = http::StatusCode::from_u16(status.code()).map_err(|e| invalid(":status", e))?;
    let mut builder = http::Response::builder().status(status);
    let headers = builder.headers_mut().expect("fresh builder has headers");
    copy_fields(msg.header(), headers)?;
    copy_fields(msg.trailer(), headers)?;
    builder
        .body(Bytes::copy_from_slice(msg.content()))
        .map_err(|e| invalid("response", e))
}

fn read(data: &[u8]) -> Result<bhttp::Message, BhttpError> {
    let mut cursor = Cursor::new(data);
    Ok(bhttp::Message::read_bhttp::<_, Cursor<&[u8]>>(&mut cursor)?)
}

fn write(msg: &bhttp::Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.content().len() + 256);
    msg.write_bhttp(bhttp::Mode::KnownLength, &mut out)
        .expect("writing BHTTP into a Vec cannot fail");
    out
}

fn copy_fields(
    fields: &bhttp::FieldSection,
    headers: &mut http::HeaderMap,
) -> Result<(), BhttpError> {
    for f in fields.iter() {
        if f.name().first() == Some(&b':') {
            return Err(invalid(
                "field name",
                format!(
                    "pseudo-header {:?} in a field section",
                    String::from_utf8_lossy(f.name())
                ),
            ));
        }
        let name = HeaderName::from_bytes(f.name()).map_err(|e| {
            invalid(
                "field name",
                format!("{:?}: {e}", String::from_utf8_lossy(f.name())),
            )
        })?;
        let value = HeaderValue::from_bytes(f.value())
            .map_err(|e| invalid("field value", format!("{name}: {e}")))?;
        headers.append(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(n: usize, out: &mut Vec<u8>) {
        if n < 64 {
            out.push(n as u8);
        } else {
            assert!(n < 16384);
            out.push(0x40 | (n >> 8) as u8);
            out.push(n as u8);
        }
    }
    fn vec(b: &[u8], out: &mut Vec<u8>) {
        varint(b.len(), out);
        out.extend_from_slice(b);
    }

    /// The bytes Go's encoder produces for `POST /hello/x?a=1` with a chunked body:
    /// indeterminate-length request (framing 2), empty scheme, sorted lower-case fields.
    fn go_chunked_request() -> Vec<u8> {
        let mut m = vec![2u8];
        for cd in [&b"POST"[..], b"", b"gw.example:8080", b"/hello/x?a=1"] {
            vec(cd, &mut m);
        }
        for (n, v) in [
            (&b"accept"[..], &b"*/*"[..]),
            (b"x-multi", b"1"),
            (b"x-multi", b"2"),
        ] {
            vec(n, &mut m);
            vec(v, &mut m);
        }
        m.push(0); // end of header section
        vec(b"hello ", &mut m);
        vec(b"world", &mut m);
        m.push(0); // end of content
        m.push(0); // empty trailer section
        m
    }

    #[test]
    fn decodes_go_indeterminate_request_with_empty_scheme_and_query() {
        let req = decode_request(&go_chunked_request()).unwrap();
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().path(), "/hello/x");
        assert_eq!(req.uri().query(), Some("a=1"));
        assert_eq!(req.headers()["host"], "gw.example:8080");
        assert_eq!(req.headers()["accept"], "*/*");
        let multi: Vec<_> = req.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert_eq!(req.body().as_ref(), b"hello world");
    }

    #[test]
    fn decodes_truncated_and_padded_known_length_requests() {
        // Known-length request that ends right after the header section (RFC 9292 §3.8).
        let mut m = vec![0u8];
        for cd in [&b"GET"[..], b"", b"h", b"/x"] {
            vec(cd, &mut m);
        }
        vec(&[], &mut m); // empty header section
        let req = decode_request(&m).unwrap();
        assert_eq!(req.uri(), "/x");
        assert!(req.body().is_empty());
        // Same with content, trailer and zero padding.
        let mut padded = m.clone();
        vec(b"body", &mut padded);
        vec(&[], &mut padded);
        padded.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_request(&padded).unwrap().body().as_ref(), b"body");
    }

    #[test]
    fn decodes_go_indeterminate_response_with_chunks() {
        // Go's consumer: framing 3, no content-length, body in ≤4096-byte chunks.
        let mut m = vec![3u8];
        varint(201, &mut m);
        vec(b"content-type", &mut m);
        vec(b"text/plain", &mut m);
        m.push(0);
        let body = vec![b'x'; 5000];
        vec(&body[..4000], &mut m);
        vec(&body[4000..], &mut m);
        m.push(0);
        m.push(0);
        let resp = decode_response(&m).unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.body().len(), 5000);
    }

    #[test]
    fn request_round_trip_strips_hop_by_hop_and_sorts() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("http://ignored/a/b?x=%20y")
            .header("host", "example.com")
            .header("x-b", "2")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "secret")
            .header("transfer-encoding", "chunked")
            .header("a-first", "1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let wire = encode_request(&parts, b"data");
        let back = decode_request(&wire).unwrap();
        assert_eq!(back.method(), "PUT");
        assert_eq!(back.uri(), "/a/b?x=%20y");
        assert_eq!(back.headers()["host"], "example.com");
        assert_eq!(back.headers()["content-length"], "4");
        assert!(back.headers().get("connection").is_none());
        assert!(back.headers().get("x-private").is_none());
        assert!(back.headers().get("transfer-encoding").is_none());
        let names: Vec<_> = back.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["a-first", "content-length", "x-b", "host"]);
        assert_eq!(back.body().as_ref(), b"data");
    }

    #[test]
    fn absolute_form_targets_keep_a_parseable_path() {
        // Found by the bhttp_request fuzz target (fuzz/corpus/bhttp_request/crash-absolute-form-path-in-path).
        for (target, path) in [
            ("http://h?x=1", "/?x=1"),
            ("http://h", "/"),
            ("http://h/a/b?c", "/a/b?c"),
            ("/p?", "/p?"),
            ("h:443", "/"),
        ] {
            let (parts, ()) = http::Request::get(target).body(()).unwrap().into_parts();
            let back = decode_request(&encode_request(&parts, b"")).unwrap();
            assert_eq!(back.uri(), path, "{target}");
        }
    }

    #[test]
    fn empty_post_gets_content_length_zero_like_go() {
        let (parts, ()) = http::Request::post("/p").body(()).unwrap().into_parts();
        let back = decode_request(&encode_request(&parts, b"")).unwrap();
        assert_eq!(back.headers()["content-length"], "0");
        let (parts, ()) = http::Request::get("/g").body(()).unwrap().into_parts();
        let back = decode_request(&encode_request(&parts, b"")).unwrap();
        assert!(back.headers().get("content-length").is_none());
    }

    #[test]
    fn response_round_trip() {
        let resp = http::Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .header("content-length", "2")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        let back = decode_response(&encode_response(&parts, b"{}")).unwrap();
        assert_eq!(back.status(), 404);
        assert!(back.headers().get("content-length").is_none());
        assert_eq!(back.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(back.body().as_ref(), b"{}");
    }

    #[test]
    fn garbage_and_wrong_kind_are_errors() {
        assert!(decode_request(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_response(b"").is_err());
        let (parts, ()) = http::Response::new(()).into_parts();
        let resp = encode_response(&parts, b"");
        assert!(matches!(
            decode_request(&resp),
            Err(BhttpError::WrongKind { .. })
        ));
        // A request whose field section contains a pseudo-header is rejected.
        let mut m = vec![0u8];
        for cd in [&b"GET"[..], b"", b"h", b"/"] {
            vec(cd, &mut m);
        }
        let mut fields = Vec::new();
        vec(b":path", &mut fields);
        vec(b"/evil", &mut fields);
        vec(&fields, &mut m);
        assert!(decode_request(&m).is_err());
    }
}
