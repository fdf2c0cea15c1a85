//! What a command unit answers: the run's stdout as the body, with the optional header
//! block in front of it ([`parse_output`], `commandUnit.outputHeaders`), or a failure
//! ([`Reply::failure`]); then encoded for the protocol the request came in
//! ([`Reply::encode`]). Pure: no I/O.
//!
//! # The header block (`outputHeaders = true`)
//!
//! stdout **must** start with a header block, CGI style:
//!
//! ```text
//! Status: 201 Created
//! Content-Type: application/json
//! X-Thing: a
//!
//! {"the":"body"}
//! ```
//!
//! * lines end with LF or CRLF; the block ends at the first empty line, everything
//!   after it is the body, byte for byte;
//! * each line is `Name: value`: the name an HTTP token right before the `:`, the value
//!   with blanks around it trimmed and a valid HTTP field value;
//! * `Status` (any case) sets the status: three digits 200–599, optionally followed by a
//!   reason phrase that is ignored; at most once; without it the status is 200;
//! * any other name is a response header; a name may repeat (`Set-Cookie`); the
//!   framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`, `Keep-Alive`,
//!   `Upgrade`, `TE`, `Trailer`, `Proxy-*`) are refused: the gateway frames the body;
//! * at most [`MAX_BLOCK_BYTES`] bytes and [`MAX_BLOCK_LINES`] lines;
//! * an empty block (stdout starting with an empty line) is allowed: `200`, no headers.
//!
//! Anything else is a `502` naming the line and what is wrong with it. Without
//! `outputHeaders` (the default) stdout is the body as it is (binary output is safe) and
//! the status is `200`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use super::request::Protocol;

/// Largest header block.
pub const MAX_BLOCK_BYTES: usize = 64 * 1024;
/// Most lines of a header block (the empty line not counted).
pub const MAX_BLOCK_LINES: usize = 100;

/// The raw protocol's status header (the gateway's `mode = "raw"`).
const RESPONSE_STATUS_HEADER: &str = "X-Response-Status-Code";

/// An answer, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Reply {
    /// A failure of narund's own (`text/plain`, one line).
    pub fn failure(status: u16, text: &str) -> Reply {
        Reply {
            status,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            body: Bytes::from(format!("{text}\n")),
        }
    }

    /// The reply payload and NATS headers for a request that came as `protocol`: a BHTTP
    /// response, or (raw) the body with the headers and `X-Response-Status-Code`.
    pub fn encode(&self, protocol: Protocol) -> (Bytes, Option<async_nats::HeaderMap>) {
        match protocol {
            Protocol::Bhttp => {
                let mut b = http::Response::builder().status(self.status);
                for (k, v) in &self.headers {
                    b = b.header(k, v);
                }
                let (parts, ()) = b
                    .body(())
                    .unwrap_or_else(|_| http::Response::new(()))
                    .into_parts();
                (
                    narun_wire::bhttp::encode_response(&parts, &self.body).into(),
                    None,
                )
            }
            Protocol::Raw => {
                let mut h = async_nats::HeaderMap::new();
                for (k, v) in &self.headers {
                    // NATS header values are text; a header that is not is left out.
                    if let Ok(v) = v.to_str() {
                        h.append(k.as_str(), v);
                    }
                }
                h.insert(RESPONSE_STATUS_HEADER, self.status.to_string().as_str());
                (self.body.clone(), Some(h))
            }
        }
    }
}

/// Headers a command may not set: the gateway frames the body.
fn framing_header(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        UPGRADE,
        TE,
        TRAILER,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// The reply a run's `stdout` stands for (see the module docs). `Err` is the text of a
/// `502`.
pub fn parse_output(stdout: Vec<u8>, output_headers: bool) -> Result<Reply, String> {
    let stdout = Bytes::from(stdout);
    if !output_headers {
        return Ok(Reply {
            status: 200,
            headers: Vec::new(),
            body: stdout,
        });
    }
    let mut status = None;
    let mut headers = Vec::new();
    let mut at = 0usize;
    let mut line_no = 0usize;
    loop {
        let Some(len) = stdout[at..].iter().position(|b| *b == b'\n') else {
            return Err(if stdout.len() > MAX_BLOCK_BYTES {
                format!("the command's header block is longer than {MAX_BLOCK_BYTES} bytes")
            } else {
                "the command's output has no end of its header block (an empty line); with outputHeaders = true stdout must start with `Name: value` lines and an empty line".into()
            });
        };
        let end = at + len + 1;
        if end > MAX_BLOCK_BYTES {
            return Err(format!(
                "the command's header block is longer than {MAX_BLOCK_BYTES} bytes"
            ));
        }
        let mut line = &stdout[at..at + len];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        at = end;
        if line.is_empty() {
            break;
        }
        line_no += 1;
        if line_no > MAX_BLOCK_LINES {
            return Err(format!(
                "the command's header block has more than {MAX_BLOCK_LINES} lines"
            ));
        }
        let bad = |what: String| format!("the command's header line {line_no}: {what}");
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(bad("no `:` (expected `Name: value`)".into()));
        };
        let name = HeaderName::from_bytes(&line[..colon])
            .map_err(|_| bad("the name is not an HTTP header name".into()))?;
        let value = line[colon + 1..].trim_ascii();
        if name.as_str() == "status" {
            if status.is_some() {
                return Err(bad("a second Status".into()));
            }
            let code = value.split(|b| *b == b' ').next().unwrap_or_default();
            let code = std::str::from_utf8(code)
                .ok()
                .filter(|c| c.len() == 3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..=599).contains(c))
                .ok_or_else(|| bad("Status must be three digits from 200 to 599".into()))?;
            status = Some(code);
            continue;
        }
        if framing_header(&name) {
            return Err(bad(format!(
                "{name} may not be set by a command (the gateway frames the body)"
            )));
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| {
            bad(format!(
                "the value of {name} is not a valid HTTP field value"
            ))
        })?;
        headers.push((name, value));
    }
    Ok(Reply {
        status: status.unwrap_or(200),
        headers,
        body: stdout.slice(at..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_block_stdout_is_the_body_byte_for_byte() {
        let out = b"Status: 500\n\n\x00\xffbinary".to_vec();
        let r = parse_output(out.clone(), false).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &out[..]));
    }

    #[test]
    fn the_block_sets_status_and_headers() {
        let r = parse_output(
            b"Status: 201 Created\r\nContent-Type: application/json\nSet-Cookie: a=1\nset-cookie:  b=2 \n\n{\"x\":1}\n\nmore".to_vec(),
            true,
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.headers.len(), 3);
        assert_eq!(r.headers[2].1, "b=2");
        assert_eq!(&r.body[..], b"{\"x\":1}\n\nmore");
        // An empty block.
        let r = parse_output(b"\nbody".to_vec(), true).unwrap();
        assert_eq!(
            (r.status, &r.body[..], r.headers.len()),
            (200, &b"body"[..], 0)
        );
    }

    #[test]
    fn a_bad_block_is_a_502_naming_the_line() {
        let err = |out: &[u8]| parse_output(out.to_vec(), true).unwrap_err();
        assert!(err(b"X: 1\n").contains("no end of its header block"));
        assert!(err(b"hello world\n\n").contains("line 1: no `:`"));
        assert!(err(b"Status: 99\n\n").contains("line 1: Status must be three digits"));
        assert!(err(b"Status: 2000\n\n").contains("Status must be"));
        assert!(err(b"Status: 200\nStatus: 201\n\n").contains("line 2: a second Status"));
        assert!(err(b"Bad Name: x\n\n").contains("not an HTTP header name"));
        assert!(err(b"Content-Length: 5\n\n").contains("content-length may not be set"));
        assert!(err(b"Transfer-Encoding: chunked\n\n").contains("may not be set"));
        assert!(err(b"X: a\x01b\n\n").contains("not a valid HTTP field value"));
        let many: Vec<u8> = (0..=MAX_BLOCK_LINES)
            .flat_map(|i| format!("X-{i}: v\n").into_bytes())
            .chain(*b"\n")
            .collect();
        assert!(err(&many).contains("more than 100 lines"));
        let long = [vec![b'X'; MAX_BLOCK_BYTES], b": v\n\n".to_vec()].concat();
        assert!(err(&long).contains("longer than"));
    }

    #[test]
    fn encoded_for_each_protocol() {
        let r = parse_output(b"Status: 404\nX-A: 1\n\nnope".to_vec(), true).unwrap();
        let (payload, headers) = r.encode(Protocol::Bhttp);
        assert!(headers.is_none());
        let resp = narun_wire::bhttp::decode_response(&payload).unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(&resp.body()[..], b"nope");
        let (payload, headers) = r.encode(Protocol::Raw);
        let headers = headers.unwrap();
        assert_eq!(&payload[..], b"nope");
        assert_eq!(headers.get(RESPONSE_STATUS_HEADER).unwrap().as_str(), "404");
        assert_eq!(headers.get("x-a").unwrap().as_str(), "1");
    }
}
