//! The reply inbox shared by every call: one wildcard subscription, each
//! call's replies routed to it by the last subject token.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages a call may buffer before it counts as lost ([`super::code::DATA_LOSS`]).
const CALL_BUFFER: usize = 4096;

/// One wildcard subscription `<prefix>.*` for the replies of every call, so a
/// call costs no `SUB`/`UNSUB` (like async-nats request-reply's muxed inbox,
/// but a call may receive many messages).
pub(super) struct Inbox {
    pub(super) prefix: String,
    pub(super) calls: std::sync::Mutex<HashMap<u64, mpsc::Sender<async_nats::Message>>>,
    pub(super) next: std::sync::atomic::AtomicU64,
}

/// A call's reply subject and receiver; unregisters on drop.
pub(super) struct CallInbox {
    inbox: Arc<Inbox>,
    id: u64,
    pub(super) subject: String,
    pub(super) rx: mpsc::Receiver<async_nats::Message>,
}

impl Inbox {
    pub(super) fn register(self: &Arc<Self>) -> CallInbox {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CALL_BUFFER);
        self.calls.lock().expect("lock").insert(id, tx);
        CallInbox {
            inbox: self.clone(),
            id,
            subject: format!("{}.{id}", self.prefix),
            rx,
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
            let tx = self.calls.lock().expect("lock").get(&id).cloned();
            // A full buffer drops the message: the call sees a sequence gap.
            if let Some(tx) = tx {
                let _ = tx.try_send(msg);
            }
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
