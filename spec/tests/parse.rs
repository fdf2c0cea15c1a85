//! Parsing: Go compatibility, formats, round trips, warnings, error locations.

use std::collections::BTreeMap;
use std::path::PathBuf;

use narun_spec::{
    AppSpec, EnvVar, Format, Mode, NodeSelector, ParseError, RestartPolicy, SpecLoadError,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn go_reference_example_parses_with_every_field() {
    let spec = AppSpec::from_path(data("tests/data/go-reference.yaml")).unwrap();
    assert_eq!(spec.name, "hello");
    assert_eq!(spec.tag, "v13");
    assert_eq!(spec.command, "...");
    assert_eq!(spec.args, ["-concurrency=2"]);
    assert_eq!(
        spec.env,
        [
            EnvVar::value("GREETING", "Hello"),
            EnvVar::from_secret("SECRET", "SECRET")
        ]
    );
    assert_eq!(spec.nodes, [NodeSelector::by_name("node-1", 2)]);
    assert_eq!(spec.mode, Mode::Exec);
    assert_eq!(spec.landlock.paths.len(), 1);
    assert_eq!(spec.landlock.paths[0].path, "/etc/issue");
    assert_eq!(spec.landlock.paths[0].modes, "r");
    assert_eq!(spec.jail.devfs_ruleset, 0);
    assert!(spec.jail.ip4_addresses.is_empty());
    assert_eq!(spec.mounts.len(), 1);
    assert_eq!(spec.mounts[0].path, "mydata");
    assert_eq!(spec.mounts[0].source.object_store, "myfile");
    assert_eq!(spec.nonet.local_ports.len(), 1);
    assert_eq!(spec.nonet.local_ports[0].port, 4222);
    assert_eq!(spec.nonet.local_ports[0].protocol, "tcp");
    assert_eq!(spec.metrics.port, 8888);
    assert_eq!(spec.metrics.path, "/metrics");
    assert_eq!(spec.user, "akh");
    assert_eq!(spec.memory_mb, 0);
    assert_eq!(spec.cpu_cores, 0.0);
    // The Go example uses only known keys.
    assert_eq!(spec.warnings(), []);
    spec.validate().unwrap();
    spec.supported_on_narund().unwrap();
    // narun additions take their defaults.
    assert_eq!(spec.restart, RestartPolicy::OnFailure);
    assert_eq!(spec.start_limit_burst, 5);
    assert_eq!(spec.start_limit_interval_sec, 10);
    assert_eq!(spec.start_timeout_sec, 90);
    assert_eq!(spec.settle_sec, 2);
    assert_eq!(spec.stop_signal.as_str(), "SIGTERM");
    assert_eq!(spec.stop_signal.number(), Some(15));
    assert_eq!(spec.stop_timeout_sec, 10);
}

#[test]
fn go_cli_flag_form_without_mode_is_valid() {
    // What `narun deploy -name hello -tag v1` stores (yaml.Marshal output).
    let yaml = "name: hello\ntag: v1\nnodes:\n    - name: local\n      replicas: 1\n";
    let spec = AppSpec::from_kv_bytes(yaml.as_bytes()).unwrap();
    assert_eq!(spec.mode, Mode::Exec);
    assert_eq!(spec.nodes, [NodeSelector::by_name("local", 1)]);
    spec.validate().unwrap();
    spec.supported_on_narund().unwrap();
    assert_eq!(spec.warnings(), []);
    // Re-stored by narunctl, `mode` is written so Go node-runners accept it.
    let json = String::from_utf8(spec.to_kv_json()).unwrap();
    assert!(json.contains("\"mode\": \"exec\""), "{json}");
}

#[test]
fn go_cpucores_typo_is_a_warning_with_a_hint() {
    let yaml = "name: hello\ntag: v4\nCPUCores: 0.1\nnodes:\n  - name: n1\n    replicas: 1\n    replica: 3\n";
    let spec = AppSpec::from_yaml_str(yaml).unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.cpu_cores, 0.0, "Go ignores CPUCores, so do we");
    let warnings = spec.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0].path, "CPUCores");
    assert!(
        warnings[0].message.contains("did you mean \"cpuCores\""),
        "{}",
        warnings[0].message
    );
    assert_eq!(warnings[1].path, "nodes[0].replica");
    assert_eq!(warnings[1].message, "unknown key, ignored");
}

#[test]
fn unknown_keys_are_found_in_every_format_and_nesting() {
    let toml = r#"
        name = "a"
        tag = "1"
        bogus = 1
        [metrics]
        port = 9000
        scheme = "http"
        [[mounts]]
        path = "x"
        source = { objectStore = "o", url = "u" }
    "#;
    let paths: Vec<String> = AppSpec::from_toml_str(toml)
        .unwrap()
        .warnings()
        .into_iter()
        .map(|w| w.path)
        .collect();
    assert_eq!(paths, ["bogus", "metrics.scheme", "mounts[0].source.url"]);

    let json = r#"{"name":"a","tag":"1","nonet":{"localPorts":[{"port":2000,"proto":"udp"}]}}"#;
    let paths: Vec<String> = AppSpec::from_kv_bytes(json.as_bytes())
        .unwrap()
        .warnings()
        .into_iter()
        .map(|w| w.path)
        .collect();
    assert_eq!(paths, ["nonet.localPorts[0].proto"]);
}

#[test]
fn label_maps_are_free_form_not_unknown_keys() {
    let spec = AppSpec::from_yaml_str(
        "name: a\ntag: '1'\nnodes:\n  - labels: {role: edge, rack: 3, gpu: true}\n    replicas: 1\n",
    )
    .unwrap();
    let labels = spec.nodes[0].labels.as_ref().unwrap();
    assert_eq!(labels["rack"], "3");
    assert_eq!(labels["gpu"], "true");
    // Only the Go-compat warning about labels, no unknown-key warning.
    let warnings = spec.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path, "nodes[0].labels");
    assert!(warnings[0].message.contains("Go node-runners reject"));
}

/// A spec with every field set to a non-default value.
fn full_spec() -> AppSpec {
    AppSpec::from_yaml_str(
        r#"
name: full
tag: v2.0.1
command: full
args: ["-a", "--b=c"]
env:
  - {name: A, value: "1"}
  - {name: B, valueFromSecret: b-secret}
nodes:
  - {name: n1, replicas: 3}
  - {labels: {role: edge}, replicas: 2}
mode: landlock
landlock:
  shared: true
  stdio: true
  tty: true
  tmp: true
  vminfo: true
  dns: true
  certs: true
  paths: [{path: /etc/issue, modes: rw}]
jail:
  hostname: jh
  ip4Addresses: [10.0.0.2]
  allowRawSockets: true
  devfsRuleset: 5
  mountSystemCerts: true
mounts: [{path: data/f.txt, source: {objectStore: f}}]
nonet: {localPorts: [{port: 4222, protocol: UDP}]}
metrics: {port: 9100, path: /m}
user: app
memoryMB: 16
memoryMaxMB: 32
cpuCores: 0.25
networkNamespacePath: /var/run/netns/x
cgroupParent: narun.slice
restart: always
startLimitBurst: 3
startLimitIntervalSec: 60
pidsMax: 100
cpuWeight: 50
capabilities: [net_raw, CAP_NET_BIND_SERVICE]
notify: true
watchdogSec: 5
startTimeoutSec: 20
settleSec: 1
stopSignal: 2
stopTimeoutSec: 3
nofileMax: 4096
logOverflow: block
binaryDigests: {full-v2.0.1-linux-amd64: "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="}
commandUnit: {maxConcurrent: 2, maxQueued: 3, queueTimeoutSec: 4, timeoutSec: 5, maxOutputBytes: 6, maxStderrBytes: 7, outputHeaders: true}
runMode: JOB
schedule: "*/5 * * * *"
timezone: Europe/Paris
concurrency: Replace
startingDeadlineSec: 300
scope: fleet
maxAttempts: 5
"#,
    )
    .unwrap()
}

#[test]
fn full_spec_has_every_field_and_no_unknown_key() {
    let spec = full_spec();
    assert_eq!(spec.mode, Mode::Landlock);
    assert_eq!(spec.nonet.local_ports[0].protocol, "udp");
    assert_eq!(spec.capabilities, ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE"]);
    assert_eq!(spec.stop_signal.as_str(), "SIGINT");
    assert_eq!(spec.watchdog_sec, Some(5));
    assert_eq!(spec.cpu_weight, Some(50));
    assert_eq!(spec.pids_max, Some(100));
    assert_eq!(spec.nofile_max, Some(4096));
    assert_eq!(spec.log_overflow, narun_spec::LogOverflow::Block);
    assert_eq!(spec.run_mode, "job");
    assert_eq!(spec.concurrency, "replace");
    spec.validate().unwrap();
    // Every key the serialiser writes is known to the unknown-key walker
    // (catches a field added to the struct but not to the key list).
    let reparsed = AppSpec::from_kv_bytes(&spec.to_kv_json()).unwrap();
    let unknown: Vec<_> = reparsed
        .warnings()
        .into_iter()
        .filter(|w| w.message.starts_with("unknown key"))
        .collect();
    assert_eq!(unknown, []);
    // And every field survives the trip.
    assert_eq!(reparsed, spec);
    // Nothing was left at its default (so the check above covered every key).
    let json: serde_json::Value = serde_json::from_slice(&spec.to_kv_json()).unwrap();
    assert_eq!(json.as_object().unwrap().len(), 41, "{json:#}");
    assert_eq!(
        json["commandUnit"].as_object().unwrap().len(),
        7,
        "{json:#}"
    );
    assert!(spec.binary_digest("linux", "amd64").is_some());
}

#[test]
fn toml_to_json_round_trip_is_identity() {
    for file in [
        "examples/hello.toml",
        "examples/hello.yaml",
        "examples/command.toml",
    ] {
        let spec = AppSpec::from_path(data(file)).unwrap();
        let json = spec.to_kv_json();
        let back = AppSpec::from_kv_bytes(&json).unwrap();
        assert_eq!(back, spec, "{file}");
        assert_eq!(back.config_hash(), spec.config_hash(), "{file}");
        // Stable: serialising again gives the same bytes.
        assert_eq!(back.to_kv_json(), json, "{file}");
    }
}

#[test]
fn kv_json_is_valid_yaml_with_the_same_meaning() {
    // Go node-runners parse the KV value as YAML.
    let spec = full_spec();
    let json = String::from_utf8(spec.to_kv_json()).unwrap();
    let as_yaml = AppSpec::from_yaml_str(&json).unwrap();
    assert_eq!(as_yaml, spec);
}

#[test]
fn defaults_are_left_out_of_kv_json_but_mode_is_kept() {
    let spec = AppSpec::new("a", "1");
    let json: serde_json::Value = serde_json::from_slice(&spec.to_kv_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"name": "a", "tag": "1", "mode": "exec"})
    );
}

#[test]
fn config_hash_ignores_format_order_and_spelling_but_sees_changes() {
    let a = AppSpec::from_toml_str(
        "name = \"a\"\ntag = \"1\"\nstopSignal = \"TERM\"\ncapabilities = [\"net_raw\"]\n[[nodes]]\nname = \"n\"\nreplicas = 1\n",
    )
    .unwrap();
    let b = AppSpec::from_yaml_str(
        "nodes: [{replicas: 1, name: n}]\ncapabilities: [CAP_NET_RAW]\ntag: '1'\nname: a\nrestart: on-failure\n",
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.config_hash(), b.config_hash());
    assert_eq!(a.config_hash().len(), 16);
    assert!(
        a.config_hash()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );

    let mut c = a.clone();
    c.nodes[0].replicas = 2;
    assert_ne!(a.config_hash(), c.config_hash());
    let mut d = a.clone();
    d.restart = RestartPolicy::Always;
    assert_ne!(a.config_hash(), d.config_hash());
    let mut e = a.clone();
    e.env.push(EnvVar::value("X", ""));
    assert_ne!(a.config_hash(), e.config_hash());
}

#[test]
fn config_hash_is_stable_across_releases() {
    // Pinned value: if this changes, every deployed app restarts on upgrade.
    let spec =
        AppSpec::from_yaml_str("name: hello\ntag: v1\nnodes: [{name: n1, replicas: 2}]\n").unwrap();
    assert_eq!(
        String::from_utf8(spec.to_kv_json()).unwrap(),
        "{\n  \"mode\": \"exec\",\n  \"name\": \"hello\",\n  \"nodes\": [\n    {\n      \"name\": \"n1\",\n      \"replicas\": 2\n    }\n  ],\n  \"tag\": \"v1\"\n}\n"
    );
    let canonical =
        br#"{"mode":"exec","name":"hello","nodes":[{"name":"n1","replicas":2}],"tag":"v1"}"#;
    assert_eq!(
        spec.config_hash(),
        format!("{:016x}", narun_spec::fnv1a64(canonical))
    );
}

#[test]
fn yaml_nulls_mean_defaults_like_go() {
    let spec = AppSpec::from_yaml_str(
        "name: a\ntag: b\nargs:\nenv:\nmode:\nstopSignal:\nstartTimeoutSec:\nrestart:\n",
    )
    .unwrap();
    assert!(spec.args.is_empty());
    assert_eq!(spec.mode, Mode::Exec);
    assert_eq!(spec.stop_signal.as_str(), "SIGTERM");
    assert_eq!(spec.start_timeout_sec, 90);
    assert_eq!(spec.restart, RestartPolicy::OnFailure);
    spec.validate().unwrap();
}

#[test]
fn scalars_become_strings_like_go_yaml_v3() {
    let spec = AppSpec::from_yaml_str(
        "name: a\ntag: 7\nargs: [-p, 8080, true]\nenv: [{name: PORT, value: 8080}]\nstopSignal: 15\n",
    )
    .unwrap();
    assert_eq!(spec.tag, "7");
    assert_eq!(spec.args, ["-p", "8080", "true"]);
    assert_eq!(spec.env[0].value, "8080");
    assert_eq!(spec.stop_signal.as_str(), "SIGTERM");
    // A float would lose its spelling (1.10 → 1.1): refused, with advice.
    let err = AppSpec::from_yaml_str("name: a\ntag: 1.10\n").unwrap_err();
    assert!(err.to_string().contains("quote"), "{err}");
}

#[test]
fn toml_integer_cpu_cores_and_labels() {
    let spec = AppSpec::from_toml_str(
        "name = \"a\"\ntag = \"1\"\ncpuCores = 2\ncgroupParent = \"x\"\n[[nodes]]\nreplicas = 1\n[nodes.labels]\nzone = \"b\"\n",
    )
    .unwrap();
    assert_eq!(spec.cpu_cores, 2.0);
    let labels = BTreeMap::from([("zone".to_string(), "b".to_string())]);
    assert_eq!(spec.desired_replicas("any", &labels), 1);
}

#[test]
fn restart_no_written_as_yaml_boolean_is_accepted() {
    let spec = AppSpec::from_yaml_str("name: a\ntag: b\nrestart: false\n").unwrap();
    assert_eq!(spec.restart, RestartPolicy::No);
    let spec = AppSpec::from_yaml_str("name: a\ntag: b\nrestart: no\n").unwrap();
    assert_eq!(spec.restart, RestartPolicy::No);
    assert!(AppSpec::from_yaml_str("name: a\ntag: b\nrestart: true\n").is_err());
}

fn syntax_location(err: &ParseError) -> (usize, usize) {
    let l = err
        .location()
        .unwrap_or_else(|| panic!("no location in {err}"));
    (l.line, l.column)
}

#[test]
fn parse_errors_carry_line_and_column() {
    // YAML: replicas is not a number.
    let err = AppSpec::from_yaml_str("name: a\ntag: b\nnodes:\n  - name: n\n    replicas: many\n")
        .unwrap_err();
    assert_eq!(syntax_location(&err).0, 5, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("invalid YAML app spec at line 5, column "),
        "{text}"
    );
    assert!(text.contains("replicas"), "{text}");
    assert!(!text.ends_with("column 15"), "location repeated: {text}");

    // TOML: bad syntax on line 3.
    let err = AppSpec::from_toml_str("name = \"a\"\ntag = \"b\"\nmemoryMB = = 3\n").unwrap_err();
    assert_eq!(syntax_location(&err).0, 3, "{err}");
    assert!(
        err.to_string()
            .starts_with("invalid TOML app spec at line 3"),
        "{err}"
    );

    // TOML: wrong type.
    let err =
        AppSpec::from_toml_str("name = \"a\"\ntag = \"b\"\n\nnotify = \"yes\"\n").unwrap_err();
    assert_eq!(syntax_location(&err), (4, 10), "{err}");

    // JSON (KV value).
    let err = AppSpec::from_kv_bytes(b"{\n  \"name\": \"a\",\n  \"memoryMB\": -1\n}").unwrap_err();
    assert_eq!(syntax_location(&err).0, 3, "{err}");
    assert!(
        err.to_string()
            .starts_with("invalid JSON app spec at line 3"),
        "{err}"
    );
}

#[test]
fn kv_bytes_must_be_utf8() {
    let err = AppSpec::from_kv_bytes(b"name: \xff\n").unwrap_err();
    assert!(
        matches!(err, ParseError::NotUtf8 { valid_up_to: 6 }),
        "{err}"
    );
}

#[test]
fn empty_yaml_is_an_empty_spec_that_fails_validation() {
    let spec = AppSpec::from_yaml_str("").unwrap();
    let errors = spec.validate().unwrap_err();
    assert!(errors.get("name").is_some());
    assert!(errors.get("tag").is_some());
}

#[test]
fn from_path_picks_the_format_by_extension() {
    let dir = std::env::temp_dir().join(format!("narun-spec-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("a.toml");
    std::fs::write(&toml, "name = \"a\"\ntag = \"1\"\n").unwrap();
    assert_eq!(AppSpec::from_path(&toml).unwrap().name, "a");
    let txt = dir.join("a.txt");
    std::fs::write(&txt, "name: a\n").unwrap();
    assert!(matches!(
        AppSpec::from_path(&txt),
        Err(ParseError::UnknownExtension { .. })
    ));
    assert!(matches!(
        AppSpec::from_path(dir.join("missing.yaml")),
        Err(ParseError::Read { .. })
    ));
    // load = parse + validate.
    let bad = dir.join("bad.yml");
    std::fs::write(&bad, "name: a b\ntag: '1'\n").unwrap();
    match AppSpec::load(&bad) {
        Err(SpecLoadError::Invalid(e)) => assert!(e.get("name").is_some()),
        other => panic!("expected Invalid, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(Format::from_path(&toml), Some(Format::Toml));
}

#[test]
fn kv_entry_checks_key_against_name() {
    let value = AppSpec::new("hello", "v1").to_kv_json();
    AppSpec::from_kv_entry("hello", &value).unwrap();
    match AppSpec::from_kv_entry("other", &value) {
        Err(SpecLoadError::KeyMismatch { key, name }) => {
            assert_eq!((key.as_str(), name.as_str()), ("other", "hello"))
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    let invalid = b"name: hello\ntag: v1\nnodes: [{name: n, replicas: 0}]\n";
    assert!(matches!(
        AppSpec::from_kv_entry("hello", invalid),
        Err(SpecLoadError::Invalid(_))
    ));
    assert!(matches!(
        AppSpec::from_kv_entry("hello", b"{"),
        Err(SpecLoadError::Parse(_))
    ));
}
