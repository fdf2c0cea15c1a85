//! End-to-end tests of `deploy --wait`, `images`, `logs --since/-f` and the generated
//! completions/man pages: the real `narunctl` binary against a real nats-server and,
//! where status or logs are needed, a real `narund` running real app processes.

use async_nats::jetstream;
use narun_test_support::apps::{SILENT_SLEEPER, elf_machine, fake_elf, sleeper_saying};
use narun_test_support::{
    Narund, NatsServer, Running, T, buckets, deploy_file, log_line, narunctl, narunctl_bin, text,
    upload_script, wait_for,
};
use narun_wire::names;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_reports_ready_and_failures_with_the_log_tail() {
    let server = NatsServer::start();
    let _narund = Narund::start(&server, "wait-node", "");
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();

    // A good app: two instances, ready once they have run for settleSec.
    upload_script(
        &server,
        "good",
        "v1",
        sleeper_saying("up: $NARUN_INSTANCE_ID"),
    )
    .await;
    let spec = write(
        dir.path(),
        "good.toml",
        "name = \"good\"\ntag = \"v1\"\nsettleSec = 1\n[[nodes]]\nname = \"wait-node\"\nreplicas = 2\n",
    );
    let started = std::time::Instant::now();
    let out = deploy_file(&url, &spec, "40s").await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "deploy --wait failed: {}\n{stdout}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("good:v1 is ready on 2 instance(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("wait-node good-1: running"), "{stdout}");
    println!(
        "deploy --wait of 2 instances (settleSec 1): {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // A new version whose process exits 1 at once, restart = "no": exit 1 with the
    // reason and the app's own last words.
    upload_script(
        &server,
        "good",
        "v2",
        "#!/bin/sh\necho 'v2 cannot open its config' >&2\nexit 1\n",
    )
    .await;
    let spec = write(
        dir.path(),
        "bad.toml",
        "name = \"good\"\ntag = \"v2\"\nrestart = \"no\"\nsettleSec = 1\n[[nodes]]\nname = \"wait-node\"\nreplicas = 2\n",
    );
    let out = deploy_file(&url, &spec, "40s").await;
    let err = text(&out.stderr);
    println!(
        "deploy --wait of a crashing v2:\n{}{err}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", text(&out.stdout));
    assert!(err.contains("deploy of good:v2 failed"), "{err}");
    assert!(
        err.contains("good-0 on wait-node: crashed (exit-code: exit status 1)"),
        "{err}"
    );
    assert!(err.contains("v2 cannot open its config"), "log tail: {err}");

    // The v1 instances kept running (narund rolled the replacement back): a redeploy
    // of v1 is ready at once, from the heartbeat alone. On a terminal (a pty from
    // util-linux `script`) the table is drawn instead of plain lines.
    let spec = write(
        dir.path(),
        "good.toml",
        "name = \"good\"\ntag = \"v1\"\nsettleSec = 1\n[[nodes]]\nname = \"wait-node\"\nreplicas = 2\n",
    );
    let cmd = format!(
        "{} --nats {url} deploy -f {} --no-binary --wait=40s",
        narunctl_bin().display(),
        spec.display()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env_remove("NATS_URL")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("narunctl under script finished within 60 s")
    .expect("util-linux script runs");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}\n{}", text(&out.stderr));
    assert!(
        screen.contains("NODE       INSTANCE  STATUS   RESTARTS  DETAIL"),
        "{screen}"
    );
    let row = screen
        .lines()
        .find(|l| l.starts_with("wait-node  good-1"))
        .expect(&screen);
    assert!(row.contains("running") && row.ends_with("ready"), "{row:?}");
    assert!(
        screen.contains("good:v1 is ready on 2 instance(s)"),
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_times_out_when_no_node_is_selected() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    upload_script(&server, "lonely", "v1", SILENT_SLEEPER).await;
    let spec = write(
        dir.path(),
        "lonely.toml",
        "name = \"lonely\"\ntag = \"v1\"\n[[nodes]]\nname = \"nowhere\"\nreplicas = 1\n",
    );
    // (--allow-offline: without it the spec is refused before it is written.)
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            "--no-binary",
            "--allow-offline",
            "--wait=1s",
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no online node is selected by the spec of lonely"),
        "{err}"
    );
}

#[tokio::test]
async fn images_ls_shows_uploads_and_rm_removes_them() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();

    // Nothing deployed yet: an empty table, not an error.
    let out = narunctl(&url, &["images", "ls"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("OBJECT NAME"));

    let bin = fake_elf(dir.path(), "imgapp", 0, elf_machine(), 2 * 1024 * 1024);
    let out = narunctl(
        &url,
        &[
            "deploy",
            "--allow-offline",
            "--name",
            "imgapp",
            "--tag",
            "v7",
            "--node",
            "n1",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let object = names::binary_object_name("imgapp", "v7", "linux", names::go_arch());
    // And one put by hand, without the narun metadata.
    upload_script(&server, "manual", "x", "#!/bin/sh\n").await;
    let manual = names::binary_object_name("manual", "x", names::go_os(), names::go_arch());

    let out = narunctl(&url, &["images", "ls"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header = table.lines().next().unwrap();
    for col in [
        "OBJECT NAME",
        "SIZE",
        "MODIFIED",
        "APP NAME",
        "TAG",
        "OS",
        "ARCH",
        "DIGEST",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(&object))
        .expect(&table);
    assert!(row.contains("2.0 MiB"), "{row}");
    assert!(row.contains(" imgapp ") && row.contains(" v7 "), "{row}");
    assert!(row.contains("SHA-256="), "{row}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&manual))
        .expect(&table);
    assert!(row.contains(" - "), "no metadata shown as -: {row}");

    let out = narunctl(&url, &["images", "ls", "--json"]).await;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["object"], object.as_str());
    assert_eq!(list[0]["size"], 2 * 1024 * 1024 + 64);
    assert_eq!(list[0]["tag"], "v7");
    assert_eq!(list[0]["original_file"], "imgapp");

    // stdin is not a terminal here: refused without -y, nothing deleted.
    let out = narunctl(&url, &["images", "rm", &object]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("stdin is not a terminal") && err.contains("-y"),
        "{err}"
    );
    assert!(
        err.contains("is the binary of app imgapp"),
        "in-use warning: {err}"
    );
    // An unknown name fails before anything is deleted.
    let out = narunctl(&url, &["images", "rm", "-y", &object, "nope-1-linux-arm"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("image nope-1-linux-arm not found"));

    let out = narunctl(&url, &["images", "rm", "-y", &object]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("deleted {object}")));
    let out = narunctl(&url, &["images", "ls", "--json"]).await;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["object"], manual.as_str());
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_cli_definition() {
    let url = "nats://127.0.0.1:1";
    for shell in ["bash", "zsh", "fish"] {
        let out = narunctl(url, &["completions", shell]).await;
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.len() > 1000, "{shell}: {script}");
        for word in ["deploy", "images", "--wait", "--since"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = narunctl(url, &["completions", "tcsh"]).await;
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");

    let out = narunctl(url, &["man"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH narunctl 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = narunctl(url, &["man", "--out", dir.path().to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in [
        "narunctl.1",
        "narunctl-deploy.1",
        "narunctl-images-rm.1",
        "narunctl-logs.1",
    ] {
        let body = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(body.contains(".TH"), "{page}");
    }
    let deploy = std::fs::read_to_string(dir.path().join("narunctl-deploy.1")).unwrap();
    assert!(deploy.contains("wait"), "{deploy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_since_replays_the_stream_then_follows_without_gaps_or_duplicates() {
    use futures_util::StreamExt;
    let server = NatsServer::start();
    let url = server.url();
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    let _narund = Narund::start(
        &server,
        "log-node",
        "[logs]\nstream = true\nstream_max_age_sec = 600\nstream_max_bytes = 1048576\n",
    );
    // narund creates the stream once it is connected.
    let stream = wait_for("narund to create narun-logs", T, || {
        let js = js.clone();
        async move { js.get_stream(names::LOG_STREAM).await.ok() }
    })
    .await;
    let config = stream.cached_info().config.clone();
    assert_eq!(config.subjects, ["logs.>"]);
    assert_eq!(config.max_age, Duration::from_secs(600));
    assert_eq!(config.max_bytes, 1_048_576);

    // An app prints two lines at start, before any `narunctl logs` runs.
    let mut live = client.subscribe("logs.chatty.>").await.unwrap();
    narun_test_support::synced(&client).await;
    upload_script(
        &server,
        "chatty",
        "v1",
        "#!/bin/sh\necho \"first words of $NARUN_INSTANCE_ID\"\necho 'second words'\nexec sleep 1000\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "chatty.toml",
        "name = \"chatty\"\ntag = \"v1\"\nsettleSec = 1\n[[nodes]]\nname = \"log-node\"\nreplicas = 1\n",
    );
    let out = deploy_file(&url, &spec, "30s").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for _ in 0..2 {
        tokio::time::timeout(T, live.next())
            .await
            .expect("the app's lines are published")
            .unwrap();
    }
    // The stream stored them too (a JetStream round trip after the core delivery).
    wait_for("2 lines in narun-logs", T, || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream(names::LOG_STREAM).await.ok()?;
            let info = s.info().await.ok()?;
            (info.state.messages >= 2).then_some(())
        }
    })
    .await;

    // --since --no-follow: the history, then exit.
    let out = narunctl(&url, &["logs", "chatty", "--since", "5m", "--no-follow"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let history = text(&out.stdout);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].ends_with("  log-node  chatty-0  stdout  first words of chatty-0"),
        "{history}"
    );
    assert!(
        lines[1].ends_with("  log-node  chatty-0  stdout  second words"),
        "{history}"
    );
    assert!(
        text(&out.stderr).contains("2 line(s) of logs.chatty.*"),
        "{}",
        text(&out.stderr)
    );

    // --since (following is the default; -f is still accepted): the same history, then
    // new lines, each exactly once.
    let mut follow = Running::spawn(&url, &["logs", "chatty", "--since", "5m", "-f", "--raw"]);
    let note = follow.stderr_line().await;
    assert!(note.contains("then following"), "{note}");
    let first: serde_json::Value = serde_json::from_str(&follow.stdout_line().await).unwrap();
    assert_eq!(first["message"], "first words of chatty-0");
    let second: serde_json::Value = serde_json::from_str(&follow.stdout_line().await).unwrap();
    assert_eq!(second["message"], "second words");
    for i in 0..3 {
        client
            .publish(
                "logs.chatty.log-node",
                log_line("chatty", "log-node", "chatty-0", &format!("late {i}")).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..3 {
        let l: serde_json::Value = serde_json::from_str(&follow.stdout_line().await).unwrap();
        assert_eq!(l["message"], format!("late {i}"));
    }
    follow.interrupt().await;

    // --tail 0: no history, the stream is followed from now on.
    let mut now_on = Running::spawn(&url, &["logs", "chatty", "--tail", "0"]);
    let note = now_on.stderr_line().await;
    assert!(
        note.contains("0 line(s) of logs.chatty.* from the stream narun-logs, then following"),
        "{note}"
    );
    client
        .publish(
            "logs.chatty.log-node",
            log_line("chatty", "log-node", "chatty-0", "newest").into(),
        )
        .await
        .unwrap();
    assert!(now_on.stdout_line().await.ends_with("newest"));
    now_on.interrupt().await;
}

#[tokio::test]
async fn logs_without_the_stream_says_history_is_unavailable_and_follows_live() {
    let server = NatsServer::start();
    let client = server.connect().await;
    // The app exists (its spec is stored), but nobody keeps log history.
    // Only a stored spec (no node runs it): written straight into app-configs.
    narun_test_support::buckets(&server)
        .await
        .put_spec(
            "quiet",
            &serde_json::json!({"name": "quiet", "tag": "v1", "nodes": [{"name": "n1", "replicas": 1}]}),
        )
        .await;
    // Asked for history with --no-follow: nothing to show is an error, not silence.
    let out = narunctl(&server.url(), &["logs", "quiet", "--no-follow"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: no log history") && err.contains("--no-follow"),
        "{err}"
    );
    let mut run = Running::spawn(&server.url(), &["logs", "quiet"]);
    let note = run.stderr_line().await;
    assert!(
        note.starts_with("note: no log history") && note.contains("[logs] stream = true"),
        "{note}"
    );
    assert!(run.stderr_line().await.contains("following logs.quiet.*"));
    client
        .publish(
            "logs.quiet.n1",
            log_line("quiet", "n1", "quiet-0", "live one").into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert!(
        run.stdout_line()
            .await
            .ends_with("  n1  quiet-0  stdout  live one")
    );
    run.interrupt().await;
}

/// The measurement: `deploy --wait` of a 10 MiB binary to 3 narund nodes on this
/// machine, from the start of the command to "ready" (upload, 3 downloads with SHA-256
/// verification, 3 starts). Prints the time; fails only past a generous bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_of_a_10_mib_binary_to_three_nodes() {
    use futures_util::StreamExt;
    let server = NatsServer::start();
    let states = buckets(&server).await.states;
    let mut watch = states.watch_with_history(">").await.unwrap();
    let _nodes: Vec<Narund> = ["bench-a", "bench-b", "bench-c"]
        .iter()
        .map(|n| Narund::start(&server, n, "[labels]\nrole = \"bench\"\n"))
        .collect();
    // All three heart-beat before the deploy, so the measurement is the rollout only.
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < 3 {
            let e = watch.next().await.unwrap().unwrap();
            seen.insert(e.key.clone());
        }
    })
    .await
    .expect("3 narund heartbeats");

    // A real executable padded to 10 MiB (data after the ELF image is ignored by exec).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bigsleep");
    let mut bytes = std::fs::read("/bin/sleep").unwrap();
    bytes.resize(10 * 1024 * 1024, 0);
    std::fs::write(&bin, &bytes).unwrap();
    let spec = write(
        dir.path(),
        "big.toml",
        "name = \"big\"\ntag = \"v1\"\nargs = [\"1000\"]\nsettleSec = 0\n\
         [[nodes]]\nlabels = { role = \"bench\" }\nreplicas = 1\n",
    );
    let started = std::time::Instant::now();
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            bin.to_str().unwrap(),
            "--wait=60s",
        ],
    )
    .await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("big:v1 is ready on 3 instance(s)"),
        "{}",
        text(&out.stdout)
    );
    println!(
        "deploy --wait, 10 MiB binary, 3 narund nodes, settleSec 0: {:.2}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
