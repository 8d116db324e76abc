//! The host API: one object per role, which takes bytes, `now` and
//! randomness, and keeps an **outbox** of everything the host must carry
//! out (save the state, send a pairing message, publish a signed list or a
//! heartbeat), in the order it must happen. After every call the host drains
//! it with `poll_output` until it gives `None`, so nothing can be forgotten
//! between calls (quinn-proto's `poll_transmit` and rustls' `write_tls` are
//! the model). This is the surface the language bindings wrap.
//!
//! Every method takes its inputs first, then `rng` (when it draws), then
//! `now`. Outcomes are flat enums ([`PhoneEvent`]); a refusal the other
//! device must hear (a full account's Refusal) is an outcome whose bytes are
//! in the outbox, never bytes inside an error.
//!
//! [`Phone`] is the primary's side (the account with its pairings in
//! flight); [`Device`] a companion's, from its QR offer or typed code to
//! its linked session.

mod device;
mod phone;

pub use device::{Device, DeviceError, DeviceEvent, DeviceFailure};
pub use phone::{Phone, PhoneError, PhoneEvent, MAX_PAIRINGS};

use crate::offer::TokenId;
use crate::time::Timestamp;

/// Something the host must carry out, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Save the state now (`save()`), before carrying out anything after
    /// this output: a Grant must not leave the device before the account
    /// that made it is on disk (restoring an older save would hand the same
    /// index and list version to another device).
    Save,
    /// Send a pairing message to the other device, through the relay.
    Send {
        /// The pairing it belongs to.
        token: TokenId,
        /// The message's bytes.
        message: Vec<u8>,
    },
    /// Publish the account's signed device list at the relay: every
    /// version the account makes, once, oldest first (a re-pair makes one
    /// at the Grant and one at the Confirm).
    PublishList {
        /// The list's version.
        version: u64,
        /// Its wire bytes.
        bytes: Vec<u8>,
    },
    /// Publish a signed heartbeat at the relay.
    PublishHeartbeat {
        /// Its wire bytes.
        bytes: Vec<u8>,
    },
    /// Register the QR offer's token at the relay (a new one after every
    /// rotation), valid until `expires_at`.
    Register {
        /// The offer's token.
        token: TokenId,
        /// When the relay may forget it.
        expires_at: Timestamp,
    },
    /// Subscribe to the account's signed facts at the relay, asking for
    /// every list version after `after` (a linked device, after linking,
    /// after a restore, and when it missed versions).
    Subscribe {
        /// The list version the device holds.
        after: u64,
    },
}
