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
    AttemptKey, BudgetScope, ClientId, CodeRelayConfig, CodeRelayError, CodeRendezvous, CodeSpent,
    LockoutPolicy, SourceKey,
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
/// The network sources the relay keys budgets and failures by.
const HOME: SourceKey = SourceKey::from_bytes([10; 16]);
const AWAY: SourceKey = SourceKey::from_bytes([11; 16]);

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
    let (handle, _) = relay.open(LAPTOP, HOME, rng, now).unwrap();
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
    let r = relay.route(from, msg, now).unwrap();
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
    // A scan shows the same six digits on both screens; a typed code needs
    // none (both sides say so).
    let grant = account.grant(primary, rng, now).unwrap();
    let joining = companion.receive_grant(&grant, now).unwrap();
    assert_eq!(joining.account, account.account_id());
    assert_eq!(joining.check_code, asked.check_code);
    let confirm = companion.consent(now).unwrap();
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
    assert!(p.check_code().is_none());
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
        .join(typed.handle(), PHONE, HOME, Some(account.account_id()), now)
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
    assert!(
        primary.check_code().is_none(),
        "a typed code shows no check code"
    );
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
    assert!(relay
        .sweep(now.saturating_add(Duration::from_secs(3_600)))
        .is_empty());
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
        .join(typo.handle(), PHONE, HOME, Some(account.account_id()), now)
        .unwrap();
    let (mut entry, hello) = account.enter_code(&typo, &offer, &mut rng, now).unwrap();
    let saved_account = account.save().unwrap();

    route(&mut relay, &hello, PHONE, LAPTOP, now);
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

    // The relay counts one failure for the phone: its client, its source
    // and its account; never for the handle, which may carry a new code.
    // The companion reported, so nobody needs telling.
    let token = shown.code.token_id();
    let reported = relay.report_wrong_code(&token, LAPTOP, now).unwrap();
    assert_eq!(reported.spent, None);
    assert_eq!(reported.locked_until, None);
    for key in [
        AttemptKey::Client(PHONE),
        AttemptKey::Source(HOME),
        AttemptKey::Account(account.account_id()),
    ] {
        assert_eq!(relay.attempts().failures(&key, now), 1, "{key:?}");
    }
    assert_eq!(
        relay.attempts().failures(&AttemptKey::Client(LAPTOP), now),
        0
    );
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
        let (handle, _) = relay().open(LAPTOP, HOME, &mut rng, now).unwrap();
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
    let offer = relay.join(typed.handle(), PHONE, HOME, None, now).unwrap();

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
        relay.route(LAPTOP, &hello, now),
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

    // The relay: joinable at end − 1 ms, no such code at end.
    let mut r2 = relay.clone();
    assert_eq!(
        r2.join(typed.handle(), PHONE, HOME, None, end),
        Err(CodeRelayError::NoSuchCode)
    );
    let offer = relay.join(typed.handle(), PHONE, HOME, None, last).unwrap();
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
        relay.route(PHONE, &hello, end),
        Err(CodeRelayError::Expired)
    );
}

/// Publishes a fresh code under `handle` (the companion LAPTOP).
fn publish_code(
    relay: &mut CodeRendezvous,
    rng: &mut ChaCha20Rng,
    handle: devicelink::CodeHandle,
    t: Timestamp,
) -> devicelink::TokenId {
    let c = CodeCompanion::new(
        DeviceIdentity::generate(rng),
        label("x"),
        handle,
        &Policy::builder()
            .code_lifetime(Duration::from_secs(3_600))
            .build()
            .unwrap(),
        rng,
        t,
    );
    relay
        .publish(LAPTOP, c.offer_message().unwrap(), t)
        .unwrap()
}

#[test]
fn lockout_after_repeated_failures_with_backoff() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut config = CodeRelayConfig::from_policy(&Policy::default());
    config.code_lifetime = Duration::from_secs(3_600);
    let mut relay = CodeRendezvous::new(config);
    let account = Account::generate(Policy::default(), &mut rng, now).account_id();
    let (handle, _) = relay.open(LAPTOP, HOME, &mut rng, now).unwrap();
    let lockout = LockoutPolicy::default();
    let mut t = now;
    // Three free failures, then 1 min, 2 min, 4 min … for the joiner.
    for n in 1..=6u32 {
        // The victim's handle is never locked: it carries a new code each
        // time.
        let token = publish_code(&mut relay, &mut rng, handle, t);
        relay.join(handle, PHONE, HOME, Some(account), t).unwrap();
        let reported = relay.report_wrong_code(&token, LAPTOP, t).unwrap();
        let want = lockout.lockout_after(n);
        assert_eq!(
            reported.locked_until,
            (!want.is_zero()).then(|| t.saturating_add(want))
        );
        if let Some(until) = reported.locked_until {
            // Locked to the millisecond: refused at until − 1, open at until.
            publish_code(&mut relay, &mut rng, handle, t);
            let before = until.saturating_sub_millis(1);
            let e = relay
                .join(handle, PHONE, HOME, Some(account), before)
                .unwrap_err();
            assert_eq!(
                e,
                CodeRelayError::LockedOut {
                    key: AttemptKey::Client(PHONE),
                    until
                }
            );
            assert!(e.is_retryable());
            // Another client from the same source, or of the same account,
            // is locked out too; a stranger elsewhere is not.
            assert_eq!(
                relay.join(handle, MALLORY, HOME, None, before),
                Err(CodeRelayError::LockedOut {
                    key: AttemptKey::Source(HOME),
                    until
                })
            );
            assert_eq!(
                relay.join(handle, MALLORY, AWAY, Some(account), before),
                Err(CodeRelayError::LockedOut {
                    key: AttemptKey::Account(account),
                    until
                })
            );
            // The session was published again and is still joinable: the
            // lockouts refused before anything was counted or taken.
            relay.join(handle, MALLORY, AWAY, None, until).unwrap();
            let spent = relay.sweep(until.saturating_add(config.hello_window));
            assert_eq!(spent.len(), 1, "MALLORY never said hello");
            t = until.saturating_add(config.hello_window);
        }
    }
    assert_eq!(lockout.lockout_after(4), Duration::from_secs(60));
    assert_eq!(lockout.lockout_after(6), Duration::from_secs(240));
    assert_eq!(lockout.lockout_after(40), Duration::from_secs(86_400));
    // The attacker's best: 14 guesses on the first day, then about one a
    // day (docs/PROTOCOL.md §13.8).
    assert_eq!(lockout.max_failures_in(Duration::from_secs(86_400)), 14);
    assert_eq!(lockout.max_failures_in(Duration::from_secs(2 * 86_400)), 15);
    assert_eq!(
        lockout.max_failures_in(Duration::from_secs(366 * 86_400)),
        379
    );
}

#[test]
fn scanning_handles_is_blind_and_slow() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(16);
    let mut relay = relay();
    // Every reason a handle cannot be joined is the same answer, and each
    // counts against the joiner: a handle never issued, one not published
    // yet, one already joined, one expired.
    let (unpublished, _) = relay.open(LAPTOP, HOME, &mut rng, now).unwrap();
    let shown = show(&mut relay, &mut rng, now);
    let joined = TypedCode::parse(&shown.text).unwrap().handle();
    relay.join(joined, PHONE, HOME, None, now).unwrap();
    let never = (0..)
        .map(|_| devicelink::CodeHandle::random(&mut rng))
        .find(|h| *h != unpublished && *h != joined)
        .unwrap();
    let expired = show(&mut relay, &mut rng, now);
    let expired = TypedCode::parse(&expired.text).unwrap().handle();
    let late = now.saturating_add(Policy::default().code_lifetime());
    for (handle, at) in [(never, now), (unpublished, now), (joined, now)] {
        assert_eq!(
            relay.join(handle, MALLORY, AWAY, None, at),
            Err(CodeRelayError::NoSuchCode)
        );
    }
    // The fourth failure locks the scanner (client and source) out for a
    // minute; it learns nothing more, even of a handle that exists.
    assert_eq!(
        relay.join(expired, MALLORY, AWAY, None, late),
        Err(CodeRelayError::NoSuchCode)
    );
    assert_eq!(
        relay
            .attempts()
            .failures(&AttemptKey::Client(MALLORY), late),
        4
    );
    assert_eq!(
        relay.attempts().failures(&AttemptKey::Source(AWAY), late),
        4
    );
    let m = ClientId::from_bytes([9; 16]);
    assert!(matches!(
        relay.join(joined, m, AWAY, None, late),
        Err(CodeRelayError::LockedOut {
            key: AttemptKey::Source(AWAY),
            ..
        })
    ));
    // The phone that joined first was not affected by any of it.
    assert_eq!(
        relay.attempts().failures(&AttemptKey::Client(PHONE), late),
        0
    );
}

#[test]
fn a_joiner_that_gives_up_or_stays_silent_spends_the_code_and_the_companion_is_told() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let config = CodeRelayConfig::from_policy(&Policy::default());
    let mut relay = CodeRendezvous::new(config);
    let shown = show(&mut relay, &mut rng, now);
    let handle = TypedCode::parse(&shown.text).unwrap().handle();
    let token = shown.code.token_id();
    // A bare WrongCode from whoever joined: the companion is told.
    relay.join(handle, MALLORY, AWAY, None, now).unwrap();
    let reported = relay.report_wrong_code(&token, MALLORY, now).unwrap();
    assert_eq!(
        reported.spent,
        Some(CodeSpent {
            companion: LAPTOP,
            token_id: token
        })
    );
    assert_eq!(
        relay.attempts().failures(&AttemptKey::Client(MALLORY), now),
        1
    );
    assert_eq!(
        relay.attempts().failures(&AttemptKey::Client(LAPTOP), now),
        0
    );
    // The handle carries the companion's next code.
    let token2 = publish_code(&mut relay, &mut rng, handle, now);
    // A joiner that takes the offer and stays silent: at the hello window's
    // end the code is spent, the joiner counted, the companion told.
    relay.join(handle, MALLORY, AWAY, None, now).unwrap();
    let due = now.saturating_add(config.hello_window);
    assert_eq!(relay.next_deadline(), Some(due));
    assert!(relay.sweep(due.saturating_sub_millis(1)).is_empty());
    assert_eq!(
        relay.sweep(due),
        vec![CodeSpent {
            companion: LAPTOP,
            token_id: token2
        }]
    );
    assert_eq!(
        relay.attempts().failures(&AttemptKey::Client(MALLORY), due),
        2
    );
    // Its CodeHello, late, is not routed.
    let mut account = Account::generate(Policy::default(), &mut rng, now);
    account.open_link_intent(now);
    let token3 = publish_code(&mut relay, &mut rng, handle, due);
    assert_ne!(token3, token2);
    assert_eq!(relay.len(), 1);
    let saved = relay.save().unwrap();
    assert_eq!(
        CodeRendezvous::restore(&saved).unwrap().save().unwrap(),
        saved
    );
}

#[test]
fn code_sessions_are_budgeted_per_client_and_source() {
    let now = t0();
    let mut rng = ChaCha20Rng::seed_from_u64(18);
    let mut relay = relay();
    for _ in 0..4 {
        relay.open(LAPTOP, HOME, &mut rng, now).unwrap();
    }
    assert_eq!(
        relay.open(LAPTOP, HOME, &mut rng, now),
        Err(CodeRelayError::QuotaExceeded {
            scope: BudgetScope::Client,
            limit: 4
        })
    );
    // Fresh client ids from one source: 32 sessions in all.
    for i in 0..28u8 {
        relay
            .open(ClientId::from_bytes([100 + i; 16]), HOME, &mut rng, now)
            .unwrap();
    }
    assert_eq!(relay.source_sessions(&HOME), 32);
    assert_eq!(
        relay.open(ClientId::from_bytes([200; 16]), HOME, &mut rng, now),
        Err(CodeRelayError::QuotaExceeded {
            scope: BudgetScope::Source,
            limit: 32
        })
    );
    // Another source is served.
    relay
        .open(ClientId::from_bytes([200; 16]), AWAY, &mut rng, now)
        .unwrap();
    // A companion gone for good: its sessions stop counting at once.
    assert_eq!(relay.abandon(LAPTOP), 4);
    assert_eq!(relay.abandon(LAPTOP), 0);
    assert_eq!(relay.source_sessions(&HOME), 28);
    relay
        .open(ClientId::from_bytes([201; 16]), HOME, &mut rng, now)
        .unwrap();
    let saved = relay.save().unwrap();
    assert_eq!(
        CodeRendezvous::restore(&saved).unwrap().save().unwrap(),
        saved
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
    let offer = relay.join(typed.handle(), PHONE, HOME, None, now).unwrap();
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
        relay.join(typed.handle(), MALLORY, HOME, None, now),
        Err(CodeRelayError::NoSuchCode)
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
    let offer = relay.join(typed.handle(), PHONE, HOME, None, now).unwrap();
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
