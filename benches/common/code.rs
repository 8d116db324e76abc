//! What `benches/code.rs` and `examples/code_cost.rs` share: `code_floor`,
//! exactly the primitive operations of one link by code, and
//! `full_link_by_code`, one complete link by code through the public API.
//! Included with `#[path]` beside `benches/common/mod.rs` (as `common`).

use std::hint::black_box;

use crate::common::*;
use curve25519_dalek::edwards::CompressedEdwardsY;
use devicelink::code::{CodeCompanion, TypedCode};
use devicelink::relay::{ClientId, CodeRelayConfig, CodeRendezvous, SourceKey};
use devicelink::{Account, DeviceIdentity};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::{hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};

fn point_ok(m: &[u8]) -> bool {
    CompressedEdwardsY(m[1..].try_into().unwrap())
        .decompress()
        .is_some_and(|p| p.is_torsion_free() && !p.is_small_order())
}

/// The key schedule with the code's confirmation key.
fn schedule(k: &[u8], th: &[u8; 32]) -> ([[u8; 32]; 3], [u8; 32]) {
    let keys = hkdf_schedule(b"devicelink/v2 code", k, th);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"devicelink/v2 code").extract(k);
    let mut k_c = [0u8; 32];
    prk.expand(&[b"devicelink/v2 code confirm", th], Len(32))
        .unwrap()
        .fill(&mut k_c)
        .unwrap();
    (keys, k_c)
}

/// Exactly the primitive operations of one link by code, in protocol order.
pub fn code_floor(inp: &FloorInputs, rng: &mut ChaCha20Rng) {
    let handle = [0u8, 1, 2, 3];
    let id_c = Identity::new(&[&b"devicelink/v2 code companion"[..], &handle].concat());
    let id_p = Identity::new(&[&b"devicelink/v2 code primary"[..], &handle].concat());
    // Companion: the code, the seed, its SPAKE2 message, the token id.
    let mut code = [0u8; 5];
    rng.fill_bytes(&mut code);
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let pw = Password::new(code);
    let (state_c, m_c) =
        Spake2::<Ed25519Group>::start_a_with_rng(&pw, &id_c, &id_p, ChaCha20Rng::from_seed(seed));
    let token = sha256(&[b"devicelink/v2 code token", &handle, &m_c]);
    // Primary: the token again, the point check, SPAKE2, transcript,
    // schedule, the CodeHello MAC.
    black_box(sha256(&[b"devicelink/v2 code token", &handle, &m_c]));
    assert!(point_ok(&m_c));
    let (state_p, m_p) = Spake2::<Ed25519Group>::start_b_with_rng(&pw, &id_c, &id_p, &mut *rng);
    let k_p = state_p.finish(&m_c).unwrap();
    let th = sha256(&[
        b"devicelink/v2 code transcript",
        &token[..16],
        &handle,
        &m_c,
        &m_p,
    ]);
    let (keys_p, kc_p) = schedule(&k_p, &th);
    let hello = [0u8; 51];
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &keys_p[0]), &hello);
    // Companion: point check, SPAKE2, transcript, schedule, MAC check, its
    // confirmation, the Request.
    assert!(point_ok(&m_p));
    let k_c = state_c.finish(&m_p).unwrap();
    let th_c = sha256(&[
        b"devicelink/v2 code transcript",
        &token[..16],
        &handle,
        &m_c,
        &m_p,
    ]);
    let (keys_c, kc_c) = schedule(&k_c, &th_c);
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &keys_c[0]),
        &hello,
        tag.as_ref(),
    )
    .unwrap();
    let header = [2u8; 18];
    let ctag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &kc_c),
        &[&header[..], &th_c].concat(),
    );
    let mut req_plain = Vec::with_capacity(100);
    req_plain.extend_from_slice(&inp.device_pub);
    req_plain.push(16);
    req_plain.extend_from_slice(&inp.label_bytes);
    let mut req_nonce = [0u8; 12];
    rng.fill_bytes(&mut req_nonce);
    let request = seal(&keys_c[1], req_nonce, &header, &req_plain);
    // Primary: checks the confirmation, opens the Request, signs and hashes
    // the list, seals the Grant.
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &kc_p),
        &[&header[..], &th].concat(),
        ctag.as_ref(),
    )
    .unwrap();
    black_box(open(&keys_p[1], req_nonce, &header, &request));
    // The Grant and the Confirm, as in every link.
    grant_and_confirm(inp, rng, &keys_p, &keys_c, &header, &th, &th_c, &request);
}

/// One complete link by code through the public API, both sides, the relay
/// issuing the handle and routing every message.
pub fn full_link_by_code(
    account: &mut Account,
    identity: DeviceIdentity,
    f: &LinkFixture,
    rng: &mut ChaCha20Rng,
) {
    let t = now();
    let (laptop, phone) = (ClientId::from(1), ClientId::from(2));
    let mut relay = CodeRendezvous::new(CodeRelayConfig::from_policy(&f.policy));
    let (handle, _) = relay.open(laptop, SourceKey::LOCAL, rng, t).unwrap();
    let mut shown = CodeCompanion::new(identity, f.label.clone(), handle, &f.policy, rng, t);
    relay
        .publish(laptop, shown.offer_message().unwrap(), t)
        .unwrap();
    let typed = TypedCode::parse(&shown.code_text().unwrap()).unwrap();
    account.open_link_intent(t);
    let offer = relay
        .join(typed.handle(), phone, SourceKey::LOCAL, None, t)
        .unwrap();
    let (mut entry, hello) = account.enter_code(&typed, &offer, rng, t).unwrap();
    relay.route(phone, &hello, t).unwrap();
    let accepted = shown.receive_hello(&hello, rng, t).unwrap();
    relay.route(laptop, &accepted.confirm, t).unwrap();
    let mut primary = entry.receive_confirm(&accepted.confirm, t).unwrap();
    let mut companion = accepted.companion;
    relay.route(laptop, &accepted.request, t).unwrap();
    account
        .receive_request(&mut primary, &accepted.request, rng, t)
        .unwrap();
    let grant = account.grant(&mut primary, rng, t).unwrap();
    relay.route(phone, &grant, t).unwrap();
    companion.receive_grant(&grant, t).unwrap();
    let confirm = companion.consent(t).unwrap();
    relay.route(laptop, &confirm, t).unwrap();
    black_box(account.confirm(&mut primary, &confirm, t).unwrap());
}
