//! Frames of the code endpoint (`/v1/code`): linking by typed code
//! (`docs/PROTOCOL.md` §13, `docs/RELAY.md`). One frame is one WebSocket
//! binary message: a type byte and a body of a size fixed by the type
//! (checked before any field is read). [`CodeFrame::decode`] is total.
//!
//! The endpoint is served by the same connection machinery as the others,
//! so it also takes the relay's own `Identify` and `ProveAccount` frames
//! ([`crate::Frame`]) and answers refusals with the relay's `Error` frame
//! (a code and a text): every frame a client sends gets exactly one answer,
//! in order. Type bytes `0x11`–`0x15` and `0x91`–`0x95` are this module's.

use devicelink::code::{is_code_message, CodeHandle, CodeHeader, CODE_OFFER_LEN};
use devicelink::handshake::MessageHeader;
use devicelink::{Timestamp, TokenId};

/// Whether `byte` is the type byte of a [`CodeFrame`] (and not of a
/// [`crate::Frame`]).
pub fn is_code_frame(byte: u8) -> bool {
    matches!(byte, 0x11..=0x15 | 0x91..=0x95)
}

/// A frame of the code endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeFrame<'a> {
    /// Companion → relay (`0x11`): issue me a handle.
    Open,
    /// Companion → relay (`0x12`): publish this CodeOffer (55 bytes).
    Publish(&'a [u8]),
    /// Primary → relay (`0x13`): join the session of this handle (u32).
    Join(CodeHandle),
    /// Either side (`0x14`): a code message or a later handshake message of
    /// the session (Request, Grant, Refusal, Confirm).
    Message(&'a [u8]),
    /// Either side (`0x15`): my core answered `WrongCode` for this session.
    WrongCode(TokenId),
    /// Relay → companion (`0x91`): the handle and when it ends.
    Opened {
        /// The handle to show.
        handle: CodeHandle,
        /// The session's end (exclusive).
        expires_at: Timestamp,
    },
    /// Relay → client (`0x92`): the Publish, Message or WrongCode was
    /// carried out.
    Ok,
    /// Relay → primary (`0x93`): the CodeOffer of the joined session.
    Offer(&'a [u8]),
    /// Relay → client (`0x94`): a message from the session's other side.
    Routed(&'a [u8]),
    /// Relay → companion (`0x95`): the code of this session was spent
    /// without a guess reaching the companion (the joiner gave up or stayed
    /// silent past the hello window): show a new code under the same handle.
    Spent(TokenId),
}

/// Why bytes are not a code frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeFrameError {
    /// No bytes, or an unknown type byte.
    #[error("unknown code frame type")]
    UnknownType,
    /// The body's size does not fit the type.
    #[error("code frame of {len} bytes has the wrong size for its type")]
    WrongSize {
        /// Bytes received.
        len: usize,
    },
    /// A field is invalid (a handle over 20 bits, a message whose header
    /// does not parse or whose size does not fit its kind).
    #[error("invalid code frame field: {0}")]
    Invalid(&'static str),
}

fn message_ok(m: &[u8]) -> bool {
    if is_code_message(m) {
        CodeHeader::parse(m).is_ok()
    } else {
        MessageHeader::parse(m).is_ok_and(|h| h.check_size(m).is_ok())
    }
}

impl<'a> CodeFrame<'a> {
    /// Decodes one frame. Total; sizes are checked first.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CodeFrameError> {
        let (&t, body) = bytes.split_first().ok_or(CodeFrameError::UnknownType)?;
        let size = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(CodeFrameError::WrongSize { len: bytes.len() })
            }
        };
        let u32_of = |b: &[u8]| -> Result<u32, CodeFrameError> {
            <[u8; 4]>::try_from(b)
                .map(u32::from_be_bytes)
                .map_err(|_| CodeFrameError::WrongSize { len: bytes.len() })
        };
        Ok(match t {
            0x11 => {
                size(body.is_empty())?;
                CodeFrame::Open
            }
            0x12 => {
                size(body.len() == CODE_OFFER_LEN)?;
                CodeFrame::Publish(body)
            }
            0x13 => CodeFrame::Join(
                CodeHandle::new(u32_of(body)?).ok_or(CodeFrameError::Invalid("handle"))?,
            ),
            0x14 | 0x94 => {
                size(body.len() <= devicelink::handshake::MessageKind::MAX_LEN)?;
                if !message_ok(body) {
                    return Err(CodeFrameError::Invalid("message"));
                }
                if t == 0x14 {
                    CodeFrame::Message(body)
                } else {
                    CodeFrame::Routed(body)
                }
            }
            0x15 | 0x95 => {
                let id = <[u8; 16]>::try_from(body)
                    .map_err(|_| CodeFrameError::WrongSize { len: bytes.len() })?;
                let token = TokenId::from_bytes(id);
                if t == 0x15 {
                    CodeFrame::WrongCode(token)
                } else {
                    CodeFrame::Spent(token)
                }
            }
            0x91 => {
                size(body.len() == 12)?;
                let handle = CodeHandle::new(u32_of(&body[..4])?)
                    .ok_or(CodeFrameError::Invalid("handle"))?;
                let mut at = [0u8; 8];
                at.copy_from_slice(&body[4..]);
                CodeFrame::Opened {
                    handle,
                    expires_at: Timestamp::from_unix_millis(u64::from_be_bytes(at)),
                }
            }
            0x92 => {
                size(body.is_empty())?;
                CodeFrame::Ok
            }
            0x93 => {
                size(body.len() == CODE_OFFER_LEN)?;
                CodeFrame::Offer(body)
            }
            _ => return Err(CodeFrameError::UnknownType),
        })
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let (t, body): (u8, Vec<u8>) = match self {
            CodeFrame::Open => (0x11, Vec::new()),
            CodeFrame::Publish(b) => (0x12, b.to_vec()),
            CodeFrame::Join(h) => (0x13, h.to_bytes().to_vec()),
            CodeFrame::Message(b) => (0x14, b.to_vec()),
            CodeFrame::WrongCode(t) => (0x15, t.to_bytes().to_vec()),
            CodeFrame::Opened { handle, expires_at } => (
                0x91,
                [
                    &handle.to_bytes()[..],
                    &expires_at.as_unix_millis().to_be_bytes(),
                ]
                .concat(),
            ),
            CodeFrame::Ok => (0x92, Vec::new()),
            CodeFrame::Offer(b) => (0x93, b.to_vec()),
            CodeFrame::Routed(b) => (0x94, b.to_vec()),
            CodeFrame::Spent(t) => (0x95, t.to_bytes().to_vec()),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(t);
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_is_total_and_round_trips() {
        for f in [
            CodeFrame::Open,
            CodeFrame::Join(CodeHandle::new(77).unwrap()),
            CodeFrame::WrongCode(TokenId::from_bytes([3; 16])),
            CodeFrame::Opened {
                handle: CodeHandle::new(5).unwrap(),
                expires_at: Timestamp::from_unix_millis(9),
            },
            CodeFrame::Ok,
            CodeFrame::Spent(TokenId::from_bytes([4; 16])),
        ] {
            let bytes = f.encode();
            assert!(is_code_frame(bytes[0]));
            assert_eq!(CodeFrame::decode(&bytes).unwrap(), f);
        }
        // The relay's own frame types are not code frames, and the other
        // way round.
        for b in 0u8..=255 {
            if is_code_frame(b) {
                assert_eq!(crate::FrameType::from_byte(b), None, "{b:#04x}");
            }
        }
        assert_eq!(CodeFrame::decode(&[]), Err(CodeFrameError::UnknownType));
        assert!(CodeFrame::decode(&[0x13, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(CodeFrame::decode(&[0x14, 2, 7]).is_err());
        assert!(CodeFrame::decode(&[0x12; 10]).is_err());
        for n in 0..300 {
            let v: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = CodeFrame::decode(&v);
        }
    }
}
