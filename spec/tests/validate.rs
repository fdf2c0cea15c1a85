//! Validation: one case per rule (each fails if its rule is removed), all
//! errors at once, narund support, warnings, examples.

use std::collections::BTreeMap;
use std::path::PathBuf;

use narun_spec::{
    AppSpec, EnvVar, LandlockPath, LogOverflow, Mode, MountSpec, NodeSelector, PortForward,
    RestartPolicy, Signal,
};

/// A valid spec touching every block, so each case breaks exactly one rule.
fn base() -> AppSpec {
    let spec = AppSpec::from_yaml_str(
        r#"
name: app_1-x
tag: v1.2.3-rc.1_b
args: [--flag]
env:
  - {name: A, value: "1"}
  - {name: S, valueFromSecret: ns/secret.key}
nodes:
  - {name: n1, replicas: 1}
  - {labels: {role: edge}, replicas: 2}
mounts: [{path: conf/app.toml, source: {objectStore: app-conf}}]
nonet: {localPorts: [{port: 4222}]}
metrics: {port: 9100}
user: app
memoryMB: 10
memoryMaxMB: 20
cpuCores: 0.5
cgroupParent: narun.slice
networkNamespacePath: /run/netns/a
pidsMax: 10
cpuWeight: 100
capabilities: [CAP_NET_RAW]
notify: true
watchdogSec: 5
"#,
    )
    .unwrap();
    spec.validate().expect("the base spec is valid");
    spec
}

/// Break `base()` with `mutate`; expect exactly one error, at `path`, whose
/// message contains `needle`.
#[track_caller]
fn rejects(path: &str, needle: &str, mutate: impl FnOnce(&mut AppSpec)) {
    let mut spec = base();
    mutate(&mut spec);
    let errors = match spec.validate() {
        Ok(()) => panic!("expected an error at {path}, the spec was accepted"),
        Err(e) => e,
    };
    assert_eq!(
        errors.errors().len(),
        1,
        "expected one error at {path}:\n{errors}"
    );
    let e = &errors.errors()[0];
    assert_eq!(e.path, path, "{errors}");
    assert!(
        e.message.contains(needle),
        "{e} does not contain {needle:?}"
    );
}

#[track_caller]
fn accepts(mutate: impl FnOnce(&mut AppSpec)) {
    let mut spec = base();
    mutate(&mut spec);
    if let Err(e) = spec.validate() {
        panic!("expected valid, got:\n{e}");
    }
}

#[test]
fn name_rules() {
    rejects("name", "is required", |s| s.name.clear());
    rejects("name", "^[A-Za-z0-9_-]+$", |s| s.name = "a.b".into());
    rejects("name", "^[A-Za-z0-9_-]+$", |s| s.name = "a*".into());
    rejects("name", "^[A-Za-z0-9_-]+$", |s| s.name = "a b".into());
    rejects("name", "^[A-Za-z0-9_-]+$", |s| s.name = "é".into());
    rejects("name", "at most 64", |s| s.name = "a".repeat(65));
    accepts(|s| s.name = "a".repeat(64));
}

#[test]
fn tag_rules() {
    rejects("tag", "is required", |s| s.tag.clear());
    rejects("tag", "part of the binary object name", |s| {
        s.tag = "v1/2".into()
    });
    rejects("tag", "part of the binary object name", |s| {
        s.tag = "v1 2".into()
    });
    rejects("tag", "at most 128", |s| s.tag = "1".repeat(129));
    accepts(|s| s.tag = "1.0".into());
}

#[test]
fn mode_rules() {
    rejects("mode", "must be exec, landlock, jail or command", |s| {
        s.mode = Mode::Other("docker".into())
    });
    accepts(|s| s.mode = Mode::Landlock);
    accepts(|s| s.mode = Mode::Jail);
}

#[test]
fn args_rules() {
    rejects("args[0]", "NUL", |s| s.args[0] = "a\0b".into());
}

#[test]
fn env_rules() {
    rejects("env[1].name", "is required", |s| s.env[1].name.clear());
    rejects("env[0].name", "must not contain '=' or ' '", |s| {
        s.env[0].name = "A=B".into()
    });
    rejects("env[0].name", "must not contain '=' or ' '", |s| {
        s.env[0].name = "A B".into()
    });
    rejects("env[0]", "mutually exclusive", |s| {
        s.env[0].value_from_secret = "x".into()
    });
    rejects("env[0].value", "NUL", |s| s.env[0].value = "\0".into());
    rejects("env[1].valueFromSecret", "secret name", |s| {
        s.env[1].value_from_secret = "a secret".into()
    });
    rejects("env[1].valueFromSecret", "secret name", |s| {
        s.env[1].value_from_secret = ".hidden".into()
    });
    // Both empty is allowed (sets ""), as in Go.
    accepts(|s| s.env.push(EnvVar::value("EMPTY", "")));
}

#[test]
fn node_rules() {
    rejects("nodes[0].replicas", "must be > 0", |s| {
        s.nodes[0].replicas = 0
    });
    rejects("nodes[1].replicas", "must be > 0", |s| {
        s.nodes[1].replicas = -3
    });
    rejects("nodes[0].replicas", "at most", |s| {
        s.nodes[0].replicas = i64::from(u32::MAX) + 1
    });
    rejects("nodes[0].name", "must not be empty", |s| {
        s.nodes[0].name = Some(" ".into())
    });
    rejects("nodes[2].name", "duplicate node name \"n1\"", |s| {
        s.nodes.push(NodeSelector::by_name("n1", 1))
    });
    rejects("nodes[0]", "not both", |s| {
        s.nodes[0].labels = Some(BTreeMap::new())
    });
    rejects("nodes[1]", "exactly one of name", |s| {
        s.nodes[1].labels = None
    });
    rejects("nodes[2].labels", "same labels as nodes[1]", |s| {
        s.nodes.push(NodeSelector::by_labels([("role", "edge")], 5))
    });
    rejects("nodes[1].labels", "label key", |s| {
        s.nodes[1] = NodeSelector::by_labels([("a b", "x")], 1)
    });
    // No nodes at all is valid (runs nowhere), as in Go.
    accepts(|s| s.nodes.clear());
    // Selecting every node.
    accepts(|s| {
        s.nodes
            .push(NodeSelector::by_labels(Vec::<(String, String)>::new(), 1))
    });
}

#[test]
fn landlock_rules_apply_only_in_landlock_mode() {
    let bad_paths = |s: &mut AppSpec| {
        s.landlock.paths = vec![
            LandlockPath {
                path: String::new(),
                modes: "r".into(),
            },
            LandlockPath {
                path: "/x".into(),
                modes: String::new(),
            },
            LandlockPath {
                path: "/y".into(),
                modes: "rq".into(),
            },
        ]
    };
    accepts(bad_paths);
    let mut spec = base();
    bad_paths(&mut spec);
    spec.mode = Mode::Landlock;
    let errors = spec.validate().unwrap_err();
    let paths: Vec<&str> = errors.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "landlock.paths[0].path",
            "landlock.paths[1].modes",
            "landlock.paths[2].modes"
        ]
    );
    assert!(errors.errors()[2].message.contains("'q'"), "{errors}");
}

#[test]
fn mount_rules() {
    rejects("mounts[0].path", "must not be empty", |s| {
        s.mounts[0].path.clear()
    });
    rejects("mounts[0].path", "not absolute", |s| {
        s.mounts[0].path = "/etc/passwd".into()
    });
    rejects("mounts[0].path", "'..'", |s| {
        s.mounts[0].path = "a/../../x".into()
    });
    rejects("mounts[0].source.objectStore", "is required", |s| {
        s.mounts[0].source.object_store.clear()
    });
    rejects("mounts[1].path", "duplicate", |s| {
        let m: MountSpec = s.mounts[0].clone();
        s.mounts.push(m)
    });
    accepts(|s| s.mounts[0].path = "a/..b/c".into());
}

#[test]
fn port_rules() {
    rejects("nonet.localPorts[0].port", "between 1025 and 65535", |s| {
        s.nonet.local_ports[0].port = 53
    });
    rejects("nonet.localPorts[0].port", "between 1025 and 65535", |s| {
        s.nonet.local_ports[0].port = 1024
    });
    rejects("nonet.localPorts[0].port", "between 1025 and 65535", |s| {
        s.nonet.local_ports[0].port = 65536
    });
    rejects("nonet.localPorts[1].protocol", "tcp or udp", |s| {
        s.nonet.local_ports.push(PortForward {
            port: 2000,
            protocol: "sctp".into(),
        })
    });
    accepts(|s| s.nonet.local_ports[0].port = 1025);
    accepts(|s| s.nonet.local_ports[0].port = 65535);
    rejects("metrics.port", "between 1 and 65535", |s| {
        s.metrics.port = 70000
    });
    rejects("metrics.port", "between 1 and 65535", |s| {
        s.metrics.port = -1
    });
    rejects("metrics.path", "start with '/'", |s| {
        s.metrics.path = "metrics".into()
    });
    accepts(|s| s.metrics.port = 0);
}

#[test]
fn resource_rules() {
    rejects("memoryMaxMB", "must be >= memoryMB (10)", |s| {
        s.memory_max_mb = 5
    });
    accepts(|s| s.memory_max_mb = 0);
    accepts(|s| s.memory_max_mb = 10);
    rejects("cpuCores", "must be >= 0", |s| s.cpu_cores = -0.5);
    rejects("cpuCores", "finite", |s| s.cpu_cores = f64::NAN);
    rejects("cpuCores", "finite", |s| s.cpu_cores = f64::INFINITY);
    rejects("pidsMax", "must be > 0", |s| s.pids_max = Some(0));
    rejects(
        "nofileMax",
        "must be > 0 (leave it out for the node's default, apps.nofile_max)",
        |s| s.nofile_max = Some(0),
    );
    accepts(|s| s.nofile_max = Some(1));
    accepts(|s| s.nofile_max = Some(65_536));
    rejects("cpuWeight", "between 1 and 10000", |s| {
        s.cpu_weight = Some(0)
    });
    rejects("cpuWeight", "between 1 and 10000", |s| {
        s.cpu_weight = Some(10_001)
    });
    rejects("capabilities[1]", "unknown Linux capability", |s| {
        s.capabilities.push("CAP_FLY".into())
    });
    rejects("user", "user name", |s| s.user = "a:b".into());
    rejects("user", "user name", |s| s.user = " ".into());
    accepts(|s| s.user = "1000".into());
    rejects("networkNamespacePath", "absolute", |s| {
        s.network_namespace_path = "netns/a".into()
    });
    rejects("cgroupParent", "'..'", |s| s.cgroup_parent = "../x".into());
}

#[test]
fn lifecycle_rules() {
    rejects("restart", "must be one of no, on-success", |s| {
        s.restart = RestartPolicy::Other("sometimes".into())
    });
    rejects(
        "logOverflow",
        "must be one of drop, block, got \"wait\"",
        |s| s.log_overflow = LogOverflow::Other("wait".into()),
    );
    accepts(|s| s.log_overflow = LogOverflow::Block);
    rejects("startLimitBurst", "must be > 0", |s| {
        s.start_limit_burst = 0
    });
    accepts(|s| s.start_limit_interval_sec = 0);
    rejects("watchdogSec", "must be > 0", |s| s.watchdog_sec = Some(0));
    rejects("watchdogSec", "requires notify: true", |s| s.notify = false);
    accepts(|s| s.watchdog_sec = None);
    rejects("startTimeoutSec", "must be > 0", |s| {
        s.start_timeout_sec = 0
    });
    rejects("stopTimeoutSec", "must be > 0", |s| s.stop_timeout_sec = 0);
    rejects("stopSignal", "unknown signal", |s| {
        s.stop_signal = Signal::parse("SIGFOO")
    });
    rejects("stopSignal", "unknown signal", |s| {
        s.stop_signal = Signal::parse("64")
    });
    rejects("stopSignal", "instead of stopping", |s| {
        s.stop_signal = Signal::parse("STOP")
    });
    accepts(|s| s.stop_signal = Signal::parse("KILL"));
    rejects("settleSec", "less than startTimeoutSec", |s| {
        s.notify = false;
        s.watchdog_sec = None;
        s.settle_sec = 90;
    });
    // With notify, readiness is READY=1, settleSec does not matter.
    accepts(|s| s.settle_sec = 90);
}

#[test]
fn every_problem_is_reported_at_once_in_field_order() {
    let spec = AppSpec::from_yaml_str(
        r#"
name: "bad.name"
tag: ""
env:
  - {name: "X=1", value: a, valueFromSecret: b}
nodes:
  - {name: n1, replicas: 2}
  - {name: n1, replicas: 0}
mounts: [{path: /abs, source: {}}]
memoryMB: 10
memoryMaxMB: 5
cpuCores: -1
stopSignal: nope
capabilities: [net_bind_service, fly]
"#,
    )
    .unwrap();
    let errors = spec.validate().unwrap_err();
    let paths: Vec<&str> = errors.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "name",
            "tag",
            "env[0].name",
            "env[0]",
            "nodes[1].name",
            "nodes[1].replicas",
            "mounts[0].path",
            "mounts[0].source.objectStore",
            "cpuCores",
            "memoryMaxMB",
            "capabilities[1]",
            "stopSignal",
        ]
    );
    // Display: one `path: message` per line.
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 12, "{text}");
    assert!(
        text.lines().any(|l| l
            == "nodes[1].replicas: must be > 0, got 0 (remove the entry to run nothing there)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "env[0].name: must not contain '=' or ' '"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("name: must match ^[A-Za-z0-9_-]+$")),
        "{text}"
    );
}

#[test]
fn narund_supports_only_exec() {
    let mut spec = base();
    spec.supported_on_narund().unwrap();
    for mode in [Mode::Landlock, Mode::Jail] {
        spec.mode = mode.clone();
        spec.validate().expect("valid for Go node-runners");
        let e = spec.supported_on_narund().unwrap_err();
        assert_eq!(e.errors().len(), 1);
        assert_eq!(e.errors()[0].path, "mode");
        assert!(
            e.errors()[0].message.contains("not supported by narund"),
            "{e}"
        );
        assert!(e.errors()[0].message.contains(mode.as_str()), "{e}");
    }
}

#[test]
fn computed_warnings() {
    let mut spec = base();
    // base(): a label selector (Go rejects) and nothing else.
    let paths: Vec<String> = spec.warnings().into_iter().map(|w| w.path).collect();
    assert_eq!(paths, ["nodes[1].labels"]);

    spec.cgroup_parent.clear();
    spec.env.push(EnvVar::value("A", "2"));
    let warnings = spec.warnings();
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["nodes[1].labels", "memoryMB", "env[2].name"]);
    assert!(warnings[1].message.contains("cgroupParent"));
    assert!(warnings[2].message.contains("env[0]"));
    // Warnings never make a spec invalid.
    spec.validate().unwrap();
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn examples_are_valid_and_runnable_on_narund() {
    for name in ["hello.toml", "hello.yaml"] {
        let spec = AppSpec::load(example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        spec.supported_on_narund().unwrap();
        assert_eq!(spec.name, "hello");
        let unknown: Vec<_> = spec
            .warnings()
            .into_iter()
            .filter(|w| w.message.starts_with("unknown key"))
            .collect();
        assert_eq!(unknown, [], "{name}");
    }
    // The YAML example is meant for Go node-runners too: no warning at all.
    assert_eq!(
        AppSpec::from_path(example("hello.yaml"))
            .unwrap()
            .warnings(),
        []
    );
}

#[test]
fn desired_replicas_rule() {
    let spec = AppSpec::from_toml_str(
        r#"
name = "a"
tag = "1"
[[nodes]]
labels = { role = "edge" }
replicas = 1
[[nodes]]
labels = { role = "edge", rack = "a" }
replicas = 3
[[nodes]]
labels = { gpu = "true" }
replicas = 2
[[nodes]]
name = "special"
replicas = 7
"#,
    )
    .unwrap();
    spec.validate().unwrap();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // No match.
    assert_eq!(spec.desired_replicas("x", &labels(&[])), 0);
    assert_eq!(spec.desired_replicas("x", &labels(&[("role", "core")])), 0);
    // Subset match; extra node labels do not matter.
    assert_eq!(
        spec.desired_replicas("x", &labels(&[("role", "edge"), ("os", "linux")])),
        1
    );
    // Several label matches: the max, not the sum (1, 3, 2 → 3).
    assert_eq!(
        spec.desired_replicas(
            "x",
            &labels(&[("role", "edge"), ("rack", "a"), ("gpu", "true")])
        ),
        3
    );
    assert_eq!(
        spec.desired_replicas("x", &labels(&[("role", "edge"), ("gpu", "true")])),
        2
    );
    // A value must be equal, not just the key present.
    assert_eq!(
        spec.desired_replicas("x", &labels(&[("role", "edge"), ("rack", "b")])),
        1
    );
    // A name match wins over label matches, even when smaller.
    let mut small = spec.clone();
    small.nodes[3].replicas = 1;
    assert_eq!(
        small.desired_replicas("special", &labels(&[("role", "edge"), ("rack", "a")])),
        1
    );
    assert_eq!(spec.desired_replicas("special", &labels(&[])), 7);
    // Node names are exact (case-sensitive).
    assert_eq!(spec.desired_replicas("Special", &labels(&[])), 0);
}

#[test]
fn empty_label_selector_matches_every_node() {
    let mut spec = AppSpec::new("a", "1");
    spec.nodes
        .push(NodeSelector::by_labels(Vec::<(String, String)>::new(), 2));
    spec.validate().unwrap();
    assert_eq!(spec.desired_replicas("any", &BTreeMap::new()), 2);
}

#[test]
fn invalid_replicas_count_as_zero() {
    let mut spec = AppSpec::new("a", "1");
    spec.nodes.push(NodeSelector::by_name("n", -5));
    assert_eq!(spec.desired_replicas("n", &BTreeMap::new()), 0);
}

#[test]
fn binary_digest_rules() {
    const D: &str = "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=";
    let set = |k: &str, v: &str| {
        let (k, v) = (k.to_string(), v.to_string());
        move |s: &mut AppSpec| {
            s.binary_digests.insert(k, v);
        }
    };
    accepts(set("app_1-x-v1.2.3-rc.1_b-linux-amd64", D));
    accepts(set(
        "app_1-x-v1.2.3-rc.1_b-linux-arm64",
        D.trim_end_matches('='),
    ));
    // An entry of another tag is kept (it pins nothing for this one).
    accepts(set("app_1-x-v0-linux-arm64", D));
    rejects(
        "binaryDigests[\"linux/amd64\"]",
        "object name",
        set("linux/amd64", D),
    );
    rejects("binaryDigests[\"\"]", "object name", set("", D));
    let long = "a".repeat(300);
    rejects(
        &format!("binaryDigests[{long:?}]"),
        "object name",
        set(&long, D),
    );
    rejects(
        "binaryDigests[\"o-linux-arm\"]",
        "SHA-256=",
        set("o-linux-arm", "abc"),
    );
    rejects(
        "binaryDigests[\"o-linux-arm\"]",
        "not a SHA-256 digest",
        set(
            "o-linux-arm",
            "SHA-512=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=",
        ),
    );
    rejects("binaryDigests", "limit of 16", |s| {
        for i in 0..17 {
            s.binary_digests.insert(format!("o-linux-a{i}"), D.into());
        }
    });
}

#[test]
fn command_units_are_run_by_narund_and_their_block_is_checked() {
    let spec = AppSpec::from_toml_str(
        "name = \"echo\"\ntag = \"v1\"\nmode = \"command\"\n[commandUnit]\nmaxConcurrent = 2\ntimeoutSec = 5\noutputHeaders = true\n",
    )
    .unwrap();
    assert_eq!(spec.mode, narun_spec::Mode::Command);
    assert_eq!(spec.command_unit.max_concurrent(), 2);
    assert_eq!(
        spec.command_unit.max_queued(),
        narun_spec::DEFAULT_MAX_QUEUED
    );
    spec.validate().unwrap();
    spec.supported_on_narund().unwrap();
    assert!(spec.warnings().is_empty(), "{:?}", spec.warnings());
    // Out of range, and sd_notify (a run is not a service).
    let bad = AppSpec::from_toml_str(
        "name = \"echo\"\ntag = \"v1\"\nmode = \"command\"\nnotify = true\n[commandUnit]\nmaxConcurrent = 0\ntimeoutSec = 0\nmaxOutputBytes = 100000000\n",
    )
    .unwrap();
    let text = bad.validate().unwrap_err().to_string();
    assert!(
        text.contains("notify: is not used with mode: command"),
        "{text}"
    );
    assert!(
        text.contains("commandUnit.maxConcurrent: must be between 1 and 1024, got 0"),
        "{text}"
    );
    assert!(
        text.contains("commandUnit.timeoutSec: must be between 1 and 86400, got 0"),
        "{text}"
    );
    // A command unit is not a scheduled job.
    let both = AppSpec::from_toml_str(
        "name = \"echo\"\ntag = \"v1\"\nmode = \"command\"\nrunMode = \"job\"\nschedule = \"* * * * *\"\n",
    )
    .unwrap();
    let both_text = both.validate().unwrap_err().to_string();
    assert!(
        both_text.contains("runMode: \"job\" cannot be combined with mode: command"),
        "{both_text}"
    );
    assert!(
        text.contains("commandUnit.maxOutputBytes: must be between 1 and 67108864"),
        "{text}"
    );
    // The block without the mode is a warning, not an error.
    let exec =
        AppSpec::from_toml_str("name = \"echo\"\ntag = \"v1\"\n[commandUnit]\nmaxConcurrent = 2\n")
            .unwrap();
    exec.validate().unwrap();
    assert!(
        exec.warnings()
            .iter()
            .any(|w| w.path == "commandUnit" && w.message.contains("only used with mode: command"))
    );
}

#[test]
fn the_command_unit_example_is_valid_without_warnings() {
    let spec = AppSpec::from_path(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/command.toml"),
    )
    .unwrap();
    spec.validate().unwrap();
    spec.supported_on_narund().unwrap();
    assert_eq!(spec.mode, narun_spec::Mode::Command);
    assert_eq!(spec.command_unit.timeout_sec(), 10);
    assert!(spec.warnings().is_empty(), "{:?}", spec.warnings());
}
