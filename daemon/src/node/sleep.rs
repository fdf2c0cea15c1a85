//! Scale to zero (`scaleToZero = { idleSec = N }`): idle apps sleep, a wake starts them.
//!
//! **The idle signal.** narund asks the app's service for its NATS Micro stats
//! (`$SRV.STATS.<service>`, the service named like the app unless the spec's `env` sets
//! `NARUN_SERVICE_NAME`) and keeps, per responding instance, its id and the sum of its
//! endpoints' `num_requests`. When that set has not changed for `idleSec`, no request was
//! answered by any instance of the service (on any node) in that time: the app is idle.
//! It is the cheapest honest signal: nothing is added to the request path (the counters
//! exist for `nats micro stats` already), it counts every caller (the gateway, other
//! services through `narun::Client`, `nats req`), and it costs one scatter request per app
//! every [`check_every`] (a fifth of `idleSec`, 1 to 30 s). A request is counted when it
//! is answered, so a single request running longer than `idleSec` is not seen; an
//! instance that restarts gets a new id, which counts as activity.
//!
//! **Sleeping.** Once idle, the app's instances on this node are stopped through their
//! ordinary stop path (`stopSignal`, `stopTimeoutSec`), under the apply lock, and reported
//! as `scaled_to_zero` from the moment the stop begins (in the heartbeat, and a status
//! event per instance once stopped): not failed, not counted as down. A request that
//! arrives while they drain wakes the app again. The spec stays applied; a replay of it starts nothing; a new KV
//! revision or a changed spec starts the instances as any apply does.
//!
//! **Waking.** A gateway that finds no responder for the service asks the nodes that
//! report the app `scaled_to_zero` on `narun.control.<node>.wake`
//! ([`narun_wire::events::WakeRequest`]). narund starts the instances (under the apply
//! lock; concurrent wakes start them once) and answers once they are started; the gateway
//! then waits for the service to announce itself. A wake is refused with a reason for an
//! app this node does not run and for an app without `scaleToZero`: a wake never starts
//! what the operator did not mark as sleeping. A wake of an app that is awake is a no-op
//! (`started` empty). A narund restart starts every app: the idle clock begins again.
//!
//! [`IdleClock`] is the pure part (samples in, "idle now?" out), unit tested.

use super::Node;
use crate::instance::InstanceHandle;
use futures_util::StreamExt;
use narun_spec::AppSpec;
use narun_wire::events::{StatusEvent, WakeReply, WakeRequest, now_rfc3339};
use narun_wire::micro::StatsResponse;
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the answers to one `$SRV.STATS` request are collected.
pub const COLLECT: Duration = Duration::from_millis(250);
/// How often the sleep task looks at the apps.
pub const TICK: Duration = Duration::from_secs(1);

/// How often an app with this idle time is sampled: a fifth of it, 1 to 30 s (so it sleeps
/// at most that much later than `idleSec` after its last request).
pub fn check_every(idle: Duration) -> Duration {
    (idle / 5).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The service whose requests count for `spec`: `NARUN_SERVICE_NAME` of its `env` (a
/// plain value), else the app name (the `narun` library's rule).
pub fn service_name(spec: &AppSpec) -> String {
    spec.env
        .iter()
        .rev()
        .find(|e| {
            e.name == "NARUN_SERVICE_NAME" && e.value_from_secret.is_empty() && !e.value.is_empty()
        })
        .map_or_else(|| spec.name.clone(), |e| e.value.clone())
}

/// What one stats sample says: per responding instance id, its answered requests.
pub type Sample = BTreeMap<String, u64>;

/// The sample of these `$SRV.STATS` answers.
pub fn sample_of(answers: &[StatsResponse]) -> Sample {
    answers
        .iter()
        .map(|a| {
            (
                a.id.clone(),
                a.endpoints.iter().map(|e| e.num_requests).sum::<u64>(),
            )
        })
        .collect()
}

/// When an app was last active, from successive samples (pure).
#[derive(Debug)]
pub struct IdleClock {
    idle: Duration,
    last: Option<Sample>,
    active_at: Instant,
}

impl IdleClock {
    /// A clock for an app that (re)started at `now`: idle `idle` after it.
    pub fn new(idle: Duration, now: Instant) -> IdleClock {
        IdleClock {
            idle,
            last: None,
            active_at: now,
        }
    }

    /// Feed the sample taken at `now`; true when nothing changed for the idle time.
    /// A changed sample (a new request, an instance that came or went) is activity. The
    /// first sample sets the reference (the clock runs from the start).
    pub fn observe(&mut self, sample: Sample, now: Instant) -> bool {
        match &self.last {
            Some(prev) if *prev == sample => {}
            Some(_) => self.active_at = now,
            None => {}
        }
        self.last = Some(sample);
        now.saturating_duration_since(self.active_at) >= self.idle
    }

    /// Change the idle time (a new spec) without losing the activity seen.
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }
}

/// Ask every instance of `service` for its stats, collecting answers for [`COLLECT`].
async fn stats(client: &async_nats::Client, service: &str) -> Result<Vec<StatsResponse>, String> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish_with_reply(format!("$SRV.STATS.{service}"), inbox, bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + COLLECT;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, sub.next()).await {
        if let Ok(s) = serde_json::from_slice::<StatsResponse>(&msg.payload) {
            out.push(s);
        }
        if out.len() >= 4096 {
            break;
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

/// One app's place in the sleep task.
struct Watched {
    clock: IdleClock,
    next: Instant,
}

/// Sample the scale-to-zero apps that are awake and put the idle ones to sleep, until
/// `stop` (see the module docs).
pub async fn run(node: Node, client: async_nats::Client, stop: CancellationToken) {
    let mut watched: BTreeMap<String, Watched> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
        let awake = node.awake_sleepers();
        watched.retain(|app, _| awake.iter().any(|(a, _, _)| a == app));
        let now = Instant::now();
        for (app, service, idle) in awake {
            let w = watched.entry(app.clone()).or_insert_with(|| Watched {
                clock: IdleClock::new(idle, now),
                next: now,
            });
            w.clock.set_idle(idle);
            if Instant::now() < w.next {
                continue;
            }
            w.next = Instant::now() + check_every(idle);
            let answers = match stats(&client, &service).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%app, error = %e, "cannot read the service stats");
                    continue;
                }
            };
            if w.clock.observe(sample_of(&answers), Instant::now()) {
                tracing::info!(%app, idle_sec = idle.as_secs(), "idle: scaling to zero");
                node.sleep_app(&app).await;
                watched.remove(&app);
            }
        }
    }
}

impl Node {
    /// The apps with `scaleToZero` that are awake and up here (every instance `running`),
    /// with their service name and idle time (at least the spec's settle time, so a new run
    /// counts as ready before it may sleep: `narunctl deploy --wait` sees it ready). An app
    /// with an instance starting or restarting is not idle: its clock starts again once all
    /// run.
    fn awake_sleepers(&self) -> Vec<(String, String, Duration)> {
        let apps = self.inner.apps.lock().unwrap();
        apps.iter()
            .filter(|(_, a)| !a.asleep && !a.instances.is_empty())
            .filter_map(|(name, a)| {
                let s = a.spec.scale_to_zero.as_ref()?;
                let settle = narun_wire::status::SettleRule::new(a.spec.notify, a.spec.settle_sec)
                    .settle_time();
                a.instances
                    .values()
                    .all(|h| h.snapshot().status.is_up())
                    .then(|| (name.clone(), service_name(&a.spec), s.idle().max(settle)))
            })
            .collect()
    }

    /// Whether `app` sleeps (scaled to zero) here.
    pub fn is_asleep(&self, app: &str) -> bool {
        self.inner
            .apps
            .lock()
            .unwrap()
            .get(app)
            .is_some_and(|a| a.asleep)
    }

    /// Stop the instances of `app` because it is idle, and mark it asleep (reported as
    /// `scaled_to_zero`). Nothing happens if it lost `scaleToZero` meanwhile.
    pub async fn sleep_app(&self, app: &str) {
        let stop_timeout = {
            let apps = self.inner.apps.lock().unwrap();
            match apps.get(app) {
                Some(a) if a.spec.scale_to_zero.is_some() && !a.asleep => a.spec.stop_timeout_sec,
                _ => return,
            }
        };
        let _serial = self
            .serial(
                format!("scaling {app} to zero"),
                super::rollout::stop_budget(stop_timeout),
            )
            .await;
        let handles: Vec<InstanceHandle> = {
            let apps = self.inner.apps.lock().unwrap();
            match apps.get(app) {
                Some(a) if a.spec.scale_to_zero.is_some() && !a.asleep => {
                    a.instances.values().cloned().collect()
                }
                _ => return,
            }
        };
        // Asleep before the stop: a request that finds the service gone while its instances
        // drain reads `scaled_to_zero` in the heartbeat and wakes it (the wake waits for this
        // stop behind the apply lock, then starts the instances again).
        if let Some(a) = self.inner.apps.lock().unwrap().get_mut(app) {
            a.asleep = true;
        }
        self.inner.host.changed.notify_waiters();
        futures_util::future::join_all(handles.iter().map(|h| h.stop())).await;
        let node_id = &self.inner.host.settings.node_id;
        for h in &handles {
            let ev = StatusEvent {
                instance_id: h.instance_id.clone(),
                node_id: node_id.clone(),
                status: InstanceStatus::ScaledToZero,
                time: now_rfc3339(),
                app_name: app.to_string(),
                config_hash: h.hash.clone(),
                ..Default::default()
            };
            let payload = serde_json::to_vec(&ev).expect("a StatusEvent always serializes");
            self.inner
                .host
                .publish(names::status_subject(app, node_id), payload);
        }
        self.inner.host.changed.notify_waiters();
    }

    /// Start the instances of `app` if it sleeps (see the module docs for what is refused).
    pub async fn wake_app(&self, app: &str) -> WakeReply {
        let mut reply = WakeReply {
            node_id: self.inner.host.settings.node_id.clone(),
            app: app.to_string(),
            ..Default::default()
        };
        let check = |reply: &mut WakeReply| -> Option<(std::sync::Arc<AppSpec>, bool)> {
            let apps = self.inner.apps.lock().unwrap();
            match apps.get(app) {
                None => {
                    reply.error = format!(
                        "app {app} is not deployed on node {} (no spec selects this node)",
                        reply.node_id
                    );
                    None
                }
                Some(a) if a.spec.scale_to_zero.is_none() => {
                    reply.error = format!(
                        "app {app} has no scaleToZero in its spec: a wake starts only apps that scale to zero"
                    );
                    None
                }
                Some(a) => Some((a.spec.clone(), a.asleep)),
            }
        };
        match check(&mut reply) {
            None => return reply,
            Some((_, false)) => return reply,
            Some(_) => {}
        }
        let budget = Duration::from_secs(30);
        let _serial = self.serial(format!("the wake of {app}"), budget).await;
        // Again under the lock: a concurrent wake may have started it.
        let spec = match check(&mut reply) {
            Some((spec, true)) => spec,
            _ => return reply,
        };
        let target = spec.desired_replicas(
            &self.inner.host.settings.node_id,
            &self.inner.host.live().labels,
        );
        for index in 0..target {
            let h = self.start_instance(spec.clone(), index);
            reply.started.push(h.instance_id.clone());
            self.put_instance(app, h);
        }
        if let Some(a) = self.inner.apps.lock().unwrap().get_mut(app) {
            a.asleep = false;
        }
        tracing::info!(app, started = ?reply.started, "woken");
        self.inner.host.changed.notify_waiters();
        reply
    }

    async fn answer_wake(&self, payload: &[u8]) -> WakeReply {
        match serde_json::from_slice::<WakeRequest>(payload) {
            Ok(req) if !req.app.is_empty() => self.wake_app(&req.app).await,
            Ok(_) => WakeReply {
                node_id: self.inner.host.settings.node_id.clone(),
                error: "bad wake request: \"app\" is empty".into(),
                ..Default::default()
            },
            Err(e) => WakeReply {
                node_id: self.inner.host.settings.node_id.clone(),
                error: format!("bad wake request: {e} (expected {{\"app\": \"NAME\"}})"),
                ..Default::default()
            },
        }
    }
}

/// Serve the wake requests of this node (`narun.control.<node>.wake`) until `stop`.
pub async fn serve_wake(node: Node, client: async_nats::Client, stop: CancellationToken) {
    let subject = names::control_subject(&node.settings().node_id, names::CONTROL_WAKE);
    super::control::serve_requests(
        node,
        client,
        subject,
        "wake",
        stop,
        |node, payload| async move {
            let reply = node.answer_wake(&payload).await;
            if !reply.error.is_empty() {
                tracing::info!(app = %reply.app, error = %reply.error, "wake refused");
            }
            reply
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, u64)]) -> Sample {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn idle_after_idle_sec_without_a_change() {
        let t0 = Instant::now();
        let sec = Duration::from_secs;
        let mut c = IdleClock::new(sec(10), t0);
        assert!(!c.observe(s(&[("a", 5)]), t0 + sec(2)));
        assert!(!c.observe(s(&[("a", 5)]), t0 + sec(9)));
        // Nothing changed for 10 s since the start.
        assert!(c.observe(s(&[("a", 5)]), t0 + sec(10)));
    }

    #[test]
    fn a_request_or_a_new_instance_is_activity() {
        let t0 = Instant::now();
        let sec = Duration::from_secs;
        let mut c = IdleClock::new(sec(10), t0);
        assert!(!c.observe(s(&[("a", 5)]), t0 + sec(8)));
        assert!(!c.observe(s(&[("a", 6)]), t0 + sec(9)));
        assert!(!c.observe(s(&[("a", 6)]), t0 + sec(18)));
        assert!(c.observe(s(&[("a", 6)]), t0 + sec(19)));
        let mut c = IdleClock::new(sec(10), t0);
        assert!(!c.observe(s(&[("a", 6)]), t0 + sec(5)));
        assert!(!c.observe(s(&[("a", 6), ("b", 0)]), t0 + sec(12)));
        assert!(!c.observe(s(&[("b", 0)]), t0 + sec(20)));
        assert!(c.observe(s(&[("b", 0)]), t0 + sec(30)));
    }

    #[test]
    fn no_answer_at_all_is_a_sample_too() {
        // An app that answers no stats (not a Micro service) sleeps after idleSec.
        let t0 = Instant::now();
        let mut c = IdleClock::new(Duration::from_secs(3), t0);
        assert!(!c.observe(Sample::new(), t0 + Duration::from_secs(1)));
        assert!(c.observe(Sample::new(), t0 + Duration::from_secs(3)));
    }

    #[test]
    fn checks_are_a_fifth_of_the_idle_time_within_bounds() {
        let sec = Duration::from_secs;
        assert_eq!(check_every(sec(1)), sec(1));
        assert_eq!(check_every(sec(60)), sec(12));
        assert_eq!(check_every(sec(3600)), sec(30));
    }

    #[test]
    fn the_service_is_the_app_unless_the_env_names_it() {
        let mut spec = AppSpec::new("web", "v1");
        assert_eq!(service_name(&spec), "web");
        spec.env.push(narun_spec::EnvVar {
            name: "NARUN_SERVICE_NAME".into(),
            value: "front".into(),
            ..Default::default()
        });
        assert_eq!(service_name(&spec), "front");
    }
}
