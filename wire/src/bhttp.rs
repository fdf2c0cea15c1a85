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

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

/// Why a BHTTP message could not be turned into an HTTP message (or back).
#[derive(Debug, thiserror::Error)]
pub enum BhttpError {
    #[error("malformed BHTTP message: {0}")]
    Malformed(&'static str),
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

// ---------------------------------------------------------------------------
// Encoding. Messages are written straight into one buffer, sized up front: no
// intermediate message object, no allocation per field (this runs for every
// request in the gateway and for every answer in the app).

/// Bytes of `v` as a QUIC variable-length integer (RFC 9000 §16).
fn varint_len(v: usize) -> usize {
    match v {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

fn put_varint(out: &mut Vec<u8>, v: usize) {
    let v = v as u64;
    match varint_len(v as usize) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A length-prefixed byte string.
fn put_vec(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len());
    out.extend_from_slice(b);
}

fn vec_len(b: &[u8]) -> usize {
    varint_len(b.len()) + b.len()
}

/// A known-length field section: its length, then the field lines.
fn put_fields(out: &mut Vec<u8>, fields: &[(&[u8], &[u8])]) {
    let len: usize = fields.iter().map(|(n, v)| vec_len(n) + vec_len(v)).sum();
    put_varint(out, len);
    for (n, v) in fields {
        put_vec(out, n);
        put_vec(out, v);
    }
}

fn fields_len(fields: &[(&[u8], &[u8])]) -> usize {
    let len: usize = fields.iter().map(|(n, v)| vec_len(n) + vec_len(v)).sum();
    varint_len(len) + len
}

/// `n` in decimal, without allocating.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Encode a request (gateway side), the way the Go gateway does.
///
/// `:scheme` is left empty and `:authority` is the `Host` header (or the URI's
/// authority); `:path` carries the query. Hop-by-hop headers, `host`,
/// `content-length` and `transfer-encoding` are not copied; `content-length` is
/// re-added for non-empty bodies and for POST/PUT/PATCH, like Go. Field lines
/// are sorted by name (stable, so repeated names keep their order), as Go sends
/// them. The result is a known-length message (framing 0).
pub fn encode_request(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let authority: &[u8] = match parts.headers.get(http::header::HOST) {
        Some(h) => h.as_bytes(),
        None => parts
            .uri
            .authority()
            .map_or(&b""[..], |a| a.as_str().as_bytes()),
    };
    // From path() and query(), not path_and_query(): for an absolute-form target without a
    // path (`GET http://host?q`) the latter is `?q`, which no app can parse as `:path`.
    let uri = &parts.uri;
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let query = uri.query();
    let path_len = path.len() + query.map_or(0, |q| q.len() + 1);

    let conn = connection_tokens(&parts.headers);
    let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(parts.headers.len() + 1);
    fields.extend(
        parts
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str();
                n != "host" && n != "content-length" && !is_hop_by_hop(n, &conn)
            })
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    let mut cl = [0u8; 20];
    let m = &parts.method;
    if !body.is_empty()
        || *m == http::Method::POST
        || *m == http::Method::PUT
        || *m == http::Method::PATCH
    {
        fields.push((b"content-length", decimal(body.len(), &mut cl)));
    }
    fields.sort_by(|a, b| a.0.cmp(b.0));

    let method = parts.method.as_str().as_bytes();
    let size = 1
        + vec_len(method)
        + 1
        + vec_len(authority)
        + varint_len(path_len)
        + path_len
        + fields_len(&fields)
        + vec_len(body)
        + 1;
    let mut out = Vec::with_capacity(size);
    out.push(0); // known-length request
    put_vec(&mut out, method);
    put_vec(&mut out, b""); // :scheme, empty like Go's server-side requests
    put_vec(&mut out, authority);
    put_varint(&mut out, path_len);
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    put_fields(&mut out, &fields);
    put_vec(&mut out, body);
    out.push(0); // empty trailer section
    debug_assert_eq!(out.len(), size);
    out
}

/// Encode a response (app side) as a known-length message (framing 1).
///
/// Hop-by-hop headers and `content-length` are dropped (the gateway's HTTP
/// server frames the body itself).
pub fn encode_response(parts: &http::response::Parts, body: &[u8]) -> Vec<u8> {
    let conn = connection_tokens(&parts.headers);
    let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(parts.headers.len());
    fields.extend(
        parts
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str();
                n != "content-length" && !is_hop_by_hop(n, &conn)
            })
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    let status = parts.status.as_u16();
    // RFC 9292 allows final statuses 200–599 only (http's range is 100–999).
    let status = if (200..=599).contains(&status) {
        status
    } else {
        200
    } as usize;
    let size = 1 + varint_len(status) + fields_len(&fields) + vec_len(body) + 1;
    let mut out = Vec::with_capacity(size);
    out.push(1); // known-length response
    put_varint(&mut out, status);
    put_fields(&mut out, &fields);
    put_vec(&mut out, body);
    out.push(0); // empty trailer section
    debug_assert_eq!(out.len(), size);
    out
}

// ---------------------------------------------------------------------------
// Decoding. Field values, the path and the content are slices of the message
// (`Bytes::slice`, no copy); a `&[u8]` input is copied once, as a whole.

const TRUNCATED: BhttpError = BhttpError::Malformed("truncated");

/// Reads a BHTTP message. At the end of the data, `Ok(None)` marks a truncated
/// message where RFC 9292 §3.8 allows one (the section reads as empty).
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<Option<u64>, BhttpError> {
        let Some(&first) = self.data.get(self.pos) else {
            return Ok(None);
        };
        let len = 1usize << (first >> 6);
        let b = self.data.get(self.pos..self.pos + len).ok_or(TRUNCATED)?;
        let mut v = u64::from(first & 0x3f);
        for &x in &b[1..] {
            v = (v << 8) | u64::from(x);
        }
        self.pos += len;
        Ok(Some(v))
    }

    /// A length-prefixed byte string; `None` at the end of the data.
    fn bytes(&mut self) -> Result<Option<Bytes>, BhttpError> {
        let Some(len) = self.varint()? else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| TRUNCATED)?;
        if self.data.len() - self.pos < len {
            return Err(TRUNCATED);
        }
        let b = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(Some(b))
    }

    fn required(&mut self) -> Result<Bytes, BhttpError> {
        self.bytes()?.ok_or(TRUNCATED)
    }

    /// A field section, each field line given to `each`. `known`: a length-prefixed
    /// section; else lines up to an empty name.
    fn fields(
        &mut self,
        known: bool,
        each: &mut impl FnMut(Bytes, Bytes) -> Result<(), BhttpError>,
    ) -> Result<(), BhttpError> {
        if known {
            let Some(section) = self.bytes()? else {
                return Ok(());
            };
            let mut r = Reader {
                data: &section,
                pos: 0,
            };
            while let Some(name) = r.bytes()? {
                if name.is_empty() {
                    return Err(BhttpError::Malformed("empty field name"));
                }
                each(name, r.required()?)?;
            }
            return Ok(());
        }
        loop {
            match self.bytes()? {
                None => return Ok(()),
                Some(name) if name.is_empty() => return Ok(()),
                Some(name) => each(name, self.required()?)?,
            }
        }
    }

    /// The content: one length-prefixed string (known length), or chunks up to an
    /// empty one (indeterminate length).
    fn content(&mut self, known: bool) -> Result<Bytes, BhttpError> {
        let Some(first) = self.bytes()? else {
            return Ok(Bytes::new());
        };
        if known || first.is_empty() {
            return Ok(first);
        }
        let mut all: Option<BytesMut> = None;
        while let Some(chunk) = self.bytes()? {
            if chunk.is_empty() {
                break;
            }
            all.get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&chunk);
        }
        Ok(all.map_or(first, BytesMut::freeze))
    }
}

/// Adds field lines to a header map, refusing pseudo-headers, and joining
/// repeated `cookie` lines of one section with `; ` (RFC 9113 §8.2.3, as the
/// `bhttp` crate Go-compatible decoders use does).
struct FieldSink<'h> {
    headers: &'h mut http::HeaderMap,
    cookies: Vec<Bytes>,
}

impl FieldSink<'_> {
    fn add(&mut self, name: Bytes, value: Bytes) -> Result<(), BhttpError> {
        if name.first() == Some(&b':') {
            return Err(invalid(
                "field name",
                format!(
                    "pseudo-header {:?} in a field section",
                    String::from_utf8_lossy(&name)
                ),
            ));
        }
        let name = HeaderName::from_bytes(&name).map_err(|e| {
            invalid(
                "field name",
                format!("{:?}: {e}", String::from_utf8_lossy(&name)),
            )
        })?;
        if name == http::header::COOKIE {
            self.cookies.push(value);
            return Ok(());
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|e| invalid("field value", format!("{name}: {e}")))?;
        self.headers.append(name, value);
        Ok(())
    }

    /// End of a section: the joined cookie line.
    fn finish(&mut self) -> Result<(), BhttpError> {
        let value = match self.cookies.len() {
            0 => return Ok(()),
            1 => self.cookies.pop().expect("one"),
            _ => Bytes::from(self.cookies.drain(..).collect::<Vec<_>>().join(&b"; "[..])),
        };
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|e| invalid("field value", format!("cookie: {e}")))?;
        self.headers.append(http::header::COOKIE, value);
        Ok(())
    }

    fn section(&mut self, r: &mut Reader<'_>, known: bool) -> Result<(), BhttpError> {
        r.fields(known, &mut |n, v| self.add(n, v))?;
        self.finish()
    }
}

/// Decode a request (app side). Accepts known- and indeterminate-length framing,
/// an empty `:scheme`, a query inside `:path`, truncation and padding.
///
/// The `Host` header is set from `:authority` when the message has no `host`
/// field, so handlers see the host the client asked for.
pub fn decode_request(data: &[u8]) -> Result<http::Request<Bytes>, BhttpError> {
    decode_request_shared(Bytes::copy_from_slice(data))
}

/// [`decode_request`] for a message already in a `Bytes` (a NATS payload): the
/// header values, path and body share its memory.
pub fn decode_request_shared(data: Bytes) -> Result<http::Request<Bytes>, BhttpError> {
    let mut r = Reader {
        data: &data,
        pos: 0,
    };
    let known = match r.varint()?.ok_or(TRUNCATED)? {
        0 => true,
        2 => false,
        1 | 3 => {
            return Err(BhttpError::WrongKind {
                expected: "request",
                found: "response",
            });
        }
        _ => return Err(BhttpError::Malformed("unknown framing indicator")),
    };
    let method = r.required()?;
    let _scheme = r.required()?;
    let authority = r.required()?;
    let path = r.required()?;
    let method = http::Method::from_bytes(&method).map_err(|e| invalid(":method", e))?;
    let path = if path.is_empty() {
        Bytes::from_static(b"/")
    } else {
        path
    };
    let uri = http::Uri::from_maybe_shared(path).map_err(|e| invalid(":path", e))?;
    let mut request = http::Request::new(Bytes::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let mut sink = FieldSink {
        headers: request.headers_mut(),
        cookies: Vec::new(),
    };
    sink.section(&mut r, known)?;
    if !authority.is_empty() && !sink.headers.contains_key(http::header::HOST) {
        sink.headers.insert(
            http::header::HOST,
            HeaderValue::from_maybe_shared(authority).map_err(|e| invalid(":authority", e))?,
        );
    }
    let content = r.content(known)?;
    // Trailers become headers: handlers built on buffered bodies cannot see them otherwise.
    sink.section(&mut r, known)?;
    *request.body_mut() = content;
    Ok(request)
}

/// Decode a response (gateway side). Informational (1xx) responses are skipped;
/// trailers are merged into the headers, as the Go gateway does.
pub fn decode_response(data: &[u8]) -> Result<http::Response<Bytes>, BhttpError> {
    decode_response_shared(Bytes::copy_from_slice(data))
}

/// [`decode_response`] for a message already in a `Bytes` (a NATS payload): the
/// header values and body share its memory.
pub fn decode_response_shared(data: Bytes) -> Result<http::Response<Bytes>, BhttpError> {
    let mut r = Reader {
        data: &data,
        pos: 0,
    };
    let known = match r.varint()?.ok_or(TRUNCATED)? {
        1 => true,
        3 => false,
        0 | 2 => {
            return Err(BhttpError::WrongKind {
                expected: "response",
                found: "request",
            });
        }
        _ => return Err(BhttpError::Malformed("unknown framing indicator")),
    };
    let status = loop {
        let code = r.varint()?.ok_or(TRUNCATED)?;
        match code {
            100..=199 => r.fields(known, &mut |_, _| Ok(()))?,
            200..=599 => break code as u16,
            _ => return Err(invalid(":status", code)),
        }
    };
    let mut response = http::Response::new(Bytes::new());
    *response.status_mut() =
        http::StatusCode::from_u16(status).map_err(|e| invalid(":status", e))?;
    let mut sink = FieldSink {
        headers: response.headers_mut(),
        cookies: Vec::new(),
    };
    sink.section(&mut r, known)?;
    let content = r.content(known)?;
    sink.section(&mut r, known)?;
    *response.body_mut() = content;
    Ok(response)
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

    /// The same message through the `bhttp` crate (the reference codec; Go's
    /// openpcc/bhttp writes the same bytes): both directions, both framings.
    #[test]
    fn agrees_with_the_reference_codec() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/echo/x?q=1")
            .header("host", "gw:8080")
            .header("x-forwarded-for", "10.0.0.1")
            .header("cookie", "a=1")
            .header("accept", "*/*")
            .header("x-long", "v".repeat(300))
            .body(())
            .unwrap();
        let body = vec![b'x'; 20_000];
        let (parts, ()) = req.into_parts();
        let ours = encode_request(&parts, &body);
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = parts
            .headers
            .iter()
            .filter(|(n, _)| n.as_str() != "host")
            .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        fields.push((b"content-length".to_vec(), b"20000".to_vec()));
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut msg = bhttp::Message::request(
            b"POST".to_vec(),
            Vec::new(),
            b"gw:8080".to_vec(),
            b"/echo/x?q=1".to_vec(),
        );
        for (n, v) in fields {
            msg.put_header(n, v);
        }
        msg.write_content(&body);
        let mut theirs = Vec::new();
        msg.write_bhttp(bhttp::Mode::KnownLength, &mut theirs)
            .unwrap();
        assert_eq!(ours, theirs, "byte-identical known-length request");
        for mode in [bhttp::Mode::KnownLength, bhttp::Mode::IndeterminateLength] {
            let mut wire = Vec::new();
            msg.write_bhttp(mode, &mut wire).unwrap();
            let back = decode_request(&wire).unwrap();
            assert_eq!(back.uri(), "/echo/x?q=1");
            assert_eq!(back.headers()["host"], "gw:8080");
            assert_eq!(back.headers()["x-long"].len(), 300);
            assert_eq!(back.body().len(), 20_000);
        }

        let resp = http::Response::builder()
            .status(418)
            .header("content-type", "text/plain")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        let ours = encode_response(&parts, b"short");
        let mut msg = bhttp::Message::response(bhttp::StatusCode::try_from(418u16).unwrap());
        for (n, v) in &parts.headers {
            msg.put_header(n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        msg.write_content(b"short");
        let mut theirs = Vec::new();
        msg.write_bhttp(bhttp::Mode::KnownLength, &mut theirs)
            .unwrap();
        assert_eq!(ours, theirs, "byte-identical known-length response");
        let read = bhttp::Message::read_bhttp::<_, std::io::Cursor<&[u8]>>(
            &mut std::io::Cursor::new(&ours[..]),
        )
        .unwrap();
        assert_eq!(read.content(), b"short");
        for mode in [bhttp::Mode::KnownLength, bhttp::Mode::IndeterminateLength] {
            let mut wire = Vec::new();
            msg.write_bhttp(mode, &mut wire).unwrap();
            let back = decode_response(&wire).unwrap();
            assert_eq!(back.status(), 418);
            assert_eq!(back.headers().get_all("set-cookie").iter().count(), 2);
            assert_eq!(back.body().as_ref(), b"short");
        }
    }

    #[test]
    fn informational_responses_are_skipped_and_cookies_joined() {
        let mut m = vec![1u8];
        varint(103, &mut m);
        let mut info = Vec::new();
        vec(b"link", &mut info);
        vec(b"</a.css>", &mut info);
        vec(&info, &mut m);
        varint(200, &mut m);
        let mut fields = Vec::new();
        for (n, v) in [
            (&b"cookie"[..], &b"a=1"[..]),
            (b"x", b"y"),
            (b"cookie", b"b=2"),
        ] {
            vec(n, &mut fields);
            vec(v, &mut fields);
        }
        vec(&fields, &mut m);
        vec(b"ok", &mut m);
        let resp = decode_response(&m).unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("link").is_none());
        assert_eq!(resp.headers()["cookie"], "a=1; b=2");
        assert_eq!(resp.body().as_ref(), b"ok");
        // Statuses outside 100–599 and unknown framings are refused.
        assert!(decode_response(&[1, 0x42, 0x58]).is_err()); // 600
        assert!(decode_response(&[1, 0x40, 0x63]).is_err()); // 99
        assert!(decode_request(&[4]).is_err());
        // A varint or string running past the end is truncation, not a panic.
        assert!(decode_request(&[0, 0x80]).is_err());
        assert!(decode_request(&[0, 5, b'G']).is_err());
    }

    /// Every truncation and every single-byte change of valid messages (both
    /// framings) decodes or fails cleanly, and what decodes survives a round trip.
    #[test]
    fn mutated_and_truncated_messages_never_panic() {
        let mut inputs = vec![go_chunked_request()];
        let (parts, ()) = http::Request::post("http://h/p?q")
            .header("cookie", "a")
            .header("x", "y")
            .body(())
            .unwrap()
            .into_parts();
        inputs.push(encode_request(&parts, b"body"));
        let (parts, ()) = http::Response::builder()
            .status(201)
            .header("x", "y")
            .body(())
            .unwrap()
            .into_parts();
        inputs.push(encode_response(&parts, b"body"));
        let mut indeterminate = vec![3u8];
        varint(200, &mut indeterminate);
        indeterminate.extend_from_slice(&[1, b'x', 1, b'y', 0, 2, b'a', b'b', 1, b'c', 0, 0]);
        inputs.push(indeterminate);
        for input in inputs {
            let mut variants = Vec::new();
            for len in 0..input.len() {
                variants.push(input[..len].to_vec());
            }
            for i in 0..input.len() {
                for b in [0u8, 1, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xff, b':'] {
                    let mut m = input.clone();
                    m[i] = b;
                    variants.push(m);
                }
            }
            for m in variants {
                if let Ok(req) = decode_request(&m) {
                    let (parts, body) = req.into_parts();
                    decode_request(&encode_request(&parts, &body)).expect("re-encoded request");
                }
                if let Ok(resp) = decode_response(&m) {
                    let (parts, body) = resp.into_parts();
                    let back = decode_response(&encode_response(&parts, &body))
                        .expect("re-encoded response");
                    assert_eq!(back.body(), &body);
                }
            }
        }
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
