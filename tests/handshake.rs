//! The pairing handshake through the public API: the happy path, every
//! refusal the brief names, and the bit-flip test (every bit of every message
//! and every character of the offer text).

use devicelink::certificate::CertificateError;
use devicelink::handshake::{CompanionState, FailureReason, PrimaryState};
use devicelink::offer::{OfferError, OfferState, TokenError};
use devicelink::Policy;
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceLabel, HandshakeError, PrimaryHandshake,
    RefusalReason, RegistryError, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const T0: u64 = 1_700_000_000_000;

fn t(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

struct Setup {
    rng: ChaCha20Rng,
    account: Account,
    companion: Companion,
}

fn setup(seed: u64) -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let policy = Policy::default();
    let account = Account::generate(policy.clone(), &mut rng, t(0));
    let identity = DeviceIdentity::generate(&mut rng);
    let label = DeviceLabel::new("Firefox on Linux").unwrap();
    let companion = Companion::new(identity, label, &policy, &mut rng, t(0));
    Setup {
        rng,
        account,
        companion,
    }
}

fn offer_text(c: &Companion) -> String {
    c.offer().unwrap().to_text()
}

/// Every message of one successful link, and the states after.
struct Transcript {
    offer: String,
    hello: Vec<u8>,
    request: Vec<u8>,
    grant: Vec<u8>,
    confirm: Vec<u8>,
}

fn link(s: &mut Setup) -> (PrimaryHandshake, Transcript) {
    let offer = offer_text(&s.companion);
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s.account.scan(&offer, &mut s.rng, t(1_000)).unwrap();
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    primary.receive_request(&request, t(1_200)).unwrap();
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    s.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = s.companion.consent(t(1_400)).unwrap();
    s.account.confirm(&mut primary, &confirm, t(1_500)).unwrap();
    (
        primary,
        Transcript {
            offer,
            hello,
            request,
            grant,
            confirm,
        },
    )
}

/// Scan at 1.0 s, Hello answered at 1.1 s, Request received at 1.2 s: the
/// primary is ready to grant or refuse.
fn until_request(s: &mut Setup) -> PrimaryHandshake {
    let offer = offer_text(&s.companion);
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s.account.scan(&offer, &mut s.rng, t(1_000)).unwrap();
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    primary.receive_request(&request, t(1_200)).unwrap();
    primary
}

fn flips(msg: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..msg.len() * 8).map(move |bit| {
        let mut m = msg.to_vec();
        m[bit / 8] ^= 1 << (bit % 8);
        m
    })
}

#[test]
fn full_link_gives_each_side_matching_facts() {
    let mut s = setup(1);
    let (primary, tr) = link(&mut s);
    assert_eq!(tr.offer.len(), 88);
    let session = s.companion.session().unwrap();
    assert_eq!(s.companion.state(), CompanionState::Linked);
    assert_eq!(
        primary.state(),
        PrimaryState::Confirmed {
            index: session.index()
        }
    );
    assert_eq!(session.index().0, 1);
    assert_eq!(session.account(), s.account.account_id());
    assert_eq!(session.certificate().device(), session.device_key());
    assert_eq!(session.device_list(), s.account.device_list());
    assert_eq!(session.label().as_str(), "Firefox on Linux");
    assert!(session.is_linked(t(2_000)));
    assert_eq!(s.account.companion_count(t(2_000)), 1);
    assert_eq!(tr.hello.len(), 130);
    assert_eq!(tr.confirm.len(), 82);
}

#[test]
fn check_codes_match_and_depend_on_the_session() {
    let mut codes = std::collections::HashSet::new();
    for seed in 0..40 {
        let mut s = setup(seed);
        let offer = offer_text(&s.companion);
        s.account.open_link_intent(t(1));
        let (mut primary, hello) = s.account.scan(&offer, &mut s.rng, t(1)).unwrap();
        let request = s.companion.receive_hello(&hello, &mut s.rng, t(2)).unwrap();
        let asked = primary.receive_request(&request, t(3)).unwrap();
        let code = asked.check_code.unwrap();
        assert_eq!(Some(code), primary.check_code());
        assert_eq!(s.companion.check_code(), None, "not before the Grant");
        assert!(code.value() < 1_000_000);
        assert_eq!(code.to_string().len(), 7, "shown as `123 456`");
        let grant = s.account.grant(&mut primary, &mut s.rng, t(4)).unwrap();
        let join = s.companion.receive_grant(&grant, t(5)).unwrap();
        assert_eq!(join.check_code, Some(code), "the same code on both screens");
        assert_eq!(s.companion.check_code(), Some(code));
        codes.insert(code);
    }
    assert!(codes.len() > 35, "check codes do not vary: {codes:?}");
}

/// Flips every bit of every message; each flipped message is refused with a
/// typed error, the receiver's saved state is byte-identical afterwards, and
/// the genuine message then still completes the link.
#[test]
fn every_bit_flip_is_refused_without_state_change() {
    // Record the genuine messages with one run...
    let mut first = setup(7);
    let (_, tr) = link(&mut first);

    // ...then replay the same seed, attacking each step before delivering it.
    let mut s = setup(7);
    let offer = offer_text(&s.companion);
    assert_eq!(offer, tr.offer);

    // The offer text, character by character, bit by bit.
    s.account.open_link_intent(t(1_000));
    let account_before = s.account.save().unwrap();
    for (i, ch) in offer.char_indices() {
        for bit in 0..8 {
            let flipped = char::from(u8::try_from(u32::from(ch)).unwrap() ^ (1 << bit));
            let mut text = offer.clone();
            text.replace_range(i..i + 1, flipped.encode_utf8(&mut [0; 4]));
            s.account.open_link_intent(t(1_000));
            let err = s
                .account
                .scan(&text, &mut s.rng.clone(), t(1_000))
                .unwrap_err();
            assert!(
                matches!(err, RegistryError::Handshake(HandshakeError::BadOffer(_))),
                "char {i} bit {bit}: {err:?}"
            );
            assert!(err.is_terminal());
        }
    }
    assert_eq!(s.account.save().unwrap(), account_before);
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s.account.scan(&offer, &mut s.rng, t(1_000)).unwrap();
    assert_eq!(hello, tr.hello);

    // Hello → companion.
    let before = s.companion.save().unwrap();
    for m in flips(&hello) {
        let err = s
            .companion
            .receive_hello(&m, &mut s.rng, t(1_100))
            .unwrap_err();
        assert!(!err.is_terminal(), "{err:?}");
        assert_eq!(s.companion.save().unwrap(), before);
    }
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    assert_eq!(request, tr.request);

    // Request → primary.
    let before = primary.save().unwrap();
    for m in flips(&request) {
        let err = primary.receive_request(&m, t(1_200)).unwrap_err();
        assert!(!err.is_terminal(), "{err:?}");
        assert_eq!(primary.save().unwrap(), before);
    }
    primary.receive_request(&request, t(1_200)).unwrap();
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    assert_eq!(grant, tr.grant);

    // Grant → companion.
    let before = s.companion.save().unwrap();
    for m in flips(&grant) {
        let err = s.companion.receive_grant(&m, t(1_400)).unwrap_err();
        assert!(!err.is_terminal(), "{err:?}");
        assert_eq!(s.companion.save().unwrap(), before);
    }
    s.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = s.companion.consent(t(1_400)).unwrap();
    assert_eq!(confirm, tr.confirm);

    // Confirm → primary (through the registry).
    let (acc_before, hs_before) = (s.account.save().unwrap(), primary.save().unwrap());
    for m in flips(&confirm) {
        let err = s.account.confirm(&mut primary, &m, t(1_500)).unwrap_err();
        assert!(!err.is_terminal(), "{err:?}");
        assert_eq!(s.account.save().unwrap(), acc_before);
        assert_eq!(primary.save().unwrap(), hs_before);
    }
    s.account.confirm(&mut primary, &confirm, t(1_500)).unwrap();
    assert!(s.companion.session().unwrap().is_linked(t(1_600)));
}

#[test]
fn truncations_and_extensions_are_refused() {
    let mut first = setup(8);
    let (_, tr) = link(&mut first);
    let mut s = setup(8);
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s.account.scan(&tr.offer, &mut s.rng, t(1_000)).unwrap();
    for len in 0..hello.len() {
        assert!(s
            .companion
            .receive_hello(&hello[..len], &mut s.rng, t(1_100))
            .is_err());
    }
    assert!(s
        .companion
        .receive_hello(&[hello.clone(), vec![0]].concat(), &mut s.rng, t(1_100))
        .is_err());
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    for len in 0..request.len() {
        assert!(primary.receive_request(&request[..len], t(1_200)).is_err());
    }
    primary.receive_request(&request, t(1_200)).unwrap();
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    for len in 0..grant.len() {
        assert!(s.companion.receive_grant(&grant[..len], t(1_400)).is_err());
    }
    s.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = s.companion.consent(t(1_400)).unwrap();
    for len in 0..confirm.len() {
        assert!(s
            .account
            .confirm(&mut primary, &confirm[..len], t(1_500))
            .is_err());
    }
    s.account.confirm(&mut primary, &confirm, t(1_500)).unwrap();
}

#[test]
fn messages_out_of_order_are_refused() {
    let mut first = setup(9);
    let (_, tr) = link(&mut first);
    let mut s = setup(9);
    // Grant and confirm before anything: typed, retryable.
    let err = s.companion.receive_grant(&tr.grant, t(1_050)).unwrap_err();
    assert!(
        matches!(err, HandshakeError::UnexpectedMessage { .. }),
        "{err:?}"
    );
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s.account.scan(&tr.offer, &mut s.rng, t(1_000)).unwrap();
    assert!(matches!(
        primary.receive_confirm(&tr.confirm, t(1_050)),
        Err(HandshakeError::UnexpectedMessage { .. })
    ));
    // A Hello sent where a Request is expected.
    assert!(matches!(
        primary.receive_request(&hello, t(1_050)),
        Err(HandshakeError::UnexpectedMessage { .. })
    ));
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    // The Hello replayed: refused, the pairing goes on.
    assert!(matches!(
        s.companion.receive_hello(&hello, &mut s.rng, t(1_150)),
        Err(HandshakeError::UnexpectedMessage { .. })
    ));
    // Granting before the request arrived is a state error.
    assert!(matches!(
        s.account.grant(&mut primary, &mut s.rng.clone(), t(1_150)),
        Err(RegistryError::Handshake(HandshakeError::WrongState { .. }))
    ));
    primary.receive_request(&request, t(1_200)).unwrap();
    assert!(matches!(
        primary.receive_request(&request, t(1_250)),
        Err(HandshakeError::UnexpectedMessage { .. })
    ));
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    s.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = s.companion.consent(t(1_400)).unwrap();
    // A second grant after the first was accepted.
    assert_eq!(
        s.companion.receive_grant(&grant, t(1_450)),
        Err(HandshakeError::AlreadyLinked)
    );
    s.account.confirm(&mut primary, &confirm, t(1_500)).unwrap();
    // A replayed confirm.
    assert!(matches!(
        s.account.confirm(&mut primary, &confirm, t(1_600)),
        Err(RegistryError::Handshake(HandshakeError::AlreadyLinked))
    ));
}

#[test]
fn message_for_another_session_is_refused() {
    let mut a = setup(10);
    let mut b = setup(11);
    b.account.open_link_intent(t(1_000));
    let (_, hello_b) = b
        .account
        .scan(&offer_text(&b.companion), &mut b.rng, t(1_000))
        .unwrap();
    let before = a.companion.save().unwrap();
    assert_eq!(
        a.companion.receive_hello(&hello_b, &mut a.rng, t(1_100)),
        Err(HandshakeError::WrongSession)
    );
    assert_eq!(a.companion.save().unwrap(), before);
    // Same for the primary: B's request to A's handshake.
    a.account.open_link_intent(t(1_000));
    let (mut primary_a, hello_a) = a
        .account
        .scan(&offer_text(&a.companion), &mut a.rng, t(1_000))
        .unwrap();
    let request_b = b
        .companion
        .receive_hello(&hello_b, &mut b.rng, t(1_100))
        .unwrap();
    assert_eq!(
        primary_a.receive_request(&request_b, t(1_200)),
        Err(HandshakeError::WrongSession)
    );
    // A's pairing still completes.
    let request_a = a
        .companion
        .receive_hello(&hello_a, &mut a.rng, t(1_100))
        .unwrap();
    primary_a.receive_request(&request_a, t(1_200)).unwrap();
    let grant = a
        .account
        .grant(&mut primary_a, &mut a.rng, t(1_300))
        .unwrap();
    a.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = a.companion.consent(t(1_400)).unwrap();
    a.account
        .confirm(&mut primary_a, &confirm, t(1_500))
        .unwrap();
}

#[test]
fn stale_and_rotated_offers_are_refused() {
    let mut s = setup(12);
    let first = offer_text(&s.companion);
    // Scanned in time, answered after the offer's 60 s lifetime.
    s.account.open_link_intent(t(59_000));
    let (_, hello) = s.account.scan(&first, &mut s.rng, t(59_000)).unwrap();
    let err = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(60_000))
        .unwrap_err();
    assert_eq!(err, HandshakeError::Token(TokenError::RotatedOut));
    // Rotated: the old token is refused, the new one works.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    s.companion.poll(&mut rng, t(60_000)).unwrap();
    assert_eq!(
        s.companion.receive_hello(&hello, &mut s.rng, t(60_001)),
        Err(HandshakeError::Token(TokenError::RotatedOut))
    );
    let second = offer_text(&s.companion);
    assert_ne!(first, second);
    s.account.open_link_intent(t(70_000));
    let (_, hello2) = s.account.scan(&second, &mut s.rng, t(70_000)).unwrap();
    assert!(s
        .companion
        .receive_hello(&hello2, &mut s.rng, t(70_000))
        .is_ok());

    // Rotations used up: the display times out and the pairing fails for good.
    let mut s = setup(13);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut rotations = 0;
    let mut now = t(0);
    while let Some(deadline) = s.companion.next_deadline() {
        now = deadline;
        if let Some(devicelink::handshake::CompanionEvent::OfferRotated { .. }) =
            s.companion.poll(&mut rng, now)
        {
            rotations += 1;
        }
    }
    assert_eq!(rotations, 5);
    assert_eq!(now, t(160_000));
    assert!(matches!(
        s.companion.state(),
        CompanionState::Failed {
            reason: FailureReason::OfferEnded(OfferState::TimedOut { .. }),
            ..
        }
    ));
}

#[test]
fn grant_timeout_fails_the_companion() {
    let mut s = setup(14);
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s
        .account
        .scan(&offer_text(&s.companion), &mut s.rng, t(1_000))
        .unwrap();
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_000))
        .unwrap();
    primary.receive_request(&request, t(1_100)).unwrap();
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_200)).unwrap();
    // Deadline = hello time + 60 s; at the deadline the grant is too late.
    // Deadline = Hello time + the 120 s approval timeout.
    let mut late = s.companion.clone();
    let err = late.receive_grant(&grant, t(121_000)).unwrap_err();
    assert!(err.is_terminal());
    assert!(matches!(
        late.state(),
        CompanionState::Failed {
            reason: FailureReason::GrantTimedOut,
            ..
        }
    ));
    assert!(s.companion.receive_grant(&grant, t(120_999)).is_ok());
}

#[test]
fn certificate_from_another_account_is_refused() {
    let mut first = setup(15);
    let (_, tr) = link(&mut first);
    // Same seed, but the companion only accepts a different account.
    let mut s = setup(15);
    let other = Account::generate(Policy::default(), &mut ChaCha20Rng::seed_from_u64(77), t(0));
    s.companion = s.companion.clone().expect_account(other.account_id());
    s.account.open_link_intent(t(1_000));
    let (mut primary, hello) = s.account.scan(&tr.offer, &mut s.rng, t(1_000)).unwrap();
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    primary.receive_request(&request, t(1_200)).unwrap();
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    let before = s.companion.save().unwrap();
    assert_eq!(
        s.companion.receive_grant(&grant, t(1_400)),
        Err(HandshakeError::Certificate(CertificateError::WrongAccount))
    );
    assert_eq!(s.companion.save().unwrap(), before);
}

/// An offer text with a chosen X25519 key and a valid check (computed as
/// `docs/PROTOCOL.md` specifies), to play a malicious companion.
fn offer_with_key(key: [u8; 32]) -> String {
    let mut body = vec![devicelink::offer::OFFER_VERSION];
    body.extend_from_slice(&key);
    body.extend_from_slice(&[7u8; 16]);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"devicelink/v1 offer");
    ctx.update(&body);
    body.extend_from_slice(&ctx.finish().as_ref()[..4]);
    format!("DL:{}", data_encoding::BASE32_NOPAD.encode(&body))
}

#[test]
fn low_order_keys_are_non_contributory() {
    let mut s = setup(16);
    // The primary scanning an offer with a low-order key (zero, and the
    // order-8 point 0x01...): refused before anything is sent.
    let mut one = [0u8; 32];
    one[0] = 1;
    for key in [[0u8; 32], one] {
        let text = offer_with_key(key);
        assert!(devicelink::PairingOffer::from_text(&text).is_ok());
        s.account.open_link_intent(t(1_000));
        assert_eq!(
            s.account.scan(&text, &mut s.rng, t(1_000)).unwrap_err(),
            RegistryError::Handshake(HandshakeError::BadOffer(OfferError::WeakKey))
        );
    }

    // A Hello carrying a zero key: refused, state unchanged, genuine one works.
    s.account.open_link_intent(t(1_000));
    let (_, hello) = s
        .account
        .scan(&offer_text(&s.companion), &mut s.rng, t(1_000))
        .unwrap();
    let mut forged = hello.clone();
    forged[34..66].fill(0);
    let before = s.companion.save().unwrap();
    assert_eq!(
        s.companion.receive_hello(&forged, &mut s.rng, t(1_100)),
        Err(HandshakeError::NonContributory)
    );
    assert_eq!(s.companion.save().unwrap(), before);
    assert!(s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .is_ok());
}

#[test]
fn authenticated_refusal_fails_the_companion_but_forged_one_does_not() {
    let mut s = setup(17);
    let mut primary = until_request(&mut s);
    let refusal = s
        .account
        .refuse(
            &mut primary,
            RefusalReason::DeviceLimitReached { limit: 4 },
            &mut s.rng,
            t(1_300),
        )
        .unwrap();
    let mut forged = refusal.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        s.companion.receive_grant(&forged, t(1_400)),
        Err(HandshakeError::AuthenticationFailed)
    );
    assert!(matches!(
        s.companion.state(),
        CompanionState::AwaitingGrant { .. }
    ));
    let err = s.companion.receive_grant(&refusal, t(1_400)).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Refused(RefusalReason::DeviceLimitReached { limit: 4 })
    );
    assert!(err.is_terminal());
    assert!(matches!(
        s.companion.state(),
        CompanionState::Failed {
            reason: FailureReason::Refused(RefusalReason::DeviceLimitReached { limit: 4 }),
            ..
        }
    ));
    assert_eq!(
        primary.state(),
        PrimaryState::Refused {
            reason: RefusalReason::DeviceLimitReached { limit: 4 }
        }
    );
}

#[test]
fn bad_offer_texts_have_typed_errors() {
    let mut s = setup(18);
    for (text, want) in [
        ("", OfferError::MissingPrefix),
        ("https://example.com", OfferError::MissingPrefix),
        ("DL:AAAA", OfferError::WrongLength { len: 7 }),
    ] {
        s.account.open_link_intent(t(0));
        assert_eq!(
            s.account.scan(text, &mut s.rng, t(0)).unwrap_err(),
            RegistryError::Handshake(HandshakeError::BadOffer(want))
        );
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let mut s = setup(19);
    let (primary, _) = link(&mut s);
    let session = s.companion.session().unwrap();
    let secret = session.identity().unwrap().to_secret_bytes();
    let account_secret = s.account.key().to_secret_bytes();
    for dbg in [
        format!("{:?}", s.companion),
        format!("{:?}", primary),
        format!("{:?}", s.account),
        format!("{:?}", session),
    ] {
        for sec in [&secret[..], &account_secret[..]] {
            assert!(!dbg.contains(&format!("{:?}", sec)), "secret in {dbg}");
            assert!(
                !dbg.contains(&format!("{:?}", &sec[..8])),
                "secret prefix in {dbg}"
            );
        }
        assert!(!dbg.contains("SessionKeys { hello"), "{dbg}");
    }
}

#[test]
fn relay_routes_only_a_hello_from_someone_who_saw_the_qr_code() {
    use devicelink::relay::{ClientId, Ledger, LedgerError, SourceKey};
    let (companion, primary) = (ClientId::from(1), ClientId::from(2));
    let mut first = setup(20);
    let (_, tr) = link(&mut first);
    let ledger = Ledger::default();
    let offer = devicelink::PairingOffer::from_text(&tr.offer).unwrap();
    let token = offer.token_id();
    ledger
        .register(companion, SourceKey::LOCAL, token, t(60_000), t(0))
        .unwrap();
    // A forger who knows only the token id (the relay's view before the
    // scan) cannot reserve or burn the token: a bare header is refused on
    // its size, a Hello with a wrong proof on the proof.
    assert!(matches!(
        ledger.route(primary, &tr.hello[..18], t(1_000)),
        Err(LedgerError::WrongSize { .. })
    ));
    let mut forged = tr.hello.clone();
    forged[20] ^= 1;
    assert_eq!(
        ledger.route(primary, &forged, t(1_000)),
        Err(LedgerError::BadRedemptionProof)
    );
    // Later messages are not routed before the token is reserved and redeemed.
    assert_eq!(
        ledger.route(companion, &tr.request, t(1_000)),
        Err(LedgerError::NotReserved)
    );
    assert_eq!(
        ledger.route(primary, &tr.grant, t(1_000)),
        Err(LedgerError::NotRedeemed)
    );
    let hello = ledger.route(primary, &tr.hello, t(1_000)).unwrap();
    assert_eq!((hello.token_id, hello.forward_to), (token, companion));
    assert!(matches!(
        ledger.route(primary, &tr.hello, t(1_001)),
        Err(LedgerError::TokenReserved { .. })
    ));
    let request = ledger.route(companion, &tr.request, t(1_100)).unwrap();
    assert_eq!((request.token_id, request.forward_to), (token, primary));
    assert_eq!(
        ledger.route(primary, &tr.hello, t(1_101)),
        Err(LedgerError::TokenAlreadyRedeemed)
    );
    // The rest of the handshake is routed, even after the offer's lifetime
    // (the session window keeps the redeemed token).
    // Each from its own sender only.
    for (m, from, to) in [
        (&tr.grant, primary, companion),
        (&tr.confirm, companion, primary),
    ] {
        assert_eq!(
            ledger.route(to, m, t(61_000)),
            Err(LedgerError::WrongClient)
        );
        let routed = ledger.route(from, m, t(61_000)).unwrap();
        assert_eq!((routed.token_id, routed.forward_to), (token, to));
    }
    assert_eq!(ledger.sweep(t(61_000), usize::MAX), Ok(0));
}

#[test]
fn cancel_while_awaiting_approval_fails_for_good() {
    let mut s = setup(21);
    let mut primary = until_request(&mut s);
    s.companion.cancel(t(1_300)).unwrap();
    assert!(matches!(
        s.companion.state(),
        CompanionState::Failed {
            reason: FailureReason::Cancelled,
            ..
        }
    ));
    // The grant that arrives afterwards is refused; cancelling again too.
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_400)).unwrap();
    assert_eq!(
        s.companion.receive_grant(&grant, t(1_500)),
        Err(HandshakeError::AlreadyFailed)
    );
    assert_eq!(
        s.companion.cancel(t(1_600)),
        Err(HandshakeError::AlreadyFailed)
    );
}

#[test]
fn reserved_refusal_codes_are_not_sent_and_unknown_ones_still_refuse() {
    let mut s = setup(22);
    let mut primary = until_request(&mut s);
    for code in 0..4 {
        assert!(matches!(
            s.account.refuse(
                &mut primary,
                RefusalReason::Other { code },
                &mut s.rng,
                t(1_200)
            ),
            Err(devicelink::RegistryError::Handshake(
                HandshakeError::WrongState { .. }
            ))
        ));
    }
    assert_eq!(primary.state(), PrimaryState::RequestReceived);
    let refusal = s
        .account
        .refuse(
            &mut primary,
            RefusalReason::Other { code: 42 },
            &mut s.rng,
            t(1_200),
        )
        .unwrap();
    let err = s.companion.receive_grant(&refusal, t(1_300)).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Refused(RefusalReason::Other { code: 42 })
    );
    assert!(err.is_terminal());
}

/// Review finding 7: every endpoint checks a message's size against its kind
/// before copying or decrypting it. A 64 MiB "Grant" (or any other
/// oversized or undersized message) is refused with `WrongSize` and changes
/// nothing; every genuine message lies within its kind's range.
#[test]
fn sizes_are_checked_before_copy_or_decrypt_at_every_endpoint() {
    use devicelink::handshake::{MessageHeader, MessageKind};
    let mut s = setup(40);
    let (_, tr) = link(&mut setup(40));
    for (kind, msg) in [
        (MessageKind::Hello, &tr.hello),
        (MessageKind::Request, &tr.request),
        (MessageKind::Grant, &tr.grant),
        (MessageKind::Confirm, &tr.confirm),
    ] {
        let (min, max) = kind.size_range();
        assert!((min..=max).contains(&msg.len()), "{kind:?}: {}", msg.len());
        assert_eq!(MessageHeader::parse(msg).unwrap().kind, kind);
    }
    let huge = |genuine: &[u8]| {
        let mut m = genuine[..devicelink::handshake::HEADER_LEN].to_vec();
        m.resize(64 << 20, 0);
        m
    };
    // The companion, waiting for the Hello, then for the Grant.
    let before = s.companion.save().unwrap();
    for bad in [huge(&tr.hello), tr.hello[..tr.hello.len() - 1].to_vec()] {
        assert!(matches!(
            s.companion.receive_hello(&bad, &mut s.rng, t(1_100)),
            Err(HandshakeError::WrongSize {
                kind: MessageKind::Hello,
                ..
            })
        ));
    }
    assert_eq!(s.companion.save().unwrap(), before);
    s.account.open_link_intent(t(1_000));
    let offer = offer_text(&s.companion);
    let (mut primary, hello) = s.account.scan(&offer, &mut s.rng, t(1_000)).unwrap();
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    let grant_huge = {
        let mut m = request[..devicelink::handshake::HEADER_LEN].to_vec();
        m[1] = 3; // kind: Grant, for this session's token
        m.resize(64 << 20, 0);
        m
    };
    let before = s.companion.save().unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        s.companion.receive_grant(&grant_huge, t(1_200)),
        Err(HandshakeError::WrongSize {
            kind: MessageKind::Grant,
            len: 64 << 20
        })
    );
    // Refused without touching the 64 MiB (generous bound on a shared machine:
    // copying and authenticating it takes far longer).
    assert!(started.elapsed() < std::time::Duration::from_millis(200));
    assert_eq!(s.companion.save().unwrap(), before);
    // The primary, waiting for the Request, then for the Confirm.
    let before = primary.save().unwrap();
    let mut req_huge = request.clone();
    req_huge.resize(64 << 20, 0);
    assert!(matches!(
        primary.receive_request(&req_huge, t(1_200)),
        Err(HandshakeError::WrongSize {
            kind: MessageKind::Request,
            ..
        })
    ));
    assert!(matches!(
        primary.receive_request(&request[..request.len() - 20], t(1_200)),
        Err(HandshakeError::WrongSize {
            kind: MessageKind::Request,
            ..
        })
    ));
    assert_eq!(primary.save().unwrap(), before);
    s.account
        .receive_request(&mut primary, &request, &mut s.rng, t(1_200))
        .unwrap();
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    s.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = s.companion.consent(t(1_400)).unwrap();
    let mut confirm_long = confirm.clone();
    confirm_long.push(0);
    let before = primary.save().unwrap();
    assert!(matches!(
        s.account.confirm(&mut primary, &confirm_long, t(1_500)),
        Err(RegistryError::Handshake(HandshakeError::WrongSize {
            kind: MessageKind::Confirm,
            ..
        }))
    ));
    assert_eq!(primary.save().unwrap(), before);
    s.account.confirm(&mut primary, &confirm, t(1_500)).unwrap();
}

/// Review finding 11: the Request is sealed under a fresh random nonce (a
/// restored companion answering the same Hello twice never reuses one), and
/// a finished handshake drops its session keys.
#[test]
fn request_nonces_are_random_and_finished_handshakes_drop_their_keys() {
    let mut s = setup(41);
    s.account.open_link_intent(t(1_000));
    let offer = offer_text(&s.companion);
    let (mut primary, hello) = s.account.scan(&offer, &mut s.rng, t(1_000)).unwrap();
    let saved = s.companion.save().unwrap();
    let mut again = Companion::restore(&saved).unwrap();
    let request = s
        .companion
        .receive_hello(&hello, &mut s.rng, t(1_100))
        .unwrap();
    let request2 = again
        .receive_hello(&hello, &mut ChaCha20Rng::seed_from_u64(99), t(1_100))
        .unwrap();
    let h = devicelink::handshake::HEADER_LEN;
    assert_eq!(request.len(), request2.len());
    assert_ne!(request[h..h + 12], request2[h..h + 12], "nonce reused");
    assert_ne!(request[h + 12..], request2[h + 12..]);
    // Both are genuine: either one opens at the primary.
    let mut p2 = PrimaryHandshake::restore(&primary.save().unwrap()).unwrap();
    p2.receive_request(&request2, t(1_200)).unwrap();
    s.account
        .receive_request(&mut primary, &request, &mut s.rng, t(1_200))
        .unwrap();
    let holds_keys = |p: &PrimaryHandshake| {
        let saved = String::from_utf8(p.save().unwrap()).unwrap();
        !saved.contains("\"keys\":null")
    };
    assert!(holds_keys(&primary));
    let grant = s.account.grant(&mut primary, &mut s.rng, t(1_300)).unwrap();
    assert!(holds_keys(&primary));
    s.companion.receive_grant(&grant, t(1_400)).unwrap();
    let confirm = s.companion.consent(t(1_400)).unwrap();
    s.account.confirm(&mut primary, &confirm, t(1_500)).unwrap();
    assert!(!holds_keys(&primary), "confirmed handshake kept its keys");
    // A refused one too.
    let mut r = setup(42);
    let mut p = until_request(&mut r);
    assert!(holds_keys(&p));
    r.account
        .refuse(&mut p, RefusalReason::Declined, &mut r.rng, t(1_300))
        .unwrap();
    assert!(!holds_keys(&p), "refused handshake kept its keys");
    // A finished handshake restores, and still answers a duplicate Confirm.
    let restored = PrimaryHandshake::restore(&primary.save().unwrap()).unwrap();
    assert_eq!(restored.state(), primary.state());
}
