//! Scheduled-run fields: validation names the field, defaults leave the hash alone.

use narun_spec::{AppSpec, Concurrency, Scope};

fn spec(extra: &str) -> AppSpec {
    AppSpec::from_toml_str(&format!(
        "name = \"j\"\ntag = \"v1\"\n{extra}\n[[nodes]]\nname = \"n1\"\nreplicas = 1\n"
    ))
    .unwrap()
}

fn errors(extra: &str) -> Vec<(String, String)> {
    match spec(extra).validate() {
        Ok(()) => vec![],
        Err(e) => e
            .errors()
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect(),
    }
}

#[test]
fn a_job_spec_is_valid_and_reads_back() {
    let s = spec(
        "runMode = \"job\"\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Paris\"\nconcurrency = \"allow\"\nscope = \"fleet\"\nmaxAttempts = 4\nstartingDeadlineSec = 600",
    );
    s.validate().unwrap();
    assert!(s.is_job());
    assert_eq!(s.job_concurrency(), Concurrency::Allow);
    assert_eq!(s.job_scope(), Scope::Fleet);
    assert_eq!(s.job_max_attempts(), 4);
    assert!(s.job_cron().is_some());
    assert_eq!(AppSpec::from_kv_bytes(&s.to_kv_json()).unwrap(), s);
    // A job without a schedule runs only on `narunctl run`.
    let manual = spec("runMode = \"job\"");
    manual.validate().unwrap();
    assert!(manual.job_cron().is_none());
    assert_eq!(manual.job_max_attempts(), 3);
}

#[test]
fn absent_and_default_job_fields_leave_the_hash_alone() {
    let plain = spec("");
    assert!(!plain.is_job());
    let explicit = spec("runMode = \"Service\"\nconcurrency = \"forbid\"\nscope = \"NODE\"");
    explicit.validate().unwrap();
    assert_eq!(plain.config_hash(), explicit.config_hash());
    assert_eq!(plain.to_kv_json(), explicit.to_kv_json());
    let json = String::from_utf8(plain.to_kv_json()).unwrap();
    for key in [
        "runMode",
        "schedule",
        "timezone",
        "concurrency",
        "scope",
        "maxAttempts",
        "startingDeadlineSec",
    ] {
        assert!(!json.contains(key), "{key} in {json}");
    }
    assert_ne!(plain.config_hash(), spec("runMode = \"job\"").config_hash());
}

#[test]
fn bad_job_fields_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "runMode = \"cron\"",
            "runMode",
            "must be one of service, job",
        ),
        (
            "runMode = \"job\"\nschedule = \"61 * * * *\"",
            "schedule",
            "invalid cron expression \"61 * * * *\": minute field: 61 is out of range 0-59",
        ),
        (
            "runMode = \"job\"\nschedule = \"* * *\"",
            "schedule",
            "has 3 fields",
        ),
        (
            "runMode = \"job\"\nschedule = \"0 0 30 2 *\"",
            "schedule",
            "never matches",
        ),
        (
            "runMode = \"job\"\nschedule = \"@daily\"\ntimezone = \"../etc/passwd\"",
            "timezone",
            "unknown timezone",
        ),
        (
            "runMode = \"job\"\nschedule = \"@daily\"\ntimezone = \"/etc/localtime\"",
            "timezone",
            "unknown timezone",
        ),
        (
            "runMode = \"job\"\ntimezone = \"UTC\"",
            "timezone",
            "without a schedule",
        ),
        (
            "runMode = \"job\"\nstartingDeadlineSec = 5",
            "startingDeadlineSec",
            "without a schedule",
        ),
        (
            "runMode = \"job\"\nconcurrency = \"parallel\"",
            "concurrency",
            "must be one of forbid, replace, allow",
        ),
        (
            "runMode = \"job\"\nscope = \"cluster\"",
            "scope",
            "must be one of node, fleet",
        ),
        (
            "runMode = \"job\"\nmaxAttempts = 0",
            "maxAttempts",
            "must be > 0",
        ),
        (
            "runMode = \"job\"\nmaxAttempts = 1000",
            "maxAttempts",
            "at most 100",
        ),
        (
            "schedule = \"* * * * *\"",
            "schedule",
            "requires runMode = \"job\"",
        ),
        (
            "concurrency = \"allow\"",
            "concurrency",
            "requires runMode = \"job\"",
        ),
        ("scope = \"fleet\"", "scope", "requires runMode = \"job\""),
        (
            "maxAttempts = 2",
            "maxAttempts",
            "requires runMode = \"job\"",
        ),
    ];
    for (extra, path, want) in cases {
        let errs = errors(extra);
        assert!(
            errs.iter().any(|(p, m)| p == path && m.contains(want)),
            "{extra}: want {path}: {want}, got {errs:?}"
        );
    }
}

/// The TOML examples of docs/jobs.md ("Scheduled runs") parse and validate.
#[test]
fn jobs_doc_examples_are_valid() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/jobs.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Scheduled runs"))
        .expect("a Scheduled runs section");
    let mut n = 0;
    for block in section.split("```toml\n").skip(1) {
        let toml = block.split("\n```").next().unwrap();
        let spec = AppSpec::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        spec.validate().unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert!(spec.is_job(), "{toml}");
        let unknown: Vec<_> = spec
            .warnings()
            .into_iter()
            .filter(|w| w.message.starts_with("unknown key"))
            .collect();
        assert_eq!(unknown, [], "{toml}");
        n += 1;
    }
    assert!(n >= 1);
}
