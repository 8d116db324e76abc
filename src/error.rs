//! One coarse classification of every refusal in the crate, for hosts that
//! map errors to protocol codes (a relay's error frames and close codes, an
//! HTTP status) without matching every variant of every module's error.
//! Each module keeps its own precise error enum; `kind()` on each says which
//! of these it is.

/// What kind of refusal an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bytes or text that do not decode: wrong layout, length, encoding or
    /// version. Resending the same bytes gives the same error.
    Malformed,
    /// A MAC, AEAD tag or signature did not verify, or a signed value belongs
    /// to another account or device: forged, corrupted, or misrouted.
    Unauthenticated,
    /// A message for another session, or out of order, duplicated or
    /// replayed: the state machine is waiting for something else.
    Unexpected,
    /// Refused by a rule: the device limit, a quota, the other side's
    /// refusal, no link intent.
    Refused,
    /// Too late: an expired offer, token, intent or lease, a timeout, a
    /// logged-out device.
    Expired,
    /// Contradicts what is already recorded: a fork, a token already
    /// redeemed or registered, a newer fact needed first.
    Conflict,
    /// A durable store is unavailable; nothing happened, retry later.
    Unavailable,
    /// The host called an operation in a state that does not allow it, or
    /// with an invalid argument (a programming error on the host's side).
    Misuse,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Unexpected => "unexpected",
            ErrorKind::Refused => "refused",
            ErrorKind::Expired => "expired",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Misuse => "misuse",
        })
    }
}

use crate::audit::AuditError;
use crate::certificate::CertificateError;
use crate::handshake::HandshakeError;
use crate::label::DeviceLabelError;
use crate::offer::{OfferError, TokenError};
use crate::persist::PersistError;
use crate::policy::PolicyError;
use crate::registry::RegistryError;
use crate::relay::{DirectoryError, LedgerError};
use crate::session::SessionError;

impl OfferError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OfferError::WeakKey => ErrorKind::Unauthenticated,
            _ => ErrorKind::Malformed,
        }
    }
}

impl TokenError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TokenError::UnknownToken => ErrorKind::Unexpected,
            TokenError::AlreadyRedeemed => ErrorKind::Conflict,
            TokenError::RotatedOut
            | TokenError::Expired
            | TokenError::TimedOut
            | TokenError::Cancelled => ErrorKind::Expired,
        }
    }
}

impl DeviceLabelError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Malformed
    }
}

impl CertificateError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CertificateError::Malformed { .. } | CertificateError::UnsupportedVersion { .. } => {
                ErrorKind::Malformed
            }
            CertificateError::BadSignature { .. }
            | CertificateError::WrongAccount
            | CertificateError::WrongDevice => ErrorKind::Unauthenticated,
            CertificateError::StaleDeviceList { .. } => ErrorKind::Unexpected,
            CertificateError::Fork { .. }
            | CertificateError::NeedDeviceList { .. }
            | CertificateError::MissingVersions { .. } => ErrorKind::Conflict,
        }
    }
}

impl HandshakeError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::BadOffer(e) => e.kind(),
            HandshakeError::Token(e) => e.kind(),
            HandshakeError::Certificate(e) => e.kind(),
            HandshakeError::Label(e) => e.kind(),
            HandshakeError::Malformed { .. }
            | HandshakeError::WrongSize { .. }
            | HandshakeError::UnsupportedVersion(_) => ErrorKind::Malformed,
            HandshakeError::AuthenticationFailed
            | HandshakeError::NonContributory
            | HandshakeError::BadSignature { .. }
            | HandshakeError::WrongCode => ErrorKind::Unauthenticated,
            HandshakeError::WrongSession
            | HandshakeError::UnexpectedMessage { .. }
            | HandshakeError::UnexpectedCodeMessage { .. }
            | HandshakeError::AlreadyLinked
            | HandshakeError::AlreadyFailed => ErrorKind::Unexpected,
            HandshakeError::Refused(_) => ErrorKind::Refused,
            HandshakeError::TimedOut { .. } => ErrorKind::Expired,
            HandshakeError::WrongState { .. } | HandshakeError::SignatureNeeded => {
                ErrorKind::Misuse
            }
        }
    }
}

impl RegistryError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Handshake(e) => e.kind(),
            RegistryError::DeviceLimitReached { .. }
            | RegistryError::Refused { .. }
            | RegistryError::NoLinkIntent
            | RegistryError::IndicesExhausted => ErrorKind::Refused,
            RegistryError::LinkIntentExpired
            | RegistryError::ConfirmationTimedOut
            | RegistryError::AlreadyLoggedOut { .. } => ErrorKind::Expired,
            RegistryError::OtherAccount => ErrorKind::Unauthenticated,
            RegistryError::UnknownDevice(_) | RegistryError::NotPending => ErrorKind::Misuse,
        }
    }
}

impl SessionError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Certificate(e) => e.kind(),
            SessionError::LoggedOut(_) => ErrorKind::Expired,
        }
    }
}

impl DirectoryError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DirectoryError::AccountExpired => ErrorKind::Expired,
            DirectoryError::UnknownAccount => ErrorKind::Unexpected,
            DirectoryError::DeviceLimitExceeded { .. } | DirectoryError::Full => ErrorKind::Refused,
            DirectoryError::Fork { .. } | DirectoryError::NeedDeviceList { .. } => {
                ErrorKind::Conflict
            }
        }
    }
}

impl LedgerError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LedgerError::TokenAlreadyRedeemed
            | LedgerError::TokenReserved { .. }
            | LedgerError::DuplicateToken => ErrorKind::Conflict,
            LedgerError::NotReserved
            | LedgerError::NotRedeemed
            | LedgerError::UnknownToken
            | LedgerError::ReservedForOtherHello => ErrorKind::Unexpected,
            LedgerError::TokenExpired => ErrorKind::Expired,
            LedgerError::WrongClient | LedgerError::BadRedemptionProof => {
                ErrorKind::Unauthenticated
            }
            LedgerError::QuotaExceeded { .. } => ErrorKind::Refused,
            LedgerError::WrongSize { .. } | LedgerError::Unroutable(_) => ErrorKind::Malformed,
            LedgerError::Store(_) => ErrorKind::Unavailable,
        }
    }
}

impl crate::relay::CodeRelayError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use crate::relay::CodeRelayError as E;
        match self {
            E::NoSuchCode | E::UnknownHandle | E::UnknownToken => ErrorKind::Unexpected,
            E::Expired => ErrorKind::Expired,
            E::WrongClient => ErrorKind::Unauthenticated,
            E::AlreadyPublished => ErrorKind::Conflict,
            E::LockedOut { .. } | E::QuotaExceeded { .. } => ErrorKind::Refused,
            E::Full => ErrorKind::Unavailable,
            E::BadOffer | E::Unroutable(_) => ErrorKind::Malformed,
        }
    }
}

impl AuditError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuditError::Malformed { .. } => ErrorKind::Malformed,
            AuditError::OutOfSequence { .. }
            | AuditError::BrokenChain { .. }
            | AuditError::BadCheckpoint { .. }
            | AuditError::WrongAccount
            | AuditError::Truncated { .. }
            | AuditError::AnchorMismatch { .. } => ErrorKind::Unauthenticated,
            AuditError::Record(_) => ErrorKind::Misuse,
        }
    }
}

impl PersistError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Malformed
    }
}

impl PolicyError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Misuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_errors_report_the_inner_kind() {
        let e = RegistryError::Handshake(HandshakeError::Certificate(CertificateError::Fork {
            version: 3,
        }));
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(
            RegistryError::Handshake(HandshakeError::AuthenticationFailed).kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(RegistryError::NoLinkIntent.kind(), ErrorKind::Refused);
        assert_eq!(
            LedgerError::Store("down".into()).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            SessionError::LoggedOut(crate::LogoutReason::Revoked).kind(),
            ErrorKind::Expired
        );
        assert_eq!(ErrorKind::Conflict.to_string(), "conflict");
    }
}
