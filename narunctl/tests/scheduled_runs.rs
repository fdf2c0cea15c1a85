//! Scheduled runs (`runMode = "job"`) against a real nats-server, real narund nodes and
//! real processes: schedules with a seconds field, exit codes and retries in the run
//! events, `concurrency` forbid/replace/allow, a missed run at boot within
//! `startingDeadlineSec`, `scope = "fleet"` on two nodes (each occurrence once, a takeover
//! when the holder is killed), `narunctl run` and `narunctl runs ls`, and bad specs
//! refused naming the field.

use narun_test_support::{
    Narund, NatsServer, T, buckets, collect, narunctl, text, upload_script, wait_for,
};
use narun_wire::events::StatusEvent;
use narun_wire::runs::{JobRun, Trigger};
use narun_wire::status::InstanceStatus;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

type Events = Arc<Mutex<Vec<StatusEvent>>>;

/// The job events of `app` seen so far.
fn runs(events: &Events, app: &str) -> Vec<(String, JobRun, Option<i32>)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.app_name == app)
        .filter_map(|e| Some((e.node_id.clone(), e.job.clone()?, e.exit_code)))
        .collect()
}

/// Wait until the job events of `app` satisfy `ok`.
async fn until_runs(
    events: &Events,
    app: &str,
    what: &str,
    ok: impl Fn(&[(String, JobRun, Option<i32>)]) -> bool,
) -> Vec<(String, JobRun, Option<i32>)> {
    wait_for(what, T, || async {
        let r = runs(events, app);
        ok(&r).then_some(r)
    })
    .await
}

fn job_spec(app: &str, nodes: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "name": app,
        "tag": "v1",
        "mode": "exec",
        "runMode": "job",
        "stopTimeoutSec": 2,
        "nodes": nodes.iter().map(|n| json!({"name": n, "replicas": 1})).collect::<Vec<_>>(),
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_record_exit_codes_retries_and_history() {
    const NODE: &str = "job-node";
    let server = NatsServer::start();
    let url = server.url();
    let client = server.connect().await;
    let events: Events = collect::<StatusEvent>(&client, "status.>").await;
    let logs = collect_raw(&client, "logs.flaky.>").await;
    let _narund = Narund::start(&server, NODE, "[events]\nstream = true\n");
    let b = buckets(&server).await;
    // Fails its first attempt with exit 3, succeeds on the second.
    upload_script(
        &server,
        "flaky",
        "v1",
        "#!/bin/sh\necho \"job $NARUN_JOB_ID attempt $NARUN_JOB_ATTEMPT at $NARUN_JOB_SCHEDULED_AT\"\n\
         [ \"$NARUN_JOB_ATTEMPT\" -ge 2 ] || exit 3\nexit 0\n",
    )
    .await;
    b.put_spec(
        "flaky",
        &job_spec(
            "flaky",
            &[NODE],
            json!({"schedule": "*/3 * * * * *", "maxAttempts": 2}),
        ),
    )
    .await;

    // One occurrence: attempt 1 exits 3 (retrying), attempt 2 exits 0 (succeeded).
    let r = until_runs(
        &events,
        "flaky",
        "an occurrence failing once, then succeeding",
        |r| {
            r.iter().any(|(_, j, _)| {
                j.outcome == "succeeded"
                    && j.attempt == 2
                    && r.iter().any(|(_, k, code)| {
                        k.id == j.id
                            && k.outcome == "retrying"
                            && k.attempt == 1
                            && *code == Some(3)
                    })
            })
        },
    )
    .await;
    let (_, ok, code) = r
        .iter()
        .find(|(_, j, _)| j.outcome == "succeeded")
        .unwrap()
        .clone();
    assert_eq!(code, Some(0));
    let retrying = events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.job.as_ref().is_some_and(|j| j.outcome == "retrying"))
        .cloned()
        .unwrap();
    println!("{}", serde_json::to_string(&retrying).unwrap());
    assert_eq!(ok.trigger, Trigger::Schedule);
    assert_eq!(ok.max_attempts, 2);
    assert_eq!(ok.log_subject, format!("logs.flaky.{NODE}"));
    assert!(ok.duration_ms.is_some());
    // The id is the occurrence (Unix seconds, a multiple of 3) and matches scheduled_at.
    let secs: i64 = ok.id.parse().unwrap();
    assert_eq!(secs % 3, 0, "{ok:?}");
    assert!(ok.scheduled_at.ends_with('Z'), "{ok:?}");
    // The app saw its job environment.
    let want = format!("job {} attempt 2 at {}", ok.id, ok.scheduled_at);
    wait_for("the job's environment in its log", T, || async {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&want))
            .then_some(())
    })
    .await;

    // `narunctl run` starts one now, with its own id; `runs ls` shows the history.
    let out = narunctl(&url, &["run", "flaky"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    println!("$ narunctl run flaky\n{stdout}");
    assert!(
        stdout.contains(NODE) && stdout.contains("started"),
        "{stdout}"
    );
    until_runs(&events, "flaky", "the manual run to succeed", |r| {
        r.iter().any(|(_, j, _)| {
            j.trigger == Trigger::Manual && j.outcome == "succeeded" && j.id.starts_with('m')
        })
    })
    .await;
    let out = narunctl(&url, &["runs", "ls", "--app", "flaky"]).await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    println!("$ narunctl runs ls --app flaky\n{table}");
    assert!(table.starts_with("TIME"), "{table}");
    for want in [
        "retrying",
        "succeeded",
        "manual",
        "schedule",
        "2/2",
        "logs.flaky.job-node",
    ] {
        assert!(table.contains(want), "{want} in\n{table}");
    }
    // The same attempts in `jobs ls --app`, next to the async jobs (none here).
    let out = narunctl(&url, &["jobs", "ls", "--app", "flaky"]).await;
    let jobs = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    println!("$ narunctl jobs ls --app flaky\n{jobs}");
    assert!(jobs.starts_with("ID"), "{jobs}");
    for want in [
        "scheduled",
        "retrying",
        "succeeded",
        "schedule on job-node",
        "manual on job-node",
    ] {
        assert!(jobs.contains(want), "{want} in\n{jobs}");
    }
    let out = narunctl(&url, &["runs", "ls", "--app", "flaky", "--json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rows.iter()
            .any(|r| r["exit_code"] == 3 && r["outcome"] == "retrying")
    );

    // Hostile run requests are answered with an error naming what is wrong.
    for (payload, want) in [
        (&b"not json"[..], "bad run request"),
        (br#"{"app":"","id":"x"}"#, "\"app\" is empty"),
        (
            br#"{"app":"flaky","id":"../../x"}"#,
            "id \"../../x\" must be",
        ),
        (br#"{"app":"flaky","id":""}"#, "must be 1 to 64"),
        (br#"{"app":"nope","id":"x1"}"#, "nope is not a job on node"),
    ] {
        let subject = narun_wire::names::control_subject(NODE, "run");
        let msg = tokio::time::timeout(T, client.request(subject, payload.to_vec().into()))
            .await
            .unwrap()
            .unwrap();
        let reply: narun_wire::runs::RunReply = serde_json::from_slice(&msg.payload).unwrap();
        assert!(reply.error.contains(want), "{want}: {reply:?}");
        assert!(reply.job_id.is_empty(), "{reply:?}");
    }

    // `narunctl deploy --wait` of a job does not wait for instances a job never has.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nightly.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"nightly\"\ntag = \"v1\"\nrunMode = \"job\"\nschedule = \"0 3 * * *\"\n\
             [[nodes]]\nname = \"{NODE}\"\nreplicas = 1\n"
        ),
    )
    .unwrap();
    upload_script(&server, "nightly", "v1", "#!/bin/sh\nexit 0\n").await;
    let started = std::time::Instant::now();
    let out = narun_test_support::deploy_file(&url, &file, "30s").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a job: no instance to wait for"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // A service is not a job; an unknown app is refused.
    upload_script(&server, "svc", "v1", "#!/bin/sh\nexec sleep 1000\n").await;
    b.put_spec(
        "svc",
        &json!({"name": "svc", "tag": "v1", "mode": "exec", "nodes": [{"name": NODE, "replicas": 1}]}),
    )
    .await;
    let out = narunctl(&url, &["run", "svc"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a job"),
        "{}",
        text(&out.stderr)
    );
    let out = narunctl(&url, &["run", "nope"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no app nope"),
        "{}",
        text(&out.stderr)
    );
}

/// Every message on `subject`, as text.
async fn collect_raw(client: &async_nats::Client, subject: &str) -> Arc<Mutex<Vec<String>>> {
    use futures_util::StreamExt;
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    narun_test_support::synced(client).await;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&m.payload).into_owned());
        }
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_forbid_replace_allow() {
    const NODE: &str = "cc-node";
    let server = NatsServer::start();
    let client = server.connect().await;
    let events: Events = collect::<StatusEvent>(&client, "status.>").await;
    let _narund = Narund::start(&server, NODE, "");
    let b = buckets(&server).await;
    // Each run lasts longer than the schedule's period (every second).
    for (app, policy) in [
        ("forbid", "forbid"),
        ("replace", "replace"),
        ("allow", "allow"),
    ] {
        upload_script(&server, app, "v1", "#!/bin/sh\nsleep 4\nexit 0\n").await;
        b.put_spec(
            app,
            &job_spec(
                app,
                &[NODE],
                json!({"schedule": "* * * * * *", "concurrency": policy, "maxAttempts": 1}),
            ),
        )
        .await;
    }
    // forbid: the occurrences during a run are skipped, one run at a time.
    let r = until_runs(
        &events,
        "forbid",
        "forbid to skip occurrences and finish a run",
        |r| {
            r.iter().filter(|(_, j, _)| j.outcome == "skipped").count() >= 2
                && r.iter().any(|(_, j, _)| j.outcome == "succeeded")
        },
    )
    .await;
    let instances: BTreeSet<String> = r
        .iter()
        .filter(|(_, j, _)| j.outcome == "started")
        .map(|(_, j, _)| j.instance.clone())
        .collect();
    assert_eq!(
        instances,
        BTreeSet::from(["forbid-0".to_string()]),
        "{r:#?}"
    );
    // replace: each occurrence stops the run going on.
    let r = until_runs(
        &events,
        "replace",
        "replace to stop the previous run",
        |r| r.iter().filter(|(_, j, _)| j.outcome == "replaced").count() >= 2,
    )
    .await;
    assert!(!r.iter().any(|(_, j, _)| j.outcome == "skipped"), "{r:#?}");
    // allow: runs overlap, each in its own instance slot.
    let r = until_runs(&events, "allow", "allow to run several at once", |r| {
        let slots: BTreeSet<&str> = r
            .iter()
            .filter(|(_, j, _)| j.outcome == "started")
            .map(|(_, j, _)| j.instance.as_str())
            .collect();
        slots.len() >= 3
    })
    .await;
    assert!(
        !r.iter()
            .any(|(_, j, _)| j.outcome == "skipped" || j.outcome == "replaced"),
        "{r:#?}"
    );
    // Stop the schedules (deleting the specs stops the runs).
    for app in ["forbid", "replace", "allow"] {
        b.configs.delete(app).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_missed_while_down_runs_at_boot_within_the_deadline() {
    const NODE: &str = "miss-node";
    let server = NatsServer::start();
    let client = server.connect().await;
    let events: Events = collect::<StatusEvent>(&client, "status.>").await;
    let narund = Narund::start(&server, NODE, "");
    let b = buckets(&server).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Both jobs last ran 50 days ago; the first of the month passed since.
    let jobs = narund.data_dir().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    for (app, deadline) in [("late-ok", 40 * 86_400), ("too-late", 60)] {
        std::fs::write(
            jobs.join(format!("{app}.last")),
            format!("{}\n", now - 50 * 86_400),
        )
        .unwrap();
        upload_script(
            &server,
            app,
            "v1",
            "#!/bin/sh\necho \"$NARUN_JOB_SCHEDULED_AT\"\n",
        )
        .await;
        b.put_spec(
            app,
            &job_spec(
                app,
                &[NODE],
                json!({"schedule": "0 0 1 * *", "startingDeadlineSec": deadline}),
            ),
        )
        .await;
    }
    let r = until_runs(&events, "late-ok", "the missed run to run at boot", |r| {
        r.iter().any(|(_, j, _)| j.outcome == "succeeded")
    })
    .await;
    let run = &r
        .iter()
        .find(|(_, j, _)| j.outcome == "succeeded")
        .unwrap()
        .1;
    assert_eq!(run.trigger, Trigger::Missed);
    assert!(run.scheduled_at.contains("-01T00:00:00Z"), "{run:?}");
    // The handled time is recorded: a restart does not run it again.
    wait_for("the last run time to be recorded", T, || async {
        let v: i64 = std::fs::read_to_string(jobs.join("late-ok.last"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (v >= now).then_some(())
    })
    .await;
    // Past its deadline: nothing ran (the other job's run had time to happen).
    assert!(
        runs(&events, "too-late").is_empty(),
        "{:?}",
        runs(&events, "too-late")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_scope_runs_each_occurrence_once_and_takes_over() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let events: Events = collect::<StatusEvent>(&client, "status.>").await;
    let n1 = Narund::start(&server, "fleet-1", "");
    let n2 = Narund::start(&server, "fleet-2", "");
    let b = buckets(&server).await;
    upload_script(&server, "tick", "v1", "#!/bin/sh\nsleep 1\nexit 0\n").await;
    b.put_spec(
        "tick",
        &job_spec(
            "tick",
            &["fleet-1", "fleet-2"],
            json!({"schedule": "*/2 * * * * *", "scope": "fleet", "concurrency": "allow"}),
        ),
    )
    .await;
    let r = until_runs(&events, "tick", "four fleet occurrences to succeed", |r| {
        r.iter()
            .filter(|(_, j, _)| j.outcome == "succeeded")
            .count()
            >= 4
    })
    .await;
    // Each occurrence started exactly once in the fleet.
    let mut starts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, j, _) in &r {
        if j.outcome == "started" {
            starts.entry(j.id.clone()).or_default().push(node.clone());
        }
    }
    for (id, nodes) in &starts {
        assert_eq!(nodes.len(), 1, "occurrence {id} started on {nodes:?}");
    }
    b.configs.delete("tick").await.unwrap();

    // A fleet occurrence whose first attempt hangs: kill its node, the other takes over.
    // One occurrence, 15 s from now (both nodes have the spec by then).
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 15;
    let c = narun_spec::Civil::from_secs(at);
    let schedule = format!(
        "{} {} {} {} {} *",
        c.second, c.minute, c.hour, c.day, c.month
    );
    upload_script(
        &server,
        "hang",
        "v1",
        "#!/bin/sh\n[ \"$NARUN_JOB_ATTEMPT\" -ge 2 ] && exit 0\nexec sleep 300\n",
    )
    .await;
    b.put_spec(
        "hang",
        &job_spec(
            "hang",
            &["fleet-1", "fleet-2"],
            json!({"scope": "fleet", "schedule": schedule}),
        ),
    )
    .await;
    let r = until_runs(&events, "hang", "one node to start the occurrence", |r| {
        r.iter().any(|(_, j, _)| j.outcome == "started")
    })
    .await;
    let (holder, first, _) = r
        .iter()
        .find(|(_, j, _)| j.outcome == "started")
        .unwrap()
        .clone();
    assert_eq!(first.attempt, 1);
    let (mut killed, other) = if holder == "fleet-1" {
        (n1, "fleet-2")
    } else {
        (n2, "fleet-1")
    };
    killed.signal(9); // SIGKILL
    killed.wait().await;
    let started = std::time::Instant::now();
    let r = until_runs(
        &events,
        "hang",
        "the other node to take over and succeed",
        |r| {
            r.iter()
                .any(|(n, j, _)| n == other && j.id == first.id && j.outcome == "succeeded")
        },
    )
    .await;
    println!("takeover after {:.1}s", started.elapsed().as_secs_f64());
    let taken = r
        .iter()
        .find(|(n, j, _)| n == other && j.id == first.id && j.outcome == "succeeded")
        .unwrap();
    assert_eq!(
        taken.1.attempt, 2,
        "the taker goes on with the next attempt"
    );
    let starts_on_other = r
        .iter()
        .filter(|(n, j, _)| n == other && j.outcome == "started")
        .count();
    assert_eq!(starts_on_other, 1, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_specs_are_refused_naming_the_field() {
    const NODE: &str = "bad-node";
    let server = NatsServer::start();
    let client = server.connect().await;
    let events: Events = collect::<StatusEvent>(&client, "status.>").await;
    let _narund = Narund::start(&server, NODE, "");
    let b = buckets(&server).await;
    let cases = [
        (
            "badcron",
            json!({"schedule": "61 * * * *"}),
            "schedule: invalid cron expression",
        ),
        (
            "badzone",
            json!({"schedule": "@daily", "timezone": "Nowhere/Atlantis"}),
            "timezone: unknown timezone \"Nowhere/Atlantis\"",
        ),
        (
            "badmode",
            json!({"runMode": "service", "schedule": "@daily"}),
            "schedule: is a job setting",
        ),
        (
            "badconc",
            json!({"concurrency": "sometimes"}),
            "concurrency: must be one of forbid, replace, allow",
        ),
        (
            "badtries",
            json!({"maxAttempts": 0}),
            "maxAttempts: must be > 0",
        ),
    ];
    for (app, extra, _) in &cases {
        b.put_spec(app, &job_spec(app, &[NODE], extra.clone()))
            .await;
    }
    for (app, _, want) in &cases {
        wait_for(&format!("{app} refused with {want:?}"), T, || async {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| {
                    e.app_name == *app
                        && e.status == InstanceStatus::InvalidSpec
                        && e.error.contains(want)
                })
                .then_some(())
        })
        .await;
    }
}
