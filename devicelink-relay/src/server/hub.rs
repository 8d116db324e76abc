//! The state every connection shares: the core's ledger and directory, who
//! is connected, and who subscribed to which account.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use devicelink::relay::{ClientId, Ledger, SweptDevice};
use devicelink::{AccountId, DeviceIndex, LogoutReason, SignedDeviceList};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::metrics::Metrics;
use super::{Clock, Drained, Limits};
use crate::frame::Frame;
use crate::store::{AccountDirectory, Store};

/// Tells a connection task to close, with a close code (first one wins).
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    code: AtomicU16,
    notify: Notify,
}

impl CloseSignal {
    pub(crate) fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    pub(crate) fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }

    pub(crate) async fn closed(&self) {
        self.notify.notified().await;
    }
}

/// A connected client as the others reach it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) tx: mpsc::Sender<Bytes>,
    pub(crate) close: Arc<CloseSignal>,
}

/// One companion's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscriber {
    pub(crate) client: ClientId,
    pub(crate) index: DeviceIndex,
}

pub(crate) struct Hub<S: Store> {
    pub(crate) ledger: Ledger<S>,
    pub(crate) directory: Mutex<AccountDirectory<S>>,
    clients: Mutex<HashMap<ClientId, Peer>>,
    subscribers: Mutex<HashMap<AccountId, Vec<Subscriber>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) polls: super::poll::PollSessions,
    /// Other relay nodes on the same database (PostgreSQL), if any.
    #[cfg(feature = "postgres")]
    pub(crate) cluster: Option<Arc<super::cluster::Cluster>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still guards
    // consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: Store + 'static> Hub<S> {
    pub(crate) fn new(
        ledger: Ledger<S>,
        directory: AccountDirectory<S>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Hub {
            ledger,
            directory: Mutex::new(directory),
            clients: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
            clock,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            metrics: Arc::new(Metrics::default()),
            shutdown,
            polls: Default::default(),
            #[cfg(feature = "postgres")]
            cluster: None,
        }
    }

    /// The hub of a node that shares its database with other nodes.
    #[cfg(feature = "postgres")]
    pub(crate) fn with_cluster(mut self, cluster: Arc<super::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The accounts some connection of this node subscribed to.
    pub(crate) fn subscribed_accounts(&self) -> Vec<AccountId> {
        lock(&self.subscribers).keys().copied().collect()
    }

    /// The clients connected to this node.
    pub(crate) fn client_ids(&self) -> Vec<ClientId> {
        lock(&self.clients).keys().copied().collect()
    }

    /// Tells the other nodes (if any) that `client` is connected here;
    /// returns once they can reach it (or, if the database does not answer
    /// within a few tries, leaves it to the cluster's resynchronization).
    pub(crate) async fn announce_connected(&self, client: ClientId) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.announce(client).await;
        }
        let _ = client;
    }

    /// Tells the other nodes (if any) that `client` left this node.
    pub(crate) fn announce_disconnected(&self, client: ClientId) {
        #[cfg(feature = "postgres")]
        if let Some(c) = self.cluster.clone() {
            tokio::spawn(async move { c.disconnected(client).await });
        }
        let _ = client;
    }

    /// Hands `frame` to the node holding `to`, when `to` is not connected
    /// here; whether a node took it.
    pub(crate) async fn deliver_elsewhere(&self, to: ClientId, frame: Bytes) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            return c.deliver(to, frame).await;
        }
        let _ = (to, frame);
        false
    }

    /// Tells the other nodes (if any) that a list of `account` was applied.
    pub(crate) async fn announce_list(&self, account: AccountId) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.list_applied(account).await;
        }
        let _ = account;
    }

    /// Tells the other nodes (if any) that a heartbeat was applied.
    pub(crate) async fn announce_heartbeat(&self, heartbeat: &[u8]) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.heartbeat_applied(heartbeat).await;
        }
        let _ = heartbeat;
    }

    /// Runs `f` (which calls the store) on the blocking pool, timing it.
    /// `None` if the blocking task failed.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Hub<S>) -> T + Send + 'static,
    ) -> Option<T> {
        let hub = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let out = f(&hub);
            hub.metrics.store_call(start.elapsed());
            out
        })
        .await;
        match joined {
            Ok(out) => Some(out),
            Err(e) => {
                tracing::error!(error = %e, "a store call failed");
                None
            }
        }
    }

    /// Whether the directory lock is usable from the blocking pool.
    pub(crate) fn directory(&self) -> MutexGuard<'_, AccountDirectory<S>> {
        lock(&self.directory)
    }

    pub(crate) fn connect(&self, client: ClientId, peer: Peer) {
        lock(&self.clients).insert(client, peer);
    }

    /// Forgets a connection and its subscription.
    pub(crate) fn disconnect(&self, client: ClientId, subscribed: Option<AccountId>) {
        lock(&self.clients).remove(&client);
        if let Some(account) = subscribed {
            self.unsubscribe(client, account);
        }
    }

    pub(crate) fn subscribe(&self, account: AccountId, sub: Subscriber) {
        let mut subs = lock(&self.subscribers);
        let list = subs.entry(account).or_default();
        list.retain(|s| s.client != sub.client);
        list.push(sub);
    }

    pub(crate) fn unsubscribe(&self, client: ClientId, account: AccountId) {
        let mut subs = lock(&self.subscribers);
        if let Some(list) = subs.get_mut(&account) {
            list.retain(|s| s.client != client);
            if list.is_empty() {
                subs.remove(&account);
            }
        }
    }

    /// Queues `frame` for `to`. A full queue closes `to` as a slow reader.
    /// Returns whether the frame was queued.
    pub(crate) fn push(&self, to: ClientId, frame: Bytes) -> bool {
        let Some(peer) = lock(&self.clients).get(&to).cloned() else {
            return false;
        };
        match peer.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(client = %to, "outbound queue full; closing a slow reader");
                Metrics::inc(&self.metrics.slow_readers);
                peer.close.close(super::codes::CLOSE_SLOW_READER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn push_logout(&self, sub: Subscriber, reason: LogoutReason) {
        let frame = Frame::Logout {
            index: sub.index,
            reason,
        }
        .encode();
        if self.push(sub.client, Bytes::from(frame)) {
            Metrics::inc(&self.metrics.logouts_pushed);
        }
    }

    /// Sends an applied list to the account's subscribers, then a logout to
    /// each subscriber the list no longer names (with the list's reason).
    pub(crate) fn fan_out_list(&self, list: &SignedDeviceList, bytes: Bytes) {
        let account = list.account();
        let subs = lock(&self.subscribers)
            .get(&account)
            .cloned()
            .unwrap_or_default();
        let framed = Bytes::from(Frame::PublishList { bytes: &bytes }.encode());
        let mut gone = Vec::new();
        for sub in subs {
            self.push(sub.client, framed.clone());
            if list.devices().iter().all(|e| e.index != sub.index) {
                let reason = list
                    .removed()
                    .iter()
                    .find(|r| r.index == sub.index)
                    .map_or(LogoutReason::Revoked, |r| r.reason);
                self.push_logout(sub, reason);
                gone.push(sub.client);
            }
        }
        for client in gone {
            self.unsubscribe(client, account);
        }
    }

    /// Sends an applied heartbeat to the account's subscribers.
    pub(crate) fn fan_out_heartbeat(&self, account: AccountId, bytes: &[u8]) {
        let subs = lock(&self.subscribers)
            .get(&account)
            .cloned()
            .unwrap_or_default();
        let framed = Bytes::from(Frame::PublishHeartbeat { bytes }.encode());
        for sub in subs {
            self.push(sub.client, framed.clone());
        }
    }

    /// Pushes the directory's sweep results to the subscribed devices.
    pub(crate) fn push_swept(&self, swept: &[SweptDevice]) {
        for d in swept {
            let matching: Vec<Subscriber> = lock(&self.subscribers)
                .get(&d.account)
                .map(|l| l.iter().copied().filter(|s| s.index == d.index).collect())
                .unwrap_or_default();
            for sub in matching {
                self.push_logout(sub, d.reason);
                self.unsubscribe(sub.client, d.account);
            }
        }
    }

    /// Waits until every connection task has returned its permit, up to the
    /// grace period.
    pub(crate) async fn drain(&self) -> Drained {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let waited = tokio::time::timeout(
            self.limits.shutdown_grace,
            self.connections.acquire_many(all),
        )
        .await;
        let all_closed = matches!(waited, Ok(Ok(_)));
        Drained {
            all_closed,
            still_open: self.metrics.connections_open(),
        }
    }
}

/// Resolves once shutdown was signalled (or the signal's sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Every `sweep_interval`: the ledger's sweep (expired tokens) and the
/// directory's (accounts whose primary was offline too long), pushing a
/// `Logout { PrimaryOffline }` to each swept device that subscribed.
pub(crate) async fn sweep_loop<S: Store + 'static>(hub: Arc<Hub<S>>) {
    let mut shutdown = hub.shutdown.clone();
    let mut tick = tokio::time::interval(hub.limits.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            _ = tick.tick() => {}
        }
        hub.polls.sweep(hub.limits.poll_wait.saturating_mul(2));
        let now = hub.clock.now();
        let limit = hub.limits.sweep_limit;
        let swept = hub
            .blocking(move |h| {
                if let Err(e) = h.ledger.sweep(now, limit) {
                    tracing::warn!(error = %e, "ledger sweep failed");
                }
                h.directory().sweep(now)
            })
            .await;
        match swept {
            Some(Ok(swept)) => hub.push_swept(&swept),
            Some(Err(e)) => tracing::warn!(error = %e, "directory sweep failed"),
            None => {}
        }
    }
}
