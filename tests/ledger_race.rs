//! The relay side under pressure: exactly-once token redemption raced from
//! many threads and first-Hello-wins routing.
//!
//! Deterministic inputs (seeded RNG, virtual clock); the only nondeterminism
//! is the thread interleaving, which the assertions do not depend on.

use std::sync::Barrier;

use devicelink::handshake::HEADER_LEN;
use devicelink::offer::OfferState;
use devicelink::relay::DEFAULT_SESSION_WINDOW;
use devicelink::{
    Companion, CompanionState, DeviceIdentity, DeviceLabel, Ledger, LedgerError, Policy,
    PrimaryHandshake, Timestamp, TokenId,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const T0: u64 = 1_700_000_000_000;
const THREADS: usize = 8;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

/// A primary (an account of its own, from its "Link a device" screen)
/// scanning `text`: the handshake and its Hello.
fn scan(text: &str, rng: &mut ChaCha20Rng, now: Timestamp) -> (PrimaryHandshake, Vec<u8>) {
    let mut account = devicelink::Account::generate(Policy::default(), rng, now);
    account.open_link_intent(now);
    account.scan(text, rng, now).unwrap()
}

fn random_token(rng: &mut ChaCha20Rng) -> TokenId {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    TokenId::from_bytes(b)
}

#[test]
fn concurrent_redeems_succeed_exactly_once_per_token() {
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let ledger = Ledger::in_memory();
    let mut tokens = Vec::new();
    for round in 0..200u64 {
        let token = random_token(&mut rng);
        ledger.register(token, at(60_000)).unwrap();
        tokens.push(token);
        let now = at(round);
        let barrier = Barrier::new(THREADS);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        ledger.redeem(&token, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {results:?}");
        assert_eq!(ok[0].token_id, token);
        assert_eq!(ok[0].at, now);
        for r in results.iter().filter(|r| r.is_err()) {
            assert_eq!(
                r.as_ref().unwrap_err(),
                &LedgerError::TokenAlreadyRedeemed,
                "round {round}"
            );
        }
        // And every later attempt, whatever the clock, is refused the same way.
        assert_eq!(
            ledger.redeem(&token, at(1)),
            Err(LedgerError::TokenAlreadyRedeemed)
        );
    }
    assert_eq!(ledger.store().len(), 200);
    // A redeemed token stays for its session window (past its offer's
    // expiry), then it is swept and reads as unknown.
    let window = u64::try_from(DEFAULT_SESSION_WINDOW.as_millis()).unwrap();
    assert!(window > 60_000);
    assert_eq!(ledger.sweep(at(60_000)), Ok(0));
    assert_eq!(ledger.sweep(at(window - 1)), Ok(0));
    assert_eq!(ledger.sweep(at(window + 199)), Ok(200));
    for t in &tokens {
        assert_eq!(ledger.redeem(t, at(10)), Err(LedgerError::UnknownToken));
    }
}

/// A companion showing an offer, registered with the ledger.
fn registered_companion(
    ledger: &Ledger,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> (Companion, String, TokenId, Timestamp) {
    let policy = Policy::default();
    let identity = DeviceIdentity::generate(rng);
    let companion = Companion::new(
        identity,
        DeviceLabel::new("browser").unwrap(),
        &policy,
        rng,
        now,
    );
    let offer = companion.offer().unwrap();
    let token = offer.token_id();
    let text = offer.to_text();
    let CompanionState::AwaitingScan {
        offer: OfferState::Showing { expires_at, .. },
    } = companion.state()
    else {
        panic!("companion is not showing an offer");
    };
    ledger.register(token, expires_at).unwrap();
    (companion, text, token, expires_at)
}

#[test]
fn route_lets_only_the_first_hello_through() {
    let mut rng = ChaCha20Rng::seed_from_u64(101);
    let ledger = Ledger::in_memory();
    let now = at(0);
    let (mut companion, text, token, expires_at) = registered_companion(&ledger, &mut rng, now);

    // Two primaries scan the same code; their Hellos differ, the token is one.
    let (mut first, hello_a) = scan(&text, &mut rng, now);
    let (_second, hello_b) = scan(&text, &mut rng, now);
    assert_ne!(hello_a, hello_b);

    // Unroutable and unregistered messages.
    assert!(matches!(
        ledger.route(&hello_a[..HEADER_LEN - 1], now),
        Err(LedgerError::Unroutable(_))
    ));
    assert!(matches!(
        ledger.route(b"", now),
        Err(LedgerError::Unroutable(_))
    ));
    // Before the Hello, nothing else routes for the token.
    let request_like = {
        let mut c = companion.clone();
        c.receive_hello(&hello_b, &mut rng, now).unwrap()
    };
    assert_eq!(
        ledger.route(&request_like, now),
        Err(LedgerError::UnknownToken)
    );

    // A Hello whose redemption proof was tampered with (someone who never
    // saw the code) is refused and does not burn the token.
    let mut forged = hello_b.clone();
    forged[HEADER_LEN] ^= 0x01;
    assert_eq!(
        ledger.route(&forged, now),
        Err(LedgerError::BadRedemptionProof)
    );

    assert_eq!(ledger.route(&hello_a, now), Ok(token));
    assert_eq!(
        ledger.route(&hello_b, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        ledger.route(&hello_a, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    assert_eq!(
        ledger.redeem(&token, now),
        Err(LedgerError::TokenAlreadyRedeemed)
    );

    // The rest of the winning exchange routes by the redeemed token.
    let request = companion.receive_hello(&hello_a, &mut rng, now).unwrap();
    assert_eq!(ledger.route(&request, now), Ok(token));
    first.receive_request(&request, now).unwrap();

    // Another companion's token: a Hello after expiry is refused, and so is
    // one for a token nobody registered.
    let (_c2, text2, token2, expires2) = registered_companion(&ledger, &mut rng, now);
    let (_p, hello2) = scan(&text2, &mut rng, expires2);
    assert_eq!(
        ledger.route(&hello2, expires2),
        Err(LedgerError::TokenExpired)
    );
    assert_ne!(token2, token);
    let unregistered = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("x").unwrap(),
        &Policy::default(),
        &mut rng,
        now,
    );
    let text3 = unregistered.offer().unwrap().to_text();
    let (_p3, hello3) = scan(&text3, &mut rng, now);
    assert_eq!(ledger.route(&hello3, now), Err(LedgerError::UnknownToken));
    assert!(expires_at > now);
}

#[test]
fn concurrent_hellos_for_one_token_route_exactly_once() {
    let mut rng = ChaCha20Rng::seed_from_u64(102);
    let ledger = Ledger::in_memory();
    for round in 0..20u64 {
        let now = at(round * 1_000);
        let (mut companion, text, token, _) = registered_companion(&ledger, &mut rng, now);
        let hellos: Vec<(PrimaryHandshake, Vec<u8>)> =
            (0..THREADS).map(|_| scan(&text, &mut rng, now)).collect();
        let barrier = Barrier::new(THREADS);
        let results: Vec<Result<TokenId, LedgerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = hellos
                .iter()
                .map(|(_, hello)| {
                    let (ledger, barrier) = (&ledger, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        ledger.route(hello, now)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..THREADS).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(results[winners[0]], Ok(token));
        for (i, r) in results.iter().enumerate() {
            if i != winners[0] {
                assert_eq!(r, &Err(LedgerError::TokenAlreadyRedeemed));
            }
        }
        // The companion completes the exchange with the routed Hello.
        let request = companion
            .receive_hello(&hellos[winners[0]].1, &mut rng, now)
            .unwrap();
        assert_eq!(ledger.route(&request, now), Ok(token));
    }
}
