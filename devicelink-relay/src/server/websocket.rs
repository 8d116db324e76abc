//! The WebSocket transport: `GET /v1/companion`, `/v1/primary` and
//! `/v1/code` upgrade to a WebSocket (after the session admission) and hand
//! it to the one connection machinery ([`connection::run`]) with the same
//! message and frame size, read buffer and role checks for all three.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::address::{source_key, ClientIp};
use super::connection::{self, Role};
use super::hub::Hub;
use crate::store::Store;

/// The WebSocket endpoints.
pub(crate) fn routes<S: Store + 'static>(hub: Arc<Hub<S>>) -> Router {
    Router::new()
        .route("/v1/companion", get(companion::<S>))
        .route("/v1/primary", get(primary::<S>))
        .route("/v1/code", get(code::<S>))
        .with_state(hub)
}

async fn companion<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    ip: ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(hub, ip, ws, Role::Companion)
}

async fn primary<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    ip: ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(hub, ip, ws, Role::Primary)
}

async fn code<S: Store + 'static>(
    State(hub): State<Arc<Hub<S>>>,
    ip: ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(hub, ip, ws, Role::Code)
}

fn upgrade<S: Store + 'static>(
    hub: Arc<Hub<S>>,
    ip: ClientIp,
    ws: WebSocketUpgrade,
    role: Role,
) -> Response {
    let source = ip.0.map(|ip| source_key(ip, hub.limits.ipv6_prefix));
    let admission = match hub.admit(source) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    let max = hub.limits.max_frame_len;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(hub.limits.websocket_read_buffer.max(64))
        .on_upgrade(move |socket| connection::run(hub, socket, role, admission))
}
