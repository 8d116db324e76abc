//! What the bench and `examples/link_cost.rs` share: `floor`, exactly the
//! primitive operations of one full link, and `full_link`, one complete link
//! through the public API, with the same fixture.
#![allow(dead_code, reason = "each includer uses a subset")]

use std::hint::black_box;

use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::{aead, digest, hkdf, hmac};
use x25519_dalek::{PublicKey, StaticSecret};

/// The fixed clock of every bench.
pub const NOW: u64 = 1_700_000_000_000;
/// The companion label of every bench.
pub const LABEL: &str = "Firefox on Linux";

/// `NOW` as a timestamp.
pub fn now() -> Timestamp {
    Timestamp::from_unix_millis(NOW)
}

// ---------------------------------------------------------------- primitives

/// SHA-256 of the concatenated parts.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An HKDF output length.
pub struct Len(pub usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Extract and the four expands of the key schedule.
pub fn hkdf_schedule(salt: &[u8], ikm: &[u8], th: &[u8; 32]) -> [[u8; 32]; 3] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = [[0u8; 32]; 3];
    for (label, o) in [
        &b"devicelink/v2 hello"[..],
        b"devicelink/v2 request",
        b"devicelink/v2 grant",
    ]
    .iter()
    .zip(out.iter_mut())
    {
        prk.expand(&[label, th], Len(32)).unwrap().fill(o).unwrap();
    }
    let mut code = [0u8; 4];
    prk.expand(&[b"devicelink/v2 check code", th], Len(4))
        .unwrap()
        .fill(&mut code)
        .unwrap();
    black_box(code);
    out
}

/// A ChaCha20-Poly1305 key.
pub fn aead_key(k: &[u8; 32]) -> aead::LessSafeKey {
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, k).unwrap())
}

/// Seals `plain`.
pub fn seal(k: &[u8; 32], nonce: [u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    aead_key(k)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap();
    buf
}

/// Opens `sealed`; the plaintext length.
pub fn open(k: &[u8; 32], nonce: [u8; 12], aad: &[u8], sealed: &[u8]) -> usize {
    let mut buf = sealed.to_vec();
    aead_key(k)
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap()
        .len()
}

/// Strict Ed25519 verification with point decompression.
pub fn verify(key: &[u8; 32], msg: &[u8], sig: &ed25519_dalek::Signature) -> bool {
    VerifyingKey::from_bytes(key)
        .unwrap()
        .verify_strict(msg, sig)
        .is_ok()
}

/// Inputs of the floor that a link receives rather than computes.
pub struct FloorInputs {
    /// Input.
    pub account: SigningKey,
    /// Input.
    pub device: SigningKey,
    /// Input.
    pub account_pub: [u8; 32],
    /// Input.
    pub device_pub: [u8; 32],
    /// Input.
    pub label_bytes: Vec<u8>,
}

/// Exactly the primitive operations of one full link (protocol v2), in
/// protocol order, on inputs of the protocol's sizes. Nothing else: two
/// X25519 key generations and two DH, two key schedules, the Hello MAC, two
/// AEAD seals and two opens, one account signature (the device list, which is
/// the certificate) and its verification, one device signature (the Confirm)
/// and its verification, and the SHA-256 digests the protocol names.
pub fn floor(inp: &FloorInputs, rng: &mut ChaCha20Rng) {
    let th_label = b"devicelink/v2 transcript";
    // Companion: the offer (X25519 key, 16-byte secret, offer digest, token id).
    let c_secret = StaticSecret::random_from_rng(&mut *rng);
    let c_pub = PublicKey::from(&c_secret);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut body = [0u8; 49];
    body[1..33].copy_from_slice(c_pub.as_bytes());
    body[33..].copy_from_slice(&salt);
    let d = sha256(&[b"devicelink/v1 offer", &body]);
    let token = sha256(&[b"devicelink/v1 token id", &d[16..]]);
    // Primary: parses the offer (digest and token id again), its ephemeral,
    // DH, transcript, key schedule, Hello MAC.
    let d2 = sha256(&[b"devicelink/v1 offer", &body]);
    black_box(sha256(&[b"devicelink/v1 token id", &d2[16..]]));
    let p_secret = StaticSecret::random_from_rng(&mut *rng);
    let p_pub = PublicKey::from(&p_secret);
    let dh_p = p_secret.diffie_hellman(&c_pub);
    assert!(dh_p.was_contributory());
    let th = sha256(&[th_label, &token[..16], c_pub.as_bytes(), p_pub.as_bytes()]);
    let keys_p = hkdf_schedule(&salt, dh_p.as_bytes(), &th);
    let hello = [0u8; 66];
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &keys_p[0]), &hello);
    // Companion: DH, transcript, key schedule, MAC check, Request.
    let dh_c = c_secret.diffie_hellman(&p_pub);
    assert!(dh_c.was_contributory());
    let th_c = sha256(&[th_label, &token[..16], c_pub.as_bytes(), p_pub.as_bytes()]);
    let keys_c = hkdf_schedule(&salt, dh_c.as_bytes(), &th_c);
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &keys_c[0]),
        &hello,
        tag.as_ref(),
    )
    .unwrap();
    let mut req_plain = Vec::with_capacity(100);
    req_plain.extend_from_slice(&inp.device_pub);
    req_plain.push(16);
    req_plain.extend_from_slice(&inp.label_bytes);
    let header = [2u8; 18];
    let mut req_nonce = [0u8; 12];
    rng.fill_bytes(&mut req_nonce);
    let request = seal(&keys_c[1], req_nonce, &header, &req_plain);
    // Primary: opens the Request.
    black_box(open(&keys_p[1], req_nonce, &header, &request));
    grant_and_confirm(inp, rng, &keys_p, &keys_c, &header, &th, &th_c, &request);
}

/// The end of every link's floor, from the Request opened on: the primary
/// signs the device list (the certificate), hashes it for the chain and
/// seals the Grant; the companion opens it, verifies the list and signs
/// the Confirm; the primary verifies that. `keys_*` are each side's key
/// schedule, `th`/`th_c` each side's transcript hash.
#[allow(clippy::too_many_arguments)]
pub fn grant_and_confirm(
    inp: &FloorInputs,
    rng: &mut ChaCha20Rng,
    keys_p: &[[u8; 32]; 3],
    keys_c: &[[u8; 32]; 3],
    header: &[u8],
    th: &[u8; 32],
    th_c: &[u8; 32],
    request: &[u8],
) {
    // Primary: signs the device list (the certificate), hashes it for the
    // chain, seals the Grant.
    let mut list = Vec::with_capacity(300);
    list.extend_from_slice(b"devicelink/v2 device list");
    list.push(2);
    list.extend_from_slice(&inp.account_pub);
    list.extend_from_slice(&[0u8; 8 + 8 + 32 + 8 + 32 + 1]);
    list.extend_from_slice(&[0u8; 4]);
    list.extend_from_slice(&inp.device_pub);
    list.extend_from_slice(&[0u8; 8 + 1]);
    list.extend_from_slice(&inp.label_bytes);
    list.push(0);
    let list_sig = inp.account.sign(&list);
    black_box(sha256(&[b"devicelink/v2 device list hash", &list[25..]]));
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let grant_plain = vec![0u8; 4 + list.len() - 25 + 64];
    let grant = seal(&keys_p[2], nonce, header, &grant_plain);
    let th2 = sha256(&[
        b"devicelink/v2 confirm transcript",
        th,
        &[0; 4],
        request,
        &[0; 4],
        &grant,
    ]);
    // Companion: opens the Grant, verifies the list, signs the confirmation.
    black_box(open(&keys_c[2], nonce, header, &grant));
    assert!(verify(&inp.account_pub, &list, &list_sig));
    let th2_c = sha256(&[
        b"devicelink/v2 confirm transcript",
        th_c,
        &[0; 4],
        request,
        &[0; 4],
        &grant,
    ]);
    let confirm_msg = [&b"devicelink/v2 confirm"[..], &th2_c].concat();
    let confirm = inp.device.sign(&confirm_msg);
    // Primary: verifies the confirmation.
    assert!(verify(
        &inp.device_pub,
        &[&b"devicelink/v2 confirm"[..], &th2].concat(),
        &confirm
    ));
}

/// The peers' common floor: what every QR-linking protocol with device
/// authentication does at least, both sides together. Two X25519 key
/// generations and two DH, one HKDF derivation per side (extract and one
/// 64-byte expand), one AEAD message sealed and opened, one Ed25519
/// signature and its verification.
pub fn peer_floor(inp: &FloorInputs, rng: &mut ChaCha20Rng) {
    let c_secret = StaticSecret::random_from_rng(&mut *rng);
    let c_pub = PublicKey::from(&c_secret);
    let p_secret = StaticSecret::random_from_rng(&mut *rng);
    let p_pub = PublicKey::from(&p_secret);
    let dh_p = p_secret.diffie_hellman(&c_pub);
    let dh_c = c_secret.diffie_hellman(&p_pub);
    let derive = |ikm: &[u8]| {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[0u8; 16]).extract(ikm);
        let mut okm = [0u8; 64];
        prk.expand(&[b"peer floor"], Len(64))
            .unwrap()
            .fill(&mut okm)
            .unwrap();
        okm
    };
    let kp = derive(dh_p.as_bytes());
    let kc = derive(dh_c.as_bytes());
    let mut key_p = [0u8; 32];
    key_p.copy_from_slice(&kp[..32]);
    let mut key_c = [0u8; 32];
    key_c.copy_from_slice(&kc[..32]);
    let msg = [0u8; 128];
    let sig = inp.account.sign(&msg);
    let sealed = seal(&key_p, [0; 12], &[0u8; 18], &msg);
    black_box(open(&key_c, [0; 12], &[0u8; 18], &sealed));
    assert!(verify(&inp.account_pub, &msg, &sig));
}

/// The floor's long-term keys and label.
pub fn floor_inputs(rng: &mut ChaCha20Rng) -> FloorInputs {
    let account = SigningKey::generate(rng);
    let device = SigningKey::generate(rng);
    FloorInputs {
        account_pub: account.verifying_key().to_bytes(),
        device_pub: device.verifying_key().to_bytes(),
        account,
        device,
        label_bytes: LABEL.as_bytes().to_vec(),
    }
}

/// A fresh account and a companion identity.
pub struct LinkFixture {
    /// The account, with no companions.
    pub account: Account,
    /// The companion's identity.
    pub identity: DeviceIdentity,
    /// Its label.
    pub label: DeviceLabel,
    /// The policy.
    pub policy: Policy,
}

/// The fixture, from a fixed seed.
pub fn link_fixture() -> LinkFixture {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let policy = Policy::default();
    LinkFixture {
        account: Account::generate(policy.clone(), &mut rng, now()),
        identity: DeviceIdentity::generate(&mut rng),
        label: DeviceLabel::new(LABEL).unwrap(),
        policy,
    }
}

/// One complete link, both sides, offer to confirmed.
pub fn full_link(
    account: &mut Account,
    identity: DeviceIdentity,
    f: &LinkFixture,
    rng: &mut ChaCha20Rng,
) {
    let t = now();
    let mut companion = Companion::new(identity, f.label.clone(), &f.policy, rng, t);
    let text = companion.offer().unwrap().to_text();
    account.open_link_intent(t);
    let (mut primary, hello) = account.scan(&text, rng, t).unwrap();
    let request = companion.receive_hello(&hello, rng, t).unwrap();
    account
        .receive_request(&mut primary, &request, rng, t)
        .unwrap();
    let grant = account.grant(&mut primary, rng, t).unwrap();
    companion.receive_grant(&grant, t).unwrap();
    let confirm = companion.consent(t).unwrap();
    black_box(account.confirm(&mut primary, &confirm, t).unwrap());
}
