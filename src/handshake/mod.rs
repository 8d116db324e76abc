//! The pairing handshake: X25519 between the companion's offer key and a fresh
//! primary key, HKDF-SHA256 keys bound to the QR secret and the transcript,
//! ChaCha20-Poly1305 for the two encrypted messages, Ed25519 signatures for
//! the device list (which is the certificate) and the confirmation: two
//! signatures and two verifications per link.
//!
//! ```text
//! companion                        relay                          primary
//!   shows QR: DL:<base32(v, E_c, s, check)>   ─── scanned by ──►
//!                         ◄──── Hello   (E_p, commitment to n_p, HMAC) ────
//!   ──── Request (AEAD: identity key, label, n_c) ────►
//!                                   phone's user sees the six-digit check code, approves
//!                         ◄──── Grant   (AEAD: n_p, signed device list naming it) ──
//!                               or Refusal (AEAD: reason)
//!   companion's user sees the account and the same code, agrees
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
pub use companion::{Companion, CompanionEvent, CompanionState, FailureReason, JoinPrompt};
pub use error::{HandshakeError, RefusalReason};
pub use messages::{MessageHeader, MessageKind, HEADER_LEN, MESSAGE_VERSION};
pub use primary::{ConfirmedLink, LinkRequest, PrimaryHandshake, PrimaryState};

/// The six-digit check code both screens show during a QR link: derived
/// from both sides' nonces after a commitment (`docs/PROTOCOL.md` §4), so
/// neither side can choose it. Shown as `123 456`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct CheckCode(u32);

impl TryFrom<u32> for CheckCode {
    type Error = &'static str;
    /// A saved code below [`CheckCode::MODULUS`]; anything else is refused.
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        if v < Self::MODULUS {
            Ok(CheckCode(v))
        } else {
            Err("check code out of range")
        }
    }
}

impl From<CheckCode> for u32 {
    fn from(c: CheckCode) -> u32 {
        c.0
    }
}

impl CheckCode {
    /// Codes have six decimal digits.
    pub const MODULUS: u32 = 1_000_000;

    pub(crate) fn from_u64(n: u64) -> Self {
        // `n % 1_000_000` always fits a u32.
        CheckCode(u32::try_from(n % u64::from(Self::MODULUS)).unwrap_or(0))
    }

    /// The code as a number below 1 000 000.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for CheckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:03} {:03}", self.0 / 1000, self.0 % 1000)
    }
}

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
