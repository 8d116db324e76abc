//! The HTTP long-poll fallback, for clients that cannot keep a WebSocket
//! open: a session is a connection task (the same one a WebSocket gets)
//! whose wire is a pair of bounded queues fed by HTTP requests.
//!
//! - `POST /v1/poll/companion` or `/v1/poll/primary`: opens a session;
//!   `201 Created`, body: the session id (32 hex characters, a secret).
//! - `POST /v1/poll/session/{id}`, body: one frame: `202 Accepted` (its
//!   answer comes through the next poll); `404` for an unknown or ended
//!   session, `413` over the frame limit, `429` while the session's inbound
//!   queue is full.
//! - `GET /v1/poll/session/{id}`: waits up to [`Limits::poll_wait`] for
//!   frames, then returns all that are ready: `200`, body: records
//!   `len (u16) ‖ frame`; a record of length 0 is followed by a u16 close
//!   code (the session ended, as a WebSocket would have closed). `204` when
//!   nothing came; `404` once the session is gone (a session's last frames
//!   wait for a poll up to twice [`Limits::poll_wait`]). Each poll counts
//!   as activity for the idle timeout.
//! - `DELETE /v1/poll/session/{id}`: closes the session.
//!
//! [`Limits::poll_wait`]: super::Limits::poll_wait

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::Message;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand_core::{OsRng, RngCore};
use tokio::sync::mpsc;

use super::admission::PeerAddress;
use super::connection::{self, Role, Wire};
use super::hub::Hub;
use crate::store::Store;

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

/// The HTTP side of a session.
#[derive(Debug, Clone)]
pub(crate) struct PollSession {
    inbound: mpsc::Sender<Message>,
    outbound: Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>,
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

fn open<S: Store + 'static>(hub: Arc<Hub<S>>, peer: PeerAddress, role: Role) -> Response {
    let permit = match hub.admit(peer.0) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    let Some(id) = session_id() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n").into_response();
    };
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(hub.limits.outbound_queue.max(1));
    let ended = Arc::new(OnceLock::new());
    hub.polls.insert(
        id.clone(),
        PollSession {
            inbound: in_tx,
            outbound: Arc::new(tokio::sync::Mutex::new(out_rx)),
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

pub(crate) async fn open_companion<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    peer: PeerAddress,
) -> Response {
    open(hub, peer, Role::Companion)
}

pub(crate) async fn open_primary<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    peer: PeerAddress,
) -> Response {
    open(hub, peer, Role::Primary)
}

pub(crate) async fn send<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(session) = hub.polls.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match session.inbound.try_send(Message::Binary(body)) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(mpsc::error::TrySendError::Full(_)) => StatusCode::TOO_MANY_REQUESTS.into_response(),
        Err(mpsc::error::TrySendError::Closed(_)) => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(crate) async fn close<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = hub.polls.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let _ = session.inbound.send(Message::Close(None)).await;
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn poll<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = hub.polls.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The poll itself is the client's sign of life.
    let _ = session.inbound.try_send(Message::Pong(Bytes::new()));
    let mut outbound = session.outbound.lock().await;
    let first = match tokio::time::timeout(hub.limits.poll_wait, outbound.recv()).await {
        Err(_) => return StatusCode::NO_CONTENT.into_response(),
        Ok(None) => {
            drop(outbound);
            hub.polls.remove(&id);
            return StatusCode::NOT_FOUND.into_response();
        }
        Ok(Some(m)) => m,
    };
    let mut body = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next.take() {
        match message {
            Message::Binary(frame) => {
                let len = u16::try_from(frame.len()).unwrap_or(u16::MAX);
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(frame.get(..usize::from(len)).unwrap_or_default());
            }
            Message::Close(frame) => {
                body.extend_from_slice(&0u16.to_be_bytes());
                let code = frame.map_or(1000, |f| f.code);
                body.extend_from_slice(&code.to_be_bytes());
                break;
            }
            _ => {}
        }
        next = outbound.try_recv().ok();
    }
    (StatusCode::OK, body).into_response()
}
