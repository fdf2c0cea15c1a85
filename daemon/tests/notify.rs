//! narund speaks sd_notify to its supervisor: READY=1, WATCHDOG=1 pings at half
//! of WATCHDOG_USEC, STOPPING=1 on SIGTERM. The test plays systemd by binding the
//! NOTIFY_SOCKET datagram socket itself.

use narun_test_support::{Narund, NatsServer, T};
use tokio::net::UnixDatagram;

async fn next_datagram(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, sock.recv(&mut buf))
        .await
        .expect("no sd_notify datagram from narund")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_sends_ready_watchdog_and_stopping() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut narund = Narund::builder(&server, "notify-test")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .start();

    let mut seen = Vec::new();
    while !seen.iter().any(|d: &String| d.contains("READY=1")) {
        seen.push(next_datagram(&sock).await);
    }
    // Pings keep coming at ~200 ms (half of WATCHDOG_USEC): wait for three.
    let mut pings = 0;
    while pings < 3 {
        if next_datagram(&sock).await.contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    narund.signal(libc::SIGTERM);
    loop {
        if next_datagram(&sock).await.contains("STOPPING=1") {
            break;
        }
    }
    let status = narund.wait().await;
    assert!(status.success(), "narund exited with {status}");
}
