//! A data dir narund may not write: the refusal names the path, its owner and mode, the
//! user narund runs as, and what to do (docs/config.md, "Checking a configuration"). The
//! real `narund` binary, as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (dropped
//! from the bounding set by util-linux `setpriv`), so the kernel answers EACCES as it
//! would for any other user.

use narun_test_support::{T, workspace_bin};
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn an_unwritable_data_dir_is_refused_with_owner_user_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Owned by nobody, private: root without the DAC capabilities cannot write it.
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("narund.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"perm\"\ndata_dir = \"{}\"\nruntime_dir = \"{}/run\"\n\
             [nats]\nurl = \"nats://127.0.0.1:1\"\n[cgroup]\nenabled = false\n",
            data.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    for args in [&["--check-config"][..], &[]] {
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
                .arg(&config)
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
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
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
