//! A named gateway's route set from KV (`gateway.<name>.routes` in `narun-gateway-routes`):
//! a TOML document of `[[routes]]` tables with the keys of `[[gateway.routes]]`.
//!
//! ```toml
//! [[routes]]
//! path = "/shop/"
//! service = "shop"
//!
//! [[routes]]
//! path = "/legacy"
//! mode = "raw"
//! subject = "legacy.api"
//! ```
//!
//! [`parse`] takes a set whole or not at all: it is checked together with the configured
//! routes (the same checks as `narund.toml`, so a set that repeats a configured path and
//! method is refused), its JWT key files are read, and it may not hold gRPC routes (the
//! gRPC listener is set up at start) nor `async` ones on a gateway that runs no jobs.
//! Every problem is reported with its key (`routes[2].methods[0]: ...`). Pure but for the
//! key files.

use crate::auth::Policy;
use crate::config::{AsyncMode, GatewayConfig, RouteConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Routes one set may hold.
pub const MAX_ROUTES: usize = 1024;

/// An accepted route set.
#[derive(Debug, Default, Clone)]
pub struct KvSet {
    /// KV revision it came from (0: no set).
    pub revision: u64,
    pub routes: Vec<RouteConfig>,
    /// `auth` policies by index in `routes`.
    pub policies: HashMap<usize, Arc<Policy>>,
}

/// Parse and check `text` (revision `revision`) against the configured routes of `config`.
/// `jobs`: whether the gateway runs jobs (async routes are possible).
pub fn parse(
    text: &[u8],
    revision: u64,
    config: &GatewayConfig,
    jobs: bool,
) -> Result<KvSet, Vec<String>> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        routes: Vec<RouteConfig>,
        #[serde(flatten)]
        unknown: BTreeMap<String, toml::Value>,
    }
    let text = std::str::from_utf8(text).map_err(|_| vec!["the set is not UTF-8 text".into()])?;
    let doc: Doc = toml::from_str(text).map_err(|e| vec![format!("not a TOML route set: {e}")])?;
    let mut errs: Vec<String> = doc
        .unknown
        .keys()
        .map(|k| format!("{k}: unknown key (a route set has only [[routes]])"))
        .collect();
    if doc.routes.len() > MAX_ROUTES {
        errs.push(format!(
            "routes: {} routes, more than {MAX_ROUTES}",
            doc.routes.len()
        ));
        return Err(errs);
    }
    for (i, r) in doc.routes.iter().enumerate() {
        if r.grpc.is_some() {
            errs.push(format!(
                "routes[{i}].grpc: gRPC routes are configured in narund.toml only (the gRPC listener is set up at start)"
            ));
        }
        if r.async_mode.unwrap_or_default() != AsyncMode::Off && !jobs {
            errs.push(format!(
                "routes[{i}].async: this gateway runs no jobs (no async route in its configuration)"
            ));
        }
    }
    let n = config.routes.len();
    let mut combined = config.clone();
    combined.routes.extend(doc.routes.iter().cloned());
    let rename = |s: &str| {
        let mut s = s.to_owned();
        for i in (n..combined.routes.len()).rev() {
            s = s.replace(
                &format!("gateway.routes[{i}]"),
                &format!("routes[{}]", i - n),
            );
        }
        s
    };
    if let Err(e) = combined.validate() {
        errs.extend(e.0.iter().map(|e| rename(&e.to_string())));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let only = GatewayConfig {
        routes: doc.routes.clone(),
        ..config.clone()
    };
    let policies = crate::auth::load_policies(&only).map_err(|e| {
        e.0.iter()
            .map(|e| e.to_string().replacen("gateway.", "", 1))
            .collect::<Vec<_>>()
    })?;
    Ok(KvSet {
        revision,
        routes: doc.routes,
        policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_checked_whole_with_the_configured_routes() {
        let config = GatewayConfig::from_toml(
            "[gateway]\n[[gateway.routes]]\npath = \"/a\"\nmethods = [\"GET\"]\nservice = \"a\"\n",
        )
        .unwrap();
        let ok = parse(
            b"[[routes]]\npath = \"/b/\"\nservice = \"b\"\n[[routes]]\npath = \"/a\"\nmethods = [\"POST\"]\nservice = \"a2\"\n",
            7,
            &config,
            false,
        )
        .unwrap();
        assert_eq!((ok.revision, ok.routes.len()), (7, 2));
        assert!(parse(b"", 1, &config, false).unwrap().routes.is_empty());

        let errs = parse(
            b"colour = 1\n[[routes]]\npath = \"/a\"\nservice = \"x\"\n\
              [[routes]]\npath = \"c\"\nservice = \"c\"\n\
              [[routes]]\ngrpc = \"a.B\"\nservice = \"g\"\n\
              [[routes]]\npath = \"/j\"\nservice = \"j\"\nasync = true\n",
            2,
            &config,
            false,
        )
        .unwrap_err();
        let expect = [
            "colour: unknown key",
            "routes[2].grpc: gRPC routes are configured in narund.toml only",
            "routes[3].async: this gateway runs no jobs",
            "routes[0]: any method on /a is already routed by gateway.routes[0]",
            "routes[1].path: \"c\" must start with '/'",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        let errs = parse(b"[[routes]\n", 3, &config, false).unwrap_err();
        assert!(errs[0].starts_with("not a TOML route set"), "{errs:?}");
        let errs = parse(&[0xff, 0xfe], 3, &config, false).unwrap_err();
        assert_eq!(errs, ["the set is not UTF-8 text"]);
    }
}
