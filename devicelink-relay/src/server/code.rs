//! The code frames (`/v1/code`, linking by typed code): what each one asks
//! of the core's [`CodeRendezvous`] and what to answer. Every rule (handles,
//! single use, expiry, routing, failures, lockouts, budgets) is the core's;
//! the connection that received the frame carries the answer out. The
//! rendezvous lives in memory in the [`Hub`], so nothing here waits.
//!
//! [`CodeRendezvous`]: devicelink::relay::CodeRendezvous

use devicelink::relay::{ClientId, CodeRelayError, CodeSpent, SourceKey};
use devicelink::{AccountId, Timestamp};

use super::hub::Hub;
use crate::code_frame::CodeFrame;
use crate::store::Store;

/// Who sent a code frame, as the rendezvous counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sender {
    pub(crate) client: ClientId,
    pub(crate) source: SourceKey,
    /// The account this connection proved (`ProveAccount`), if any: a join
    /// counts against it.
    pub(crate) account: Option<AccountId>,
}

/// What to do with a code frame the rendezvous accepted.
#[derive(Debug)]
pub(crate) enum CodeAnswer {
    /// Send this frame back.
    Reply(Vec<u8>),
    /// Forward this frame to `to`, then answer `Ok` (or 701 if `to` is gone).
    Forward {
        /// The session's other side.
        to: ClientId,
        /// The frame to queue for it.
        frame: Vec<u8>,
    },
}

/// The rendezvous's answer to one frame, and the companions to tell that
/// their code was spent (by this frame, or by what the rendezvous swept).
pub(crate) fn answer<S: Store + 'static>(
    hub: &Hub<S>,
    from: Sender,
    frame: CodeFrame<'_>,
    now: Timestamp,
) -> (Result<CodeAnswer, CodeRelayError>, Vec<CodeSpent>) {
    hub.with_code(|r| {
        let mut spent = r.sweep(now);
        let answer = match frame {
            CodeFrame::Open => {
                let mut rng = rand_core::OsRng;
                r.open(from.client, from.source, &mut rng, now)
                    .map(|(handle, expires_at)| {
                        CodeAnswer::Reply(CodeFrame::Opened { handle, expires_at }.encode())
                    })
            }
            CodeFrame::Publish(offer) => r
                .publish(from.client, offer, now)
                .map(|_| CodeAnswer::Reply(CodeFrame::Ok.encode())),
            CodeFrame::Join(handle) => r
                .join(handle, from.client, from.source, from.account, now)
                .map(|offer| CodeAnswer::Reply(CodeFrame::Offer(&offer).encode())),
            CodeFrame::Message(m) => {
                r.route(from.client, m, now)
                    .map(|routed| CodeAnswer::Forward {
                        to: routed.forward_to,
                        frame: CodeFrame::Routed(m).encode(),
                    })
            }
            CodeFrame::WrongCode(token) => {
                r.report_wrong_code(&token, from.client, now)
                    .map(|reported| {
                        spent.extend(reported.spent);
                        CodeAnswer::Reply(CodeFrame::Ok.encode())
                    })
            }
            // Relay-to-client frames never reach here (the connection
            // refuses them by type).
            CodeFrame::Opened { .. }
            | CodeFrame::Ok
            | CodeFrame::Offer(_)
            | CodeFrame::Routed(_)
            | CodeFrame::Spent(_) => {
                Err(CodeRelayError::Unroutable("relay-to-client frame".into()))
            }
        };
        (answer, spent)
    })
}
