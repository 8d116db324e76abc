//! Regression tests for the findings of the protocol v2 review: each failed
//! before its fix. (Finding 3, a late `release` cancelling a newer
//! reservation, is a documented limitation for now: `docs/PROTOCOL.md` §12.)

use devicelink::{
    Account, Directory, DirectoryError, LinkedSession, LogoutReason, Policy, SessionStatus,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

mod support;
use support::*;

/// Finding 1. `Directory::apply_heartbeat` stores the heartbeat's list hash
/// as the hash of the list it holds. A heartbeat naming an *older* list
/// (accepted by design, PROTOCOL.md §12 item 28) whose `at` is later than the
/// slot's last activity (a primary restored from an old save, §9.6 / SECURITY
/// §7) overwrites the held hash with the older list's. From then on the
/// genuine primary's next list is refused as a `Fork`, the slot is marked
/// `forked`, and every later genuine list is refused too: a revocation never
/// reaches the directory, while the restored phone's heartbeats keep the
/// revoked device's lease alive.
#[test]
fn review_directory_heartbeat_naming_an_older_list_must_not_replace_the_held_hash() {
    let mut rng = rng(1);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let laptop = link(&mut account, "laptop", &mut rng, at(0));
    let tablet = link(&mut account, "tablet", &mut rng, at(SECOND));
    let mut dir = Directory::new(account.policy());
    assert_eq!(
        dir.apply_device_list(account.device_list(), at(SECOND))
            .map(|a| a.changed()),
        Ok(true)
    );
    // An old backup of the phone, taken now (version N).
    let backup = account.save().unwrap();

    // The genuine phone revokes the tablet: version N+1, applied.
    account.revoke(tablet.index(), at(DAY)).unwrap();
    assert_eq!(
        dir.apply_device_list(account.device_list(), at(DAY))
            .map(|a| a.changed()),
        Ok(true)
    );
    assert!(!dir.is_linked(
        &account.account_id(),
        tablet.index(),
        &tablet.device_key(),
        at(DAY)
    ));

    // The old backup, restored on another phone, heartbeats: it names list N
    // (older than the held N+1): accepted by design, extends to its `at`.
    let mut restored = Account::restore(&backup).unwrap();
    let hb = restored.heartbeat(at(2 * DAY));
    assert_eq!(dir.apply_heartbeat(&hb, at(2 * DAY)), Ok(()));

    // The genuine phone now revokes the laptop too: version N+2, chained to
    // N+1, which the directory holds. It must apply.
    account.revoke(laptop.index(), at(3 * DAY)).unwrap();
    assert_eq!(
        dir.apply_device_list(account.device_list(), at(3 * DAY))
            .map(|a| a.changed()),
        Ok(true),
        "the genuine successor of the held list was refused"
    );
    assert!(!dir.is_linked(
        &account.account_id(),
        laptop.index(),
        &laptop.device_key(),
        at(3 * DAY)
    ));
}

/// Finding 2. A mutating call that first settles an expiry makes two list
/// versions (settle, then its own change); only the second can ever be
/// signed. So honest, fully published histories have gaps, and holders never
/// check the chain across them (`check_successor_of` accepts version > held +
/// 1 unchecked).
#[test]
fn review_published_lists_do_not_skip_versions() {
    let mut rng = rng(2);
    let (mut account, laptop, _tablet, published) = lost_confirm_setup(&mut rng);
    // Two minutes later the user revokes the laptop. Published next: ...
    account.revoke(laptop.index(), at(2 * 60 * SECOND)).unwrap();
    let next = account.device_list().clone();
    assert_eq!(
        next.version(),
        published.version() + 1,
        "the published history skips a version, so the chain cannot be checked"
    );
    assert_eq!(next.previous(), published.hash());
}

/// Finding 2 (consequence). The removals of the skipped version are lost: a
/// device logged out in it (here `ConfirmationTimedOut`) is told by the next
/// published list that it was `Revoked`, and other devices get
/// `DeviceLeft { reason: None }`.
#[test]
fn review_a_device_removed_in_a_settled_version_learns_the_right_reason() {
    let mut rng = rng(2);
    let (mut account, laptop, mut tablet, _published) = lost_confirm_setup(&mut rng);
    account.revoke(laptop.index(), at(2 * 60 * SECOND)).unwrap();
    let next = account.device_list().clone();
    let change = tablet
        .accept_device_list(&next, at(2 * 60 * SECOND))
        .unwrap();
    assert_eq!(
        change.status,
        SessionStatus::LoggedOut {
            reason: LogoutReason::ConfirmationTimedOut
        },
        "the tablet was never revoked"
    );
}

/// A laptop linked at 0; a tablet granted at 1 s whose Confirm is lost (the
/// companion is linked, the primary's slot stays pending and times out at
/// 61 s). Returns the list published with the tablet's grant.
fn lost_confirm_setup(
    rng: &mut ChaCha20Rng,
) -> (
    Account,
    LinkedSession,
    LinkedSession,
    devicelink::SignedDeviceList,
) {
    let mut account = Account::generate(Policy::default(), rng, at(0));
    let laptop = link(&mut account, "laptop", rng, at(0));
    let mut p = start(&mut account, "tablet", rng, at(SECOND));
    let grant = account.grant(&mut p.primary, rng, at(SECOND)).unwrap();
    p.companion.receive_grant(&grant, at(SECOND)).unwrap();
    // The tablet's user agrees; the Confirm is lost on the way.
    let _lost = p.companion.consent(at(SECOND)).unwrap();
    let tablet = p.companion.into_session().unwrap();
    let published = account.device_list().clone();
    (account, laptop, tablet, published)
}

/// Finding 2b (documentation). SECURITY.md §4 says a fork is refused by the
/// directory, "which then accepts only the chained successor", and "The
/// directory, which sees every published list, checks every link"; §9.6: "a
/// restored primary cannot re-list a revoked device by publishing higher
/// versions". The `forked` mark is cleared by the next genuine list, after
/// which a forked list two versions ahead applies unchecked and re-lists
/// the revoked device.
#[test]
fn review_directory_refuses_a_fork_two_versions_ahead_after_a_fork_was_seen() {
    let mut rng = rng(3);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let _laptop = link(&mut account, "laptop", &mut rng, at(0));
    let tablet = link(&mut account, "tablet", &mut rng, at(SECOND));
    let mut dir = Directory::new(account.policy());
    dir.apply_device_list(account.device_list(), at(SECOND))
        .unwrap();
    let backup = account.save().unwrap();
    // Genuine: revoke the tablet (N+1).
    account.revoke(tablet.index(), at(DAY)).unwrap();
    dir.apply_device_list(account.device_list(), at(DAY))
        .unwrap();
    // Restored old phone: its N+1 (a fork) is seen and refused.
    let mut restored = Account::restore(&backup).unwrap();
    let mut rng2 = ChaCha20Rng::seed_from_u64(99);
    let _other = link(&mut restored, "other", &mut rng2, at(DAY + 1));
    let fork_n1 = restored.device_list().clone();
    assert!(matches!(
        dir.apply_device_list(&fork_n1, at(DAY + 2)),
        Err(DirectoryError::Fork { .. })
    ));
    // Genuine: one more change (N+2) is applied; the `forked` mark is cleared.
    let _phone = link(&mut account, "phone", &mut rng, at(2 * DAY));
    dir.apply_device_list(account.device_list(), at(2 * DAY))
        .unwrap();
    // The restored phone goes on: revokes "other" (N+2'), links "a" (N+3'),
    // revokes it (N+4'); the relay drops N+2' and N+3'. Its newest list
    // still names the revoked tablet.
    restored.revoke(_other.index(), at(3 * DAY)).unwrap();
    let a = link(&mut restored, "a", &mut rng2, at(3 * DAY + 1));
    restored.revoke(a.index(), at(3 * DAY + 2)).unwrap();
    let fork = restored.device_list().clone();
    assert!(fork.contains(tablet.index(), &tablet.device_key()));
    let r = dir.apply_device_list(&fork, at(3 * DAY + 2));
    assert!(
        !dir.is_linked(
            &account.account_id(),
            tablet.index(),
            &tablet.device_key(),
            at(3 * DAY + 2)
        ),
        "a fork re-listed the revoked tablet at the directory ({r:?})"
    );
}

/// Finding 5 (low). An exported audit line may carry members that no hash
/// covers: `AuditEntry` flattens its event, so unknown members are ignored
/// on load and dropped from the hashed body. A trail keeper can add text to
/// the raw JSON Lines (what a person or `jq` reads) and the trail still
/// verifies against the account's anchor.
#[test]
fn review_audit_lines_with_unhashed_members_are_refused() {
    use devicelink::audit::{Actor, AuditEvent, AuditLog, SignedAnchor};
    let mut rng = rng(5);
    let mut account = Account::generate(Policy::default(), &mut rng, at(0));
    let mut log = AuditLog::new(account.account_id());
    log.append(
        Actor::Companion(devicelink::DeviceIndex(1)),
        AuditEvent::Linked {
            index: devicelink::DeviceIndex(1),
        },
        at(0),
    )
    .unwrap();
    log.record_registry(&mut account, at(1)).unwrap();
    let hb = account.heartbeat(at(2));
    let text = log.to_json_lines().unwrap();
    let tampered = text.replacen(
        "\"event\":\"linked\",",
        "\"event\":\"linked\",\"note\":\"approved by the account owner in person\",",
        1,
    );
    assert_ne!(tampered, text);
    let loaded = AuditLog::from_json_lines(&tampered, &account.account_id());
    let verified = loaded
        .as_ref()
        .map(|l| l.verify(&account.account_id(), Some(SignedAnchor::from(&hb))));
    assert!(
        !matches!(verified, Ok(Ok(_))),
        "a line with an unhashed member verified: {verified:?}"
    );
}
