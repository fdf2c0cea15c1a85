//! Routes services declare (`narun.routes` in their Micro metadata): which instances the
//! gateway has seen ([`Registry::observe`]) and which of their routes it serves
//! ([`Registry::accept`]). Pure: the pings are sent by [`super::watch`].
//!
//! The rules (docs/gateway.md, "Routes the services declare"):
//!
//! 1. A declaration is untrusted input. Too large, not JSON, unknown keys or too many
//!    routes: the instance's whole declaration is ignored (logged). A route with a bad
//!    path, method, timeout or `async`, or a path under `/_` (the gateway's own), is
//!    refused alone.
//! 2. A declared route always forwards to the declaring service (bhttp, subject = its
//!    name); there is no key to name another target.
//! 3. Operator routes win: a declared route is refused when its path equals the path of a
//!    configured or KV route (any method), or lies under one of their prefix routes (it
//!    would take requests the operator routed elsewhere). Only routes without `host`
//!    count: a virtual host's routes are looked up before any declared route.
//! 4. Between services, first come first served: a route that equals, or lies under a
//!    prefix of, a route another service already holds is refused; a service keeps its
//!    routes while it is seen. Services new in the same look are taken in name order.
//! 5. An instance missing from [`MISSES`] looks in a row is forgotten, and its routes with
//!    it. At most [`MAX_SERVED`] declared routes are served in all.

use crate::config::{AsyncMode, GatewayConfig, RouteConfig};
use narun_wire::routes::{self as wire, AsyncFlag, DeclaredRoute};
use std::collections::{BTreeMap, BTreeSet};

/// Looks in a row an instance may miss before its routes are dropped.
pub const MISSES: u32 = 2;
/// Declared routes the gateway serves at most, all services together.
pub const MAX_SERVED: usize = 1024;
/// Longest `timeout_sec` a declared route may ask for.
pub const MAX_TIMEOUT_SEC: u64 = 3600;

/// One instance of a service, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instance {
    /// Its `narun.routes` value.
    value: String,
    misses: u32,
}

/// What the gateway knows of the services that declare routes.
#[derive(Debug, Default)]
pub struct Registry {
    /// (service, instance id) -> instance.
    instances: BTreeMap<(String, String), Instance>,
    /// Services in the order their routes were first served (first come, first served).
    order: Vec<String>,
}

/// A route that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub service: String,
    pub why: String,
}

impl Registry {
    /// Whether instance `id` of `service` is known with this exact declaration (then it
    /// needs no new check that it is who it says).
    pub fn knows(&self, service: &str, id: &str, value: &str) -> bool {
        self.instances
            .get(&(service.to_owned(), id.to_owned()))
            .is_some_and(|i| i.value == value)
    }

    /// One look's result: the (service, instance id, declaration) that answered. Returns
    /// whether anything changed (an instance came, left or changed its declaration).
    pub fn observe(&mut self, seen: &[(String, String, String)]) -> bool {
        let mut changed = false;
        let mut present = BTreeSet::new();
        for (service, id, value) in seen {
            let key = (service.clone(), id.clone());
            present.insert(key.clone());
            let inst = Instance {
                value: value.clone(),
                misses: 0,
            };
            match self.instances.insert(key, inst) {
                Some(old) if old.value == *value => {}
                _ => changed = true,
            }
        }
        self.instances.retain(|k, inst| {
            if present.contains(k) {
                return true;
            }
            inst.misses += 1;
            let keep = inst.misses < MISSES;
            changed |= !keep;
            keep
        });
        changed
    }

    /// The routes to serve, given the operator's (`operator`: configured and KV routes),
    /// whether the gateway runs jobs, and `base` (the gateway's config, for its defaults).
    /// Also every refusal, for the log.
    pub fn accept(
        &mut self,
        operator: &[&RouteConfig],
        jobs: bool,
    ) -> (Vec<RouteConfig>, Vec<Refusal>) {
        // Every service's declarations, instances in id order, deduplicated by path+methods.
        let mut by_service: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for ((service, _), inst) in &self.instances {
            by_service.entry(service).or_default().push(&inst.value);
        }
        self.order.retain(|s| by_service.contains_key(s.as_str()));
        for s in by_service.keys() {
            if !self.order.iter().any(|o| o == s) {
                self.order.push((*s).to_owned());
            }
        }
        let held_by_operator: Vec<&str> = operator
            .iter()
            .filter(|r| r.host.is_none())
            .filter_map(|r| r.path.as_deref())
            .collect();
        let mut served: Vec<RouteConfig> = Vec::new();
        let mut refused = Vec::new();
        for service in &self.order {
            let mut refuse = |why: String| {
                refused.push(Refusal {
                    service: service.clone(),
                    why,
                })
            };
            let mut mine: Vec<RouteConfig> = Vec::new();
            for value in &by_service[service.as_str()] {
                let declared = match wire::parse_declared(value) {
                    Ok(d) => d,
                    Err(e) => {
                        refuse(format!("declaration ignored: {e}"));
                        continue;
                    }
                };
                for d in &declared {
                    let rc = match to_config(service, d, jobs) {
                        Ok(rc) => rc,
                        Err(why) => {
                            refuse(format!("route {:?} refused: {why}", d.path));
                            continue;
                        }
                    };
                    let path = rc.path.as_deref().unwrap_or_default();
                    if mine.iter().any(|m| m.path == rc.path) {
                        // Another instance's (or a repeated) declaration of the same path:
                        // the first one counts.
                        continue;
                    }
                    if let Some(op) = held_by_operator.iter().find(|h| shadows(path, h)) {
                        refuse(format!(
                            "route {path:?} refused: it would take requests of the configured route {op:?} (operator routes win)"
                        ));
                        continue;
                    }
                    if let Some(other) = served.iter().find(|o| {
                        o.service.as_deref() != Some(service)
                            && shadows(path, o.path.as_deref().unwrap_or_default())
                    }) {
                        refuse(format!(
                            "route {path:?} refused: service {:?} already serves {:?}",
                            other.service.as_deref().unwrap_or_default(),
                            other.path.as_deref().unwrap_or_default()
                        ));
                        continue;
                    }
                    if served.len() + mine.len() >= MAX_SERVED {
                        refuse(format!(
                            "route {path:?} refused: the gateway serves at most {MAX_SERVED} declared routes"
                        ));
                        continue;
                    }
                    mine.push(rc);
                }
            }
            served.extend(mine);
        }
        (served, refused)
    }
}

/// Whether a route on `new` would take requests that the route on `held` serves: the same
/// path, or a path under `held`'s prefix (exact and longer prefix routes match first).
pub fn shadows(new: &str, held: &str) -> bool {
    new == held || (held.ends_with('/') && new.starts_with(held))
}

/// A declared route as a `[[gateway.routes]]` entry to `service`, checked as the
/// configuration checks its routes, plus the rules for untrusted routes.
pub fn to_config(service: &str, d: &DeclaredRoute, jobs: bool) -> Result<RouteConfig, String> {
    if !narun_wire::micro::valid_name(service) {
        return Err(format!("{service:?} is not a service name"));
    }
    if d.path.len() > wire::MAX_PATH_BYTES {
        return Err(format!(
            "the path is longer than {} bytes",
            wire::MAX_PATH_BYTES
        ));
    }
    if d.path.starts_with("/_") {
        return Err("paths under /_ are the gateway's own (/_jobs/, ...)".into());
    }
    // Only under its own name: a service cannot claim `/` or another service's paths
    // (not even while that service is away, e.g. scaled to zero).
    let own = format!("/{service}");
    if d.path != own && !d.path.starts_with(&format!("{own}/")) {
        return Err(format!(
            "a service routes only under its own name: use {own} or a path under {own}/"
        ));
    }
    if let Some(t) = d.timeout_sec
        && !(1..=MAX_TIMEOUT_SEC).contains(&t)
    {
        return Err(format!(
            "timeout_sec {t} is out of range (1 to {MAX_TIMEOUT_SEC})"
        ));
    }
    let async_mode = match &d.async_mode {
        None | Some(AsyncFlag::Bool(false)) => None,
        Some(AsyncFlag::Bool(true)) => Some(AsyncMode::Always),
        Some(AsyncFlag::Mode(m)) if m == "allow" => Some(AsyncMode::Allow),
        Some(AsyncFlag::Mode(m)) => {
            return Err(format!("async = {m:?}: expected true, false or \"allow\""));
        }
    };
    if async_mode.is_some() && !jobs {
        return Err(
            "async routes need a gateway that runs jobs (an async route in its configuration)"
                .into(),
        );
    }
    let rc = RouteConfig {
        path: Some(d.path.clone()),
        methods: d.methods.clone(),
        service: Some(service.to_owned()),
        timeout_sec: d.timeout_sec,
        async_mode,
        ..Default::default()
    };
    let check = GatewayConfig {
        routes: vec![rc.clone()],
        ..Default::default()
    };
    if let Err(errs) = check.validate() {
        let why: Vec<String> = errs
            .0
            .iter()
            .map(|e| {
                let key = e.key.replace("gateway.routes[0]", "").replace('.', "");
                if key.is_empty() {
                    e.reason.clone()
                } else {
                    format!("{key}: {}", e.reason)
                }
            })
            .collect();
        return Err(why.join("; "));
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        list.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    }

    fn op(path: &str) -> RouteConfig {
        RouteConfig {
            path: Some(path.into()),
            service: Some("op".into()),
            ..Default::default()
        }
    }

    fn served(r: &mut Registry, operator: &[RouteConfig]) -> (Vec<String>, Vec<String>) {
        let ops: Vec<&RouteConfig> = operator.iter().collect();
        let (ok, refused) = r.accept(&ops, false);
        (
            ok.iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r.service.as_deref().unwrap(),
                        r.path.as_deref().unwrap()
                    )
                })
                .collect(),
            refused
                .iter()
                .map(|r| format!("{}: {}", r.service, r.why))
                .collect(),
        )
    }

    #[test]
    fn instances_come_change_and_leave_after_two_misses() {
        let mut r = Registry::default();
        let a = r#"[{"path":"/a/"}]"#;
        assert!(r.observe(&seen(&[("a", "1", a)])));
        assert!(r.knows("a", "1", a) && !r.knows("a", "1", "[]"));
        assert!(!r.observe(&seen(&[("a", "1", a)])));
        assert!(!r.observe(&[]), "one miss keeps it");
        assert!(r.observe(&[]), "the second drops it");
        assert!(!r.knows("a", "1", a));
        assert!(r.observe(&seen(&[("a", "1", a)])));
        assert!(r.observe(&seen(&[("a", "1", "[]")])), "a new declaration");
    }

    #[test]
    fn operator_routes_win_and_services_serve_only_themselves() {
        let mut r = Registry::default();
        r.observe(&seen(&[
            ("a", "1", r#"[{"path":"/a/","methods":["GET"]},{"path":"/a/api/x"},{"path":"/a/api"},{"path":"/a/open/"}]"#),
            ("b", "1", r#"[{"path":"/b/"},{"path":"/a/deeper/"},{"path":"/_jobs/x"},{"path":"/a/"},{"path":"/"},{"path":"/bb"}]"#),
            ("c", "1", r#"{"not": "a list"}"#),
            ("d", "1", r#"[{"path":"/d","service":"a"}]"#),
            ("e", "1", r#"[{"path":"e"},{"path":"/e","methods":["G E T"]},{"path":"/e/","async":true},{"path":"/e/ok"}]"#),
        ]));
        let (ok, refused) = served(&mut r, &[op("/a/api/"), op("/a/open")]);
        // "/a/api" is not under the prefix route "/a/api/" and equals no operator path.
        assert_eq!(ok, ["a /a/", "a /a/api", "a /a/open/", "b /b/", "e /e/ok"]);
        let own = "refused: a service routes only under its own name";
        let expect = [
            "a: route \"/a/api/x\" refused: it would take requests of the configured route \"/a/api/\"",
            &format!("b: route \"/a/deeper/\" {own}"),
            "b: route \"/_jobs/x\" refused: paths under /_ are the gateway's own",
            &format!("b: route \"/a/\" {own}"),
            &format!("b: route \"/\" {own}"),
            &format!("b: route \"/bb\" {own}"),
            "c: declaration ignored: narun.routes is not a JSON list",
            "d: declaration ignored: narun.routes is not a JSON list of routes: unknown field `service`",
            &format!("e: route \"e\" {own}"),
            "e: route \"/e\" refused: methods[0]: \"G E T\" is not an HTTP method",
            "e: route \"/e/\" refused: async routes need a gateway that runs jobs",
        ];
        for e in expect {
            assert!(
                refused.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {refused:#?}"
            );
        }
        assert_eq!(refused.len(), expect.len(), "{refused:#?}");
        // Not even while a is away (gone after two looks without it, or scaled to zero)
        // does b take a's paths.
        let b = r#"[{"path":"/a/"}]"#;
        r.observe(&seen(&[("b", "1", b)]));
        r.observe(&seen(&[("b", "1", b)]));
        let (ok, refused) = served(&mut r, &[]);
        assert!(ok.is_empty(), "{ok:?}");
        assert_eq!(refused.len(), 1, "{refused:?}");
        // An operator route takes a service's own path back.
        r.observe(&seen(&[("a", "1", r#"[{"path":"/a/"}]"#)]));
        let (ok, _) = served(&mut r, &[op("/a/")]);
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn hostile_sizes_are_bounded() {
        let mut r = Registry::default();
        let many: Vec<String> = (0..40).map(|i| format!(r#"{{"path":"/p{i}"}}"#)).collect();
        let long = format!(r#"[{{"path":"/{}"}}]"#, "x".repeat(600));
        r.observe(&seen(&[
            ("a", "1", &format!("[{}]", many.join(","))),
            ("b", "1", &long),
        ]));
        let (ok, refused) = served(&mut r, &[]);
        assert!(ok.is_empty());
        assert!(
            refused[0].contains("lists 40 routes, more than 32"),
            "{refused:?}"
        );
        assert!(refused[1].contains("longer than 512 bytes"), "{refused:?}");
        assert!(shadows("/a/b", "/a/") && shadows("/a", "/a") && !shadows("/a/", "/a/b/"));
        assert!(!shadows("/ab", "/a"));
    }
}
