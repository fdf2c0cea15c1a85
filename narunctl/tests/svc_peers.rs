//! `narunctl svc` against services of two implementations at once: a Python service built
//! with the third-party `nats-py` micro library (`nats.micro`) and one of ours
//! (`narun_wire::micro`), on a real nats-server. The table output is pinned with insta
//! snapshots (`narunctl/tests/snapshots/`); instance ids, which are random, are replaced by
//! placeholders first, and durations (which vary) are checked for shape and then masked.

use narun_test_support::{NatsServer, T, narunctl};
use narun_wire::micro::{EndpointConfig, InfoResponse, ServiceConfig, StatsResponse};
use std::process::{Output, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};

const PY_SERVICE: &str = r#"
import asyncio, sys
import nats
from nats.micro import add_service

async def main():
    nc = await nats.connect(sys.argv[1])
    svc = await add_service(nc, name="pyecho", version="0.3.1",
                            description="echo from nats-py", metadata={"lang": "python"})
    async def echo(req):
        await req.respond(req.data)
    await svc.add_endpoint(name="echo", handler=echo)
    print("ID " + svc.id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"#;

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "narunctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// Replace the random instance ids with stable names (keeps column widths honest: the
/// placeholders are padded to the id's length).
fn redact(text: &str, ids: &[(&str, &str)]) -> String {
    let mut t = text.to_string();
    for (id, name) in ids {
        t = t.replace(id, &format!("{name:<w$}", w = id.len()));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svc_lists_describes_and_counts_python_and_rust_services() {
    let server = NatsServer::start();
    let url = server.url();

    // The Python peer; it prints its id once the service answers discovery.
    let mut py = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PY_SERVICE)
        .arg(&url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (scripts/setup.sh installs interop/requirements.txt)");
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let py_id = tokio::time::timeout(T, lines.next_line())
        .await
        .expect("the nats-py service started in time (is nats-py installed? pip install -r interop/requirements.txt)")
        .unwrap()
        .and_then(|l| l.strip_prefix("ID ").map(str::to_owned))
        .expect("the nats-py service printed its id");

    // Ours.
    let client = server.connect().await;
    let mut config = ServiceConfig::new("rsecho", "1.0.0");
    config.description = "echo from narun".into();
    let service = narun_wire::micro::Service::start(&client, config)
        .await
        .unwrap();
    let mut endpoint = service
        .add_endpoint(EndpointConfig::new("handler", "rsecho"))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(req) = futures_util::StreamExt::next(&mut endpoint).await {
            let body = req.message.payload.clone();
            req.respond(body, None).await.unwrap();
        }
    });
    let rs_id = service.id().to_string();
    narun_test_support::synced(&client).await;

    // Traffic for the stats: 2 requests to Python, 1 to us.
    for subject in ["echo", "echo", "rsecho"] {
        let reply = tokio::time::timeout(T, client.request(subject, "ping".into()))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(&reply.payload[..], b"ping");
    }
    let ids = [(py_id.as_str(), "<py-id>"), (rs_id.as_str(), "<rs-id>")];

    // --json parses into the ADR-32 types, with both implementations' fields.
    let out = narunctl(&url, &["--timeout", "2s", "svc", "ls", "--json"]).await;
    let infos: Vec<InfoResponse> = serde_json::from_str(&stdout_ok(&out)).unwrap();
    let names: Vec<_> = infos.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["pyecho", "rsecho"]);
    assert_eq!(
        infos[0].metadata.get("lang").map(String::as_str),
        Some("python")
    );
    assert_eq!(infos[0].endpoints[0].subject, "echo");

    let out = narunctl(
        &url,
        &["--timeout", "2s", "svc", "stats", "pyecho", "--json"],
    )
    .await;
    let stats: Vec<StatsResponse> = serde_json::from_str(&stdout_ok(&out)).unwrap();
    assert_eq!(stats[0].endpoints[0].num_requests, 2);

    // Tables.
    let out = narunctl(&url, &["--timeout", "2s", "svc", "ls"]).await;
    insta::assert_snapshot!("svc_ls", redact(&stdout_ok(&out), &ids));

    let out = narunctl(&url, &["--timeout", "2s", "svc", "info", "pyecho"]).await;
    insta::assert_snapshot!("svc_info_pyecho", redact(&stdout_ok(&out), &ids));

    let out = narunctl(&url, &["--timeout", "2s", "svc", "stats", "rsecho"]).await;
    let table = redact(&stdout_ok(&out), &ids);
    // The time columns vary: check they are durations, then mask them.
    let masked: String = table
        .lines()
        .enumerate()
        .map(|(n, line)| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if n == 0 {
                return line.to_string();
            }
            let times = &cols[cols.len() - 2..];
            for t in times {
                assert!(
                    t.ends_with('s') && t.chars().next().is_some_and(|c| c.is_ascii_digit()),
                    "{t:?} is not a duration in {line:?}"
                );
            }
            cols[..cols.len() - 2].join(" ") + " <time> <time>"
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!("svc_stats_rsecho", masked);

    let out = narunctl(&url, &["--timeout", "2s", "svc", "ping"]).await;
    let pings = stdout_ok(&out);
    assert!(pings.contains(&py_id) && pings.contains(&rs_id), "{pings}");
    drop(py);
}
