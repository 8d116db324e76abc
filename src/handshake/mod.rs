//! The pairing handshake: X25519 between the companion's offer key and a fresh
//! primary key, HKDF-SHA256 keys bound to the QR secret and the transcript,
//! ChaCha20-Poly1305 for the two encrypted messages, Ed25519 signatures for
//! the device list (which is the certificate) and the confirmation: two
//! signatures and two verifications per link.
//!
//! ```text
//! companion                        relay                          primary
//!   shows QR: DL:<base32(v, E_c, s, check)>   ─── scanned by ──►
//!                         ◄──── Hello   (E_p, HMAC)         ────
//!   ──── Request (AEAD: identity key, label) ────►
//!                                   user compares check codes, approves
//!                         ◄──── Grant   (AEAD: index, signed device list) ──
//!                               or Refusal (AEAD: reason)
//!   ──── Confirm (identity signature over the transcript: proves possession) ─►
//!                                                  slot pending → active
//! ```
//!
//! [`Companion`] and [`PrimaryHandshake`] are the two state machines; see
//! `docs/PROTOCOL.md` for the byte layouts.

mod companion;
mod error;
mod messages;
mod primary;
pub(crate) mod schedule;

pub use crate::label::{DeviceLabel, DeviceLabelError, ObservedContext, MAX_LABEL_LEN};
pub use companion::{Companion, CompanionEvent, CompanionState, FailureReason};
pub use error::{HandshakeError, RefusalReason};
pub use messages::{MessageHeader, MessageKind, HEADER_LEN, MESSAGE_VERSION};
pub use primary::{ConfirmedLink, LinkRequest, PrimaryHandshake, PrimaryState};

/// Domain label of the companion's confirmation signature.
pub(crate) const CONFIRM_LABEL: &[u8] = b"devicelink/v2 confirm";

/// A fresh AEAD nonce from `rng`.
pub(crate) fn random_nonce<R: rand_core::RngCore + rand_core::CryptoRng>(
    rng: &mut R,
) -> [u8; schedule::NONCE_LEN] {
    let mut nonce = [0u8; schedule::NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}
