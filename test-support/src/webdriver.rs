//! A real headless browser for tests: Debian's `chromium` driven through `chromedriver`
//! (both installed by scripts/setup.sh) with the W3C WebDriver protocol, spoken here as
//! plain HTTP/1.1 + JSON on a loopback socket (no client crate). Every call and every
//! wait is bounded.
//!
//! ```no_run
//! # use narun_test_support::webdriver::Browser;
//! # use std::time::Duration;
//! let b = Browser::start(std::path::Path::new("/tmp/shots"));
//! b.goto("http://127.0.0.1:8080/_narun/");
//! let text = b.wait_text("#message", Duration::from_secs(10), |t| t.contains("ok"));
//! b.screenshot("page");
//! ```

use crate::free_port;
use base64::Engine;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound of one WebDriver call (a page load included).
const CALL: Duration = Duration::from_secs(60);

/// A chromedriver process and one headless chromium session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    s.set_read_timeout(Some(CALL)).unwrap();
    s.set_write_timeout(Some(CALL)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write to chromedriver");
    // chromedriver keeps the connection open: read the head, then Content-Length bytes
    // (or chunks up to the last one).
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut read_more = |raw: &mut Vec<u8>| {
        let n = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("reading chromedriver's answer to {method} {path}: {e}"));
        assert!(
            n > 0,
            "chromedriver closed the connection ({method} {path})"
        );
        raw.extend_from_slice(&chunk[..n]);
    };
    let end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        read_more(&mut raw);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let body = match length {
        Some(n) => {
            while raw.len() < end + 4 + n {
                read_more(&mut raw);
            }
            raw[end + 4..end + 4 + n].to_vec()
        }
        None => {
            while !raw[end + 4..].ends_with(b"0\r\n\r\n") {
                read_more(&mut raw);
            }
            let mut out = Vec::new();
            let mut rest = &raw[end + 4..];
            while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16)
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[i + 2..i + 2 + n]);
                rest = &rest[i + 2 + n + 2..];
            }
            out
        }
    };
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

impl Browser {
    /// Start chromedriver on a free port and a headless chromium session (1280×900);
    /// screenshots go to `shots` (created). Panics, saying what to install, without them.
    pub fn start(shots: &Path) -> Browser {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromedriver is not installed: run scripts/setup.sh (apt: chromium chromium-driver)");
        std::fs::create_dir_all(shots).unwrap();
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && call(port, "GET", "/status", None).1["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let (status, v) = call(port, "POST", "/session", Some(&caps));
        let mut driver = driver;
        let Some(session) = v["value"]["sessionId"].as_str().map(str::to_owned) else {
            let _ = driver.kill();
            panic!("chromium did not start (HTTP {status}): {v}");
        };
        Browser {
            driver,
            port,
            session,
            shots: shots.to_path_buf(),
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        let (status, v) = call(self.port, method, &p, body.as_ref());
        assert!(
            status < 300,
            "WebDriver {method} {path}: HTTP {status}: {v}"
        );
        v["value"].clone()
    }

    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let p = format!("/session/{}{path}", self.session);
        let (status, v) = call(self.port, method, &p, body.as_ref());
        (status < 300).then(|| v["value"].clone())
    }

    /// Open `url`.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element ids matching `css` (none: empty).
    pub fn find_all(&self, css: &str) -> Vec<String> {
        self.try_cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_owned))
        .collect()
    }

    /// The visible text of the first element matching `css` (`None`: no such element).
    pub fn text(&self, css: &str) -> Option<String> {
        let id = self.find_all(css).into_iter().next()?;
        self.try_cmd("GET", &format!("/element/{id}/text"), None)?
            .as_str()
            .map(str::to_owned)
    }

    /// Wait (at most `timeout`) until the text of `css` satisfies `ok`; returns it.
    pub fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text(css);
            if let Some(t) = &t
                && ok(t)
            {
                return t.clone();
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout");
                panic!(
                    "waited {timeout:?} for the text of {css}; last: {t:?} (screenshot {})",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait (at most `timeout`) until `css` matches `n` elements.
    pub fn wait_count(&self, css: &str, timeout: Duration, n: usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.find_all(css).len();
            if got == n {
                return;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout");
                panic!(
                    "waited {timeout:?} for {n} × {css}; found {got} (screenshot {})",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn element(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    /// Click the first element matching `css`.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Clear the input `css` and type `text`.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Run `script` in the page (W3C `execute/sync`) and return its value.
    pub fn execute(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Save a PNG of the window as `<shots>/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        if let Some(b64) = self.try_cmd("GET", "/screenshot", None)
            && let Some(s) = b64.as_str()
            && let Ok(png) = base64::engine::general_purpose::STANDARD.decode(s)
        {
            std::fs::write(&path, png).unwrap();
        }
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            call(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        }));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
