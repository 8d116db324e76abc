//! Wire layout of the three code messages (`docs/PROTOCOL.md` §13).
//!
//! They share the 18-byte header layout of the handshake messages
//! (`version 2 ‖ kind ‖ token id`) with kind codes 6–8, which
//! [`crate::handshake::MessageHeader::parse`] refuses (`Malformed{"message
//! kind"}`): a relay routes them through its code rendezvous
//! ([`crate::relay::CodeRendezvous`]), never through the token ledger.

use serde::{Deserialize, Serialize};

use crate::handshake::{HandshakeError, HEADER_LEN, MESSAGE_VERSION};
use crate::offer::TokenId;
use crate::wire::Reader;

/// Bytes of a SPAKE2 message (side byte and a compressed Edwards point).
pub const PAKE_MESSAGE_LEN: usize = 33;
/// Bytes of a CodeOffer: header, handle, the companion's SPAKE2 message.
pub const CODE_OFFER_LEN: usize = HEADER_LEN + 4 + PAKE_MESSAGE_LEN;
/// Bytes of a CodeHello: header, the primary's SPAKE2 message, its MAC.
pub const CODE_HELLO_LEN: usize = HEADER_LEN + PAKE_MESSAGE_LEN + 32;
/// Bytes of a CodeConfirm: header and the companion's MAC.
pub const CODE_CONFIRM_LEN: usize = HEADER_LEN + 32;

/// The kind of a code message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CodeMessageKind {
    /// Companion → relay → primary: the handle and the companion's SPAKE2
    /// message, published at the relay when the code is shown.
    CodeOffer,
    /// Primary → companion: the primary's SPAKE2 message and its key
    /// confirmation.
    CodeHello,
    /// Companion → primary: the companion's key confirmation.
    CodeConfirm,
}

impl CodeMessageKind {
    /// The kind's byte in the header.
    pub fn code(self) -> u8 {
        match self {
            CodeMessageKind::CodeOffer => 6,
            CodeMessageKind::CodeHello => 7,
            CodeMessageKind::CodeConfirm => 8,
        }
    }

    /// The kind a header byte names, if it is a code message.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            6 => CodeMessageKind::CodeOffer,
            7 => CodeMessageKind::CodeHello,
            8 => CodeMessageKind::CodeConfirm,
            _ => return None,
        })
    }

    /// The exact length of a message of this kind, in bytes.
    pub fn message_len(self) -> usize {
        match self {
            CodeMessageKind::CodeOffer => CODE_OFFER_LEN,
            CodeMessageKind::CodeHello => CODE_HELLO_LEN,
            CodeMessageKind::CodeConfirm => CODE_CONFIRM_LEN,
        }
    }
}

/// The routing part of a code message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeHeader {
    /// What kind of code message.
    pub kind: CodeMessageKind,
    /// The code session's token id (derived from the handle and the
    /// companion's SPAKE2 message; the later Request, Grant and Confirm
    /// carry it too).
    pub token_id: TokenId,
}

impl CodeHeader {
    /// Reads the header of a code message and checks the message's exact
    /// length for its kind. Total; nothing is copied before the checks.
    pub fn parse(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let malformed = |_| HandshakeError::Malformed {
            what: "code message header",
        };
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(malformed)?;
        if version != MESSAGE_VERSION {
            return Err(HandshakeError::UnsupportedVersion(version));
        }
        let kind = CodeMessageKind::from_code(r.u8().map_err(malformed)?).ok_or(
            HandshakeError::Malformed {
                what: "code message kind",
            },
        )?;
        let token_id = TokenId(r.array().map_err(malformed)?);
        if bytes.len() != kind.message_len() {
            return Err(HandshakeError::Malformed {
                what: "code message size",
            });
        }
        Ok(CodeHeader { kind, token_id })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(MESSAGE_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.token_id.0);
    }

    /// Parses, then checks the token and the kind (`expected` names the
    /// receiver's state for the error).
    pub(crate) fn expect(
        bytes: &[u8],
        token: &TokenId,
        kind: CodeMessageKind,
        expected: &'static str,
    ) -> Result<Self, HandshakeError> {
        let h = Self::parse(bytes)?;
        if h.token_id != *token {
            return Err(HandshakeError::WrongSession);
        }
        if h.kind != kind {
            return Err(HandshakeError::UnexpectedCodeMessage {
                expected,
                got: h.kind,
            });
        }
        Ok(h)
    }
}

/// Whether `bytes` is the first byte pair of a code message (version 2,
/// kind 6–8): how a relay tells code messages from handshake messages.
pub fn is_code_message(bytes: &[u8]) -> bool {
    matches!(bytes, [MESSAGE_VERSION, k, ..] if CodeMessageKind::from_code(*k).is_some())
}

/// The parts of a CodeOffer, after [`CodeHeader::parse`] said it is one.
pub(crate) fn offer_parts(bytes: &[u8]) -> Option<(u32, [u8; PAKE_MESSAGE_LEN])> {
    let mut r = Reader::new(bytes.get(HEADER_LEN..)?);
    let handle = r.u32().ok()?;
    let pake = r.array().ok()?;
    r.is_empty().then_some((handle, pake))
}
