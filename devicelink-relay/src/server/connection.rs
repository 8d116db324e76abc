//! The one connection machinery every endpoint uses (`/v1/companion`,
//! `/v1/primary`, `/v1/code`, and the long-poll sessions of the first two):
//! one task per connection owns its [`Wire`], takes frames within the
//! connection's token bucket, read buffer and frame size, pings and closes
//! it when idle, takes an `Identify` only as the first frame, calls the
//! core through the [`Hub`], writes its own answers (exactly one per frame,
//! in order), and drains its bounded outbound queue (messages and pushes
//! from other connections). Transports sit above it (a WebSocket, a
//! long-poll session); the hub and the store below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use devicelink::handshake::MessageKind;
use devicelink::relay::{ClientId, ListApplied, SourceKey, Transition};
use devicelink::{AccountId, ErrorKind, PrimaryHeartbeat, SignedDeviceList};
use rand_core::{OsRng, RngCore};
use std::future::Future;
use tokio::time::Instant;

use super::code::{self, CodeAnswer};
use super::hub::{stopped, CloseSignal, Departure, Hub, Outbound, Peer, Subscriber};
use super::metrics::Metrics;
use crate::code_frame::{is_code_frame, CodeFrame};
use crate::codes;
use crate::frame::{Frame, FrameType};
use crate::store::{AccountDirectoryError, CreationRefused, Store};

/// What a connection task reads frames from and writes them to: a
/// WebSocket, or a long-poll session's pair of queues ([`super::poll`]).
pub(crate) trait Wire: Send + 'static {
    /// The next message; `None` when the peer is gone.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Message, axum::Error>>> + Send;
    /// Sends one message.
    fn send(&mut self, message: Message) -> impl Future<Output = Result<(), axum::Error>> + Send;
    /// Whether to wait for the peer's Close after sending ours.
    fn closing_handshake(&self) -> bool {
        true
    }
}

impl Wire for WebSocket {
    fn recv(&mut self) -> impl Future<Output = Option<Result<Message, axum::Error>>> + Send {
        WebSocket::recv(self)
    }

    fn send(&mut self, message: Message) -> impl Future<Output = Result<(), axum::Error>> + Send {
        WebSocket::send(self, message)
    }
}

/// Which endpoint the connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Companion,
    Primary,
    /// `/v1/code`: both sides of a link by typed code.
    Code,
}

impl Role {
    fn accepts(self, frame: FrameType) -> bool {
        match self {
            // A companion may carry its account's signed list (the one its
            // certificate holds) before it subscribes: the directory decides
            // whatever carries a signed fact.
            Role::Companion => matches!(
                frame,
                FrameType::Identify
                    | FrameType::ProveAccount
                    | FrameType::Register
                    | FrameType::Release
                    | FrameType::Message
                    | FrameType::PublishList
                    | FrameType::Subscribe
            ),
            Role::Primary => matches!(
                frame,
                FrameType::Identify
                    | FrameType::ProveAccount
                    | FrameType::Message
                    | FrameType::PublishList
                    | FrameType::PublishHeartbeat
            ),
            Role::Code => matches!(frame, FrameType::Identify | FrameType::ProveAccount),
        }
    }

    fn accepts_code(self, frame: &CodeFrame<'_>) -> bool {
        self == Role::Code
            && matches!(
                frame,
                CodeFrame::Open
                    | CodeFrame::Publish(_)
                    | CodeFrame::Join(_)
                    | CodeFrame::Message(_)
                    | CodeFrame::WrongCode(_)
            )
    }

    fn sends(self, kind: MessageKind) -> bool {
        match self {
            Role::Companion => matches!(kind, MessageKind::Request | MessageKind::Confirm),
            Role::Primary => matches!(
                kind,
                MessageKind::Hello | MessageKind::Grant | MessageKind::Refusal
            ),
            Role::Code => false,
        }
    }
}

/// A refusal to send as an error frame.
struct Refusal {
    code: u16,
    kind: ErrorKind,
    text: String,
}

impl Refusal {
    fn core(kind: ErrorKind, text: impl ToString) -> Self {
        Refusal {
            code: codes::core_code(kind),
            kind,
            text: text.to_string(),
        }
    }

    fn transport(code: u16, text: impl ToString) -> Self {
        Refusal {
            code,
            kind: codes::code_kind(code).unwrap_or(ErrorKind::Misuse),
            text: text.to_string(),
        }
    }
}

/// Why the connection ends.
enum End {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// Close with this code, after this error frame if any.
    Close(u16, Option<Refusal>),
}

/// A per-connection token bucket (real time: a transport matter, not the
/// core's clock).
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket {
            tokens: burst,
            last: Instant::now(),
            rate: f64::from(rate),
            burst,
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Longest wait for the client's half of the closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

static FALLBACK_ID: AtomicU64 = AtomicU64::new(1);
/// Connection numbers (unique in this process).
static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// A fresh random id (never sent to anyone; only the relay routes by it).
/// If the system RNG fails, a process-wide counter keeps ids unique.
fn fresh_client_id() -> ClientId {
    let mut bytes = [0u8; 16];
    if OsRng.try_fill_bytes(&mut bytes).is_err() {
        return ClientId::from(FALLBACK_ID.fetch_add(1, Ordering::Relaxed));
    }
    ClientId::from_bytes(bytes)
}

struct Connection<S: Store, W: Wire> {
    hub: Arc<Hub<S>>,
    socket: W,
    /// How others reach this connection.
    peer: Peer,
    /// A fresh random id, or the one an Identify frame named.
    client: ClientId,
    identified: bool,
    /// Frames handled so far (an Identify must be the first).
    frames: u64,
    role: Role,
    subscribed: Option<AccountId>,
    /// The budgets' key of the client's address.
    source: SourceKey,
    /// The account this connection proved (`ProveAccount`).
    proven: Option<AccountId>,
    /// Whether it registered a token or opened a code session (to forget
    /// them when it is gone for good).
    registered: bool,
    opened_code: bool,
}

/// Runs one connection until it ends, then forgets it and returns its
/// permit.
///
/// The connection is set up before the future is made: an `async fn` would
/// keep its arguments (the socket among them) in its state beside the
/// [`Connection`] they move into, in every open connection's task.
pub(crate) fn run<S: Store + 'static, W: Wire>(
    hub: Arc<Hub<S>>,
    socket: W,
    role: Role,
    permit: super::admission::Admission,
) -> impl Future<Output = ()> + Send {
    let client = fresh_client_id();
    let outbound = Arc::new(Outbound::new(hub.limits.outbound_queue));
    let close = Arc::new(CloseSignal::default());
    let peer = Peer {
        conn: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
        tx: outbound.clone(),
        close: close.clone(),
    };
    hub.connect(client, peer.clone());
    Metrics::inc(&hub.metrics.connections_total);
    Metrics::inc(&hub.metrics.connections_open);
    tracing::debug!(%client, ?role, "connected");
    let mut conn = Connection {
        hub,
        socket,
        peer,
        client,
        identified: false,
        frames: 0,
        role,
        subscribed: None,
        source: permit.source(),
        proven: None,
        registered: false,
        opened_code: false,
    };
    async move {
        conn.hub.announce_connected(client).await;
        let end = conn.serve(&outbound, &close).await;
        outbound.close();
        let client = conn.client;
        let departure = conn.hub.disconnect(
            client,
            conn.peer.conn,
            conn.identified,
            conn.subscribed,
            conn.source,
        );
        // An identified client's frames keep coming here (into its mailbox)
        // until it connects again, here or on another node; one gone for
        // good is forgotten, and what only it could finish is swept now.
        if departure == Departure::Gone {
            conn.hub.announce_disconnected(client);
            if !conn.identified {
                Box::pin(conn.forget()).await;
            }
        }
        if let End::Close(code, refusal) = end {
            Box::pin(conn.close(code, refusal)).await;
        }
        conn.hub
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(%client, "disconnected");
        drop(permit);
    }
}

impl<S: Store + 'static, W: Wire> Connection<S, W> {
    /// A connection that never identified is gone with its random id: its
    /// tokens and code sessions can never be finished, so they stop
    /// counting against its source at once.
    async fn forget(&mut self) {
        let client = self.client;
        if self.opened_code {
            self.hub.with_code(|r| r.abandon(client));
        }
        if self.registered {
            match self.hub.blocking(move |h| h.ledger.abandon(client)).await {
                Some(Ok(n)) if n > 0 => tracing::debug!(%client, n, "abandoned tokens swept"),
                Some(Err(e)) => {
                    tracing::warn!(%client, error = %e, "cannot sweep abandoned tokens")
                }
                _ => {}
            }
        }
    }

    async fn serve(&mut self, outbound: &Outbound, close: &CloseSignal) -> End {
        // Only what the loop needs, not a copy of every limit in each task.
        let idle_timeout = self.hub.limits.idle_timeout;
        let mut shutdown = self.hub.shutdown.clone();
        let mut bucket = Bucket::new(self.hub.limits.rate_per_second, self.hub.limits.rate_burst);
        let mut idle_at = Instant::now() + idle_timeout;
        let ping_every = (idle_timeout / 3).max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => {
                    return End::Close(
                        codes::CLOSE_GOING_AWAY,
                        Some(Refusal::transport(codes::SHUTTING_DOWN, "the relay is shutting down")),
                    );
                }
                _ = close.closed() => {
                    // Another task found our queue full: close with its
                    // code (one write, bounded by the write timeout).
                    let code = close.code();
                    tracing::info!(client = %self.client, code, "closed by the relay");
                    return End::Close(code, None);
                }
                bytes = outbound.pop() => {
                    if !self.write(Message::Binary(bytes)).await {
                        Metrics::inc(&self.hub.metrics.slow_readers);
                        return End::Gone;
                    }
                }
                () = tokio::time::sleep_until(idle_at) => {
                    return End::Close(
                        codes::CLOSE_IDLE,
                        Some(Refusal::transport(codes::IDLE, "idle timeout")),
                    );
                }
                _ = ping.tick() => {
                    if !self.write(Message::Ping(Bytes::new())).await {
                        return End::Gone;
                    }
                }
                inbound = self.socket.recv() => {
                    let message = match inbound {
                        None => return End::Gone,
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return too_big_or_gone(e),
                    };
                    idle_at = Instant::now() + idle_timeout;
                    // Pings count against the rate too (each costs a pong);
                    // pongs answer our own pings.
                    let counted = !matches!(message, Message::Pong(_));
                    if counted && !bucket.take() {
                        return End::Close(
                            codes::CLOSE_RATE_LIMITED,
                            Some(Refusal::transport(codes::RATE_LIMITED, "frame rate exceeded")),
                        );
                    }
                    match message {
                        Message::Binary(bytes) => {
                            // Boxed: the frame handler's state (store calls,
                            // writes) lives on the heap only while a frame is
                            // handled, not in every idle connection's task.
                            if let Some(end) = Box::pin(self.handle(bytes)).await {
                                return end;
                            }
                        }
                        Message::Text(_) => {
                            return End::Close(
                                codes::CLOSE_UNSUPPORTED,
                                Some(Refusal::transport(codes::TEXT_MESSAGE, "frames are binary messages")),
                            );
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => return End::Gone,
                    }
                }
            }
        }
    }

    /// Writes one message, bounded by the write timeout.
    async fn write(&mut self, message: Message) -> bool {
        matches!(
            tokio::time::timeout(self.hub.limits.write_timeout, self.socket.send(message)).await,
            Ok(Ok(()))
        )
    }

    async fn send_frame(&mut self, frame: &Frame<'_>) -> Option<End> {
        if self
            .write(Message::Binary(Bytes::from(frame.encode())))
            .await
        {
            None
        } else {
            Metrics::inc(&self.hub.metrics.slow_readers);
            Some(End::Gone)
        }
    }

    async fn refuse(&mut self, refusal: Refusal) -> Option<End> {
        self.hub.metrics.refused(refusal.kind);
        tracing::debug!(client = %self.client, code = refusal.code, text = %refusal.text, "refused");
        self.send_frame(&Frame::Error {
            code: refusal.code,
            text: &refusal.text,
        })
        .await
    }

    async fn ack(&mut self, of: FrameType, changed: bool) -> Option<End> {
        self.send_frame(&Frame::Ack { of, changed }).await
    }

    /// Sends the error frame (if any) and a close frame, bounded in time.
    async fn close(&mut self, code: u16, refusal: Option<Refusal>) {
        if let Some(refusal) = refusal {
            if self.refuse(refusal).await.is_some() {
                return;
            }
        }
        let frame = CloseFrame {
            code,
            reason: "".into(),
        };
        if !self.write(Message::Close(Some(frame))).await || !self.socket.closing_handshake() {
            return;
        }
        // The closing handshake: wait (briefly) for the client's Close, so
        // what it still sends (a pong) does not meet a reset before it has
        // read our error and close frames.
        let wait = self.hub.limits.write_timeout.min(CLOSE_WAIT);
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(m)) = self.socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// Handles one binary message; `Some` ends the connection.
    async fn handle(&mut self, bytes: Bytes) -> Option<End> {
        if bytes.first().copied().is_some_and(is_code_frame) {
            return match CodeFrame::decode(&bytes) {
                Ok(frame) => self.handle_code(frame).await,
                Err(e) => Some(End::Close(
                    codes::CLOSE_MALFORMED,
                    Some(Refusal::transport(codes::MALFORMED_FRAME, e)),
                )),
            };
        }
        let frame = match Frame::decode(&bytes) {
            Ok(frame) => frame,
            Err(e) => {
                return Some(End::Close(
                    codes::CLOSE_MALFORMED,
                    Some(Refusal::transport(codes::MALFORMED_FRAME, e)),
                ))
            }
        };
        let ty = frame.frame_type();
        if !self.role.accepts(ty) {
            let text = format!("{ty:?} frames are not accepted from a {:?}", self.role);
            return self
                .refuse(Refusal::transport(codes::WRONG_FRAME, text))
                .await;
        }
        self.frames += 1;
        let now = self.hub.clock.now();
        let client = self.client;
        match frame {
            Frame::Register {
                token_id,
                expires_at,
            } => {
                let source = self.source;
                let r = self
                    .hub
                    .blocking(move |h| h.ledger.register(client, source, token_id, expires_at, now))
                    .await;
                match r {
                    Some(Ok(_)) => {
                        self.registered = true;
                        Metrics::inc(&self.hub.metrics.tokens_registered);
                        self.ack(ty, true).await
                    }
                    Some(Err(e)) => self.refuse(Refusal::core(e.kind(), e)).await,
                    None => Some(internal()),
                }
            }
            Frame::Release { token_id, hello } => {
                let r = self
                    .hub
                    .blocking(move |h| h.ledger.release(client, &token_id, &hello, now))
                    .await;
                match r {
                    Some(Ok(())) => {
                        Metrics::inc(&self.hub.metrics.tokens_released);
                        self.ack(ty, true).await
                    }
                    Some(Err(e)) => self.refuse(Refusal::core(e.kind(), e)).await,
                    None => Some(internal()),
                }
            }
            Frame::Message { header, bytes: msg } => {
                if !self.role.sends(header.kind) {
                    let text =
                        format!("a {:?} does not send {:?} messages", self.role, header.kind);
                    return self
                        .refuse(Refusal::transport(codes::WRONG_KIND, text))
                        .await;
                }
                let owned = bytes.clone();
                let route = move |h: &Hub<S>| h.ledger.route(client, &owned[1..], now);
                // A Hello reserves and a Request redeems (writes); a Grant,
                // Refusal or Confirm only reads its token.
                let r = match header.kind {
                    MessageKind::Hello | MessageKind::Request => self.hub.blocking(route).await,
                    _ => self.hub.reading(route).await,
                };
                let routed = match r {
                    Some(Ok(routed)) => routed,
                    Some(Err(e)) => return self.refuse(Refusal::core(e.kind(), e)).await,
                    None => return Some(internal()),
                };
                match routed.transition {
                    Transition::Reserved { .. } => Metrics::inc(&self.hub.metrics.tokens_reserved),
                    Transition::Redeemed { .. } => Metrics::inc(&self.hub.metrics.tokens_redeemed),
                    Transition::None => {}
                }
                let _ = msg;
                // The frame as received is the frame to forward.
                if !self.hub.push(routed.forward_to, bytes.clone())
                    && !self
                        .hub
                        .deliver_elsewhere(routed.forward_to, bytes.clone())
                        .await
                {
                    return self
                        .refuse(Refusal::transport(
                            codes::PEER_GONE,
                            "the recipient is not connected",
                        ))
                        .await;
                }
                self.hub.metrics.routed(routed.kind);
                self.send_frame(&Frame::Routed { header }).await
            }
            Frame::Identify { secret } => {
                if self.frames != 1 {
                    return self
                        .refuse(Refusal::transport(
                            codes::IDENTIFY_NOT_FIRST,
                            "Identify must be the connection's first frame",
                        ))
                        .await;
                }
                let id = secret.client_id();
                let replaced = self.hub.identify(self.client, id, &self.peer);
                self.hub.announce_identified(self.client, id).await;
                if replaced {
                    Metrics::inc(&self.hub.metrics.connections_replaced);
                }
                self.client = id;
                self.identified = true;
                self.ack(ty, replaced).await
            }
            Frame::ProveAccount { account, proof } => {
                if !self.identified {
                    return self
                        .refuse(Refusal::transport(
                            codes::NOT_IDENTIFIED,
                            "an account proof needs an identified connection",
                        ))
                        .await;
                }
                match proof.verify(&account, client) {
                    Ok(()) => {
                        let changed = self.proven != Some(account);
                        self.proven = Some(account);
                        self.ack(ty, changed).await
                    }
                    Err(e) => self.refuse(Refusal::core(e.kind(), e)).await,
                }
            }
            Frame::Subscribe {
                account,
                index,
                proof,
                after,
            } => {
                if !self.identified {
                    return self
                        .refuse(Refusal::transport(
                            codes::NOT_IDENTIFIED,
                            "a subscription needs an identified connection",
                        ))
                        .await;
                }
                // The core's facts name the device's key; its proof binds
                // this client id. Then the newest list the relay holds (a
                // companion catches up on what it missed while away).
                let r = self
                    .hub
                    .reading(move |h| {
                        let key = h
                            .directory
                            .linked_device(&account, index, now)
                            .map_err(directory_refusal)?
                            .ok_or_else(|| {
                                Refusal::core(
                                    ErrorKind::Unexpected,
                                    "no device linked at that index (publish its list first)",
                                )
                            })?;
                        proof
                            .verify(&key, &account, index, client)
                            .map_err(|e| Refusal::core(e.kind(), e))?;
                        let unavailable = |e| Refusal::core(ErrorKind::Unavailable, e);
                        let newest = h.directory.account(&account).map_err(unavailable)?;
                        // The versions after the one the companion holds
                        // (oldest first), or only the newest.
                        let lists = match after {
                            Some(v) => h
                                .directory
                                .store()
                                .lists_after(&account, v)
                                .map_err(unavailable)?,
                            None => Vec::new(),
                        };
                        Ok((newest, lists))
                    })
                    .await;
                let (held, lists) = match r {
                    Some(Ok(found)) => found,
                    Some(Err(refusal)) => return self.refuse(refusal).await,
                    None => return Some(internal()),
                };
                if let Some(old) = self.subscribed.take() {
                    self.hub.unsubscribe(self.peer.conn, old);
                }
                self.hub.subscribe(
                    account,
                    Subscriber {
                        client,
                        conn: self.peer.conn,
                        index,
                    },
                );
                self.subscribed = Some(account);
                if let Some(end) = self.ack(ty, true).await {
                    return Some(end);
                }
                for list in &lists {
                    if let Some(end) = self.send_frame(&Frame::PublishList { bytes: list }).await {
                        return Some(end);
                    }
                }
                match held {
                    // The newest, unless the history already ended with it.
                    Some(record)
                        if !record.list.is_empty() && lists.last() != Some(&record.list) =>
                    {
                        self.send_frame(&Frame::PublishList {
                            bytes: &record.list,
                        })
                        .await
                    }
                    _ => None,
                }
            }
            Frame::PublishList { bytes: list } => {
                let owned = Bytes::copy_from_slice(list);
                // Verified here, not on the store's thread.
                let list = match SignedDeviceList::from_bytes(&owned) {
                    Ok(list) => list,
                    Err(e) => return self.refuse(Refusal::core(e.kind(), e)).await,
                };
                // An account the relay does not know is kept only for a
                // connection that proved its key, within its source's rate
                // of new accounts.
                let proven = self.proven == Some(list.account());
                let source = self.source;
                let r = self
                    .hub
                    .blocking(move |h| {
                        let may_create = || {
                            if !proven {
                                Err(CreationRefused::NeedsProof)
                            } else if !h.gate.new_account(&source) {
                                Err(CreationRefused::TooMany)
                            } else {
                                Ok(())
                            }
                        };
                        let applied = h
                            .directory
                            .apply_device_list(&list, now, may_create)
                            .map_err(directory_refusal)?;
                        Ok((list, owned, applied))
                    })
                    .await;
                match r {
                    Some(Ok((list, owned, applied))) => {
                        let changed = applied.changed();
                        if let ListApplied::Changed { logged_out } = applied {
                            Metrics::inc(&self.hub.metrics.lists_applied);
                            self.hub.fan_out_list(&list, owned, &logged_out);
                            self.hub.announce_list(list.account()).await;
                        }
                        self.ack(ty, changed).await
                    }
                    Some(Err(refusal)) => self.refuse(refusal).await,
                    None => Some(internal()),
                }
            }
            Frame::PublishHeartbeat { bytes: hb } => {
                let owned = Bytes::copy_from_slice(hb);
                let heartbeat = match PrimaryHeartbeat::from_bytes(&owned) {
                    Ok(hb) => hb,
                    Err(e) => return self.refuse(Refusal::core(e.kind(), e)).await,
                };
                let r = self
                    .hub
                    .blocking(move |h| {
                        h.directory
                            .apply_heartbeat(&heartbeat, now)
                            .map_err(directory_refusal)?;
                        Ok((heartbeat.account(), owned))
                    })
                    .await;
                match r {
                    Some(Ok((account, owned))) => {
                        Metrics::inc(&self.hub.metrics.heartbeats_applied);
                        self.hub.fan_out_heartbeat(account, &owned);
                        self.hub.announce_heartbeat(&owned).await;
                        self.ack(ty, true).await
                    }
                    Some(Err(refusal)) => self.refuse(refusal).await,
                    None => Some(internal()),
                }
            }
            // Relay-only types never pass `accepts`.
            Frame::Routed { .. }
            | Frame::Error { .. }
            | Frame::Logout { .. }
            | Frame::Ack { .. } => {
                self.refuse(Refusal::transport(codes::WRONG_FRAME, "relay-only frame"))
                    .await
            }
        }
    }

    /// Handles one frame of the code endpoint: the core's rendezvous
    /// decides ([`code::answer`]); this carries out its answer, and tells
    /// the companions whose code was spent.
    async fn handle_code(&mut self, frame: CodeFrame<'_>) -> Option<End> {
        if !self.role.accepts_code(&frame) {
            let text = format!("code frames are not accepted from a {:?}", self.role);
            return self
                .refuse(Refusal::transport(codes::WRONG_FRAME, text))
                .await;
        }
        self.frames += 1;
        let now = self.hub.clock.now();
        if matches!(frame, CodeFrame::Open) {
            self.opened_code = true;
        }
        let from = code::Sender {
            client: self.client,
            source: self.source,
            account: self.proven,
        };
        let (answer, spent) = code::answer(&self.hub, from, frame, now);
        for s in spent {
            let notice = CodeFrame::Spent(s.token_id).encode();
            if !self.hub.push(s.companion, Bytes::from(notice)) {
                tracing::debug!(companion = %s.companion, "a spent code's companion is gone");
            }
        }
        match answer {
            Ok(CodeAnswer::Reply(reply)) => self.send_bytes(reply).await,
            Ok(CodeAnswer::Forward { to, frame }) => {
                let frame = Bytes::from(frame);
                if self.hub.push(to, frame.clone()) || self.hub.deliver_elsewhere(to, frame).await {
                    self.send_bytes(CodeFrame::Ok.encode()).await
                } else {
                    self.refuse(Refusal::transport(
                        codes::PEER_GONE,
                        "the other side is not connected",
                    ))
                    .await
                }
            }
            Err(e) => {
                if matches!(e, devicelink::relay::CodeRelayError::NoSuchCode) {
                    Metrics::inc(&self.hub.metrics.code_joins_failed);
                }
                self.refuse(Refusal::core(e.kind(), e)).await
            }
        }
    }

    async fn send_bytes(&mut self, frame: Vec<u8>) -> Option<End> {
        if self.write(Message::Binary(Bytes::from(frame))).await {
            None
        } else {
            Metrics::inc(&self.hub.metrics.slow_readers);
            Some(End::Gone)
        }
    }
}

fn directory_refusal(e: AccountDirectoryError) -> Refusal {
    match e {
        AccountDirectoryError::NotAllowed(e @ CreationRefused::NeedsProof) => {
            Refusal::transport(codes::ACCOUNT_PROOF_NEEDED, e)
        }
        AccountDirectoryError::NotAllowed(e @ CreationRefused::TooMany) => {
            Refusal::transport(codes::NEW_ACCOUNTS_RATE, e)
        }
        AccountDirectoryError::Refused(e) => Refusal::core(e.kind(), e),
        AccountDirectoryError::Store(e) => Refusal::core(ErrorKind::Unavailable, e),
        e @ (AccountDirectoryError::Contended(_) | AccountDirectoryError::Corrupt(_)) => {
            Refusal::core(ErrorKind::Unavailable, e)
        }
    }
}

fn internal() -> End {
    End::Close(
        codes::CLOSE_INTERNAL,
        Some(Refusal::core(ErrorKind::Unavailable, "internal error")),
    )
}

/// A read error: a message over the size limit gets its typed error and
/// close; anything else means the socket is gone.
fn too_big_or_gone(e: axum::Error) -> End {
    // axum wraps tungstenite's `Error::Capacity` ("Space limit exceeded:
    // Message too long: …") without exposing its type.
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") {
        End::Close(
            codes::CLOSE_TOO_BIG,
            Some(Refusal::transport(codes::TOO_BIG, text)),
        )
    } else {
        tracing::debug!(error = %text, "socket error");
        End::Gone
    }
}
