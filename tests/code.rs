//! Linking by typed code, through the public API only: the right code links
//! exactly as a scan does; a wrong code ends the attempt on both sides and
//! changes nothing else; a relay in the middle gets one guess per attempt;
//! replayed and altered messages; lockouts; expiry at the exact millisecond;
//! saved states.

use devicelink::code::{
    CodeCompanion, CodeEntry, CodeEntryState, CodeFailure, CodeOfferState, CodeTextError, LinkCode,
    TypedCode,
};
use devicelink::handshake::HandshakeError;
use devicelink::relay::{
    AttemptKey, ClientId, CodeRelayConfig, CodeRelayError, CodeRendezvous, LockoutPolicy,
};
use devicelink::{
    Account, Companion, CompanionState, DeviceIdentity, DeviceLabel, DeviceState, LinkedSession,
    Policy, PrimaryHandshake, RegistryError, SessionStatus, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::time::Duration;

const LAPTOP: ClientId = ClientId::from_bytes([1; 16]);
const PHONE: ClientId = ClientId::from_bytes([2; 16]);
const MALLORY: ClientId = ClientId::from_bytes([3; 16]);

fn t0() -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000)
}

fn label(s: &str) -> DeviceLabel {
    DeviceLabel::new(s).unwrap()
}

/// A companion showing a code, published at the relay.
struct Shown {
    code: CodeCompanion,
    text: String,
}

fn show(relay: &mut CodeRendezvous, rng: &mut ChaCha20Rng, now: Timestamp) -> Shown {
    let (handle, _) = relay.open(LAPTOP, rng, now).unwrap();
    let code = CodeCompanion::new(
        DeviceIdentity::generate(rng),
        label("Firefox on Linux"),
        handle,
        &Policy::default(),
        rng,
        now,
    );
    relay
        .publish(LAPTOP, code.offer_message().unwrap(), now)
        .unwrap();
    let text = code.code_text().unwrap();
    Shown { code, text }
}

fn relay() -> CodeRendezvous {
    CodeRendezvous::new(CodeRelayConfig::from_policy(&Policy::default()))
}

/// Routes `msg` from `from` and checks it goes to `to`.
fn route(relay: &mut CodeRendezvous, msg: &[u8], from: ClientId, to: ClientId, now: Timestamp) {
    let r = relay.route(msg, from, now).unwrap();
    assert_eq!(r.forward_to, to);
}

/// The rest of a link after the key exchange, identical for both entry paths.
fn finish(
    account: &mut Account,
    primary: &mut PrimaryHandshake,
    companion: &mut Companion,
    request: &[u8],
    relay: Option<&mut CodeRendezvous>,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> LinkedSession {
    let asked = account.receive_request(primary, request, rng, now).unwrap();
    assert_eq!(Some(asked.check_code), companion.check_code());
    let grant = account.grant(primary, rng, now).unwrap();
    let confirm = companion.receive_grant(&grant, now).unwrap();
    if let Some(relay) = relay {
        route(relay, request, LAPTOP, PHONE, now);
        route(relay, &grant, PHONE, LAPTOP, now);
        route(relay, &confirm, LAPTOP, PHONE, now);
    }
    account.confirm(primary, &confirm, now).unwrap();
    companion.session().unwrap().clone()
}

#[test]
fn the_right_code_links_exactly_as_a_scan() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let policy = Policy::default();

    // By QR code.
    let mut qr_account = Account::generate(policy.clone(), &mut rng, now);
    let mut c = Companion::new(
        DeviceIdentity::generate(&mut rng),
        label("Firefox on Linux"),
        &policy,
        &mut rng,
        now,
    );
    qr_account.open_link_intent(now);
    let text = c.offer().unwrap().to_text();
    let (mut p, hello) = qr_account.scan(&text, &mut rng, now).unwrap();
    let request = c.receive_hello(&hello, &mut rng, now).unwrap();
    let qr_session = finish(
        &mut qr_account,
        &mut p,
        &mut c,
        &request,
        None,
        &mut rng,
        now,
    );

    // By typed code, every message through the relay.
    let mut relay = relay();
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let mut shown = show(&mut relay, &mut rng, now);
    assert_eq!(shown.text.len(), 14);
    account.open_link_intent(now);
    // Typed in lower case with spaces; O for 0, l for 1.
    let typed_text = shown
        .text
        .to_lowercase()
        .replace('-', " ")
        .replace('0', "o")
        .replace('1', "l");
    let typed = TypedCode::parse(&typed_text).unwrap();
    let offer = relay
        .join(typed.handle(), PHONE, Some(account.account_id()), now)
        .unwrap();
    let (mut entry, hello) = account.enter_code(&typed, &offer, &mut rng, now).unwrap();
    route(&mut relay, &hello, PHONE, LAPTOP, now);
    let accepted = shown.code.receive_hello(&hello, &mut rng, now).unwrap();
    assert_eq!(shown.code.state(), CodeOfferState::Accepted { at: now });
    route(&mut relay, &accepted.confirm, LAPTOP, PHONE, now);
    let mut primary = entry.receive_confirm(&accepted.confirm, now).unwrap();
    assert_eq!(entry.state(), CodeEntryState::Confirmed);
    let mut companion = accepted.companion;
    assert!(matches!(
        companion.state(),
        CompanionState::AwaitingGrant { .. }
    ));
    assert_eq!(primary.token_id(), shown.code.token_id());
    let session = finish(
        &mut account,
        &mut primary,
        &mut companion,
        &accepted.request,
        Some(&mut relay),
        &mut rng,
        now,
    );

    // Same certificate shape, list, lease and registry state as the scan.
    for (acc, s) in [(&qr_account, &qr_session), (&account, &session)] {
        assert_eq!(s.index().0, 1);
        assert_eq!(s.account(), acc.account_id());
        assert_eq!(acc.device_list_version(), 2);
        assert!(acc.device_list().contains(s.index(), &s.device_key()));
        assert_eq!(acc.companion_count(now), 1);
        assert_eq!(
            acc.device_state(s.index(), now),
            Some(DeviceState::Active { since: now })
        );
        assert_eq!(
            s.status(now),
            SessionStatus::Linked {
                expires_at: now.saturating_add(policy.primary_offline_limit())
            }
        );
    }
    let kinds = |a: &mut Account| {
        a.take_events()
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&mut qr_account), kinds(&mut account));
    // The linked session is routable no longer than its window.
    assert!(relay.sweep(now.saturating_add(Duration::from_secs(3_600))) >= 1);
    assert!(relay.is_empty());
}

#[test]
fn one_wrong_code_fails_both_sides_and_changes_nothing_else() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut relay = relay();
    let mut account = Account::generate(Policy::default(), &mut rng, now);
    let mut shown = show(&mut relay, &mut rng, now);
    let real = TypedCode::parse(&shown.text).unwrap();
    // The user mistypes one symbol of the code.
    let mut chars: Vec<char> = shown.text.chars().collect();
    chars[13] = if chars[13] == 'X' { 'Y' } else { 'X' };
    let typo = TypedCode::parse(&chars.iter().collect::<String>()).unwrap();
    assert_eq!(typo.handle(), real.handle());
    assert_ne!(typo.code(), real.code());

    account.open_link_intent(now);
    let list_before = account.device_list().to_bytes();
    let offer = relay
        .join(typo.handle(), PHONE, Some(account.account_id()), now)
        .unwrap();
    let (mut entry, hello) = account.enter_code(&typo, &offer, &mut rng, now).unwrap();
    let saved_account = account.save().unwrap();

    let e = shown.code.receive_hello(&hello, &mut rng, now).unwrap_err();
    assert_eq!(e, HandshakeError::WrongCode);
    assert!(e.is_terminal());
    assert_eq!(
        shown.code.state(),
        CodeOfferState::Failed {
            reason: CodeFailure::WrongCode,
            at: now
        }
    );
    assert_eq!(shown.code.code_text(), None);
    // The genuine Hello can no longer be answered: the code is dead.
    assert_eq!(
        shown.code.receive_hello(&hello, &mut rng, now).unwrap_err(),
        HandshakeError::AlreadyFailed
    );
    let notice = shown.code.wrong_code_notice().unwrap().to_vec();
    route(&mut relay, &notice, LAPTOP, PHONE, now);
    assert_eq!(
        entry.receive_confirm(&notice, now).unwrap_err(),
        HandshakeError::WrongCode
    );
    assert_eq!(entry.state(), CodeEntryState::WrongCode);
    assert_eq!(
        entry.receive_confirm(&notice, now).unwrap_err(),
        HandshakeError::AlreadyFailed
    );

    // Nothing else changed: the account after the typing is the account now.
    assert_eq!(account.save().unwrap(), saved_account);
    assert_eq!(account.device_list().to_bytes(), list_before);
    assert_eq!(account.companion_count(now), 0);
    assert!(account.take_events().is_empty());

    // The relay counts one failure for the handle, the phone and its account;
    // the handle may carry a new code.
    let token = shown.code.token_id();
    assert_eq!(relay.report_wrong_code(&token, LAPTOP, now), Ok(None));
    let h = AttemptKey::Handle(real.handle());
    for key in [
        h,
        AttemptKey::Client(PHONE),
        AttemptKey::Account(account.account_id()),
    ] {
        assert_eq!(relay.attempts().failures(&key, now), 1, "{key:?}");
    }
    let again = CodeCompanion::new(
        DeviceIdentity::generate(&mut rng),
        label("Firefox on Linux"),
        real.handle(),
        &Policy::default(),
        &mut rng,
        now,
    );
    relay
        .publish(LAPTOP, again.offer_message().unwrap(), now)
        .unwrap();
}

#[test]
fn a_relay_in_the_middle_gets_one_guess_per_attempt() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let policy = Policy::default();
    let mut victim = Account::generate(policy.clone(), &mut rng, now);
    let mut mallory = Account::generate(policy.clone(), &mut rng, now);
    let attempts = 32;
    for _ in 0..attempts {
        // The honest companion shows a code; the relay knows its handle
        // and CodeOffer, never the code.
        let (handle, _) = relay().open(LAPTOP, &mut rng, now).unwrap();
        let mut honest = CodeCompanion::new(
            DeviceIdentity::generate(&mut rng),
            label("Chrome"),
            handle,
            &policy,
            &mut rng,
            now,
        );
        let offer = honest.offer_message().unwrap().to_vec();
        let real = TypedCode::parse(&honest.code_text().unwrap()).unwrap();

        // Towards the companion, the relay plays a phone with a guess.
        let guess = TypedCode::new(handle, LinkCode::generate(&mut rng));
        mallory.open_link_intent(now);
        let (_, fake_hello) = mallory.enter_code(&guess, &offer, &mut rng, now).unwrap();
        assert_eq!(
            honest
                .receive_hello(&fake_hello, &mut rng, now)
                .unwrap_err(),
            HandshakeError::WrongCode
        );
        // That one guess ended the code: nothing more to try against it.
        assert_eq!(honest.code_text(), None);

        // Towards the phone, it plays a companion with its own guessed code
        // under the handle the user typed.
        let mut fake = CodeCompanion::new(
            DeviceIdentity::generate(&mut rng),
            label("Chrome"),
            handle,
            &policy,
            &mut rng,
            now,
        );
        victim.open_link_intent(now);
        let (mut entry, hello) = victim
            .enter_code(&real, fake.offer_message().unwrap(), &mut rng, now)
            .unwrap();
        assert_eq!(
            fake.receive_hello(&hello, &mut rng, now).unwrap_err(),
            HandshakeError::WrongCode
        );
        let notice = fake.wrong_code_notice().unwrap().to_vec();
        assert_eq!(
            entry.receive_confirm(&notice, now).unwrap_err(),
            HandshakeError::WrongCode
        );
        // Forging a confirmation without the key fails the same way.
        assert_eq!(entry.state(), CodeEntryState::WrongCode);
    }
    assert_eq!(victim.companion_count(now), 0);
}

/// Every single-bit change of a CodeHello, CodeConfirm and CodeOffer is
/// refused. Outside the key share and the MAC the receiver is unchanged
/// (byte for byte); in the key share it is unchanged if the point is not in
/// the group, and otherwise, like a flipped MAC, it is the wrong-code
/// signal (terminal by design: it cannot be told from a wrong code).
#[test]
fn altered_and_replayed_code_messages_are_refused() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut relay = relay();
    let mut account = Account::generate(Policy::default(), &mut rng, now);
    let shown = show(&mut relay, &mut rng, now);
    let typed = TypedCode::parse(&shown.text).unwrap();
    let offer = relay.join(typed.handle(), PHONE, None, now).unwrap();

    // CodeOffer at the phone: every flip refused, the account unchanged.
    account.open_link_intent(now);
    let saved = account.save().unwrap();
    for i in 0..offer.len() * 8 {
        let mut bad = offer.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(account.enter_code(&typed, &bad, &mut rng, now).is_err());
        assert_eq!(account.save().unwrap(), saved, "offer bit {i}");
    }
    let (entry, hello) = account.enter_code(&typed, &offer, &mut rng, now).unwrap();

    // CodeHello at the companion.
    let saved = shown.code.save().unwrap();
    let mut terminal = 0;
    for i in 0..hello.len() * 8 {
        let mut bad = hello.clone();
        bad[i / 8] ^= 1 << (i % 8);
        let mut c = CodeCompanion::restore(&saved).unwrap();
        let e = c.receive_hello(&bad, &mut rng, now).unwrap_err();
        let byte = i / 8;
        if e.is_terminal() {
            assert_eq!(e, HandshakeError::WrongCode, "hello bit {i}");
            assert!(byte >= 19, "only the point and the MAC: bit {i}");
            terminal += 1;
        } else {
            assert!(byte < 51, "a flipped MAC is always the wrong-code signal");
            assert_eq!(c.save().unwrap(), saved, "hello bit {i}: {e}");
        }
    }
    assert!(terminal >= 256, "every MAC bit is terminal");
    let mut c = CodeCompanion::restore(&saved).unwrap();
    let accepted = c.receive_hello(&hello, &mut rng, now).unwrap();
    // Replayed: refused, unchanged.
    let after = c.save().unwrap();
    assert_eq!(
        c.receive_hello(&hello, &mut rng, now).unwrap_err(),
        HandshakeError::AlreadyLinked
    );
    assert_eq!(c.save().unwrap(), after);
    // Another session's Hello.
    let other = show(&mut relay, &mut rng, now);
    let mut o = other.code.clone();
    assert_eq!(
        o.receive_hello(&hello, &mut rng, now).unwrap_err(),
        HandshakeError::WrongSession
    );
    // A CodeHello where a CodeConfirm is expected, and the reverse.
    let saved_entry = entry.save().unwrap();
    let mut e2 = CodeEntry::restore(&saved_entry).unwrap();
    assert!(matches!(
        e2.receive_confirm(&hello, now),
        Err(HandshakeError::UnexpectedCodeMessage { .. })
    ));
    assert_eq!(e2.save().unwrap(), saved_entry);

    // CodeConfirm at the phone.
    let confirm = accepted.confirm.clone();
    for i in 0..confirm.len() * 8 {
        let mut bad = confirm.clone();
        bad[i / 8] ^= 1 << (i % 8);
        let mut e = CodeEntry::restore(&saved_entry).unwrap();
        let err = e.receive_confirm(&bad, now).unwrap_err();
        if i / 8 >= 18 {
            assert_eq!(err, HandshakeError::WrongCode, "confirm bit {i}");
        } else {
            assert!(!err.is_terminal());
            assert_eq!(e.save().unwrap(), saved_entry, "confirm bit {i}");
        }
    }
    // Truncated or extended: refused before anything, unchanged.
    let mut e = CodeEntry::restore(&saved_entry).unwrap();
    for bad in [&confirm[..49], &[confirm.as_slice(), &[0]].concat()[..]] {
        assert!(matches!(
            e.receive_confirm(bad, now),
            Err(HandshakeError::Malformed { .. })
        ));
    }
    let mut primary = e.receive_confirm(&confirm, now).unwrap();
    assert_eq!(
        e.receive_confirm(&confirm, now).unwrap_err(),
        HandshakeError::AlreadyLinked
    );
    // The handshake's own receivers refuse code messages as malformed.
    let before = primary.save().unwrap();
    assert!(primary.receive_request(&confirm, now).is_err());
    assert_eq!(primary.save().unwrap(), before);
    // ... and the relay routes a code message only from its sender.
    assert_eq!(
        relay.route(&hello, LAPTOP, now),
        Err(CodeRelayError::WrongClient)
    );
}

#[test]
fn the_code_expires_at_the_exact_millisecond() {
    let now = t0();
    let policy = Policy::default();
    let life = policy.code_lifetime();
    assert_eq!(life, Duration::from_secs(180));
    let end = now.saturating_add(life);
    let last = end.saturating_sub_millis(1);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut relay = relay();
    let mut account = Account::generate(policy, &mut rng, now);
    let shown = show(&mut relay, &mut rng, now);
    assert_eq!(shown.code.next_deadline(), Some(end));
    let typed = TypedCode::parse(&shown.text).unwrap();

    // The relay: joinable at end − 1 ms, expired at end.
    let mut r2 = relay.clone();
    assert_eq!(
        r2.join(typed.handle(), PHONE, None, end),
        Err(CodeRelayError::Expired)
    );
    let offer = relay.join(typed.handle(), PHONE, None, last).unwrap();
    account.open_link_intent(last);
    let (_, hello) = account.enter_code(&typed, &offer, &mut rng, last).unwrap();

    // The companion: accepts at end − 1 ms, expires at end.
    let mut c = shown.code.clone();
    assert_eq!(c.poll(last), None);
    assert!(c.clone().receive_hello(&hello, &mut rng, last).is_ok());
    assert_eq!(
        c.receive_hello(&hello, &mut rng, end).unwrap_err(),
        HandshakeError::TimedOut {
            waiting_for: "the code"
        }
    );
    assert_eq!(
        c.state(),
        CodeOfferState::Failed {
            reason: CodeFailure::Expired,
            at: end
        }
    );
    let mut p = shown.code.clone();
    assert_eq!(p.poll(end), Some(CodeFailure::Expired));
    assert_eq!(p.poll(end), None);
    // A CodeHello after the expiry is not even routed.
    assert_eq!(
        relay.route(&hello, PHONE, end),
        Err(CodeRelayError::Expired)
    );
}

#[test]
fn lockout_after_repeated_failures_with_backoff() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut config = CodeRelayConfig::from_policy(&Policy::default());
    config.code_lifetime = Duration::from_secs(3_600);
    let mut relay = CodeRendezvous::new(config);
    let account = Account::generate(Policy::default(), &mut rng, now).account_id();
    let (handle, _) = relay.open(LAPTOP, &mut rng, now).unwrap();
    let lockout = LockoutPolicy::default();
    let mut t = now;
    // Three free failures, then 1 min, 2 min, 4 min … on the handle.
    for n in 1..=6u32 {
        let c = CodeCompanion::new(
            DeviceIdentity::generate(&mut rng),
            label("x"),
            handle,
            &Policy::builder()
                .code_lifetime(Duration::from_secs(3_600))
                .build()
                .unwrap(),
            &mut rng,
            t,
        );
        let token = relay
            .publish(LAPTOP, c.offer_message().unwrap(), t)
            .unwrap();
        relay.join(handle, PHONE, Some(account), t).unwrap();
        let locked = relay.report_wrong_code(&token, LAPTOP, t).unwrap();
        let want = lockout.lockout_after(n);
        assert_eq!(locked, (!want.is_zero()).then(|| t.saturating_add(want)));
        if let Some(until) = locked {
            // Locked to the millisecond: refused at until − 1, open at until.
            let c2 = CodeCompanion::new(
                DeviceIdentity::generate(&mut rng),
                label("x"),
                handle,
                &Policy::default(),
                &mut rng,
                t,
            );
            let e = relay
                .publish(
                    LAPTOP,
                    c2.offer_message().unwrap(),
                    until.saturating_sub_millis(1),
                )
                .unwrap_err();
            assert_eq!(
                e,
                CodeRelayError::LockedOut {
                    key: AttemptKey::Handle(handle),
                    until
                }
            );
            assert!(e.is_retryable());
            t = until;
        }
    }
    assert_eq!(lockout.lockout_after(4), Duration::from_secs(60));
    assert_eq!(lockout.lockout_after(6), Duration::from_secs(240));
    assert_eq!(lockout.lockout_after(40), Duration::from_secs(86_400));
    // The same phone (and account) are locked out on every handle: one
    // more failure on another handle locks the phone for 8 minutes.
    let publish = |relay: &mut CodeRendezvous, rng: &mut ChaCha20Rng, t| {
        let (h, _) = relay.open(LAPTOP, rng, t).unwrap();
        let c = CodeCompanion::new(
            DeviceIdentity::generate(rng),
            label("x"),
            h,
            &Policy::default(),
            rng,
            t,
        );
        (
            h,
            relay
                .publish(LAPTOP, c.offer_message().unwrap(), t)
                .unwrap(),
        )
    };
    let (h2, token2) = publish(&mut relay, &mut rng, t);
    relay.join(h2, PHONE, Some(account), t).unwrap();
    relay.report_wrong_code(&token2, PHONE, t).unwrap();
    let (h3, _) = publish(&mut relay, &mut rng, t);
    assert_eq!(
        relay.join(h3, PHONE, Some(account), t),
        Err(CodeRelayError::LockedOut {
            key: AttemptKey::Client(PHONE),
            until: t.saturating_add(Duration::from_secs(480))
        })
    );
    assert_eq!(
        relay.join(h3, MALLORY, Some(account), t),
        Err(CodeRelayError::LockedOut {
            key: AttemptKey::Account(account),
            until: t.saturating_add(Duration::from_secs(480))
        })
    );
    relay.join(h3, MALLORY, None, t).unwrap();
    // The attacker's best: 14 guesses on the first day, then about one a
    // day (docs/PROTOCOL.md §13.5).
    assert_eq!(lockout.max_failures_in(Duration::from_secs(86_400)), 14);
    assert_eq!(lockout.max_failures_in(Duration::from_secs(2 * 86_400)), 15);
    assert_eq!(
        lockout.max_failures_in(Duration::from_secs(366 * 86_400)),
        379
    );
}

#[test]
fn scanning_rules_apply_to_codes_too() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut relay = relay();
    let mut account = Account::generate(Policy::default(), &mut rng, now);
    let shown = show(&mut relay, &mut rng, now);
    let typed = TypedCode::parse(&shown.text).unwrap();
    let offer = relay.join(typed.handle(), PHONE, None, now).unwrap();
    assert_eq!(
        account
            .enter_code(&typed, &offer, &mut rng, now)
            .unwrap_err(),
        RegistryError::NoLinkIntent
    );
    account.open_link_intent(now);
    let late = now.saturating_add(Duration::from_secs(60));
    assert_eq!(
        account
            .enter_code(&typed, &offer, &mut rng, late)
            .unwrap_err(),
        RegistryError::LinkIntentExpired
    );
    // A CodeOffer for another handle than the one typed.
    let other = show(&mut relay, &mut rng, now);
    assert_eq!(
        account
            .enter_code(&typed, other.code.offer_message().unwrap(), &mut rng, now)
            .unwrap_err(),
        RegistryError::Handshake(HandshakeError::WrongSession)
    );
    // A published code is used once.
    assert_eq!(
        relay.join(typed.handle(), MALLORY, None, now),
        Err(CodeRelayError::AlreadyJoined)
    );
    // Typed text errors.
    assert_eq!(
        TypedCode::parse("1234-5678-9ABU"),
        Err(CodeTextError::BadCharacter { at: 13, found: 'U' })
    );
}

#[test]
fn saved_states_restore_mid_exchange_and_keep_secrets_quiet() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut relay = relay();
    let mut account = Account::generate(Policy::default(), &mut rng, now);
    let shown = show(&mut relay, &mut rng, now);
    let typed = TypedCode::parse(&shown.text).unwrap();
    let offer = relay.join(typed.handle(), PHONE, None, now).unwrap();
    account.open_link_intent(now);
    let (entry, hello) = account.enter_code(&typed, &offer, &mut rng, now).unwrap();

    let mut c = CodeCompanion::restore(&shown.code.save().unwrap()).unwrap();
    let mut e = CodeEntry::restore(&entry.save().unwrap()).unwrap();
    let mut r = CodeRendezvous::restore(&relay.save().unwrap()).unwrap();
    assert_eq!(r.save().unwrap(), relay.save().unwrap());
    route(&mut r, &hello, PHONE, LAPTOP, now);
    let accepted = c.receive_hello(&hello, &mut rng, now).unwrap();
    let mut primary = e.receive_confirm(&accepted.confirm, now).unwrap();
    let mut companion = accepted.companion;
    finish(
        &mut account,
        &mut primary,
        &mut companion,
        &accepted.request,
        None,
        &mut rng,
        now,
    );
    assert_eq!(account.companion_count(now), 1);

    // Corrupted saves are typed errors.
    let mut bad = shown.code.save().unwrap();
    let last = bad.len() - 3;
    bad[last] ^= 1;
    assert!(CodeCompanion::restore(&bad).is_err());
    assert!(CodeEntry::restore(&relay.save().unwrap()).is_err());

    // Secrets stay out of Debug.
    let code = typed.code().to_text().replace('-', "");
    for dbg in [
        format!("{:?}", shown.code),
        format!("{entry:?}"),
        format!("{typed:?}"),
    ] {
        assert!(!dbg.contains(&code), "{dbg}");
        assert!(!dbg.contains(&shown.text), "{dbg}");
    }
}

mod total {
    use super::*;
    use devicelink::code::{CodeHandle, CodeHeader};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any text: a typed code or a typed error, and an accepted code
        /// round-trips through its canonical text.
        #[test]
        fn typed_text_is_total(text in "\\PC{0,70}") {
            if let Ok(t) = TypedCode::parse(&text) {
                prop_assert_eq!(TypedCode::parse(&t.to_text()).unwrap(), t);
            }
            let _ = CodeHandle::parse(&text);
            let _ = LinkCode::parse(&text);
        }

        /// Near-miss texts (the alphabet, look-alikes, separators).
        #[test]
        fn near_misses_are_total(text in "[0-9A-Za-z \\-]{0,20}") {
            match TypedCode::parse(&text) {
                Ok(t) => prop_assert_eq!(t.to_text().len(), 14),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        /// Any bytes as a code message or a saved code state.
        #[test]
        fn bytes_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = CodeHeader::parse(&bytes) {
                prop_assert_eq!(bytes.len(), h.kind.message_len());
            }
            prop_assert!(CodeCompanion::restore(&bytes).is_err());
            prop_assert!(CodeEntry::restore(&bytes).is_err());
            prop_assert!(CodeRendezvous::restore(&bytes).is_err());
        }
    }
}
