//! The `/metrics` listener: a minimal HTTP/1.x server on a tokio `TcpListener` (narund
//! without the gateway links no HTTP library; hyper would add ~300 KiB).
//!
//! It answers one request per connection and closes it (`Connection: close`):
//! `GET` or `HEAD /metrics` (any query) gets the exposition, another path 404, another
//! method 405. Everything a client controls is bounded:
//!
//! | what | bound | then |
//! |---|---|---|
//! | connections at once | [`MAX_CONNECTIONS`] | closed at accept, nothing read |
//! | request head (request line + headers) | [`MAX_HEAD`] bytes | `431`, closed |
//! | time to send the head | [`READ_TIMEOUT`] | closed |
//! | time to read the answer | [`WRITE_TIMEOUT`] | closed |
//! | a body | never read | closed after the answer |
//! | collecting the metrics (a hung file system) | [`RENDER_TIMEOUT`] | `503`, closed |
//!
//! [`parse_head`] is the pure part (bytes in, what to answer out), unit-tested.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the collection may take before the scrape gets `503`.
pub const RENDER_TIMEOUT: Duration = Duration::from_secs(10);

/// What to answer a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// `GET /metrics`: the exposition (`head_only` for `HEAD`).
    Metrics { head_only: bool },
    /// An error status with its reason phrase.
    Status(u16, &'static str),
}

/// `Some(answer)` once `buf` holds a whole head (or can never be a valid one), `None`
/// while more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Option<Answer> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
    let Some(end) = end else {
        return (buf.len() >= MAX_HEAD)
            .then_some(Answer::Status(431, "Request Header Fields Too Large"));
    };
    if end >= MAX_HEAD {
        return Some(Answer::Status(431, "Request Header Fields Too Large"));
    }
    let line = buf[..end].split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Answer::Status(400, "Bad Request"));
    };
    if !version.starts_with(b"HTTP/1.") {
        return Some(Answer::Status(400, "Bad Request"));
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        return Some(Answer::Status(404, "Not Found"));
    }
    match method {
        b"GET" => Some(Answer::Metrics { head_only: false }),
        b"HEAD" => Some(Answer::Metrics { head_only: true }),
        _ => Some(Answer::Status(405, "Method Not Allowed")),
    }
}

/// Serve `listener` until `stop`; `render` makes the exposition for each scrape.
pub async fn serve<F, Fut>(listener: TcpListener, render: F, stop: CancellationToken)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let render = Arc::new(render);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::debug!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // over MAX_CONNECTIONS: dropped, closed
        };
        let (render, stop) = (render.clone(), stop.clone());
        crate::spawn(async move {
            tokio::select! {
                _ = connection(stream, &*render) => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn connection<F, Fut>(mut stream: TcpStream, render: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let mut buf = Vec::with_capacity(512);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(a) = parse_head(&buf) {
                return Some(a);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let Ok(Some(answer)) = read else { return };
    let response = match answer {
        Answer::Metrics { head_only } => {
            // A hung file system (statvfs of the data dir, a cgroup file) must not keep
            // the slot: the scrape fails instead.
            let Ok(body) = tokio::time::timeout(RENDER_TIMEOUT, render()).await else {
                let body = "metrics took too long to collect\n";
                let mut r = head(
                    503,
                    "Service Unavailable",
                    "text/plain; charset=utf-8",
                    body.len(),
                );
                r.push_str(body);
                let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(r.as_bytes())).await;
                return;
            };
            let mut r = head(
                200,
                "OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.len(),
            );
            if !head_only {
                r.push_str(&body);
            }
            r
        }
        Answer::Status(code, reason) => {
            let body = format!("{code} {reason}\n");
            let mut r = head(code, reason, "text/plain; charset=utf-8", body.len());
            if code == 405 {
                r.insert_str(r.len() - 2, "Allow: GET, HEAD\r\n");
            }
            r.push_str(&body);
            r
        }
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

fn head(code: u16, reason: &str, content_type: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let ok = Some(Answer::Metrics { head_only: false });
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), ok);
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.0\n\n"), ok);
        assert_eq!(
            parse_head(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Some(Answer::Metrics { head_only: true })
        );
        // Incomplete: wait for more.
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(parse_head(b""), None);
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Answer::Status(405, "Method Not Allowed"))
        );
        for bad in [
            &b"GET /other HTTP/1.1\r\n\r\n"[..],
            b"GET /metrics/x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Some(Answer::Status(404, "Not Found")));
        }
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"\x00\xff\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Some(Answer::Status(400, "Bad Request")));
        }
        // Too long, with or without an end.
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(
            parse_head(&long),
            Some(Answer::Status(431, "Request Header Fields Too Large"))
        );
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_head(&long),
            Some(Answer::Status(431, "Request Header Fields Too Large"))
        );
    }
}
