//! The HTTP long-poll fallback, for clients that cannot keep a WebSocket
//! open: a session is a connection task (the same one a WebSocket gets)
//! whose wire is a pair of bounded queues fed by HTTP requests.
//!
//! - `POST /v1/poll/companion` or `/v1/poll/primary`: opens a session;
//!   `201 Created`, body: the session id (32 hex characters, a secret).
//! - `POST /v1/poll/session/{id}`, body: one frame: `202 Accepted` (its
//!   answer comes through the next poll); `404` for an unknown or ended
//!   session, `413` over the frame limit, `429` while the session's inbound
//!   queue is full. With `If-Match: "<k>"` the frame is the client's k-th
//!   (from 1): a k already taken is a retry, answered `202` and dropped; a k
//!   past the next one is `412`. So a client may resend a POST whose answer
//!   it lost, and each frame is taken exactly once.
//! - `GET /v1/poll/session/{id}`: waits up to [`Limits::poll_wait`] for
//!   frames, then returns all that are ready: `200`, body: records
//!   `len (u16) ‖ frame`; a record of length 0 is followed by a u16 close
//!   code (the session ended, as a WebSocket would have closed); header
//!   `ETag: "<n>"`, the sequence number of the last record (the relay's
//!   frames are numbered from 1). `If-None-Match: "<n>"` acknowledges every
//!   record up to n; the relay keeps the others and sends them again, so a
//!   response lost on the way (a dropped request) loses nothing. Without
//!   the header, what was sent before counts as received. `204` when
//!   nothing came; `404` once the session is gone (a session's last frames
//!   wait for a poll up to twice [`Limits::poll_wait`]); `409` while
//!   another poll of the same session waits (one waiting poll per session).
//!   Each poll counts as activity for the idle timeout.
//! - `DELETE /v1/poll/session/{id}`: closes the session.
//!
//! [`Limits::poll_wait`]: super::limits::Limits::poll_wait

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::Message;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rand_core::{OsRng, RngCore};
use tokio::sync::mpsc;

use super::address::{source_key, ClientIp};
use super::connection::{self, Role, Wire};
use super::hub::Hub;
use crate::store::Store;

/// What the long-poll routes share: the hub and the open sessions.
pub(crate) struct Polls<S: Store> {
    hub: Arc<Hub<S>>,
    sessions: Arc<PollSessions>,
}

/// The long-poll routes, and the sessions they keep (for the sweeper).
pub(crate) fn routes<S: Store + 'static>(hub: Arc<Hub<S>>) -> (Router, Arc<PollSessions>) {
    let sessions = Arc::new(PollSessions::default());
    let max = hub.limits.max_frame_len;
    let state = Arc::new(Polls {
        hub,
        sessions: sessions.clone(),
    });
    let router = Router::new()
        .route("/v1/poll/companion", post(open_companion::<S>))
        .route("/v1/poll/primary", post(open_primary::<S>))
        .route(
            "/v1/poll/session/{id}",
            axum::routing::get(poll::<S>)
                .post(send::<S>)
                .delete(close::<S>)
                .layer(DefaultBodyLimit::max(max)),
        )
        .with_state(state);
    (router, sessions)
}

/// Messages a session queues from HTTP requests before refusing with 429.
const INBOUND_QUEUE: usize = 16;

/// A session's wire: what HTTP requests put in, what polls take out.
pub(crate) struct PollWire {
    inbound: mpsc::Receiver<Message>,
    outbound: mpsc::Sender<Message>,
}

impl Wire for PollWire {
    async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        self.inbound.recv().await.map(Ok)
    }

    async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        if matches!(message, Message::Ping(_)) {
            // A poll is the liveness signal; no pings over HTTP.
            return Ok(());
        }
        self.outbound
            .send(message)
            .await
            .map_err(|_| axum::Error::new("the poll session ended"))
    }

    fn closing_handshake(&self) -> bool {
        false
    }
}

/// What polls take out: the task's queue, and the records sent but not
/// yet acknowledged (at most one outbound queue's worth).
#[derive(Debug)]
struct Outbox {
    rx: mpsc::Receiver<Message>,
    unacked: VecDeque<(u64, Message)>,
    /// The sequence number of the last record taken from `rx`.
    last: u64,
    /// Most records kept unacknowledged.
    limit: usize,
}

/// The HTTP side of a session.
#[derive(Debug, Clone)]
pub(crate) struct PollSession {
    inbound: mpsc::Sender<Message>,
    /// The number the client's next numbered frame must carry.
    next_in: Arc<Mutex<u64>>,
    outbound: Arc<tokio::sync::Mutex<Outbox>>,
    /// When the connection task ended (its last frames may still wait for
    /// a poll).
    ended: Arc<OnceLock<Instant>>,
}

/// Open sessions by id.
#[derive(Debug, Default)]
pub(crate) struct PollSessions(Mutex<HashMap<String, PollSession>>);

impl PollSessions {
    fn get(&self, id: &str) -> Option<PollSession> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn insert(&self, id: String, session: PollSession) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, session);
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// Forgets sessions that ended more than `keep` ago (their client
    /// never came back for the last frames).
    pub(crate) fn sweep(&self, keep: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| s.ended.get().is_none_or(|at| at.elapsed() < keep));
    }
}

fn session_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    OsRng.try_fill_bytes(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn open<S: Store + 'static>(polls: &Polls<S>, ip: ClientIp, role: Role) -> Response {
    let hub = polls.hub.clone();
    let source = ip.0.map(|ip| source_key(ip, hub.limits.ipv6_prefix));
    let permit = match hub.admit(source) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    let Some(id) = session_id() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n").into_response();
    };
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(hub.limits.outbound_queue.max(1));
    let ended = Arc::new(OnceLock::new());
    let limit = hub.limits.outbound_queue.max(1);
    polls.sessions.insert(
        id.clone(),
        PollSession {
            inbound: in_tx,
            next_in: Arc::new(Mutex::new(1)),
            outbound: Arc::new(tokio::sync::Mutex::new(Outbox {
                rx: out_rx,
                unacked: VecDeque::new(),
                last: 0,
                limit,
            })),
            ended: ended.clone(),
        },
    );
    let wire = PollWire {
        inbound: in_rx,
        outbound: out_tx,
    };
    tokio::spawn(async move {
        connection::run(hub, wire, role, permit).await;
        // The session stays until a poll has taken its last frames (or the
        // sweeper forgets it).
        let _ = ended.set(Instant::now());
    });
    (StatusCode::CREATED, id).into_response()
}

async fn open_companion<S: Store + 'static>(
    State(polls): State<Arc<Polls<S>>>,
    ip: ClientIp,
) -> Response {
    open(&polls, ip, Role::Companion)
}

async fn open_primary<S: Store + 'static>(
    State(polls): State<Arc<Polls<S>>>,
    ip: ClientIp,
) -> Response {
    open(&polls, ip, Role::Primary)
}

/// The number in an `If-Match` / `If-None-Match` header: `"<n>"` (or bare).
fn sequence(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<u64>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|t| t.parse::<u64>().ok())
            .map(Some)
            .ok_or(()),
    }
}

async fn send<S: Store + 'static>(
    State(polls): State<Arc<Polls<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(session) = polls.sessions.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(numbered) = sequence(&headers, header::IF_MATCH) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // The expected number is held while the frame is queued, so two
    // requests carrying the same number cannot both be taken.
    let mut next_in = session.next_in.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = numbered {
        if k < *next_in {
            return StatusCode::ACCEPTED.into_response();
        }
        if k > *next_in {
            return StatusCode::PRECONDITION_FAILED.into_response();
        }
    }
    match session.inbound.try_send(Message::Binary(body)) {
        Ok(()) => {
            *next_in += 1;
            StatusCode::ACCEPTED.into_response()
        }
        Err(mpsc::error::TrySendError::Full(_)) => StatusCode::TOO_MANY_REQUESTS.into_response(),
        Err(mpsc::error::TrySendError::Closed(_)) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn close<S: Store + 'static>(
    State(polls): State<Arc<Polls<S>>>,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = polls.sessions.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let _ = session.inbound.send(Message::Close(None)).await;
    // The client is done: nothing is kept for a poll that will not come
    // (kept, each ended session held ~12 KB for twice `poll_wait`: 190 MB
    // after 16,000 sessions at 2,000 exchanges a second).
    polls.sessions.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn poll<S: Store + 'static>(
    State(polls): State<Arc<Polls<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let hub = &polls.hub;
    let Some(session) = polls.sessions.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(acked) = sequence(&headers, header::IF_NONE_MATCH) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // One waiting poll per session: a second one would hold a connection
    // (and the first one's records) for nothing.
    let Ok(mut out) = session.outbound.try_lock() else {
        return (
            StatusCode::CONFLICT,
            "another poll of this session is waiting\n",
        )
            .into_response();
    };
    // The poll itself is the client's sign of life.
    let _ = session.inbound.try_send(Message::Pong(Bytes::new()));
    let acked = acked.unwrap_or(out.last);
    while out.unacked.front().is_some_and(|(n, _)| *n <= acked) {
        out.unacked.pop_front();
    }
    if out.unacked.is_empty() {
        let first = match tokio::time::timeout(hub.limits.poll_wait, out.rx.recv()).await {
            Err(_) => return StatusCode::NO_CONTENT.into_response(),
            Ok(None) => {
                drop(out);
                polls.sessions.remove(&id);
                return StatusCode::NOT_FOUND.into_response();
            }
            Ok(Some(m)) => m,
        };
        out.take(first);
    }
    // Whatever else is ready, up to the bound on unacknowledged records.
    while out.unacked.len() < out.limit && !out.closed() {
        match out.rx.try_recv() {
            Ok(m) => out.take(m),
            Err(_) => break,
        }
    }
    let mut body = Vec::new();
    for (_, message) in &out.unacked {
        match message {
            Message::Binary(frame) => {
                let len = u16::try_from(frame.len()).unwrap_or(u16::MAX);
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(frame.get(..usize::from(len)).unwrap_or_default());
            }
            Message::Close(frame) => {
                body.extend_from_slice(&0u16.to_be_bytes());
                let code = frame.as_ref().map_or(1000, |f| f.code);
                body.extend_from_slice(&code.to_be_bytes());
            }
            _ => {}
        }
    }
    let etag = format!("\"{}\"", out.unacked.back().map_or(out.last, |(n, _)| *n));
    (StatusCode::OK, [(header::ETAG, etag)], body).into_response()
}

impl Outbox {
    /// Numbers a record taken from the task's queue and keeps it until
    /// acknowledged (pings and pongs are not records).
    fn take(&mut self, message: Message) {
        if matches!(message, Message::Binary(_) | Message::Close(_)) {
            self.last += 1;
            self.unacked.push_back((self.last, message));
        }
    }

    /// Whether the close record was taken (nothing follows it).
    fn closed(&self) -> bool {
        self.unacked
            .back()
            .is_some_and(|(_, m)| matches!(m, Message::Close(_)))
    }
}
