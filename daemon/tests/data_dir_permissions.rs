//! A data dir narund may not write, or a lock file in it that another user owns: the
//! refusal names the path, its owner and mode, the user narund runs as, and what to do
//! (docs/config.md, "Checking a configuration"). The
//! real `narund` binary, as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (dropped
//! from the bounding set by util-linux `setpriv`), so the kernel answers EACCES as it
//! would for any other user.

use narun_test_support::{T, workspace_bin};
use std::os::unix::fs::PermissionsExt;

/// `narund ARGS --config CONFIG` as root without the DAC capabilities: exit code, stderr.
async fn narund_without_dac(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new("setpriv")
            .args([
                "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-dac_override,-dac_read_search",
                "--",
            ])
            .arg(workspace_bin("narund", "narund", &[]))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("NARUND_LOG", "warn")
            .env_remove("NARUND_DATA_DIR")
            .env_remove("NARUND_RUNTIME_DIR")
            .env_remove("NARUND_NODE_ID")
            .env_remove("NATS_URL")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("narund refuses within T")
    .expect("setpriv runs narund");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A narund.toml in `dir` for `data` (no cgroups, NATS nowhere: nothing gets that far).
fn config_for(dir: &std::path::Path, data: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("narund.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"perm\"\ndata_dir = \"{}\"\nruntime_dir = \"{}/run\"\n\
             [nats]\nurl = \"nats://127.0.0.1:1\"\n[cgroup]\nenabled = false\n",
            data.display(),
            dir.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn a_lock_file_of_another_user_is_refused_with_owner_user_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The data dir is writable by anyone, but the lock file left by narund running as
    // nobody before is not writable by root without CAP_DAC_OVERRIDE.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let lock = data.join("narund.lock");
    std::fs::write(&lock, "").unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = config_for(dir.path(), &data);
    let (code, err) = narund_without_dac(&[], &config).await;
    assert_ne!(code, Some(0), "{err}");
    for want in [
        &format!("cannot open {}: Permission denied", lock.display()),
        "it is owned by nobody (uid 65534), mode 0644",
        "narund runs as root (uid 0)",
        &format!("`chown 0 {}`", lock.display()),
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
}

#[tokio::test]
async fn an_unwritable_data_dir_is_refused_with_owner_user_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Owned by nobody, private: root without the DAC capabilities cannot write it.
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = config_for(dir.path(), &data);
    for args in [&["--check-config"][..], &[]] {
        let (code, err) = narund_without_dac(args, &config).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with("data_dir:"))
            .unwrap_or_else(|| panic!("{args:?}: no data_dir line in {err}"));
        for want in [
            &format!(
                "{} is not writable by narund: Permission denied",
                data.display()
            ),
            "it is owned by nobody (uid 65534), mode 0700",
            "narund runs as root (uid 0)",
            &format!("`chown 0 {}`", data.display()),
            "--data-dir",
        ] {
            assert!(line.contains(want), "{args:?}: {want:?} not in {line}");
        }
    }
}
