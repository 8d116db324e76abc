//! The numbers a client sees: [`Frame::Error`](crate::Frame::Error) codes and
//! WebSocket close codes (`docs/RELAY.md` has the tables).
//!
//! An error code is `100 × kind + detail`. The kind is the core's
//! [`ErrorKind`] (1 malformed … 8 misuse); detail 0 is a refusal by the core
//! itself (the ledger, the directory, a signed fact that did not verify), and
//! details 1–99 are the transport's own refusals, listed here as constants.

use devicelink::ErrorKind;

/// The hundreds digit of a kind's codes.
pub fn kind_number(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Malformed => 1,
        ErrorKind::Unauthenticated => 2,
        ErrorKind::Unexpected => 3,
        ErrorKind::Refused => 4,
        ErrorKind::Expired => 5,
        ErrorKind::Conflict => 6,
        ErrorKind::Unavailable => 7,
        ErrorKind::Misuse => 8,
        // A kind added to the core later: "other" until mapped here.
        _ => 9,
    }
}

/// The code of a refusal by the core, of kind `kind`.
pub fn core_code(kind: ErrorKind) -> u16 {
    kind_number(kind) * 100
}

/// The kind a code belongs to (`None` for codes outside 100–899).
pub fn code_kind(code: u16) -> Option<ErrorKind> {
    Some(match code / 100 {
        1 => ErrorKind::Malformed,
        2 => ErrorKind::Unauthenticated,
        3 => ErrorKind::Unexpected,
        4 => ErrorKind::Refused,
        5 => ErrorKind::Expired,
        6 => ErrorKind::Conflict,
        7 => ErrorKind::Unavailable,
        8 => ErrorKind::Misuse,
        _ => return None,
    })
}

/// The bytes are not a frame ([`FrameError`](crate::FrameError)); the
/// connection is closed with [`CLOSE_MALFORMED`].
pub const MALFORMED_FRAME: u16 = 101;
/// A WebSocket text message; closed with [`CLOSE_UNSUPPORTED`].
pub const TEXT_MESSAGE: u16 = 102;
/// A message larger than the limit; closed with [`CLOSE_TOO_BIG`].
pub const TOO_BIG: u16 = 103;
/// A Subscribe or ProveAccount on a connection that did not identify itself
/// (both are bound to a stable client id); the connection stays open.
pub const NOT_IDENTIFIED: u16 = 201;
/// A first device list of an account the relay does not know, from a
/// connection that did not prove the account key (`ProveAccount`); nothing
/// was stored, the connection stays open.
pub const ACCOUNT_PROOF_NEEDED: u16 = 202;
/// An Identify that is not the connection's first frame; the connection
/// stays open with the id it has.
pub const IDENTIFY_NOT_FIRST: u16 = 303;
/// A frame type this endpoint does not take (a relay-only type, or a
/// publication on the companion endpoint); the connection stays open.
pub const WRONG_FRAME: u16 = 301;
/// A handshake message of a kind this role does not send (a Request from a
/// primary, a Hello from a companion); the connection stays open.
pub const WRONG_KIND: u16 = 302;
/// More frames than the connection's rate allows; closed with
/// [`CLOSE_RATE_LIMITED`].
pub const RATE_LIMITED: u16 = 401;
/// A first device list of an account the relay does not know, from an
/// address that made it keep too many new accounts lately
/// (`--new-accounts-per-address-per-hour`); nothing was stored, the
/// connection stays open.
pub const NEW_ACCOUNTS_RATE: u16 = 402;
/// Nothing received within the idle timeout; closed with [`CLOSE_IDLE`].
pub const IDLE: u16 = 501;
/// The message's recipient is not connected (or was too slow to take it).
pub const PEER_GONE: u16 = 701;
/// The relay is shutting down; closed with [`CLOSE_GOING_AWAY`].
pub const SHUTTING_DOWN: u16 = 702;

/// Close: the relay is shutting down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close: a text message (RFC 6455 "unsupported data").
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close: a message over the size limit (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close: the relay failed (RFC 6455 "internal error").
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close: a frame that does not decode.
pub const CLOSE_MALFORMED: u16 = 4001;
/// Close: the client did not read its frames fast enough (its outbound
/// queue filled up, or a write timed out).
pub const CLOSE_SLOW_READER: u16 = 4002;
/// Close: nothing received within the idle timeout.
pub const CLOSE_IDLE: u16 = 4003;
/// Close: over the connection's frame rate.
pub const CLOSE_RATE_LIMITED: u16 = 4004;
/// Close: a newer connection identified as the same client (the client
/// reconnected elsewhere): this one is replaced.
pub const CLOSE_REPLACED: u16 = 4005;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_name_their_kind() {
        for kind in [
            ErrorKind::Malformed,
            ErrorKind::Unauthenticated,
            ErrorKind::Unexpected,
            ErrorKind::Refused,
            ErrorKind::Expired,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
            ErrorKind::Misuse,
        ] {
            assert_eq!(code_kind(core_code(kind)), Some(kind));
        }
        assert_eq!(code_kind(MALFORMED_FRAME), Some(ErrorKind::Malformed));
        assert_eq!(code_kind(WRONG_KIND), Some(ErrorKind::Unexpected));
        assert_eq!(code_kind(RATE_LIMITED), Some(ErrorKind::Refused));
        assert_eq!(code_kind(IDLE), Some(ErrorKind::Expired));
        assert_eq!(code_kind(PEER_GONE), Some(ErrorKind::Unavailable));
    }
}
