//! The state every connection shares, one floor below the connections: the
//! core's ledger, directory and code rendezvous, who is connected, who
//! subscribed to which account, and the mailboxes of identified clients that
//! are away. Nothing here imports a connection or a transport; other relay
//! nodes are reached through the [`Bus`] a cluster plugs in.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use devicelink::handshake::{MessageHeader, MessageKind};
use devicelink::relay::{Budget, ClientId, CodeRendezvous, DeviceLogout, Held, Ledger, SourceKey};
use devicelink::{AccountId, DeviceIndex, LogoutReason, SignedDeviceList};
use tokio::sync::{watch, Notify, Semaphore};

use super::admission::Gate;
use super::clock::Clock;
use super::limits::Limits;
use super::metrics::Metrics;
use crate::frame::{Frame, FrameType};
use crate::store::{AccountDirectory, Store};

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Whether every connection task ended within the grace period.
    pub all_closed: bool,
    /// Connections still open when `Relay::serve` returned.
    pub still_open: u64,
}

/// A future a [`Bus`] returns.
pub(crate) type BusFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Other relay nodes on the same database, as the hub reaches them (the
/// cluster implements it; a lone node has none). Every call is best effort:
/// what fails is repaired by the bus itself (it resynchronizes).
pub(crate) trait Bus: Send + Sync {
    /// `client` is connected here; resolves once other nodes can reach it.
    fn announce(&self, client: ClientId) -> BusFuture<'_, ()>;
    /// `client` left this node for good (no mailbox waits for it here).
    fn disconnected(&self, client: ClientId) -> BusFuture<'_, ()>;
    /// Hands `frame` to the node holding `to`; whether one took it.
    fn deliver(&self, to: ClientId, frame: Bytes) -> BusFuture<'_, bool>;
    /// A list of `account` was applied here.
    fn list_applied(&self, account: AccountId) -> BusFuture<'_, ()>;
    /// A sweep here logged these devices out.
    fn logged_out(&self, logouts: Vec<DeviceLogout>) -> BusFuture<'_, ()>;
    /// The connection known as `old` identified as `id` here.
    fn identified(&self, old: ClientId, id: ClientId) -> BusFuture<'_, ()>;
    /// A heartbeat (its wire bytes) was applied here.
    fn heartbeat_applied(&self, heartbeat: Vec<u8>) -> BusFuture<'_, ()>;
}

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
/// for `mailbox_ttl` after their connection ended, within two budgets keyed
/// by the client and by the source it was connected from: bytes held, and
/// mailboxes held.
#[derive(Debug, Default)]
struct Mailboxes {
    boxes: HashMap<ClientId, Mailbox>,
    bytes: u64,
    bytes_by_source: HashMap<SourceKey, u64>,
    boxes_by_source: HashMap<SourceKey, u64>,
}

#[derive(Debug)]
struct Mailbox {
    until: Instant,
    source: SourceKey,
    frames: Vec<Bytes>,
    bytes: u64,
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn take(map: &mut HashMap<SourceKey, u64>, key: &SourceKey, n: u64) {
    if let Some(v) = map.get_mut(key) {
        *v = v.saturating_sub(n);
        if *v == 0 {
            map.remove(key);
        }
    }
}

impl Mailboxes {
    /// Removes `client`'s mailbox and gives back what it held.
    fn remove(&mut self, client: &ClientId) -> Option<Mailbox> {
        let b = self.boxes.remove(client)?;
        self.bytes = self.bytes.saturating_sub(b.bytes);
        take(&mut self.bytes_by_source, &b.source, b.bytes);
        take(&mut self.boxes_by_source, &b.source, 1);
        Some(b)
    }
}

/// Whether a frame is a Grant or Refusal, and for which token.
fn answer_token(frame: &[u8]) -> Option<devicelink::TokenId> {
    if frame.first() != Some(&(FrameType::Message as u8)) {
        return None;
    }
    let header = MessageHeader::parse(frame.get(1..)?).ok()?;
    matches!(header.kind, MessageKind::Grant | MessageKind::Refusal).then_some(header.token_id)
}

/// What happened to a client whose connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    /// A newer connection holds the client (it was replaced).
    Replaced,
    /// An identified client that may come back: a mailbox waits for it.
    Away,
    /// Gone for good: a connection that never identified, or an identified
    /// client over its source's mailbox budget.
    Gone,
}

pub(crate) struct Hub<S: Store> {
    pub(crate) ledger: Ledger<S>,
    pub(crate) directory: AccountDirectory<S>,
    code: Mutex<CodeRendezvous>,
    clients: Mutex<HashMap<ClientId, Peer>>,
    mailboxes: Mutex<Mailboxes>,
    /// Mailbox bytes per client, per source and in all.
    mailbox_bytes: Budget,
    /// Mailboxes per source and in all.
    mailbox_count: Budget,
    subscribers: Mutex<HashMap<AccountId, Vec<Subscriber>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Other relay nodes on the same database, if any.
    bus: Option<Arc<dyn Bus>>,
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
        code: CodeRendezvous,
        clock: Arc<dyn Clock>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let per_client = len64(limits.mailbox_frames).saturating_mul(len64(crate::MAX_FRAME_LEN));
        Hub {
            ledger,
            directory,
            code: Mutex::new(code),
            clients: Mutex::new(HashMap::new()),
            mailboxes: Mutex::new(Mailboxes::default()),
            mailbox_bytes: Budget::new(
                per_client,
                limits.mailbox_bytes_per_address,
                len64(limits.mailbox_bytes),
            ),
            mailbox_count: Budget::new(1, limits.mailboxes_per_address, limits.mailboxes),
            subscribers: Mutex::new(HashMap::new()),
            clock,
            connections: connections.clone(),
            gate: Arc::new(Gate::new(&limits, connections)),
            limits,
            metrics: Arc::new(Metrics::default()),
            shutdown,
            bus: None,
        }
    }

    /// The hub of a node that shares its database with other nodes.
    #[cfg(feature = "postgres")]
    pub(crate) fn with_bus(mut self, bus: Arc<dyn Bus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Runs `f` on the code rendezvous (in memory: never waits).
    pub(crate) fn with_code<T>(&self, f: impl FnOnce(&mut CodeRendezvous) -> T) -> T {
        f(&mut lock(&self.code))
    }

    /// The device indices subscribed to `account` on this node.
    #[cfg(feature = "postgres")]
    pub(crate) fn subscribed_indices(&self, account: &AccountId) -> Vec<DeviceIndex> {
        lock(&self.subscribers)
            .get(account)
            .map(|l| l.iter().map(|s| s.index).collect())
            .unwrap_or_default()
    }

    /// The accounts some connection of this node subscribed to.
    #[cfg(feature = "postgres")]
    pub(crate) fn subscribed_accounts(&self) -> Vec<AccountId> {
        lock(&self.subscribers).keys().copied().collect()
    }

    /// The clients connected to this node.
    #[cfg(feature = "postgres")]
    pub(crate) fn client_ids(&self) -> Vec<ClientId> {
        lock(&self.clients).keys().copied().collect()
    }

    /// Tells the other nodes (if any) that `client` is connected here;
    /// returns once they can reach it.
    pub(crate) async fn announce_connected(&self, client: ClientId) {
        if let Some(bus) = &self.bus {
            bus.announce(client).await;
        }
    }

    /// Tells the other nodes (if any) that `client` left this node.
    pub(crate) fn announce_disconnected(&self, client: ClientId) {
        if let Some(bus) = self.bus.clone() {
            tokio::spawn(async move { bus.disconnected(client).await });
        }
    }

    /// Hands `frame` to the node holding `to`, when `to` is not connected
    /// here; whether a node took it.
    pub(crate) async fn deliver_elsewhere(&self, to: ClientId, frame: Bytes) -> bool {
        match &self.bus {
            Some(bus) => bus.deliver(to, frame).await,
            None => false,
        }
    }

    /// Tells the other nodes (if any) that a list of `account` was applied.
    pub(crate) async fn announce_list(&self, account: AccountId) {
        if let Some(bus) = &self.bus {
            bus.list_applied(account).await;
        }
    }

    /// Tells the other nodes (if any) about devices a sweep logged out.
    pub(crate) async fn announce_logouts(&self, logouts: &[DeviceLogout]) {
        if let Some(bus) = &self.bus {
            bus.logged_out(logouts.to_vec()).await;
        }
    }

    /// Tells the other nodes (if any) that the connection known as `old`
    /// identified as `id` here (a connection of `id` elsewhere is replaced).
    pub(crate) async fn announce_identified(&self, old: ClientId, id: ClientId) {
        if let Some(bus) = &self.bus {
            bus.identified(old, id).await;
        }
    }

    /// Tells the other nodes (if any) that a heartbeat was applied.
    pub(crate) async fn announce_heartbeat(&self, heartbeat: &[u8]) {
        if let Some(bus) = &self.bus {
            bus.heartbeat_applied(heartbeat.to_vec()).await;
        }
    }

    /// `id` connected to another node: a connection of it here is replaced
    /// (closed with 4005), and the frames waiting in its mailbox here are
    /// returned (for the node that holds it now).
    #[cfg(feature = "postgres")]
    pub(crate) fn moved_away(&self, id: ClientId) -> Vec<Bytes> {
        if let Some(peer) = lock(&self.clients).remove(&id) {
            Metrics::inc(&self.metrics.connections_replaced);
            peer.close.close(crate::codes::CLOSE_REPLACED);
        }
        lock(&self.mailboxes)
            .remove(&id)
            .map(|b| b.frames)
            .unwrap_or_default()
    }

    /// Runs `f` (a decision that calls the store) where the store says
    /// ([`Store::offload`]: the SQLite writer thread, inside its next
    /// batch), else on tokio's blocking pool, else (a store that never
    /// waits) on this task; times it, and resolves once its writes are
    /// durable. `None` if they are not (a failed commit) or the work was
    /// lost (a stopped writer, a failed task): nothing happened.
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hub = self.clone();
        let work: crate::store::Offload = Box::new(move || {
            let start = Instant::now();
            let out = f(&hub);
            hub.metrics.store_call(start.elapsed());
            Box::new(move |committed| {
                let _ = tx.send(committed.then_some(out));
            })
        });
        if let Err(work) = self.ledger.store().offload(work) {
            let done = tokio::task::spawn_blocking(move || work()(true)).await;
            if let Err(e) = done {
                tracing::error!(error = %e, "a store call failed");
                return None;
            }
        }
        rx.await.ok().flatten()
    }

    /// Runs `f`, which only reads the store, on this task if the store's
    /// reads never wait ([`Store::reads_may_block`]), else as
    /// [`Hub::blocking`] does.
    pub(crate) async fn reading<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Hub<S>) -> T + Send + 'static,
    ) -> Option<T> {
        if self.ledger.store().reads_may_block() {
            return self.blocking(f).await;
        }
        let start = Instant::now();
        let out = f(self);
        self.metrics.store_call(start.elapsed());
        Some(out)
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
                prev.close.close(crate::codes::CLOSE_REPLACED);
            }
        }
        let waiting = lock(&self.mailboxes)
            .remove(&id)
            .map(|b| b.frames)
            .unwrap_or_default();
        for frame in waiting {
            self.push(id, frame);
        }
        replaced.is_some_and(|p| p.conn != peer.conn)
    }

    /// Forgets connection `conn` (if it still holds `client`) and its
    /// subscription. An identified client's frames wait in a mailbox for
    /// `mailbox_ttl`, if its source's budget of mailboxes allows.
    pub(crate) fn disconnect(
        &self,
        client: ClientId,
        conn: u64,
        identified: bool,
        subscribed: Option<AccountId>,
        source: SourceKey,
    ) -> Departure {
        let held = {
            let mut clients = lock(&self.clients);
            let ours = clients.get(&client).is_some_and(|p| p.conn == conn);
            if ours {
                clients.remove(&client);
            }
            ours
        };
        if let Some(account) = subscribed {
            self.unsubscribe(conn, account);
        }
        if !held {
            return Departure::Replaced;
        }
        if !identified || self.limits.mailbox_ttl.is_zero() {
            return Departure::Gone;
        }
        let mut m = lock(&self.mailboxes);
        let held = Held {
            client: 0,
            source: m.boxes_by_source.get(&source).copied().unwrap_or(0),
            total: len64(m.boxes.len()),
        };
        if self.mailbox_count.check(held).is_err() {
            Metrics::inc(&self.metrics.mailboxes_refused);
            return Departure::Gone;
        }
        m.remove(&client);
        m.boxes.insert(
            client,
            Mailbox {
                until: Instant::now() + self.limits.mailbox_ttl,
                source,
                frames: Vec::new(),
                bytes: 0,
            },
        );
        *m.boxes_by_source.entry(source).or_default() += 1;
        Departure::Away
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

    /// Drops mailboxes whose time is up; returns their clients (gone for
    /// good now: the other nodes forget them too).
    pub(crate) fn sweep_mailboxes(&self) -> Vec<ClientId> {
        let now = Instant::now();
        let mut m = lock(&self.mailboxes);
        let expired: Vec<ClientId> = m
            .boxes
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in &expired {
            m.remove(c);
        }
        expired
    }

    /// Keeps `frame` for `to` if `to` is an identified client that left
    /// less than `mailbox_ttl` ago, within the mailbox budgets, and unless a
    /// Grant or Refusal for the same token already waits there.
    fn post(&self, to: ClientId, frame: Bytes) -> bool {
        let mut m = lock(&self.mailboxes);
        let Some(b) = m.boxes.get(&to) else {
            return false;
        };
        if b.until <= Instant::now() || b.frames.len() >= self.limits.mailbox_frames {
            return false;
        }
        if let Some(token) = answer_token(&frame) {
            if b.frames.iter().any(|f| answer_token(f) == Some(token)) {
                Metrics::inc(&self.metrics.mailbox_refused);
                return false;
            }
        }
        let source = b.source;
        let held = Held {
            client: b.bytes,
            source: m.bytes_by_source.get(&source).copied().unwrap_or(0),
            total: m.bytes,
        };
        let len = len64(frame.len());
        // One more frame is `len` more bytes: check as if it were one unit
        // at the level the budget would reach after it.
        let after = Held {
            client: held.client.saturating_add(len).saturating_sub(1),
            source: held.source.saturating_add(len).saturating_sub(1),
            total: held.total.saturating_add(len).saturating_sub(1),
        };
        if self.mailbox_bytes.check(after).is_err() {
            Metrics::inc(&self.metrics.mailbox_refused);
            return false;
        }
        if let Some(b) = m.boxes.get_mut(&to) {
            b.frames.push(frame);
            b.bytes = b.bytes.saturating_add(len);
        }
        m.bytes = m.bytes.saturating_add(len);
        *m.bytes_by_source.entry(source).or_default() += len;
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
                peer.close.close(crate::codes::CLOSE_SLOW_READER);
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

    /// Admits a new session from `source` (not while shutting down).
    pub(crate) fn admit(
        &self,
        source: Option<SourceKey>,
    ) -> Result<super::admission::Admission, super::admission::Refused> {
        if *self.shutdown.borrow() {
            return Err(super::admission::Refused::ShuttingDown);
        }
        self.gate.admit(source, &self.metrics)
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

    /// One sweep: expired tokens, code sessions (their spent codes told to
    /// their companions), accounts whose primary was offline too long
    /// (their subscribed devices told), mailboxes past their time (their
    /// clients forgotten by the other nodes) and idle rate state.
    pub(crate) async fn sweep(self: &Arc<Self>) {
        for client in self.sweep_mailboxes() {
            self.announce_disconnected(client);
        }
        self.gate.sweep();
        let now = self.clock.now();
        let spent = self.with_code(|r| r.sweep(now));
        for s in spent {
            let frame = crate::code_frame::CodeFrame::Spent(s.token_id).encode();
            self.push(s.companion, Bytes::from(frame));
        }
        let limit = self.limits.sweep_limit;
        let swept = self
            .blocking(move |h| {
                if let Err(e) = h.ledger.sweep(now, limit) {
                    tracing::warn!(error = %e, "ledger sweep failed");
                }
                h.directory.sweep(now, limit)
            })
            .await;
        match swept {
            Some(Ok(swept)) => {
                self.push_logouts(&swept);
                if !swept.is_empty() {
                    self.announce_logouts(&swept).await;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "directory sweep failed"),
            None => {}
        }
    }
}

/// Resolves once shutdown was signalled (or the signal's sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
