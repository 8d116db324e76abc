//! The state every connection shares: the core's ledger and directory, who
//! is connected, and who subscribed to which account.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use devicelink::relay::{ClientId, DeviceLogout, Ledger};
use devicelink::{AccountId, DeviceIndex, LogoutReason, SignedDeviceList};
use tokio::sync::{watch, Notify, Semaphore};

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

/// Why a frame was not queued for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds its bound: the connection does not read.
    Full,
    /// The connection has ended.
    Closed,
}

/// A connection's bounded outbound queue: the frames other tasks send it
/// (forwarded messages, pushes), taken by its own task. Unlike a tokio
/// channel, whose first block of slots (about 1.5 KiB with its state) every
/// idle connection would hold, it allocates nothing until a frame is
/// queued and gives back what a burst took once it is empty again.
#[derive(Debug)]
pub(crate) struct Outbound {
    state: Mutex<OutboundState>,
    ready: Notify,
}

#[derive(Debug)]
struct OutboundState {
    frames: VecDeque<Bytes>,
    capacity: usize,
    closed: bool,
}

/// Slots an emptied queue keeps (more are given back).
const OUTBOUND_KEPT: usize = 8;

impl Outbound {
    /// An empty queue of at most `capacity` frames.
    pub(crate) fn new(capacity: usize) -> Self {
        Outbound {
            state: Mutex::new(OutboundState {
                frames: VecDeque::new(),
                capacity: capacity.max(1),
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    /// Queues `frame` without waiting.
    pub(crate) fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        {
            let mut s = lock(&self.state);
            if s.closed {
                return Err(PushError::Closed);
            }
            if s.frames.len() >= s.capacity {
                return Err(PushError::Full);
            }
            s.frames.push_back(frame);
        }
        // Wakes the waiting task, or leaves it a permit if it is not
        // waiting yet: no frame is missed between its check and its wait.
        self.ready.notify_one();
        Ok(())
    }

    /// The next frame, waiting for one. Cancel-safe: a frame is taken only
    /// when it is returned.
    pub(crate) async fn pop(&self) -> Bytes {
        loop {
            {
                let mut s = lock(&self.state);
                if let Some(frame) = s.frames.pop_front() {
                    if s.frames.is_empty() && s.frames.capacity() > OUTBOUND_KEPT {
                        s.frames.shrink_to(OUTBOUND_KEPT);
                    }
                    return frame;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The connection ended: later pushes are refused and what waits is
    /// dropped.
    pub(crate) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.frames = VecDeque::new();
    }
}

/// A connected client as the others reach it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The connection's number (unique in this process): a replaced
    /// connection's exit must not forget its successor.
    pub(crate) conn: u64,
    pub(crate) tx: Arc<Outbound>,
    pub(crate) close: Arc<CloseSignal>,
}

/// One companion's subscription (its proof was verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscriber {
    pub(crate) client: ClientId,
    pub(crate) conn: u64,
    pub(crate) index: DeviceIndex,
}

/// Frames for identified clients that are momentarily not connected, kept
/// for `mailbox_ttl` after their connection ended (bounded per client and
/// in all).
#[derive(Debug, Default)]
struct Mailboxes {
    boxes: HashMap<ClientId, Mailbox>,
    bytes: usize,
}

#[derive(Debug)]
struct Mailbox {
    until: Instant,
    frames: Vec<Bytes>,
}

pub(crate) struct Hub<S: Store> {
    pub(crate) ledger: Ledger<S>,
    pub(crate) directory: AccountDirectory<S>,
    clients: Mutex<HashMap<ClientId, Peer>>,
    mailboxes: Mutex<Mailboxes>,
    subscribers: Mutex<HashMap<AccountId, Vec<Subscriber>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) gate: Arc<super::admission::Gate>,
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
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        Hub {
            ledger,
            directory,
            clients: Mutex::new(HashMap::new()),
            mailboxes: Mutex::new(Mailboxes::default()),
            subscribers: Mutex::new(HashMap::new()),
            clock,
            connections: connections.clone(),
            gate: Arc::new(super::admission::Gate::new(&limits, connections)),
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

    #[cfg(feature = "postgres")]
    /// The device indices subscribed to `account` on this node.
    pub(crate) fn subscribed_indices(&self, account: &AccountId) -> Vec<DeviceIndex> {
        lock(&self.subscribers)
            .get(account)
            .map(|l| l.iter().map(|s| s.index).collect())
            .unwrap_or_default()
    }

    #[cfg(feature = "postgres")]
    /// The accounts some connection of this node subscribed to.
    pub(crate) fn subscribed_accounts(&self) -> Vec<AccountId> {
        lock(&self.subscribers).keys().copied().collect()
    }

    #[cfg(feature = "postgres")]
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

    /// Tells the other nodes (if any) that a list of `account` was applied,
    /// and which of its devices it logged out.
    pub(crate) async fn announce_list(&self, account: AccountId, logged_out: &[DeviceLogout]) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.list_applied(account, logged_out).await;
        }
        let _ = (account, logged_out);
    }

    /// Tells the other nodes (if any) about devices a sweep logged out.
    pub(crate) async fn announce_logouts(&self, logouts: &[DeviceLogout]) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.logged_out(logouts).await;
        }
        let _ = logouts;
    }

    /// Tells the other nodes (if any) that the connection known as `old`
    /// identified as `id` here (a connection of `id` elsewhere is replaced).
    pub(crate) async fn announce_identified(&self, old: ClientId, id: ClientId) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.identified(old, id).await;
        }
        let _ = (old, id);
    }

    #[cfg(feature = "postgres")]
    /// `id` connected to another node: a connection of it here is replaced
    /// (closed with 4005), and the frames waiting in its mailbox here are
    /// returned (for the node that holds it now).
    pub(crate) fn moved_away(&self, id: ClientId) -> Vec<Bytes> {
        if let Some(peer) = lock(&self.clients).remove(&id) {
            Metrics::inc(&self.metrics.connections_replaced);
            peer.close.close(super::codes::CLOSE_REPLACED);
        }
        let mut m = lock(&self.mailboxes);
        let frames = m.boxes.remove(&id).map(|b| b.frames).unwrap_or_default();
        m.bytes -= frames.iter().map(Bytes::len).sum::<usize>().min(m.bytes);
        frames
    }

    /// Tells the other nodes (if any) that a heartbeat was applied.
    pub(crate) async fn announce_heartbeat(&self, heartbeat: &[u8]) {
        #[cfg(feature = "postgres")]
        if let Some(c) = &self.cluster {
            c.heartbeat_applied(heartbeat).await;
        }
        let _ = heartbeat;
    }

    /// Runs `f` (which calls the store) on the blocking pool, timing it;
    /// on this task if the store never blocks ([`Store::may_block`]).
    /// `None` if the blocking task failed.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Hub<S>) -> T + Send + 'static,
    ) -> Option<T> {
        if !self.ledger.store().may_block() {
            let start = Instant::now();
            let out = f(self);
            self.metrics.store_call(start.elapsed());
            return Some(out);
        }
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

    pub(crate) fn connect(&self, client: ClientId, peer: Peer) {
        lock(&self.clients).insert(client, peer);
    }

    /// The connection `peer`, known as `old` so far, identified as `id`:
    /// it takes over `id` (a connection holding it is told to close as
    /// replaced) and receives what waited in `id`'s mailbox. Returns whether
    /// it replaced a connection.
    pub(crate) fn identify(&self, old: ClientId, id: ClientId, peer: &Peer) -> bool {
        let replaced = {
            let mut clients = lock(&self.clients);
            if clients.get(&old).is_some_and(|p| p.conn == peer.conn) {
                clients.remove(&old);
            }
            clients.insert(id, peer.clone())
        };
        if let Some(prev) = &replaced {
            if prev.conn != peer.conn {
                prev.close.close(super::codes::CLOSE_REPLACED);
            }
        }
        let waiting = {
            let mut m = lock(&self.mailboxes);
            let frames = m.boxes.remove(&id).map(|b| b.frames).unwrap_or_default();
            m.bytes -= frames.iter().map(Bytes::len).sum::<usize>().min(m.bytes);
            frames
        };
        for frame in waiting {
            self.push(id, frame);
        }
        replaced.is_some_and(|p| p.conn != peer.conn)
    }

    /// Forgets connection `conn` (if it still holds `client`) and its
    /// subscription. An identified client's frames wait in a mailbox for
    /// `mailbox_ttl`.
    pub(crate) fn disconnect(
        &self,
        client: ClientId,
        conn: u64,
        identified: bool,
        subscribed: Option<AccountId>,
    ) {
        let held = {
            let mut clients = lock(&self.clients);
            let ours = clients.get(&client).is_some_and(|p| p.conn == conn);
            if ours {
                clients.remove(&client);
            }
            ours
        };
        if held && identified && !self.limits.mailbox_ttl.is_zero() {
            lock(&self.mailboxes).boxes.insert(
                client,
                Mailbox {
                    until: Instant::now() + self.limits.mailbox_ttl,
                    frames: Vec::new(),
                },
            );
        }
        if let Some(account) = subscribed {
            self.unsubscribe(conn, account);
        }
    }

    pub(crate) fn subscribe(&self, account: AccountId, sub: Subscriber) {
        let mut subs = lock(&self.subscribers);
        let list = subs.entry(account).or_default();
        list.retain(|s| s.conn != sub.conn);
        list.push(sub);
    }

    pub(crate) fn unsubscribe(&self, conn: u64, account: AccountId) {
        let mut subs = lock(&self.subscribers);
        if let Some(list) = subs.get_mut(&account) {
            list.retain(|s| s.conn != conn);
            if list.is_empty() {
                subs.remove(&account);
            }
        }
    }

    /// Drops mailboxes whose time is up.
    pub(crate) fn sweep_mailboxes(&self) {
        let now = Instant::now();
        let mut m = lock(&self.mailboxes);
        let mut freed = 0;
        m.boxes.retain(|_, b| {
            let keep = b.until > now;
            if !keep {
                freed += b.frames.iter().map(Bytes::len).sum::<usize>();
            }
            keep
        });
        m.bytes -= freed.min(m.bytes);
    }

    /// Keeps `frame` for `to` if `to` is an identified client that left
    /// less than `mailbox_ttl` ago, within the mailbox bounds.
    fn post(&self, to: ClientId, frame: Bytes) -> bool {
        let limits = &self.limits;
        let mut m = lock(&self.mailboxes);
        if m.bytes + frame.len() > limits.mailbox_bytes {
            return false;
        }
        let Some(b) = m.boxes.get_mut(&to) else {
            return false;
        };
        if b.until <= Instant::now() || b.frames.len() >= limits.mailbox_frames {
            return false;
        }
        let len = frame.len();
        b.frames.push(frame);
        m.bytes += len;
        Metrics::inc(&self.metrics.mailbox_posted);
        true
    }

    /// Queues `frame` for `to`. A full queue closes `to` as a slow reader.
    /// Returns whether the frame was queued.
    pub(crate) fn push(&self, to: ClientId, frame: Bytes) -> bool {
        let Some(peer) = lock(&self.clients).get(&to).cloned() else {
            return self.post(to, frame);
        };
        match peer.tx.try_push(frame) {
            Ok(()) => true,
            Err(PushError::Full) => {
                tracing::warn!(client = %to, "outbound queue full; closing a slow reader");
                Metrics::inc(&self.metrics.slow_readers);
                peer.close.close(super::codes::CLOSE_SLOW_READER);
                false
            }
            Err(PushError::Closed) => false,
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
    /// each subscribed device the directory logged out with it (the core's
    /// decision and reason).
    pub(crate) fn fan_out_list(
        &self,
        list: &SignedDeviceList,
        bytes: Bytes,
        logged_out: &[DeviceLogout],
    ) {
        let account = list.account();
        let subs = lock(&self.subscribers)
            .get(&account)
            .cloned()
            .unwrap_or_default();
        let framed = Bytes::from(Frame::PublishList { bytes: &bytes }.encode());
        for sub in subs {
            self.push(sub.client, framed.clone());
        }
        self.push_logouts(logged_out);
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

    /// Pushes the directory's logouts (a sweep's, or a list's) to the
    /// subscribed devices, and ends their subscriptions.
    pub(crate) fn push_logouts(&self, logouts: &[DeviceLogout]) {
        for d in logouts {
            let matching: Vec<Subscriber> = lock(&self.subscribers)
                .get(&d.account)
                .map(|l| l.iter().copied().filter(|s| s.index == d.index).collect())
                .unwrap_or_default();
            for sub in matching {
                self.push_logout(sub, d.reason);
                self.unsubscribe(sub.conn, d.account);
            }
        }
    }

    /// Admits a new connection from `ip` (not while shutting down).
    pub(crate) fn admit(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<super::admission::Admission, super::admission::Refused> {
        if *self.shutdown.borrow() {
            return Err(super::admission::Refused::ShuttingDown);
        }
        self.gate.admit(ip, &self.metrics)
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
        hub.sweep_mailboxes();
        hub.gate.sweep();
        let now = hub.clock.now();
        let limit = hub.limits.sweep_limit;
        let swept = hub
            .blocking(move |h| {
                if let Err(e) = h.ledger.sweep(now, limit) {
                    tracing::warn!(error = %e, "ledger sweep failed");
                }
                h.directory.sweep(now, limit)
            })
            .await;
        match swept {
            Some(Ok(swept)) => {
                hub.push_logouts(&swept);
                if !swept.is_empty() {
                    hub.announce_logouts(&swept).await;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "directory sweep failed"),
            None => {}
        }
    }
}
