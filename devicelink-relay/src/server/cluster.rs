//! Many relay nodes on one PostgreSQL database: delivery across nodes with
//! PostgreSQL itself (`LISTEN`/`NOTIFY`), node leases, and where each
//! client is connected.
//!
//! - **Nodes.** Each relay process joins with a fresh node id
//!   (`relay_node_ids`) and a lease in `relay_nodes` that it renews every
//!   third of [`ClusterOptions::lease`]; PostgreSQL's clock judges leases,
//!   so the nodes need no common clock. A node whose lease passed is dead:
//!   what it registered no longer counts, and the live nodes reap its rows.
//! - **Presence.** A connection registers "client X is on node N" in
//!   `relay_presence` before it serves its first frame (the newest
//!   connection of an id wins) and removes it when it ends.
//! - **Delivery.** When the core routes a message to a client that is not
//!   connected here, one statement finds the live node holding it, queues
//!   the frame for that node in `relay_mailbox` and wakes it with
//!   `pg_notify` on its channel (`devicelink_node_<id>`); the node takes its
//!   rows (`DELETE … RETURNING`, oldest first) and pushes them to its
//!   connections. The sender is answered `Routed` once the row is
//!   committed, as a local delivery is answered once the frame is queued.
//!   A node that was not listening when woken (its listening connection
//!   reconnecting) drains its mailbox when it listens again, so nothing is
//!   lost to a reconnect. No live node holds the client: error 701, as on
//!   one node.
//! - **Accounts.** The [`AccountDirectory`](crate::AccountDirectory)
//!   decides every fact from the account's stored facts with a
//!   compare-and-set, so nodes need no shared memory to agree. A node that
//!   applied a device list or a heartbeat, or swept an account, tells every
//!   node (`devicelink_accounts`) which account; each reads the account's
//!   stored facts and list and pushes what they say to its own subscribers
//!   (the newest list, a logout to each subscribed device no longer
//!   linked, a heartbeat the store shows applied).
//! - **Notifications are hints, never facts.** Any role that can connect to
//!   the database can `NOTIFY` on any channel, so a notification carries
//!   only what a receiver re-checks in tables it trusts: an account id, a
//!   signed heartbeat (verified, and pushed only if the stored facts show it
//!   applied), a client id (a connection here is replaced only if the
//!   presence table names another live node for it), or "look at your
//!   mailbox". A forged one makes a node read; it changes nothing.
//! - **Identified clients.** A connection that identifies registers its
//!   stable `ClientId` here; the node that held it before is told, closes
//!   its older connection (4005) and forwards what waited in its mailbox.
//!   A client that left keeps its registration (its frames wait in the
//!   mailbox of the node it left) until it connects again somewhere.
//! - **Reconnection.** The listening connection reconnects with backoff;
//!   each time it (re)connects the node renews its lease, registers every
//!   client it holds again, drains its mailbox and reloads every account
//!   and pushes each subscribed account's newest list again (it may have
//!   missed notifications), so a restart or a crash of PostgreSQL (which
//!   empties these unlogged tables) heals by itself. What fails while the
//!   database is unreachable is retried every 200 ms until it succeeds.
//!
//! What a dead node held is lost as it would be on one node: frames queued
//! for its clients, and notifications sent to it before its lease lapsed.
//! Its clients reconnect to another node; linked companions subscribe
//! again and get the newest list from the store.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use deadpool_postgres::tokio_postgres::{AsyncMessage, NoTls};
use devicelink::relay::{ClientId, DeviceLogout};
use devicelink::{AccountId, LogoutReason, PrimaryHeartbeat, SignedDeviceList};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::hub::{stopped, Bus, BusFuture, Hub};
use crate::store::postgres::{backoff, DbError, Fail};
use crate::store::{PgStore, Store, StoreError};

/// The channel every node listens on for account updates.
const ACCOUNTS: &str = "devicelink_accounts";

/// How a node takes part in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// How long a node's lease lasts without renewal (renewed every third
    /// of it): how long a killed node's clients stay addressed.
    pub lease: Duration,
    /// How long a large frame waits in `relay_mailbox` for its node.
    pub mailbox_ttl: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            lease: Duration::from_secs(5),
            mailbox_ttl: Duration::from_secs(60),
        }
    }
}

/// What the listener heard, for the node's hub.
#[derive(Debug)]
pub(crate) enum Event {
    /// Frames for clients connected here wait in the mailbox.
    Mailbox,
    /// This client identified on another node: its connection and
    /// mailbox here are replaced.
    Moved(ClientId),
    /// Another node changed this account (a list, a sweep): its stored
    /// facts say what to push.
    Account(AccountId),
    /// Another node applied this heartbeat (its wire bytes, to verify).
    Heartbeat(Vec<u8>),
    /// The listener (re)connected: assert presence, reload accounts.
    Resync,
}

/// This node's membership in the cluster. Dropping it stops the lease and
/// the listener (the lease then lapses by itself).
pub struct Cluster {
    store: PgStore,
    node: i64,
    options: ClusterOptions,
    events: std::sync::Mutex<Option<mpsc::Receiver<Event>>>,
    tasks: Vec<JoinHandle<()>>,
    /// A registration or a reload failed (the database was unreachable):
    /// the hub's side resynchronizes until one succeeds.
    dirty: Arc<AtomicBool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn account_of(hex: &str) -> Option<AccountId> {
    let bytes: [u8; 32] = unhex(hex)?.try_into().ok()?;
    Some(AccountId::from_bytes(bytes))
}

/// Parses one notification into an event (`None`: not ours, or our own).
fn parse(node: i64, channel: &str, payload: &str) -> Option<Event> {
    if channel == ACCOUNTS {
        let (from, rest) = payload.get(1..)?.split_once(':')?;
        if from.parse::<i64>().ok()? == node {
            return None;
        }
        return match payload.as_bytes().first()? {
            b'A' => Some(Event::Account(account_of(rest)?)),
            b'H' => Some(Event::Heartbeat(unhex(rest)?)),
            _ => None,
        };
    }
    match payload.as_bytes().first()? {
        b'm' if payload.len() == 1 => Some(Event::Mailbox),
        b'x' => {
            let id: [u8; 16] = unhex(payload.get(1..)?)?.try_into().ok()?;
            Some(Event::Moved(ClientId::from_bytes(id)))
        }
        _ => None,
    }
}

impl Bus for Cluster {
    fn announce(&self, client: ClientId) -> BusFuture<'_, ()> {
        Box::pin(Cluster::announce(self, client))
    }

    fn disconnected(&self, client: ClientId) -> BusFuture<'_, ()> {
        Box::pin(Cluster::disconnected(self, client))
    }

    fn deliver(&self, to: ClientId, frame: Bytes) -> BusFuture<'_, bool> {
        Box::pin(Cluster::deliver(self, to, frame))
    }

    fn list_applied(&self, account: AccountId) -> BusFuture<'_, ()> {
        Box::pin(self.account_changed(account))
    }

    fn logged_out(&self, logouts: Vec<DeviceLogout>) -> BusFuture<'_, ()> {
        Box::pin(async move {
            let accounts: BTreeSet<AccountId> = logouts.iter().map(|d| d.account).collect();
            for account in accounts {
                self.account_changed(account).await;
            }
        })
    }

    fn identified(&self, old: ClientId, id: ClientId) -> BusFuture<'_, ()> {
        Box::pin(Cluster::identified(self, old, id))
    }

    fn heartbeat_applied(&self, heartbeat: Vec<u8>) -> BusFuture<'_, ()> {
        Box::pin(async move { Cluster::heartbeat_applied(self, &heartbeat).await })
    }
}

impl Cluster {
    /// Joins the cluster of nodes sharing `store`'s database: takes a node
    /// id, writes its lease, and starts renewing it and listening.
    pub fn join(store: &PgStore, options: ClusterOptions) -> Result<Arc<Self>, StoreError> {
        let shared = Arc::clone(&store.db().shared);
        let lease = secs(options.lease);
        let node = store
            .db()
            .block_on(async move {
                let c = shared.client().await.map_err(Fail::Db)?;
                let node: i64 = c
                    .query_one("SELECT nextval('relay_node_ids')", &[])
                    .await?
                    .try_get(0)?;
                c.execute(
                    "INSERT INTO relay_nodes (id, lease_until)
                     VALUES ($1, now() + make_interval(secs => $2))",
                    &[&node, &lease],
                )
                .await?;
                Ok::<_, Fail<StoreError>>(node)
            })
            .map_err(|f| match f {
                Fail::Refused(e) => e,
                Fail::Db(e) => StoreError::Unavailable(e.text),
            })?;
        let (tx, rx) = mpsc::channel(1024);
        let handle = &store.db().handle;
        let dirty = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            handle.spawn(renew(store.clone(), node, options.clone(), dirty.clone())),
            handle.spawn(listen(store.clone(), node, tx)),
        ];
        tracing::info!(node, "joined the relay cluster");
        Ok(Arc::new(Cluster {
            store: store.clone(),
            node,
            options,
            events: std::sync::Mutex::new(Some(rx)),
            tasks,
            dirty,
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> i64 {
        self.node
    }

    /// The options it joined with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    fn take_events(&self) -> Option<mpsc::Receiver<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Runs `op` with a pooled connection on the store's runtime.
    async fn with_db<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, deadpool_postgres::tokio_postgres::Error>>
            + Send
            + 'static,
    {
        let shared = Arc::clone(&self.store.db().shared);
        let joined = self
            .store
            .db()
            .handle
            .spawn(async move {
                let c = shared.client().await?;
                op(c).await.map_err(|e| DbError::at_commit(&e))
            })
            .await;
        joined.unwrap_or_else(|e| Err(DbError::new(format!("cluster task failed: {e}"), false)))
    }

    /// Registers `clients` as connected to this node; whether it did (if
    /// not, the hub's side registers every client again once the database
    /// answers).
    pub(crate) async fn connected(&self, clients: Vec<ClientId>) -> bool {
        if clients.is_empty() {
            return true;
        }
        let node = self.node;
        let ids: Vec<Vec<u8>> = clients.iter().map(|c| c.to_bytes().to_vec()).collect();
        let r = self
            .with_db(move |c| async move {
                let st = c
                    .prepare_cached(
                        "INSERT INTO relay_presence (client, node)
                         SELECT unnest($1::bytea[]), $2
                         ON CONFLICT (client) DO UPDATE SET node = excluded.node, since = now()",
                    )
                    .await?;
                c.execute(&st, &[&ids, &node]).await
            })
            .await;
        if let Err(e) = r {
            self.dirty.store(true, Ordering::Release);
            tracing::warn!(error = %e.text, "cannot register connected clients; retrying");
            return false;
        }
        true
    }

    /// Renews the lease at once (after a reconnect); whether it did.
    async fn renew_now(&self) -> bool {
        let (node, lease) = (self.node, secs(self.options.lease));
        self.with_db(move |c| async move {
            c.execute(
                "INSERT INTO relay_nodes (id, lease_until)
                 VALUES ($1, now() + make_interval(secs => $2))
                 ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
                &[&node, &lease],
            )
            .await
        })
        .await
        .is_ok()
    }

    /// Registers one new connection, trying a few times (about 1 s in
    /// all) before leaving it to the resynchronization.
    pub(crate) async fn announce(&self, client: ClientId) {
        for n in 1..=5 {
            if self.connected(vec![client]).await {
                return;
            }
            tokio::time::sleep(backoff(
                n,
                Duration::from_millis(50),
                Duration::from_millis(400),
            ))
            .await;
        }
    }

    /// Removes `client`'s registration (if it is still this node's).
    pub(crate) async fn disconnected(&self, client: ClientId) {
        let node = self.node;
        let r = self
            .with_db(move |c| async move {
                let st = c
                    .prepare_cached("DELETE FROM relay_presence WHERE client = $1 AND node = $2")
                    .await?;
                let id = client.to_bytes();
                c.execute(&st, &[&&id[..], &node]).await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e.text, "cannot remove a client's registration; its node's lease will");
        }
    }

    /// Sends `frame` to the live node holding `to`; whether one did. The
    /// frame is a row of `relay_mailbox` until that node takes it, and a
    /// notification wakes the node: a node whose listening connection is
    /// reconnecting finds it when it drains its mailbox again.
    pub(crate) async fn deliver(&self, to: ClientId, frame: Bytes) -> bool {
        let node = self.node;
        let r = self
            .with_db(move |c| async move {
                let id = to.to_bytes();
                let st = c
                    .prepare_cached(
                        "WITH target AS (
                           SELECT p.node FROM relay_presence p JOIN relay_nodes n ON n.id = p.node
                            WHERE p.client = $1 AND p.node <> $3 AND n.lease_until > now()),
                         queued AS (
                           INSERT INTO relay_mailbox (node, client, frame)
                           SELECT node, $1, $2 FROM target RETURNING node)
                         SELECT node, pg_notify('devicelink_node_' || node, 'm')::text FROM queued",
                    )
                    .await?;
                let rows = c.query(&st, &[&&id[..], &&frame[..], &node]).await?;
                Ok(!rows.is_empty())
            })
            .await;
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e.text, "cannot deliver across nodes");
            false
        })
    }

    async fn notify_accounts(&self, payload: String) {
        let r = self
            .with_db(move |c| async move {
                let st = c.prepare_cached("SELECT pg_notify($1, $2)::text").await?;
                c.execute(&st, &[&ACCOUNTS, &payload]).await
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e.text, "cannot tell the other nodes about an account update");
        }
    }

    /// Tells the other nodes that `account` changed here (a list was
    /// applied, or a sweep logged devices out): they read it.
    pub(crate) async fn account_changed(&self, account: AccountId) {
        self.notify_accounts(format!("A{}:{}", self.node, hex(&account.to_bytes())))
            .await;
    }

    /// Whether the presence table says `client` is held by another live
    /// node (what a `Moved` notification claims).
    async fn held_elsewhere(&self, client: ClientId) -> bool {
        let node = self.node;
        let r = self
            .with_db(move |c| async move {
                let st = c
                    .prepare_cached(
                        "SELECT 1 FROM relay_presence p JOIN relay_nodes n ON n.id = p.node
                          WHERE p.client = $1 AND p.node <> $2 AND n.lease_until > now()",
                    )
                    .await?;
                let id = client.to_bytes();
                Ok(c.query_opt(&st, &[&&id[..], &node]).await?.is_some())
            })
            .await;
        r.unwrap_or(false)
    }

    /// The connection registered as `old` identified as `id` here: `id`
    /// is registered on this node, and the node that held it before (if
    /// another) is told, so it replaces its connection and hands over its
    /// mailbox.
    pub(crate) async fn identified(&self, old: ClientId, id: ClientId) {
        let node = self.node;
        let r = self
            .with_db(move |c| async move {
                let st = c
                    .prepare_cached(
                        "WITH prev AS (SELECT node FROM relay_presence WHERE client = $1),
                         gone AS (DELETE FROM relay_presence WHERE client = $3 AND node = $2),
                         up AS (
                           INSERT INTO relay_presence (client, node) VALUES ($1, $2)
                           ON CONFLICT (client) DO UPDATE SET node = excluded.node, since = now())
                         SELECT p.node, pg_notify('devicelink_node_' || p.node, $4)::text
                           FROM prev p WHERE p.node <> $2",
                    )
                    .await?;
                let (idb, oldb) = (id.to_bytes(), old.to_bytes());
                let moved = format!("x{}", hex(&idb));
                c.execute(&st, &[&&idb[..], &node, &&oldb[..], &moved])
                    .await
            })
            .await;
        if let Err(e) = r {
            self.dirty.store(true, Ordering::Release);
            tracing::warn!(error = %e.text, "cannot register an identified client; retrying");
        }
    }

    /// Tells the other nodes that this heartbeat was applied here.
    pub(crate) async fn heartbeat_applied(&self, heartbeat: &[u8]) {
        self.notify_accounts(format!("H{}:{}", self.node, hex(heartbeat)))
            .await;
    }

    /// Takes the frames waiting in the mailbox for this node, oldest first
    /// (`None`: the database did not answer).
    async fn drain_mailbox(&self) -> Option<Vec<(ClientId, Bytes)>> {
        let node = self.node;
        let r = self
            .with_db(move |c| async move {
                let st = c
                    .prepare_cached(
                        "DELETE FROM relay_mailbox WHERE id IN
                           (SELECT id FROM relay_mailbox WHERE node = $1 FOR UPDATE SKIP LOCKED)
                         RETURNING id, client, frame",
                    )
                    .await?;
                c.query(&st, &[&node]).await
            })
            .await;
        let mut rows: Vec<(i64, ClientId, Bytes)> = match r {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| {
                    let id: i64 = r.try_get(0).ok()?;
                    let client: &[u8] = r.try_get(1).ok()?;
                    let frame: Vec<u8> = r.try_get(2).ok()?;
                    Some((
                        id,
                        ClientId::from_bytes(client.try_into().ok()?),
                        Bytes::from(frame),
                    ))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e.text, "cannot read the mailbox");
                return None;
            }
        };
        rows.sort_by_key(|r| r.0);
        Some(rows.into_iter().map(|(_, c, f)| (c, f)).collect())
    }

    /// Leaves the cluster (at shutdown): the lease and registrations go.
    pub(crate) async fn leave(&self) {
        let node = self.node;
        let _ = self
            .with_db(move |c| async move {
                c.execute("DELETE FROM relay_presence WHERE node = $1", &[&node])
                    .await?;
                c.execute("DELETE FROM relay_nodes WHERE id = $1", &[&node])
                    .await
            })
            .await;
    }
}

/// Renews the lease every third of it and reaps what nodes dead for a
/// minute left. A lease row found missing (PostgreSQL crashed and emptied
/// the unlogged tables) makes the node register its clients again.
async fn renew(store: PgStore, node: i64, options: ClusterOptions, dirty: Arc<AtomicBool>) {
    let every = (options.lease / 3).max(Duration::from_millis(50));
    let (lease, ttl) = (secs(options.lease), secs(options.mailbox_ttl));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let shared = Arc::clone(&store.db().shared);
        let Ok(c) = shared.client().await else {
            continue;
        };
        let renewed = c
            .query_one(
                "INSERT INTO relay_nodes (id, lease_until)
                 VALUES ($1, now() + make_interval(secs => $2))
                 ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until
                 RETURNING (xmax = 0)",
                &[&node, &lease],
            )
            .await
            .and_then(|row| row.try_get::<_, bool>(0));
        match renewed {
            Ok(true) => {
                tracing::warn!(
                    node,
                    "the node's lease was gone (PostgreSQL restarted?); registering again"
                );
                dirty.store(true, Ordering::Release);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, node, "cannot renew the node's lease");
                continue;
            }
        }
        let reaped = c
            .batch_execute(&format!(
                "DELETE FROM relay_presence WHERE node IN
                   (SELECT id FROM relay_nodes WHERE lease_until < now() - interval '1 minute');
                 DELETE FROM relay_mailbox WHERE node IN
                   (SELECT id FROM relay_nodes WHERE lease_until < now() - interval '1 minute')
                   OR queued_at < now() - make_interval(secs => {ttl});
                 DELETE FROM relay_nodes WHERE lease_until < now() - interval '1 minute';"
            ))
            .await;
        if let Err(e) = reaped {
            tracing::debug!(error = %e, "cannot reap dead nodes' rows");
        }
    }
}

/// The listening connection: LISTENs on this node's channel and the
/// accounts channel, forwards what it hears, reconnects with backoff.
async fn listen(store: PgStore, node: i64, events: mpsc::Sender<Event>) {
    let config = store.db().config.clone();
    let mut attempt = 0;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (ntx, mut nrx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if ntx.send(n).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "listening connection failed");
                                break;
                            }
                        }
                    }
                });
                let listening = client
                    .batch_execute(&format!("LISTEN devicelink_node_{node}; LISTEN {ACCOUNTS}"))
                    .await;
                match listening {
                    Ok(()) => {
                        if attempt > 0 {
                            tracing::info!(node, "listening again");
                        }
                        attempt = 0;
                        if events.send(Event::Resync).await.is_err() {
                            return;
                        }
                        while let Some(n) = nrx.recv().await {
                            if let Some(event) = parse(node, n.channel(), n.payload()) {
                                if events.send(event).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN"),
                }
                driver.abort();
            }
            Err(e) => tracing::debug!(error = %e, "listener cannot connect"),
        }
        attempt += 1;
        tokio::time::sleep(backoff(
            attempt,
            Duration::from_millis(50),
            Duration::from_secs(2),
        ))
        .await;
    }
}

/// What another node's notice about `account` means here, read from the
/// store (never from the notice): the newest stored list to this node's
/// subscribers, and a logout to each subscribed device the stored facts no
/// longer link (with the reason the list gives, or `PrimaryOffline` for an
/// account that expired or was forgotten). Whether the store answered.
async fn push_account<S: Store + 'static>(hub: &Arc<Hub<S>>, account: AccountId) -> bool {
    let indices = hub.subscribed_indices(&account);
    let now = hub.clock.now();
    let r = hub
        .blocking(move |h| {
            let record = h.directory.store().account(&account)?;
            let mut unlinked = Vec::new();
            for index in indices {
                let linked = h
                    .directory
                    .linked_device(&account, index, now)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                if linked.is_none() {
                    unlinked.push(index);
                }
            }
            let list = match &record {
                Some(r) if !r.list.is_empty() => Some((
                    SignedDeviceList::from_bytes(&r.list)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    r.list.clone(),
                    r.facts.expired(),
                )),
                _ => None,
            };
            Ok::<_, StoreError>((list, unlinked))
        })
        .await;
    match r {
        Some(Ok((list, unlinked))) => {
            let logouts: Vec<DeviceLogout> = unlinked
                .into_iter()
                .map(|index| {
                    let reason = match &list {
                        Some((list, _, false)) => list
                            .removed()
                            .iter()
                            .find(|r| r.index == index)
                            .map_or(LogoutReason::Revoked, |r| r.reason),
                        _ => LogoutReason::PrimaryOffline,
                    };
                    DeviceLogout {
                        account,
                        index,
                        reason,
                        at: now,
                    }
                })
                .collect();
            match list {
                Some((list, bytes, _)) => hub.fan_out_list(&list, Bytes::from(bytes), &logouts),
                None => hub.push_logouts(&logouts),
            }
        }
        Some(Err(StoreError::Unavailable(e))) => {
            tracing::warn!(error = %e, "cannot read an account yet; retrying");
            return false;
        }
        Some(Err(e)) => tracing::warn!(error = %e, "cannot read an account"),
        None => {}
    }
    true
}

/// The hub's side: carries out what the listener heard, until shutdown.
/// What fails because the database is unreachable (registering clients,
/// reading the mailbox, reloading accounts) is tried again every 200 ms
/// until it succeeds.
pub(crate) async fn run<S: Store + 'static>(hub: Arc<Hub<S>>, cluster: Arc<Cluster>) {
    let Some(mut events) = cluster.take_events() else {
        return;
    };
    let mut shutdown = hub.shutdown.clone();
    let mut retry = tokio::time::interval(Duration::from_millis(200));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Accounts whose update could not be read yet, with its logouts.
    let mut pending: BTreeSet<AccountId> = BTreeSet::new();
    loop {
        let event = tokio::select! {
            () = stopped(&mut shutdown) => break,
            e = events.recv() => match e { Some(e) => e, None => break },
            _ = retry.tick() => {
                if cluster.dirty.swap(false, Ordering::AcqRel) {
                    Event::Resync
                } else if !pending.is_empty() {
                    // Up to 256 accounts a tick.
                    for _ in 0..256 {
                        let Some(account) = pending.pop_first() else { break };
                        if !push_account(&hub, account).await {
                            pending.insert(account);
                            break;
                        }
                    }
                    continue;
                } else {
                    continue;
                }
            }
        };
        match event {
            Event::Mailbox => match cluster.drain_mailbox().await {
                Some(frames) => {
                    for (client, frame) in frames {
                        if !hub.push(client, frame) {
                            // It left (or a stale registration points here).
                            cluster.disconnected(client).await;
                        }
                    }
                }
                None => cluster.dirty.store(true, Ordering::Release),
            },
            Event::Moved(id) => {
                // Only if the presence table agrees: a forged notice must
                // not close anyone's connection.
                if cluster.held_elsewhere(id).await {
                    for frame in hub.moved_away(id) {
                        cluster.deliver(id, frame).await;
                    }
                }
            }
            Event::Account(account) => {
                if !push_account(&hub, account).await {
                    pending.insert(account);
                }
            }
            Event::Heartbeat(bytes) => match PrimaryHeartbeat::from_bytes(&bytes) {
                Ok(heartbeat) => {
                    // Pushed only if the store shows it applied.
                    let account = heartbeat.account();
                    let at = heartbeat.at();
                    let applied = hub
                        .blocking(move |h| h.directory.store().account(&account))
                        .await;
                    match applied {
                        Some(Ok(Some(r))) if r.facts.last_activity() >= at => {
                            hub.fan_out_heartbeat(account, &bytes)
                        }
                        _ => tracing::debug!("a heartbeat notice the store does not show applied"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a heartbeat from another node does not verify")
                }
            },
            Event::Resync => {
                let mut ok = cluster.renew_now().await;
                ok &= cluster.connected(hub.client_ids()).await;
                match cluster.drain_mailbox().await {
                    Some(frames) => {
                        for (client, frame) in frames {
                            hub.push(client, frame);
                        }
                    }
                    None => ok = false,
                }
                // Updates may have been missed while not listening: each
                // subscribed account's newest list again (a companion
                // ignores one it holds).
                for account in hub.subscribed_accounts() {
                    pending.insert(account);
                }
                if !ok {
                    cluster.dirty.store(true, Ordering::Release);
                }
            }
        }
    }
    cluster.leave().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_totally() {
        assert!(matches!(
            parse(1, "devicelink_node_1", "m"),
            Some(Event::Mailbox)
        ));
        let client = ClientId::from_bytes([7; 16]);
        let x = format!("x{}", hex(&client.to_bytes()));
        assert!(matches!(parse(1, "devicelink_node_1", &x), Some(Event::Moved(c)) if c == client));
        let account = AccountId::from_bytes([9; 32]);
        let a = format!("A2:{}", hex(&account.to_bytes()));
        assert!(matches!(parse(1, ACCOUNTS, &a), Some(Event::Account(got)) if got == account));
        // Our own account notices are ignored.
        assert!(parse(2, ACCOUNTS, &a).is_none());
        let h = format!("H2:{}", hex(&[1, 2, 3]));
        assert!(matches!(parse(1, ACCOUNTS, &h), Some(Event::Heartbeat(b)) if b == [1, 2, 3]));
        for bad in [
            "",
            "d",
            "mm",
            "x",
            "x00",
            "A",
            "Ax:00",
            "A2:00",
            "H1:0",
            "q",
            "L2:00:",
            "O2:00:1.9.1",
        ] {
            assert!(parse(1, "devicelink_node_1", bad).is_none(), "{bad}");
            assert!(parse(5, ACCOUNTS, bad).is_none(), "{bad}");
        }
    }
}
