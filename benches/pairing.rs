//! Criterion benches of every key operation, with the raw primitives timed in
//! the same run so the protocol's overhead reads as a ratio:
//!
//! ```text
//! cargo bench --bench pairing                                   # everything
//! cargo bench --bench pairing -- 'primitives/floor|link/full_link'
//! ```
//!
//! `primitives/floor` performs exactly the primitive operations of one full
//! link (both sides, offer to confirmed), with the same crates and the same
//! input sizes, and nothing else. `link/full_link / primitives/floor` is the
//! protocol's overhead.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use devicelink::certificate::DeviceListEntry;
use devicelink::qr::{ImageStyle, OfferQr, TerminalStyle};
use devicelink::relay::{Directory, Ledger};
use devicelink::time::days;
use devicelink::{
    Account, AccountId, Companion, DeviceIdentity, DeviceIndex, DeviceKey, DeviceLabel,
    PairingOffer, Policy, Timestamp, TokenId,
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::{aead, digest, hkdf, hmac};
use x25519_dalek::{PublicKey, StaticSecret};

const NOW: u64 = 1_700_000_000_000;
const LABEL: &str = "Firefox on Linux";

fn now() -> Timestamp {
    Timestamp::from_unix_millis(NOW)
}

// ---------------------------------------------------------------- primitives

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Extract and the four expands of the key schedule.
fn hkdf_schedule(salt: &[u8], ikm: &[u8], th: &[u8; 32]) -> [[u8; 32]; 3] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = [[0u8; 32]; 3];
    for (label, o) in [
        &b"devicelink/v1 hello"[..],
        b"devicelink/v1 request",
        b"devicelink/v1 grant",
    ]
    .iter()
    .zip(out.iter_mut())
    {
        prk.expand(&[label, th], Len(32)).unwrap().fill(o).unwrap();
    }
    let mut code = [0u8; 4];
    prk.expand(&[b"devicelink/v1 check code", th], Len(4))
        .unwrap()
        .fill(&mut code)
        .unwrap();
    black_box(code);
    out
}

fn aead_key(k: &[u8; 32]) -> aead::LessSafeKey {
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, k).unwrap())
}

fn seal(k: &[u8; 32], nonce: [u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
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

fn open(k: &[u8; 32], nonce: [u8; 12], aad: &[u8], sealed: &[u8]) -> usize {
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

fn verify(key: &[u8; 32], msg: &[u8], sig: &ed25519_dalek::Signature) -> bool {
    VerifyingKey::from_bytes(key)
        .unwrap()
        .verify_strict(msg, sig)
        .is_ok()
}

/// Inputs of the floor that a link receives rather than computes.
struct FloorInputs {
    account: SigningKey,
    device: SigningKey,
    account_pub: [u8; 32],
    device_pub: [u8; 32],
    label_bytes: Vec<u8>,
}

/// Exactly the primitive operations of one full link, in protocol order, on
/// inputs of the protocol's sizes. Nothing else.
fn floor(inp: &FloorInputs, rng: &mut ChaCha20Rng) {
    let th_label = b"devicelink/v1 transcript";
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
    // Companion: DH, transcript, key schedule, MAC check, proof, Request.
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
    let pop_msg = [&b"devicelink/v1 proof of possession"[..], &th_c].concat();
    let pop = inp.device.sign(&pop_msg);
    let mut req_plain = Vec::with_capacity(160);
    req_plain.extend_from_slice(&inp.device_pub);
    req_plain.extend_from_slice(&pop.to_bytes());
    req_plain.push(16);
    req_plain.extend_from_slice(&inp.label_bytes);
    let header = [1u8; 18];
    let request = seal(&keys_c[1], [0; 12], &header, &req_plain);
    // Primary: opens the Request, checks the proof.
    black_box(open(&keys_p[1], [0; 12], &header, &request));
    assert!(verify(&inp.device_pub, &pop_msg, &pop));
    // Primary: signs the device list and the certificate, seals the Grant.
    let mut list = Vec::with_capacity(200);
    list.extend_from_slice(b"devicelink/v1 device list");
    list.extend_from_slice(&[0u8; 50]);
    list.extend_from_slice(&inp.account_pub);
    list.extend_from_slice(&[0u8; 4]);
    list.extend_from_slice(&inp.device_pub);
    let list_sig = inp.account.sign(&list);
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let mut cert = Vec::with_capacity(120);
    cert.extend_from_slice(b"devicelink/v1 device certificate");
    cert.push(1);
    cert.extend_from_slice(&inp.account_pub);
    cert.extend_from_slice(&[0u8; 4]);
    cert.extend_from_slice(&inp.device_pub);
    cert.extend_from_slice(&[0u8; 8]);
    let cert_sig = inp.account.sign(&cert);
    let grant_plain = [0u8; 141 + 87 + 64];
    let grant = seal(&keys_p[2], nonce, &header, &grant_plain);
    let th2 = sha256(&[
        b"devicelink/v1 confirm transcript",
        &th,
        &[0; 4],
        &request,
        &[0; 4],
        &grant,
    ]);
    // Companion: opens the Grant, verifies certificate and list, signs the
    // confirmation.
    black_box(open(&keys_c[2], nonce, &header, &grant));
    assert!(verify(&inp.account_pub, &cert, &cert_sig));
    assert!(verify(&inp.account_pub, &list, &list_sig));
    let th2_c = sha256(&[
        b"devicelink/v1 confirm transcript",
        &th_c,
        &[0; 4],
        &request,
        &[0; 4],
        &grant,
    ]);
    let confirm_msg = [&b"devicelink/v1 confirm"[..], &th2_c].concat();
    let confirm = inp.device.sign(&confirm_msg);
    // Primary: verifies the confirmation.
    assert!(verify(
        &inp.device_pub,
        &[&b"devicelink/v1 confirm"[..], &th2].concat(),
        &confirm
    ));
}

fn floor_inputs(rng: &mut ChaCha20Rng) -> FloorInputs {
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

fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitives");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let inp = floor_inputs(&mut rng);
    let peer = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let secret = StaticSecret::random_from_rng(&mut rng);
    g.bench_function("x25519_keygen", |b| {
        b.iter(|| PublicKey::from(&StaticSecret::random_from_rng(&mut rng)))
    });
    g.bench_function("x25519_dh", |b| {
        b.iter(|| secret.diffie_hellman(black_box(&peer)))
    });
    let msg = [7u8; 64];
    g.bench_function("ed25519_sign", |b| {
        b.iter(|| inp.account.sign(black_box(&msg)))
    });
    let sig = inp.account.sign(&msg);
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| verify(black_box(&inp.account_pub), &msg, &sig))
    });
    g.bench_function("hkdf_schedule", |b| {
        b.iter(|| hkdf_schedule(&[1; 16], black_box(&[2; 32]), &[3; 32]))
    });
    let plain = [0u8; 292];
    g.bench_function("aead_seal_292", |b| {
        b.iter(|| seal(&[5; 32], [0; 12], &[1; 18], black_box(&plain)))
    });
    let sealed = seal(&[5; 32], [0; 12], &[1; 18], &plain);
    g.bench_function("aead_open_292", |b| {
        b.iter(|| open(&[5; 32], [0; 12], &[1; 18], black_box(&sealed)))
    });
    g.bench_function("hmac_sha256", |b| {
        b.iter(|| {
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]),
                black_box(&[0u8; 66]),
            )
        })
    });
    g.bench_function("sha256_64", |b| b.iter(|| sha256(&[black_box(&[0u8; 64])])));
    g.bench_function("floor", |b| b.iter(|| floor(&inp, &mut rng)));
    g.finish();
}

// ---------------------------------------------------------------- link

struct LinkFixture {
    account: Account,
    identity: DeviceIdentity,
    label: DeviceLabel,
    policy: Policy,
}

fn link_fixture() -> LinkFixture {
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
fn full_link(
    account: &mut Account,
    identity: DeviceIdentity,
    f: &LinkFixture,
    rng: &mut ChaCha20Rng,
) {
    let t = now();
    let mut companion = Companion::new(identity, f.label.clone(), &f.policy, rng, t);
    let text = companion.offer().unwrap().to_text();
    let (mut primary, hello) = account.scan(&text, rng, t).unwrap();
    let request = companion.receive_hello(&hello, t).unwrap();
    primary.receive_request(&request, t).unwrap();
    let grant = account.grant(&mut primary, rng, t).unwrap();
    let confirm = companion.receive_grant(&grant, t).unwrap();
    black_box(account.confirm(&mut primary, &confirm, t).unwrap());
}

fn link(c: &mut Criterion) {
    let mut g = c.benchmark_group("link");
    let f = link_fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    // One fresh account per iteration (setup not timed). PerIteration keeps
    // the working set to one account, as in real use, instead of a batch of
    // thousands that would fall out of cache.
    g.bench_function("full_link", |b| {
        b.iter_batched(
            || (f.account.clone(), f.identity.clone()),
            |(mut account, identity)| full_link(&mut account, identity, &f, &mut rng),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("offer_create", |b| {
        b.iter_batched(
            || f.identity.clone(),
            |id| Companion::new(id, f.label.clone(), &f.policy, &mut rng, now()),
            BatchSize::SmallInput,
        )
    });
    let companion = Companion::new(
        f.identity.clone(),
        f.label.clone(),
        &f.policy,
        &mut rng,
        now(),
    );
    let offer = companion.offer().unwrap().clone();
    let text = offer.to_text();
    g.bench_function("offer_encode", |b| b.iter(|| black_box(&offer).to_text()));
    g.bench_function("offer_decode", |b| {
        b.iter(|| PairingOffer::from_text(black_box(&text)).unwrap())
    });

    // Each step, from a state cloned before it.
    let mut account = f.account.clone();
    g.bench_function("primary_scan", |b| {
        b.iter(|| {
            f.account
                .clone()
                .scan(black_box(&text), &mut rng, now())
                .unwrap()
        })
    });
    let (primary, hello) = account.scan(&text, &mut rng, now()).unwrap();
    g.bench_function("companion_hello", |b| {
        b.iter_batched(
            || companion.clone(),
            |mut c| c.receive_hello(black_box(&hello), now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut c2 = companion.clone();
    let request = c2.receive_hello(&hello, now()).unwrap();
    g.bench_function("primary_request", |b| {
        b.iter_batched(
            || primary.clone(),
            |mut p| p.receive_request(black_box(&request), now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut p2 = primary.clone();
    p2.receive_request(&request, now()).unwrap();
    g.bench_function("primary_grant", |b| {
        b.iter_batched(
            || (account.clone(), p2.clone()),
            |(mut a, mut p)| a.grant(&mut p, &mut rng, now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut p3 = p2.clone();
    let grant = account.grant(&mut p3, &mut rng, now()).unwrap();
    g.bench_function("companion_grant", |b| {
        b.iter_batched(
            || c2.clone(),
            |mut c| c.receive_grant(black_box(&grant), now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let confirm = c2.clone().receive_grant(&grant, now()).unwrap();
    g.bench_function("primary_confirm", |b| {
        b.iter_batched(
            || (account.clone(), p3.clone()),
            |(mut a, mut p)| a.confirm(&mut p, black_box(&confirm), now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------- registry

fn synthetic_id(i: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8] = 0xd1;
    b
}

fn load(d: &mut Directory, i: u64, last: u64) {
    d.load_account(
        AccountId::from_bytes(synthetic_id(i)),
        1,
        Timestamp::from_unix_millis(last),
        &[DeviceListEntry {
            index: DeviceIndex(1),
            device: DeviceKey::from_bytes(synthetic_id(i + 1)),
        }],
    )
    .unwrap();
}

/// The first `expiring` accounts were last active 15 days ago (expired now).
fn expire(d: &mut Directory, expiring: u64) {
    for i in 0..expiring {
        load(d, i, NOW - 15 * 86_400_000);
    }
}

/// A directory of `n` accounts with one companion each, last active a day
/// ago; then `expiring` of them made 15 days stale.
fn directory(n: u64, expiring: u64) -> Directory {
    let mut d = Directory::new(&Policy::default());
    for i in 0..n {
        load(&mut d, i, NOW - 86_400_000);
    }
    expire(&mut d, expiring);
    d
}

fn registry(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let f = link_fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    // One account with four linked companions.
    let mut account = f.account.clone();
    for _ in 0..4 {
        full_link(
            &mut account,
            DeviceIdentity::generate(&mut rng),
            &f,
            &mut rng,
        );
    }
    g.bench_function("link", |b| {
        b.iter_batched(
            || (f.account.clone(), f.identity.clone()),
            |(mut a, id)| full_link(&mut a, id, &f, &mut rng),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("revoke", |b| {
        b.iter_batched(
            || account.clone(),
            |mut a| a.revoke(DeviceIndex(2), now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("heartbeat", |b| {
        b.iter_batched(
            || account.clone(),
            |mut a| a.heartbeat(now()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("poll_expired_4", |b| {
        b.iter_batched(
            || account.clone(),
            |mut a| a.poll(now().saturating_add(days(15))),
            BatchSize::SmallInput,
        )
    });

    // The directory: sweep cost follows what expired (100 accounts), not the
    // population; lookups and updates are O(1)/O(log n).
    for n in [1_000u64, 100_000, 1_000_000] {
        let mut base = directory(n, 100);
        g.bench_with_input(BenchmarkId::new("sweep_100_expired", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Re-expire the same 100 accounts (not timed).
                    expire(&mut base, 100);
                    let start = Instant::now();
                    let swept = base.sweep(now());
                    total += start.elapsed();
                    assert_eq!(swept.len(), 100);
                }
                total
            })
        });
        let probe = AccountId::from_bytes(synthetic_id(n / 2));
        let key = DeviceKey::from_bytes(synthetic_id(n / 2 + 1));
        g.bench_with_input(BenchmarkId::new("is_linked", n), &n, |b, _| {
            b.iter(|| base.is_linked(black_box(&probe), DeviceIndex(1), &key, now()))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- ledger

fn ledger(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    let ledger = Ledger::in_memory();
    let mut next = 0u64;
    let mut token = || {
        next += 1;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&next.to_le_bytes());
        TokenId::from_bytes(b)
    };
    g.bench_function("register_redeem", |b| {
        b.iter(|| {
            let t = token();
            ledger.register(t, now().saturating_add(days(1))).unwrap();
            ledger.redeem(&t, now()).unwrap()
        })
    });
    // Contended: two threads race to redeem each token; exactly one wins.
    g.bench_function("redeem_contended_2_threads", |b| {
        b.iter_custom(|iters| {
            let ledger = Arc::new(Ledger::in_memory());
            let tokens: Vec<TokenId> = (0..iters).map(|_| token()).collect();
            for t in &tokens {
                ledger.register(*t, now().saturating_add(days(1))).unwrap();
            }
            let tokens = Arc::new(tokens);
            let barrier = Arc::new(Barrier::new(2));
            let start = Instant::now();
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (l, ts, bar) = (ledger.clone(), tokens.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        bar.wait();
                        ts.iter().filter(|t| l.redeem(t, now()).is_ok()).count()
                    })
                })
                .collect();
            let won: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            let elapsed = start.elapsed();
            assert_eq!(won as u64, iters);
            elapsed
        })
    });
    g.finish();
}

// ---------------------------------------------------------------- qr

fn qr(c: &mut Criterion) {
    let mut g = c.benchmark_group("qr");
    let f = link_fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let companion = Companion::new(
        f.identity.clone(),
        f.label.clone(),
        &f.policy,
        &mut rng,
        now(),
    );
    let text = companion.offer().unwrap().to_text();
    g.bench_function("encode", |b| {
        b.iter(|| OfferQr::new(black_box(&text)).unwrap())
    });
    let code = OfferQr::new(&text).unwrap();
    g.bench_function("render_terminal", |b| {
        b.iter(|| code.to_terminal(&TerminalStyle::default()))
    });
    g.bench_function("render_png", |b| {
        b.iter(|| code.to_png(&ImageStyle::default()).unwrap())
    });
    g.bench_function("render_svg", |b| {
        b.iter(|| code.to_svg(&ImageStyle::default()))
    });
    g.finish();
}

#[allow(missing_docs)]
mod groups {
    use super::*;
    criterion_group!(benches, primitives, link, registry, ledger, qr);
}
criterion_main!(groups::benches);
