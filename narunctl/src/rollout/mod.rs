//! `narunctl deploy --wait`: follow a rollout until every selected instance runs the
//! new spec and is ready, or say why not.
//!
//! # What is followed
//!
//! * **Status events** on `status.<app>.*` ([`StatusEvent`]): every transition of every
//!   run (`starting`, `running`, `crashed`, `backoff`, `failed`, `rolled_back`, …). Each
//!   event carries the run hash of the spec that run executes (`config_hash`), so the
//!   runs of the new spec are told apart from the old ones they replace (narund starts
//!   the new run of `hello-0` *next to* the old `hello-0` and stops the old one only once
//!   the new one has settled).
//! * **Node heartbeats** in `node-runner-states` ([`NodeState`]): which nodes are online
//!   and their labels, which — with the spec's selectors
//!   ([`AppSpec::desired_replicas`]) — gives the instances to wait for
//!   (`<app>-0 … <app>-<n-1>` on each selected node). The heartbeat also lists each
//!   instance with its run hash, which covers instances that already run this exact spec
//!   (a redeploy that changed only replica counts restarts nothing and publishes no
//!   event).
//! * **Log lines** on `logs.<app>.*`: the last [`LOG_TAIL`] lines of each instance, printed
//!   when it fails.
//!
//! [`Follower::subscribe`] must run **before** the spec is written: core NATS keeps no
//! history, so an event published before the subscription exists is lost.
//!
//! # When an instance is ready
//!
//! An instance is ready once a run of the new spec is `running` and, unless the spec has
//! `notify = true` (narund then reports `running` only after the app's `READY=1`), has
//! stayed running for `settleSec` — the same rule narund uses before it stops an old run.
//!
//! # When the wait fails
//!
//! * a run of the new spec reports `failed` (fetch, verify, spawn, start limit, …);
//! * it `crashed` (or exited) and the spec's restart policy does not restart it;
//! * narund stopped it before it became ready (a replacement that did not settle: the
//!   old run keeps serving) or reported `rolled_back`;
//! * narund reported the spec as `invalid_spec`;
//! * the timeout passed.
//!
//! # Who does what
//!
//! * [`tracker`]: the pure bookkeeping ([`Tracker`](tracker::Tracker): events in, a
//!   verdict, table rows and the failure report out); unit tested, no NATS.
//! * [`follower`]: [`Follower`] subscribes, watches the heartbeats and feeds the tracker
//!   until it says ready or failed, or time runs out.
//! * [`screen`]: draws the live table (in place on a terminal, one line per change
//!   otherwise).
//!
//! [`StatusEvent`]: narun_wire::events::StatusEvent
//! [`NodeState`]: narun_wire::events::NodeState
//! [`AppSpec::desired_replicas`]: narun_spec::AppSpec::desired_replicas
//! [`LOG_TAIL`]: tracker::LOG_TAIL

mod follower;
mod screen;
mod tracker;

pub use follower::Follower;
