//! `narunctl logs` as an operator uses it (the last lines, then follow; columns; colours
//! on a terminal only; unknown apps and nodes refused with close matches) and how every
//! narunctl failure reads (one `error:` line with a hint; a closed stdout is no failure;
//! a refused connection fails at once; unreadable files say whose they are; the NATS user
//! flag is `--nats-user`): the real `narunctl` binary against a real nats-server and, for
//! logs, a real `narund` running a real app.

use narun_test_support::{
    Narund, NatsServer, Running, T, log_line, narunctl, narunctl_bin, narunctl_cmd_via,
    narunctl_with, run, text, upload_script, wait_for,
};
use narun_wire::names;
use std::time::{Duration, Instant};

/// Messages in the `narun-logs` stream now.
async fn stream_messages(js: &async_nats::jetstream::Context) -> Option<u64> {
    let mut s = js.get_stream(names::LOG_STREAM).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

/// stdout lines of a finished narunctl that must have succeeded.
fn ok_lines(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_shows_the_last_lines_with_node_and_instance_then_follows() {
    let server = NatsServer::start();
    let url = server.url();
    let client = server.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    let _narund = Narund::start(&server, "tail-node", "[logs]\nstream = true\n");
    wait_for("narund to create narun-logs", T, || {
        let js = js.clone();
        async move { js.get_stream(names::LOG_STREAM).await.ok() }
    })
    .await;

    // A real app prints 15 red lines, with a window-title escape in the last one.
    upload_script(
        &server,
        "colors",
        "v1",
        "#!/bin/sh\nfor i in $(seq 1 14); do printf '\\033[31mline %s\\033[0m\\n' $i; done\n\
         printf '\\033[31mline 15\\033[0m\\033]0;pwned\\007\\n'\nexec sleep 1000\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("colors.toml");
    std::fs::write(
        &spec,
        "name = \"colors\"\ntag = \"v1\"\nsettleSec = 0\n[[nodes]]\nname = \"tail-node\"\nreplicas = 1\n",
    )
    .unwrap();
    let out = narun_test_support::deploy_file(&url, &spec, "30s").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for("15 lines in narun-logs", T, || {
        let js = js.clone();
        async move { (stream_messages(&js).await? >= 15).then_some(()) }
    })
    .await;
    // Then another app writes 40 lines: the last lines of `colors` are not the last of
    // the stream.
    for i in 0..40 {
        client
            .publish(
                "logs.noise.tail-node",
                log_line("noise", "tail-node", "noise-0", &format!("noise {i}")).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    wait_for("55 lines in narun-logs", T, || {
        let js = js.clone();
        async move { (stream_messages(&js).await? >= 55).then_some(()) }
    })
    .await;

    // Default: the last 10 lines, columns time, node, instance, stream, message; colours
    // and the title escape stripped, since stdout is a pipe.
    let lines = ok_lines(&narunctl(&url, &["logs", "colors", "--no-follow"]).await);
    assert_eq!(lines.len(), 10, "{lines:#?}");
    for (i, l) in lines.iter().enumerate() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols.len(), 6, "{l:?}");
        assert!(cols[0].ends_with('Z') && cols[0].len() == 24, "{l:?}");
        assert_eq!(
            &cols[1..5],
            ["tail-node", "colors-0", "stdout", "line"],
            "{l:?}"
        );
        assert_eq!(cols[5], (i + 6).to_string(), "{l:?}");
        assert!(!l.contains('\u{1b}') && !l.contains('\u{7}'), "{l:?}");
    }
    let last = |n: &str| {
        let url = url.clone();
        let n = n.to_owned();
        async move {
            let lines =
                ok_lines(&narunctl(&url, &["logs", "colors", "--no-follow", "--tail", &n]).await);
            lines
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(last("3").await, ["13", "14", "15"]);
    assert_eq!(last("all").await.len(), 15);
    assert!(last("0").await.is_empty());
    let lines =
        ok_lines(&narunctl(&url, &["logs", "colors", "--no-follow", "--since", "5m"]).await);
    assert_eq!(lines.len(), 15, "--since alone: every line of the window");
    let lines = ok_lines(
        &narunctl(
            &url,
            &[
                "logs",
                "colors",
                "--no-follow",
                "--since",
                "5m",
                "--tail",
                "4",
            ],
        )
        .await,
    );
    assert_eq!(lines.len(), 4);
    assert!(lines[0].ends_with("line 12"), "{lines:#?}");
    // All apps: the last lines of the stream are the other app's.
    let lines = ok_lines(&narunctl(&url, &["logs", "--no-follow", "--tail", "2"]).await);
    assert!(
        lines[1].ends_with("  noise-0  stdout  noise 39"),
        "{lines:#?}"
    );
    // --raw: the JSON as received, escape sequences included.
    let lines = ok_lines(
        &narunctl(
            &url,
            &["logs", "colors", "--no-follow", "--tail", "1", "--raw"],
        )
        .await,
    );
    let json: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        json["message"],
        "\u{1b}[31mline 15\u{1b}[0m\u{1b}]0;pwned\u{7}"
    );

    // --color always: colours into a pipe too; never the title.
    let lines = ok_lines(
        &narunctl(
            &url,
            &[
                "logs",
                "colors",
                "--no-follow",
                "--tail",
                "1",
                "--color",
                "always",
            ],
        )
        .await,
    );
    assert!(
        lines[0].ends_with("stdout  \u{1b}[31mline 15\u{1b}[0m"),
        "{lines:?}"
    );

    // On a terminal (a pty from util-linux `script`) colours are kept, the title is not.
    let cmd = format!(
        "{} --nats {url} logs colors --tail 1 --no-follow",
        narunctl_bin().display()
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
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("stdout  \u{1b}[31mline 15\u{1b}[0m"),
        "{screen:?}"
    );
    assert!(!screen.contains("pwned"), "{screen:?}");

    // Without --no-follow: the last 2 lines, then new ones.
    let mut follow = Running::spawn(&url, &["logs", "colors", "--tail", "2"]);
    let note = follow.stderr_line().await;
    assert!(
        note.contains("2 line(s) of logs.colors.* from the stream narun-logs, then following"),
        "{note}"
    );
    assert!(follow.stdout_line().await.ends_with("line 14"));
    assert!(follow.stdout_line().await.ends_with("line 15"));
    client
        .publish(
            "logs.colors.other-node",
            log_line("colors", "other-node", "colors-7", "from elsewhere").into(),
        )
        .await
        .unwrap();
    let l = follow.stdout_line().await;
    assert!(
        l.contains("  other-node  colors-7  stdout  from elsewhere"),
        "{l:?}"
    );
    follow.interrupt().await;

    // --instance filters here, after the server: --tail still means the last N lines of
    // that instance (the newest line of the subject is another instance's).
    let out = narunctl(
        &url,
        &[
            "logs",
            "colors",
            "--instance",
            "colors-0",
            "--tail",
            "3",
            "--no-follow",
        ],
    )
    .await;
    let lines = ok_lines(&out);
    let last: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(last, ["13", "14", "15"], "{lines:#?}");
    assert!(
        text(&out.stderr).contains("3 line(s) of logs.colors.* (instance colors-0)"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_refuses_unknown_apps_and_nodes_with_close_matches() {
    let server = NatsServer::start();
    let url = server.url();
    let _narund = Narund::start(&server, "node-1", "");
    // Only a stored spec (no node runs it): written straight into app-configs.
    narun_test_support::buckets(&server)
        .await
        .put_spec(
            "hello",
            &serde_json::json!({"name": "hello", "tag": "v1", "nodes": [{"name": "nowhere", "replicas": 1}]}),
        )
        .await;
    wait_for("node-1's heartbeat", T, || {
        let url = url.clone();
        async move {
            let out = narunctl(&url, &["nodes", "ls"]).await;
            text(&out.stdout).contains("node-1").then_some(())
        }
    })
    .await;

    // A typo: one error line with the close match, at once (before: silence forever).
    let out = narunctl(&url, &["logs", "helo"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: no app named \"helo\"") && err.contains("did you mean hello?"),
        "{err}"
    );
    let out = narunctl(&url, &["logs", "hello", "--node", "node-l"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: unknown node \"node-l\"") && err.contains("did you mean node-1?"),
        "{err}"
    );
    // Hostile input: a subject wildcard, a bad count.
    let out = narunctl(&url, &["logs", "hel.*"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot be part of a NATS subject token"),
        "{}",
        text(&out.stderr)
    );
    let out = narunctl(&url, &["logs", "hello", "--tail", "ten"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not a line count"));
}

/// Every listing whose reader is gone (`| head -0`) ends quietly with 0: stdout is a pipe
/// whose read end is closed before narunctl starts, so its first write fails with EPIPE.
#[tokio::test]
async fn a_closed_stdout_ends_quietly() {
    let server = NatsServer::start();
    let url = server.url();
    // Only a stored spec (no node runs it): written straight into app-configs.
    narun_test_support::buckets(&server)
        .await
        .put_spec(
            "hello",
            &serde_json::json!({"name": "hello", "tag": "v1", "nodes": [{"name": "n1", "replicas": 1}]}),
        )
        .await;
    for args in [
        &["nodes", "ls"][..],
        &["nodes", "ls", "--json"],
        &["apps", "ls"],
        &["apps", "ls", "--json"],
        &["images", "ls"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let home = tempfile::tempdir().unwrap();
        let mut cmd = narunctl_cmd_via(&[], home.path());
        cmd.arg("--nats").arg(&url).args(args);
        // Not `output()`: tokio's would replace stdout with a pipe of its own.
        cmd.stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let out = tokio::time::timeout(T, child.wait_with_output())
            .await
            .expect("narunctl ends")
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_fails_at_once_in_one_line() {
    let port = narun_test_support::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let out = narunctl(&url, &["--timeout", "30s", "nodes", "ls"]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: cannot reach NATS at {url}"))
            && err.contains("refused")
            && err.contains("is nats-server running"),
        "{err}"
    );
    // Not the 30 s of --timeout: the refusal is the answer (the bound is loose for a
    // loaded machine; on main this took the whole --timeout).
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Root passes every permission check; without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
/// (setpriv drops them from the bounding set before narunctl runs) it gets EACCES like
/// any user.
const NO_DAC: [&str; 4] = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
];

#[tokio::test]
async fn unreadable_files_name_their_owner_mode_and_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("op.creds");
    std::fs::write(&creds, "not read anyway").unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = narunctl_cmd_via(&NO_DAC, dir.path());
    cmd.arg("--nats")
        .arg(server.url())
        .arg("--creds")
        .arg(&creds)
        .args(["nodes", "ls"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot read the --creds file {}: Permission denied",
            creds.display()
        )) && err.contains("it is owned by root, mode 0000; narunctl runs as root")
            && err.contains("chown/chmod"),
        "{err}"
    );

    let ctx = dir.path().join("config.toml");
    std::fs::write(&ctx, "nats = \"nats://127.0.0.1:1\"\n").unwrap();
    std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = narunctl_cmd_via(&NO_DAC, dir.path());
    cmd.arg("--context-file").arg(&ctx).args(["nodes", "ls"]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad context file is a usage error"
    );
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: cannot read the context file {}: Permission denied",
            ctx.display()
        )) && err.contains("mode 0000; narunctl runs as root"),
        "{err}"
    );
}

#[tokio::test]
async fn the_nats_user_flag_is_nats_user_and_user_still_works() {
    let server =
        NatsServer::start_with_config("authorization {\n  user: op\n  password: s3cret\n}\n");
    let url = server.url();
    let out = narunctl(
        &url,
        &["--nats-user", "op", "--password", "s3cret", "nodes", "ls"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    // The old spelling: works, with a warning that names the new one.
    let out = narunctl(
        &url,
        &["--user", "op", "--password", "s3cret", "nodes", "ls"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("warning: --user is the old spelling of --nats-user"),
        "{}",
        text(&out.stderr)
    );
    // From the environment.
    let out = narunctl_with(
        &url,
        &["nodes", "ls"],
        &[("NATS_USER", "op"), ("NATS_PASSWORD", "s3cret")],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A wrong password: one error line naming the cause and the flags, at once (the
    // client's first failed round ends the wait; the bound is loose for a loaded machine).
    let started = Instant::now();
    let out = narunctl(
        &url,
        &[
            "--timeout",
            "30s",
            "--nats-user",
            "op",
            "--password",
            "nope",
            "nodes",
            "ls",
        ],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot connect to NATS")
            && err.contains("authorization violation")
            && err.contains("--nats-user/--password"),
        "{err}"
    );
    // --help shows --nats-user, not the alias.
    let help = text(&narunctl(&url, &["--help"]).await.stdout);
    assert!(help.contains("--nats-user <USER>"), "{help}");
    assert!(!help.contains("--user "), "{help}");
}

/// `images rm` of a 48 MiB object: the server purges 384 chunks before it answers, which
/// may take longer than --timeout on a busy machine; the object is gone all the same, so
/// rm reports success, and the chunks are gone from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_rm_of_a_large_object_succeeds_and_frees_its_chunks() {
    let server = NatsServer::start();
    let url = server.url();
    // 48 MiB put straight into app-binaries (384 chunks of 128 KiB).
    narun_test_support::buckets(&server)
        .await
        .upload("big", "v1", vec![7u8; 48 * 1024 * 1024])
        .await;
    let object = names::binary_object_name("big", "v1", names::go_os(), names::go_arch());
    let out = narunctl(&url, &["--timeout", "500ms", "images", "rm", "-y", &object]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("deleted {object} (48.0 MiB)")));
    let out = narunctl(&url, &["images", "ls", "--json"]).await;
    assert_eq!(text(&out.stdout).trim(), "[]");
    let js = async_nats::jetstream::new(server.connect().await);
    let mut s = js.get_stream("OBJ_app-binaries").await.unwrap();
    let state = s.info().await.unwrap().state.clone();
    assert!(state.messages <= 1, "chunks left: {state:?}");
}
