//! Raw HTTP/1.1 on a socket, for tests that must control the bytes (floods, trickles,
//! pipelining) where a client library would hide them, and the Prometheus text the
//! gateway serves.

use crate::T;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One HTTP/1.1 response read off a socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The head (status line and headers), lower-cased.
    pub head: String,
    pub body: Vec<u8>,
    /// The head as sent (header values keep their case).
    pub head_as_sent: String,
}

impl RawResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one response (head, then a `Content-Length` body) from `r`, bounded by
/// [`T`] per read; panics if the peer closes first.
pub async fn read_response(r: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(T, r.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            n > 0,
            "closed before a response head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_as_sent = String::from_utf8_lossy(&buf[..end]).into_owned();
    let head = head_as_sent.to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head}"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("a Content-Length number"));
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout(T, r.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read body");
        assert!(n > 0, "closed in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        head,
        body,
        head_as_sent,
    }
}

/// `GET path` on the kept-alive connection `s`, and its response.
pub async fn get(s: &mut (impl AsyncRead + AsyncWrite + Unpin), path: &str) -> RawResponse {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write the request");
    read_response(s).await
}

/// The value of the Prometheus text line that starts with `series` (e.g.
/// `gateway_connections_open{listener="http"}`); 0 when there is none.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Run `promtool check metrics` (the `prometheus` package on Debian; scripts/setup.sh
/// installs it) on `text`; panics with promtool's complaints (missing HELP, naming, units)
/// when it finds any.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n--- the text:\n{text}",
        out.status
    );
}

impl RawResponse {
    /// The value of header `name` (any case), trimmed, as sent.
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head_as_sent
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }
}

/// One request on a new connection to `addr` (`Connection: close`): `method path`,
/// `headers`, `body` (with its `Content-Length`), and its response.
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut s = tokio::time::timeout(T, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write the head");
    // A refusal (413) may come before the body is taken: a failed write is not an error.
    let _ = s.write_all(body).await;
    read_response(&mut s).await
}
