//! The one check of narund's configuration, after flags and environment are applied, that
//! `narund --check-config`, a start and a `SIGHUP` reload all run ([`check`]): what a start
//! would refuse, `--check-config` refuses too, with every problem at once, each line starting
//! with the setting it is about.
//!
//! Beyond [`Config::validate`] (values and combinations), it looks at the machine, and
//! changes nothing there:
//!
//! * `data_dir`, `runtime_dir`: an existing directory narund may write into, or a path whose
//!   deepest existing parent is one (narund creates the rest);
//! * `[nats]`: every URL parses; `creds`, `nkey_seed`, `tls_ca`, `tls_cert`, `tls_key` are
//!   absolute paths of readable files, and `creds` is a credentials file;
//! * `[cgroup]`: with cgroups enabled (the default), the root (configured or derived from
//!   narund's own cgroup) is below the cgroup2 mount and writable
//!   ([`CgroupRoot::locate`]); never a silent fallback to no cgroups;
//! * `[gateway]` (builds with the gateway): the gRPC and HTTP TLS certificates and keys load,
//!   and so do the routes' JWT key files (`auth.jwt.keys`).
//!
//! [`effective`] renders what `--check-config` prints: the settings narund would run with, as
//! TOML, with the facts found (cgroup root, who holds the locks) as comments.

use crate::cgroup::{CgroupRoot, RootLocation, RootOrigin};
use crate::config::Config;
use std::io;
use std::path::Path;

/// What [`check`] found that a start uses.
#[derive(Debug)]
pub struct Checked {
    /// Where the instance cgroups go (`None`: `[cgroup] enabled = false`).
    pub cgroup_root: Option<RootLocation>,
}

/// Check `config` (flags and environment applied). `Err`: every problem, one per entry,
/// each starting with its key (`nats.creds: cannot read …`).
pub fn check(config: &Config) -> Result<Checked, Vec<String>> {
    let mut problems: Vec<String> = match config.validate() {
        Ok(()) => Vec::new(),
        Err(p) => p.lines().map(str::to_owned).collect(),
    };
    if config.node_id_origin
        == crate::config::NodeIdOrigin::Derived(narun_wire::node_id::NodeIdSource::Hostname)
    {
        for p in problems.iter_mut().filter(|p| p.starts_with("node_id:")) {
            p.push_str(
                " (the host name, used because node_id is not set and neither node_id_file nor \
                 /etc/machine-id give one: set node_id or --node-id, or provision node_id_file)",
            );
        }
    }
    for (key, dir) in [
        ("data_dir", &config.data_dir),
        ("runtime_dir", &config.runtime_dir),
    ] {
        if dir.is_absolute()
            && let Err(p) = writable_dir(dir)
        {
            problems.push(format!("{key}: {p}"));
        }
    }
    check_nats(config, &mut problems);
    #[cfg(feature = "gateway")]
    if config.gateway.enabled
        && let (Some(cert), Some(key)) =
            (&config.gateway.grpc_tls_cert, &config.gateway.grpc_tls_key)
        && let Err(errs) = narun_gateway::tls::server_config(cert, key)
    {
        problems.extend(errs.to_string().lines().map(str::to_owned));
    }
    #[cfg(feature = "gateway")]
    if config.gateway.enabled
        && let (Some(cert), Some(key)) =
            (&config.gateway.http_tls_cert, &config.gateway.http_tls_key)
        && let Err(errs) = narun_gateway::tls::http_server_config(cert, key)
    {
        problems.extend(errs.to_string().lines().map(str::to_owned));
    }
    #[cfg(feature = "gateway")]
    if config.gateway.enabled
        && let Some(acme) = &config.gateway.acme
        && let Err(errs) = narun_gateway::acme::preflight(acme)
    {
        problems.extend(errs.to_string().lines().map(str::to_owned));
    }
    #[cfg(feature = "gateway")]
    if config.gateway.enabled
        && let Err(errs) = narun_gateway::auth::load_policies(&config.gateway)
    {
        problems.extend(errs.to_string().lines().map(str::to_owned));
    }
    let cgroup_root = if config.cgroup.enabled {
        let configured = config.cgroup.configured_root();
        match CgroupRoot::locate(configured) {
            Ok(loc) => Some(loc),
            Err(e) => {
                let key = if configured.is_some() {
                    "cgroup.root"
                } else {
                    "cgroup"
                };
                problems.push(format!("{key}: {e}"));
                None
            }
        }
    } else {
        None
    };
    if problems.is_empty() {
        Ok(Checked { cgroup_root })
    } else {
        Err(problems)
    }
}

/// `dir` is a directory narund may write into, or can be created (its deepest existing
/// parent is one).
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if existing == dir => {
                return Err(format!("{} is not a directory", dir.display()));
            }
            Ok(_) => {
                return Err(format!(
                    "{} is not a directory (narund would create {} below it)",
                    existing.display(),
                    dir.display()
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match existing.parent() {
                Some(p) => existing = p,
                None => return Err(format!("{}: {e}", dir.display())),
            },
            Err(e) => {
                return Err(format!(
                    "cannot inspect {}: {e}{}",
                    existing.display(),
                    permission_hint(existing, &e)
                ));
            }
        }
    }
    crate::sys::fs::access_writable(existing).map_err(|e| {
        let hint = permission_hint(existing, &e);
        if existing == dir {
            format!("{} is not writable by narund: {e}{hint}", dir.display())
        } else {
            format!(
                "{} does not exist and cannot be created: {} is not writable by narund: {e}{hint}",
                dir.display(),
                existing.display()
            )
        }
    })
}

/// For a permission error (`EACCES`, `EPERM`) on `path`: ` (it is owned by …, mode …;
/// narund runs as …: …what to do)`; nothing for other errors.
pub(crate) fn permission_hint(path: &Path, e: &io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    if e.kind() != io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = |uid: u32| -> String {
        match crate::privileges::lookup_passwd(&passwd, &uid.to_string()) {
            Some(p) if p.uid == uid => format!("{} (uid {uid})", p.name),
            _ => format!("uid {uid}"),
        }
    };
    let me = crate::sys::process::geteuid();
    // The path itself, or the deepest parent narund may look at.
    let owner = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)))
        .map(|(p, m)| {
            format!(
                "{} is owned by {}, mode {:04o}; ",
                if p == path {
                    "it".to_owned()
                } else {
                    format!("its parent {}", p.display())
                },
                name(m.uid()),
                m.mode() & 0o7777
            )
        })
        .unwrap_or_default();
    format!(
        " ({owner}narund runs as {}: give that user write access, e.g. `chown {} {}`, or point \
         narund at directories it may write: data_dir/runtime_dir (--data-dir, --runtime-dir))",
        name(me),
        me,
        path.display()
    )
}

fn check_nats(config: &Config, problems: &mut Vec<String>) {
    let nats = &config.nats;
    if let Err(e) = nats.server_addrs() {
        problems.push(format!("nats.url: {}", settings_text(&e)));
    }
    for (key, path) in [
        ("creds", &nats.creds),
        ("nkey_seed", &nats.nkey_seed),
        ("tls_ca", &nats.tls_ca),
        ("tls_cert", &nats.tls_cert),
        ("tls_key", &nats.tls_key),
    ] {
        let Some(path) = path else { continue };
        if !path.is_absolute() {
            problems.push(format!(
                "nats.{key}: {} is a relative path (it would depend on narund's working \
                 directory); set an absolute path",
                path.display()
            ));
            continue;
        }
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("nats.{key}: cannot read {}: {e}", path.display()));
                continue;
            }
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            problems.push(format!("nats.{key}: {} is empty", path.display()));
        } else if key == "creds"
            && let Err(e) =
                async_nats::ConnectOptions::with_credentials(&String::from_utf8_lossy(&text))
        {
            problems.push(format!(
                "nats.creds: {} is not a NATS credentials file (user JWT and nkey seed): {e}",
                path.display()
            ));
        }
    }
}

/// A wire `ConnectError::Settings` without its `NATS settings: ` prefix.
fn settings_text(e: &narun_wire::connect::ConnectError) -> String {
    let t = e.to_string();
    t.strip_prefix("NATS settings: ").unwrap_or(&t).to_owned()
}

/// The `# open files` comment of [`effective`]: narund's `RLIMIT_NOFILE` now and after the
/// raise at start, and what an app whose spec is silent gets ([`crate::nofile`]).
fn open_files(nofile_max: u64) -> String {
    let (soft, hard) = match crate::sys::rlimit::nofile() {
        Ok(l) => l,
        Err(e) => return format!("# open files (RLIMIT_NOFILE): cannot read: {e}\n"),
    };
    let mut line = format!(
        "# open files (RLIMIT_NOFILE): narund soft {soft}, hard {hard} (a start raises the soft \
         limit to {hard})"
    );
    if let Ok((app_soft, app_hard)) = crate::nofile::for_app(None, nofile_max, hard) {
        line.push_str(&format!(
            "; apps get soft {app_soft}, hard {app_hard} (a spec's nofileMax may ask for less)"
        ));
    }
    if nofile_max > hard {
        line.push_str(&format!(
            "; apps.nofile_max = {nofile_max} is above narund's hard limit: apps get at most {hard}"
        ));
    }
    line.push('\n');
    line
}

/// What `narund --check-config` prints for a valid configuration: the facts [`check`] found
/// and who holds the locks, as `#` comments, then every setting (defaults filled in, flags
/// and environment applied) as TOML, the NATS password redacted.
pub fn effective(config: &Config, checked: &Checked) -> String {
    let mut out = String::from(
        "# narund: configuration OK. Effective settings (file, then environment and flags,\n\
         # defaults filled in):\n",
    );
    if let crate::config::NodeIdOrigin::Derived(source) = &config.node_id_origin {
        out.push_str(&format!(
            "# node_id: {} (from {source}; node_id is not set)\n",
            config.node_id
        ));
    }
    match &checked.cgroup_root {
        None => out
            .push_str("# cgroups: disabled ([cgroup] enabled = false): apps run without cgroups\n"),
        Some(loc) => {
            let how = match loc.origin() {
                RootOrigin::Configured => "configured".to_owned(),
                o => format!(
                    "derived ({o:?}) from the cgroup of this process; narund derives it from its own"
                ),
            };
            let exists = if loc.path().is_dir() {
                "exists"
            } else {
                "created at start"
            };
            out.push_str(&format!(
                "# cgroup root: {} ({how}; {exists}; cgroup2 at {}, {} layout)\n",
                loc.path().display(),
                loc.mount_point().display(),
                loc.layout()
            ));
            if let Some(pid) = crate::lock::holder_of_cgroup_root(loc.path()) {
                out.push_str(&format!(
                    "# cgroup root lock: held by pid {pid} (a narund runs on it; a start now would be refused)\n"
                ));
            }
        }
    }
    match crate::lock::holder_of_data_dir(&config.data_dir) {
        Some(pid) => out.push_str(&format!(
            "# data_dir lock: held by pid {pid} (a narund runs on it; a start now would be refused)\n"
        )),
        None => out.push_str("# data_dir lock: free\n"),
    }
    out.push_str(&open_files(config.apps.nofile_max));
    let mut value = match toml::Value::try_from(config) {
        Ok(v) => v,
        Err(e) => return format!("{out}# cannot render the settings as TOML: {e}\n{config:#?}\n"),
    };
    if let Some(p) = value.get_mut("nats").and_then(|n| n.get_mut("password")) {
        *p = toml::Value::String("<redacted>".into());
    }
    if let Some(u) = value.get_mut("nats").and_then(|n| n.get_mut("url")) {
        *u = toml::Value::String(config.nats.url_without_userinfo());
    }
    match toml::to_string_pretty(&value) {
        Ok(t) => out.push_str(&t),
        Err(e) => out.push_str(&format!("# cannot render the settings as TOML: {e}\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn base(dir: &Path) -> Config {
        let mut c = Config {
            node_id: "n1".into(),
            data_dir: dir.join("data"),
            runtime_dir: dir.join("run"),
            ..Default::default()
        };
        c.cgroup.enabled = false;
        c
    }

    #[test]
    fn a_good_config_passes_and_prints_every_setting() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base(dir.path());
        c.nats.user = Some("u".into());
        c.nats.password = Some("hunter2".into());
        let checked = check(&c).unwrap();
        assert!(checked.cgroup_root.is_none());
        let text = effective(&c, &checked);
        assert!(text.contains("node_id = \"n1\""), "{text}");
        assert!(
            text.contains(&format!("data_dir = \"{}\"", c.data_dir.display())),
            "{text}"
        );
        assert!(
            text.contains("[apps]") && text.contains("keep_versions = 3"),
            "{text}"
        );
        assert!(text.contains("enabled = false"), "{text}");
        assert!(
            text.contains("<redacted>") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(text.contains("# data_dir lock: free"), "{text}");
        let (_, hard) = crate::sys::rlimit::nofile().unwrap();
        assert!(
            text.contains("# open files (RLIMIT_NOFILE): narund soft ")
                && text.contains(&format!(
                    "hard {hard} (a start raises the soft limit to {hard})"
                ))
                && text.contains(&format!(
                    "apps get soft {}, hard {}",
                    1024.min(hard.min(524_288)),
                    hard.min(524_288)
                ))
                && text.contains("nofile_max = 524288"),
            "{text}"
        );
        // What it prints is a configuration narund reads back to the same settings.
        let toml: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let back = Config::from_toml(&toml).unwrap();
        assert_eq!(back.data_dir, c.data_dir);
        assert_eq!(back.node_id, c.node_id);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base(dir.path());
        c.node_id = "x".repeat(5000);
        c.data_dir = "var/lib/narun".into();
        c.runtime_dir = PathBuf::new();
        c.nats.url = "http://a:1".into();
        c.nats.creds = Some(dir.path().join("missing.creds"));
        c.cgroup.root = Some("/etc".into());
        let p = check(&c).unwrap_err().join("\n");
        for want in [
            "node_id: is 5000 bytes long",
            "data_dir: var/lib/narun is a relative path",
            "runtime_dir: is empty",
            "nats.url: ",
            "nats.creds: cannot read",
            "cgroup.root: is set, but cgroup.enabled = false",
        ] {
            assert!(p.contains(want), "{want:?} missing in:\n{p}");
        }
    }

    #[cfg(feature = "gateway")]
    #[test]
    fn gateway_tls_and_jwt_key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base(dir.path());
        c.gateway = narun_gateway::GatewayConfig::from_toml(
            "[gateway]\nenabled = true\nhttp_tls_cert = \"/nonexistent/c.pem\"\n\
             http_tls_key = \"/nonexistent/k.pem\"\n[[gateway.routes]]\npath = \"/a/\"\n\
             service = \"a\"\n[gateway.routes.auth.jwt]\n\
             keys = [{ alg = \"RS256\", file = \"/nonexistent/jwt.pub\" }]\n",
        )
        .unwrap();
        let p = check(&c).unwrap_err().join("\n");
        for want in [
            "gateway.http_tls_cert: cannot read \"/nonexistent/c.pem\"",
            "gateway.routes[0].auth.jwt.keys[0].file: cannot read \"/nonexistent/jwt.pub\"",
        ] {
            assert!(p.contains(want), "{want:?} missing in:\n{p}");
        }
    }

    #[cfg(feature = "acme")]
    #[test]
    fn gateway_acme_and_jobs_auth_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base(dir.path());
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        c.gateway = narun_gateway::GatewayConfig::from_toml(&format!(
            "[gateway]\nenabled = true\n[gateway.acme]\naccept_terms = true\n\
             domains = [\"a.example\"]\nca_file = \"/nonexistent/ca.pem\"\ncache_dir = {file:?}\n\
             [gateway.jobs.auth.jwt]\nkeys = [{{ alg = \"RS256\", file = \"/nonexistent/ops.pub\" }}]\n"
        ))
        .unwrap();
        let p = check(&c).unwrap_err().join("\n");
        for want in [
            "gateway.acme.ca_file: cannot read \"/nonexistent/ca.pem\"",
            "gateway.acme.cache_dir: ",
            "exists and is not a directory",
            "gateway.jobs.auth.jwt.keys[0].file: cannot read \"/nonexistent/ops.pub\"",
        ] {
            assert!(p.contains(want), "{want:?} missing in:\n{p}");
        }
    }

    #[test]
    fn nats_files_must_be_absolute_readable_and_creds_must_parse() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base(dir.path());
        let junk = dir.path().join("junk.creds");
        std::fs::write(&junk, "not a creds file").unwrap();
        c.nats.creds = Some(junk);
        c.nats.tls_ca = Some("ca.pem".into());
        c.nats.tls_cert = Some(dir.path().to_path_buf());
        c.nats.tls_key = Some(dir.path().join("empty.pem"));
        std::fs::write(dir.path().join("empty.pem"), "\n").unwrap();
        let p = check(&c).unwrap_err().join("\n");
        for want in [
            "nats.creds: ",
            "is not a NATS credentials file",
            "nats.tls_ca: ca.pem is a relative path",
            "nats.tls_cert: cannot read",
            "nats.tls_key: ",
            "is empty",
        ] {
            assert!(p.contains(want), "{want:?} missing in:\n{p}");
        }
    }

    #[test]
    fn directories_must_be_creatable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let mut c = base(dir.path());
        c.data_dir = file.join("data");
        c.runtime_dir = file.clone();
        let p = check(&c).unwrap_err().join("\n");
        assert!(
            p.contains("data_dir: ") && p.contains("is not a directory"),
            "{p}"
        );
        assert!(p.contains("runtime_dir: "), "{p}");
        // Missing but creatable is fine.
        let mut c = base(dir.path());
        c.data_dir = dir.path().join("a/b/c");
        check(&c).unwrap();
    }

    #[test]
    fn a_cgroup_root_outside_cgroup2_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = base(dir.path());
        c.cgroup.enabled = true;
        c.cgroup.root = Some("/etc".into());
        let p = check(&c).unwrap_err().join("\n");
        assert!(
            p.contains("cgroup.root: /etc is not a directory on the cgroup2"),
            "{p}"
        );
    }
}
