//! Async jobs at the gateway, against a real nats-server (JetStream): who may read and
//! cancel a job over `/_jobs/`, and an attempt that a newer one has superseded.

mod common;

use common::*;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use narun_gateway::auth::password::sha256;
use narun_test_support::{NatsServer, wait_for};
use narun_wire::jobs as wire;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

fn hex(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `method url` with these headers and no body.
async fn call(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(full("")).unwrap()).await
}

/// The next attempt number the service saw (bounded wait).
async fn next(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the service is called in time")
        .expect("service running")
}

/// A job submitted through a route with `auth` is that client's: a client without a
/// credential gets the route's 401, another identity (even claiming the owner's name in
/// `Narun-Auth-User`, or asking through another virtual host) gets 403 and cannot cancel
/// it; the owner and a `[gateway.jobs.auth]` operator can.
#[tokio::test]
async fn jobs_are_guarded_by_the_auth_of_their_route() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let api = echo_service(&client, "api").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        &format!(
            "[gateway.jobs.auth]\nbearer = {{ ops = \"{}\" }}\n\
             [[gateway.routes]]\npath = \"/api/\"\nservice = \"api\"\nasync = true\n\
             [gateway.routes.auth]\nbearer = {{ alice = \"{}\", bob = \"{}\" }}\n\
             [[gateway.routes]]\npath = \"/api/\"\nservice = \"api\"\nhost = \"open.example\"\nasync = true\n\
             [[gateway.routes]]\npath = \"/pub/\"\nservice = \"api\"\nasync = true\n",
            hex("ops-token"),
            hex("alice-token"),
            hex("bob-token"),
        ),
    )
    .await;
    let alice = ("authorization", "Bearer alice-token");
    let bob = ("authorization", "Bearer bob-token");
    let ops = ("authorization", "Bearer ops-token");

    let r = call("POST", &gw.url("/api/x"), &[alice]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.headers["narun-job-id"].to_str().unwrap().to_owned();
    let job = gw.url(&format!("/_jobs/{id}"));
    let result = gw.url(&format!("/_jobs/{id}/result"));

    // No credential: the route's own refusal.
    for (m, url) in [("GET", &job), ("GET", &result), ("DELETE", &job)] {
        let r = call(m, url, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{m} {url}: {}",
            r.text()
        );
        assert!(
            r.headers.contains_key("www-authenticate"),
            "{m} {url}: {:?}",
            r.headers
        );
    }
    // A wrong token: 401 too.
    let r = call("GET", &job, &[("authorization", "Bearer guess")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Another identity of the same route, even naming alice, or through the open
    // virtual host with the same path: 403 / 401, and the job stays alice's.
    for headers in [
        vec![bob],
        vec![bob, ("narun-auth-user", "alice")],
        vec![bob, ("host", "open.example")],
    ] {
        for (m, url) in [("GET", &job), ("GET", &result), ("DELETE", &job)] {
            let r = call(m, url, &headers).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{m} {url} {headers:?}: {}",
                r.text()
            );
            assert!(r.text().contains("another client"), "{}", r.text());
        }
    }
    let r = call("GET", &job, &[("host", "open.example")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());

    // The owner sees it (done: the echo service answered) and its result.
    let v = wait_for("alice's job to be done", Duration::from_secs(30), || {
        let job = job.clone();
        async move {
            let r = call("GET", &job, &[alice]).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let v = r.json();
            (v["state"] == "done").then_some(v)
        }
    })
    .await;
    assert_eq!(v["owner"], "alice", "{v}");
    assert_eq!(call("GET", &result, &[alice]).await.status, StatusCode::OK);
    // The operator sees every job.
    assert_eq!(call("GET", &job, &[ops]).await.status, StatusCode::OK);
    assert_eq!(call("GET", &result, &[ops]).await.status, StatusCode::OK);
    assert_eq!(api.count(), 1);

    // A job of an open route: [gateway.jobs.auth] is set, so only the operator sees it.
    let r = call("POST", &gw.url("/pub/x"), &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.headers["narun-job-id"].to_str().unwrap().to_owned();
    let open = gw.url(&format!("/_jobs/{id}"));
    let r = call("GET", &open, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        call("GET", &open, &[alice]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call("GET", &open, &[ops]).await.status, StatusCode::OK);
}

/// The superseded-attempt rule of `jobs/worker.rs`: attempt 1 of a job hangs; a second
/// delivery of the job (a retry queued while it ran) runs attempt 2, which succeeds; then
/// attempt 1 ends with a 503. Its late outcome must not overwrite the job: it stays
/// `done` with attempt 2's result, and attempt 1's message is acked, not retried.
#[tokio::test]
async fn a_superseded_attempt_does_not_overwrite_the_newer_outcome() {
    let server = NatsServer::start();
    let client = server.connect().await;
    // The service: attempt 1 waits for `release`, then answers 503; others answer 200.
    let mut sub = client.subscribe("slow.jobs").await.unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let responder = client.clone();
    tokio::spawn(async move {
        let mut release = Some(release_rx);
        while let Some(m) = sub.next().await {
            let attempt = m
                .headers
                .as_ref()
                .and_then(|h| h.get(wire::ATTEMPT_HEADER))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let _ = seen_tx.send(attempt.clone());
            let hold = if attempt == "1" { release.take() } else { None };
            let responder = responder.clone();
            tokio::spawn(async move {
                let mut h = async_nats::HeaderMap::new();
                let body = if let Some(r) = hold {
                    let _ = r.await;
                    h.insert("X-Response-Status-Code", "503");
                    "late failure of attempt 1"
                } else {
                    h.insert("X-Response-Status-Code", "200");
                    "attempt 2 answered"
                };
                responder
                    .publish_with_headers(m.reply.unwrap(), h, body.into())
                    .await
                    .unwrap();
            });
        }
    });
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    // A retry would come back only after 10 minutes: the test sees the record, not a rerun.
    let gw = start_gateway(
        gw_client,
        "[gateway.jobs]\nworkers = 2\n\
         [[gateway.routes]]\npath = \"/slow/\"\nmode = \"raw\"\nsubject = \"slow.jobs\"\n\
         async = true\ntimeout_sec = 60\nretry_backoff_ms = 600000\n",
    )
    .await;
    let r = send(Request::post(gw.url("/slow/x")).body(full("job")).unwrap()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.headers["narun-job-id"].to_str().unwrap().to_owned();
    assert_eq!(next(&mut seen).await, "1");

    // A second delivery of the same job while attempt 1 runs (as `narunctl jobs retry`
    // or a redelivery queues it): the same envelope and request, another message id.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(wire::STREAM).await.unwrap();
    let original = stream
        .get_last_raw_message_by_subject(&wire::subject("slow.jobs"))
        .await
        .unwrap();
    let env = wire::Envelope::from_headers(Some(&original.headers)).unwrap();
    assert_eq!(env.id, id);
    js.publish_with_headers(
        wire::subject("slow.jobs"),
        env.to_headers(&format!("{id}-again")),
        original.payload.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(next(&mut seen).await, "2");
    let job = gw.url(&format!("/_jobs/{id}"));
    wait_for(
        "attempt 2 to finish the job",
        Duration::from_secs(30),
        || {
            let job = job.clone();
            async move { (get(&job).await.json()["state"] == "done").then_some(()) }
        },
    )
    .await;

    // Now attempt 1 ends, late, with a 503.
    release_tx.send(()).unwrap();
    // Its worker is done when the original message is acked (or the record changed).
    let v = wait_for(
        "attempt 1's message to be acked",
        Duration::from_secs(30),
        || {
            let (job, js) = (job.clone(), js.clone());
            async move {
                let v = get(&job).await.json();
                if v["state"] != "done" {
                    return Some(v);
                }
                let stream = js.get_stream(wire::STREAM).await.ok()?;
                let info = stream.consumer_info(wire::CONSUMER).await.ok()?;
                (info.num_ack_pending == 0 && info.num_pending == 0).then_some(v)
            }
        },
    )
    .await;
    assert_eq!(
        v["state"], "done",
        "the late attempt overwrote the job: {v}"
    );
    assert_eq!(v["attempts"].as_array().unwrap().len(), 2, "{v}");
    assert_ne!(v["attempts"][0]["status"], 503, "{v}");
    assert_eq!(v["attempts"][1]["status"], 200, "{v}");
    assert!(v.get("next_attempt_at").is_none(), "{v}");
    let r = get(&gw.url(&format!("/_jobs/{id}/result"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "attempt 2 answered");
    // And nothing runs it again.
    assert!(seen.try_recv().is_err());
}
