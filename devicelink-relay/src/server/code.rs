//! The code endpoint, `GET /v1/code` (WebSocket): the shell around the
//! core's [`CodeRendezvous`] for linking by typed code. Every rule (handles,
//! single use, expiry, routing, failures and lockouts) is the core's; this
//! task parses [`CodeFrame`]s, calls it with `now` from the relay's clock and
//! forwards what it says. One task per connection, a bounded outbound queue,
//! the relay's connection limit, idle timeout and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use devicelink::relay::{ClientId, CodeRelayConfig, CodeRendezvous, SourceKey};
use devicelink::Policy;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::admission::{Gate, PeerAddress, Refused};
use super::metrics::Metrics;
use super::{Clock, Limits};
use crate::code_frame::CodeFrame;

/// What every code connection shares.
pub(crate) struct CodeHub {
    rendezvous: Mutex<CodeRendezvous>,
    peers: Mutex<HashMap<ClientId, mpsc::Sender<Vec<u8>>>>,
    next: AtomicU64,
    clock: Arc<dyn Clock>,
    limits: Limits,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CodeHub {
    pub(crate) fn new(
        policy: &Policy,
        clock: Arc<dyn Clock>,
        limits: Limits,
        gate: Arc<Gate>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        CodeHub {
            rendezvous: Mutex::new(CodeRendezvous::new(CodeRelayConfig::from_policy(policy))),
            peers: Mutex::new(HashMap::new()),
            // Code clients get ids of their own range (top bit set).
            next: AtomicU64::new(1 << 63),
            clock,
            limits,
            gate,
            metrics,
            shutdown,
        }
    }

    /// Failures the rendezvous counts (for tests and metrics).
    pub(crate) fn with_rendezvous<T>(&self, f: impl FnOnce(&CodeRendezvous) -> T) -> T {
        f(&lock(&self.rendezvous))
    }

    /// One frame from `client`: the answer to send back, if any.
    fn handle(&self, client: ClientId, source: SourceKey, bytes: &[u8]) -> Option<Vec<u8>> {
        let now = self.clock.now();
        let frame = match CodeFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => return Some(CodeFrame::Error(&e.to_string()).encode()),
        };
        let mut r = lock(&self.rendezvous);
        r.sweep(now);
        let answer = match frame {
            CodeFrame::Open => {
                let mut rng = rand_core::OsRng;
                r.open(client, source, &mut rng, now)
                    .map(|(handle, expires_at)| CodeFrame::Opened { handle, expires_at }.encode())
            }
            CodeFrame::Publish(offer) => r
                .publish(client, offer, now)
                .map(|_| CodeFrame::Ok.encode()),
            CodeFrame::Join(handle) => r
                .join(handle, client, source, None, now)
                .map(|offer| CodeFrame::Offer(&offer).encode()),
            CodeFrame::Message(m) => match r.route(m, client, now) {
                Ok(routed) => {
                    drop(r);
                    let to = lock(&self.peers).get(&routed.forward_to).cloned();
                    let sent =
                        to.is_some_and(|tx| tx.try_send(CodeFrame::Routed(m).encode()).is_ok());
                    return (!sent).then(|| CodeFrame::Error("the other side is gone").encode());
                }
                Err(e) => Err(e),
            },
            CodeFrame::WrongCode(token) => r
                .report_wrong_code(&token, client, now)
                .map(|_| CodeFrame::Ok.encode()),
            CodeFrame::Opened { .. }
            | CodeFrame::Ok
            | CodeFrame::Offer(_)
            | CodeFrame::Routed(_)
            | CodeFrame::Error(_) => {
                return Some(CodeFrame::Error("relay-to-client frame").encode())
            }
        };
        Some(answer.unwrap_or_else(|e| CodeFrame::Error(&e.to_string()).encode()))
    }
}

/// `GET /v1/code`.
pub(crate) async fn upgrade(
    State(hub): State<Arc<CodeHub>>,
    peer: PeerAddress,
    ws: WebSocketUpgrade,
) -> Response {
    if *hub.shutdown.borrow() {
        return Refused::ShuttingDown.into_response();
    }
    // The relay's connection limit and the per-address limits, as for
    // every other endpoint.
    let permit = match hub.gate.admit(peer.0, &hub.metrics) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    ws.max_message_size(crate::MAX_FRAME_LEN)
        .on_upgrade(move |socket| async move {
            run(hub, socket, permit.source()).await;
            drop(permit);
        })
}

async fn run(hub: Arc<CodeHub>, mut socket: WebSocket, source: SourceKey) {
    let client = ClientId::from(hub.next.fetch_add(1, Ordering::Relaxed));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(hub.limits.outbound_queue.max(1));
    lock(&hub.peers).insert(client, tx);
    let mut shutdown = hub.shutdown.clone();
    let idle = hub.limits.idle_timeout;
    let mut idle_at = Instant::now() + idle;
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            queued = rx.recv() => {
                let Some(bytes) = queued else { break };
                let write = socket.send(Message::Binary(bytes.into()));
                if !matches!(tokio::time::timeout(hub.limits.write_timeout, write).await, Ok(Ok(()))) {
                    break;
                }
            }
            () = tokio::time::sleep_until(idle_at) => break,
            inbound = socket.recv() => {
                let Some(Ok(message)) = inbound else { break };
                idle_at = Instant::now() + idle;
                match message {
                    Message::Binary(bytes) => {
                        if let Some(answer) = hub.handle(client, source, &bytes) {
                            let write = socket.send(Message::Binary(answer.into()));
                            if !matches!(tokio::time::timeout(hub.limits.write_timeout, write).await, Ok(Ok(()))) {
                                break;
                            }
                        }
                    }
                    Message::Close(_) => break,
                    Message::Text(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        }
    }
    lock(&hub.peers).remove(&client);
    let _ = socket.send(Message::Close(None)).await;
}
