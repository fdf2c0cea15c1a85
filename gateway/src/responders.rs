//! Waiting for a responder, and waking a scaled-to-zero app.
//!
//! When a request finds no responder (NATS answers "no responders": nobody received it,
//! so sending it again cannot run it twice, whatever its method), the gateway does not
//! have to answer 503 at once. It joins the **watch** of the service, one per service
//! shared by every request waiting for it:
//!
//! 1. **Announcements**: the watch subscribes to `narun.svc.up.<service>`
//!    ([`narun_wire::micro::announce_subject`]), where every instance of a service built
//!    with the `narun` library says it serves, once its endpoint is subscribed. Being
//!    told, not polling, is what wakes the waiting requests in the common case.
//! 2. **Discovery pings**: for services that do not announce (other languages, older
//!    apps), `$SRV.PING.<service>` is sent at once and then after 25 ms, doubling to
//!    1 s: a few pings per wait, never a busy loop.
//! 3. **Wake**: the watch reads the node heartbeats (`node-runner-states`) once; the
//!    nodes that report an instance of the app named like the service `scaled_to_zero`
//!    are asked to start it (`narun.control.<node>.wake`,
//!    [`narun_wire::events::WakeRequest`]); narund refuses apps without `scaleToZero`, so
//!    a client can only wake what the operator marked as sleeping, and one watch sends
//!    one wake however many requests wait. "No sleeping instance" is remembered for
//!    [`NO_SLEEPER_TTL`], so requests to a service that is simply absent do not read the
//!    heartbeats each time.
//!
//! A request waits until the service appears, then is sent again with the time left of
//! its deadline; how long at most:
//!
//! | situation | wait, always within the route's timeout |
//! |---|---|
//! | the app was woken | the route's timeout (a cold start) |
//! | otherwise | `wait_for_responder_ms`; a `GET`/`HEAD` at least [`NO_RESPONDERS_RETRY`] (the failover window) |
//!
//! While it waits a request keeps what it holds already: its in-flight slot
//! (`max_inflight_requests`) and its body's share of the memory budget
//! (`memory_budget_bytes`, [`crate::limits`]), so waiting requests are bounded like any
//! other. Routes whose subject is not a service name (a raw route to `orders.create`)
//! cannot be watched: they keep the failover retries only.

use crate::failover::NO_RESPONDERS_RETRY;
use futures_util::StreamExt;
use narun_wire::events::{WakeReply, WakeRequest};
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// First pause between two discovery pings; doubles up to [`PING_PAUSE_MAX`].
pub const PING_PAUSE: Duration = Duration::from_millis(25);
/// Longest pause between two discovery pings.
pub const PING_PAUSE_MAX: Duration = Duration::from_secs(1);
/// How long "no instance of this app is scaled to zero" is believed.
pub const NO_SLEEPER_TTL: Duration = Duration::from_secs(1);
/// Longest wait for the answer of one node to a wake request.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the wake step of a watch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Still reading the heartbeats or waiting for the nodes' answers.
    Pending,
    /// No node reports the app scaled to zero.
    NotAsleep,
    /// At least one node started it.
    Woken,
    /// The nodes refused (the first reason).
    Refused(String),
}

/// One service being watched.
struct Watch {
    found: watch::Receiver<bool>,
    wake: watch::Receiver<Wake>,
    task: tokio::task::AbortHandle,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Nobody waits any more: stop pinging and unsubscribe.
        self.task.abort();
    }
}

/// The watches of the services requests wait for ([`crate::Shared`]).
pub(crate) struct Responders {
    client: async_nats::Client,
    /// `wait_for_responder_ms`.
    wait: Duration,
    watches: Mutex<HashMap<Arc<str>, Weak<Watch>>>,
    /// When a wake lookup last found no sleeping instance, per service.
    no_sleeper: Arc<Mutex<HashMap<Arc<str>, std::time::Instant>>>,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// A responder is there: send the request again.
    Appeared,
    /// None within the wait; whether the app had been woken, and a refusal's reason.
    Gone {
        woken: bool,
        refused: Option<String>,
    },
}

/// Whether `subject` is a service name the gateway can watch (an ADR-32 name).
pub(crate) fn watchable(subject: &str) -> bool {
    narun_wire::micro::valid_name(subject)
}

/// The longest wait (pure; see the table in the module docs).
pub(crate) fn window(
    configured: Duration,
    idempotent: bool,
    woken: bool,
    left: Duration,
) -> Duration {
    if woken {
        return left;
    }
    let floor = if idempotent {
        NO_RESPONDERS_RETRY
    } else {
        Duration::ZERO
    };
    configured.max(floor).min(left)
}

/// The nodes whose heartbeat reports an instance of `app` scaled to zero (pure).
pub(crate) fn sleeping_nodes(states: &[narun_wire::events::NodeState], app: &str) -> Vec<String> {
    let mut nodes: Vec<String> = states
        .iter()
        .filter(|s| {
            s.instances
                .iter()
                .any(|i| i.app_name == app && i.status == InstanceStatus::ScaledToZero)
        })
        .map(|s| s.node_id.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

impl Responders {
    pub(crate) fn new(client: async_nats::Client, wait: Duration) -> Responders {
        Responders {
            client,
            wait,
            watches: Mutex::new(HashMap::new()),
            no_sleeper: Default::default(),
        }
    }

    /// Wait for a responder of `service` (see the module docs) until `deadline` at most.
    pub(crate) async fn wait(
        &self,
        service: &Arc<str>,
        idempotent: bool,
        deadline: Instant,
    ) -> Waited {
        let w = self.watch(service);
        let (mut found, mut wake) = (w.found.clone(), w.wake.clone());
        let start = Instant::now();
        loop {
            if *found.borrow_and_update() {
                return Waited::Appeared;
            }
            let state = wake.borrow_and_update().clone();
            let woken = state == Wake::Woken;
            let until = start + window(self.wait, idempotent, woken, deadline - start);
            let settled = state != Wake::Pending;
            if settled && Instant::now() >= until {
                let refused = match state {
                    Wake::Refused(r) => Some(r),
                    _ => None,
                };
                return Waited::Gone { woken, refused };
            }
            // While the wake lookup is pending, wait for it up to the deadline: a request
            // to a sleeping app must not give up before it is known to sleep.
            let stop = if settled { until } else { deadline };
            tokio::select! {
                r = found.changed() => if r.is_err() { return Waited::Gone { woken, refused: None } },
                r = wake.changed(), if !settled => if r.is_err() { return Waited::Gone { woken, refused: None } },
                _ = tokio::time::sleep_until(stop) => {
                    if Instant::now() >= deadline {
                        return Waited::Gone { woken, refused: None };
                    }
                }
            }
        }
    }

    /// The live watch of `service`, or a new one.
    fn watch(&self, service: &Arc<str>) -> Arc<Watch> {
        let mut watches = self.watches.lock().unwrap();
        if let Some(w) = watches.get(service).and_then(Weak::upgrade)
            && !*w.found.borrow()
        {
            return w;
        }
        watches.retain(|_, w| w.strong_count() > 0);
        let (found_tx, found) = watch::channel(false);
        let asleep_known_not = self
            .no_sleeper
            .lock()
            .unwrap()
            .get(service)
            .is_some_and(|t| t.elapsed() < NO_SLEEPER_TTL);
        let (wake_tx, wake) = watch::channel(if asleep_known_not {
            Wake::NotAsleep
        } else {
            Wake::Pending
        });
        let task = tokio::spawn(run_watch(
            self.client.clone(),
            service.clone(),
            found_tx,
            (!asleep_known_not).then_some(wake_tx),
            self.no_sleeper.clone(),
        ))
        .abort_handle();
        let w = Arc::new(Watch { found, wake, task });
        watches.insert(service.clone(), Arc::downgrade(&w));
        w
    }
}

/// The watch of one service: announcements, pings, and the wake (module docs).
async fn run_watch(
    client: async_nats::Client,
    service: Arc<str>,
    found: watch::Sender<bool>,
    wake: Option<watch::Sender<Wake>>,
    no_sleeper: Arc<Mutex<HashMap<Arc<str>, std::time::Instant>>>,
) {
    let mut announced = match client
        .subscribe(narun_wire::micro::announce_subject(&service))
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(%service, error = %e, "cannot watch the service's announcements");
            None
        }
    };
    if let Some(wake) = wake {
        let (client, service) = (client.clone(), service.clone());
        tokio::spawn(async move {
            let outcome = wake_sleepers(&client, &service).await;
            if outcome == Wake::NotAsleep {
                no_sleeper
                    .lock()
                    .unwrap()
                    .insert(service.clone(), std::time::Instant::now());
            }
            let _ = wake.send(outcome);
        });
    }
    let ping_subject = format!("$SRV.PING.{service}");
    let mut pause = PING_PAUSE;
    loop {
        let ping = client.request(ping_subject.clone(), bytes::Bytes::new());
        let pinged = tokio::time::timeout(pause, ping);
        let next = tokio::time::sleep(pause);
        let heard = async {
            match announced.as_mut() {
                Some(s) => s.next().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            true = heard => break,
            r = pinged => if let Ok(Ok(_)) = r {
                break;
            } else {
                // No responders (an immediate answer) or no answer within the pause: wait
                // out the rest of the pause, still listening.
                let heard = async {
                    match announced.as_mut() {
                        Some(s) => s.next().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    true = heard => break,
                    _ = next => {}
                }
            },
        }
        pause = (pause * 2).min(PING_PAUSE_MAX);
    }
    tracing::debug!(%service, "a responder appeared");
    let _ = found.send(true);
}

/// Read the heartbeats, and wake the app named `service` on the nodes where it sleeps.
async fn wake_sleepers(client: &async_nats::Client, service: &str) -> Wake {
    let states = match crate::discovery::node_states(client).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%service, error = %e, "cannot read the node heartbeats to wake the app");
            return Wake::NotAsleep;
        }
    };
    let nodes = sleeping_nodes(&states, service);
    if nodes.is_empty() {
        return Wake::NotAsleep;
    }
    let body: bytes::Bytes = serde_json::to_vec(&WakeRequest {
        app: service.to_string(),
    })
    .unwrap_or_default()
    .into();
    let asks = nodes.iter().map(|node| {
        let subject = names::control_subject(node, names::CONTROL_WAKE);
        let body = body.clone();
        async move {
            let req = async_nats::Request::new()
                .payload(body)
                .timeout(Some(WAKE_TIMEOUT));
            match client.send_request(subject, req).await {
                Ok(msg) => match serde_json::from_slice::<WakeReply>(&msg.payload) {
                    Ok(r) if r.error.is_empty() => Ok(()),
                    Ok(r) => Err(format!("node {node}: {}", r.error)),
                    Err(e) => Err(format!("node {node}: undecodable wake reply: {e}")),
                },
                Err(e) => Err(format!("node {node}: {e}")),
            }
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    if answers.iter().any(|a| a.is_ok()) {
        tracing::info!(%service, ?nodes, "woke a scaled-to-zero app");
        return Wake::Woken;
    }
    let why = answers
        .into_iter()
        .find_map(|a| a.err())
        .unwrap_or_default();
    tracing::warn!(%service, %why, "waking a scaled-to-zero app failed");
    Wake::Refused(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use narun_wire::events::{InstanceState, NodeState};

    #[test]
    fn how_long_a_request_waits() {
        let ms = Duration::from_millis;
        let left = ms(15_000);
        // Nothing configured: a POST does not wait, a GET waits the failover window.
        assert_eq!(window(ms(0), false, false, left), ms(0));
        assert_eq!(window(ms(0), true, false, left), NO_RESPONDERS_RETRY);
        // Configured: that long, within the time left.
        assert_eq!(window(ms(2000), false, false, left), ms(2000));
        assert_eq!(window(ms(20_000), true, false, left), left);
        // Woken: the whole time left.
        assert_eq!(window(ms(0), false, true, left), left);
    }

    #[test]
    fn only_nodes_where_the_app_sleeps_are_woken() {
        let inst = |app: &str, status: InstanceStatus| InstanceState {
            instance_id: format!("{app}-0"),
            app_name: app.into(),
            status,
            ..Default::default()
        };
        let node = |id: &str, instances: Vec<InstanceState>| NodeState {
            node_id: id.into(),
            instances,
            ..Default::default()
        };
        let states = [
            node("b", vec![inst("web", InstanceStatus::ScaledToZero)]),
            node(
                "a",
                vec![
                    inst("web", InstanceStatus::ScaledToZero),
                    inst("db", InstanceStatus::Running),
                ],
            ),
            node("c", vec![inst("web", InstanceStatus::Failed)]),
            node("d", vec![inst("api", InstanceStatus::ScaledToZero)]),
        ];
        assert_eq!(sleeping_nodes(&states, "web"), ["a", "b"]);
        assert!(sleeping_nodes(&states, "db").is_empty());
        assert!(sleeping_nodes(&states, "nope").is_empty());
    }

    #[test]
    fn only_service_names_are_watched() {
        assert!(watchable("hello"));
        assert!(watchable("grpc-hello_2"));
        assert!(!watchable("orders.create"));
        assert!(!watchable("a.*"));
        assert!(!watchable(""));
    }
}
