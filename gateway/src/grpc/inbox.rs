//! The reply inbox shared by every call: one wildcard subscription, each
//! call's replies routed to it by the last subject token.
//!
//! A buffered reply holds its bytes (payload + [`MESSAGE_OVERHEAD`]) of the
//! gateway's memory budget until it is sent to the client. Core NATS has no
//! flow control to push back on the app, so a reply that does not fit ends the
//! call: the buffered replies are still delivered, then `RESOURCE_EXHAUSTED`.

use crate::limits::{Lease, Limits, Listener, MESSAGE_OVERHEAD, Shed};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Messages a call may buffer before it counts as lost ([`super::code::DATA_LOSS`]).
const CALL_BUFFER: usize = 4096;

/// One wildcard subscription `<prefix>.*` for the replies of every call, so a
/// call costs no `SUB`/`UNSUB` (like async-nats request-reply's muxed inbox,
/// but a call may receive many messages).
pub(super) struct Inbox {
    pub(super) prefix: String,
    pub(super) calls: std::sync::Mutex<HashMap<u64, Registered>>,
    pub(super) next: std::sync::atomic::AtomicU64,
    pub(super) limits: Arc<Limits>,
}

/// A reply and the budget it holds. Boxed: the channel allocates its slots in
/// blocks of 32, and 32 unboxed messages (~6 KiB) per call went to the
/// allocator's slow path.
pub(super) type Reply = (Box<async_nats::Message>, Lease);

/// A call's entry in the inbox.
pub(super) struct Registered {
    tx: mpsc::Sender<Reply>,
    /// Set when a reply did not fit in the memory budget.
    exhausted: Arc<AtomicBool>,
}

/// A call's reply subject and receiver; unregisters on drop.
pub(super) struct CallInbox {
    inbox: Arc<Inbox>,
    id: u64,
    pub(super) subject: String,
    pub(super) rx: mpsc::Receiver<Reply>,
    exhausted: Arc<AtomicBool>,
    /// The call's in-flight slot, held as long as its answer is read.
    pub(super) slot: Option<OwnedSemaphorePermit>,
}

impl CallInbox {
    /// Whether a reply was dropped because the memory budget was exhausted
    /// (the receiver then ends after the replies already buffered).
    pub(super) fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }
}

impl Inbox {
    pub(super) fn register(self: &Arc<Self>) -> CallInbox {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CALL_BUFFER);
        let exhausted = Arc::new(AtomicBool::new(false));
        self.calls.lock().expect("lock").insert(
            id,
            Registered {
                tx,
                exhausted: exhausted.clone(),
            },
        );
        CallInbox {
            inbox: self.clone(),
            id,
            subject: format!("{}.{id}", self.prefix),
            rx,
            exhausted,
            slot: None,
        }
    }

    /// Route replies to their call until the subscription ends.
    pub(super) async fn dispatch(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some(id) = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(tx) = self
                .calls
                .lock()
                .expect("lock")
                .get(&id)
                .map(|r| r.tx.clone())
            else {
                continue;
            };
            let cost = msg.payload.len() as u64 + MESSAGE_OVERHEAD;
            let Some(lease) = Lease::try_new(self.limits.budget(), cost) else {
                // Out of memory: end the call (its sender goes, the receiver
                // ends after what is buffered).
                if let Some(r) = self.calls.lock().expect("lock").remove(&id) {
                    r.exhausted.store(true, Ordering::Release);
                    self.limits.shed(Listener::Grpc, Shed::Memory);
                }
                continue;
            };
            // A full buffer drops the message: the call sees a sequence gap.
            let _ = tx.try_send((Box::new(msg), lease));
        }
    }
}

impl Drop for CallInbox {
    fn drop(&mut self) {
        self.inbox.calls.lock().expect("lock").remove(&self.id);
    }
}

/// Aborts the inbox dispatcher when the gateway goes away.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
