//! The pairing handshake: X25519 between the companion's offer key and a fresh
//! primary key, HKDF-SHA256 keys bound to the QR secret and the transcript,
//! ChaCha20-Poly1305 for the two encrypted messages, Ed25519 signatures for
//! the certificate, the proof of possession and the confirmation.
//!
//! ```text
//! companion                        relay                          primary
//!   shows QR: DL:<base32(v, E_c, s, check)>   ─── scanned by ──►
//!                         ◄──── Hello   (E_p, HMAC)         ────
//!   ──── Request (AEAD: identity key, proof, label) ────►
//!                                   user compares check codes, approves
//!                         ◄──── Grant   (AEAD: certificate, device list) ──
//!                               or Refusal (AEAD: reason)
//!   ──── Confirm (identity signature over the transcript) ────►
//!                                                  slot pending → active
//! ```
//!
//! [`Companion`] and [`PrimaryHandshake`] are the two state machines; see
//! `docs/PROTOCOL.md` for the byte layouts.

mod companion;
mod error;
mod messages;
mod primary;
mod schedule;

pub use companion::{Companion, CompanionEvent, CompanionState, FailureReason};
pub use error::{HandshakeError, RefusalReason};
pub use messages::{
    DeviceLabel, DeviceLabelError, MessageHeader, MessageKind, HEADER_LEN, MAX_LABEL_LEN,
    MESSAGE_VERSION,
};
pub use primary::{ConfirmedLink, LinkRequest, PrimaryHandshake, PrimaryState};

/// Domain label of the companion's proof-of-possession signature.
pub(crate) const POP_LABEL: &[u8] = b"devicelink/v1 proof of possession";
/// Domain label of the companion's confirmation signature.
pub(crate) const CONFIRM_LABEL: &[u8] = b"devicelink/v1 confirm";
