//! Thin async clients of the relay over `tokio-tungstenite`: they move
//! bytes between the relay and the core's state machines, and the core
//! decides everything.
//!
//! - [`CompanionClient`]: registers the offer's token (and each rotated
//!   one), answers the Hello with the core [`Companion`]'s Request, releases
//!   the token when the core refuses a Hello (so a forged Hello never blocks
//!   the genuine one), confirms the Grant, then subscribes to its account and
//!   applies every pushed list and heartbeat to its [`LinkedSession`].
//! - [`PrimaryClient`]: sends the Hello from [`Account::scan`], grants or
//!   refuses the Request, verifies the Confirm, publishes lists and
//!   heartbeats.
//!
//! The relay answers every frame a client sends with exactly one
//! [`Frame::Ack`], [`Frame::Routed`] or [`Frame::Error`], in order, so a
//! client knows which of its frames an error is about.
//!
//! Identity and reconnection: every client holds a [`ClientSecret`] and
//! sends `Identify` as its first frame on every connection, so the relay
//! knows it as the same client id each time (the ledger binds a pairing's
//! token to that id, and frames routed to it while it is away wait in a
//! mailbox for a while). [`CompanionClient::reconnect`] and
//! [`PrimaryClient::reconnect`] connect again with capped, jittered
//! exponential [`Backoff`]: a pairing companion goes on waiting for its
//! Hello (its token still registered), a linked companion subscribes again
//! (and the relay sends it the newest list), and a logged-out companion
//! does not reconnect at all ([`ClientError::LoggedOut`]). A host that
//! saves the client's state (the core's `Companion::save` or
//! `LinkedSession::save`, and [`CompanionClient::secret`]) resumes with
//! [`CompanionClient::resume`] after a restart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use devicelink::handshake::{MessageHeader, MessageKind};
use devicelink::relay::{AccountProof, HelloDigest, SubscriptionProof};
use devicelink::{
    Account, AccountId, Companion, CompanionState, ConfirmedLink, DeviceIndex, DeviceListChange,
    ErrorKind, FailureReason, HandshakeError, JoinPrompt, LinkRequest, LinkedSession, LogoutReason,
    PrimaryHeartbeat, RefusalReason, RegistryError, SessionError, SessionStatus, SignedDeviceList,
    Timestamp,
};
use futures_util::{SinkExt, StreamExt};
use rand_core::{CryptoRng, RngCore};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::frame::{Frame, FrameError, FrameType};
use crate::identity::ClientSecret;
use crate::server::{codes, Clock};
use crate::MAX_FRAME_LEN;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The relay closed the connection (with this close code, if it gave one).
    #[error("the relay closed the connection (code {code:?})")]
    Closed {
        /// The WebSocket close code.
        code: Option<u16>,
    },
    /// The relay refused a frame this client sent.
    #[error("the relay refused a {of:?} frame ({code}): {text}")]
    Relay {
        /// The refused frame's type.
        of: Option<FrameType>,
        /// The error code (`docs/RELAY.md`; [`codes`]).
        code: u16,
        /// The relay's text.
        text: String,
    },
    /// The relay sent bytes that are not a frame.
    #[error("bad frame from the relay: {0}")]
    Frame(#[from] FrameError),
    /// The long-poll transport failed (an HTTP status or request error).
    #[error("long-poll: {0}")]
    Http(String),
    /// The relay sent a frame this client did not expect now.
    #[error("unexpected {0:?} frame from the relay")]
    Unexpected(FrameType),
    /// The core refused (companion handshake).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The core refused (primary's registry).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The core refused (linked session).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The phone's Hello was refused because another device already
    /// redeemed the code it scanned: someone else scanned that screen first
    /// (perhaps from a photograph). Tell the user plainly; the companion's
    /// user will see a join prompt for an account that is not theirs.
    #[error(
        "the code you scanned was already used by another device: if that was not you, \
         someone else scanned or photographed that screen; do not continue, and show a new \
         code on the device you are linking"
    )]
    OfferTaken,
    /// The pairing ended without a link (display ended, grant timed out).
    #[error("pairing failed: {0:?}")]
    PairingFailed(devicelink::handshake::FailureReason),
    /// The companion's session is logged out (its own status, from signed
    /// facts): it does not reconnect; re-pair to continue.
    #[error("the session is logged out ({reason:?}); re-pair to continue")]
    LoggedOut {
        /// Why.
        reason: LogoutReason,
    },
}

/// Capped, jittered exponential backoff between connection attempts: the
/// n-th wait is a random duration in `[d/2, d]` with
/// `d = min(cap, first × 2ⁿ)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait's upper bound.
    pub first: Duration,
    /// The longest wait.
    pub cap: Duration,
    /// Attempts before giving up.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            attempts: 10,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt `n` (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        let d = self
            .first
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let jitter = f64::from(rand_core::OsRng.next_u32()) / f64::from(u32::MAX);
        d.mul_f64(0.5 + jitter / 2.0)
    }

    async fn connect(
        &self,
        base: &str,
        role: &str,
        secret: &ClientSecret,
    ) -> Result<FrameLink, ClientError> {
        let mut n = 0;
        loop {
            match FrameLink::connect(base, role, secret).await {
                Ok(link) => return Ok(link),
                Err(e) if n + 1 >= self.attempts.max(1) => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, attempt = n + 1, "connect failed; retrying");
                    tokio::time::sleep(self.delay(n)).await;
                    n += 1;
                }
            }
        }
    }
}

impl ClientError {
    /// The core's kind of this error (for a relay refusal, the kind its
    /// code names).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Relay { code, .. } => codes::code_kind(*code),
            ClientError::Handshake(e) => Some(e.kind()),
            ClientError::Registry(e) => Some(e.kind()),
            ClientError::Session(e) => Some(e.kind()),
            ClientError::Frame(_) => Some(ErrorKind::Malformed),
            ClientError::OfferTaken => Some(ErrorKind::Conflict),
            _ => None,
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait between two polls of the core's deadlines (so a hand-moved
/// test clock is noticed).
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Most frames kept while waiting for answers (the relay's default
/// outbound queue).
const MAX_PENDING: usize = 64;

/// What the relay sent.
enum Inbound {
    /// An Ack or Routed: one of our frames was carried out.
    Answer,
    /// A forwarded handshake message (a whole frame; the message is `[1..]`).
    Message(MessageHeader, Vec<u8>),
    /// A push: list, heartbeat or logout (a whole frame).
    Push(Vec<u8>),
}

/// What carries frames: a WebSocket, or an HTTP long-poll session.
enum Transport {
    WebSocket(Box<Socket>),
    Poll(PollSession),
}

/// The client side of an HTTP long-poll session (`docs/RELAY.md` §3.6):
/// frames are posted numbered (`If-Match`), so a retried POST is taken
/// once; a poller task polls and acknowledges what it received
/// (`If-None-Match`), so a response lost on the way is sent again, and
/// hands the frames over a bounded channel (reading is cancel-safe).
struct PollSession {
    http: reqwest::Client,
    /// `{base}/v1/poll/session/{id}`.
    url: String,
    /// Frames posted and taken.
    sent: u64,
    frames: tokio::sync::mpsc::Receiver<Result<Vec<u8>, ClientError>>,
    poller: tokio::task::JoinHandle<()>,
}

/// Attempts of one long-poll request before the session counts as lost.
const POLL_ATTEMPTS: u32 = 20;

impl Drop for PollSession {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl PollSession {
    async fn open(base: &str, role: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = http
            .post(format!("{base}/v1/poll/{role}"))
            .send()
            .await
            .map_err(http_error)?;
        if response.status() != reqwest::StatusCode::CREATED {
            return Err(ClientError::Http(format!(
                "opening a session: HTTP {}",
                response.status()
            )));
        }
        let id = response.text().await.map_err(http_error)?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Http("the relay sent no session id".into()));
        }
        let url = format!("{base}/v1/poll/session/{id}");
        let (tx, frames) = tokio::sync::mpsc::channel(MAX_PENDING);
        let poller = tokio::spawn(poll_loop(http.clone(), url.clone(), tx));
        Ok(PollSession {
            http,
            url,
            sent: 0,
            frames,
            poller,
        })
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        let number = self.sent + 1;
        let mut wait = Duration::from_millis(10);
        for _ in 0..POLL_ATTEMPTS {
            let sent = self
                .http
                .post(&self.url)
                .header("If-Match", format!("\"{number}\""))
                .body(frame.clone())
                .send()
                .await;
            match sent.map(|r| r.status()) {
                Ok(reqwest::StatusCode::ACCEPTED) => {
                    self.sent = number;
                    return Ok(());
                }
                Ok(reqwest::StatusCode::NOT_FOUND) => {
                    return Err(ClientError::Closed { code: None })
                }
                // The session's inbound queue is full, or the request failed
                // on the way: the same numbered frame again (taken once).
                Ok(reqwest::StatusCode::TOO_MANY_REQUESTS) | Err(_) => {}
                Ok(status) => {
                    return Err(ClientError::Http(format!("sending a frame: HTTP {status}")))
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
        Err(ClientError::Http("the relay did not take a frame".into()))
    }

    async fn receive(&mut self) -> Result<Vec<u8>, ClientError> {
        match self.frames.recv().await {
            Some(r) => r,
            None => Err(ClientError::Closed { code: None }),
        }
    }

    async fn close(&self) {
        self.poller.abort();
        let _ = self.http.delete(&self.url).send().await;
    }
}

/// Polls `url` until the session ends, acknowledging what it received,
/// and hands each frame (then how it ended) to `tx`.
async fn poll_loop(
    http: reqwest::Client,
    url: String,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, ClientError>>,
) {
    let mut received = 0u64;
    let mut failures = 0;
    loop {
        let response = http
            .get(&url)
            .header("If-None-Match", format!("\"{received}\""))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures >= POLL_ATTEMPTS {
                    let _ = tx.send(Err(http_error(e))).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        failures = 0;
        match response.status() {
            reqwest::StatusCode::NO_CONTENT => continue,
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => {
                let _ = tx.send(Err(ClientError::Closed { code: None })).await;
                return;
            }
            status => {
                let _ = tx
                    .send(Err(ClientError::Http(format!("polling: HTTP {status}"))))
                    .await;
                return;
            }
        }
        let last = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.trim_matches('"').parse::<u64>().ok());
        let body = match (last, response.bytes().await) {
            (Some(_), Ok(body)) => body,
            (None, _) => {
                let _ = tx
                    .send(Err(ClientError::Http(
                        "a poll answer without its ETag".into(),
                    )))
                    .await;
                return;
            }
            (_, Err(_)) => continue,
        };
        let Some(records) = poll_records(&body) else {
            let _ = tx.send(Err(FrameError::Empty.into())).await;
            return;
        };
        let count = u64::try_from(records.len()).unwrap_or(u64::MAX);
        let first = last.unwrap_or(0).saturating_sub(count).saturating_add(1);
        for (n, record) in (first..).zip(records) {
            if n <= received {
                continue; // a resend of what we already have
            }
            received = n;
            let ended = record.is_err();
            let item = record.map_err(|code| ClientError::Closed { code: Some(code) });
            if tx.send(item).await.is_err() || ended {
                return;
            }
        }
    }
}

/// A poll answer's records: `len (u16) ‖ frame`, or `0 ‖ close code`.
/// `None` if the body does not parse.
fn poll_records(body: &[u8]) -> Option<Vec<Result<Vec<u8>, u16>>> {
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 {
            let (code, tail) = tail.split_at_checked(2)?;
            records.push(Err(u16::from_be_bytes([code[0], code[1]])));
            rest = tail;
        } else {
            let (frame, tail) = tail.split_at_checked(len)?;
            records.push(Ok(frame.to_vec()));
            rest = tail;
        }
    }
    Some(records)
}

fn http_error(e: reqwest::Error) -> ClientError {
    ClientError::Http(e.to_string())
}

/// One connection carrying frames, with the queue of our frames the relay
/// has not answered yet.
struct FrameLink {
    transport: Transport,
    awaiting: VecDeque<FrameType>,
    /// Messages and pushes that arrived while waiting for answers (a
    /// mailbox delivered on Identify, a push during a publication), in
    /// order, for the next [`FrameLink::next`].
    pending: VecDeque<Inbound>,
    /// The `changed` flag of the last Ack.
    last_changed: bool,
}

impl FrameLink {
    /// Connects to `base` as `role` (`companion` or `primary`) and
    /// identifies as `secret`'s client id: a WebSocket for `ws://` and
    /// `wss://`, an HTTP long-poll session for `http://` and `https://`.
    async fn connect(base: &str, role: &str, secret: &ClientSecret) -> Result<Self, ClientError> {
        let transport = if base.starts_with("http://") || base.starts_with("https://") {
            Transport::Poll(PollSession::open(base, role).await?)
        } else {
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_FRAME_LEN))
                .max_frame_size(Some(MAX_FRAME_LEN));
            let (socket, _) = tokio_tungstenite::connect_async_with_config(
                format!("{base}/v1/{role}"),
                Some(config),
                true,
            )
            .await?;
            Transport::WebSocket(Box::new(socket))
        };
        let mut link = FrameLink {
            transport,
            awaiting: VecDeque::new(),
            pending: VecDeque::new(),
            last_changed: false,
        };
        link.send(&Frame::Identify {
            secret: secret.clone(),
        })
        .await?;
        Ok(link)
    }

    async fn send(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
        self.send_encoded(frame.frame_type(), frame.encode()).await
    }

    /// Sends a frame already encoded (of `frame_type`).
    async fn send_encoded(
        &mut self,
        frame_type: FrameType,
        bytes: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.awaiting.push_back(frame_type);
        match &mut self.transport {
            Transport::WebSocket(socket) => socket.send(Message::binary(bytes)).await?,
            Transport::Poll(session) => session.send(bytes).await?,
        }
        Ok(())
    }

    /// The next frame's bytes from the transport.
    async fn next_bytes(&mut self) -> Result<Vec<u8>, ClientError> {
        let socket = match &mut self.transport {
            Transport::Poll(session) => return session.receive().await,
            Transport::WebSocket(socket) => socket,
        };
        loop {
            let message = match socket.next().await {
                None => return Err(ClientError::Closed { code: None }),
                Some(m) => m?,
            };
            match message {
                Message::Binary(b) => return Ok(b.to_vec()),
                Message::Close(frame) => {
                    return Err(ClientError::Closed {
                        code: frame.map(|f| u16::from(f.code)),
                    })
                }
                Message::Text(_) => return Err(ClientError::Unexpected(FrameType::Error)),
                _ => {}
            }
        }
    }

    /// Sends a core handshake message in a `Message` frame.
    async fn send_message(&mut self, message: &[u8]) -> Result<(), ClientError> {
        let header = MessageHeader::parse(message)?;
        self.send(&Frame::Message {
            header,
            bytes: message,
        })
        .await
    }

    /// The next frame. A relay error about one of our frames is returned
    /// as [`ClientError::Relay`].
    async fn next(&mut self) -> Result<Inbound, ClientError> {
        if let Some(held) = self.pending.pop_front() {
            return Ok(held);
        }
        self.receive().await
    }

    /// The next frame from the transport.
    async fn receive(&mut self) -> Result<Inbound, ClientError> {
        let bytes = self.next_bytes().await?;
        match Frame::decode(&bytes)? {
            Frame::Ack { changed, .. } => {
                self.awaiting.pop_front();
                self.last_changed = changed;
                Ok(Inbound::Answer)
            }
            Frame::Routed { .. } => {
                self.awaiting.pop_front();
                Ok(Inbound::Answer)
            }
            Frame::Error { code, text } => Err(ClientError::Relay {
                of: self.awaiting.pop_front(),
                code,
                text: text.to_string(),
            }),
            Frame::Message { header, .. } => Ok(Inbound::Message(header, bytes)),
            Frame::PublishList { .. } | Frame::PublishHeartbeat { .. } | Frame::Logout { .. } => {
                Ok(Inbound::Push(bytes))
            }
            other => Err(ClientError::Unexpected(other.frame_type())),
        }
    }

    /// Waits until the relay answered every frame sent so far; messages
    /// and pushes that arrive meanwhile are kept for [`FrameLink::next`]
    /// (at most one outbound queue's worth: the relay's bound).
    async fn settle(&mut self) -> Result<(), ClientError> {
        while !self.awaiting.is_empty() {
            match self.receive().await? {
                Inbound::Answer => {}
                held => {
                    if self.pending.len() >= MAX_PENDING {
                        return Err(ClientError::Unexpected(FrameType::Message));
                    }
                    self.pending.push_back(held);
                }
            }
        }
        Ok(())
    }

    async fn close(self) {
        match self.transport {
            Transport::WebSocket(mut socket) => {
                let _ = WebSocketStream::close(&mut socket, None).await;
            }
            Transport::Poll(session) => session.close().await,
        }
    }
}

fn until(deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    deadline
        .map(|d| Duration::from_millis(d.as_unix_millis().saturating_sub(now.as_unix_millis())))
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT)
}

/// What a linked companion learned from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompanionUpdate {
    /// A newer device list was applied to the session.
    DeviceList(DeviceListChange),
    /// A heartbeat extended (or confirmed) the session's lease.
    Heartbeat(SessionStatus),
    /// A pushed list or heartbeat the session refused (stale, forged,
    /// fork): the session is unchanged but for its fork mark. For
    /// `CertificateError::MissingVersions` (a session that saw a fork and
    /// missed versions), call [`CompanionClient::catch_up`]: the relay sends
    /// the versions after the held one.
    Ignored(SessionError),
    /// The relay says this device was logged out. The session's own status
    /// (from signed facts and `now`) is given beside it: the relay's word
    /// alone logs nobody out.
    Logout {
        /// The device index the relay named.
        index: DeviceIndex,
        /// The relay's reason.
        reason: LogoutReason,
        /// The session's own status now.
        status: SessionStatus,
    },
}

enum Side {
    Pairing(Box<Companion>),
    Linked(Box<LinkedSession>),
    /// Only while the companion is moved into its session.
    Moving,
}

/// A companion talking to the relay (`/v1/companion`).
pub struct CompanionClient {
    link: FrameLink,
    clock: Arc<dyn Clock>,
    side: Side,
    secret: ClientSecret,
}

impl std::fmt::Debug for CompanionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompanionClient").finish_non_exhaustive()
    }
}

impl CompanionClient {
    /// Connects to `base` (`ws://host:port`) and registers the token of the
    /// offer `companion` shows; returns once the relay acknowledged it, so
    /// the QR code can be shown.
    pub async fn connect(
        base: &str,
        companion: Companion,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClientError> {
        let secret = ClientSecret::generate(&mut rand_core::OsRng);
        Self::connect_as(base, companion, secret, clock).await
    }

    /// [`CompanionClient::connect`] as the client of `secret` (a pairing
    /// restored from saved state goes on with the same client id, so its
    /// registered token still reaches it; a token the relay already holds
    /// for it is not an error).
    pub async fn connect_as(
        base: &str,
        companion: Companion,
        secret: ClientSecret,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClientError> {
        let link = FrameLink::connect(base, "companion", &secret).await?;
        let mut client = CompanionClient {
            link,
            clock,
            side: Side::Pairing(Box::new(companion)),
            secret,
        };
        client.link.settle().await?;
        client.register_again().await?;
        Ok(client)
    }

    /// Connects a linked session restored from saved state as the client
    /// of `secret`, and subscribes. A logged-out session does not connect
    /// ([`ClientError::LoggedOut`]).
    pub async fn resume(
        base: &str,
        session: LinkedSession,
        secret: ClientSecret,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClientError> {
        let mut session = session;
        if let SessionStatus::LoggedOut { reason } = session.poll(clock.now()) {
            return Err(ClientError::LoggedOut { reason });
        }
        let link = FrameLink::connect(base, "companion", &secret).await?;
        let mut client = CompanionClient {
            link,
            clock,
            side: Side::Linked(Box::new(session)),
            secret,
        };
        client.link.settle().await?;
        client.subscribe().await?;
        Ok(client)
    }

    /// The secret this client identifies with (save it with the core's
    /// state to resume as the same client).
    pub fn secret(&self) -> &ClientSecret {
        &self.secret
    }

    /// Registers the offer on screen; a token the relay already holds (for
    /// this client, registered before a reconnect) is fine.
    async fn register_again(&mut self) -> Result<(), ClientError> {
        self.register_offer().await?;
        match self.link.settle().await {
            Err(ClientError::Relay {
                of: Some(FrameType::Register),
                code,
                ..
            }) if codes::code_kind(code) == Some(ErrorKind::Conflict) => Ok(()),
            other => other,
        }
    }

    /// Subscribes again, naming the held list version: the relay sends every
    /// newer version it keeps, in order (after
    /// `CertificateError::MissingVersions`).
    pub async fn catch_up(&mut self) -> Result<(), ClientError> {
        self.subscribe().await
    }

    /// Carries the session's own signed list to the relay (so the relay
    /// knows this device's key, whoever publishes first), then subscribes
    /// with the device's proof for this client id. This client signs with
    /// a key the session holds (a key-store key is refused as
    /// `SignatureNeeded`).
    async fn subscribe(&mut self) -> Result<(), ClientError> {
        let Side::Linked(session) = &self.side else {
            return Ok(());
        };
        let list = session.device_list().to_bytes();
        let proof = SubscriptionProof::sign(session, self.secret.client_id())
            .ok_or(HandshakeError::SignatureNeeded)?;
        // The versions after the held one come too, so a session that
        // missed some (and must chain them after a fork) can apply them.
        let subscribe = Frame::Subscribe {
            account: session.account(),
            index: session.index(),
            proof,
            after: Some(session.device_list().version()),
        };
        self.link.send(&Frame::PublishList { bytes: &list }).await?;
        match self.link.settle().await {
            // An older list than the relay's, or one it refuses: the
            // subscription below says whether this device is linked.
            Ok(()) | Err(ClientError::Relay { .. }) => {}
            Err(e) => return Err(e),
        }
        self.link.send(&subscribe).await?;
        self.link.settle().await
    }

    async fn register_offer(&mut self) -> Result<(), ClientError> {
        let Side::Pairing(companion) = &self.side else {
            return Ok(());
        };
        let (Some(offer), Some(expires_at)) = (companion.offer(), companion.next_deadline()) else {
            return Ok(());
        };
        let frame = Frame::Register {
            token_id: offer.token_id(),
            expires_at,
        };
        self.link.send(&frame).await
    }

    /// The QR text of the offer on screen, while pairing.
    pub fn offer_text(&self) -> Option<String> {
        match &self.side {
            Side::Pairing(c) => c.offer().map(|o| o.to_text()),
            Side::Linked(_) | Side::Moving => None,
        }
    }

    /// The session, once linked.
    pub fn session(&self) -> Option<&LinkedSession> {
        match &self.side {
            Side::Linked(s) => Some(s),
            Side::Pairing(_) | Side::Moving => None,
        }
    }

    /// Runs the pairing to its end: rotates (and registers) the offer on
    /// time, answers the Hello, shows a verified Grant to `consent` (this
    /// device's user: which account it would join, and the check code the
    /// phone must show), confirms only if it agrees, then subscribes to the
    /// account. A Hello the core refuses is released at the relay and the
    /// wait goes on. Ends with the session, the core's refusal
    /// ([`ClientError::Handshake`] with [`HandshakeError::Refused`]), or
    /// [`ClientError::PairingFailed`] with [`FailureReason::Declined`] when
    /// `consent` says no.
    pub async fn link<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        mut consent: impl FnMut(&JoinPrompt) -> bool,
    ) -> Result<&LinkedSession, ClientError> {
        while let Side::Pairing(companion) = &mut self.side {
            let now = self.clock.now();
            if let Some(event) = companion.poll(rng, now) {
                match event {
                    devicelink::handshake::CompanionEvent::OfferRotated { .. } => {
                        self.register_offer().await?;
                        continue;
                    }
                    devicelink::handshake::CompanionEvent::Failed(reason) => {
                        return Err(ClientError::PairingFailed(reason))
                    }
                }
            }
            let wait = until(companion.next_deadline(), now);
            let inbound = match tokio::time::timeout(wait, self.link.next()).await {
                Err(_) => continue,
                Ok(Err(ClientError::Relay { of, code, text })) => {
                    if of == Some(FrameType::Release) {
                        // The reservation had already lapsed or moved on.
                        continue;
                    }
                    return Err(ClientError::Relay { of, code, text });
                }
                Ok(other) => other?,
            };
            let Inbound::Message(header, frame) = inbound else {
                // Answers, and pushes before the link (none are expected).
                continue;
            };
            let message = frame.get(1..).unwrap_or_default();
            let now = self.clock.now();
            match header.kind {
                MessageKind::Hello => match companion.receive_hello(message, rng, now) {
                    Ok(request) => self.link.send_message(&request).await?,
                    Err(e) => {
                        tracing::info!(error = %e, "Hello refused");
                        if matches!(companion.state(), CompanionState::AwaitingScan { .. }) {
                            self.link
                                .send(&Frame::Release {
                                    token_id: header.token_id,
                                    hello: HelloDigest::of(message),
                                })
                                .await?;
                        }
                    }
                },
                MessageKind::Grant | MessageKind::Refusal => {
                    match companion.receive_grant(message, now) {
                        Ok(prompt) => {
                            if !consent(&prompt) {
                                companion.decline(self.clock.now())?;
                                return Err(ClientError::PairingFailed(FailureReason::Declined));
                            }
                            let confirm = companion.consent(self.clock.now())?;
                            self.link.send_message(&confirm).await?;
                            self.become_linked().await?;
                        }
                        Err(e @ HandshakeError::Refused(_)) => return Err(e.into()),
                        Err(e) if e.is_terminal() => return Err(e.into()),
                        Err(e) => tracing::info!(error = %e, "Grant refused"),
                    }
                }
                _ => tracing::info!(kind = ?header.kind, "unexpected message kind"),
            }
        }
        self.session()
            .ok_or(ClientError::Unexpected(FrameType::Message))
    }

    async fn become_linked(&mut self) -> Result<(), ClientError> {
        let side = std::mem::replace(&mut self.side, Side::Moving);
        let Side::Pairing(companion) = side else {
            self.side = side;
            return Ok(());
        };
        match companion.into_session() {
            Ok(session) => {
                self.side = Side::Linked(Box::new(session));
                self.subscribe().await
            }
            Err(companion) => {
                self.side = Side::Pairing(companion);
                Ok(())
            }
        }
    }

    /// Connects again to `base` (after the relay closed or restarted, or
    /// on another relay node), with `backoff`, as the same client. While
    /// pairing, the offer's token is registered again if the relay lost it
    /// and the wait for the Hello goes on ([`CompanionClient::link`]); once
    /// linked, it subscribes again and the relay sends the newest list it
    /// holds, which [`CompanionClient::next_update`] applies. A logged-out
    /// session does not reconnect ([`ClientError::LoggedOut`]).
    pub async fn reconnect(&mut self, base: &str, backoff: &Backoff) -> Result<(), ClientError> {
        if let Side::Linked(session) = &mut self.side {
            if let SessionStatus::LoggedOut { reason } = session.poll(self.clock.now()) {
                return Err(ClientError::LoggedOut { reason });
            }
        }
        let link = backoff.connect(base, "companion", &self.secret).await?;
        let old = std::mem::replace(&mut self.link, link);
        old.close().await;
        self.link.settle().await?;
        match self.side {
            Side::Pairing(_) => self.register_again().await,
            Side::Linked(_) => self.subscribe().await,
            Side::Moving => Ok(()),
        }
    }

    /// The next update pushed for the linked session (waits for it).
    pub async fn next_update(&mut self) -> Result<CompanionUpdate, ClientError> {
        loop {
            let Inbound::Push(frame) = self.link.next().await? else {
                continue;
            };
            let Side::Linked(session) = &mut self.side else {
                continue;
            };
            let now = self.clock.now();
            return Ok(match Frame::decode(&frame)? {
                Frame::PublishList { bytes } => match SignedDeviceList::from_bytes(bytes)
                    .map_err(SessionError::from)
                    .and_then(|list| session.accept_device_list(&list, now))
                {
                    Ok(change) => CompanionUpdate::DeviceList(change),
                    Err(e) => CompanionUpdate::Ignored(e),
                },
                Frame::PublishHeartbeat { bytes } => match PrimaryHeartbeat::from_bytes(bytes)
                    .map_err(SessionError::from)
                    .and_then(|hb| session.accept_heartbeat(&hb, now))
                {
                    Ok(status) => CompanionUpdate::Heartbeat(status),
                    Err(e) => CompanionUpdate::Ignored(e),
                },
                Frame::Logout { index, reason } => CompanionUpdate::Logout {
                    index,
                    reason,
                    status: session.poll(now),
                },
                other => return Err(ClientError::Unexpected(other.frame_type())),
            });
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.link.close().await;
    }
}

/// How a primary's link attempt ended.
#[derive(Debug)]
pub enum LinkOutcome {
    /// The companion confirmed; the list naming it was published.
    Linked(Box<ConfirmedLink>),
    /// The link was refused (the core's device limit, or the user); the
    /// authenticated Refusal was sent to the companion.
    Refused(RefusalReason),
}

/// A primary talking to the relay (`/v1/primary`).
pub struct PrimaryClient {
    link: FrameLink,
    clock: Arc<dyn Clock>,
    secret: ClientSecret,
    /// Accounts proven (and made known to the relay) on this connection.
    proven: std::collections::HashSet<AccountId>,
}

impl std::fmt::Debug for PrimaryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryClient").finish_non_exhaustive()
    }
}

impl PrimaryClient {
    /// Connects to `base` (`ws://host:port`).
    pub async fn connect(base: &str, clock: Arc<dyn Clock>) -> Result<Self, ClientError> {
        let secret = ClientSecret::generate(&mut rand_core::OsRng);
        let mut link = FrameLink::connect(base, "primary", &secret).await?;
        link.settle().await?;
        Ok(PrimaryClient {
            link,
            clock,
            secret,
            proven: Default::default(),
        })
    }

    /// Connects again to `base` with `backoff`, as the same client (a
    /// Request or Confirm routed to it meanwhile waits in its mailbox for a
    /// while; a link the old connection was in the middle of is not
    /// resumed by this call).
    pub async fn reconnect(&mut self, base: &str, backoff: &Backoff) -> Result<(), ClientError> {
        let link = backoff.connect(base, "primary", &self.secret).await?;
        let old = std::mem::replace(&mut self.link, link);
        old.close().await;
        // A proof holds for the connection it was sent on.
        self.proven.clear();
        self.link.settle().await
    }

    /// Proves `account`'s key to the relay for this client id (once per
    /// connection): a relay keeps an account it does not know only for a
    /// client that proved its key (and counts that client's code joins
    /// against it). [`PrimaryClient::link`] does it by itself.
    pub async fn prove_account(&mut self, account: &Account) -> Result<(), ClientError> {
        self.send_proof(account).await?;
        self.link.settle().await
    }

    /// Sends the account's proof unless this connection did already (its
    /// answer is taken with the next frames').
    async fn send_proof(&mut self, account: &Account) -> Result<(), ClientError> {
        let id = account.account_id();
        if self.proven.contains(&id) {
            return Ok(());
        }
        let proof = AccountProof::sign(account.key(), self.secret.client_id());
        self.link
            .send(&Frame::ProveAccount { account: id, proof })
            .await?;
        self.proven.insert(id);
        Ok(())
    }

    /// Links the companion showing `offer_text`: scans it (the account must
    /// have an open link intent), sends the Hello, and when the Request
    /// comes asks `approve` (what the user sees: label, check code); grants
    /// or refuses, verifies the Confirm and publishes the new list.
    pub async fn link<R: RngCore + CryptoRng>(
        &mut self,
        account: &mut Account,
        offer_text: &str,
        rng: &mut R,
        approve: impl FnOnce(&LinkRequest) -> bool,
    ) -> Result<LinkOutcome, ClientError> {
        self.send_proof(account).await?;
        let (mut handshake, hello) = account.scan(offer_text, rng, self.clock.now())?;
        self.link.send_message(&hello).await?;
        let request = match self.next_message(MessageKind::Request).await {
            Err(ClientError::Relay {
                of: Some(FrameType::Message),
                code,
                ..
            }) if codes::code_kind(code) == Some(ErrorKind::Conflict) => {
                return Err(ClientError::OfferTaken)
            }
            other => other?,
        };
        let now = self.clock.now();
        let asking = match account.receive_request(&mut handshake, &request, rng, now) {
            Ok(asking) => asking,
            Err(RegistryError::Refused { reason, refusal }) => {
                self.link.send_message(&refusal).await?;
                self.link.settle().await?;
                return Ok(LinkOutcome::Refused(reason));
            }
            Err(e) => return Err(e.into()),
        };
        if !approve(&asking) {
            let reason = RefusalReason::Declined;
            let refusal = account.refuse(&mut handshake, reason, rng, self.clock.now())?;
            self.link.send_message(&refusal).await?;
            self.link.settle().await?;
            return Ok(LinkOutcome::Refused(reason));
        }
        let grant = account.grant(&mut handshake, rng, self.clock.now())?;
        // The list the grant made goes to the relay before the Grant, so
        // the relay keeps the account (this connection proved its key)
        // before the companion carries the list and subscribes.
        let list = account.device_list().to_bytes();
        self.link.send(&Frame::PublishList { bytes: &list }).await?;
        self.link.send_message(&grant).await?;
        let confirm = self.next_message(MessageKind::Confirm).await?;
        let linked = account.confirm(&mut handshake, &confirm, self.clock.now())?;
        self.publish_list(account.device_list()).await?;
        Ok(LinkOutcome::Linked(Box::new(linked)))
    }

    /// Sends a raw handshake message (tests: a forged or corrupted one) and
    /// waits for the relay's answer.
    pub async fn send_raw_message(&mut self, message: &[u8]) -> Result<(), ClientError> {
        self.link.send_message(message).await?;
        self.link.settle().await
    }

    async fn next_message(&mut self, kind: MessageKind) -> Result<Vec<u8>, ClientError> {
        loop {
            match self.link.next().await? {
                Inbound::Message(header, frame) if header.kind == kind => {
                    return Ok(frame.get(1..).unwrap_or_default().to_vec())
                }
                Inbound::Message(header, _) => {
                    tracing::info!(kind = ?header.kind, "unexpected message kind")
                }
                Inbound::Push(_) | Inbound::Answer => {}
            }
        }
    }

    /// Publishes a device list; returns whether the relay applied it (an
    /// old or repeated list is acknowledged as unchanged: `false`).
    pub async fn publish_list(&mut self, list: &SignedDeviceList) -> Result<bool, ClientError> {
        let bytes = list.to_bytes();
        self.link
            .send(&Frame::PublishList { bytes: &bytes })
            .await?;
        self.link.settle().await?;
        Ok(self.link.last_changed)
    }

    /// Publishes a heartbeat.
    pub async fn publish_heartbeat(
        &mut self,
        heartbeat: &PrimaryHeartbeat,
    ) -> Result<(), ClientError> {
        let bytes = heartbeat.to_bytes();
        self.link
            .send(&Frame::PublishHeartbeat { bytes: &bytes })
            .await?;
        self.link.settle().await
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.link.close().await;
    }
}

/// What a [`HostLink`] hands its host: a pairing message for the role's
/// `receive`, or a signed fact for a linked device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostInbound {
    /// A pairing message (for `Phone::receive` or `Device::receive`).
    Message(Vec<u8>),
    /// A signed device list (for `Device::receive_list`).
    List(Vec<u8>),
    /// A signed heartbeat (for `Device::receive_heartbeat`).
    Heartbeat(Vec<u8>),
    /// The relay says a device was logged out (the session's own facts
    /// decide; a notice at most).
    Logout {
        /// The index the relay named.
        index: DeviceIndex,
        /// The relay's reason.
        reason: LogoutReason,
    },
}

/// What the relay may refuse in a [`Carry`] step without it being an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tolerate {
    Nothing,
    /// A conflict (a token the relay holds for this client already).
    Conflict,
    /// Any refusal (a list older than the relay's).
    AnyRefusal,
    /// A conflict means another device took the offer
    /// ([`ClientError::OfferTaken`]).
    TakenOffer,
}

/// The frames that carry out one output, owned (see
/// [`HostLink::plan_phone`]).
#[derive(Debug, Default)]
pub struct Carry {
    steps: Vec<(FrameType, Vec<u8>, Tolerate)>,
}

impl Carry {
    fn push(&mut self, frame: &Frame<'_>, tolerate: Tolerate) {
        self.steps
            .push((frame.frame_type(), frame.encode(), tolerate));
    }

    fn message(&mut self, message: &[u8]) -> Result<(), ClientError> {
        let header = MessageHeader::parse(message)?;
        let frame = Frame::Message {
            header,
            bytes: message,
        };
        self.push(&frame, Tolerate::TakenOffer);
        Ok(())
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// One connection to the relay for a role of the core's host API
/// ([`devicelink::host::Phone`] or [`devicelink::host::Device`]): it carries
/// the role's outputs as frames and hands back what arrives. The role
/// decides everything; this only speaks the relay's frames.
pub struct HostLink {
    link: FrameLink,
    secret: ClientSecret,
    /// Accounts proven on this connection.
    proven: std::collections::HashSet<AccountId>,
}

impl std::fmt::Debug for HostLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLink").finish_non_exhaustive()
    }
}

impl HostLink {
    /// Connects to `base` (`ws://host:port`, or `http://` for long-poll) as
    /// a phone (`primary`) or a companion, identified as `secret`'s client.
    pub async fn connect(
        base: &str,
        phone: bool,
        secret: ClientSecret,
    ) -> Result<Self, ClientError> {
        let role = if phone { "primary" } else { "companion" };
        let mut link = FrameLink::connect(base, role, &secret).await?;
        link.settle().await?;
        Ok(HostLink {
            link,
            secret,
            proven: Default::default(),
        })
    }

    /// This connection's client id secret (keep it to reconnect as the
    /// same client).
    pub fn secret(&self) -> &ClientSecret {
        &self.secret
    }

    /// Carries out one of the phone's outputs and waits for the relay's
    /// answer ([`HostLink::plan_phone`], then [`HostLink::carry`]).
    pub async fn carry_phone(
        &mut self,
        phone: &devicelink::host::Phone,
        output: &devicelink::host::Output,
    ) -> Result<(), ClientError> {
        let plan = self.plan_phone(phone, output)?;
        self.carry(plan).await
    }

    /// Carries out one of a device's outputs and waits for the relay's
    /// answer ([`HostLink::plan_device`], then [`HostLink::carry`]).
    pub async fn carry_device(
        &mut self,
        device: &devicelink::host::Device,
        output: &devicelink::host::Output,
    ) -> Result<(), ClientError> {
        let plan = self.plan_device(device, output)?;
        self.carry(plan).await
    }

    /// The frames that carry out one of the phone's outputs (owned, so a
    /// host can let go of the phone before awaiting). `Save` is the host's
    /// own (no frame). The first list on a connection goes with the
    /// account's proof.
    pub fn plan_phone(
        &mut self,
        phone: &devicelink::host::Phone,
        output: &devicelink::host::Output,
    ) -> Result<Carry, ClientError> {
        use devicelink::host::Output;
        let mut plan = Carry::default();
        match output {
            Output::Save | Output::Register { .. } | Output::Subscribe { .. } => {}
            Output::Send { message, .. } => plan.message(message)?,
            Output::PublishList { bytes, .. } => {
                let account = phone.account();
                if self.proven.insert(account.account_id()) {
                    let proof = AccountProof::sign(account.key(), self.secret.client_id());
                    let frame = Frame::ProveAccount {
                        account: account.account_id(),
                        proof,
                    };
                    plan.push(&frame, Tolerate::Nothing);
                }
                plan.push(&Frame::PublishList { bytes }, Tolerate::Nothing);
            }
            Output::PublishHeartbeat { bytes } => {
                plan.push(&Frame::PublishHeartbeat { bytes }, Tolerate::Nothing);
            }
        }
        Ok(plan)
    }

    /// The frames that carry out one of a device's outputs. `Save` is the
    /// host's own. A token the relay already holds for this client (after
    /// a reconnect) is not an error; nor is a list older than the relay's
    /// before a Subscribe. A device whose key the platform's key store
    /// holds cannot subscribe here (`SignatureNeeded`).
    pub fn plan_device(
        &mut self,
        device: &devicelink::host::Device,
        output: &devicelink::host::Output,
    ) -> Result<Carry, ClientError> {
        use devicelink::host::Output;
        let mut plan = Carry::default();
        match output {
            Output::Save | Output::PublishHeartbeat { .. } => {}
            Output::Send { message, .. } => {
                if devicelink::code::is_code_message(message) {
                    // Code messages travel on the code endpoint.
                    return Err(ClientError::Unexpected(FrameType::Message));
                }
                plan.message(message)?;
            }
            Output::Register { token, expires_at } => {
                let frame = Frame::Register {
                    token_id: *token,
                    expires_at: *expires_at,
                };
                plan.push(&frame, Tolerate::Conflict);
            }
            Output::PublishList { bytes, .. } => {
                plan.push(&Frame::PublishList { bytes }, Tolerate::Nothing);
            }
            Output::Subscribe { after } => {
                if let Some(session) = device.session() {
                    let proof = SubscriptionProof::sign(session, self.secret.client_id())
                        .ok_or(HandshakeError::SignatureNeeded)?;
                    let list = session.device_list().to_bytes();
                    plan.push(&Frame::PublishList { bytes: &list }, Tolerate::AnyRefusal);
                    let frame = Frame::Subscribe {
                        account: session.account(),
                        index: session.index(),
                        proof,
                        after: Some(*after),
                    };
                    plan.push(&frame, Tolerate::Nothing);
                }
            }
        }
        Ok(plan)
    }

    /// Sends a plan's frames, each waiting for the relay's answer.
    pub async fn carry(&mut self, plan: Carry) -> Result<(), ClientError> {
        for (frame_type, bytes, tolerate) in plan.steps {
            self.link.send_encoded(frame_type, bytes).await?;
            match (self.link.settle().await, tolerate) {
                (Ok(()), _) => {}
                (Err(ClientError::Relay { .. }), Tolerate::AnyRefusal) => {}
                (Err(ClientError::Relay { code, .. }), Tolerate::Conflict)
                    if codes::code_kind(code) == Some(ErrorKind::Conflict) => {}
                (Err(ClientError::Relay { code, .. }), Tolerate::TakenOffer)
                    if codes::code_kind(code) == Some(ErrorKind::Conflict) =>
                {
                    return Err(ClientError::OfferTaken)
                }
                (Err(e), _) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message or push (waits for it).
    pub async fn next(&mut self) -> Result<HostInbound, ClientError> {
        loop {
            match self.link.next().await? {
                Inbound::Answer => {}
                Inbound::Message(_, frame) => {
                    return Ok(HostInbound::Message(
                        frame.get(1..).unwrap_or_default().to_vec(),
                    ))
                }
                Inbound::Push(frame) => {
                    return Ok(match Frame::decode(&frame)? {
                        Frame::PublishList { bytes } => HostInbound::List(bytes.to_vec()),
                        Frame::PublishHeartbeat { bytes } => HostInbound::Heartbeat(bytes.to_vec()),
                        Frame::Logout { index, reason } => HostInbound::Logout { index, reason },
                        other => return Err(ClientError::Unexpected(other.frame_type())),
                    })
                }
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.link.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn poll_bodies_parse_totally_and_round_trip(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            close in proptest::option::of(any::<u16>()),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = poll_records(&noise);
            let mut body = Vec::new();
            for f in &frames {
                body.extend_from_slice(&(f.len() as u16).to_be_bytes());
                body.extend_from_slice(f);
            }
            if let Some(code) = close {
                body.extend_from_slice(&[0, 0]);
                body.extend_from_slice(&code.to_be_bytes());
            }
            let mut want: Vec<Result<Vec<u8>, u16>> = frames.into_iter().map(Ok).collect();
            want.extend(close.map(Err));
            prop_assert_eq!(poll_records(&body), Some(want));
            if !body.is_empty() {
                prop_assert_eq!(poll_records(&body[..body.len() - 1]), None);
            }
        }
    }

    #[test]
    fn backoff_is_capped_and_jittered_within_half() {
        let b = Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            attempts: 5,
        };
        for n in 0..40 {
            let d = b.delay(n);
            let top = Duration::from_millis(100)
                .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
                .min(b.cap);
            assert!(d >= top / 2 && d <= top, "{n}: {d:?} vs {top:?}");
        }
    }
}
