//! Following a subject, for `narunctl logs` and `narunctl events`: live from a core
//! subscription (what the server does not keep), or history first from a JetStream
//! stream through one ordered consumer that then keeps delivering new messages, so
//! nothing is lost or printed twice where the history ends.
//!
//! Every wait is bounded by the session's timeout except the ones that follow (they end
//! on Ctrl-C, or when the printer says stdout is closed).

use crate::session::{Session, bounded};
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::StreamExt;
use std::time::Duration;

/// The messages of an ordered push consumer.
pub type Messages = jetstream::consumer::push::Ordered;

/// A SIGINT (Ctrl-C) listener, registered now: one listener for the whole command, so
/// a signal that arrives while a message is being printed is not lost (a fresh
/// `tokio::signal::ctrl_c()` per loop turn misses signals between turns, and once tokio
/// owns SIGINT a missed one is ignored for good).
pub fn sigint() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow!("installing the SIGINT handler: {e}"))
}

/// Follow `subject` live until Ctrl-C, or until `print` returns false (stdout closed).
pub async fn live(
    session: &Session,
    subject: &str,
    mut print: impl FnMut(&[u8]) -> bool,
) -> Result<()> {
    let client = &session.client;
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| anyhow!("subscribing to {subject}: {e}"))?;
    if !narun_wire::connect::sync_with_server(client, session.timeout).await {
        bail!(
            "subscribing to {subject}: the server did not confirm within {:?}",
            session.timeout
        );
    }
    let mut interrupt = sigint()?;
    eprintln!("following {subject} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = sub.next() => {
                let Some(msg) = msg else { bail!("the NATS subscription to {subject} ended") };
                if !print(&msg.payload) {
                    return Ok(());
                }
            }
        }
    }
}

/// An ordered consumer of `stream_name` on `subject` from `policy` on: its messages and
/// how many of them are history (pending when it was created).
pub async fn open_ordered(
    session: &Session,
    stream: &jetstream::stream::Stream,
    stream_name: &str,
    subject: &str,
    policy: DeliverPolicy,
) -> Result<(Messages, u64)> {
    use jetstream::consumer::push;
    let timeout = session.timeout;
    let consumer = bounded(
        timeout,
        &format!("creating a consumer on {stream_name}"),
        stream.create_consumer(push::OrderedConfig {
            deliver_subject: session.client.new_inbox(),
            filter_subject: subject.to_string(),
            deliver_policy: policy,
            ..Default::default()
        }),
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    let messages = bounded(
        timeout,
        &format!("starting the consumer on {stream_name}"),
        consumer.messages(),
    )
    .await?;
    Ok((messages, pending))
}

/// The next message of `messages`: waiting at most `idle` (history is already stored;
/// `None` = follow, wait for ever). `Ok(None)` = nothing within `idle`.
pub async fn next(
    messages: &mut Messages,
    stream_name: &str,
    subject: &str,
    idle: Option<Duration>,
) -> Result<Option<jetstream::Message>> {
    let msg = match idle {
        Some(t) => match tokio::time::timeout(t, messages.next()).await {
            Ok(m) => m,
            Err(_) => return Ok(None),
        },
        None => messages.next().await,
    };
    match msg {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => bail!("reading {subject} from {stream_name}: {e}"),
        None => bail!("the consumer on {stream_name} ended"),
    }
}
