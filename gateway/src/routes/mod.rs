//! Routes that change while the gateway runs: routes services declare in their Micro
//! metadata, and a named gateway's route set from KV. narund.toml's routes never change
//! at run time and always win.
//!
//! ```text
//!  [[gateway.routes]] (narund.toml) ─┐
//!  gateway.<name>.routes (KV)  ──────┼─▶ Sources::rebuild ─▶ Live (the router requests read)
//!  narun.routes (service metadata) ──┘
//! ```
//!
//! * [`declared`]: which declared routes are served (pure; the rules are there).
//! * [`kvset`]: parsing and checking a KV route set, taken whole or not at all (pure).
//! * [`watch`]: the task that pings services, follows the KV key and SIGHUP, and swaps
//!   the router.
//!
//! Requests read the router through [`Live::load`] (an `Arc` clone under a read lock); a
//! change builds a whole new router and swaps it in, so a request sees one table from
//! start to end. Requests in flight on a route that was removed finish on it.

pub(crate) mod declared;
pub(crate) mod kvset;
pub(crate) mod watch;

use crate::config::GatewayConfig;
use crate::router::{RouteSpec, Router};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The router in service; swapped whole when routes change.
pub(crate) struct Live(RwLock<Arc<Router>>);

impl Live {
    pub fn new(router: Router) -> Live {
        Live(RwLock::new(Arc::new(router)))
    }

    /// The router in service now.
    pub fn load(&self) -> Arc<Router> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, router: Router) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(router);
    }
}

/// Everything the routes are built from.
pub(crate) struct Sources {
    /// The gateway's configuration (its routes are the configured ones).
    config: GatewayConfig,
    /// The configured HTTP routes, as built at start (their stats endpoints included).
    configured: Vec<RouteSpec>,
    /// Whether the gateway runs jobs (async routes possible).
    jobs: bool,
    /// The KV route set in service.
    kv: kvset::KvSet,
    /// Whether a KV value (a set, or none) was ever served.
    kv_in_service: bool,
    declared: declared::Registry,
    /// Refusals logged last time (each is logged once, until it goes away).
    refused: std::collections::BTreeSet<declared::Refusal>,
}

impl Sources {
    pub fn new(config: &GatewayConfig, configured: &[RouteSpec], jobs: bool) -> Sources {
        Sources {
            config: config.clone(),
            configured: configured.iter().map(copy).collect(),
            jobs,
            kv: Default::default(),
            kv_in_service: false,
            declared: Default::default(),
            refused: Default::default(),
        }
    }

    /// Whether the task has anything to do (a name, or declared routes).
    pub fn active(&self) -> bool {
        self.config.name.is_some() || self.config.service_routes
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.config.service_routes_interval_ms)
    }

    /// Build the router of the configured, KV and declared routes.
    fn rebuild(&mut self) -> Router {
        let operator: Vec<&crate::config::RouteConfig> = self
            .config
            .routes
            .iter()
            .chain(self.kv.routes.iter())
            .collect();
        let (declared, refused) = if self.config.service_routes {
            self.declared.accept(&operator, self.jobs)
        } else {
            Default::default()
        };
        for r in &refused {
            if !self.refused.contains(r) {
                tracing::warn!(service = %r.service, "declared route not served: {}", r.why);
            }
        }
        self.refused = refused.into_iter().collect();
        let n = self.kv.routes.len();
        let extra = GatewayConfig {
            routes: self.kv.routes.iter().cloned().chain(declared).collect(),
            ..self.config.clone()
        };
        let mut specs: Vec<RouteSpec> = self.configured.iter().map(copy).collect();
        specs.extend(crate::router::specs(
            &extra,
            &self.kv.policies,
            |_, _, _| Default::default(),
        ));
        tracing::debug!(
            kv = n,
            declared = extra.routes.len() - n,
            "gateway routes rebuilt"
        );
        Router::new(specs)
    }
}

/// A route spec sharing its target.
fn copy(s: &RouteSpec) -> RouteSpec {
    RouteSpec {
        host: s.host.clone(),
        path: s.path.clone(),
        methods: s.methods.clone(),
        target: s.target.clone(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{GatewayConfig, LoadError};

    #[test]
    fn the_keys_have_safe_defaults_and_are_checked() {
        let c = GatewayConfig::from_toml("[gateway]\n").unwrap();
        assert_eq!(
            (c.name, c.service_routes, c.service_routes_interval_ms),
            (None, true, 2000)
        );
        let c = GatewayConfig::from_toml(
            "[gateway]\nname = \"edge\"\nservice_routes = false\nservice_routes_interval_ms = 100\n",
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("edge"));
        let Err(LoadError::Invalid(e)) = GatewayConfig::from_toml(
            "[gateway]\nname = \"a.b\"\nservice_routes_interval_ms = 99\n",
        ) else {
            panic!("accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("gateway.name: \"a.b\" is not a gateway name")
                && e.contains("gateway.service_routes_interval_ms: 99 is out of range"),
            "{e}"
        );
    }
}
