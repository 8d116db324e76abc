//! The relay's frames: one byte of frame type, then a type-specific body.
//! One frame is one WebSocket binary message (`docs/RELAY.md`).
//!
//! [`Frame::decode`] is total: it returns a frame or a typed [`FrameError`],
//! and checks the exact size (or the size range) of the frame's type before
//! it reads a body field. It borrows the variable-size bodies from the input,
//! so nothing is copied; a handshake message is accepted only if its core
//! header parses and its length fits its kind
//! ([`MessageHeader::check_size`]), so the relay never keeps a message of the
//! wrong size. Signatures are not checked here: a published list or
//! heartbeat goes through [`SignedDeviceList::from_bytes`] /
//! [`PrimaryHeartbeat::from_bytes`] before anything is applied.
//!
//! [`SignedDeviceList::from_bytes`]: devicelink::SignedDeviceList::from_bytes
//! [`PrimaryHeartbeat::from_bytes`]: devicelink::PrimaryHeartbeat::from_bytes

use devicelink::certificate::{DeviceIndex, HEARTBEAT_LEN};
use devicelink::handshake::{MessageHeader, MessageKind, HEADER_LEN, MESSAGE_VERSION};
use devicelink::relay::{AccountProof, HelloDigest, SubscriptionProof, SUBSCRIPTION_PROOF_LEN};

use crate::identity::ClientSecret;
use devicelink::{AccountId, HandshakeError, LogoutReason, Timestamp, TokenId};

/// Bytes of the smallest and largest encoded [`devicelink::SignedDeviceList`]
/// (the core's bounds, re-exported for the frame table).
pub use devicelink::certificate::{MAX_LIST_LEN, MIN_LIST_LEN};
/// Most bytes of an [`Frame::Error`]'s text.
pub const MAX_ERROR_TEXT: usize = 256;
/// The largest frame: the type byte and the largest body (a Grant, which
/// carries the largest list).
pub const MAX_FRAME_LEN: usize = 1 + max(MessageKind::MAX_LEN, MAX_LIST_LEN);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The first byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Companion → relay: announce a token.
    Register = 0x01,
    /// Companion → relay: the Hello was refused; reopen the token.
    Release = 0x02,
    /// Either side: a core handshake message.
    Message = 0x03,
    /// Primary → relay: the account's signed device list.
    PublishList = 0x04,
    /// Primary → relay: a signed heartbeat.
    PublishHeartbeat = 0x05,
    /// Companion → relay: push this account's facts and this device's logout.
    Subscribe = 0x06,
    /// Client → relay, as a connection's first frame: the secret the
    /// client's stable id derives from (a reconnecting client keeps its
    /// tokens and its mailbox).
    Identify = 0x07,
    /// Client → relay: proof of an account key for this connection's
    /// (identified) client id, asked before the relay keeps an account it
    /// does not know and before a code join counts against an account.
    ProveAccount = 0x08,
    /// Relay → client: a message was forwarded.
    Routed = 0x81,
    /// Relay → client: a refusal.
    Error = 0x82,
    /// Relay → companion: the device was logged out.
    Logout = 0x83,
    /// Relay → client: a Register, Release, Subscribe or publication was
    /// carried out.
    Ack = 0x84,
}

impl FrameType {
    /// The type of a first byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => FrameType::Register,
            0x02 => FrameType::Release,
            0x03 => FrameType::Message,
            0x04 => FrameType::PublishList,
            0x05 => FrameType::PublishHeartbeat,
            0x06 => FrameType::Subscribe,
            0x07 => FrameType::Identify,
            0x08 => FrameType::ProveAccount,
            0x81 => FrameType::Routed,
            0x82 => FrameType::Error,
            0x83 => FrameType::Logout,
            0x84 => FrameType::Ack,
            _ => return None,
        })
    }

    /// The shortest and longest frame of this type, type byte included.
    /// For [`FrameType::Message`] the range is the union over the kinds;
    /// the decoder then checks the message's own kind.
    pub fn size_range(self) -> (usize, usize) {
        let (min, max) = match self {
            FrameType::Register => (16 + 8, 16 + 8),
            FrameType::Release => (16 + 32, 16 + 32),
            FrameType::Message => (HEADER_LEN, MessageKind::MAX_LEN),
            FrameType::PublishList => (MIN_LIST_LEN, MAX_LIST_LEN),
            FrameType::PublishHeartbeat => (HEARTBEAT_LEN, HEARTBEAT_LEN),
            // With or without the version the companion holds.
            FrameType::Subscribe => (
                32 + 4 + SUBSCRIPTION_PROOF_LEN,
                32 + 4 + SUBSCRIPTION_PROOF_LEN + 8,
            ),
            FrameType::Identify => (32, 32),
            FrameType::ProveAccount => (32 + SUBSCRIPTION_PROOF_LEN, 32 + SUBSCRIPTION_PROOF_LEN),
            FrameType::Routed => (HEADER_LEN, HEADER_LEN),
            FrameType::Error => (2, 2 + MAX_ERROR_TEXT),
            FrameType::Logout => (4 + 1, 4 + 1),
            FrameType::Ack => (2, 2),
        };
        (1 + min, 1 + max)
    }

    /// Whether only the relay sends this type.
    pub fn is_from_relay(self) -> bool {
        (self as u8) & 0x80 != 0
    }
}

/// Why a frame was refused. Nothing was kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No byte at all.
    #[error("empty frame")]
    Empty,
    /// The first byte names no frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The frame's length is outside its type's range.
    #[error("{frame:?} frame of {len} bytes; expected {min}..={max}")]
    WrongSize {
        /// The frame's type.
        frame: FrameType,
        /// Its length, type byte included.
        len: usize,
        /// The shortest valid length.
        min: usize,
        /// The longest valid length.
        max: usize,
    },
    /// A handshake message whose header does not parse or whose length does
    /// not fit its kind.
    #[error("bad handshake message: {0}")]
    BadMessage(#[from] HandshakeError),
    /// An error text that is not UTF-8.
    #[error("error text is not UTF-8")]
    BadText,
    /// A logout reason code no version defines.
    #[error("unknown logout reason {0}")]
    UnknownReason(u8),
    /// An acknowledgement of no frame type, or a flag other than 0 or 1.
    #[error("bad acknowledgement")]
    BadAck,
}

/// One frame. Variable-size bodies borrow from the decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Companion → relay: the token of the offer it shows, valid until
    /// `expires_at` (the relay clamps it).
    Register {
        /// The offer's token.
        token_id: TokenId,
        /// The offer's end.
        expires_at: Timestamp,
    },
    /// Companion → relay: it refused the Hello whose digest is `hello`,
    /// which reserved `token_id`.
    Release {
        /// The token.
        token_id: TokenId,
        /// The refused Hello's digest ([`HelloDigest::of`] its bytes): only
        /// that Hello's reservation is released.
        hello: HelloDigest,
    },
    /// Either side: a core handshake message, its header parsed and its size
    /// checked for its kind.
    Message {
        /// The message's routing header.
        header: MessageHeader,
        /// The whole message.
        bytes: &'a [u8],
    },
    /// Primary → relay: a signed device list (signature not yet checked).
    PublishList {
        /// The list's wire bytes.
        bytes: &'a [u8],
    },
    /// Primary → relay: a signed heartbeat (signature not yet checked).
    PublishHeartbeat {
        /// The heartbeat's wire bytes.
        bytes: &'a [u8],
    },
    /// Companion → relay: send me every list and heartbeat the relay applies
    /// for `account`, and a [`Frame::Logout`] when device `index` is logged
    /// out (by a list that drops it, or by the primary-offline sweep).
    Subscribe {
        /// The account the companion is linked to.
        account: AccountId,
        /// The companion's device index in it.
        index: DeviceIndex,
        /// The device's signature allowing this connection's client id to
        /// subscribe ([`SubscriptionProof::sign`]).
        proof: SubscriptionProof,
        /// The list version the companion holds (protocol v2.1, 8 more
        /// bytes): the relay then sends every newer version it keeps, in
        /// order, so a holder that missed versions while away can chain
        /// them; without it, only the newest list.
        after: Option<u64>,
    },
    /// Client → relay, as the connection's first frame: the connection's
    /// client id is [`ClientSecret::client_id`] of `secret`.
    Identify {
        /// The client's secret (never sent anywhere but to the relay).
        secret: ClientSecret,
    },
    /// Client → relay: this connection's client id may act for `account`
    /// ([`AccountProof::sign`] by the account key over the client id; the
    /// connection must have identified).
    ProveAccount {
        /// The account.
        account: AccountId,
        /// The account key's signature over the client id.
        proof: AccountProof,
    },
    /// Relay → sender: the message with this header was forwarded.
    Routed {
        /// The forwarded message's header.
        header: MessageHeader,
    },
    /// Relay → client: a refusal, with a code and a readable text.
    Error {
        /// A stable code (`docs/RELAY.md`).
        code: u16,
        /// For people; at most [`MAX_ERROR_TEXT`] bytes.
        text: &'a str,
    },
    /// Relay → client: the frame of type `of` was carried out; `changed`
    /// says whether it changed anything (a publication of an old or repeated
    /// list is acknowledged with `changed: false`).
    Ack {
        /// The acknowledged frame's type.
        of: FrameType,
        /// Whether it changed the relay's state.
        changed: bool,
    },
    /// Relay → companion: the device at `index` was logged out.
    Logout {
        /// The device's index.
        index: DeviceIndex,
        /// Why.
        reason: LogoutReason,
    },
}

fn array<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = body.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

impl<'a> Frame<'a> {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Register { .. } => FrameType::Register,
            Frame::Release { .. } => FrameType::Release,
            Frame::Message { .. } => FrameType::Message,
            Frame::PublishList { .. } => FrameType::PublishList,
            Frame::PublishHeartbeat { .. } => FrameType::PublishHeartbeat,
            Frame::Subscribe { .. } => FrameType::Subscribe,
            Frame::Identify { .. } => FrameType::Identify,
            Frame::ProveAccount { .. } => FrameType::ProveAccount,
            Frame::Routed { .. } => FrameType::Routed,
            Frame::Error { .. } => FrameType::Error,
            Frame::Logout { .. } => FrameType::Logout,
            Frame::Ack { .. } => FrameType::Ack,
        }
    }

    /// Decodes one frame. Total: the type's size range is checked first
    /// (so at most [`MAX_FRAME_LEN`] bytes are ever read), then the body.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let (&first, body) = bytes.split_first().ok_or(FrameError::Empty)?;
        let frame = FrameType::from_byte(first).ok_or(FrameError::UnknownType(first))?;
        let (min, max) = frame.size_range();
        // A Subscribe has one of its two sizes (with or without `after`).
        let between = frame == FrameType::Subscribe && bytes.len() != min && bytes.len() != max;
        if bytes.len() < min || bytes.len() > max || between {
            return Err(FrameError::WrongSize {
                frame,
                len: bytes.len(),
                min,
                max,
            });
        }
        Ok(match frame {
            FrameType::Register => Frame::Register {
                token_id: TokenId::from_bytes(array(body, 0)),
                expires_at: Timestamp::from_unix_millis(u64::from_be_bytes(array(body, 16))),
            },
            FrameType::Release => Frame::Release {
                token_id: TokenId::from_bytes(array(body, 0)),
                hello: HelloDigest::from_bytes(array(body, 16)),
            },
            FrameType::Message => {
                let header = MessageHeader::parse(body)?;
                header.check_size(body)?;
                Frame::Message {
                    header,
                    bytes: body,
                }
            }
            FrameType::PublishList => Frame::PublishList { bytes: body },
            FrameType::PublishHeartbeat => Frame::PublishHeartbeat { bytes: body },
            FrameType::Subscribe => Frame::Subscribe {
                account: AccountId::from_bytes(array(body, 0)),
                index: DeviceIndex(u32::from_be_bytes(array(body, 32))),
                proof: SubscriptionProof::from_bytes(array(body, 36)),
                after: (body.len() == 36 + SUBSCRIPTION_PROOF_LEN + 8)
                    .then(|| u64::from_be_bytes(array(body, 36 + SUBSCRIPTION_PROOF_LEN))),
            },
            FrameType::Identify => Frame::Identify {
                secret: ClientSecret::from_bytes(array(body, 0)),
            },
            FrameType::ProveAccount => Frame::ProveAccount {
                account: AccountId::from_bytes(array(body, 0)),
                proof: AccountProof::from_bytes(array(body, 32)),
            },
            FrameType::Routed => Frame::Routed {
                header: MessageHeader::parse(body)?,
            },
            FrameType::Error => {
                let code = u16::from_be_bytes(array(body, 0));
                let text = body.get(2..).unwrap_or_default();
                Frame::Error {
                    code,
                    text: std::str::from_utf8(text).map_err(|_| FrameError::BadText)?,
                }
            }
            FrameType::Logout => {
                let index = DeviceIndex(u32::from_be_bytes(array(body, 0)));
                let code = body.get(4).copied().unwrap_or(0);
                Frame::Logout {
                    index,
                    reason: LogoutReason::from_code(code).ok_or(FrameError::UnknownReason(code))?,
                }
            }
            FrameType::Ack => {
                let of = body.first().copied().and_then(FrameType::from_byte);
                let changed = match body.get(1) {
                    Some(0) => false,
                    Some(1) => true,
                    _ => return Err(FrameError::BadAck),
                };
                Frame::Ack {
                    of: of.ok_or(FrameError::BadAck)?,
                    changed,
                }
            }
        })
    }

    /// Appends the frame's encoding to `out`. An error text longer than
    /// [`MAX_ERROR_TEXT`] bytes is cut at the last character boundary that
    /// fits; every other frame decodes back to itself.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.frame_type() as u8);
        match self {
            Frame::Register {
                token_id,
                expires_at,
            } => {
                out.extend_from_slice(&token_id.to_bytes());
                out.extend_from_slice(&expires_at.as_unix_millis().to_be_bytes());
            }
            Frame::Release { token_id, hello } => {
                out.extend_from_slice(&token_id.to_bytes());
                out.extend_from_slice(&hello.to_bytes());
            }
            Frame::Message { bytes, .. }
            | Frame::PublishList { bytes }
            | Frame::PublishHeartbeat { bytes } => out.extend_from_slice(bytes),
            Frame::Subscribe {
                account,
                index,
                proof,
                after,
            } => {
                out.extend_from_slice(&account.to_bytes());
                out.extend_from_slice(&index.0.to_be_bytes());
                out.extend_from_slice(&proof.to_bytes());
                if let Some(v) = after {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Frame::Identify { secret } => out.extend_from_slice(secret.as_bytes()),
            Frame::ProveAccount { account, proof } => {
                out.extend_from_slice(&account.to_bytes());
                out.extend_from_slice(&proof.to_bytes());
            }
            Frame::Routed { header } => {
                out.push(MESSAGE_VERSION);
                out.push(header.kind.code());
                out.extend_from_slice(&header.token_id.to_bytes());
            }
            Frame::Error { code, text } => {
                out.extend_from_slice(&code.to_be_bytes());
                let mut end = text.len().min(MAX_ERROR_TEXT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(text.as_bytes().get(..end).unwrap_or_default());
            }
            Frame::Logout { index, reason } => {
                out.extend_from_slice(&index.0.to_be_bytes());
                out.push(reason.code());
            }
            Frame::Ack { of, changed } => {
                out.push(*of as u8);
                out.push(u8::from(*changed));
            }
        }
    }

    /// The frame's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devicelink::certificate::{
        DeviceListDraft, DeviceListEntry, RemovedDevice, MAX_LIST_DEVICES, MAX_LIST_REMOVED,
    };
    use devicelink::label::MAX_LABEL_LEN;
    use devicelink::{AccountKey, DeviceIdentity, DeviceLabel, SignedDeviceList};
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn message(kind: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0] = MESSAGE_VERSION;
        m[1] = kind;
        m
    }

    #[test]
    fn list_bounds_are_the_core_ones() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let key = AccountKey::generate(&mut rng);
        let label = DeviceLabel::new("x".repeat(MAX_LABEL_LEN)).unwrap();
        let devices = (1..=MAX_LIST_DEVICES as u32)
            .map(|i| {
                let d = DeviceIdentity::generate(&mut rng).device_key();
                DeviceListEntry::new(DeviceIndex(i), d, label.clone(), Timestamp::EPOCH)
            })
            .collect();
        let mut draft = DeviceListDraft::new(1, devices);
        draft.removed = (0..MAX_LIST_REMOVED as u32)
            .map(|i| RemovedDevice {
                index: DeviceIndex(1000 + i),
                reason: LogoutReason::Revoked,
            })
            .collect();
        let big = SignedDeviceList::sign(&key, &draft, Timestamp::EPOCH).to_bytes();
        assert_eq!(big.len(), MAX_LIST_LEN);
        let small =
            SignedDeviceList::sign(&key, &DeviceListDraft::new(1, vec![]), Timestamp::EPOCH)
                .to_bytes();
        assert_eq!(small.len(), MIN_LIST_LEN);
        // A Grant carries a 4-byte index and a list, so it is the largest frame.
        const { assert!(MessageKind::MAX_LEN > MAX_LIST_LEN) };
        assert_eq!(MAX_FRAME_LEN, 1 + MessageKind::MAX_LEN);
        let mut f = vec![FrameType::PublishList as u8];
        f.extend_from_slice(&big);
        assert_eq!(Frame::decode(&f), Ok(Frame::PublishList { bytes: &big }));
        f.push(0);
        assert!(matches!(
            Frame::decode(&f),
            Err(FrameError::WrongSize { .. })
        ));
    }

    #[test]
    fn sizes_are_checked_per_kind_before_anything_is_kept() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[0x7f]), Err(FrameError::UnknownType(0x7f)));
        for (kind, k) in [
            (MessageKind::Hello, 1u8),
            (MessageKind::Request, 2),
            (MessageKind::Grant, 3),
            (MessageKind::Refusal, 4),
            (MessageKind::Confirm, 5),
        ] {
            let (min, max) = kind.size_range();
            for len in [min - 1, min, max, max + 1] {
                let mut f = vec![FrameType::Message as u8];
                f.extend_from_slice(&message(k, len));
                let r = Frame::decode(&f);
                if (min..=max).contains(&len) {
                    let Ok(Frame::Message { header, bytes }) = r else {
                        panic!("{kind:?} {len}: {r:?}")
                    };
                    assert_eq!(header.kind, kind);
                    assert_eq!(bytes.len(), len);
                    assert_eq!(Frame::decode(&Frame::Message { header, bytes }.encode()), r);
                } else {
                    assert!(r.is_err(), "{kind:?} {len}");
                }
            }
        }
        // Exact sizes of the fixed frames.
        assert!(matches!(
            Frame::decode(&[1; 24]),
            Err(FrameError::WrongSize {
                frame: FrameType::Register,
                len: 24,
                min: 25,
                max: 25
            })
        ));
        let mut hb = vec![FrameType::PublishHeartbeat as u8];
        hb.resize(HEARTBEAT_LEN, 0);
        assert!(Frame::decode(&hb).is_err());
        hb.push(0);
        assert!(Frame::decode(&hb).is_ok());
        assert_eq!(
            Frame::decode(&[0x83, 0, 0, 0, 1, 9]),
            Err(FrameError::UnknownReason(9))
        );
        assert_eq!(Frame::decode(&[0x82, 0, 1, 0xff]), Err(FrameError::BadText));
        assert!(FrameType::Error.is_from_relay() && !FrameType::Message.is_from_relay());
    }

    #[test]
    fn long_error_text_is_cut_at_a_char_boundary() {
        let text = "é".repeat(200);
        let bytes = Frame::Error {
            code: 7,
            text: &text,
        }
        .encode();
        assert_eq!(bytes.len(), 3 + MAX_ERROR_TEXT);
        let Ok(Frame::Error { code: 7, text: cut }) = Frame::decode(&bytes) else {
            panic!()
        };
        assert_eq!(cut, "é".repeat(MAX_ERROR_TEXT / 2));
    }

    fn reason() -> impl Strategy<Value = LogoutReason> {
        (1u8..=5).prop_map(|c| LogoutReason::from_code(c).unwrap())
    }

    fn owned_frame() -> impl Strategy<Value = (u8, Vec<u8>, u64, u16, String, u32, LogoutReason)> {
        (
            0u8..12,
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u64>(),
            any::<u16>(),
            "\\PC{0,80}",
            any::<u32>(),
            reason(),
        )
    }

    proptest! {
        #[test]
        fn frames_round_trip((which, raw, n, code, text, index, reason) in owned_frame()) {
            let token_id = TokenId::from_bytes(array(&raw, 0));
            let kinds = [MessageKind::Hello, MessageKind::Request, MessageKind::Grant, MessageKind::Refusal, MessageKind::Confirm];
            let kind = kinds[(n % 5) as usize];
            let (min, max) = kind.size_range();
            let len = min + (n as usize) % (max - min + 1);
            let mut msg = message(kind.code(), len);
            msg[2..18].copy_from_slice(&token_id.to_bytes());
            let header = MessageHeader::parse(&msg).unwrap();
            let mut list = raw.clone();
            list.resize(MIN_LIST_LEN + raw.len(), 0);
            let mut hb = raw.clone();
            hb.resize(HEARTBEAT_LEN, 1);
            let frame = match which {
                0 => Frame::Register { token_id, expires_at: Timestamp::from_unix_millis(n) },
                1 => Frame::Release { token_id, hello: HelloDigest::from_bytes(array(&raw, 16)) },
                2 => Frame::Message { header, bytes: &msg },
                3 => Frame::PublishList { bytes: &list },
                4 => Frame::PublishHeartbeat { bytes: &hb },
                5 => Frame::Routed { header },
                6 => Frame::Error { code, text: &text },
                8 => Frame::Ack { of: FrameType::from_byte(raw.first().copied().unwrap_or(1) % 8 + 1).unwrap(), changed: n % 2 == 0 },
                7 => Frame::Subscribe { account: AccountId::from_bytes(array(&raw, 0)), index: DeviceIndex(index), proof: SubscriptionProof::from_bytes(array(&raw, 32)), after: (n % 2 == 0).then_some(n) },
                10 => Frame::Identify { secret: ClientSecret::from_bytes(array(&raw, 8)) },
                11 => Frame::ProveAccount { account: AccountId::from_bytes(array(&raw, 0)), proof: devicelink::relay::AccountProof::from_bytes(array(&raw, 32)) },
                _ => Frame::Logout { index: DeviceIndex(index), reason },
            };
            let bytes = frame.encode();
            prop_assert!(bytes.len() <= MAX_FRAME_LEN);
            prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
        }

        #[test]
        fn decode_is_total_and_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(frame) = Frame::decode(&bytes) {
                prop_assert_eq!(frame.encode(), bytes);
            }
        }
    }
}
