//! The code flow's key schedule: SPAKE2 (the `spake2` crate) on the typed
//! code, bound to the handle, then the same [`SessionKeys`] as the QR flow.
//!
//! ```text
//! id_c  = "devicelink/v2 code companion" ‖ handle(4)     SPAKE2 idA
//! id_p  = "devicelink/v2 code primary"   ‖ handle(4)     SPAKE2 idB
//! pw    = code (5 bytes)
//! m_c   = SPAKE2 A message (33 bytes), m_p = SPAKE2 B message (33 bytes)
//! k     = SPAKE2 key (32 bytes)
//! token = SHA-256("devicelink/v2 code token" ‖ handle ‖ m_c)[0..16]
//! th    = SHA-256("devicelink/v2 code transcript" ‖ token ‖ handle ‖ m_c ‖ m_p)
//! keys  = SessionKeys::derive(dh = k, salt = "devicelink/v2 code", th)   (as §4)
//! k_c   = HKDF-Expand(prk, "devicelink/v2 code confirm" ‖ th, 32)
//! ```

use curve25519_dalek::edwards::CompressedEdwardsY;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use ring::{digest, hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::messages::PAKE_MESSAGE_LEN;
use super::text::{CodeHandle, LinkCode};
use crate::handshake::schedule::SessionKeys;
use crate::offer::TokenId;

pub(crate) const ID_COMPANION: &[u8] = b"devicelink/v2 code companion";
pub(crate) const ID_PRIMARY: &[u8] = b"devicelink/v2 code primary";
pub(crate) const TOKEN_LABEL: &[u8] = b"devicelink/v2 code token";
pub(crate) const TRANSCRIPT_LABEL: &[u8] = b"devicelink/v2 code transcript";
pub(crate) const SALT: &[u8] = b"devicelink/v2 code";
pub(crate) const CONFIRM_LABEL: &[u8] = b"devicelink/v2 code confirm";

/// The seed of the companion's SPAKE2 scalar: `spake2`'s state cannot be
/// saved, so it is rebuilt from this seed (ChaCha20, RFC 8439 keystream)
/// inside each call and never outlives it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub(crate) struct PakeSeed(#[serde(with = "crate::encoding::b64_array")] pub(crate) [u8; 32]);

impl std::fmt::Debug for PakeSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PakeSeed(..)")
    }
}

impl PakeSeed {
    pub(crate) fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        PakeSeed(s)
    }
}

fn identities(handle: CodeHandle) -> (Identity, Identity) {
    let h = handle.to_bytes();
    (
        Identity::new(&[ID_COMPANION, &h].concat()),
        Identity::new(&[ID_PRIMARY, &h].concat()),
    )
}

fn to_array<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    <[u8; N]>::try_from(v).ok()
}

/// The companion's live SPAKE2 state between showing the code and the
/// CodeHello, kept in memory only (`spake2`'s state cannot be saved or
/// cloned): a clone or a restored companion has none and rebuilds it from
/// the seed, with the same result.
#[derive(Default)]
pub(crate) struct PakeCache(Option<Spake2<Ed25519Group>>);

impl Clone for PakeCache {
    fn clone(&self) -> Self {
        PakeCache(None)
    }
}

impl std::fmt::Debug for PakeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PakeCache(..)")
    }
}

/// The companion's SPAKE2 state and message, rebuilt from `seed`.
fn companion_state(
    code: &LinkCode,
    handle: CodeHandle,
    seed: &PakeSeed,
) -> (Spake2<Ed25519Group>, [u8; PAKE_MESSAGE_LEN]) {
    let (id_c, id_p) = identities(handle);
    let pw = Password::new(code.as_bytes());
    let rng = rand_chacha::ChaCha20Rng::from_seed(seed.0);
    let (state, msg) = Spake2::<Ed25519Group>::start_a_with_rng(&pw, &id_c, &id_p, rng);
    (state, to_array(&msg).unwrap_or([0; PAKE_MESSAGE_LEN]))
}

/// The companion's SPAKE2 message for `code` under `handle`.
pub(crate) fn companion_message(
    code: &LinkCode,
    handle: CodeHandle,
    seed: &PakeSeed,
) -> [u8; PAKE_MESSAGE_LEN] {
    companion_state(code, handle, seed).1
}

/// The companion's SPAKE2 message, keeping the state in `cache`.
pub(crate) fn companion_start(
    code: &LinkCode,
    handle: CodeHandle,
    seed: &PakeSeed,
    cache: &mut PakeCache,
) -> [u8; PAKE_MESSAGE_LEN] {
    let (state, msg) = companion_state(code, handle, seed);
    cache.0 = Some(state);
    msg
}

/// A SPAKE2 message's point is a valid Edwards point in the prime-order
/// subgroup (no small-order component). `spake2` 0.4 does not clear the
/// cofactor (RFC 9382 §4 does), so both sides refuse such points first.
pub(crate) fn point_ok(msg: &[u8; PAKE_MESSAGE_LEN], side: u8) -> bool {
    if msg[0] != side {
        return false;
    }
    let mut p = [0u8; 32];
    p.copy_from_slice(&msg[1..]);
    CompressedEdwardsY(p)
        .decompress()
        .is_some_and(|e| e.is_torsion_free() && !e.is_small_order())
}

/// SPAKE2 side bytes (`'A'` companion, `'B'` primary).
pub(crate) const SIDE_COMPANION: u8 = 0x41;
pub(crate) const SIDE_PRIMARY: u8 = 0x42;

/// The companion finishes SPAKE2 with the primary's message: the key, or
/// `None` if the message is not a valid point.
pub(crate) fn companion_finish(
    code: &LinkCode,
    handle: CodeHandle,
    seed: &PakeSeed,
    cache: &mut PakeCache,
    primary_msg: &[u8; PAKE_MESSAGE_LEN],
) -> Option<Zeroizing<[u8; 32]>> {
    if !point_ok(primary_msg, SIDE_PRIMARY) {
        return None;
    }
    let state = match cache.0.take() {
        Some(state) => state,
        None => companion_state(code, handle, seed).0,
    };
    let key = Zeroizing::new(state.finish(primary_msg).ok()?);
    to_array(&key).map(Zeroizing::new)
}

/// The primary's half, in one call: its message and the key, or `None` if
/// the companion's message is not a valid point.
pub(crate) fn primary_exchange<R: RngCore + CryptoRng>(
    code: &LinkCode,
    handle: CodeHandle,
    companion_msg: &[u8; PAKE_MESSAGE_LEN],
    rng: &mut R,
) -> Option<([u8; PAKE_MESSAGE_LEN], Zeroizing<[u8; 32]>)> {
    if !point_ok(companion_msg, SIDE_COMPANION) {
        return None;
    }
    let (id_c, id_p) = identities(handle);
    let pw = Password::new(code.as_bytes());
    let (state, msg) = Spake2::<Ed25519Group>::start_b_with_rng(&pw, &id_c, &id_p, &mut *rng);
    let msg = to_array(&msg)?;
    let key = Zeroizing::new(state.finish(companion_msg).ok()?);
    Some((msg, Zeroizing::new(to_array(&key)?)))
}

/// The code session's token id: `SHA-256(label ‖ handle ‖ m_c)[0..16]`.
pub(crate) fn token_id(handle: CodeHandle, companion_msg: &[u8; PAKE_MESSAGE_LEN]) -> TokenId {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TOKEN_LABEL);
    ctx.update(&handle.to_bytes());
    ctx.update(companion_msg);
    let mut id = [0u8; 16];
    id.copy_from_slice(&ctx.finish().as_ref()[..16]);
    TokenId(id)
}

/// The transcript hash of the code exchange.
pub(crate) fn transcript(
    token: &TokenId,
    handle: CodeHandle,
    companion_msg: &[u8; PAKE_MESSAGE_LEN],
    primary_msg: &[u8; PAKE_MESSAGE_LEN],
) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TRANSCRIPT_LABEL);
    ctx.update(&token.0);
    ctx.update(&handle.to_bytes());
    ctx.update(companion_msg);
    ctx.update(primary_msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The companion's confirmation key. Zeroized; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub(crate) struct ConfirmKey(#[serde(with = "crate::encoding::b64_array")] [u8; 32]);

impl std::fmt::Debug for ConfirmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfirmKey(..)")
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// Every key of a code session: the handshake's keys (as the QR flow's,
/// with `k` for the DH output and the code salt) and the confirmation key.
pub(crate) fn derive(key: &[u8; 32], th: [u8; 32]) -> (SessionKeys, ConfirmKey) {
    let keys = SessionKeys::derive(key, SALT, th);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(key);
    let mut k_c = ConfirmKey([0; 32]);
    let info = [CONFIRM_LABEL, th.as_slice()];
    if let Ok(okm) = prk.expand(&info, Len32) {
        let _ = okm.fill(&mut k_c.0);
    }
    (keys, k_c)
}

impl ConfirmKey {
    /// `HMAC-SHA256(k_c, header ‖ th)`.
    pub(crate) fn tag(&self, header: &[u8], th: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &self.0));
        ctx.update(header);
        ctx.update(th);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Constant-time check of a tag (`ring::hmac::verify`).
    pub(crate) fn verify(&self, header: &[u8], th: &[u8; 32], tag: &[u8]) -> bool {
        let msg = [header, th.as_slice()].concat();
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), &msg, tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn both_sides_agree_on_the_right_code_only() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let handle = CodeHandle::random(&mut rng);
        let code = LinkCode::generate(&mut rng);
        let seed = PakeSeed::generate(&mut rng);
        let m_c = companion_message(&code, handle, &seed);
        assert!(point_ok(&m_c, SIDE_COMPANION));
        let (m_p, k_p) = primary_exchange(&code, handle, &m_c, &mut rng).unwrap();
        let k_c = companion_finish(&code, handle, &seed, &mut PakeCache::default(), &m_p).unwrap();
        assert_eq!(*k_p, *k_c);
        let wrong = LinkCode::generate(&mut rng);
        let (m_p2, k_p2) = primary_exchange(&wrong, handle, &m_c, &mut rng).unwrap();
        assert_ne!(
            *k_p2,
            *companion_finish(&code, handle, &seed, &mut PakeCache::default(), &m_p2).unwrap()
        );
        let other = CodeHandle::new(handle.value() ^ 1).unwrap();
        let (m_p3, k_p3) = primary_exchange(&code, other, &m_c, &mut rng).unwrap();
        assert_ne!(
            *k_p3,
            *companion_finish(&code, handle, &seed, &mut PakeCache::default(), &m_p3).unwrap()
        );
        // Rebuilding from the seed gives the same message.
        assert_eq!(companion_message(&code, handle, &seed), m_c);
    }

    #[test]
    fn small_order_and_mixed_points_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let code = LinkCode::generate(&mut rng);
        let handle = CodeHandle::random(&mut rng);
        let seed = PakeSeed::generate(&mut rng);
        let mut identity = [0u8; 33];
        identity[0] = SIDE_PRIMARY;
        identity[1] = 1; // (0, 1): the identity point
        assert!(
            companion_finish(&code, handle, &seed, &mut PakeCache::default(), &identity).is_none()
        );
        let m_c = companion_message(&code, handle, &seed);
        // The honest message plus a point of order 2 is not torsion-free.
        let p = CompressedEdwardsY(m_c[1..].try_into().unwrap())
            .decompress()
            .unwrap();
        let t2 = CompressedEdwardsY({
            let mut b = [0u8; 32];
            b[0] = 0xec;
            b[1..31].fill(0xff);
            b[31] = 0x7f;
            b
        })
        .decompress()
        .unwrap();
        assert!(t2.is_small_order());
        let mut mixed = [SIDE_COMPANION; 33];
        mixed[1..].copy_from_slice((p + t2).compress().as_bytes());
        assert!(!point_ok(&mixed, SIDE_COMPANION));
        assert!(primary_exchange(&code, handle, &mixed, &mut rng).is_none());
        let mut wrong_side = m_c;
        wrong_side[0] = SIDE_PRIMARY;
        assert!(primary_exchange(&code, handle, &wrong_side, &mut rng).is_none());
    }
}
