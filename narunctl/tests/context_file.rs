//! The context file (`~/.config/narun/config.toml`): the real narunctl binary with
//! `HOME`/`XDG_CONFIG_HOME` pointed at temporary directories reaches a real nats-server
//! named only there, and flags and the environment still win over it.

use narun_test_support::{NatsServer, narunctl_cmd, run, text};
use std::path::Path;

fn write_config(dir: &Path, content: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), content).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_file_supplies_the_server_and_flags_and_env_win() {
    let server = NatsServer::start();
    let url = server.url();
    // A socket that accepts connections (the kernel's backlog) but never speaks NATS: a
    // context that points there fails after its `timeout`, which the error names. (A
    // refused connection would fail at once, whatever the timeout.)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = &format!("nats://{}", silent.local_addr().unwrap());
    let home = tempfile::tempdir().unwrap();
    write_config(
        &home.path().join(".config/narun"),
        &format!(
            "# defaults for every context\ntimeout = \"2s\"\ncurrent = \"lab\"\n\n\
             [contexts.lab]\nnats = \"{url}\"\n\n[contexts.dead]\nnats = \"{dead}\"\n"
        ),
    );

    // ~/.config/narun/config.toml, context `current`: no --nats needed.
    let mut cmd = narunctl_cmd(home.path());
    cmd.args(["apps", "ls", "--json"]);
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(apps, serde_json::json!([]));

    // --context selects another context…
    let mut cmd = narunctl_cmd(home.path());
    cmd.args(["--context", "dead", "nodes", "ls"]);
    let out = run(cmd).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach NATS at {dead} within 2s")),
        "{err}"
    );
    // … and so does NARUN_CONTEXT.
    let mut cmd = narunctl_cmd(home.path());
    cmd.env("NARUN_CONTEXT", "dead").args(["nodes", "ls"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // A flag beats the context, wherever it stands on the line.
    let mut cmd = narunctl_cmd(home.path());
    cmd.args(["--context", "dead", "nodes", "ls", "--json", "--nats", &url]);
    let out = run(cmd).await;
    assert!(out.status.success(), "flag: {}", text(&out.stderr));
    // The environment beats the context too.
    let mut cmd = narunctl_cmd(home.path());
    cmd.env("NATS_URL", &url)
        .args(["--context", "dead", "nodes", "ls", "--json"]);
    let out = run(cmd).await;
    assert!(out.status.success(), "env: {}", text(&out.stderr));

    // $XDG_CONFIG_HOME/narun/config.toml is used instead of ~/.config when set.
    let xdg = tempfile::tempdir().unwrap();
    write_config(
        &xdg.path().join("narun"),
        &format!("nats = \"{dead}\"\ntimeout = \"1s\"\n"),
    );
    let mut cmd = narunctl_cmd(home.path());
    cmd.env("XDG_CONFIG_HOME", xdg.path()).args(["apps", "ls"]);
    let out = run(cmd).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach NATS at {dead} within 1s")),
        "{err}"
    );

    // --context-file / NARUNCTL_CONFIG point elsewhere (flat file, top-level keys only).
    let other = tempfile::tempdir().unwrap();
    write_config(other.path(), &format!("nats = \"{url}\"\n"));
    let file = other.path().join("config.toml");
    let mut cmd = narunctl_cmd(home.path());
    cmd.env("NARUNCTL_CONFIG", &file)
        .env("XDG_CONFIG_HOME", xdg.path())
        .args(["apps", "ls", "--json"]);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "NARUNCTL_CONFIG: {}",
        text(&out.stderr)
    );

    // Usage errors (exit 2) that name the file, the line and the key.
    write_config(
        other.path(),
        &format!("nats = \"{url}\"\n\n[contexts.x]\nnats = \"{url}\"\ntimout = \"3s\"\n"),
    );
    let mut cmd = narunctl_cmd(home.path());
    cmd.arg("--context-file").arg(&file).args(["apps", "ls"]);
    let out = run(cmd).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: context file {}:5: unknown field `timout`",
            file.display()
        )),
        "{err}"
    );
    std::fs::write(&file, "nats = [\"unclosed\"\n").unwrap();
    let mut cmd = narunctl_cmd(home.path());
    cmd.arg("--context-file").arg(&file).args(["apps", "ls"]);
    let out = run(cmd).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("context file {}:", file.display())),
        "{err}"
    );
    let mut cmd = narunctl_cmd(home.path());
    cmd.args(["--context", "nope", "apps", "ls"]);
    let out = run(cmd).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("context \"nope\"") && err.contains("dead, lab"),
        "{err}"
    );
    // An explicitly named file that does not exist is an error; a missing default is not.
    let mut cmd = narunctl_cmd(home.path());
    cmd.args(["--context-file", "/nonexistent/narun.toml", "apps", "ls"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = narunctl_cmd(empty.path());
    cmd.args(["--nats", &url, "apps", "ls", "--json"]);
    let out = run(cmd).await;
    assert!(out.status.success(), "no file: {}", text(&out.stderr));
}
