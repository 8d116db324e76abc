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

mod common;
use common::*;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Bencher, BenchmarkId, Criterion};
use devicelink::audit::{Actor, AuditEvent, AuditLog};
use devicelink::certificate::DeviceListEntry;
use devicelink::qr::{ImageStyle, OfferQr, TerminalStyle};
use devicelink::relay::{Budget, ClientId, Directory, HelloDigest, Ledger, SourceKey, TokenStore};
use devicelink::time::days;
use devicelink::{
    AccountId, Companion, DeviceIdentity, DeviceIndex, DeviceKey, DeviceLabel, PairingOffer,
    Policy, Timestamp, TokenId,
};
use ed25519_dalek::Signer;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::hmac;
use x25519_dalek::{PublicKey, StaticSecret};

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
    g.bench_function("peer_floor", |b| b.iter(|| peer_floor(&inp, &mut rng)));
    g.finish();
}

// ---------------------------------------------------------------- link

/// Times one full link into a fresh account (setup not timed).
/// PerIteration keeps the working set to one account, as in real use, instead
/// of a batch of thousands that would fall out of cache.
fn bench_full_link(b: &mut Bencher<'_>, f: &LinkFixture, rng: &mut ChaCha20Rng) {
    b.iter_batched(
        || (f.account.clone(), f.identity.clone()),
        |(mut account, identity)| full_link(&mut account, identity, f, rng),
        BatchSize::PerIteration,
    )
}

fn link(c: &mut Criterion) {
    let mut g = c.benchmark_group("link");
    let f = link_fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    g.bench_function("full_link", |b| bench_full_link(b, &f, &mut rng));
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
            let mut a = f.account.clone();
            a.open_link_intent(now());
            a.scan(black_box(&text), &mut rng, now()).unwrap()
        })
    });
    account.open_link_intent(now());
    let (primary, hello) = account.scan(&text, &mut rng, now()).unwrap();
    g.bench_function("companion_hello", |b| {
        b.iter_batched(
            || companion.clone(),
            |mut c| c.receive_hello(black_box(&hello), &mut rng, now()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut c2 = companion.clone();
    let request = c2.receive_hello(&hello, &mut rng, now()).unwrap();
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
    let mut c3 = c2.clone();
    c3.receive_grant(&grant, now()).unwrap();
    let confirm = c3.consent(now()).unwrap();
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
        (1, synthetic_id(i + 2)),
        Timestamp::from_unix_millis(last),
        &[DeviceListEntry::new(
            DeviceIndex(1),
            DeviceKey::from_bytes(synthetic_id(i + 1)),
            DeviceLabel::new(LABEL).unwrap(),
            Timestamp::from_unix_millis(last),
        )],
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
    g.bench_function("link", |b| bench_full_link(b, &f, &mut rng));
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
    let f = link_fixture();
    let companion = ClientId::from(1);
    let primary = ClientId::from(2);
    // One real exchange, so that route() sees a Hello with its proof.
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut comp = Companion::new(
        f.identity.clone(),
        f.label.clone(),
        &f.policy,
        &mut rng,
        now(),
    );
    let text = comp.offer().unwrap().to_text();
    let token = comp.offer().unwrap().token_id();
    let mut account = f.account.clone();
    account.open_link_intent(now());
    let (_p, hello) = account.scan(&text, &mut rng, now()).unwrap();
    let request = comp.receive_hello(&hello, &mut rng, now()).unwrap();
    // Register, Hello (reserve), Request (redeem) for one token, then a
    // sweep of it: the whole life of a token at the relay.
    g.bench_function("register_reserve_redeem_sweep", |b| {
        let ledger = Ledger::default();
        let mut t = 0u64;
        b.iter(|| {
            // Far apart in time, so each iteration's tombstone is swept.
            t += 3_600_000;
            let at = now().saturating_add(Duration::from_millis(t));
            ledger
                .register(
                    companion,
                    SourceKey::LOCAL,
                    token,
                    at.saturating_add(days(1)),
                    at,
                )
                .unwrap();
            ledger.route(primary, &hello, at).unwrap();
            ledger.route(companion, &request, at).unwrap();
            let later = at.saturating_add(Duration::from_millis(60_000 + 300_000));
            assert_eq!(ledger.sweep(later, usize::MAX).unwrap(), 1);
        })
    });
    // Contended: two threads race to reserve each token with a Hello, then
    // to redeem it with the companion's Request; exactly one wins each.
    // (Store-level: the same proof cannot serve many tokens, so the race
    // goes through the TokenStore directly.)
    g.bench_function("reserve_redeem_contended_2_threads", |b| {
        b.iter_custom(|iters| {
            let ledger = Arc::new(Ledger::default());
            let quota = Budget::unlimited();
            let tokens: Vec<TokenId> = (0..iters)
                .map(|i| {
                    let mut b = [0u8; 16];
                    b[..8].copy_from_slice(&i.to_le_bytes());
                    TokenId::from_bytes(b)
                })
                .collect();
            for t in &tokens {
                ledger
                    .store()
                    .register(
                        *t,
                        companion,
                        SourceKey::LOCAL,
                        now().saturating_add(days(1)),
                        quota,
                    )
                    .unwrap();
            }
            let tokens = Arc::new(tokens);
            let barrier = Arc::new(Barrier::new(2));
            let start = Instant::now();
            let handles: Vec<_> = (0..2u64)
                .map(|i| {
                    let (l, ts, bar) = (ledger.clone(), tokens.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        bar.wait();
                        let until = now().saturating_add(Duration::from_secs(30));
                        let keep = now().saturating_add(Duration::from_secs(300));
                        ts.iter()
                            .filter(|t| {
                                // Whoever reserves, one redeem follows a
                                // reservation: exactly one succeeds.
                                let hello = HelloDigest::from_bytes([i as u8; 32]);
                                let _ = l.store().reserve(
                                    t,
                                    ClientId::from(10 + i),
                                    &hello,
                                    now(),
                                    until,
                                );
                                l.store().redeem(t, companion, now(), keep).is_ok()
                            })
                            .count()
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

// ---------------------------------------------------------------- audit

/// The cost of the audit choice: entries are hash-chained and anchored in
/// the lists and heartbeats the account signs anyway (`append`, one SHA-256
/// over the entry's JSON), against a signed checkpoint per entry
/// (`append_with_checkpoint`, one Ed25519 signature more).
fn audit(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit");
    let f = link_fixture();
    let event = || AuditEvent::Linked {
        index: DeviceIndex(1),
    };
    g.bench_function("append", |b| {
        b.iter_batched(
            || AuditLog::new(f.account.account_id()),
            |mut log| {
                log.append(Actor::Companion(DeviceIndex(1)), event(), now())
                    .unwrap();
                log
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("append_with_checkpoint", |b| {
        b.iter_batched(
            || AuditLog::new(f.account.account_id()),
            |mut log| {
                log.append(Actor::Companion(DeviceIndex(1)), event(), now())
                    .unwrap();
                log.checkpoint(f.account.key(), now()).unwrap();
                log
            },
            BatchSize::SmallInput,
        )
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
    criterion_group!(benches, primitives, link, registry, ledger, audit, qr);
}
criterion_main!(groups::benches);
