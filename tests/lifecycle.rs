//! Lifecycle scenarios through the public API, each with real key exchanges:
//! the four-companion limit, revocation, the 14-day primary-offline expiry and
//! heartbeats, the expiry warning, pending-slot timeouts, the idle rule, a
//! clock that goes backwards, and save/restore of every host-held state.
//!
//! Deterministic: seeded RNGs and a virtual clock; no timing assertions.

use std::time::Duration;

use devicelink::handshake::{CompanionEvent, FailureReason, PrimaryState};
use devicelink::offer::OfferState;
use devicelink::persist::PersistError;
use devicelink::session::SessionError;
use devicelink::{
    Account, Companion, CompanionState, DeviceIdentity, DeviceIndex, DeviceLabel, DeviceState,
    HandshakeError, LinkedSession, LogoutReason, OfferDisplay, Policy, PrimaryHandshake,
    PrimaryHeartbeat, RefusalReason, RegistryError, SessionStatus, Timestamp,
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

/// Scan, Hello, Request: everything up to the user's approval.
fn start_with(
    account: &mut Account,
    mut companion: Companion,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> Result<Pairing, RegistryError> {
    let text = companion.offer().expect("offer on screen").to_text();
    let (mut primary, hello) = account.scan(&text, rng, now)?;
    let request = companion.receive_hello(&hello, now).unwrap();
    let asking = primary.receive_request(&request, now).unwrap();
    assert_eq!(Some(asking.check_code), companion.check_code());
    Ok(Pairing { companion, primary })
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
    let confirm = p.companion.receive_grant(&grant, now).unwrap();
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
            s.accept_device_list(&bytes, now).unwrap();
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

    // The fifth is refused at the scan, with exactly the limit, and nothing changes.
    let fifth_id = DeviceIdentity::generate(&mut rng);
    let fifth = new_companion(fifth_id, "fifth", &policy, &mut rng, now);
    let text = fifth.offer().unwrap().to_text();
    let before = account.save().unwrap();
    let err = account.scan(&text, &mut rng, now).unwrap_err();
    assert_eq!(err, RegistryError::DeviceLimitReached { limit: 4 });
    assert!(!err.is_terminal());
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
        let status = s.accept_device_list(&list, now).unwrap();
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

    // Now the same fifth companion links, with index 5: #2 is never reused.
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
            s.accept_device_list(&list, now),
            Ok(SessionStatus::Linked { .. })
        ));
        assert!(s
            .device_list()
            .contains(DeviceIndex(5), &fifth_session.device_key()));
    }
    // And a sixth is refused again.
    assert_eq!(
        start(&mut account, "sixth", &mut rng, now).err(),
        Some(RegistryError::DeviceLimitReached { limit: 4 })
    );
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
    let confirm = a.companion.receive_grant(&grant_a, now).unwrap();
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
        assert_eq!(
            s.accept_heartbeat(&hb.to_bytes(), later),
            Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline))
        );
        assert!(!s.is_linked(later));
    }
    assert_eq!(account.companion_count(later), 0);

    // Re-pair (the same devices, new links): new indices, and all four fit.
    let identities: Vec<DeviceIdentity> = sessions.iter().map(|s| s.identity().clone()).collect();
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
            s.accept_heartbeat(&bytes, hb_time),
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
    let foreign = PrimaryHeartbeat::sign(other.key(), at(20 * DAY)).to_bytes();
    let mut tampered = bytes.clone();
    tampered[40] ^= 1;
    for s in &mut sessions {
        let before = s.save().unwrap();
        assert!(s.accept_heartbeat(&foreign, at(20 * DAY)).is_err());
        assert!(s.accept_heartbeat(&tampered, at(20 * DAY)).is_err());
        assert!(s.accept_heartbeat(&bytes[..50], at(20 * DAY)).is_err());
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
        assert_eq!(s.next_deadline(at(1_234)), Some(warn));
        assert_eq!(s.next_deadline(minus(warn, 1)), Some(warn));
        assert_eq!(s.next_deadline(warn), Some(expires));
        assert_eq!(s.next_deadline(expires), None);
        // While expiring soon, still linked.
        assert!(s.is_linked(minus(expires, 1)));

        // A heartbeat during the warning moves both instants.
        let hb_time = plus(warn, 10);
        let hb = account.heartbeat(hb_time).to_bytes();
        let status = s.accept_heartbeat(&hb, hb_time).unwrap();
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
    let confirm = p.companion.receive_grant(&grant, t_grant).unwrap();
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
    assert_eq!(
        start(&mut account, "fifth", &mut rng, minus(deadline, 1)).err(),
        Some(RegistryError::DeviceLimitReached { limit: 4 })
    );

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
    let confirm = p.companion.receive_grant(&grant, at(0)).unwrap();
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

    // The primary is active; that does not keep an idle companion.
    account.heartbeat(at(6 * DAY));
    account.companion_seen(a, at(5 * DAY)).unwrap();
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

    let old_hb = PrimaryHeartbeat::sign(account.key(), at(2 * DAY)).to_bytes();
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
            assert!(s.accept_heartbeat(&old_hb, t).is_err());
            let _ = s.next_deadline(t);
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
        c.poll(at(100 * DAY), &mut rng),
        Some(CompanionEvent::Failed(_))
    ));
    let failed = c.state();
    assert_eq!(c.poll(at(0), &mut rng), None);
    assert_eq!(c.poll(Timestamp::EPOCH, &mut rng), None);
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
    corruptions.push(
        text.replacen("\"version\":1", "\"version\":2", 1)
            .into_bytes(),
    );
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
    let (mut primary, hello) = account.scan(&text, rng, t).unwrap();
    out.push(Out::Bytes(hello.clone()));
    let request = c.receive_hello(&hello, t).unwrap();
    out.push(Out::Bytes(request.clone()));
    primary.receive_request(&request, t).unwrap();
    let grant = account.grant(&mut primary, rng, plus(t, 1)).unwrap();
    out.push(Out::Bytes(grant.clone()));
    let confirm = c.receive_grant(&grant, plus(t, 2)).unwrap();
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
    let confirm = p.companion.receive_grant(&grant, at(10)).unwrap();
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
            let hb = PrimaryHeartbeat::sign(restored.key(), at(DAY)).to_bytes();
            panic!(
                "corrupted key restored: account {:?} became {:?}; companion answers {:?}",
                account.account_id(),
                restored.account_id(),
                session.accept_heartbeat(&hb, at(DAY))
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
        .accept_device_list(&account.device_list().to_bytes(), at(DAY))
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
        shadow.poll(at(60 * SECOND), &mut r1),
        c_show.poll(at(60 * SECOND), &mut r2)
    );
    assert_eq!(
        shadow.offer().map(|o| o.to_text()),
        c_show.offer().map(|o| o.to_text())
    );
    assert_corruptions_refused("companion (showing)", &showing, Companion::restore);

    let text = companion.offer().unwrap().to_text();
    let (mut primary, hello) = account.scan(&text, &mut rng, at(SECOND)).unwrap();
    let c_show_request = Companion::restore(&showing)
        .unwrap()
        .receive_hello(&hello, at(2 * SECOND))
        .unwrap();
    let request = companion.receive_hello(&hello, at(2 * SECOND)).unwrap();
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
        restored.receive_hello(&hello, at(3 * SECOND)),
        companion.clone().receive_hello(&hello, at(3 * SECOND))
    );

    primary.receive_request(&request, at(3 * SECOND)).unwrap();
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
    let confirm = companion.receive_grant(&grant, at(5 * SECOND)).unwrap();
    let confirm2 = restored.receive_grant(&grant, at(5 * SECOND)).unwrap();
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
        late2.poll(deadline, &mut rng),
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
    let mut restored = LinkedSession::restore(&saved).unwrap();
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
    let foreign = PrimaryHeartbeat::sign(other.key(), at(7 * DAY)).to_bytes();
    let run = |s: &mut LinkedSession| -> Vec<String> {
        let mut out = Vec::new();
        out.push(format!("{:?}", s.status(at(13 * DAY))));
        out.push(format!("{:?}", s.accept_heartbeat(&hb, at(5 * DAY))));
        out.push(format!("{:?}", s.accept_heartbeat(&foreign, at(7 * DAY))));
        out.push(format!("{:?}", s.accept_device_list(&list, at(6 * DAY))));
        out.push(format!("{:?}", s.accept_device_list(&list, at(6 * DAY))));
        for d in [13, 18, 19, 20, 21] {
            out.push(format!("{:?}", s.status(at(d * DAY))));
            out.push(format!("{:?}", s.next_deadline(at(d * DAY))));
        }
        out.push(format!("{:?}", s.poll(at(20 * DAY))));
        out.push(format!("{:?}", s.status(at(DAY))));
        out.push(format!("{:?}", s.accept_heartbeat(&hb, at(5 * DAY))));
        out.push(String::from_utf8(s.save().unwrap()).unwrap());
        out
    };
    let a = run(&mut s2);
    let b = run(&mut restored);
    assert_eq!(a, b);
    assert!(a[0].starts_with("ExpiringSoon"), "{}", a[0]);
    assert!(a[1].starts_with("Ok(Linked"), "{}", a[1]);
    assert!(a.iter().any(|l| l.contains("LoggedOut")));

    assert_corruptions_refused("linked session", &saved, LinkedSession::restore);
    let text = std::str::from_utf8(&saved).unwrap();
    // Identity, certificate and device list are checked against each other.
    for field in ["identity", "certificate", "device_list"] {
        assert!(
            LinkedSession::restore(&flip_b64(&saved, field_range(text, field))).is_err(),
            "flipped {field} restored"
        );
    }
}

#[test]
fn offer_display_save_restore_rotates_identically() {
    let policy = Policy::default();
    let mut rng = rng(16);
    let mut display = OfferDisplay::new(&policy, &mut rng, at(0));
    assert!(display.poll(at(61 * SECOND), &mut rng).is_some());

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
        let e1 = display.poll(t, &mut r1);
        let e2 = restored.poll(t, &mut r2);
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
