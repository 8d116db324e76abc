//! The key schedule: X25519 output → HKDF-SHA256 keys, bound to the QR secret
//! (salt) and the transcript hash (info).
//!
//! ```text
//! th   = SHA-256("devicelink/v2 transcript" || token_id || E_c || E_p)
//! prk  = HKDF-Extract(salt = offer secret, ikm = X25519(e, E))
//! k_h  = HKDF-Expand(prk, "devicelink/v2 hello"      || th, 32)  HMAC key, Hello
//! k_r  = HKDF-Expand(prk, "devicelink/v2 request"    || th, 32)  AEAD key, Request
//! k_g  = HKDF-Expand(prk, "devicelink/v2 grant"      || th, 32)  AEAD key, Grant/Refusal
//! k_c  = HKDF-Expand(prk, "devicelink/v2 check code" || th, 32)  check-code key
//! c_p  = SHA-256("devicelink/v2.1 check commitment" || th || n_p)  in the Hello
//! code = HMAC-SHA256(k_c, "devicelink/v2.1 check code" || n_c || n_p)[0..8]
//!        u64 BE mod 1 000 000 (six digits)
//! th2  = SHA-256("devicelink/v2 confirm transcript" || th
//!                || len32(Request) || Request || len32(Grant) || Grant)
//! ```
//!
//! `n_p` (32 random bytes) is the primary's, committed to in the Hello and
//! revealed in the Grant; `n_c` (32 random bytes) is the companion's, sent in
//! the Request after it saw the commitment. Neither side can steer the code:
//! the primary chose `n_p` (and its key) before it saw `n_c`, the companion
//! chose `n_c` without knowing `n_p` (Bluetooth's numeric comparison).
//!
//! Each encrypted message (Request; Grant or Refusal) carries a random 12-byte
//! nonce, so no restored state and no future change of content can ever seal
//! two plaintexts under one key and nonce.

use ring::{aead, digest, hkdf, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::offer::TokenId;

const TRANSCRIPT_LABEL: &[u8] = b"devicelink/v2 transcript";
const CONFIRM_TRANSCRIPT_LABEL: &[u8] = b"devicelink/v2 confirm transcript";
const HELLO_LABEL: &[u8] = b"devicelink/v2 hello";
const REQUEST_LABEL: &[u8] = b"devicelink/v2 request";
const GRANT_LABEL: &[u8] = b"devicelink/v2 grant";
const CHECK_CODE_LABEL: &[u8] = b"devicelink/v2 check code";
const CHECK_COMMITMENT_LABEL: &[u8] = b"devicelink/v2.1 check commitment";
const CHECK_CODE_MAC_LABEL: &[u8] = b"devicelink/v2.1 check code";
/// Bytes of each side's check-code nonce.
pub(crate) const CHECK_NONCE_LEN: usize = 32;

/// AEAD tag length (ChaCha20-Poly1305).
pub(crate) const TAG_LEN: usize = 16;
/// HMAC-SHA256 tag length.
pub(crate) const MAC_LEN: usize = 32;
/// AEAD nonce length.
pub(crate) const NONCE_LEN: usize = 12;

/// The transcript hash of the scan: binds token, both ephemeral keys.
pub(crate) fn transcript(
    token: &TokenId,
    companion_eph: &[u8; 32],
    primary_eph: &[u8; 32],
) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TRANSCRIPT_LABEL);
    ctx.update(&token.0);
    ctx.update(companion_eph);
    ctx.update(primary_eph);
    to_array(ctx.finish())
}

/// The transcript the companion's confirmation signs: the scan transcript and
/// the exact Request and Grant bytes.
pub(crate) fn confirm_transcript(th: &[u8; 32], request: &[u8], grant: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(CONFIRM_TRANSCRIPT_LABEL);
    ctx.update(th);
    // Length-prefixed, so the boundary between the two messages is unambiguous.
    for m in [request, grant] {
        ctx.update(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(m);
    }
    to_array(ctx.finish())
}

/// The primary's commitment to its check-code nonce `n_p`, sent in the Hello.
pub(crate) fn check_commitment(th: &[u8; 32], nonce: &[u8; CHECK_NONCE_LEN]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(CHECK_COMMITMENT_LABEL);
    ctx.update(th);
    ctx.update(nonce);
    to_array(ctx.finish())
}

fn to_array(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Every key of one pairing exchange. Zeroized on drop; never printed.
///
/// Serializable because a host may persist a companion mid-handshake: the
/// persisted form is secret material.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub(crate) struct SessionKeys {
    #[serde(with = "crate::encoding::b64_array")]
    hello: [u8; 32],
    #[serde(with = "crate::encoding::b64_array")]
    request: [u8; 32],
    #[serde(with = "crate::encoding::b64_array")]
    grant: [u8; 32],
    #[serde(with = "crate::encoding::b64_array")]
    check: [u8; 32],
    #[serde(with = "crate::encoding::b64_array")]
    pub(crate) transcript: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

impl SessionKeys {
    /// Derives every key from the DH output, the offer secret and `th`.
    pub(crate) fn derive(dh: &[u8; 32], offer_secret: &[u8], th: [u8; 32]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, offer_secret).extract(dh);
        let mut keys = SessionKeys {
            hello: [0; 32],
            request: [0; 32],
            grant: [0; 32],
            check: [0; 32],
            transcript: th,
        };
        expand(&prk, HELLO_LABEL, &th, &mut keys.hello);
        expand(&prk, REQUEST_LABEL, &th, &mut keys.request);
        expand(&prk, GRANT_LABEL, &th, &mut keys.grant);
        expand(&prk, CHECK_CODE_LABEL, &th, &mut keys.check);
        keys
    }

    /// The six-digit check code of the companion's nonce `n_c` and the
    /// primary's `n_p`.
    pub(crate) fn check_code(
        &self,
        companion_nonce: &[u8; CHECK_NONCE_LEN],
        primary_nonce: &[u8; CHECK_NONCE_LEN],
    ) -> super::CheckCode {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.check);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(CHECK_CODE_MAC_LABEL);
        ctx.update(companion_nonce);
        ctx.update(primary_nonce);
        let tag = ctx.sign();
        let mut head = [0u8; 8];
        head.copy_from_slice(&tag.as_ref()[..8]);
        super::CheckCode::from_u64(u64::from_be_bytes(head))
    }

    /// HMAC-SHA256 tag over the Hello's bytes.
    pub(crate) fn hello_tag(&self, hello: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.hello), hello)
    }

    /// Constant-time check of a Hello tag (ring's `hmac::verify`).
    pub(crate) fn verify_hello_tag(&self, hello: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &self.hello), hello, tag).is_ok()
    }

    /// Seals the Request under a random nonce (sent beside it).
    pub(crate) fn seal_request(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> bool {
        seal(&self.request, nonce, aad, buf)
    }

    pub(crate) fn open_request<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        open(&self.request, nonce, aad, buf)
    }

    /// The Grant key seals the Grant or a Refusal, whose content the primary
    /// chooses: each carries a fresh random nonce, so a primary handshake
    /// restored from an old save and granting again cannot reuse one.
    pub(crate) fn seal_grant(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> bool {
        seal(&self.grant, nonce, aad, buf)
    }

    pub(crate) fn open_grant<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        open(&self.grant, nonce, aad, buf)
    }
}

fn expand(prk: &hkdf::Prk, label: &[u8], th: &[u8; 32], out: &mut [u8]) {
    let info = [label, th.as_slice()];
    // `expand` fails only for lengths over 255 * 32 bytes; ours are ≤ 32.
    if let Ok(okm) = prk.expand(&info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

fn aead_key(key: &[u8; 32]) -> Option<aead::LessSafeKey> {
    aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
        .ok()
        .map(aead::LessSafeKey::new)
}

/// Encrypts `buf[..]` in place and appends the tag.
fn seal(key: &[u8; 32], nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> bool {
    match aead_key(key) {
        Some(k) => k
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                buf,
            )
            .is_ok(),
        None => false,
    }
}

/// Decrypts `buf` (ciphertext and tag) in place; the plaintext on success.
fn open<'a>(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    buf: &'a mut [u8],
) -> Option<&'a mut [u8]> {
    aead_key(key)?
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            buf,
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_secret_dh_and_transcript() {
        let a = SessionKeys::derive(&[1; 32], &[2; 16], [3; 32]);
        let b = SessionKeys::derive(&[1; 32], &[9; 16], [3; 32]);
        let c = SessionKeys::derive(&[1; 32], &[2; 16], [4; 32]);
        let d = SessionKeys::derive(&[5; 32], &[2; 16], [3; 32]);
        for other in [&b, &c, &d] {
            assert_ne!(a.request, other.request);
            assert_ne!(a.grant, other.grant);
            assert_ne!(a.hello, other.hello);
        }
        assert_ne!(a.request, a.grant);
        assert_ne!(a.check, b.check);
        // Six digits, and each nonce moves the code.
        let code = a.check_code(&[1; 32], &[2; 32]);
        assert!(code.value() < 1_000_000);
        assert_ne!(code, a.check_code(&[3; 32], &[2; 32]));
        assert_ne!(code, a.check_code(&[1; 32], &[3; 32]));
        assert_ne!(
            check_commitment(&[3; 32], &[2; 32]),
            check_commitment(&[3; 32], &[4; 32])
        );
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = SessionKeys::derive(&[1; 32], &[2; 16], [3; 32]);
        let mut buf = b"hello".to_vec();
        assert!(k.seal_request([1; NONCE_LEN], b"aad", &mut buf));
        assert_eq!(buf.len(), 5 + TAG_LEN);
        let mut good = buf.clone();
        assert_eq!(
            k.open_request([1; NONCE_LEN], b"aad", &mut good)
                .map(|p| p.to_vec()),
            Some(b"hello".to_vec())
        );
        let mut wrong_aad = buf.clone();
        assert!(k
            .open_request([1; NONCE_LEN], b"aae", &mut wrong_aad)
            .is_none());
        let mut wrong_key = buf.clone();
        assert!(k
            .open_grant([0; NONCE_LEN], b"aad", &mut wrong_key)
            .is_none());
        let mut g = b"grant".to_vec();
        assert!(k.seal_grant([7; NONCE_LEN], b"h", &mut g));
        let mut wrong_nonce = g.clone();
        assert!(k
            .open_grant([8; NONCE_LEN], b"h", &mut wrong_nonce)
            .is_none());
        assert!(k.open_grant([7; NONCE_LEN], b"h", &mut g).is_some());
        let tag = k.hello_tag(b"m");
        assert!(k.verify_hello_tag(b"m", tag.as_ref()));
        assert!(!k.verify_hello_tag(b"n", tag.as_ref()));
    }
}
