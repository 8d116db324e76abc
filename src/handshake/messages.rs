//! Wire layout of the four handshake messages (see `docs/PROTOCOL.md`).
//!
//! Every message starts with an 18-byte header: version, kind, token id. The
//! header is the AEAD's associated data, so a relay can route by it and
//! nobody can alter it unnoticed.

use serde::{Deserialize, Serialize};

use super::schedule::{CHECK_NONCE_LEN, MAC_LEN, NONCE_LEN, TAG_LEN};
use super::HandshakeError;
use crate::keys::{PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::label::{DeviceLabel, MAX_LABEL_LEN};
use crate::offer::TokenId;
use crate::wire::Reader;

/// Version byte of every handshake message: 3 since protocol v2.1 (the
/// committed six-digit check code changed the Hello, Request and Grant).
pub const MESSAGE_VERSION: u8 = 3;
/// Bytes of the common header.
pub const HEADER_LEN: usize = 1 + 1 + 16;
/// Bytes of a Hello: header, redemption proof, primary key, check-code
/// commitment, MAC.
pub(crate) const HELLO_LEN: usize = HEADER_LEN + 16 + 32 + 32 + MAC_LEN;
/// Offset of the primary's ephemeral key in a Hello.
pub(crate) const HELLO_KEY_AT: usize = HEADER_LEN + 16;
/// Offset of the primary's check-code commitment in a Hello.
pub(crate) const HELLO_COMMITMENT_AT: usize = HELLO_KEY_AT + 32;
/// Bytes of a Confirm.
pub(crate) const CONFIRM_LEN: usize = HEADER_LEN + SIGNATURE_LEN;
/// Bytes of a Request with a one-byte label: header, nonce, identity key,
/// label length and label, check-code nonce, tag.
pub(crate) const MIN_REQUEST_LEN: usize =
    HEADER_LEN + NONCE_LEN + PUBLIC_KEY_LEN + 1 + 1 + CHECK_NONCE_LEN + TAG_LEN;
/// Bytes of a Request with the longest label.
pub(crate) const MAX_REQUEST_LEN: usize = MIN_REQUEST_LEN - 1 + MAX_LABEL_LEN;
/// Bytes of a Refusal: header, nonce, code and argument, tag.
pub(crate) const REFUSAL_LEN: usize = HEADER_LEN + NONCE_LEN + 5 + TAG_LEN;
/// Bytes of the smallest Grant: header, nonce, check-code nonce and
/// certificate (sealed), tag.
pub(crate) const MIN_GRANT_LEN: usize =
    HEADER_LEN + NONCE_LEN + CHECK_NONCE_LEN + crate::certificate::MIN_CERTIFICATE_LEN + TAG_LEN;
/// Bytes of the largest Grant.
pub(crate) const MAX_GRANT_LEN: usize =
    HEADER_LEN + NONCE_LEN + CHECK_NONCE_LEN + crate::certificate::MAX_CERTIFICATE_LEN + TAG_LEN;

/// The kind of a handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    /// Primary → companion: the redemption proof, the primary's ephemeral key
    /// and a MAC.
    Hello,
    /// Companion → primary: its identity key and label (encrypted).
    Request,
    /// Primary → companion: its certificate, the signed device list naming it (encrypted).
    Grant,
    /// Primary → companion: an authenticated refusal (encrypted).
    Refusal,
    /// Companion → primary: its signature over the whole transcript.
    Confirm,
}

impl MessageKind {
    /// The kind's byte in the header (`docs/PROTOCOL.md` §3.1).
    pub fn code(self) -> u8 {
        match self {
            MessageKind::Hello => 1,
            MessageKind::Request => 2,
            MessageKind::Grant => 3,
            MessageKind::Refusal => 4,
            MessageKind::Confirm => 5,
        }
    }

    /// The kind a header byte names, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => MessageKind::Hello,
            2 => MessageKind::Request,
            3 => MessageKind::Grant,
            4 => MessageKind::Refusal,
            5 => MessageKind::Confirm,
            _ => return None,
        })
    }
}

impl MessageKind {
    /// The shortest and longest valid message of this kind, in bytes. A
    /// message outside the range is refused before anything is copied,
    /// decrypted or stored; a relay applies the same rule before buffering.
    pub fn size_range(self) -> (usize, usize) {
        match self {
            MessageKind::Hello => (HELLO_LEN, HELLO_LEN),
            MessageKind::Request => (MIN_REQUEST_LEN, MAX_REQUEST_LEN),
            MessageKind::Grant => (MIN_GRANT_LEN, MAX_GRANT_LEN),
            MessageKind::Refusal => (REFUSAL_LEN, REFUSAL_LEN),
            MessageKind::Confirm => (CONFIRM_LEN, CONFIRM_LEN),
        }
    }

    /// The largest message of any kind, in bytes.
    pub const MAX_LEN: usize = MAX_GRANT_LEN;
}

/// The routing part of a message, readable by a relay without any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// What kind of message.
    pub kind: MessageKind,
    /// Which pairing session (offer) it belongs to.
    pub token_id: TokenId,
}

impl MessageHeader {
    /// Reads the header of any handshake message. Total.
    pub fn parse(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let malformed = |_| HandshakeError::Malformed {
            what: "message header",
        };
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(malformed)?;
        if version != MESSAGE_VERSION {
            return Err(HandshakeError::UnsupportedVersion(version));
        }
        let kind = MessageKind::from_code(r.u8().map_err(malformed)?).ok_or(
            HandshakeError::Malformed {
                what: "message kind",
            },
        )?;
        let token_id = TokenId(r.array().map_err(malformed)?);
        Ok(MessageHeader { kind, token_id })
    }

    /// For a Hello, the redemption proof it carries (which the relay checks
    /// against the token id before redeeming). `None` for other kinds or if
    /// the Hello does not have the Hello's exact length.
    pub fn redemption_proof(&self, message: &[u8]) -> Option<crate::offer::RedemptionProof> {
        if self.kind != MessageKind::Hello || message.len() != HELLO_LEN {
            return None;
        }
        let bytes = message.get(HEADER_LEN..HELLO_KEY_AT)?;
        let mut proof = [0u8; 16];
        proof.copy_from_slice(bytes);
        Some(crate::offer::RedemptionProof(proof))
    }

    /// Checks `message`'s total length against the range of its kind
    /// ([`MessageKind::size_range`]).
    pub fn check_size(&self, message: &[u8]) -> Result<(), HandshakeError> {
        let (min, max) = self.kind.size_range();
        if message.len() < min || message.len() > max {
            return Err(HandshakeError::WrongSize {
                kind: self.kind,
                len: message.len(),
            });
        }
        Ok(())
    }

    /// The 18-byte encoding: version, kind, token id.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = MESSAGE_VERSION;
        out[1] = self.kind.code();
        out[2..].copy_from_slice(&self.token_id.0);
        out
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(MESSAGE_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.token_id.0);
    }

    /// Parses and checks that the message belongs to `token` and is of one of
    /// `allowed` kinds; `expected` names the state for the error.
    pub(crate) fn expect(
        bytes: &[u8],
        token: &TokenId,
        allowed: &[MessageKind],
        expected: &'static str,
    ) -> Result<Self, HandshakeError> {
        let h = Self::parse(bytes)?;
        if h.token_id != *token {
            return Err(HandshakeError::WrongSession);
        }
        if !allowed.contains(&h.kind) {
            return Err(HandshakeError::UnexpectedMessage {
                expected,
                got: h.kind,
            });
        }
        Ok(h)
    }
}

/// A zeroizing copy of an encrypted body, opened in place.
pub(crate) type SealedBody = zeroize::Zeroizing<Vec<u8>>;

/// An encrypted message (Request, Grant, Refusal) split into its header (the
/// AEAD's associated data), its nonce, and a zeroizing copy of the sealed
/// body to open in place. Call after the size check: the message holds at
/// least a header and a nonce.
pub(crate) fn split_sealed(message: &[u8]) -> Option<(&[u8], [u8; NONCE_LEN], SealedBody)> {
    let (aad, rest) = message.split_at_checked(HEADER_LEN)?;
    let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(nonce);
    Some((aad, nonce_bytes, zeroize::Zeroizing::new(sealed.to_vec())))
}

/// Plaintext of a Request: identity key, label and the companion's
/// check-code nonce. Possession of the key is proven by the Confirm's
/// signature (protocol v2), not here.
pub(crate) struct RequestBody {
    pub(crate) device: [u8; PUBLIC_KEY_LEN],
    pub(crate) label: DeviceLabel,
    pub(crate) check_nonce: [u8; CHECK_NONCE_LEN],
}

impl RequestBody {
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.device);
        // A DeviceLabel is at most 64 bytes.
        out.push(u8::try_from(self.label.0.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.label.0.as_bytes());
        out.extend_from_slice(&self.check_nonce);
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let malformed = |_| HandshakeError::Malformed { what: "request" };
        let mut r = Reader::new(bytes);
        let device = r.array().map_err(malformed)?;
        let len = usize::from(r.u8().map_err(malformed)?);
        let label = DeviceLabel::from_wire(r.take(len).map_err(malformed)?)?;
        let check_nonce = r.array().map_err(malformed)?;
        if !r.is_empty() {
            return Err(HandshakeError::Malformed { what: "request" });
        }
        Ok(RequestBody {
            device,
            label,
            check_nonce,
        })
    }
}

/// Plaintext of a Refusal: reason code and an argument.
pub(crate) fn write_refusal(reason: RefusalReasonCode, out: &mut Vec<u8>) {
    out.push(reason.0);
    out.extend_from_slice(&reason.1.to_be_bytes());
}

/// A refusal reason as its code and argument.
pub(crate) struct RefusalReasonCode(pub(crate) u8, pub(crate) u32);

impl From<super::RefusalReason> for RefusalReasonCode {
    fn from(r: super::RefusalReason) -> Self {
        use super::RefusalReason as R;
        match r {
            R::DeviceLimitReached { limit } => RefusalReasonCode(1, limit),
            R::Declined => RefusalReasonCode(2, 0),
            R::OfferStale => RefusalReasonCode(3, 0),
            R::Other { code } => RefusalReasonCode(code, 0),
        }
    }
}

pub(crate) fn parse_refusal(bytes: &[u8]) -> Result<super::RefusalReason, HandshakeError> {
    use super::RefusalReason as R;
    let malformed = |_| HandshakeError::Malformed { what: "refusal" };
    let mut r = Reader::new(bytes);
    let code = r.u8().map_err(malformed)?;
    let arg = r.u32().map_err(malformed)?;
    if !r.is_empty() {
        return Err(HandshakeError::Malformed { what: "refusal" });
    }
    // Authenticated by the Grant key, so always a refusal: a code this
    // implementation does not know (from a newer primary) is `Other`.
    Ok(match (code, arg) {
        (1, limit) => R::DeviceLimitReached { limit },
        (2, 0) => R::Declined,
        (3, 0) => R::OfferStale,
        (code, _) => R::Other { code },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parse_is_total_and_typed() {
        assert!(matches!(
            MessageHeader::parse(&[]),
            Err(HandshakeError::Malformed { .. })
        ));
        assert_eq!(
            MessageHeader::parse(&[9]),
            Err(HandshakeError::UnsupportedVersion(9))
        );
        assert!(matches!(
            MessageHeader::parse(&[MESSAGE_VERSION, 77, 0]),
            Err(HandshakeError::Malformed {
                what: "message kind"
            })
        ));
        let mut m = Vec::new();
        MessageHeader {
            kind: MessageKind::Grant,
            token_id: TokenId([4; 16]),
        }
        .write(&mut m);
        let h = MessageHeader::parse(&m).unwrap();
        assert_eq!(h.to_bytes().to_vec(), m);
        assert_eq!(h.kind, MessageKind::Grant);
        assert_eq!(h.token_id, TokenId([4; 16]));
        assert_eq!(
            MessageHeader::expect(&m, &TokenId([5; 16]), &[MessageKind::Grant], "x"),
            Err(HandshakeError::WrongSession)
        );
        assert!(matches!(
            MessageHeader::expect(&m, &TokenId([4; 16]), &[MessageKind::Hello], "x"),
            Err(HandshakeError::UnexpectedMessage {
                got: MessageKind::Grant,
                ..
            })
        ));
    }

    #[test]
    fn refusals_decode_strictly_and_unknown_codes_are_still_refusals() {
        use super::super::RefusalReason as R;
        let enc = |r: R| {
            let mut v = Vec::new();
            write_refusal(r.into(), &mut v);
            v
        };
        for r in [
            R::DeviceLimitReached { limit: 4 },
            R::Declined,
            R::OfferStale,
            R::Other { code: 9 },
        ] {
            assert_eq!(parse_refusal(&enc(r)), Ok(r));
        }
        assert_eq!(parse_refusal(&[2, 0, 0, 0, 1]), Ok(R::Other { code: 2 }));
        assert!(parse_refusal(&[2, 0, 0, 0]).is_err());
        assert!(parse_refusal(&[2, 0, 0, 0, 0, 0]).is_err());
    }
}
