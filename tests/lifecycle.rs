//! Lifecycle scenarios through the public API, each with real key exchanges:
//! the four-companion limit, revocation, the 14-day primary-offline expiry and
//! heartbeats, the expiry warning, pending-slot timeouts, the idle rule, a
//! clock that goes backwards, and save/restore of every host-held state.
//! Protocol v2 findings each have their own test below: the link intent,
//! the authenticated refusal of a full account and re-pairing into one's own
//! slot, handshakes of another account, backdated heartbeats, heartbeats
//! bound to the device list, and forks from a restored old phone.
//!
//! Deterministic: seeded RNGs and a virtual clock; no timing assertions.

mod wire;
use wire::FromWire;

use std::time::Duration;

use devicelink::handshake::{CompanionEvent, FailureReason, PrimaryState};
use devicelink::offer::OfferState;
use devicelink::persist::PersistError;
use devicelink::registry::RegistryEvent;
use devicelink::session::SessionError;
use devicelink::{
    Account, CertificateError, Companion, CompanionState, DeviceIdentity, DeviceIndex, DeviceLabel,
    DeviceState, Directory, DirectoryError, HandshakeError, LinkedSession, LogoutReason,
    OfferDisplay, Policy, PrimaryHandshake, PrimaryHeartbeat, RefusalReason, RegistryError,
    SessionStatus, SignedDeviceList, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const T0: u64 = 1_700_000_000_000;
const SECOND: u64 = 1_000;
const DAY: u64 = 86_400_000;
const OFFLINE: u64 = 14 * DAY;

/// `T0 + ms` on the virtual clock.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

fn plus(t: Timestamp, d: u64) -> Timestamp {
    t.saturating_add(Duration::from_millis(d))
}

fn minus(t: Timestamp, d: u64) -> Timestamp {
    t.saturating_sub(Duration::from_millis(d))
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn label(name: &str) -> DeviceLabel {
    DeviceLabel::new(name).unwrap()
}

/// A pairing in which the primary has received the companion's Request and
/// the user is about to approve it.
struct Pairing {
    companion: Companion,
    primary: PrimaryHandshake,
}

fn new_companion(
    identity: DeviceIdentity,
    name: &str,
    policy: &Policy,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> Companion {
    Companion::new(identity, label(name), policy, rng, now)
}

/// Link intent, scan, Hello, Request: everything up to the user's approval.
/// A refusal by the registry ([`RegistryError::Refused`]) is delivered to the
/// companion, which must see the same reason, authenticated.
fn start_with(
    account: &mut Account,
    mut companion: Companion,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> Result<Pairing, RegistryError> {
    let text = companion.offer().expect("offer on screen").to_text();
    account.open_link_intent(now);
    let (mut primary, hello) = account.scan(&text, rng, now)?;
    let request = companion.receive_hello(&hello, rng, now).unwrap();
    match account.receive_request(&mut primary, &request, rng, now) {
        Ok(asking) => {
            assert!(asking.check_code.is_some(), "a QR link has a check code");
            Ok(Pairing { companion, primary })
        }
        Err(RegistryError::Refused { reason, refusal }) => {
            assert_eq!(primary.state(), PrimaryState::Refused { reason });
            assert_eq!(
                companion.receive_grant(&refusal, now),
                Err(HandshakeError::Refused(reason))
            );
            assert!(companion.session().is_none());
            Err(RegistryError::Refused { reason, refusal })
        }
        Err(e) => panic!("request refused: {e:?}"),
    }
}

/// Whether `e` is the registry's authenticated refusal of a full account.
fn is_full_refusal(e: &RegistryError, limit: u32) -> bool {
    matches!(
        e,
        RegistryError::Refused {
            reason: RefusalReason::DeviceLimitReached { limit: l },
            refusal,
        } if *l == limit && !refusal.is_empty()
    )
}

fn start(
    account: &mut Account,
    name: &str,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> Result<Pairing, RegistryError> {
    let policy = account.policy().clone();
    let identity = DeviceIdentity::generate(rng);
    let companion = new_companion(identity, name, &policy, rng, now);
    start_with(account, companion, rng, now)
}

/// Grant and confirm an approved pairing; returns the companion's session.
fn finish(
    account: &mut Account,
    mut p: Pairing,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> LinkedSession {
    let grant = account.grant(&mut p.primary, rng, now).unwrap();
    p.companion.receive_grant(&grant, now).unwrap();
    let confirm = p.companion.consent(now).unwrap();
    let link = account.confirm(&mut p.primary, &confirm, now).unwrap();
    let session = p.companion.into_session().expect("linked");
    assert_eq!(session.index(), link.certificate.index());
    assert_eq!(session.account(), account.account_id());
    session
}

fn link(account: &mut Account, name: &str, rng: &mut ChaCha20Rng, now: Timestamp) -> LinkedSession {
    let p = start(account, name, rng, now).unwrap();
    finish(account, p, rng, now)
}

/// Hands the account's current signed device list to every session that does
/// not have it yet.
fn broadcast_list(account: &Account, sessions: &mut [LinkedSession], now: Timestamp) {
    let bytes = account.device_list().to_bytes();
    for s in sessions.iter_mut() {
        if s.device_list().version() < account.device_list().version() {
            s.device_list_bytes(&bytes, now).unwrap();
        }
    }
}

/// The state at `now` of every device the account ever had, by index.
fn states(account: &Account, now: Timestamp) -> Vec<Option<DeviceState>> {
    (1..account.next_index().0)
        .map(|i| account.device_state(DeviceIndex(i), now))
        .collect()
}

fn logged_out(reason: LogoutReason, at: Timestamp) -> Option<DeviceState> {
    Some(DeviceState::LoggedOut { reason, at })
}

// ---------------------------------------------------------------------------
// The four-companion limit and revocation
// ---------------------------------------------------------------------------

#[test]
fn fifth_companion_is_refused_until_one_is_revoked() {
    let mut rng = rng(1);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));

    let mut sessions: Vec<LinkedSession> = (0..4u64)
        .map(|i| {
            link(
                &mut account,
                &format!("companion {i}"),
                &mut rng,
                at(i * SECOND),
            )
        })
        .collect();
    let indices: Vec<u32> = sessions.iter().map(|s| s.index().0).collect();
    assert_eq!(indices, vec![1, 2, 3, 4]);
    let now = at(10 * SECOND);
    assert_eq!(account.companion_count(now), 4);
    broadcast_list(&account, &mut sessions, now);

    // v2: the scan no longer refuses (the device's key is not known yet).
    // The fifth is refused at its Request, with exactly the limit, by an
    // authenticated Refusal the companion shows (checked in `start_with`);
    // nothing changes but the recorded refusal.
    let fifth_id = DeviceIdentity::generate(&mut rng);
    let fifth = new_companion(fifth_id.clone(), "fifth", &policy, &mut rng, now);
    account.poll(now);
    account.take_events();
    let before = account.save().unwrap();
    let err = start_with(&mut account, fifth, &mut rng, now)
        .err()
        .expect("refused");
    assert!(is_full_refusal(&err, 4), "{err:?}");
    assert!(err.is_terminal());
    assert_eq!(
        account.take_events(),
        vec![RegistryEvent::Refused {
            reason: RefusalReason::DeviceLimitReached { limit: 4 },
            at: now
        }]
    );
    assert_eq!(account.save().unwrap(), before);
    assert_eq!(account.next_index(), DeviceIndex(5));

    // Revoke #2: nobody else is disturbed.
    let states_before = states(&account, now);
    let list_version = account.device_list().version();
    account.revoke(DeviceIndex(2), now).unwrap();
    let states_after = states(&account, now);
    for (i, (b, a)) in states_before.iter().zip(&states_after).enumerate() {
        if i == 1 {
            assert_eq!(*a, logged_out(LogoutReason::Revoked, now));
        } else {
            assert_eq!(a, b, "device #{} disturbed by revoking #2", i + 1);
            assert!(matches!(a, Some(DeviceState::Active { .. })));
        }
    }
    assert_eq!(account.companion_count(now), 3);
    assert!(account.device_list().version() > list_version);
    assert!(!account
        .device_list()
        .contains(DeviceIndex(2), &sessions[1].device_key()));

    // Every session accepts the new list: the revoked one is logged out.
    let list = account.device_list().to_bytes();
    for s in &mut sessions {
        let status = s.device_list_bytes(&list, now).unwrap().status;
        if s.index() == DeviceIndex(2) {
            assert_eq!(
                status,
                SessionStatus::LoggedOut {
                    reason: LogoutReason::Revoked
                }
            );
            assert!(!s.is_linked(now));
        } else {
            assert!(matches!(status, SessionStatus::Linked { .. }), "{status:?}");
            assert!(s.is_linked(now));
            assert_eq!(s.device_list().version(), account.device_list().version());
        }
    }
    // Revoking again is refused with the reason.
    assert_eq!(
        account.revoke(DeviceIndex(2), now),
        Err(RegistryError::AlreadyLoggedOut {
            index: DeviceIndex(2),
            reason: LogoutReason::Revoked
        })
    );
    assert_eq!(
        account.revoke(DeviceIndex(9), now),
        Err(RegistryError::UnknownDevice(DeviceIndex(9)))
    );

    // Now the same fifth device links (a new offer: its refused handshake is
    // over), with index 5: #2 is never reused.
    let fifth = new_companion(fifth_id, "fifth", &policy, &mut rng, now);
    let p = start_with(&mut account, fifth, &mut rng, now).unwrap();
    let fifth_session = finish(&mut account, p, &mut rng, now);
    assert_eq!(fifth_session.index(), DeviceIndex(5));
    assert_eq!(account.companion_count(now), 4);
    assert_eq!(account.next_index(), DeviceIndex(6));
    assert_eq!(
        account.device_state(DeviceIndex(2), now),
        logged_out(LogoutReason::Revoked, now)
    );
    // The others accept the list naming the fifth and stay linked.
    let list = account.device_list().to_bytes();
    for s in sessions.iter_mut().filter(|s| s.index() != DeviceIndex(2)) {
        assert!(matches!(
            s.device_list_bytes(&list, now).map(|c| c.status),
            Ok(SessionStatus::Linked { .. })
        ));
        assert!(s
            .device_list()
            .contains(DeviceIndex(5), &fifth_session.device_key()));
    }
    // And a sixth is refused again.
    let err = start(&mut account, "sixth", &mut rng, now)
        .err()
        .expect("refused");
    assert!(is_full_refusal(&err, 4), "{err:?}");
}

#[test]
fn limit_also_holds_at_grant_when_a_slot_was_taken_after_the_scan() {
    let mut rng = rng(2);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    for i in 0..3 {
        link(&mut account, &format!("c{i}"), &mut rng, at(i * SECOND));
    }
    let now = at(5 * SECOND);
    assert_eq!(account.companion_count(now), 3);

    // Two companions are scanned while one slot is free.
    let mut a = start(&mut account, "A", &mut rng, now).unwrap();
    let mut b = start(&mut account, "B", &mut rng, now).unwrap();

    let grant_a = account.grant(&mut a.primary, &mut rng, now).unwrap();
    assert_eq!(account.companion_count(now), 4);

    let before = account.save().unwrap();
    assert_eq!(
        account.grant(&mut b.primary, &mut rng, now),
        Err(RegistryError::DeviceLimitReached { limit: 4 })
    );
    // Nothing changed: not the registry, not B's handshake.
    assert_eq!(account.save().unwrap(), before);
    assert_eq!(b.primary.state(), PrimaryState::RequestReceived);
    assert_eq!(account.next_index(), DeviceIndex(5));

    // The primary tells B why.
    let refusal = account
        .refuse(
            &mut b.primary,
            RefusalReason::DeviceLimitReached { limit: 4 },
            &mut rng,
            now,
        )
        .unwrap();
    assert_eq!(
        b.primary.state(),
        PrimaryState::Refused {
            reason: RefusalReason::DeviceLimitReached { limit: 4 }
        }
    );
    let err = b.companion.receive_grant(&refusal, now).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Refused(RefusalReason::DeviceLimitReached { limit: 4 })
    );
    assert!(err.is_terminal());
    assert_eq!(
        b.companion.state(),
        CompanionState::Failed {
            reason: FailureReason::Refused(RefusalReason::DeviceLimitReached { limit: 4 }),
            at: now,
        }
    );
    assert!(b.companion.session().is_none());
    // A refused handshake cannot be granted afterwards.
    assert!(account.grant(&mut b.primary, &mut rng, now).is_err());

    // A completes normally.
    a.companion.receive_grant(&grant_a, now).unwrap();
    let confirm = a.companion.consent(now).unwrap();
    let link = account.confirm(&mut a.primary, &confirm, now).unwrap();
    assert_eq!(link.certificate.index(), DeviceIndex(4));
    assert_eq!(
        account.device_state(DeviceIndex(4), now),
        Some(DeviceState::Active { since: now })
    );
    assert_eq!(account.companion_count(now), 4);
}

// ---------------------------------------------------------------------------
// The 14-day primary-offline expiry
// ---------------------------------------------------------------------------

#[test]
fn primary_silent_for_14_days_logs_every_companion_out() {
    let mut rng = rng(3);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let mut sessions: Vec<LinkedSession> = (0..4u64)
        .map(|i| link(&mut account, &format!("c{i}"), &mut rng, at(i * 7 * SECOND)))
        .collect();
    let linked_at = at(30 * SECOND);
    broadcast_list(&account, &mut sessions, linked_at);

    let last = account.last_primary_activity();
    assert_eq!(last, at(21 * SECOND));
    let deadline = plus(last, OFFLINE);
    assert_eq!(account.primary_deadline(), deadline);
    assert_eq!(account.next_deadline(), Some(deadline));
    for s in &sessions {
        assert_eq!(s.last_primary_activity(), last);
        assert_eq!(s.expires_at(), deadline);
    }

    // 14 days minus 1 ms: everyone linked on both sides.
    let just_before = minus(deadline, 1);
    assert_eq!(account.companion_count(just_before), 4);
    for s in &sessions {
        assert!(matches!(
            account.device_state(s.index(), just_before),
            Some(DeviceState::Active { .. })
        ));
        assert!(!matches!(
            s.status(just_before),
            SessionStatus::LoggedOut { .. }
        ));
        assert!(s.is_linked(just_before));
    }

    // Exactly 14 days: everyone logged out, at the deadline, on both sides.
    assert_eq!(account.companion_count(deadline), 0);
    for s in &sessions {
        assert_eq!(
            account.device_state(s.index(), deadline),
            logged_out(LogoutReason::PrimaryOffline, deadline)
        );
        assert_eq!(
            s.status(deadline),
            SessionStatus::LoggedOut {
                reason: LogoutReason::PrimaryOffline
            }
        );
        assert_eq!(s.expires_at(), deadline);
    }
    // Settling changes no answer.
    let pure = states(&account, deadline);
    account.poll(deadline);
    assert_eq!(states(&account, deadline), pure);
    for s in &mut sessions {
        assert_eq!(
            s.poll(deadline),
            SessionStatus::LoggedOut {
                reason: LogoutReason::PrimaryOffline
            }
        );
    }

    // A heartbeat after the deadline revives nobody.
    let later = plus(deadline, 3_600_000);
    let hb = account.heartbeat(later);
    assert_eq!(hb.at(), later);
    for s in &mut sessions {
        assert_eq!(
            account.device_state(s.index(), later),
            logged_out(LogoutReason::PrimaryOffline, deadline)
        );
        assert_eq!(
            account.device(s.index()).unwrap().state,
            DeviceState::LoggedOut {
                reason: LogoutReason::PrimaryOffline,
                at: deadline
            }
        );
        // v2: a logged-out session says so first, whatever list the
        // heartbeat names; one naming the session's own list meets the
        // logout too.
        assert_eq!(
            s.accept_heartbeat(&hb, later),
            Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
        );
        assert_eq!(
            s.accept_device_list(account.device_list(), later),
            Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
        );
        let own = PrimaryHeartbeat::sign(
            account.key(),
            s.device_list(),
            account.audit_anchor(),
            later,
        );
        assert_eq!(
            s.accept_heartbeat(&own, later),
            Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
        );
        assert!(!s.is_linked(later));
    }
    assert_eq!(account.companion_count(later), 0);

    // Re-pair (the same devices, new links): new indices, and all four fit.
    let identities: Vec<DeviceIdentity> = sessions
        .iter()
        .map(|s| s.identity().unwrap().clone())
        .collect();
    let mut fresh = Vec::new();
    for (i, id) in identities.into_iter().enumerate() {
        let c = new_companion(id, &format!("again {i}"), &policy, &mut rng, later);
        let p = start_with(&mut account, c, &mut rng, later).unwrap();
        fresh.push(finish(&mut account, p, &mut rng, later));
    }
    let new_indices: Vec<u32> = fresh.iter().map(|s| s.index().0).collect();
    assert_eq!(new_indices, vec![5, 6, 7, 8]);
    assert_eq!(account.companion_count(later), 4);
    for s in &fresh {
        assert!(s.is_linked(later));
        assert_eq!(s.expires_at(), plus(later, OFFLINE));
    }
    for i in 1..=4 {
        assert_eq!(
            account.device_state(DeviceIndex(i), later),
            logged_out(LogoutReason::PrimaryOffline, deadline)
        );
    }
}

#[test]
fn heartbeat_at_day_10_extends_the_lease_to_day_24() {
    let mut rng = rng(4);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut sessions: Vec<LinkedSession> = (0..3)
        .map(|i| link(&mut account, &format!("c{i}"), &mut rng, at(0)))
        .collect();
    broadcast_list(&account, &mut sessions, at(0));
    assert_eq!(account.primary_deadline(), at(OFFLINE));

    let hb_time = at(10 * DAY);
    let hb = account.heartbeat(hb_time);
    assert_eq!(hb.at(), hb_time);
    assert_eq!(hb.account(), account.account_id());
    let bytes = hb.to_bytes();
    assert_eq!(PrimaryHeartbeat::from_bytes(&bytes).unwrap(), hb);
    let new_deadline = at(24 * DAY);
    assert_eq!(account.primary_deadline(), new_deadline);
    assert_eq!(account.next_deadline(), Some(new_deadline));
    for s in &mut sessions {
        assert_eq!(
            s.heartbeat_bytes(&bytes, hb_time),
            Ok(SessionStatus::Linked {
                expires_at: new_deadline
            })
        );
        assert_eq!(s.expires_at(), new_deadline);
    }

    for t in [at(OFFLINE), at(OFFLINE + 1), minus(new_deadline, 1)] {
        assert_eq!(account.companion_count(t), 3, "at {t}");
        for s in &sessions {
            assert!(matches!(
                account.device_state(s.index(), t),
                Some(DeviceState::Active { .. })
            ));
            assert!(s.is_linked(t), "session {} at {t}", s.index());
        }
    }
    assert_eq!(account.companion_count(new_deadline), 0);
    for s in &sessions {
        assert_eq!(
            account.device_state(s.index(), new_deadline),
            logged_out(LogoutReason::PrimaryOffline, new_deadline)
        );
        assert_eq!(
            s.status(new_deadline),
            SessionStatus::LoggedOut {
                reason: LogoutReason::PrimaryOffline
            }
        );
    }

    // A forged or foreign heartbeat changes nothing.
    let mut other_rng = self::rng(40);
    let other = Account::generate(Policy::default(), &mut other_rng, at(0));
    let foreign = PrimaryHeartbeat::sign(
        other.key(),
        other.device_list(),
        other.audit_anchor(),
        at(20 * DAY),
    )
    .to_bytes();
    let mut tampered = bytes.clone();
    tampered[40] ^= 1;
    for s in &mut sessions {
        let before = s.save().unwrap();
        assert!(s.heartbeat_bytes(&foreign, at(20 * DAY)).is_err());
        assert!(s.heartbeat_bytes(&tampered, at(20 * DAY)).is_err());
        assert!(s.heartbeat_bytes(&bytes[..50], at(20 * DAY)).is_err());
        assert_eq!(s.save().unwrap(), before);
    }
}

#[test]
fn expiry_warning_starts_exactly_warn_before_the_logout() {
    for (seed, policy) in [
        (5, Policy::default()),
        (
            6,
            Policy::builder()
                .warn_before(Duration::from_millis(DAY + 123))
                .build()
                .unwrap(),
        ),
    ] {
        let warn_before = u64::try_from(policy.warn_before().as_millis()).unwrap();
        let mut rng = rng(seed);
        let mut account = Account::generate(policy.clone(), &mut rng, at(0));
        let mut s = link(&mut account, "c", &mut rng, at(1_234));
        let expires = at(1_234 + OFFLINE);
        let warn = minus(expires, warn_before);
        assert_eq!(s.expires_at(), expires);
        assert_eq!(s.warn_at(), warn);
        if seed == 5 {
            assert_eq!(warn, at(1_234 + 12 * DAY));
        }

        assert_eq!(
            s.status(minus(warn, 1)),
            SessionStatus::Linked {
                expires_at: expires
            }
        );
        assert_eq!(
            s.status(warn),
            SessionStatus::ExpiringSoon {
                expires_at: expires
            }
        );
        assert_eq!(
            s.status(plus(warn, 1)),
            SessionStatus::ExpiringSoon {
                expires_at: expires
            }
        );
        assert_eq!(
            s.status(minus(expires, 1)),
            SessionStatus::ExpiringSoon {
                expires_at: expires
            }
        );
        assert_eq!(
            s.status(expires),
            SessionStatus::LoggedOut {
                reason: LogoutReason::PrimaryOffline
            }
        );
        // `next_deadline` as of the last poll: the warning, then the logout.
        let mut probe = s.clone();
        assert_eq!(probe.next_deadline(), Some(warn));
        probe.poll(minus(warn, 1));
        assert_eq!(probe.next_deadline(), Some(warn));
        probe.poll(warn);
        assert_eq!(probe.next_deadline(), Some(expires));
        probe.poll(expires);
        assert_eq!(probe.next_deadline(), None);
        // While expiring soon, still linked.
        assert!(s.is_linked(minus(expires, 1)));

        // A heartbeat during the warning moves both instants.
        let hb_time = plus(warn, 10);
        let hb = account.heartbeat(hb_time).to_bytes();
        let status = s.heartbeat_bytes(&hb, hb_time).unwrap();
        let new_expires = plus(hb_time, OFFLINE);
        assert_eq!(
            status,
            SessionStatus::Linked {
                expires_at: new_expires
            }
        );
        assert_eq!(s.warn_at(), minus(new_expires, warn_before));
        assert_eq!(
            s.status(minus(s.warn_at(), 1)),
            SessionStatus::Linked {
                expires_at: new_expires
            }
        );
        assert_eq!(
            s.status(s.warn_at()),
            SessionStatus::ExpiringSoon {
                expires_at: new_expires
            }
        );
    }
}

// ---------------------------------------------------------------------------
// Pending slots, idle companions, clocks
// ---------------------------------------------------------------------------

#[test]
fn unconfirmed_pending_slot_times_out_and_frees_its_slot() {
    let mut rng = rng(7);
    let policy = Policy::default();
    let timeout = 60 * SECOND;
    assert_eq!(
        policy.confirmation_timeout(),
        Duration::from_millis(timeout)
    );
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    for i in 0..3 {
        link(&mut account, &format!("c{i}"), &mut rng, at(i * SECOND));
    }

    let t_grant = at(10 * SECOND);
    let mut p = start(&mut account, "slow", &mut rng, at(9 * SECOND)).unwrap();
    let grant = account.grant(&mut p.primary, &mut rng, t_grant).unwrap();
    // The companion answers in time, but the Confirm never reaches the account.
    p.companion.receive_grant(&grant, t_grant).unwrap();
    let confirm = p.companion.consent(t_grant).unwrap();
    assert_eq!(p.companion.state(), CompanionState::Linked);

    let deadline = plus(t_grant, timeout);
    let idx = DeviceIndex(4);
    assert_eq!(account.next_deadline(), Some(deadline));
    assert_eq!(
        account.device_state(idx, minus(deadline, 1)),
        Some(DeviceState::Pending {
            since: t_grant,
            deadline
        })
    );
    assert_eq!(account.companion_count(minus(deadline, 1)), 4);
    let err = start(&mut account, "fifth", &mut rng, minus(deadline, 1))
        .err()
        .expect("refused");
    assert!(is_full_refusal(&err, 4), "{err:?}");

    assert_eq!(
        account.device_state(idx, deadline),
        logged_out(LogoutReason::ConfirmationTimedOut, deadline)
    );
    assert_eq!(account.companion_count(deadline), 3);

    // The late Confirm is refused and changes nothing.
    let before = states(&account, deadline);
    let err = account
        .confirm(&mut p.primary, &confirm, deadline)
        .unwrap_err();
    assert_eq!(err, RegistryError::ConfirmationTimedOut);
    assert!(err.is_terminal());
    assert_eq!(states(&account, deadline), before);
    assert_eq!(account.companion_count(deadline), 3);

    // The slot is free again: a new companion links, with a new index.
    let s = link(&mut account, "fifth", &mut rng, deadline);
    assert_eq!(s.index(), DeviceIndex(5));
    assert_eq!(account.companion_count(deadline), 4);
    // Even later, the late Confirm still gets the same answer.
    assert_eq!(
        account.confirm(&mut p.primary, &confirm, plus(deadline, DAY)),
        Err(RegistryError::ConfirmationTimedOut)
    );
    assert_eq!(
        account.device_state(idx, plus(deadline, DAY)),
        logged_out(LogoutReason::ConfirmationTimedOut, deadline)
    );
}

#[test]
fn confirm_one_millisecond_before_the_pending_deadline_links() {
    let mut rng = rng(8);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut p = start(&mut account, "c", &mut rng, at(0)).unwrap();
    let grant = account.grant(&mut p.primary, &mut rng, at(0)).unwrap();
    p.companion.receive_grant(&grant, at(0)).unwrap();
    let confirm = p.companion.consent(at(0)).unwrap();
    let t = at(60 * SECOND - 1);
    let link = account.confirm(&mut p.primary, &confirm, t).unwrap();
    assert_eq!(link.certificate.index(), DeviceIndex(1));
    assert_eq!(
        account.device_state(DeviceIndex(1), at(60 * SECOND)),
        Some(DeviceState::Active { since: t })
    );
    assert_eq!(account.next_deadline(), Some(at(OFFLINE)));
}

#[test]
fn idle_companion_is_logged_out_under_the_idle_policy() {
    let idle = 7 * DAY;
    let policy = Policy::builder()
        .companion_idle_limit(Some(Duration::from_millis(idle)))
        .build()
        .unwrap();
    let mut rng = rng(9);
    let mut account = Account::generate(policy, &mut rng, at(0));
    let a = link(&mut account, "A", &mut rng, at(0)).index();
    let b = link(&mut account, "B", &mut rng, at(0)).index();

    // The primary is active; that does not keep an idle companion. (In
    // time order: v2's registry clock never runs backwards, so a sighting
    // reported at day 5 after a day-6 heartbeat would count at day 6.)
    account.companion_seen(a, at(5 * DAY)).unwrap();
    account.heartbeat(at(6 * DAY));
    assert_eq!(account.device(a).unwrap().last_seen, at(5 * DAY));
    assert_eq!(account.next_deadline(), Some(at(idle)));

    assert!(matches!(
        account.device_state(b, at(idle - 1)),
        Some(DeviceState::Active { .. })
    ));
    assert_eq!(
        account.device_state(b, at(idle)),
        logged_out(LogoutReason::CompanionIdle, at(idle))
    );
    assert!(matches!(
        account.device_state(a, at(idle)),
        Some(DeviceState::Active { .. })
    ));
    assert_eq!(account.companion_count(at(idle)), 1);

    // Seeing B after its logout does not bring it back.
    assert_eq!(
        account.companion_seen(b, at(8 * DAY)),
        Err(RegistryError::AlreadyLoggedOut {
            index: b,
            reason: LogoutReason::CompanionIdle
        })
    );
    assert_eq!(
        account.device_state(b, at(8 * DAY)),
        logged_out(LogoutReason::CompanionIdle, at(idle))
    );

    // A was seen at day 5: logged out at day 12, unless seen again.
    let a_deadline = at(5 * DAY + idle);
    assert!(matches!(
        account.device_state(a, minus(a_deadline, 1)),
        Some(DeviceState::Active { .. })
    ));
    assert_eq!(
        account.device_state(a, a_deadline),
        logged_out(LogoutReason::CompanionIdle, a_deadline)
    );
    account.companion_seen(a, at(11 * DAY)).unwrap();
    assert!(matches!(
        account.device_state(a, a_deadline),
        Some(DeviceState::Active { .. })
    ));
    // Seen at day 11: idle at day 18, before the primary's deadline (day 20).
    assert_eq!(account.primary_deadline(), at(20 * DAY));
    assert_eq!(
        account.device_state(a, at(18 * DAY)),
        logged_out(LogoutReason::CompanionIdle, at(18 * DAY))
    );

    // Without the knob, a companion is never idled out.
    let mut rng2 = self::rng(10);
    let mut plain = Account::generate(Policy::default(), &mut rng2, at(0));
    let c = link(&mut plain, "C", &mut rng2, at(0)).index();
    assert!(matches!(
        plain.device_state(c, at(OFFLINE - 1)),
        Some(DeviceState::Active { .. })
    ));
}

#[test]
fn clock_going_backwards_never_revives_and_never_panics() {
    let mut rng = rng(11);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let mut sessions: Vec<LinkedSession> = (0..3)
        .map(|i| link(&mut account, &format!("c{i}"), &mut rng, at(0)))
        .collect();
    account.revoke(DeviceIndex(1), at(DAY)).unwrap();
    // A pending slot that times out.
    let mut p = start(&mut account, "pending", &mut rng, at(DAY)).unwrap();
    account.grant(&mut p.primary, &mut rng, at(DAY)).unwrap();
    broadcast_list(&account, &mut sessions, at(DAY));
    let deadline = at(DAY + OFFLINE);
    assert_eq!(account.primary_deadline(), deadline);

    // Settle everything at the deadline (any mutating call does).
    account.poll(deadline);
    for s in &mut sessions {
        assert!(matches!(s.poll(deadline), SessionStatus::LoggedOut { .. }));
    }
    let settled = states(&account, deadline);
    assert_eq!(
        settled,
        vec![
            logged_out(LogoutReason::Revoked, at(DAY)),
            logged_out(LogoutReason::PrimaryOffline, deadline),
            logged_out(LogoutReason::PrimaryOffline, deadline),
            logged_out(LogoutReason::ConfirmationTimedOut, at(DAY + 60 * SECOND)),
        ]
    );
    let session_status: Vec<SessionStatus> = sessions.iter().map(|s| s.status(deadline)).collect();

    let old_hb = PrimaryHeartbeat::sign(
        account.key(),
        account.device_list(),
        account.audit_anchor(),
        at(2 * DAY),
    )
    .to_bytes();
    let times = [
        Timestamp::EPOCH,
        at(0),
        at(DAY),
        at(2 * DAY),
        minus(deadline, 1),
        deadline,
        Timestamp::from_unix_millis(u64::MAX - 1),
        Timestamp::MAX,
        at(3 * DAY),
    ];
    for t in times {
        account.poll(t);
        let _ = account.next_deadline();
        let _ = account.heartbeat(t);
        for i in 1..=4 {
            assert!(matches!(
                account.revoke(DeviceIndex(i), t),
                Err(RegistryError::AlreadyLoggedOut { .. })
            ));
            assert!(matches!(
                account.companion_seen(DeviceIndex(i), t),
                Err(RegistryError::AlreadyLoggedOut { .. })
            ));
        }
        for probe in times {
            assert_eq!(states(&account, probe), settled, "now {t}, probe {probe}");
            assert_eq!(account.companion_count(probe), 0);
        }
        for (s, status) in sessions.iter_mut().zip(&session_status) {
            assert_eq!(s.poll(t), *status);
            assert_eq!(s.status(t), *status);
            assert!(s.heartbeat_bytes(&old_hb, t).is_err());
            let _ = s.next_deadline();
            let _ = s.warn_at();
        }
        // The late Confirm is refused whatever the clock says.
        assert!(account.confirm(&mut p.primary, &[0u8; 10], t).is_err());
    }

    // A companion's offer display going backwards changes nothing either.
    let mut c = new_companion(
        DeviceIdentity::generate(&mut rng),
        "x",
        &policy,
        &mut rng,
        at(0),
    );
    assert!(matches!(
        c.poll(&mut rng, at(100 * DAY)),
        Some(CompanionEvent::Failed(_))
    ));
    let failed = c.state();
    assert_eq!(c.poll(&mut rng, at(0)), None);
    assert_eq!(c.poll(&mut rng, Timestamp::EPOCH), None);
    assert_eq!(c.state(), failed);
}

// ---------------------------------------------------------------------------
// Save / restore
// ---------------------------------------------------------------------------

/// Every prefix of a save, and a few structural corruptions, are refused
/// without a panic.
fn assert_corruptions_refused<T>(
    what: &str,
    bytes: &[u8],
    restore: impl Fn(&[u8]) -> Result<T, PersistError>,
) {
    assert!(restore(bytes).is_ok(), "{what}: the intact save restores");
    for len in 0..bytes.len() {
        assert!(
            restore(&bytes[..len]).is_err(),
            "{what}: prefix of {len}/{} bytes restored",
            bytes.len()
        );
    }
    let text = std::str::from_utf8(bytes).unwrap();
    let mut corruptions: Vec<Vec<u8>> = Vec::new();
    // Structural flips: the first brace, the last brace, the first quote.
    for pos in [0, bytes.len() - 1, text.find('"').unwrap()] {
        let mut b = bytes.to_vec();
        b[pos] ^= 0x01;
        corruptions.push(b);
    }
    // Envelope: kind, format and version.
    // The format is version 3: a v2 save and a future v4 are refused.
    for other in ["\"version\":2", "\"version\":4"] {
        corruptions.push(text.replacen("\"version\":3", other, 1).into_bytes());
    }
    corruptions.push(
        text.replacen("\"format\":\"devicelink\"", "\"format\":\"devicelinK\"", 1)
            .into_bytes(),
    );
    corruptions.push(text.replacen("\"kind\":\"", "\"kind\":\"x", 1).into_bytes());
    // Non-UTF-8 and NUL bytes in the middle.
    let mid = bytes.len() / 2;
    for byte in [0xFF, 0x00] {
        let mut b = bytes.to_vec();
        b[mid] = byte;
        corruptions.push(b);
    }
    for (n, b) in corruptions.iter().enumerate() {
        assert_ne!(b.as_slice(), bytes, "{what}: corruption {n} is a no-op");
        assert!(restore(b).is_err(), "{what}: corruption {n} restored");
    }
    // Any single-byte flip: never a panic (an accepted flip is a different,
    // self-consistent state).
    for pos in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[pos] ^= 0x20;
        let _ = restore(&b);
    }
}

/// The base64 field that follows `"key":"` in a saved state, as a byte range.
fn field_range(text: &str, key: &str) -> std::ops::Range<usize> {
    let start = text.find(&format!("\"{key}\":\"")).unwrap() + key.len() + 4;
    let end = start + text[start..].find('"').unwrap();
    start..end
}

/// Flips one base64 character in the middle of a signed or secret field.
fn flip_b64(bytes: &[u8], range: std::ops::Range<usize>) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let pos = (range.start + range.end) / 2;
    b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
    b
}

/// What a run of the account produces: every output message, every answer.
#[derive(Debug, PartialEq)]
enum Out {
    Bytes(Vec<u8>),
    Answer(String),
    States(Vec<Option<DeviceState>>),
    Count(u32),
    Deadline(Option<Timestamp>),
    Session(Vec<u8>),
}

/// Drives an account through a fixed sequence with a given companion and RNG,
/// recording every output.
fn drive_account(
    account: &mut Account,
    companion: Companion,
    mut extra: Pairing,
    rng: &mut ChaCha20Rng,
    t: Timestamp,
) -> Vec<Out> {
    fn record_state(account: &Account, out: &mut Vec<Out>, now: Timestamp) {
        out.push(Out::States(states(account, now)));
        out.push(Out::Count(account.companion_count(now)));
        out.push(Out::Deadline(account.next_deadline()));
        out.push(Out::Bytes(account.device_list().to_bytes()));
    }
    let mut out = Vec::new();
    record_state(account, &mut out, t);
    // A full link with the given companion.
    let mut c = companion;
    let text = c.offer().unwrap().to_text();
    out.push(Out::Deadline(Some(account.open_link_intent(t))));
    let (mut primary, hello) = account.scan(&text, rng, t).unwrap();
    out.push(Out::Bytes(hello.clone()));
    let request = c.receive_hello(&hello, rng, t).unwrap();
    out.push(Out::Bytes(request.clone()));
    let asked = account
        .receive_request(&mut primary, &request, rng, t)
        .unwrap();
    out.push(Out::Answer(format!("{asked:?}")));
    let grant = account.grant(&mut primary, rng, plus(t, 1)).unwrap();
    out.push(Out::Bytes(grant.clone()));
    c.receive_grant(&grant, plus(t, 2)).unwrap();
    let confirm = c.consent(plus(t, 2)).unwrap();
    out.push(Out::Bytes(confirm.clone()));
    let link = account.confirm(&mut primary, &confirm, plus(t, 3)).unwrap();
    out.push(Out::Bytes(link.certificate.to_bytes()));
    out.push(Out::Session(c.session().unwrap().save().unwrap()));
    record_state(account, &mut out, plus(t, 3));
    // The pairing that was approved before the save: a grant now hits the limit.
    match account.grant(&mut extra.primary, rng, plus(t, 4)) {
        Ok(g) => out.push(Out::Bytes(g)),
        Err(e) => out.push(Out::Answer(format!("{e:?}"))),
    }
    // Revoke, heartbeat, expiry, refusals.
    out.push(Out::Answer(format!(
        "{:?}",
        account.revoke(DeviceIndex(2), plus(t, 5))
    )));
    out.push(Out::Answer(format!(
        "{:?}",
        account.revoke(DeviceIndex(2), plus(t, 6))
    )));
    out.push(Out::Bytes(account.heartbeat(plus(t, DAY)).to_bytes()));
    for probe in [
        plus(t, DAY),
        plus(t, DAY + OFFLINE - 1),
        plus(t, DAY + OFFLINE),
    ] {
        record_state(account, &mut out, probe);
    }
    out.push(Out::Answer(format!(
        "{:?}",
        account.companion_seen(DeviceIndex(1), plus(t, 2 * DAY))
    )));
    account.poll(plus(t, DAY + OFFLINE));
    record_state(account, &mut out, plus(t, DAY + OFFLINE));
    let fresh = start(account, "after", rng, plus(t, 20 * DAY)).unwrap();
    out.push(Out::Bytes(fresh.primary.hello().to_vec()));
    let s = finish(account, fresh, rng, plus(t, 20 * DAY));
    out.push(Out::Session(s.save().unwrap()));
    record_state(account, &mut out, plus(t, 20 * DAY));
    out.push(Out::Bytes(account.save().unwrap()));
    out
}

#[test]
fn account_save_restore_continues_exactly_like_the_original() {
    let mut rng = rng(12);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    link(&mut account, "a", &mut rng, at(0));
    link(&mut account, "b", &mut rng, at(SECOND));
    link(&mut account, "c", &mut rng, at(2 * SECOND));
    account.revoke(DeviceIndex(3), at(3 * SECOND)).unwrap();
    // A pending slot (granted, unconfirmed) and an approved-but-ungranted pairing.
    let mut pending = start(&mut account, "pending", &mut rng, at(4 * SECOND)).unwrap();
    account
        .grant(&mut pending.primary, &mut rng, at(4 * SECOND))
        .unwrap();
    let extra = start(&mut account, "extra", &mut rng, at(5 * SECOND)).unwrap();
    let t = at(6 * SECOND);
    let companion = new_companion(
        DeviceIdentity::generate(&mut rng),
        "next",
        &policy,
        &mut rng,
        t,
    );

    let saved = account.save().unwrap();
    let mut restored = Account::restore(&saved).unwrap();
    assert_eq!(restored.save().unwrap(), saved);
    assert_eq!(restored.account_id(), account.account_id());
    assert_eq!(restored.policy(), account.policy());
    assert_eq!(restored.device_list(), account.device_list());
    assert_eq!(states(&restored, t), states(&account, t));

    let extra2 = Pairing {
        companion: extra.companion.clone(),
        primary: extra.primary.clone(),
    };
    let original_run = drive_account(&mut account, companion.clone(), extra, &mut rng.clone(), t);
    let restored_run = drive_account(&mut restored, companion, extra2, &mut rng.clone(), t);
    assert_eq!(original_run.len(), restored_run.len());
    for (i, (a, b)) in original_run.iter().zip(&restored_run).enumerate() {
        assert_eq!(a, b, "output {i} differs after restore");
    }

    // The pending slot's confirmation also works across a restore.
    let mut rng2 = self::rng(13);
    let mut acc = Account::generate(policy, &mut rng2, at(0));
    let mut p = start(&mut acc, "p", &mut rng2, at(0)).unwrap();
    let grant = acc.grant(&mut p.primary, &mut rng2, at(0)).unwrap();
    let mut acc2 = Account::restore(&acc.save().unwrap()).unwrap();
    let primary2 = PrimaryHandshake::restore(&p.primary.save().unwrap()).unwrap();
    p.companion.receive_grant(&grant, at(10)).unwrap();
    let confirm = p.companion.consent(at(10)).unwrap();
    let mut primary1 = p.primary;
    let mut primary2 = primary2;
    assert_eq!(
        acc.confirm(&mut primary1, &confirm, at(20)),
        acc2.confirm(&mut primary2, &confirm, at(20))
    );
    assert_eq!(acc.save().unwrap(), acc2.save().unwrap());

    assert_corruptions_refused("account", &saved, Account::restore);
}

#[test]
fn account_restore_refuses_a_corrupted_account_key() {
    let mut rng = rng(18);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut session = link(&mut account, "a", &mut rng, at(0));
    let saved = account.save().unwrap();
    let text = std::str::from_utf8(&saved).unwrap();
    let corrupted = flip_b64(&saved, field_range(text, "key"));
    match Account::restore(&corrupted) {
        Err(_) => {}
        Ok(restored) => {
            // What goes wrong if it is accepted: another account, whose
            // heartbeats the linked companion refuses.
            let hb = PrimaryHeartbeat::sign(
                restored.key(),
                restored.device_list(),
                restored.audit_anchor(),
                at(DAY),
            )
            .to_bytes();
            panic!(
                "corrupted key restored: account {:?} became {:?}; companion answers {:?}",
                account.account_id(),
                restored.account_id(),
                session.heartbeat_bytes(&hb, at(DAY))
            );
        }
    }
}

#[test]
fn expiry_driven_list_update_does_not_extend_leases_beyond_the_registry() {
    // A pending slot times out and a later settle re-signs the device list;
    // the companions that accept it must not outlive the registry's deadline.
    let mut rng = rng(19);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut session = link(&mut account, "a", &mut rng, at(0));
    let mut p = start(&mut account, "pending", &mut rng, at(0)).unwrap();
    account.grant(&mut p.primary, &mut rng, at(0)).unwrap();
    let version = account.device_list().version();
    account.poll(at(DAY));
    assert_eq!(
        account.device_state(DeviceIndex(2), at(DAY)),
        logged_out(LogoutReason::ConfirmationTimedOut, at(60 * SECOND))
    );
    assert!(account.device_list().version() > version);
    session
        .accept_device_list(account.device_list(), at(DAY))
        .unwrap();
    assert_eq!(account.primary_deadline(), at(OFFLINE));
    assert_eq!(session.expires_at(), account.primary_deadline());
    for t in [at(OFFLINE - 1), at(OFFLINE)] {
        assert_eq!(
            session.is_linked(t),
            account
                .device_state(session.index(), t)
                .is_some_and(|s| s.holds_slot()),
            "registry and session disagree at {t}"
        );
    }
}

#[test]
fn companion_save_restore_mid_handshake_continues_identically() {
    let mut rng = rng(14);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let mut companion = new_companion(
        DeviceIdentity::generate(&mut rng),
        "desk",
        &policy,
        &mut rng,
        at(0),
    );

    // Saved while showing the offer: a rotation and the Hello go the same way.
    let showing = companion.save().unwrap();
    let mut c_show = Companion::restore(&showing).unwrap();
    assert_eq!(c_show.state(), companion.state());
    assert_eq!(c_show.next_deadline(), companion.next_deadline());
    let mut r1 = rng.clone();
    let mut r2 = rng.clone();
    let mut shadow = companion.clone();
    assert_eq!(
        shadow.poll(&mut r1, at(60 * SECOND)),
        c_show.poll(&mut r2, at(60 * SECOND))
    );
    assert_eq!(
        shadow.offer().map(|o| o.to_text()),
        c_show.offer().map(|o| o.to_text())
    );
    assert_corruptions_refused("companion (showing)", &showing, Companion::restore);

    let text = companion.offer().unwrap().to_text();
    account.open_link_intent(at(SECOND));
    let (mut primary, hello) = account.scan(&text, &mut rng, at(SECOND)).unwrap();
    // The Request's nonce is random (v2): the same RNG gives the same bytes.
    let mut r1 = rng.clone();
    let c_show_request = Companion::restore(&showing)
        .unwrap()
        .receive_hello(&hello, &mut r1, at(2 * SECOND))
        .unwrap();
    let request = companion
        .receive_hello(&hello, &mut rng, at(2 * SECOND))
        .unwrap();
    assert_eq!(request, c_show_request);

    // Saved between receive_hello and receive_grant.
    let mid = companion.save().unwrap();
    let mut restored = Companion::restore(&mid).unwrap();
    assert_eq!(restored.state(), companion.state());
    assert_eq!(restored.check_code(), companion.check_code());
    assert_eq!(restored.next_deadline(), companion.next_deadline());
    assert!(matches!(
        restored.state(),
        CompanionState::AwaitingGrant { .. }
    ));
    // A replayed Hello is refused by both, identically.
    assert_eq!(
        restored.receive_hello(&hello, &mut rng.clone(), at(3 * SECOND)),
        companion
            .clone()
            .receive_hello(&hello, &mut rng.clone(), at(3 * SECOND))
    );
    assert!(restored
        .receive_hello(&hello, &mut rng.clone(), at(3 * SECOND))
        .is_err());

    account
        .receive_request(&mut primary, &request, &mut rng, at(3 * SECOND))
        .unwrap();
    let grant = account
        .grant(&mut primary, &mut rng, at(4 * SECOND))
        .unwrap();
    let mut tampered = grant.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        restored.receive_grant(&tampered, at(5 * SECOND)),
        companion.clone().receive_grant(&tampered, at(5 * SECOND))
    );
    companion.receive_grant(&grant, at(5 * SECOND)).unwrap();
    let confirm = companion.consent(at(5 * SECOND)).unwrap();
    restored.receive_grant(&grant, at(5 * SECOND)).unwrap();
    let confirm2 = restored.consent(at(5 * SECOND)).unwrap();
    assert_eq!(confirm, confirm2, "byte-identical Confirm after restore");
    assert_eq!(restored.state(), CompanionState::Linked);
    assert_eq!(
        companion.session().unwrap().save().unwrap(),
        restored.session().unwrap().save().unwrap()
    );
    assert_eq!(companion.save().unwrap(), restored.save().unwrap());
    account
        .confirm(&mut primary, &confirm2, at(6 * SECOND))
        .unwrap();
    assert_corruptions_refused("companion (awaiting grant)", &mid, Companion::restore);

    // A restored companion that waits too long times out just like the original.
    let mut late1 = Companion::restore(&mid).unwrap();
    let mut late2 = Companion::restore(&mid).unwrap();
    let deadline = late1.next_deadline().unwrap();
    assert_eq!(
        late1.receive_grant(&grant, deadline),
        Err(HandshakeError::TimedOut {
            waiting_for: "the grant"
        })
    );
    assert_eq!(
        late2.poll(&mut rng, deadline),
        Some(CompanionEvent::Failed(FailureReason::GrantTimedOut))
    );
}

#[test]
fn linked_session_save_restore_continues_identically() {
    let mut rng = rng(15);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let s1 = link(&mut account, "one", &mut rng, at(0));
    let mut s2 = link(&mut account, "two", &mut rng, at(SECOND));
    broadcast_list(&account, std::slice::from_mut(&mut s2), at(SECOND));

    let saved = s2.save().unwrap();
    let mut restored = LinkedSession::restore(&saved, &Policy::default()).unwrap();
    assert_eq!(restored.save().unwrap(), saved);
    assert_eq!(restored.index(), s2.index());
    assert_eq!(restored.account(), s2.account());
    assert_eq!(restored.device_key(), s2.device_key());
    assert_eq!(restored.certificate(), s2.certificate());
    assert_eq!(restored.expires_at(), s2.expires_at());

    // The same inputs give the same outputs.
    let hb = account.heartbeat(at(5 * DAY)).to_bytes();
    account.revoke(s1.index(), at(6 * DAY)).unwrap();
    let list = account.device_list().to_bytes();
    let other = Account::generate(Policy::default(), &mut rng, at(0));
    let foreign = PrimaryHeartbeat::sign(
        other.key(),
        other.device_list(),
        other.audit_anchor(),
        at(7 * DAY),
    )
    .to_bytes();
    let run = |s: &mut LinkedSession| -> Vec<String> {
        let mut out = Vec::new();
        out.push(format!("{:?}", s.status(at(13 * DAY))));
        out.push(format!("{:?}", s.heartbeat_bytes(&hb, at(5 * DAY))));
        out.push(format!("{:?}", s.heartbeat_bytes(&foreign, at(7 * DAY))));
        out.push(format!("{:?}", s.device_list_bytes(&list, at(6 * DAY))));
        out.push(format!("{:?}", s.device_list_bytes(&list, at(6 * DAY))));
        for d in [13, 18, 19, 20, 21] {
            out.push(format!("{:?}", s.status(at(d * DAY))));
            out.push(format!("{:?}", s.next_deadline()));
        }
        out.push(format!("{:?}", s.poll(at(20 * DAY))));
        out.push(format!("{:?}", s.status(at(DAY))));
        out.push(format!("{:?}", s.heartbeat_bytes(&hb, at(5 * DAY))));
        out.push(String::from_utf8(s.save().unwrap()).unwrap());
        out
    };
    let a = run(&mut s2);
    let b = run(&mut restored);
    assert_eq!(a, b);
    assert!(a[0].starts_with("ExpiringSoon"), "{}", a[0]);
    assert!(a[1].starts_with("Ok(Linked"), "{}", a[1]);
    assert!(a.iter().any(|l| l.contains("LoggedOut")));

    assert_corruptions_refused("linked session", &saved, restore_session);
    let text = std::str::from_utf8(&saved).unwrap();
    // Identity, certificate and device list are checked against each other.
    for field in ["identity", "certificate", "device_list"] {
        assert!(
            LinkedSession::restore(
                &flip_b64(&saved, field_range(text, field)),
                &Policy::default()
            )
            .is_err(),
            "flipped {field} restored"
        );
    }
}

#[test]
fn offer_display_save_restore_rotates_identically() {
    let policy = Policy::default();
    let mut rng = rng(16);
    let mut display = OfferDisplay::new(&policy, &mut rng, at(0));
    assert!(display.poll(&mut rng, at(61 * SECOND)).is_some());

    let saved = display.save().unwrap();
    let mut restored = OfferDisplay::restore(&saved).unwrap();
    assert_eq!(restored.save().unwrap(), saved);
    assert_eq!(restored.state(), display.state());
    assert_eq!(
        restored.offer().map(|o| o.to_text()),
        display.offer().map(|o| o.to_text())
    );

    let mut r1 = rng.clone();
    let mut r2 = rng;
    let times = [
        at(62 * SECOND),
        at(80 * SECOND),
        at(81 * SECOND),
        at(SECOND),
        at(120 * SECOND),
        at(150 * SECOND),
        at(161 * SECOND),
        at(500 * SECOND),
    ];
    for t in times {
        let e1 = display.poll(&mut r1, t);
        let e2 = restored.poll(&mut r2, t);
        assert_eq!(e1, e2, "at {t}");
        assert_eq!(display.state(), restored.state());
        assert_eq!(display.next_deadline(), restored.next_deadline());
        assert_eq!(
            display.offer().map(|o| o.to_text()),
            restored.offer().map(|o| o.to_text())
        );
        assert_eq!(display.save().unwrap(), restored.save().unwrap());
    }
    assert!(matches!(display.state(), OfferState::TimedOut { .. }));

    assert_corruptions_refused("offer display", &saved, OfferDisplay::restore);

    // Cancel across a restore.
    let mut rng3 = self::rng(17);
    let mut d = OfferDisplay::new(&policy, &mut rng3, at(0));
    let mut d2 = OfferDisplay::restore(&d.save().unwrap()).unwrap();
    assert_eq!(d.cancel(at(5)), d2.cancel(at(5)));
    assert_eq!(d.cancel(at(6)), d2.cancel(at(6)));
    assert_eq!(d.state(), d2.state());
}

// ---------------------------------------------------------------------------
// Protocol v2 findings
// ---------------------------------------------------------------------------

/// Finding (a), phishing by QR: a real offer shown on a web page as "scan to
/// join the group" must not link. Scanning needs the host's own link intent
/// ("Link a device" screen), which expires and is used up by one scan.
#[test]
fn scanning_needs_a_fresh_single_use_link_intent() {
    let mut rng = rng(30);
    let policy = Policy::default();
    let window = u64::try_from(policy.link_intent_window().as_millis()).unwrap();
    assert_eq!(window, 60 * SECOND);
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let early = new_companion(
        DeviceIdentity::generate(&mut rng),
        "early",
        &policy,
        &mut rng,
        at(0),
    );
    let text = early.offer().unwrap().to_text();

    // Without an intent: refused, retryable, nothing changes.
    let before = account.save().unwrap();
    let err = account.scan(&text, &mut rng, at(0)).unwrap_err();
    assert_eq!(err, RegistryError::NoLinkIntent);
    assert!(!err.is_terminal());
    assert_eq!(account.save().unwrap(), before);

    // The window ends at open + 60 s; the end instant is already expired.
    assert_eq!(account.open_link_intent(at(0)), at(window));
    for t in [at(window), at(window + 1), at(window + DAY)] {
        let err = account.scan(&text, &mut rng, t).unwrap_err();
        assert_eq!(err, RegistryError::LinkIntentExpired, "at {t}");
        assert!(!err.is_terminal());
    }

    // Closing the screen closes the intent.
    let t1 = at(2 * window + DAY);
    account.open_link_intent(t1);
    account.close_link_intent();
    assert_eq!(
        account.scan(&text, &mut rng, t1).unwrap_err(),
        RegistryError::NoLinkIntent
    );

    // Opened again: a scan 1 ms before the end works, and uses the intent up.
    let t2 = plus(t1, SECOND);
    let mut c = new_companion(
        DeviceIdentity::generate(&mut rng),
        "c",
        &policy,
        &mut rng,
        plus(t2, 30 * SECOND),
    );
    let text = c.offer().unwrap().to_text();
    let until = account.open_link_intent(t2);
    assert_eq!(until, plus(t2, window));
    let last_ms = minus(until, 1);
    let (mut primary, hello) = account.scan(&text, &mut rng, last_ms).unwrap();
    assert_eq!(
        account.scan(&text, &mut rng, last_ms).unwrap_err(),
        RegistryError::NoLinkIntent
    );
    let other = new_companion(
        DeviceIdentity::generate(&mut rng),
        "other",
        &policy,
        &mut rng,
        last_ms,
    );
    assert_eq!(
        account
            .scan(&other.offer().unwrap().to_text(), &mut rng, last_ms)
            .unwrap_err(),
        RegistryError::NoLinkIntent
    );
    // The one scan that had an intent links normally.
    let request = c.receive_hello(&hello, &mut rng, last_ms).unwrap();
    account
        .receive_request(&mut primary, &request, &mut rng, last_ms)
        .unwrap();
    let grant = account.grant(&mut primary, &mut rng, last_ms).unwrap();
    c.receive_grant(&grant, last_ms).unwrap();
    let confirm = c.consent(last_ms).unwrap();
    let link = account.confirm(&mut primary, &confirm, last_ms).unwrap();
    assert_eq!(link.certificate.index(), DeviceIndex(1));
    assert_eq!(account.companion_count(last_ms), 1);
}

/// Finding (b), full account: v1 refused at the scan with no word to the
/// companion, and a device re-pairing with its own key had to be revoked
/// first (anyone naming its public key could evict it). v2 refuses a new
/// device at its Request with an authenticated Refusal the companion shows;
/// a listed device re-pairing with its own key is granted beside its old
/// index, which is replaced only when the Confirm proves the key.
#[test]
fn full_account_refuses_new_devices_but_lets_a_listed_device_re_pair() {
    use devicelink::certificate::RemovedDevice;
    use devicelink::session::DeviceLeft;

    let mut rng = rng(31);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let mut sessions: Vec<LinkedSession> = (0..4u64)
        .map(|i| link(&mut account, &format!("c{i}"), &mut rng, at(i * SECOND)))
        .collect();
    let now = at(10 * SECOND);
    broadcast_list(&account, &mut sessions, now);
    assert_eq!(account.companion_count(now), 4);

    // A new device: the scan works, the Request is refused.
    let mut newcomer = new_companion(
        DeviceIdentity::generate(&mut rng),
        "newcomer",
        &policy,
        &mut rng,
        now,
    );
    account.open_link_intent(now);
    let text = newcomer.offer().unwrap().to_text();
    let (mut primary, hello) = account.scan(&text, &mut rng, now).unwrap();
    let request = newcomer.receive_hello(&hello, &mut rng, now).unwrap();
    let err = account
        .receive_request(&mut primary, &request, &mut rng, now)
        .unwrap_err();
    let RegistryError::Refused { reason, refusal } = err else {
        panic!("not refused: {err:?}");
    };
    assert_eq!(reason, RefusalReason::DeviceLimitReached { limit: 4 });
    // A forged Refusal is not believed; the genuine one is.
    let mut forged = refusal.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        newcomer.receive_grant(&forged, now),
        Err(HandshakeError::AuthenticationFailed)
    );
    assert!(matches!(
        newcomer.state(),
        CompanionState::AwaitingGrant { .. }
    ));
    assert_eq!(
        newcomer.receive_grant(&refusal, now),
        Err(HandshakeError::Refused(RefusalReason::DeviceLimitReached {
            limit: 4
        }))
    );
    assert_eq!(
        newcomer.state(),
        CompanionState::Failed {
            reason: FailureReason::Refused(RefusalReason::DeviceLimitReached { limit: 4 }),
            at: now,
        }
    );
    assert!(account.grant(&mut primary, &mut rng, now).is_err());
    assert_eq!(account.next_index(), DeviceIndex(5));

    // Device #2 re-pairs with its own key (say its browser storage lost the
    // session but kept the key): not refused, no revocation first.
    let key2 = sessions[1].device_key();
    let again = new_companion(
        sessions[1].identity().unwrap().clone(),
        "c1 again",
        &policy,
        &mut rng,
        now,
    );
    let mut p = start_with(&mut account, again, &mut rng, now).unwrap();
    let version = account.device_list_version();
    let grant = account.grant(&mut p.primary, &mut rng, now).unwrap();
    // Granted beside the old index: the list names the key twice, the key
    // holds one slot, and the old index is still active.
    let list = account.device_list().clone();
    assert_eq!(list.version(), version + 1);
    assert!(list.contains(DeviceIndex(2), &key2));
    assert!(list.contains(DeviceIndex(5), &key2));
    assert_eq!(list.devices().len(), 5);
    assert_eq!(list.distinct_devices(), 4);
    assert_eq!(account.companion_count(now), 4);
    assert_eq!(
        account.device_state(DeviceIndex(2), now),
        Some(DeviceState::Active { since: at(SECOND) })
    );
    assert!(matches!(
        account.device_state(DeviceIndex(5), now),
        Some(DeviceState::Pending { .. })
    ));
    // The account is still full for anyone else.
    let err = start(&mut account, "newcomer 2", &mut rng, now)
        .err()
        .expect("refused");
    assert!(is_full_refusal(&err, 4), "{err:?}");
    // The old session sees the pending re-pair and stays linked.
    let change = sessions[1].accept_device_list(&list, now).unwrap();
    assert!(matches!(change.status, SessionStatus::Linked { .. }));
    assert_eq!(
        change.added,
        vec![list.entry(DeviceIndex(5)).unwrap().clone()]
    );
    assert!(change.removed.is_empty());

    // The Confirm proves the key: now, and only now, #2 is replaced.
    let t_confirm = plus(now, 1);
    p.companion.receive_grant(&grant, t_confirm).unwrap();
    let confirm = p.companion.consent(t_confirm).unwrap();
    account
        .confirm(&mut p.primary, &confirm, t_confirm)
        .unwrap();
    assert_eq!(
        account.device_state(DeviceIndex(2), t_confirm),
        logged_out(LogoutReason::Replaced, t_confirm)
    );
    assert_eq!(
        account.device_state(DeviceIndex(5), t_confirm),
        Some(DeviceState::Active { since: t_confirm })
    );
    assert_eq!(account.companion_count(t_confirm), 4);
    let replaced = account.device_list().clone();
    assert_eq!(replaced.version(), version + 2);
    assert!(!replaced.contains(DeviceIndex(2), &key2));
    assert!(replaced.contains(DeviceIndex(5), &key2));
    assert_eq!(
        replaced.removed(),
        &[RemovedDevice {
            index: DeviceIndex(2),
            reason: LogoutReason::Replaced
        }]
    );
    let old_entry = list.entry(DeviceIndex(2)).unwrap().clone();
    let new_entry = replaced.entry(DeviceIndex(5)).unwrap().clone();
    for s in &mut sessions {
        let change = s.accept_device_list(&replaced, t_confirm).unwrap();
        if s.index() == DeviceIndex(2) {
            assert_eq!(
                change.status,
                SessionStatus::LoggedOut {
                    reason: LogoutReason::Replaced
                }
            );
        } else {
            assert!(matches!(change.status, SessionStatus::Linked { .. }));
            assert_eq!(change.added, vec![new_entry.clone()]);
        }
        assert_eq!(
            change.removed,
            vec![DeviceLeft {
                entry: old_entry.clone(),
                reason: Some(LogoutReason::Replaced)
            }]
        );
    }
    let mut new_session = p.companion.into_session().expect("linked");
    assert_eq!(new_session.index(), DeviceIndex(5));
    assert!(new_session.accept_device_list(&replaced, t_confirm).is_ok());
    assert!(new_session.is_linked(t_confirm));

    // Device #3 re-pairs too, but its Confirm never arrives: #3 stays
    // active, and the pending index times out.
    let key3 = sessions[2].device_key();
    let t2 = plus(now, 2 * SECOND);
    let again = new_companion(
        sessions[2].identity().unwrap().clone(),
        "c2 again",
        &policy,
        &mut rng,
        t2,
    );
    let mut p = start_with(&mut account, again, &mut rng, t2).unwrap();
    let grant = account.grant(&mut p.primary, &mut rng, t2).unwrap();
    p.companion.receive_grant(&grant, t2).unwrap();
    let lost_confirm = p.companion.consent(t2).unwrap();
    let pending_list = account.device_list().clone();
    assert!(pending_list.contains(DeviceIndex(3), &key3));
    assert!(pending_list.contains(DeviceIndex(6), &key3));
    sessions[2].accept_device_list(&pending_list, t2).unwrap();
    let deadline = plus(t2, 60 * SECOND);
    account.poll(deadline);
    assert_eq!(
        account.device_state(DeviceIndex(6), deadline),
        logged_out(LogoutReason::ConfirmationTimedOut, deadline)
    );
    assert_eq!(
        account.device_state(DeviceIndex(3), deadline),
        Some(DeviceState::Active {
            since: at(2 * SECOND)
        })
    );
    assert_eq!(
        account.confirm(&mut p.primary, &lost_confirm, deadline),
        Err(RegistryError::ConfirmationTimedOut)
    );
    assert_eq!(
        account.device_state(DeviceIndex(3), deadline),
        Some(DeviceState::Active {
            since: at(2 * SECOND)
        })
    );
    assert_eq!(account.companion_count(deadline), 4);
    let after = account.device_list().clone();
    assert!(after.contains(DeviceIndex(3), &key3));
    assert!(!after.contains(DeviceIndex(6), &key3));
    let change = sessions[2].accept_device_list(&after, deadline).unwrap();
    assert!(matches!(change.status, SessionStatus::Linked { .. }));
    assert_eq!(
        change.removed,
        vec![DeviceLeft {
            entry: pending_list.entry(DeviceIndex(6)).unwrap().clone(),
            reason: Some(LogoutReason::ConfirmationTimedOut)
        }]
    );
    // The companion believed it linked at #6; the list tells it why not.
    let mut orphan = p.companion.into_session().expect("linked on its side");
    assert_eq!(orphan.index(), DeviceIndex(6));
    assert_eq!(
        orphan.accept_device_list(&after, deadline).unwrap().status,
        SessionStatus::LoggedOut {
            reason: LogoutReason::ConfirmationTimedOut
        }
    );
}

/// Finding (c): a handshake started by account A must not be granted,
/// confirmed or refused by account B (a host juggling two accounts, or a
/// handshake restored into the wrong one): `OtherAccount`, nothing changes.
#[test]
fn a_handshake_of_account_a_cannot_be_finished_by_account_b() {
    let mut rng = rng(32);
    let policy = Policy::default();
    let mut a = Account::generate(policy.clone(), &mut rng, at(0));
    let mut b = Account::generate(policy.clone(), &mut rng, at(0));
    b.open_link_intent(at(0));
    let b_before = b.save().unwrap();
    let mut c = new_companion(
        DeviceIdentity::generate(&mut rng),
        "c",
        &policy,
        &mut rng,
        at(0),
    );
    a.open_link_intent(at(0));
    let (mut primary, hello) = a
        .scan(&c.offer().unwrap().to_text(), &mut rng, at(0))
        .unwrap();
    assert_eq!(primary.account(), a.account_id());
    let request = c.receive_hello(&hello, &mut rng, at(0)).unwrap();

    assert_eq!(
        b.receive_request(&mut primary, &request, &mut rng, at(0)),
        Err(RegistryError::OtherAccount)
    );
    assert_eq!(primary.state(), PrimaryState::OfferScanned);
    a.receive_request(&mut primary, &request, &mut rng, at(0))
        .unwrap();
    let handshake_before = primary.save().unwrap();
    assert_eq!(
        b.grant(&mut primary, &mut rng, at(0)),
        Err(RegistryError::OtherAccount)
    );
    assert_eq!(
        b.refuse(&mut primary, RefusalReason::Declined, &mut rng, at(0)),
        Err(RegistryError::OtherAccount)
    );
    assert_eq!(primary.save().unwrap(), handshake_before);
    assert_eq!(primary.state(), PrimaryState::RequestReceived);

    let grant = a.grant(&mut primary, &mut rng, at(0)).unwrap();
    c.receive_grant(&grant, at(0)).unwrap();
    let confirm = c.consent(at(0)).unwrap();
    assert_eq!(
        b.confirm(&mut primary, &confirm, at(0)),
        Err(RegistryError::OtherAccount)
    );
    assert_eq!(
        primary.state(),
        PrimaryState::GrantSent {
            index: DeviceIndex(1)
        }
    );
    // B is untouched; A completes the link.
    assert_eq!(b.save().unwrap(), b_before);
    assert_eq!(b.companion_count(at(0)), 0);
    assert_eq!(b.next_index(), DeviceIndex(1));
    let link = a.confirm(&mut primary, &confirm, at(0)).unwrap();
    assert_eq!(link.certificate.account(), a.account_id());
    assert_eq!(a.companion_count(at(0)), 1);
}

/// Finding (d), backdated heartbeat: with a clock stepped back, v1 signed a
/// heartbeat at the given (earlier) time, which revived companions the
/// registry had already logged out. v2 signs at the registry's clock.
#[test]
fn a_backdated_heartbeat_is_signed_at_the_registry_clock_and_revives_nobody() {
    let mut rng = rng(33);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut s1 = link(&mut account, "one", &mut rng, at(0));
    let mut s2 = link(&mut account, "two", &mut rng, at(0));
    broadcast_list(&account, std::slice::from_mut(&mut s1), at(0));
    let held = s1.device_list().version();

    account.poll(at(15 * DAY));
    assert_eq!(account.clock(), at(15 * DAY));
    for i in [1, 2] {
        assert_eq!(
            account.device_state(DeviceIndex(i), at(15 * DAY)),
            logged_out(LogoutReason::PrimaryOffline, at(OFFLINE))
        );
    }
    // The clock steps back to day 5.
    let hb = account.heartbeat(at(5 * DAY));
    assert!(hb.at() >= at(15 * DAY));
    assert_eq!(hb.at(), account.clock());
    assert_eq!(account.clock(), at(15 * DAY));
    // The registry's answers do not move, even asked at day 5.
    for i in [1, 2] {
        assert_eq!(
            account.device_state(DeviceIndex(i), at(5 * DAY)),
            logged_out(LogoutReason::PrimaryOffline, at(OFFLINE))
        );
    }
    assert_eq!(account.companion_count(at(5 * DAY)), 0);

    // A session that has not polled, on a companion whose clock also says
    // day 5: the heartbeat is signed at or past its lease's end, so it logs
    // the session out whatever list it names (v2.1; it used to wait for the
    // list with `NeedDeviceList`).
    let bytes = hb.to_bytes();
    assert!(account.device_list_version() > held);
    assert_eq!(s1.expires_at(), at(OFFLINE));
    assert_eq!(
        s1.heartbeat_bytes(&bytes, at(5 * DAY)),
        Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
    );
    // The list then changes nothing: the session is already logged out.
    assert_eq!(
        s1.accept_device_list(account.device_list(), at(5 * DAY)),
        Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
    );
    assert!(!s1.is_linked(at(5 * DAY)));

    // Even a heartbeat of that instant naming the session's own list (so
    // that the list binding does not apply) logs it out rather than extend:
    // day 15 is past its lease.
    let same_time = PrimaryHeartbeat::sign(
        account.key(),
        s2.device_list(),
        account.audit_anchor(),
        hb.at(),
    );
    assert!(s2.is_linked(at(5 * DAY)));
    assert_eq!(
        s2.accept_heartbeat(&same_time, at(5 * DAY)),
        Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
    );
    assert_eq!(
        s2.status(at(5 * DAY)),
        SessionStatus::LoggedOut {
            reason: LogoutReason::PrimaryOffline
        }
    );
    assert_eq!(s2.expires_at(), at(OFFLINE));
}

/// Finding (e): in v1 a relay could hide a revocation by dropping the new
/// device list and forwarding heartbeats, keeping the revoked device linked
/// in the sessions' and the directory's view. v2 heartbeats name the list:
/// without it they extend nothing.
#[test]
fn heartbeats_bind_the_device_list() {
    use devicelink::session::DeviceLeft;

    let mut rng = rng(34);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let mut sessions: Vec<LinkedSession> = (0..3)
        .map(|i| link(&mut account, &format!("c{i}"), &mut rng, at(0)))
        .collect();
    broadcast_list(&account, &mut sessions, at(0));
    let id = account.account_id();
    let mut dir = Directory::new(&policy);
    assert_eq!(
        dir.apply_device_list(account.device_list(), at(0))
            .map(|a| a.changed()),
        Ok(true)
    );

    let before = account.device_list().clone();
    account.revoke(DeviceIndex(1), at(DAY)).unwrap();
    let revoked_list = account.device_list().clone();
    let hb = account.heartbeat(at(2 * DAY));
    assert_eq!(hb.list_version(), revoked_list.version());
    assert_eq!(hb.list_hash(), revoked_list.hash());

    // The relay forwards the heartbeat but not the list: nothing extends.
    let need = revoked_list.version();
    for s in &mut sessions {
        let saved = s.save().unwrap();
        assert_eq!(
            s.accept_heartbeat(&hb, at(2 * DAY)),
            Err(SessionError::Certificate(
                CertificateError::NeedDeviceList { version: need }
            ))
        );
        assert_eq!(s.save().unwrap(), saved);
        assert_eq!(s.expires_at(), at(OFFLINE));
    }
    assert_eq!(
        dir.apply_heartbeat(&hb, at(2 * DAY)),
        Err(DirectoryError::NeedDeviceList { version: need })
    );
    assert_eq!(dir.deadline(&id), Some(at(OFFLINE)));
    assert!(dir.is_linked(&id, DeviceIndex(1), &sessions[0].device_key(), at(2 * DAY)));

    // Then the list arrives: the revoked one is logged out, the others see
    // the removal with its reason, and the heartbeat extends them.
    let revoked_entry = before.entry(DeviceIndex(1)).unwrap().clone();
    for s in &mut sessions {
        let change = s.accept_device_list(&revoked_list, at(2 * DAY)).unwrap();
        assert!(change.added.is_empty());
        assert_eq!(
            change.removed,
            vec![DeviceLeft {
                entry: revoked_entry.clone(),
                reason: Some(LogoutReason::Revoked)
            }]
        );
        if s.index() == DeviceIndex(1) {
            assert_eq!(
                change.status,
                SessionStatus::LoggedOut {
                    reason: LogoutReason::Revoked
                }
            );
            assert_eq!(
                s.accept_heartbeat(&hb, at(2 * DAY)),
                Err(SessionError::LoggedOut(LogoutReason::Revoked))
            );
        } else {
            assert_eq!(
                change.status,
                SessionStatus::Linked {
                    expires_at: at(DAY + OFFLINE)
                }
            );
            assert_eq!(
                s.accept_heartbeat(&hb, at(2 * DAY)),
                Ok(SessionStatus::Linked {
                    expires_at: at(2 * DAY + OFFLINE)
                })
            );
        }
    }
    assert_eq!(
        dir.apply_device_list(&revoked_list, at(2 * DAY))
            .map(|a| a.changed()),
        Ok(true)
    );
    assert!(!dir.is_linked(&id, DeviceIndex(1), &sessions[0].device_key(), at(2 * DAY)));
    assert_eq!(dir.apply_heartbeat(&hb, at(2 * DAY)), Ok(()));
    assert_eq!(dir.deadline(&id), Some(at(2 * DAY + OFFLINE)));
    assert!(dir.is_linked(
        &id,
        DeviceIndex(2),
        &sessions[1].device_key(),
        at(2 * DAY + OFFLINE - 1)
    ));

    // A new link: the existing companions are told a device was added.
    let t = at(3 * DAY);
    let newcomer = link(&mut account, "newcomer", &mut rng, t);
    let list = account.device_list().clone();
    let entry = list.entry(newcomer.index()).unwrap().clone();
    assert_eq!(entry.index, DeviceIndex(4));
    assert_eq!(entry.device, newcomer.device_key());
    assert_eq!(entry.label.as_str(), "newcomer");
    assert_eq!(entry.linked_at, t);
    for s in sessions.iter_mut().skip(1) {
        let change = s.accept_device_list(&list, t).unwrap();
        assert_eq!(change.added, vec![entry.clone()]);
        assert!(change.removed.is_empty());
        assert!(matches!(change.status, SessionStatus::Linked { .. }));
    }
}

/// Finding (f), restored old phone: a primary restored from a save older
/// than a list it published signs other content under published versions.
/// v1 holders took the higher version and re-listed a revoked device; v2
/// lists chain, and holders refuse the restored history as a fork.
#[test]
fn a_restored_old_phone_produces_lists_the_sessions_refuse_as_a_fork() {
    let mut rng = rng(35);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, at(0));
    let mut sessions: Vec<LinkedSession> = (0..3)
        .map(|i| link(&mut account, &format!("c{i}"), &mut rng, at(0)))
        .collect();
    broadcast_list(&account, &mut sessions, at(0));
    let id = account.account_id();
    let mut dir = Directory::new(&policy);
    dir.apply_device_list(account.device_list(), at(0)).unwrap();
    let saved = account.save().unwrap();
    let v = account.device_list_version();

    // The genuine history: #1 revoked (version v + 1).
    account.revoke(DeviceIndex(1), at(DAY)).unwrap();
    let genuine = account.device_list().clone();
    assert_eq!(genuine.version(), v + 1);
    broadcast_list(&account, &mut sessions[1..], at(DAY));
    dir.apply_device_list(&genuine, at(DAY)).unwrap();

    // The old save is restored and makes another change: #3 revoked, also
    // version v + 1, with other content.
    let mut old = Account::restore(&saved).unwrap();
    old.revoke(DeviceIndex(3), at(2 * DAY)).unwrap();
    let forked = old.device_list().clone();
    assert_eq!(forked.version(), v + 1);
    assert_ne!(forked.hash(), genuine.hash());
    // ...and more: its next version chains to the forked one, not ours.
    let old_hb = old.heartbeat(at(2 * DAY));
    old.revoke(DeviceIndex(2), at(3 * DAY)).unwrap();
    let forked_next = old.device_list().clone();
    assert_eq!(forked_next.version(), v + 2);
    assert_eq!(forked_next.previous(), forked.hash());

    for s in sessions.iter_mut().skip(1) {
        let saved_session = s.save().unwrap();
        assert_eq!(
            s.accept_device_list(&forked, at(2 * DAY)),
            Err(SessionError::Certificate(CertificateError::Fork {
                version: v + 1
            }))
        );
        assert_eq!(
            s.accept_heartbeat(&old_hb, at(2 * DAY)),
            Err(SessionError::Certificate(CertificateError::Fork {
                version: v + 1
            }))
        );
        assert_eq!(
            s.accept_device_list(&forked_next, at(3 * DAY)),
            Err(SessionError::Certificate(CertificateError::Fork {
                version: v + 1
            }))
        );
        // Nothing changed but the fork mark, which stays (v2.1).
        assert_ne!(s.save().unwrap(), saved_session);
        assert_eq!(s.fork_seen(), Some(v + 1));
        assert_eq!(s.device_list(), &genuine);
        assert!(s.is_linked(at(3 * DAY)));
    }
    assert_eq!(
        dir.apply_device_list(&forked, at(2 * DAY)),
        Err(DirectoryError::Fork { version: v + 1 })
    );
    assert_eq!(
        dir.apply_device_list(&forked_next, at(3 * DAY)),
        Err(DirectoryError::Fork { version: v + 1 })
    );
    assert_eq!(
        dir.apply_heartbeat(&old_hb, at(2 * DAY)),
        Err(DirectoryError::Fork { version: v + 1 })
    );
    assert!(dir.is_linked(&id, DeviceIndex(3), &sessions[2].device_key(), at(3 * DAY)));

    // The genuine phone's next list chains and is accepted everywhere.
    account.revoke(DeviceIndex(2), at(4 * DAY)).unwrap();
    let next = account.device_list().clone();
    assert_eq!(next.previous(), genuine.hash());
    assert_eq!(
        dir.apply_device_list(&next, at(4 * DAY))
            .map(|a| a.changed()),
        Ok(true)
    );
    let change = sessions[2].accept_device_list(&next, at(4 * DAY)).unwrap();
    assert!(matches!(change.status, SessionStatus::Linked { .. }));
    // Serialised lists keep the chain (what a relay stores and forwards).
    assert_eq!(
        SignedDeviceList::from_bytes(&next.to_bytes())
            .unwrap()
            .previous(),
        genuine.hash()
    );
}

/// Every companion hears about a new device, and the optional quarantine
/// window marks it as recently linked: the first companion gets the second
/// one's entry (label, link time) as `added`, sees it in `recently_linked`
/// until the window ends, and never sees itself there.
#[test]
fn a_new_device_is_announced_and_quarantined_for_the_policy_window() {
    let mut rng = rng(77);
    let t0 = at(0);
    let policy = Policy::builder()
        .new_device_quarantine(Some(Duration::from_millis(DAY)))
        .build()
        .unwrap();
    let mut account = Account::generate(policy, &mut rng, t0);
    let mut first = link(&mut account, "Laptop", &mut rng, t0);
    assert!(
        first.recently_linked(t0).is_empty(),
        "a device is never quarantined for itself"
    );
    let t1 = at(3_600_000);
    let second = link(&mut account, "Unknown tablet", &mut rng, t1);
    let change = first.accept_device_list(account.device_list(), t1).unwrap();
    assert_eq!(change.added.len(), 1);
    assert_eq!(change.added[0].index, second.index());
    assert_eq!(change.added[0].label.as_str(), "Unknown tablet");
    assert_eq!(change.added[0].linked_at, t1);
    assert!(change.removed.is_empty());
    let recent: Vec<DeviceIndex> = first.recently_linked(t1).iter().map(|e| e.index).collect();
    assert_eq!(recent, vec![second.index()]);
    assert_eq!(first.recently_linked(plus(t1, DAY - 1)).len(), 1);
    assert!(first.recently_linked(plus(t1, DAY)).is_empty());
    // Without the policy knob, nobody is quarantined.
    let mut plain = Account::generate(Policy::default(), &mut rng, t0);
    let mut a = link(&mut plain, "A", &mut rng, t0);
    link(&mut plain, "B", &mut rng, t1);
    a.accept_device_list(plain.device_list(), t1).unwrap();
    assert!(a.recently_linked(t1).is_empty());
}

/// [`LinkedSession::restore`] under the default policy.
fn restore_session(bytes: &[u8]) -> Result<LinkedSession, devicelink::PersistError> {
    LinkedSession::restore(bytes, &Policy::default())
}
