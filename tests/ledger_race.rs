//! The relay side under pressure: the token ledger's two-phase, exactly-once
//! redemption raced from many threads, its registration limits, sizes and
//! clock. (The many-account directory is in `tests/directory.rs`.)
//!
//! Deterministic inputs (seeded RNG, virtual clock); the only nondeterminism
//! is the thread interleaving, which the assertions do not depend on.

use std::sync::Barrier;
use std::time::Duration;

use devicelink::handshake::{MessageKind, HEADER_LEN};
use devicelink::offer::OfferState;
use devicelink::relay::{
    Budget, BudgetScope, HelloDigest, SourceKey, TokenState, TokenStore, Transition,
    DEFAULT_SESSION_WINDOW,
};
use devicelink::{
    Account, ClientId, Companion, CompanionState, DeviceIdentity, DeviceLabel, Ledger,
    LedgerConfig, LedgerError, Policy, PrimaryHandshake, Routed, Timestamp, TokenId,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Where every registration here comes from (one network source).
const SRC: SourceKey = SourceKey::LOCAL;

/// The one place these tests build a Hello: a primary (an account of its
/// own, from its "Link a device" screen) scans the QR text.
fn scan(text: &str, rng: &mut ChaCha20Rng, now: Timestamp) -> (PrimaryHandshake, Vec<u8>) {
    let mut account = Account::generate(Policy::default(), rng, now);
    account.open_link_intent(now);
    account.scan(text, rng, now).unwrap()
}

const T0: u64 = 1_700_000_000_000;
const THREADS: usize = 8;
/// The companion's connection (it registers its tokens).
const COMPANION: ClientId = ClientId::from_bytes([0xc0; 16]);
/// A primary's connection.
const PRIMARY: ClientId = ClientId::from_bytes([0xa0; 16]);

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

fn random_token(rng: &mut ChaCha20Rng) -> TokenId {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    TokenId::from_bytes(b)
}

/// A companion showing an offer.
fn showing_companion(rng: &mut ChaCha20Rng, now: Timestamp) -> (Companion, String, Timestamp) {
    let policy = Policy::default();
    let identity = DeviceIdentity::generate(rng);
    let companion = Companion::new(
        identity,
        DeviceLabel::new("browser").unwrap(),
        &policy,
        rng,
        now,
    );
    let text = companion.offer().unwrap().to_text();
    let CompanionState::AwaitingScan {
        offer: OfferState::Showing { expires_at, .. },
    } = companion.state()
    else {
        panic!("companion is not showing an offer");
    };
    (companion, text, expires_at)
}

/// A companion showing an offer, registered with the ledger by `COMPANION`.
fn registered_companion(
    ledger: &Ledger,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> (Companion, String, TokenId, Timestamp) {
    let (companion, text, expires_at) = showing_companion(rng, now);
    let token = companion.offer().unwrap().token_id();
    assert_eq!(
        ledger.register(COMPANION, SRC, token, expires_at, now),
        Ok(expires_at)
    );
    (companion, text, token, expires_at)
}

fn reserved(token: TokenId, kind: MessageKind, to: ClientId, until: Timestamp) -> Routed {
    Routed {
        token_id: token,
        kind,
        forward_to: to,
        transition: Transition::Reserved { until },
    }
}

fn forwarded(token: TokenId, kind: MessageKind, to: ClientId) -> Routed {
    Routed {
        token_id: token,
        kind,
        forward_to: to,
        transition: Transition::None,
    }
}

fn reserve_until(ledger: &Ledger, now: Timestamp) -> Timestamp {
    now.saturating_add(ledger.config().reserve_window)
}

#[test]
fn racing_hellos_reserve_once_and_racing_requests_redeem_once() {
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    // One companion registers 200 tokens (their tombstones stay): no budget.
    let ledger = Ledger::in_memory(LedgerConfig {
        tokens: Budget::unlimited(),
        ..LedgerConfig::default()
    });
    let primaries: Vec<ClientId> = (0..THREADS as u64)
        .map(|i| ClientId::from(100 + i))
        .collect();
    let mut tokens = Vec::new();
    for round in 0..200u64 {
        let now = at(round);
        let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
        tokens.push(token);
        let hellos: Vec<Vec<u8>> = (0..THREADS).map(|_| scan(&text, &mut rng, now).1).collect();
        let barrier = Barrier::new(THREADS);
        let results: Vec<Result<Routed, LedgerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = hellos
                .iter()
                .zip(&primaries)
                .map(|(hello, from)| {
                    let (ledger, barrier) = (&ledger, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        ledger.route(*from, hello, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..THREADS).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let w = winners[0];
        let until = reserve_until(&ledger, now);
        assert_eq!(
            results[w],
            Ok(reserved(token, MessageKind::Hello, COMPANION, until))
        );
        for (i, r) in results.iter().enumerate() {
            if i != w {
                assert_eq!(
                    r,
                    &Err(LedgerError::TokenReserved { until }),
                    "round {round}"
                );
                assert!(r.as_ref().unwrap_err().is_retryable());
            }
        }

        // The companion answers the routed Hello; its Request, sent many
        // times at once, redeems the token once and goes to the winner.
        let request = companion.receive_hello(&hellos[w], &mut rng, now).unwrap();
        let results: Vec<Result<Routed, LedgerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (ledger, barrier, request) = (&ledger, &barrier, &request);
                    s.spawn(move || {
                        barrier.wait();
                        ledger.route(COMPANION, request, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let redeemed: Vec<&Routed> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(redeemed.len(), 1, "round {round}: {results:?}");
        assert_eq!(
            *redeemed[0],
            Routed {
                token_id: token,
                kind: MessageKind::Request,
                forward_to: primaries[w],
                transition: Transition::Redeemed { at: now },
            }
        );
        for r in results.iter().filter(|r| r.is_err()) {
            assert_eq!(r, &Err(LedgerError::TokenAlreadyRedeemed), "round {round}");
        }
        // Every later Hello, whatever the clock, is refused the same way.
        for hello in &hellos {
            assert_eq!(
                ledger.route(PRIMARY, hello, at(1)),
                Err(LedgerError::TokenAlreadyRedeemed)
            );
        }
        // A redeemed token still counts (a tombstone) until it is swept.
        assert_eq!(ledger.store().client_tokens(&COMPANION), round + 1);
    }
    assert_eq!(ledger.store().len(), 200);
    // A redeemed token stays for its session window (past its offer's
    // expiry), then it is swept and reads as unknown.
    let window = millis(DEFAULT_SESSION_WINDOW);
    assert!(window > 60_000);
    assert_eq!(ledger.sweep(at(60_000), usize::MAX), Ok(0));
    assert_eq!(ledger.sweep(at(window - 1), usize::MAX), Ok(0));
    assert_eq!(ledger.sweep(at(window + 199), 150), Ok(150));
    assert_eq!(ledger.sweep(at(window + 199), usize::MAX), Ok(50));
    for t in &tokens {
        assert_eq!(ledger.store().get(t), Ok(None));
    }
}

#[test]
fn route_lets_only_the_first_hello_through() {
    let mut rng = ChaCha20Rng::seed_from_u64(101);
    let ledger = Ledger::default();
    let now = at(0);
    let (mut companion, text, token, expires_at) = registered_companion(&ledger, &mut rng, now);

    // Two primaries scan the same code; their Hellos differ, the token is one.
    let (mut first, hello_a) = scan(&text, &mut rng, now);
    let (_second, hello_b) = scan(&text, &mut rng, now);
    assert_ne!(hello_a, hello_b);

    // Unroutable messages.
    assert!(matches!(
        ledger.route(PRIMARY, &hello_a[..HEADER_LEN - 1], now),
        Err(LedgerError::Unroutable(_))
    ));
    assert!(matches!(
        ledger.route(PRIMARY, b"", now),
        Err(LedgerError::Unroutable(_))
    ));
    // Before a Hello, nothing else routes for the token.
    let request_like = {
        let mut c = companion.clone();
        c.receive_hello(&hello_b, &mut rng, now).unwrap()
    };
    assert_eq!(
        ledger.route(COMPANION, &request_like, now),
        Err(LedgerError::NotReserved)
    );

    // A Hello whose redemption proof was tampered with (someone who never
    // saw the code) is refused and does not touch the token.
    let mut forged = hello_b.clone();
    forged[HEADER_LEN] ^= 0x01;
    assert_eq!(
        ledger.route(PRIMARY, &forged, now),
        Err(LedgerError::BadRedemptionProof)
    );
    assert_eq!(
        ledger.store().get(&token).unwrap().unwrap().state,
        TokenState::Open
    );

    let until = reserve_until(&ledger, now);
    let a = ClientId::from(1);
    let b = ClientId::from(2);
    assert_eq!(
        ledger.route(a, &hello_a, now),
        Ok(reserved(token, MessageKind::Hello, COMPANION, until))
    );
    assert_eq!(
        ledger.route(b, &hello_b, now),
        Err(LedgerError::TokenReserved { until })
    );
    assert_eq!(
        ledger.route(a, &hello_a, now),
        Err(LedgerError::TokenReserved { until })
    );

    // The rest of the winning exchange routes by the token.
    let request = companion.receive_hello(&hello_a, &mut rng, now).unwrap();
    assert_eq!(
        ledger.route(COMPANION, &request, now),
        Ok(Routed {
            token_id: token,
            kind: MessageKind::Request,
            forward_to: a,
            transition: Transition::Redeemed { at: now },
        })
    );
    first.receive_request(&request, now).unwrap();
    for hello in [&hello_a, &hello_b] {
        assert_eq!(
            ledger.route(b, hello, now),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
    }
    assert_eq!(
        ledger.route(COMPANION, &request, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );

    // Another companion's token: a Hello after expiry is refused, and so is
    // one for a token nobody registered.
    let (_c2, text2, token2, expires2) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello2) = scan(&text2, &mut rng, expires2);
    assert_eq!(
        ledger.route(PRIMARY, &hello2, expires2),
        Err(LedgerError::TokenExpired)
    );
    assert_ne!(token2, token);
    let (_c3, text3, _) = showing_companion(&mut rng, now);
    let (_p3, hello3) = scan(&text3, &mut rng, expires2);
    assert_eq!(
        ledger.route(PRIMARY, &hello3, expires2),
        Err(LedgerError::UnknownToken)
    );
    assert!(expires_at > now);
}

#[test]
fn a_corrupted_hello_is_released_and_the_genuine_hello_then_links() {
    // Flip one bit in the primary's key, then one in the MAC: the relay
    // cannot tell (it has no key), the companion can.
    for (seed, corrupt_at) in [(110, HEADER_LEN + 16), (111, HEADER_LEN + 16 + 32 + 5)] {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let ledger = Ledger::default();
        let now = at(0);
        let policy = Policy::default();
        let mut account = Account::generate(policy, &mut rng, now);
        let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
        account.open_link_intent(now);
        let (mut primary, hello) = account.scan(&text, &mut rng, now).unwrap();
        let mut corrupted = hello.clone();
        corrupted[corrupt_at] ^= 0x10;

        // The corrupted copy arrives first and reserves the token.
        let until = reserve_until(&ledger, now);
        assert_eq!(
            ledger.route(PRIMARY, &corrupted, now),
            Ok(reserved(token, MessageKind::Hello, COMPANION, until))
        );
        // Meanwhile the genuine one is told to retry.
        assert_eq!(
            ledger.route(PRIMARY, &hello, now),
            Err(LedgerError::TokenReserved { until })
        );
        // The companion refuses the corrupted Hello without changing state,
        // and releases the token. Nobody else can release it.
        let saved = companion.save().unwrap();
        assert!(companion
            .receive_hello(&corrupted, &mut rng, at(1))
            .is_err());
        assert_eq!(companion.save().unwrap(), saved);
        let refused = HelloDigest::of(&corrupted);
        assert_eq!(
            ledger.release(PRIMARY, &token, &refused, at(1)),
            Err(LedgerError::WrongClient)
        );
        // A release naming another Hello than the reserving one changes nothing.
        assert_eq!(
            ledger.release(COMPANION, &token, &HelloDigest::of(&hello), at(1)),
            Err(LedgerError::ReservedForOtherHello)
        );
        assert_eq!(ledger.release(COMPANION, &token, &refused, at(1)), Ok(()));
        assert_eq!(
            ledger.release(COMPANION, &token, &refused, at(1)),
            Err(LedgerError::NotReserved)
        );

        // The genuine Hello (resent) reserves, and the link completes with
        // every message routed to the right side.
        let now = at(2);
        assert_eq!(
            ledger.route(PRIMARY, &hello, now),
            Ok(reserved(
                token,
                MessageKind::Hello,
                COMPANION,
                reserve_until(&ledger, now)
            ))
        );
        let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
        assert_eq!(
            ledger.route(COMPANION, &request, now).map(|r| r.forward_to),
            Ok(PRIMARY)
        );
        primary.receive_request(&request, now).unwrap();
        let grant = account.grant(&mut primary, &mut rng, now).unwrap();
        assert_eq!(
            ledger.route(PRIMARY, &grant, now),
            Ok(forwarded(token, MessageKind::Grant, COMPANION))
        );
        companion.receive_grant(&grant, now).unwrap();
        let confirm = companion.consent(now).unwrap();
        assert_eq!(
            ledger.route(COMPANION, &confirm, now),
            Ok(forwarded(token, MessageKind::Confirm, PRIMARY))
        );
        account.confirm(&mut primary, &confirm, now).unwrap();
        assert!(companion.session().unwrap().is_linked(now));
        // The corrupted Hello, replayed, no longer reserves anything.
        assert_eq!(
            ledger.route(PRIMARY, &corrupted, now),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
    }
}

#[test]
fn a_silent_companion_blocks_the_token_only_for_the_reserve_window() {
    let mut rng = ChaCha20Rng::seed_from_u64(112);
    let ledger = Ledger::default();
    let now = at(0);
    let (_companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
    let (_p1, hello1) = scan(&text, &mut rng, now);
    let (_p2, hello2) = scan(&text, &mut rng, now);
    let until = reserve_until(&ledger, now);
    assert_eq!(ledger.config().reserve_window, Duration::from_secs(30));
    ledger.route(ClientId::from(1), &hello1, now).unwrap();
    let just_before = Timestamp::from_unix_millis(until.as_unix_millis() - 1);
    assert_eq!(
        ledger.route(ClientId::from(2), &hello2, just_before),
        Err(LedgerError::TokenReserved { until })
    );
    assert_eq!(
        ledger.route(ClientId::from(2), &hello2, until),
        Ok(reserved(
            token,
            MessageKind::Hello,
            COMPANION,
            reserve_until(&ledger, until)
        ))
    );
}

#[test]
fn a_request_or_release_from_another_client_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(113);
    let ledger = Ledger::default();
    let now = at(0);
    let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
    let (_primary, hello) = scan(&text, &mut rng, now);
    ledger.route(PRIMARY, &hello, now).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
    let before = ledger.save().unwrap();
    for intruder in [PRIMARY, ClientId::from(77)] {
        assert_eq!(
            ledger.route(intruder, &request, now),
            Err(LedgerError::WrongClient)
        );
        assert_eq!(
            ledger.release(intruder, &token, &HelloDigest::of(&hello), now),
            Err(LedgerError::WrongClient)
        );
    }
    assert_eq!(ledger.save().unwrap(), before);
    // Nothing else routes before the redemption.
    for kind in [
        MessageKind::Grant,
        MessageKind::Refusal,
        MessageKind::Confirm,
    ] {
        let m = message(kind, token, kind.size_range().0);
        assert_eq!(
            ledger.route(PRIMARY, &m, now),
            Err(LedgerError::NotRedeemed)
        );
    }
    assert_eq!(ledger.save().unwrap(), before);
    assert_eq!(
        ledger.route(COMPANION, &request, now).map(|r| r.forward_to),
        Ok(PRIMARY)
    );
    // After the redemption, Grant and Refusal only from the redeeming
    // primary, the Confirm only from the companion.
    let after = ledger.save().unwrap();
    for (kind, sender, wrong) in [
        (MessageKind::Grant, PRIMARY, [COMPANION, ClientId::from(77)]),
        (
            MessageKind::Refusal,
            PRIMARY,
            [COMPANION, ClientId::from(77)],
        ),
        (
            MessageKind::Confirm,
            COMPANION,
            [PRIMARY, ClientId::from(77)],
        ),
    ] {
        let m = message(kind, token, kind.size_range().0);
        for intruder in wrong {
            assert_eq!(
                ledger.route(intruder, &m, now),
                Err(LedgerError::WrongClient),
                "{kind:?} from {intruder:?}"
            );
        }
        assert!(ledger.route(sender, &m, now).is_ok(), "{kind:?}");
    }
    assert_eq!(ledger.save().unwrap(), after);
}

#[test]
fn a_late_release_never_cancels_a_newer_reservation() {
    // PROTOCOL.md §12 item 29: a corrupted Hello reserves, its reservation
    // lapses, the genuine Hello reserves; the companion's refusal of the
    // corrupted one arrives only then.
    let mut rng = ChaCha20Rng::seed_from_u64(116);
    let ledger = Ledger::default();
    let now = at(0);
    let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello) = scan(&text, &mut rng, now);
    let mut corrupted = hello.clone();
    corrupted[HEADER_LEN + 20] ^= 1;
    ledger.route(ClientId::from(5), &corrupted, now).unwrap();
    let lapsed = reserve_until(&ledger, now);
    assert_eq!(
        ledger.route(PRIMARY, &hello, lapsed).map(|r| r.forward_to),
        Ok(COMPANION)
    );
    let before = ledger.save().unwrap();
    assert_eq!(
        ledger.release(COMPANION, &token, &HelloDigest::of(&corrupted), lapsed),
        Err(LedgerError::ReservedForOtherHello)
    );
    assert_eq!(ledger.save().unwrap(), before);
    let request = companion.receive_hello(&hello, &mut rng, lapsed).unwrap();
    assert_eq!(
        ledger
            .route(COMPANION, &request, lapsed)
            .map(|r| r.forward_to),
        Ok(PRIMARY)
    );
}

#[test]
fn registration_expiry_is_clamped_and_swept() {
    let mut rng = ChaCha20Rng::seed_from_u64(114);
    let ledger = Ledger::default();
    let now = at(0);
    let lifetime = ledger.config().max_offer_lifetime;
    assert_eq!(lifetime, Duration::from_secs(60));
    let (_companion, text, _) = showing_companion(&mut rng, now);
    let token = devicelink::PairingOffer::from_text(&text)
        .unwrap()
        .token_id();
    let capped = now.saturating_add(lifetime);
    assert_eq!(
        ledger.register(COMPANION, SRC, token, Timestamp::MAX, now),
        Ok(capped)
    );
    assert_eq!(
        ledger.store().get(&token).unwrap().unwrap().expires_at,
        capped
    );
    // It ends with the clamped expiry: a Hello then is refused, a sweep
    // removes it.
    let (_p, hello) = scan(&text, &mut rng, now);
    assert_eq!(
        ledger.route(PRIMARY, &hello, capped),
        Err(LedgerError::TokenExpired)
    );
    assert_eq!(ledger.sweep(capped, usize::MAX), Ok(1));
    assert!(ledger.store().is_empty());
    assert_eq!(ledger.sweep(Timestamp::MAX, usize::MAX), Ok(0));

    // The cap follows the policy's longest offer lifetime.
    let policy = Policy::builder()
        .rotated_offer_lifetime(Duration::from_secs(90))
        .build()
        .unwrap();
    let config = LedgerConfig::from_policy(&policy);
    assert_eq!(config.max_offer_lifetime, Duration::from_secs(90));
    let ledger = Ledger::in_memory(config);
    assert_eq!(
        ledger.register(COMPANION, SRC, token, Timestamp::MAX, now),
        Ok(at(90_000))
    );
    // An expiry not after now is refused.
    assert_eq!(
        ledger.register(COMPANION, SRC, random_token(&mut rng), now, now),
        Err(LedgerError::TokenExpired)
    );
}

#[test]
fn quotas_per_client_source_and_store() {
    let mut rng = ChaCha20Rng::seed_from_u64(115);
    let config = LedgerConfig {
        tokens: Budget::new(8, 10, 12).with_reserve(0, 0),
        ..LedgerConfig::default()
    };
    let ledger = Ledger::in_memory(config);
    let now = at(0);
    let exp = at(20_000);
    for _ in 0..8 {
        ledger
            .register(COMPANION, SRC, random_token(&mut rng), exp, now)
            .unwrap();
    }
    let over_client = LedgerError::QuotaExceeded {
        scope: BudgetScope::Client,
        limit: 8,
    };
    let extra = random_token(&mut rng);
    assert_eq!(
        ledger.register(COMPANION, SRC, extra, exp, now),
        Err(over_client.clone())
    );
    assert!(over_client.is_retryable());
    assert_eq!(ledger.store().get(&extra), Ok(None));
    // Other clients of the same source share its budget; other sources
    // have their own, up to the store's.
    for i in 0..2 {
        ledger
            .register(ClientId::from(i), SRC, random_token(&mut rng), exp, now)
            .unwrap();
    }
    assert_eq!(
        ledger.register(ClientId::from(9), SRC, extra, exp, now),
        Err(LedgerError::QuotaExceeded {
            scope: BudgetScope::Source,
            limit: 10
        })
    );
    let other = SourceKey::from_bytes([7; 16]);
    for i in 0..2 {
        ledger
            .register(
                ClientId::from(20 + i),
                other,
                random_token(&mut rng),
                exp,
                now,
            )
            .unwrap();
    }
    assert_eq!(
        ledger.register(
            ClientId::from(9),
            SourceKey::from_bytes([8; 16]),
            extra,
            exp,
            now
        ),
        Err(LedgerError::QuotaExceeded {
            scope: BudgetScope::Total,
            limit: 12
        })
    );
    assert_eq!(ledger.store().len(), 12);
    // Once the tokens expire, a registration makes room by sweeping.
    assert_eq!(
        ledger.register(COMPANION, SRC, extra, at(30_000), exp),
        Ok(at(30_000))
    );
    assert_eq!(ledger.store().len(), 1);
    assert_eq!(ledger.store().client_tokens(&COMPANION), 1);

    // A redemption leaves a tombstone that still counts for the client
    // until it is swept (or abandoned).
    let ledger = Ledger::in_memory(LedgerConfig {
        tokens: Budget::new(1, 10, 100),
        ..LedgerConfig::default()
    });
    let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
    assert!(matches!(
        ledger.register(COMPANION, SRC, random_token(&mut rng), exp, now),
        Err(LedgerError::QuotaExceeded { .. })
    ));
    let (_p, hello) = scan(&text, &mut rng, now);
    ledger.route(PRIMARY, &hello, now).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
    ledger.route(COMPANION, &request, now).unwrap();
    assert!(ledger.store().get(&token).unwrap().is_some());
    assert!(matches!(
        ledger.register(COMPANION, SRC, random_token(&mut rng), exp, now),
        Err(LedgerError::QuotaExceeded {
            scope: BudgetScope::Client,
            ..
        })
    ));
    // The companion is gone for good: what it held is swept at once.
    assert_eq!(ledger.abandon(COMPANION), Ok(1));
    assert_eq!(ledger.store().get(&token), Ok(None));
    ledger
        .register(COMPANION, SRC, random_token(&mut rng), exp, now)
        .unwrap();
}

#[test]
fn a_clock_stepped_back_does_not_reopen_an_expired_token() {
    let mut rng = ChaCha20Rng::seed_from_u64(116);
    let ledger = Ledger::default();
    let now = at(0);
    let (_companion, text, token, expires_at) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello) = scan(&text, &mut rng, now);
    let late = expires_at.saturating_add(Duration::from_secs(1));
    assert_eq!(
        ledger.route(PRIMARY, &hello, late),
        Err(LedgerError::TokenExpired)
    );
    // The clock steps back to before the expiry: still expired.
    assert_eq!(
        ledger.route(PRIMARY, &hello, now),
        Err(LedgerError::TokenExpired)
    );
    assert_eq!(ledger.high_water(), late);
    assert_eq!(
        ledger.store().get(&token).unwrap().unwrap().state,
        TokenState::Open
    );

    // Nor does it stretch a redeemed token's session window.
    let (mut c2, text2, token2, _) = registered_companion(&ledger, &mut rng, late);
    let (_p2, hello2) = scan(&text2, &mut rng, late);
    ledger.route(PRIMARY, &hello2, late).unwrap();
    let request = c2.receive_hello(&hello2, &mut rng, late).unwrap();
    ledger.route(COMPANION, &request, late).unwrap();
    let keep = ledger.store().get(&token2).unwrap().unwrap().keep_until;
    assert_eq!(keep, late.saturating_add(DEFAULT_SESSION_WINDOW));
    // (A Refusal-sized message of the redeemed session, from the primary.)
    let refusal = message(
        MessageKind::Refusal,
        token2,
        MessageKind::Refusal.size_range().0,
    );
    assert!(ledger.route(PRIMARY, &refusal, late).is_ok());
    assert_eq!(
        ledger.route(PRIMARY, &refusal, keep),
        Err(LedgerError::UnknownToken)
    );
    assert_eq!(
        ledger.route(PRIMARY, &refusal, late),
        Err(LedgerError::UnknownToken)
    );
}

#[test]
fn a_redeemed_id_cannot_be_registered_again() {
    let mut rng = ChaCha20Rng::seed_from_u64(117);
    let ledger = Ledger::default();
    let now = at(0);
    let (mut companion, text, token, expires_at) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello) = scan(&text, &mut rng, now);
    ledger.route(PRIMARY, &hello, now).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
    ledger.route(COMPANION, &request, now).unwrap();
    let keep = now.saturating_add(DEFAULT_SESSION_WINDOW);
    assert_eq!(
        ledger.store().get(&token).unwrap().unwrap().keep_until,
        keep
    );

    // Before any sweep, by its companion or anyone else.
    for client in [COMPANION, PRIMARY] {
        assert_eq!(
            ledger.register(client, SRC, token, expires_at, now),
            Err(LedgerError::DuplicateToken)
        );
    }
    // After the offer's expiry and a sweep, within the tombstone window: the
    // tombstone is kept, and still refuses the id.
    let later = expires_at.saturating_add(Duration::from_secs(10));
    assert_eq!(ledger.sweep(later, usize::MAX), Ok(0));
    assert_eq!(
        ledger.register(
            PRIMARY,
            SRC,
            token,
            later.saturating_add(Duration::from_secs(60)),
            later
        ),
        Err(LedgerError::DuplicateToken)
    );
    assert_eq!(
        ledger.route(PRIMARY, &hello, later),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    // At the end of the window it is swept.
    assert_eq!(ledger.sweep(keep, usize::MAX), Ok(1));
    assert_eq!(ledger.store().get(&token), Ok(None));
    // An open (never redeemed) id is a duplicate too while it is held.
    let (_c2, _, token2, exp2) = registered_companion(&ledger, &mut rng, keep);
    assert_eq!(
        ledger.register(PRIMARY, SRC, token2, exp2, keep),
        Err(LedgerError::DuplicateToken)
    );
}

/// A message of `kind` for `token` with `len` bytes (header, then zeros).
fn message(kind: MessageKind, token: TokenId, len: usize) -> Vec<u8> {
    let code = match kind {
        MessageKind::Hello => 1,
        MessageKind::Request => 2,
        MessageKind::Grant => 3,
        MessageKind::Refusal => 4,
        MessageKind::Confirm => 5,
    };
    let mut m = vec![devicelink::handshake::MESSAGE_VERSION, code];
    m.extend_from_slice(&token.to_bytes());
    m.resize(len, 0);
    m
}

#[test]
fn sizes_are_checked_before_anything_else() {
    let mut rng = ChaCha20Rng::seed_from_u64(118);
    let ledger = Ledger::default();
    let now = at(0);
    let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello) = scan(&text, &mut rng, now);
    let open = registered_companion(&ledger, &mut rng, now).2;
    let unknown = random_token(&mut rng);

    // A Hello with a valid proof, one byte short or long.
    let mut long = hello.clone();
    long.push(0);
    for bad in [&hello[..hello.len() - 1], &long[..]] {
        assert_eq!(
            ledger.route(PRIMARY, bad, now),
            Err(LedgerError::WrongSize {
                kind: MessageKind::Hello,
                len: bad.len()
            })
        );
    }
    // Redeem the token, so that on size alone every kind would be routable.
    ledger.route(PRIMARY, &hello, now).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
    ledger.route(COMPANION, &request, now).unwrap();

    let before = ledger.save().unwrap();
    let high_water = ledger.high_water();
    let later = at(1_000);
    for kind in [
        MessageKind::Hello,
        MessageKind::Request,
        MessageKind::Grant,
        MessageKind::Refusal,
        MessageKind::Confirm,
    ] {
        let (min, max) = kind.size_range();
        for t in [token, open, unknown] {
            for len in [HEADER_LEN, min - 1, max + 1, MessageKind::MAX_LEN + 1] {
                let m = message(kind, t, len);
                for from in [COMPANION, PRIMARY] {
                    assert_eq!(
                        ledger.route(from, &m, later),
                        Err(LedgerError::WrongSize { kind, len }),
                        "{kind:?} of {len} bytes"
                    );
                }
            }
            // In range, the message is routed or refused on other grounds.
            assert!(!matches!(
                ledger.route(PRIMARY, &message(kind, t, max), now),
                Err(LedgerError::WrongSize { .. })
            ));
        }
    }
    // A 64 MiB "Grant" for the redeemed token: refused on its size, and the
    // ledger (store, clock) untouched.
    let huge = message(MessageKind::Grant, token, 64 << 20);
    let ledger2 = Ledger::restore(&before).unwrap();
    assert!(matches!(
        ledger2.route(PRIMARY, &huge, later),
        Err(LedgerError::WrongSize {
            kind: MessageKind::Grant,
            ..
        })
    ));
    assert_eq!(ledger2.save().unwrap(), before);
    assert_eq!(ledger2.high_water(), high_water);
}

#[test]
fn save_restore_keeps_settings_and_behaviour() {
    let mut rng = ChaCha20Rng::seed_from_u64(119);
    let config = LedgerConfig {
        reserve_window: Duration::from_secs(5),
        session_window: Duration::from_secs(600),
        tokens: Budget::new(2, 50, 50),
        ..LedgerConfig::default()
    };
    let ledger = Ledger::in_memory(config.clone());
    let now = at(0);
    let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
    let (_c2, _, token2, exp2) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello) = scan(&text, &mut rng, now);
    ledger.route(PRIMARY, &hello, at(10)).unwrap();
    // The clock ran ahead before the save.
    assert_eq!(ledger.sweep(at(20), 0), Ok(0));

    let restored = Ledger::restore(&ledger.save().unwrap()).unwrap();
    assert_eq!(restored.config(), &config);
    assert_eq!(restored.high_water(), at(20));
    assert_eq!(restored.save().unwrap(), ledger.save().unwrap());
    // The reservation holds (with its 5 s window), the quota applies, the
    // clock does not step back.
    let (_p2, hello_b) = scan(&text, &mut rng, now);
    assert_eq!(
        restored.route(ClientId::from(5), &hello_b, now),
        Err(LedgerError::TokenReserved { until: at(5_010) })
    );
    assert!(matches!(
        restored.register(COMPANION, SRC, random_token(&mut rng), exp2, now),
        Err(LedgerError::QuotaExceeded {
            scope: BudgetScope::Client,
            limit: 2
        })
    ));
    let request = companion.receive_hello(&hello, &mut rng, at(30)).unwrap();
    assert_eq!(
        restored.route(COMPANION, &request, at(30)),
        Ok(Routed {
            token_id: token,
            kind: MessageKind::Request,
            forward_to: PRIMARY,
            transition: Transition::Redeemed { at: at(30) },
        })
    );
    assert_eq!(
        restored.store().get(&token).unwrap().unwrap().keep_until,
        at(600_030)
    );
    assert_eq!(
        restored.store().get(&token2).unwrap().unwrap().state,
        TokenState::Open
    );
    // Corrupted, truncated or a bare store's bytes are refused.
    let bytes = restored.save().unwrap();
    assert!(Ledger::restore(&bytes[..bytes.len() / 2]).is_err());
    assert!(Ledger::restore(&restored.store().save().unwrap()).is_err());
}
