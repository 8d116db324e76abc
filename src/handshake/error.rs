//! Why a handshake step was refused. A rejected message (forged, corrupted,
//! replayed, out of order, for another session) leaves the state unchanged and
//! is retryable; the terminal errors (an authenticated refusal, a timeout, a
//! bad offer) end the pairing. [`HandshakeError::is_terminal`] tells which.

use crate::certificate::CertificateError;
use crate::offer::{OfferError, TokenError};

use super::messages::MessageKind;
use crate::label::DeviceLabelError;

/// Why the primary refused to link (sent to the companion, authenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RefusalReason {
    /// The account already has `limit` companions (pending ones included).
    DeviceLimitReached {
        /// The policy's limit.
        limit: u32,
    },
    /// The user declined on the primary (wrong check code, unknown device…).
    Declined,
    /// The scanned offer was stale by the primary's or the relay's account.
    OfferStale,
    /// A reason this implementation does not know (from a newer primary).
    /// Codes 1–3 are the variants above; senders use 4 and up.
    Other {
        /// The reason code.
        code: u8,
    },
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::DeviceLimitReached { limit } => {
                write!(
                    f,
                    "the account already has {limit} linked devices; remove one first"
                )
            }
            RefusalReason::Declined => f.write_str("the user declined on the phone"),
            RefusalReason::OfferStale => f.write_str("the code was stale; show a new one"),
            RefusalReason::Other { code } => write!(f, "refused (reason {code})"),
        }
    }
}

/// Why a handshake step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The scanned text is not a valid offer.
    #[error("bad offer: {0}")]
    BadOffer(#[from] OfferError),
    /// The message's layout is wrong (length, fields).
    #[error("malformed {what}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
    },
    /// The message's length is outside the range of its kind (checked before
    /// anything is copied or decrypted).
    #[error("{kind:?} message of {len} bytes has the wrong size")]
    WrongSize {
        /// The kind the header names.
        kind: MessageKind,
        /// The length received.
        len: usize,
    },
    /// A message version this implementation does not speak.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
    /// The message carries another session's token.
    #[error("message is for another pairing session")]
    WrongSession,
    /// The token is not (or no longer) acceptable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A message arriving in the wrong state (replayed, reordered, duplicated).
    #[error("unexpected {got:?} message while {expected}")]
    UnexpectedMessage {
        /// What the state machine is waiting for.
        expected: &'static str,
        /// What arrived.
        got: MessageKind,
    },
    /// A MAC or AEAD tag did not verify: tampered, forged, or keyed by
    /// someone who did not see the QR code.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The X25519 result was all-zero (a low-order public key).
    #[error("non-contributory key exchange (low-order public key)")]
    NonContributory,
    /// A device signature (proof of possession or confirmation) is invalid.
    #[error("bad device signature on {what}")]
    BadSignature {
        /// Which signature.
        what: &'static str,
    },
    /// The host's key store holds this device's key: it must sign (the
    /// call that takes its signature is the one to use). Nothing changed.
    #[error("the host's key store must sign this")]
    SignatureNeeded,
    /// The certificate or device list in a grant is invalid or names another
    /// account or device.
    #[error("bad certificate: {0}")]
    Certificate(#[from] CertificateError),
    /// The companion's device label is invalid.
    #[error("bad device label: {0}")]
    Label(#[from] DeviceLabelError),
    /// The primary refused the link.
    #[error("the primary refused the link: {0}")]
    Refused(RefusalReason),
    /// The other side did not answer in time.
    #[error("the pairing timed out waiting for {waiting_for}")]
    TimedOut {
        /// What never came.
        waiting_for: &'static str,
    },
    /// The link is already complete; a duplicate was ignored.
    #[error("already linked")]
    AlreadyLinked,
    /// The handshake has failed earlier; start again with a new offer.
    #[error("the pairing has already failed")]
    AlreadyFailed,
    /// A code message arriving in the wrong state (replayed, reordered).
    #[error("unexpected {got:?} message while {expected}")]
    UnexpectedCodeMessage {
        /// What the state machine is waiting for.
        expected: &'static str,
        /// What arrived.
        got: crate::code::CodeMessageKind,
    },
    /// Link by code: the other side's key confirmation did not verify. The
    /// typed code was wrong (or the message was altered, which cannot be
    /// told apart): the attempt is over on this side, and the other side
    /// ends with the same error. Show a new code to try again.
    #[error("wrong code: the code typed on the phone is not the one shown")]
    WrongCode,
    /// The operation does not fit the current state (a host programming error).
    #[error("operation not allowed while {state}")]
    WrongState {
        /// The current state.
        state: &'static str,
    },
}

impl HandshakeError {
    /// True when the pairing this error concerns cannot complete any more: the
    /// user must start again with a new offer. Every other error left the state
    /// unchanged and the same exchange may still succeed (for example when the
    /// genuine message arrives after a forged one).
    pub fn is_terminal(&self) -> bool {
        match self {
            HandshakeError::BadOffer(_)
            | HandshakeError::Refused(_)
            | HandshakeError::TimedOut { .. }
            | HandshakeError::AlreadyFailed
            | HandshakeError::WrongCode => true,
            HandshakeError::Token(t) => {
                !matches!(t, TokenError::RotatedOut | TokenError::UnknownToken)
            }
            HandshakeError::Malformed { .. }
            | HandshakeError::UnsupportedVersion(_)
            | HandshakeError::WrongSize { .. }
            | HandshakeError::WrongSession
            | HandshakeError::UnexpectedMessage { .. }
            | HandshakeError::UnexpectedCodeMessage { .. }
            | HandshakeError::AuthenticationFailed
            | HandshakeError::NonContributory
            | HandshakeError::BadSignature { .. }
            | HandshakeError::Certificate(_)
            | HandshakeError::Label(_)
            | HandshakeError::AlreadyLinked
            | HandshakeError::SignatureNeeded
            | HandshakeError::WrongState { .. } => false,
        }
    }

    /// The opposite of [`HandshakeError::is_terminal`]: the state is unchanged
    /// and the exchange may still complete.
    pub fn is_retryable(&self) -> bool {
        !self.is_terminal()
    }
}
