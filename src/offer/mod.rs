//! The pairing offer: what a companion shows as a QR code.
//!
//! An offer carries the companion's fresh X25519 public key and a 128-bit
//! secret behind a version byte, plus a 4-byte check. Its token id (how the
//! relay routes the exchange) is derived from those bytes, so it costs no QR
//! space: `digest = SHA-256("devicelink/v1 offer" || body)`, the check is
//! `digest[0..4]`, the *redemption proof* is `digest[16..32]`, and the token id
//! is `SHA-256("devicelink/v1 token id" || proof)[0..16]`. The scanning
//! primary puts the proof in its Hello, so the relay can check that whoever
//! redeems a token saw the QR code, while the token id alone (which the relay
//! learns when the companion registers) does not let anyone redeem it. The text form is `DL:` followed by 85 upper-case base32 characters:
//! 88 characters of the QR alphanumeric set, which fit QR version 4 at level M
//! (90 characters). See `docs/PROTOCOL.md` for the layout.
//!
//! [`OfferDisplay`] is the companion's display lifecycle: shown, rotated,
//! redeemed, expired, timed out or cancelled.

mod display;

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use ring::digest;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use display::{OfferDisplay, OfferEvent, OfferState, TokenError};

/// Version byte of the offer: the handshake version the companion speaks
/// (3 since protocol v2.1, whose messages carry the committed check code;
/// the layout is unchanged since 1, so a scanner refuses an offer of another
/// version up front with [`OfferError::UnsupportedVersion`]).
pub const OFFER_VERSION: u8 = 3;
/// Prefix of the offer text. Upper case, so the whole text stays in the QR
/// alphanumeric set.
pub const OFFER_PREFIX: &str = "DL:";
/// Length of the offer's secret (128 bits).
pub const OFFER_SECRET_LEN: usize = 16;
/// Bytes of the offer before its check: version, X25519 key, secret.
pub(crate) const OFFER_BODY_LEN: usize = 1 + 32 + OFFER_SECRET_LEN;
const CHECK_LEN: usize = 4;
/// Bytes of the encoded offer (body and check).
pub const OFFER_BYTES: usize = OFFER_BODY_LEN + CHECK_LEN;
/// Characters of the offer text (prefix and base32 body): 88.
pub const OFFER_TEXT_LEN: usize = 3 + (OFFER_BYTES * 8).div_ceil(5);

const OFFER_DIGEST_LABEL: &[u8] = b"devicelink/v1 offer";
const TOKEN_ID_LABEL: &[u8] = b"devicelink/v1 token id";

/// Why an offer text was refused. Every string decodes to an offer or to one
/// of these; none is retryable with the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The text does not start with [`OFFER_PREFIX`].
    #[error("not a devicelink offer (missing `DL:` prefix)")]
    MissingPrefix,
    /// The text has the wrong number of characters.
    #[error("offer text has {len} characters, expected {OFFER_TEXT_LEN}")]
    WrongLength {
        /// Characters found.
        len: usize,
    },
    /// A character outside upper-case base32, or non-canonical trailing bits.
    #[error("offer text is not canonical upper-case base32")]
    BadEncoding,
    /// An offer version this implementation does not speak.
    #[error("unsupported offer version {0}")]
    UnsupportedVersion(u8),
    /// The check bytes do not match: the text was altered or misread.
    #[error("offer check failed: the code was altered or misread")]
    CheckMismatch,
    /// The offer's X25519 key is a low-order point: the key exchange would
    /// not depend on the primary's key (a malicious or broken companion).
    #[error("offer key is a low-order point (non-contributory)")]
    WeakKey,
}

/// The relay's routing id for one offer (16 bytes), derived from the offer.
/// Every handshake message carries it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId(#[serde(with = "crate::encoding::b64_array")] pub(crate) [u8; 16]);

impl TokenId {
    /// The id's 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// An id from 16 bytes (as read from a message header by a relay).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TokenId(bytes)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE32_NOPAD.encode(&self.0))
    }
}

/// The public content of a pairing offer: what the QR code carries and what the
/// primary scans. Anyone who sees the QR code learns it; its secret is still
/// kept out of `Debug` and zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PairingOffer {
    ephemeral: [u8; 32],
    secret: [u8; OFFER_SECRET_LEN],
    #[zeroize(skip)]
    token_id: TokenId,
    #[zeroize(skip)]
    proof: RedemptionProof,
    #[zeroize(skip)]
    check: [u8; CHECK_LEN],
}

impl fmt::Debug for PairingOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingOffer")
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl PairingOffer {
    fn from_parts(ephemeral: [u8; 32], secret: [u8; OFFER_SECRET_LEN]) -> Self {
        let mut body = [0u8; OFFER_BODY_LEN];
        body[0] = OFFER_VERSION;
        body[1..33].copy_from_slice(&ephemeral);
        body[33..].copy_from_slice(&secret);
        let (check, proof) = offer_digest(&body);
        body.zeroize();
        PairingOffer {
            ephemeral,
            secret,
            token_id: proof.token_id(),
            proof,
            check,
        }
    }

    /// The token id the relay routes by.
    pub fn token_id(&self) -> TokenId {
        self.token_id
    }

    /// The redemption proof that the scanning primary shows the relay.
    pub fn redemption_proof(&self) -> RedemptionProof {
        self.proof
    }

    /// The companion's ephemeral X25519 public key.
    pub(crate) fn ephemeral(&self) -> &[u8; 32] {
        &self.ephemeral
    }

    /// The offer's 128-bit secret (the HKDF salt).
    pub(crate) fn secret(&self) -> &[u8; OFFER_SECRET_LEN] {
        &self.secret
    }

    /// The offer as its 53 bytes (version, key, secret, check).
    pub fn to_bytes(&self) -> [u8; OFFER_BYTES] {
        let mut out = [0u8; OFFER_BYTES];
        out[0] = OFFER_VERSION;
        out[1..33].copy_from_slice(&self.ephemeral);
        out[33..OFFER_BODY_LEN].copy_from_slice(&self.secret);
        out[OFFER_BODY_LEN..].copy_from_slice(&self.check);
        out
    }

    /// The QR text: `DL:` and 85 upper-case base32 characters.
    pub fn to_text(&self) -> String {
        let mut bytes = self.to_bytes();
        let mut text = String::with_capacity(OFFER_TEXT_LEN);
        text.push_str(OFFER_PREFIX);
        data_encoding::BASE32_NOPAD.encode_append(&bytes, &mut text);
        bytes.zeroize();
        text
    }

    /// Parses a scanned QR text. Total: any string gives an offer or a typed
    /// [`OfferError`]; the text must be exactly what [`PairingOffer::to_text`]
    /// produces (upper case, canonical, correct check).
    pub fn from_text(text: &str) -> Result<Self, OfferError> {
        let body = text
            .strip_prefix(OFFER_PREFIX)
            .ok_or(OfferError::MissingPrefix)?;
        if text.len() != OFFER_TEXT_LEN {
            return Err(OfferError::WrongLength {
                len: text.chars().count(),
            });
        }
        let mut bytes = data_encoding::BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| OfferError::BadEncoding)?;
        let parsed = Self::from_bytes(&bytes);
        bytes.zeroize();
        parsed
    }

    /// Parses the 53-byte binary form. Total, like [`PairingOffer::from_text`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OfferError> {
        let bytes: &[u8; OFFER_BYTES] = bytes
            .try_into()
            .map_err(|_| OfferError::WrongLength { len: bytes.len() })?;
        let (body, check) = bytes.split_at(OFFER_BODY_LEN);
        if body[0] != OFFER_VERSION {
            return Err(OfferError::UnsupportedVersion(body[0]));
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&body[1..33]);
        let mut secret = [0u8; OFFER_SECRET_LEN];
        secret.copy_from_slice(&body[33..]);
        let offer = PairingOffer::from_parts(ephemeral, secret);
        secret.zeroize();
        // The check is public (it is printed in the QR code): a plain comparison.
        if offer.check != check {
            return Err(OfferError::CheckMismatch);
        }
        Ok(offer)
    }
}

/// One SHA-256 gives the 4-byte check (first bytes) and the 16-byte
/// redemption proof (last bytes) of an offer body.
fn offer_digest(body: &[u8; OFFER_BODY_LEN]) -> ([u8; CHECK_LEN], RedemptionProof) {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(OFFER_DIGEST_LABEL);
    ctx.update(body);
    let d = ctx.finish();
    let d = d.as_ref();
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&d[..CHECK_LEN]);
    let mut proof = [0u8; 16];
    proof.copy_from_slice(&d[16..32]);
    (check, RedemptionProof(proof))
}

/// Proof that a party saw the QR code: the relay redeems a token only for the
/// proof that hashes to it. Revealed in the Hello, so it proves nothing after
/// the first redemption (which the ledger allows only once anyway).
#[derive(Clone, Copy)]
pub struct RedemptionProof(pub(crate) [u8; 16]);

/// Constant time: the proof is secret until a Hello carries it.
impl PartialEq for RedemptionProof {
    fn eq(&self, other: &Self) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }
}

impl Eq for RedemptionProof {}

impl RedemptionProof {
    /// The token id this proof redeems: `SHA-256("devicelink/v1 token id" || proof)[0..16]`.
    pub fn token_id(&self) -> TokenId {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(TOKEN_ID_LABEL);
        ctx.update(&self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&ctx.finish().as_ref()[..16]);
        TokenId(id)
    }

    /// The proof's 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A proof from 16 bytes (as read from a Hello).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        RedemptionProof(bytes)
    }
}

impl fmt::Debug for RedemptionProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedemptionProof(..)")
    }
}

/// The companion's private half of an offer: the ephemeral X25519 secret,
/// zeroized on drop. Persisting it (inside a saved companion state) persists a
/// secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "PersistedOfferKeys", from = "PersistedOfferKeys")]
pub(crate) struct OfferKeys {
    pub(crate) secret: StaticSecret,
    pub(crate) offer: PairingOffer,
}

impl fmt::Debug for OfferKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfferKeys")
            .field("offer", &self.offer)
            .finish_non_exhaustive()
    }
}

impl OfferKeys {
    /// A fresh offer: new X25519 ephemeral key and 128-bit secret from `rng`.
    pub(crate) fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let secret = StaticSecret::random_from_rng(&mut *rng);
        let mut salt = [0u8; OFFER_SECRET_LEN];
        rng.fill_bytes(&mut salt);
        let offer = PairingOffer::from_parts(PublicKey::from(&secret).to_bytes(), salt);
        salt.zeroize();
        OfferKeys { secret, offer }
    }
}

impl From<OfferKeys> for PersistedOfferKeys {
    fn from(k: OfferKeys) -> Self {
        PersistedOfferKeys {
            x25519_secret: k.secret.to_bytes(),
            offer_secret: *k.offer.secret(),
        }
    }
}

impl From<PersistedOfferKeys> for OfferKeys {
    fn from(p: PersistedOfferKeys) -> Self {
        let secret = StaticSecret::from(p.x25519_secret);
        let offer = PairingOffer::from_parts(PublicKey::from(&secret).to_bytes(), p.offer_secret);
        OfferKeys { secret, offer }
    }
}

/// Persisted form of `OfferKeys`: secret material.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct PersistedOfferKeys {
    #[serde(with = "crate::encoding::b64_array")]
    x25519_secret: [u8; 32],
    #[serde(with = "crate::encoding::b64_array")]
    offer_secret: [u8; OFFER_SECRET_LEN],
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn offer(seed: u64) -> PairingOffer {
        OfferKeys::generate(&mut ChaCha20Rng::seed_from_u64(seed))
            .offer
            .clone()
    }

    #[test]
    fn text_round_trips_and_has_fixed_length() {
        for seed in 0..50 {
            let o = offer(seed);
            let text = o.to_text();
            assert_eq!(text.len(), OFFER_TEXT_LEN);
            assert_eq!(OFFER_TEXT_LEN, 88);
            assert!(text.starts_with("DL:"));
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b':'));
            assert_eq!(PairingOffer::from_text(&text).unwrap(), o);
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let text = offer(1).to_text();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567:abcz01 ";
        for i in 0..text.len() {
            for c in alphabet.chars() {
                let mut altered: Vec<char> = text.chars().collect();
                if altered[i] == c {
                    continue;
                }
                altered[i] = c;
                let altered: String = altered.into_iter().collect();
                assert!(PairingOffer::from_text(&altered).is_err(), "{altered}");
            }
        }
    }

    #[test]
    fn typed_errors() {
        let text = offer(2).to_text();
        assert_eq!(PairingOffer::from_text(""), Err(OfferError::MissingPrefix));
        assert_eq!(
            PairingOffer::from_text(&text.to_lowercase()),
            Err(OfferError::MissingPrefix)
        );
        assert_eq!(
            PairingOffer::from_text(&text[..87]),
            Err(OfferError::WrongLength { len: 87 })
        );
        assert_eq!(
            PairingOffer::from_text(&format!("{text}A")),
            Err(OfferError::WrongLength { len: 89 })
        );
        let mut bytes = offer(2).to_bytes();
        bytes[0] = 9;
        assert_eq!(
            PairingOffer::from_bytes(&bytes),
            Err(OfferError::UnsupportedVersion(9))
        );
        bytes[0] = OFFER_VERSION;
        bytes[40] ^= 1;
        assert_eq!(
            PairingOffer::from_bytes(&bytes),
            Err(OfferError::CheckMismatch)
        );
        // Multi-byte characters never panic on slicing.
        assert!(PairingOffer::from_text("DL:é").is_err());
        assert!(PairingOffer::from_text(&format!("DL:{}", "é".repeat(42))).is_err());
    }

    #[test]
    fn token_id_depends_on_every_part() {
        let a = offer(3);
        let b = offer(4);
        assert_ne!(a.token_id(), b.token_id());
        assert_eq!(
            a.token_id(),
            PairingOffer::from_text(&a.to_text()).unwrap().token_id()
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let o = offer(5);
        let dbg = format!("{o:?}");
        assert!(!dbg.contains(&format!("{:?}", o.secret())));
        assert!(!dbg.contains(&o.to_text()[3..]));
    }
}
