//! Command units (`mode = "command"`, docs/jobs.md "Command units"): an app without a
//! server. narund registers the app's NATS Micro service and endpoint itself — the same
//! service name, endpoint (`handler`), subject and queue group (`q`) the `narun` library
//! would use, so the gateway, `narunctl request` and async jobs reach it unchanged — and
//! runs the binary once per request.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the unit's task: prepare, register, admit requests, stop |
//! | `request.rs` | the request as the command sees it: BHTTP or raw in, the sanitised `NARUN_REQUEST_*` environment (pure) |
//! | `response.rs` | stdout to an answer: the optional header block, failures, BHTTP or raw out (pure) |
//! | `run.rs` | one run: child cgroup, pipes, bounds, timeout, `cgroup.kill` |
//!
//! # The unit's life
//!
//! * **starting**: what a start of an ordinary instance does before its spawn, once: the
//!   node's capability and open files policy, the verified binary, the user, the work dir,
//!   mounted files and secrets (kept in narund's memory while the unit serves: every run
//!   needs them), the app's NATS identity, the instance cgroup with the spec's limits.
//! * **running** (no pid): the endpoint is subscribed; the unit counts as ready like an
//!   instance without `notify` (after `settleSec`).
//! * Each request is **admitted** when fewer than `maxConcurrent + maxQueued` are in
//!   the unit, else answered `503` at once (so at most that many payloads are held); it
//!   waits at most `queueTimeoutSec` for one of `maxConcurrent` runs (`503`), then runs
//!   for at most `timeoutSec` or the caller's deadline (`Narun-Timeout-Ms`), whichever is
//!   shorter (`504`). A run that fails is a `502` and counts in the endpoint's stats
//!   (`num_errors`, `data.command_failed`, `data.command_timeout`, `data.command_busy`),
//!   never as a restart.
//! * **Stop** (scale down, spec change, delete, shutdown): the subscription is drained
//!   (requests the server delivered before the unsubscribe are still answered), discovery
//!   stops, and runs in flight get what is left of `stopTimeoutSec`; then the instance
//!   cgroup is killed and removed.
//! * A start that fails (`failed`, with the reason an instance would have), or an
//!   endpoint that ends, is tried again after the restart backoff, until stopped.

mod request;
mod response;
mod run;

use super::lifecycle::Report;
use super::task::{StartFailure, Task, new_run_id, stopped};
use super::{BACKOFF_START, Host, InstanceHandle};
use futures_util::StreamExt;
use narun_spec::AppSpec;
use narun_wire::micro::{self, EndpointConfig, Service, ServiceConfig};
use narun_wire::names::{self, request_env};
use narun_wire::status::{InstanceStatus, Reason};
use request::CommandRequest;
use response::Reply;
use run::Prepared;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Endpoint `data` counter: runs that failed (exit status, signal, bounds, header block).
pub const STAT_FAILED: &str = "command_failed";
/// Endpoint `data` counter: runs killed at their time limit.
pub const STAT_TIMEOUT: &str = "command_timeout";
/// Endpoint `data` counter: requests refused because every run was busy.
pub const STAT_BUSY: &str = "command_busy";
/// The endpoint name, as the `narun` library's HTTP services.
pub const ENDPOINT: &str = "handler";

/// Start the task of command unit `index` of `spec` (see [`Host::spawn_instance`]).
pub(super) fn spawn(
    host: Arc<Host>,
    spec: Arc<AppSpec>,
    index: u32,
    revision: u64,
) -> InstanceHandle {
    let (handle, task) = super::task::new(host, spec, index, revision);
    crate::spawn(run_unit(task));
    handle
}

fn report(status: InstanceStatus, reason: Option<Reason>, error: String, restarts: u32) -> Report {
    Report {
        status,
        pid: None,
        reason,
        exit_code: None,
        error,
        restarts,
        notify_status: String::new(),
        start_deadline: None,
    }
}

/// How serving ended.
enum Served {
    /// Asked to stop.
    Stopped,
    /// The endpoint could not be registered or its subscription ended.
    Failed(String),
}

async fn run_unit(mut task: Task) {
    let mut restarts = 0u32;
    loop {
        if *task.stop.borrow() {
            break;
        }
        task.run_id = new_run_id();
        task.publish(
            report(InstanceStatus::Starting, None, String::new(), restarts),
            None,
        );
        let failure = match Box::pin(prepare(&mut task)).await {
            Ok(p) => match serve(&mut task, p, restarts).await {
                Served::Stopped => break,
                Served::Failed(e) => StartFailure::new(Reason::Spawn, e),
            },
            Err(f) => f,
        };
        task.publish(
            report(
                InstanceStatus::Failed,
                Some(failure.reason),
                failure.error,
                restarts,
            ),
            None,
        );
        let max = task.host.live().restart_backoff_max;
        let wait = BACKOFF_START
            .saturating_mul(1u32 << restarts.min(16))
            .min(max.max(BACKOFF_START));
        restarts = restarts.saturating_add(1);
        let mut stop = task.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    task.publish(
        report(InstanceStatus::Stopped, None, String::new(), restarts),
        None,
    );
    task.status.send_modify(|s| {
        s.ended = true;
        s.pid = None;
    });
    task.host.changed.notify_waiters();
}

/// Everything a start of an instance does before its spawn (`super::start`), once.
async fn prepare(task: &mut Task) -> Result<Prepared, StartFailure> {
    let live = task.host.live();
    let caps = crate::privileges::grant_capabilities(
        &task.spec.capabilities,
        &live.allowed_capabilities,
        live.allow_root,
    )
    .map_err(|e| StartFailure::new(Reason::Capability, e.to_string()))?;
    let narund_hard = crate::sys::rlimit::nofile().map_or(u64::MAX, |(_, hard)| hard);
    let nofile = crate::nofile::for_app(task.spec.nofile_max, live.nofile_max, narund_hard)
        .map_err(|e| StartFailure::new(Reason::Rlimit, e))?;
    drop(live);

    let bin = task.binary().await?;
    task.check_executable(&bin)?;
    let digest = bin.digest.to_hex();
    task.status.send_modify(|s| s.digest = digest.clone());
    task.host.local.record_digest(&task.spec, &digest);
    task.pinned = Some(bin.digest);

    let identity = task
        .identity()
        .map_err(|e| StartFailure::new(Reason::User, e.to_string()))?;
    let work = task.work_dir();
    let owner = identity.as_ref().map(|id| (id.uid, id.gid));
    super::start::prepare_work_dir(&work, owner)
        .map_err(|e| StartFailure::new(Reason::Spawn, format!("work dir: {e}")))?;
    let input_err =
        |e: crate::fetch::inputs::InputError| StartFailure::new(e.reason(), e.to_string());
    let inputs = &task.host.inputs;
    inputs
        .place_mounts(&task.spec, &work, owner)
        .await
        .map_err(input_err)?;
    task.secret_env = inputs.secret_env(&task.spec).await.map_err(input_err)?;
    let (nats_env, nats_creds) = super::nats_identity::prepare(
        &task.host.settings,
        &task.spec.name,
        &task.instance_id,
        &task.run_id,
        owner,
        &super::nats_identity::callees(&task.spec),
    )
    .map_err(|e| StartFailure::new(Reason::Spawn, e.to_string()))?;
    task.nats_env = nats_env;
    task.notify_env.clear();
    // The request's variables are narund's alone: a spec variable cannot shadow them.
    let env: Vec<(String, String)> = task
        .environment(identity.as_ref(), &work)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(request_env::PREFIX))
        .collect();
    // The plaintext now lives in `env` (narund's memory) for as long as the unit serves.
    task.secret_env = Vec::new();
    let privileges = match &identity {
        Some(id) => Some(
            crate::privileges::PrivilegePlan::new(id, &caps).map_err(|e| {
                let reason = match e {
                    crate::privileges::PrivilegeError::CapabilityUnavailable { .. } => {
                        Reason::Capability
                    }
                    _ => Reason::User,
                };
                StartFailure::new(reason, e.to_string())
            })?,
        ),
        None => None,
    };

    let cgroup = task.create_cgroup()?;
    Ok(Prepared {
        instance_id: task.instance_id.clone(),
        program: bin.path,
        args: task.spec.args.clone(),
        env,
        cwd: work,
        nofile,
        privileges,
        cgroup,
        processes: task.host.processes.clone(),
        sink: task.sink.clone(),
        settings: task.spec.command_unit.clone(),
        seq: Default::default(),
        _nats_creds: nats_creds,
    })
}

/// The service name and version, as the `narun` library takes them: `NARUN_SERVICE_NAME`
/// and `NARUN_SERVICE_VERSION` of the spec's `env`, else the app name and `0.1.0`.
fn service_config(task: &Task) -> ServiceConfig {
    let get = |k: &str| {
        task.spec
            .env
            .iter()
            .rev()
            .find(|e| e.name == k && e.value_from_secret.is_empty() && !e.value.is_empty())
            .map(|e| e.value.clone())
    };
    let name = get("NARUN_SERVICE_NAME").unwrap_or_else(|| task.spec.name.clone());
    let version = get("NARUN_SERVICE_VERSION").unwrap_or_else(|| "0.1.0".into());
    let mut config = ServiceConfig::new(name, version);
    config.description = format!("command unit {}", task.spec.name);
    config.metadata = [
        ("narun_app", task.spec.name.clone()),
        ("narun_instance_id", task.instance_id.clone()),
        ("narun_node_id", task.host.settings.node_id.clone()),
        ("narun_run_id", task.run_id.clone()),
        ("narun_mode", "command".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    config
}

/// What the request handlers share.
struct Unit {
    prepared: Prepared,
    runs: Semaphore,
    max_concurrent: usize,
    /// Requests admitted and not answered yet (waiting or running).
    pending: AtomicUsize,
    max_pending: usize,
    queue_timeout: Duration,
    run_timeout: Duration,
    max_payload: usize,
    app: String,
}

/// Register the endpoint and serve until stopped.
async fn serve(task: &mut Task, prepared: Prepared, restarts: u32) -> Served {
    let client = task.host.client.clone();
    let config = service_config(task);
    let subject = config.name.clone();
    let settings = &task.spec.command_unit;
    let registered = match Service::start(&client, config).await {
        Ok(service) => match service
            .add_endpoint(EndpointConfig::new(ENDPOINT, &subject))
            .await
        {
            Ok(endpoint) => Ok((service, endpoint)),
            Err(e) => {
                service.stop().await;
                Err(format!("registering the endpoint: {e}"))
            }
        },
        Err(e) => Err(format!("registering the service: {e}")),
    };
    let (service, mut endpoint) = match registered {
        Ok(r) => r,
        Err(e) => {
            remove_cgroup(task, prepared.cgroup).await;
            return Served::Failed(e);
        }
    };
    narun_wire::connect::sync_with_server(&client, Duration::from_secs(5)).await;
    let max_concurrent = settings.max_concurrent() as usize;
    let unit = Arc::new(Unit {
        runs: Semaphore::new(max_concurrent),
        max_concurrent,
        pending: AtomicUsize::new(0),
        max_pending: max_concurrent + settings.max_queued() as usize,
        queue_timeout: Duration::from_secs(settings.queue_timeout_sec()),
        run_timeout: Duration::from_secs(settings.timeout_sec()),
        max_payload: client.max_payload(),
        app: task.spec.name.clone(),
        prepared,
    });
    task.publish(
        report(InstanceStatus::Running, None, String::new(), restarts),
        None,
    );
    tracing::info!(instance = %task.instance_id, %subject, "command unit serving");
    let mut inflight = tokio::task::JoinSet::new();
    let mut stop = task.stop.clone();
    let ended = loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break Served::Stopped,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            r = endpoint.next() => match r {
                Some(request) => {
                    if let Some(work) = admit(&unit, request).await {
                        inflight.spawn(work);
                    }
                }
                None => break Served::Failed("the endpoint's subscription ended".into()),
            },
        }
    };
    if matches!(ended, Served::Stopped) {
        task.publish(
            report(InstanceStatus::Stopping, None, String::new(), restarts),
            None,
        );
    }
    // No new requests; those the server delivered before the unsubscribe are answered
    // (a caller would otherwise wait for its time-out), within stopTimeoutSec in all.
    let grace = Duration::from_secs(task.spec.stop_timeout_sec);
    let until = tokio::time::Instant::now() + grace;
    endpoint.drain().await;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = endpoint.next() => match r {
                Some(request) => {
                    if let Some(work) = admit(&unit, request).await {
                        inflight.spawn(work);
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(until) => break,
            // The drain completes when the server confirms the unsubscribe: not while
            // NATS is unreachable (and then nothing new can arrive).
            _ = check.tick() => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    break;
                }
            }
        }
    }
    service.stop().await;
    let drained = tokio::time::timeout_at(until, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(instance = %task.instance_id, "command runs still in flight after stopTimeoutSec: killing them");
        if let Some(cg) = &unit.prepared.cgroup {
            let _ = cg.kill();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        inflight.abort_all();
        while inflight.join_next().await.is_some() {}
    }
    match Arc::into_inner(unit) {
        Some(u) => remove_cgroup(task, u.prepared.cgroup).await,
        None => {
            tracing::warn!(instance = %task.instance_id, "a command run outlived its unit; its cgroup is removed at the next start of narund")
        }
    }
    ended
}

/// Kill whatever is left in the instance cgroup and remove it.
async fn remove_cgroup(task: &Task, cgroup: Option<Box<dyn crate::cgroup::RunCgroup>>) {
    if let Some(cg) = cgroup
        && let Err(e) = cg.remove(Duration::from_secs(10)).await
    {
        tracing::warn!(instance = %task.instance_id, error = %e, "removing the command unit's cgroup");
    }
}

/// Answer at once what cannot run (no reply subject, not decodable, too many pending);
/// otherwise the work of the request, to run in its own task.
async fn admit(
    unit: &Arc<Unit>,
    request: micro::Request,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    if request.message.reply.is_none() {
        let stats = request.stats();
        stats.record(
            request.received().elapsed(),
            Some(("400", "request without a reply subject refused")),
        );
        stats.count("no_reply");
        return None;
    }
    let headers: Vec<(String, Vec<String>)> = request
        .message
        .headers
        .as_ref()
        .map(|h| {
            let mut v: Vec<(String, Vec<String>)> = h
                .iter()
                .map(|(k, vs)| {
                    (
                        k.to_string(),
                        vs.iter().map(|v| v.as_str().to_string()).collect(),
                    )
                })
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    let deadline = request
        .message
        .headers
        .as_ref()
        .and_then(|h| h.get(names::TIMEOUT_MS))
        .and_then(|v| names::parse_timeout_ms(v.as_str()))
        .and_then(|b| tokio::time::Instant::from_std(request.received()).checked_add(b));
    let req = match request::decode(&headers, request.message.payload.clone()) {
        Ok(r) => r,
        Err(text) => {
            let _ = request
                .respond_error(400, &text, bytes::Bytes::new(), None)
                .await;
            return None;
        }
    };
    if unit.pending.fetch_add(1, Ordering::AcqRel) >= unit.max_pending {
        unit.pending.fetch_sub(1, Ordering::AcqRel);
        let text = format!(
            "{}: all {} runs are busy and {} requests wait already (commandUnit.maxConcurrent, maxQueued)",
            unit.app,
            unit.max_concurrent,
            unit.max_pending - unit.max_concurrent
        );
        busy(request, &req, &text).await;
        return None;
    }
    let unit = unit.clone();
    Some(async move {
        handle(&unit, request, req, deadline).await;
        unit.pending.fetch_sub(1, Ordering::AcqRel);
    })
}

/// `503`: every run is busy.
async fn busy(request: micro::Request, req: &CommandRequest, text: &str) {
    request.stats().count(STAT_BUSY);
    let (payload, headers) = Reply::failure(503, text).encode(req.protocol);
    let _ = request.respond_failed(503, text, payload, headers).await;
}

/// Wait for a run, run, answer.
async fn handle(
    unit: &Unit,
    request: micro::Request,
    req: CommandRequest,
    deadline: Option<tokio::time::Instant>,
) {
    let now = tokio::time::Instant::now();
    let left = deadline.map(|d| d.saturating_duration_since(now));
    let wait = left.map_or(unit.queue_timeout, |l| l.min(unit.queue_timeout));
    let permit = match tokio::time::timeout(wait, unit.runs.acquire()).await {
        Ok(Ok(p)) => p,
        _ => {
            let text = format!(
                "{}: no run became free within {} ms (commandUnit.maxConcurrent = {}, queueTimeoutSec, or the caller's deadline)",
                unit.app,
                wait.as_millis(),
                unit.max_concurrent
            );
            busy(request, &req, &text).await;
            return;
        }
    };
    let budget = deadline
        .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
        .map_or(unit.run_timeout, |l| l.min(unit.run_timeout));
    if budget.is_zero() {
        // The caller has given up: nobody reads an answer.
        request.stats().record(
            request.received().elapsed(),
            Some(("504", "deadline passed: request dropped unanswered")),
        );
        return;
    }
    let ran = unit.prepared.run(&req, budget).await;
    drop(permit);
    let (mut reply, mut failure) = (ran.reply, ran.failure);
    let (mut payload, mut headers) = reply.encode(req.protocol);
    if unit.max_payload > 0 && payload.len() > unit.max_payload {
        let text = format!(
            "the command's answer is {} bytes, more than NATS max_payload ({} bytes)",
            payload.len(),
            unit.max_payload
        );
        unit.prepared
            .sink
            .line("stderr", &format!("narund: {text}"));
        reply = Reply::failure(502, &text);
        (payload, headers) = reply.encode(req.protocol);
        failure = Some(run::Failure::Failed);
    }
    let sent = match failure {
        None => request.respond(payload, headers).await,
        Some(f) => {
            request.stats().count(f.counter());
            let text = String::from_utf8_lossy(&reply.body).trim().to_string();
            request
                .respond_failed(reply.status, &text, payload, headers)
                .await
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "answering a command unit request");
    }
}
