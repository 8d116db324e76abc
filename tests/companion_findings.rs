//! Regression tests for the companion-side findings of the protocol v2.1
//! review (issue 17): each failed before its fix.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use devicelink::{
    Account, CertificateError, Companion, DeviceIdentity, DeviceLabel, Directory, HandshakeError,
    LinkedSession, LogoutReason, Policy, SessionError, SessionStatus, SignedDeviceList, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::Value;

mod support;
use support::*;

/// Appends the account's list to `history` if it is a new version.
fn record(account: &Account, history: &mut Vec<SignedDeviceList>) {
    let list = account.device_list();
    if history.last().is_none_or(|l| l.version() < list.version()) {
        history.push(list.clone());
    }
}

/// [`link`], recording every list version it makes.
fn link_recorded(
    account: &mut Account,
    name: &str,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
    history: &mut Vec<SignedDeviceList>,
) -> LinkedSession {
    let mut p = start(account, name, rng, now);
    record(account, history);
    let grant = account.grant(&mut p.primary, rng, now).unwrap();
    record(account, history);
    p.companion.receive_grant(&grant, now).unwrap();
    let confirm = p.companion.consent(now).unwrap();
    account.confirm(&mut p.primary, &confirm, now).unwrap();
    record(account, history);
    p.companion.into_session().unwrap()
}

/// Rewrites a saved state's JSON line with `edit` and recomputes the
/// header's digest, as anyone who can write the saved bytes can.
fn reseal(saved: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let text = std::str::from_utf8(saved).unwrap();
    let (header, state) = text.trim_end().split_once('\n').unwrap();
    let mut header: Value = serde_json::from_str(header).unwrap();
    let mut state: Value = serde_json::from_str(state).unwrap();
    edit(&mut state);
    let state = serde_json::to_string(&state).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, state.as_bytes());
    header["sha256"] = Value::String(STANDARD.encode(digest.as_ref()));
    format!("{}\n{}", serde_json::to_string(&header).unwrap(), state).into_bytes()
}

/// Finding 1. A companion holding the genuine N+1 refused the restored
/// phone's N+1' and N+2' as forks, then accepted N+3' (more than one version
/// ahead, so unchecked): the revoked device X reappeared in its list, and
/// the genuine primary's next list was refused as stale.
#[test]
fn a_session_that_saw_a_fork_accepts_only_the_chained_successor() {
    let mut rng = rng(1);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let x = link(&mut account, "x", &mut rng, at(0));
    let mut laptop = link(&mut account, "laptop", &mut rng, at(SECOND));
    let backup = account.save().unwrap();
    // Genuine N+1: X revoked.
    account.revoke(x.index(), at(DAY)).unwrap();
    let genuine_n1 = account.device_list().clone();
    laptop.accept_device_list(&genuine_n1, at(DAY)).unwrap();
    assert_eq!(laptop.fork_seen(), None);

    // The restored phone signs N+1', N+2', N+3' (X still listed).
    let mut restored = Account::restore(&backup).unwrap();
    let mut rng2 = ChaCha20Rng::seed_from_u64(99);
    let mut forks: Vec<SignedDeviceList> = Vec::new();
    let n1 = genuine_n1.version();
    let mut n = 0;
    while forks.last().is_none_or(|l| l.version() < n1 + 2) {
        n += 1;
        let s = link_recorded(
            &mut restored,
            &format!("r{n}"),
            &mut rng2,
            at(DAY + n),
            &mut forks,
        );
        restored.revoke(s.index(), at(DAY + n)).unwrap();
        record(&restored, &mut forks);
    }
    let n3_fork = forks.last().unwrap().clone();
    assert!(n3_fork.contains(x.index(), &x.device_key()));

    // N+1' is a fork: refused and remembered.
    let n1_fork = forks.iter().find(|l| l.version() == n1).unwrap();
    assert!(matches!(
        laptop.accept_device_list(n1_fork, at(DAY + 100)),
        Err(SessionError::Certificate(CertificateError::Fork { .. }))
    ));
    assert_eq!(laptop.fork_seen(), Some(n1));
    // The mark survives a save and a restore.
    let mut laptop = LinkedSession::restore(&laptop.save().unwrap(), &Policy::default()).unwrap();
    assert_eq!(laptop.fork_seen(), Some(n1));

    // N+3' (two or more ahead) is now refused: the holder is told it missed
    // versions, not that it is a fork, and nothing changes.
    let before = laptop.device_list().clone();
    let r = laptop.accept_device_list(&n3_fork, at(DAY + 101));
    assert!(
        matches!(
            r,
            Err(SessionError::Certificate(CertificateError::MissingVersions { have, got }))
                if have == n1 && got == n3_fork.version()
        ),
        "{r:?}"
    );
    assert_eq!(laptop.device_list(), &before);
    assert!(!laptop.device_list().contains(x.index(), &x.device_key()));
    // The restored phone's heartbeat naming its fork does not extend the lease.
    let hb = restored.heartbeat(at(DAY + 102));
    let lease = laptop.expires_at();
    assert!(laptop.accept_heartbeat(&hb, at(DAY + 102)).is_err());
    assert_eq!(laptop.expires_at(), lease);

    // The genuine primary goes on; the laptop misses some versions, is told
    // so, fetches them and applies them in order.
    let mut genuine = vec![genuine_n1.clone()];
    let _phone = link_recorded(&mut account, "phone", &mut rng, at(2 * DAY), &mut genuine);
    let _tab = link_recorded(&mut account, "tab", &mut rng, at(2 * DAY + 1), &mut genuine);
    let newest = account.device_list().clone();
    assert!(newest.version() >= n1 + 2);
    assert!(matches!(
        laptop.accept_device_list(&newest, at(2 * DAY + 2)),
        Err(SessionError::Certificate(
            CertificateError::MissingVersions { .. }
        ))
    ));
    for list in genuine.iter().filter(|l| l.version() > n1) {
        laptop.accept_device_list(list, at(2 * DAY + 2)).unwrap();
    }
    assert_eq!(laptop.device_list().version(), newest.version());
    assert!(laptop.is_linked(at(2 * DAY + 2)));
}

/// Finding 5. A saved session carried its own policy and logout mark under
/// a plain digest: an edited save turned a revoked tab into a linked one
/// with a ten-year lease.
#[test]
fn an_edited_saved_session_cannot_undo_a_logout_or_lengthen_its_lease() {
    let mut rng = rng(5);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut tab = link(&mut account, "tab", &mut rng, at(0));
    account.revoke(tab.index(), at(SECOND)).unwrap();
    tab.accept_device_list(account.device_list(), at(SECOND))
        .unwrap();
    assert_eq!(
        tab.status(at(SECOND)),
        SessionStatus::LoggedOut {
            reason: LogoutReason::Revoked
        }
    );
    let saved = tab.save().unwrap();
    let edited = reseal(&saved, |state| {
        state["logged_out"] = Value::Null;
        state["offline_limit_ms"] = Value::from(10u64 * 365 * DAY);
        state["limits"] = serde_json::json!({"offline_limit_ms": 10u64 * 365 * DAY});
    });
    let back = LinkedSession::restore(&edited, &Policy::default()).unwrap();
    assert_eq!(
        back.status(at(2 * SECOND)),
        SessionStatus::LoggedOut {
            reason: LogoutReason::Revoked
        }
    );

    // A linked session's lease is the host policy's, whatever the save says.
    let other = link(&mut account, "other", &mut rng, at(2 * SECOND));
    let edited = reseal(&other.save().unwrap(), |state| {
        state["offline_limit_ms"] = Value::from(10u64 * 365 * DAY);
        state["last_primary_activity"] = Value::from(T0 + 300 * DAY);
    });
    let back = LinkedSession::restore(&edited, &Policy::default()).unwrap();
    assert_eq!(back.expires_at(), other.expires_at());
    assert!(!back.is_linked(at(2 * SECOND + 14 * DAY)));
    let saved_text = String::from_utf8(other.save().unwrap()).unwrap();
    assert!(!saved_text.contains("offline_limit"), "{saved_text}");
}

/// Finding 6. A heartbeat signed at or after the session's lease end, naming
/// a list the session lacks, left the session linked (`NeedDeviceList`)
/// until the list came, while the registry had already logged it out.
#[test]
fn a_heartbeat_signed_past_the_lease_logs_out_whatever_list_it_names() {
    let mut rng = rng(6);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut tab = link(&mut account, "tab", &mut rng, at(0));
    let lease = tab.expires_at();
    // The phone comes back after 15 days: the registry logs the tab out and
    // signs a heartbeat at its clock naming the list without it.
    let hb = account.heartbeat(at(15 * DAY));
    assert!(hb.list_version() > tab.device_list().version());
    assert!(hb.at() >= lease);
    // The tab's clock is behind (13 days): by its own clock it is linked.
    assert!(tab.is_linked(at(13 * DAY)));
    let r = tab.accept_heartbeat(&hb, at(13 * DAY));
    assert!(
        matches!(
            r,
            Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
        ),
        "{r:?}"
    );
    assert!(!tab.is_linked(at(13 * DAY)));
}

/// Every byte array in a JSON value: arrays of at least two integers in
/// 0..=255 (what serde makes of `Vec<u8>` and `[u8; N]` without base64),
/// but for lists of device indices (`live`).
fn byte_arrays(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            if items.len() >= 2
                && !path.ends_with(".live")
                && items.iter().all(|i| i.as_u64().is_some_and(|n| n <= 255))
            {
                out.push(path.to_owned());
            }
            for (i, item) in items.iter().enumerate() {
                byte_arrays(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                byte_arrays(item, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

fn assert_base64_only(kind: &str, saved: &[u8]) {
    let text = std::str::from_utf8(saved).unwrap();
    let state = text.trim_end().split_once('\n').unwrap().1;
    let value: Value = serde_json::from_str(state).unwrap();
    let mut found = Vec::new();
    byte_arrays(&value, kind, &mut found);
    assert!(found.is_empty(), "byte fields as integer arrays: {found:?}");
}

/// Finding 7. §8.1 says byte fields are standard base64, but the
/// companion's pending Request and the directory's list hashes were saved as
/// JSON arrays of integers.
#[test]
fn every_byte_field_of_every_saved_state_is_base64() {
    let mut rng = rng(7);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let session = link(&mut account, "laptop", &mut rng, at(0));
    let mut p = start(&mut account, "tablet", &mut rng, at(SECOND));
    assert_base64_only("companion", &p.companion.save().unwrap());
    assert_base64_only("primary", &p.primary.save().unwrap());
    let grant = account.grant(&mut p.primary, &mut rng, at(SECOND)).unwrap();
    assert_base64_only("primary", &p.primary.save().unwrap());
    p.companion.receive_grant(&grant, at(SECOND)).unwrap();
    let _ = p.companion.consent(at(SECOND)).unwrap();
    assert_base64_only("companion", &p.companion.save().unwrap());
    assert_base64_only("account", &account.save().unwrap());
    assert_base64_only("session", &session.save().unwrap());
    let mut dir = Directory::new(&policy);
    dir.apply_device_list(account.device_list(), at(SECOND))
        .unwrap();
    assert_base64_only("directory", &dir.save().unwrap());
}

/// Finding 2. Someone who photographs the page's QR code and races the phone
/// wins the token. The companion used to confirm as soon as the attacker's
/// Grant verified, with no gesture of its own user, and ended linked to the
/// attacker's account; the check code had two digits.
#[test]
fn a_photographed_qr_code_does_not_link_the_companion_without_its_user() {
    let mut rng = rng(2);
    let policy = Policy::default();
    let mut genuine = Account::generate(policy.clone(), &mut rng, at(0));
    let mut attacker = Account::generate(policy.clone(), &mut rng, at(0));
    let mut companion = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("Chromium on Linux").unwrap(),
        &policy,
        &mut rng,
        at(0),
    );
    let text = companion.offer().unwrap().to_text();

    // The attacker's phone scans the photograph first and wins.
    attacker.open_link_intent(at(0));
    let (mut primary, hello) = attacker.scan(&text, &mut rng, at(0)).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, at(1)).unwrap();
    let asking = attacker
        .receive_request(&mut primary, &request, &mut rng, at(2))
        .unwrap();
    let grant = attacker.grant(&mut primary, &mut rng, at(3)).unwrap();
    // The genuine phone's Hello now finds the offer redeemed.
    genuine.open_link_intent(at(1));
    let (_, late_hello) = genuine.scan(&text, &mut rng, at(1)).unwrap();
    assert!(companion
        .receive_hello(&late_hello, &mut rng, at(2))
        .is_err());

    // The Grant verifies, but nothing is sent: the companion's user sees the
    // account it would join and a six-digit code their phone does not show.
    let join = companion.receive_grant(&grant, at(4)).unwrap();
    assert_eq!(join.account, attacker.account_id());
    assert_ne!(join.account, genuine.account_id());
    let code = join.check_code.unwrap();
    assert_eq!(Some(code), asking.check_code);
    assert!(code.value() < 1_000_000 && code.to_string().len() == 7);
    assert!(join.prompt().contains(&attacker.account_id().fingerprint()));
    assert!(join.prompt().contains(&code.to_string()));
    assert!(
        companion.confirm_message().is_none(),
        "a Confirm before consent"
    );
    assert!(companion.session().is_none(), "linked before consent");
    assert!(matches!(
        companion.state(),
        devicelink::CompanionState::AwaitingConsent { .. }
    ));

    // The user declines: the pairing ends, nothing was confirmed, and the
    // attacker's slot times out.
    companion.decline(at(5)).unwrap();
    assert!(matches!(
        companion.state(),
        devicelink::CompanionState::Failed {
            reason: devicelink::FailureReason::Declined,
            ..
        }
    ));
    assert!(companion.consent(at(6)).is_err());
    attacker.poll(at(3 + 61 * SECOND));
    assert_eq!(attacker.companion_count(at(3 + 61 * SECOND)), 0);

    // Consent not given in time ends the pairing too.
    let mut slow = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("slow").unwrap(),
        &policy,
        &mut rng,
        at(0),
    );
    let mut p = {
        let text = slow.offer().unwrap().to_text();
        genuine.open_link_intent(at(0));
        let (mut p, hello) = genuine.scan(&text, &mut rng, at(0)).unwrap();
        let request = slow.receive_hello(&hello, &mut rng, at(0)).unwrap();
        genuine
            .receive_request(&mut p, &request, &mut rng, at(0))
            .unwrap();
        p
    };
    let grant = genuine.grant(&mut p, &mut rng, at(0)).unwrap();
    slow.receive_grant(&grant, at(0)).unwrap();
    let deadline = slow.next_deadline().unwrap();
    assert_eq!(
        deadline,
        at(0).saturating_add(policy.confirmation_timeout())
    );
    assert!(matches!(
        slow.consent(deadline),
        Err(HandshakeError::TimedOut { .. })
    ));
    assert!(matches!(
        slow.state(),
        devicelink::CompanionState::Failed {
            reason: devicelink::FailureReason::ConsentTimedOut,
            ..
        }
    ));
}

/// Finding 2 ("Link again"). A companion re-linking to the account it was
/// linked to refuses a Grant from any other account, before its user is
/// even asked.
#[test]
fn linking_again_expects_the_account_it_was_linked_to() {
    let mut rng = rng(22);
    let policy = Policy::default();
    let genuine = Account::generate(policy.clone(), &mut rng, at(0));
    let mut attacker = Account::generate(policy.clone(), &mut rng, at(0));
    let mut companion = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("again").unwrap(),
        &policy,
        &mut rng,
        at(0),
    )
    .expect_account(genuine.account_id());
    let text = companion.offer().unwrap().to_text();
    attacker.open_link_intent(at(0));
    let (mut primary, hello) = attacker.scan(&text, &mut rng, at(0)).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, at(1)).unwrap();
    attacker
        .receive_request(&mut primary, &request, &mut rng, at(2))
        .unwrap();
    let grant = attacker.grant(&mut primary, &mut rng, at(3)).unwrap();
    let before = companion.save().unwrap();
    assert_eq!(
        companion.receive_grant(&grant, at(4)),
        Err(HandshakeError::Certificate(CertificateError::WrongAccount))
    );
    assert_eq!(companion.save().unwrap(), before, "state unchanged");
}

/// A companion saved with its session (waiting for consent, or linked) and
/// restored keeps the lease its policy gives: the session's limits are not
/// in the saved state, the companion's policy supplies them.
#[test]
fn a_restored_companion_keeps_its_sessions_lease() {
    let mut rng = rng(31);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut p = start(&mut account, "tab", &mut rng, at(0));
    let grant = account.grant(&mut p.primary, &mut rng, at(0)).unwrap();
    p.companion.receive_grant(&grant, at(0)).unwrap();
    let waiting = Companion::restore(&p.companion.save().unwrap()).unwrap();
    let mut waiting = waiting;
    waiting.consent(at(1)).unwrap();
    p.companion.consent(at(1)).unwrap();
    let linked = Companion::restore(&p.companion.save().unwrap()).unwrap();
    for c in [waiting, linked] {
        let s = c.session().unwrap();
        assert_eq!(s.expires_at(), p.companion.session().unwrap().expires_at());
        assert!(s.is_linked(at(2)));
        assert_eq!(c.save().unwrap(), p.companion.save().unwrap());
    }
}

/// A saved phone-side handshake whose check code was edited (another code,
/// or one of seven digits) does not restore: the code is recomputed from the
/// saved Request and nonce.
#[test]
fn an_edited_check_code_in_a_saved_handshake_is_refused() {
    let mut rng = rng(41);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let p = start(&mut account, "tab", &mut rng, at(0));
    let saved = p.primary.save().unwrap();
    let code = p.primary.check_code().unwrap().value();
    assert!(devicelink::PrimaryHandshake::restore(&saved).is_ok());
    for edited in [(code + 1) % 1_000_000, 1_000_000, u32::MAX] {
        let bytes = reseal(&saved, |state| {
            state["check_code"] = Value::from(edited);
        });
        assert!(
            devicelink::PrimaryHandshake::restore(&bytes).is_err(),
            "{edited} restored"
        );
    }
}

/// Finding 4, the core's side. A device whose key the host's key store
/// holds (WebCrypto's non-extractable `CryptoKey`, Android Keystore, the
/// Secure Enclave) links with signatures the store makes: the core asks for
/// them, checks them, and no state it saves holds the secret.
#[test]
fn a_key_store_device_links_with_its_own_signatures_and_saves_no_secret() {
    use ed25519_dalek::Signer;
    let mut rng = rng(17);
    let now = at(0);
    let store = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let public = devicelink::DeviceKey::from_bytes(store.verifying_key().to_bytes());
    let secret_b64 = STANDARD.encode([7u8; 32]);
    let mut account = Account::generate(Policy::default(), &mut rng, now);
    let policy = account.policy().clone();
    let mut companion = Companion::new(
        public,
        DeviceLabel::new("tab").unwrap(),
        &policy,
        &mut rng,
        now,
    );
    assert!(companion.signer().identity().is_none());
    let text = companion.offer().unwrap().to_text();
    account.open_link_intent(now);
    let (mut primary, hello) = account.scan(&text, &mut rng, now).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
    account
        .receive_request(&mut primary, &request, &mut rng, now)
        .unwrap();
    let grant = account.grant(&mut primary, &mut rng, now).unwrap();
    companion.receive_grant(&grant, now).unwrap();

    // The core cannot sign: it says so, and nothing changes.
    assert!(matches!(
        companion.consent(now),
        Err(HandshakeError::SignatureNeeded)
    ));
    let message = companion.confirm_to_sign().unwrap();
    assert!(message.starts_with(b"devicelink/v2 confirm"));
    // Saved while waiting: the public key only, and it comes back.
    let saved = companion.save().unwrap();
    let saved_text = String::from_utf8(saved.clone()).unwrap();
    assert!(saved_text.contains("\"key_store\":") && !saved_text.contains("\"identity\":"));
    assert!(!saved_text.contains(&secret_b64));
    let mut companion = Companion::restore(&saved).unwrap();
    assert_eq!(companion.confirm_to_sign(), Some(message.clone()));

    // Another key's signature is refused and changes nothing.
    let forged = stranger.sign(&message).to_bytes();
    assert!(matches!(
        companion.consent_signed(&forged, now),
        Err(HandshakeError::BadSignature { .. })
    ));
    assert_eq!(companion.confirm_to_sign(), Some(message.clone()));
    let confirm = companion
        .consent_signed(&store.sign(&message).to_bytes(), now)
        .unwrap();
    account.confirm(&mut primary, &confirm, now).unwrap();
    let session = companion.into_session().unwrap();
    assert_eq!(session.device_key(), public);
    assert!(session.identity().is_none());

    // The relay subscription: the store signs, the core checks.
    let client = devicelink::relay::ClientId::from_bytes([3; 16]);
    assert!(devicelink::relay::SubscriptionProof::sign(&session, client).is_none());
    let to_sign = devicelink::relay::SubscriptionProof::to_sign(&session, client);
    assert!(devicelink::relay::SubscriptionProof::from_signature(
        &session,
        client,
        stranger.sign(&to_sign).to_bytes()
    )
    .is_err());
    let proof = devicelink::relay::SubscriptionProof::from_signature(
        &session,
        client,
        store.sign(&to_sign).to_bytes(),
    )
    .unwrap();
    assert_eq!(
        proof.verify(&public, &session.account(), session.index(), client),
        Ok(())
    );

    // The saved session: the public key only; restored, still linked.
    let saved = session.save().unwrap();
    let saved_text = String::from_utf8(saved.clone()).unwrap();
    assert!(saved_text.contains("\"key_store\":") && !saved_text.contains("\"identity\":"));
    assert!(!saved_text.contains(&secret_b64));
    let restored = LinkedSession::restore(&saved, &Policy::default()).unwrap();
    assert_eq!(restored.device_key(), public);
    assert!(matches!(
        restored.status(at(SECOND)),
        SessionStatus::Linked { .. }
    ));
}

/// A saved state must say who holds its key exactly once.
#[test]
fn a_saved_session_with_no_key_or_two_is_refused() {
    let mut rng = rng(18);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let session = link(&mut account, "tab", &mut rng, at(0));
    let saved = session.save().unwrap();
    let public = serde_json::to_value(session.device_key()).unwrap();
    let none = reseal(&saved, |v| {
        v.as_object_mut().unwrap().remove("identity");
    });
    let both = reseal(&saved, |v| {
        v["key_store"] = public.clone();
    });
    let swapped = reseal(&saved, |v| {
        v.as_object_mut().unwrap().remove("identity");
        v["key_store"] = public.clone();
    });
    assert!(LinkedSession::restore(&none, &Policy::default()).is_err());
    assert!(LinkedSession::restore(&both, &Policy::default()).is_err());
    // The public key alone is a key-store session of the same device.
    let swapped = LinkedSession::restore(&swapped, &Policy::default()).unwrap();
    assert_eq!(swapped.device_key(), session.device_key());
    assert!(swapped.identity().is_none());
}
