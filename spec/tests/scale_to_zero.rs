//! `scaleToZero = { idleSec = N }`: parsed, validated with key paths, kept out of the run hash.

use narun_spec::AppSpec;

fn spec(extra: &str) -> AppSpec {
    AppSpec::from_toml_str(&format!(
        "name = \"hello\"\ntag = \"v1\"\n{extra}\n[[nodes]]\nname = \"n1\"\nreplicas = 1\n"
    ))
    .unwrap()
}

#[test]
fn idle_sec_is_read_and_round_trips_through_kv() {
    let s = spec("scaleToZero = { idleSec = 300 }");
    assert_eq!(s.scale_to_zero.as_ref().unwrap().idle_sec, 300);
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    s.validate().unwrap();
    s.supported_on_narund().unwrap();
    let back = AppSpec::from_kv_bytes(&s.to_kv_json()).unwrap();
    assert_eq!(back, s);
    let json: serde_json::Value = serde_json::from_slice(&s.to_kv_json()).unwrap();
    assert_eq!(json["scaleToZero"]["idleSec"], 300);
}

#[test]
fn bad_values_name_their_key() {
    for (extra, want) in [
        (
            "scaleToZero = { idleSec = 0 }",
            "scaleToZero.idleSec: must be 1..=604800 seconds, got 0",
        ),
        (
            "scaleToZero = {}",
            "scaleToZero.idleSec: must be 1..=604800",
        ),
        (
            "scaleToZero = { idleSec = 604801 }",
            "scaleToZero.idleSec: must be 1..=604800",
        ),
        (
            "scaleToZero = { idleSec = 5 }\nrunMode = \"job\"",
            "scaleToZero: cannot be combined with runMode: job",
        ),
        (
            "scaleToZero = { idleSec = 5 }\nmode = \"command\"",
            "scaleToZero: cannot be combined with mode: command",
        ),
        (
            "scaleToZero = { idleSec = 5 }\nenv = [{ name = \"NARUN_SERVICE_NAME\", value = \"other\" }]",
            "scaleToZero: cannot be combined with env NARUN_SERVICE_NAME = \"other\"",
        ),
    ] {
        let err = spec(extra).validate().unwrap_err().to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
    // A negative or textual value does not parse at all.
    assert!(
        AppSpec::from_toml_str("name = \"a\"\ntag = \"v\"\nscaleToZero = { idleSec = -1 }")
            .is_err()
    );
    // An unknown key inside the block is a warning naming it.
    let w = spec("scaleToZero = { idleSec = 5, idlesec = 3 }");
    assert!(
        w.warnings().iter().any(|w| w.path == "scaleToZero.idlesec"),
        "{:?}",
        w.warnings()
    );
}

#[test]
fn idle_sec_changes_the_config_but_not_the_run() {
    let a = spec("scaleToZero = { idleSec = 30 }");
    let b = spec("scaleToZero = { idleSec = 60 }");
    let none = spec("");
    assert_ne!(a.config_hash(), b.config_hash());
    assert_eq!(a.run_hash(), b.run_hash());
    assert_eq!(a.run_hash(), none.run_hash());
}
