//! Dependencies between services: `after` (start once these services answer) and
//! `calls` (the services the app calls), and their checks.
//!
//! * `after = ["db", "auth"]`: narund starts an instance only once every named service
//!   answers a NATS Micro discovery ping (`$SRV.PING.<name>`), waiting at most
//!   `afterTimeoutSec` (default [`DEFAULT_AFTER_TIMEOUT_SEC`]); while it waits the
//!   instance is `starting` with reason `after` and the message `waiting for db, auth`.
//!   When the time is up it **starts anyway** and logs a warning on the instance's
//!   stderr (a dependency that is down must not keep a device's whole app set down;
//!   an app that truly cannot work without it should wait itself,
//!   `narun::Client::wait_for_responder`, or exit and be restarted). `afterTimeoutSec = 0`
//!   waits without end. Only the first start of an instance waits; restarts do not.
//! * `calls = ["db"]`: the services the app calls. When narund mints the app's NATS user
//!   it may publish requests to these services' subjects (and to the ones in `after`);
//!   to no other app's subject (docs/security.md).
//!
//! Both hold service names: 1 to 64 of `A-Z a-z 0-9 - _` (a NATS Micro service name,
//! one subject token), at most [`MAX_DEPENDENCIES`] each, no duplicates, not the app
//! itself.

/// Default of `afterTimeoutSec`.
pub const DEFAULT_AFTER_TIMEOUT_SEC: u64 = 60;
/// Longest `afterTimeoutSec` (one day).
pub const MAX_AFTER_TIMEOUT_SEC: u64 = 86_400;
/// Most names in `after` or in `calls`.
pub const MAX_DEPENDENCIES: usize = 32;
/// Longest service name in `after` or `calls`.
pub const MAX_SERVICE_NAME: usize = 64;

/// What is wrong with the service name `name` (`None`: valid).
pub fn service_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Some(format!(
            "service name {name:?} must be 1 to {MAX_SERVICE_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
    {
        return Some(format!(
            "service name {name:?}: {c:?} is not allowed (a NATS Micro service name: A-Z a-z 0-9 - _)"
        ));
    }
    None
}

/// The problems of a list of service names of app `app` (key, message), `key` being
/// `after` or `calls` (`after[1]`, …).
pub fn list_problems(key: &str, app: &str, names: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if names.len() > MAX_DEPENDENCIES {
        out.push((
            key.to_string(),
            format!("at most {MAX_DEPENDENCIES} services, got {}", names.len()),
        ));
    }
    for (i, n) in names.iter().enumerate() {
        let path = format!("{key}[{i}]");
        if let Some(p) = service_name_problem(n) {
            out.push((path, p));
        } else if n == app {
            out.push((path, format!("{n:?} is this app itself")));
        } else if names[..i].contains(n) {
            out.push((path, format!("{n:?} is listed twice")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_micro_service_names() {
        for ok in ["db", "a-svc", "A_1", &"x".repeat(64)] {
            assert_eq!(service_name_problem(ok), None, "{ok}");
        }
        for bad in ["", "a.b", "a b", "*", ">", "ä", "$SRV", &"x".repeat(65)] {
            assert!(service_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn lists_name_what_is_wrong_and_where() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(list_problems("after", "web", &l(&["db", "auth"])).is_empty());
        let p = list_problems("after", "web", &l(&["db", "web", "db", "a.b"]));
        assert_eq!(
            p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["after[1]", "after[2]", "after[3]"]
        );
        assert!(
            p[0].1.contains("itself") && p[1].1.contains("twice"),
            "{p:?}"
        );
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(list_problems("calls", "web", &many)[0].0, "calls");
    }

    #[test]
    fn a_spec_with_dependencies_parses_validates_and_round_trips() {
        let toml = "name = \"web\"\ntag = \"v1\"\nafter = [\"db\"]\nafterTimeoutSec = 5\ncalls = [\"db\", \"auth\"]\n";
        let spec = crate::AppSpec::from_toml_str(toml).unwrap();
        spec.validate().unwrap();
        assert!(spec.warnings().is_empty(), "{:?}", spec.warnings());
        assert_eq!(spec.after, ["db"]);
        assert_eq!(spec.after_timeout_sec, 5);
        assert_eq!(spec.calls, ["db", "auth"]);
        let back = crate::AppSpec::from_kv_bytes(&spec.to_kv_json()).unwrap();
        assert_eq!(back, spec);
        // Defaults stay out of the KV JSON (the hashes of older specs do not change).
        let plain = crate::AppSpec::new("web", "v1");
        assert_eq!(plain.after_timeout_sec, DEFAULT_AFTER_TIMEOUT_SEC);
        let json = String::from_utf8(plain.to_kv_json()).unwrap();
        assert!(!json.contains("after") && !json.contains("calls"), "{json}");

        let bad = "name = \"web\"\ntag = \"v1\"\nafter = [\"web\", \"a.b\"]\nafterTimeoutSec = 100000\ncalls = [\"x y\"]\n";
        let e = crate::AppSpec::from_toml_str(bad)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        for key in ["after[0]", "after[1]", "afterTimeoutSec", "calls[0]"] {
            assert!(e.contains(key), "{key} in {e}");
        }
    }
}
