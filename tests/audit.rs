//! The audit trail through the public API: a real lifecycle is recorded,
//! exported as JSON Lines, and every kind of tampering is detected, including
//! (protocol v2) a cut or rewritten tail, against the anchor the account
//! signs into every device list and heartbeat.

use devicelink::audit::{Actor, AuditError, AuditEvent, AuditLog, AuditReport, SignedAnchor};
use devicelink::{
    Account, AccountId, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, LogoutReason, Policy,
    PrimaryHeartbeat, SignedDeviceList, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn t(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

/// Links two companions, revokes one, lets the primary go silent: a trail
/// with grants, links, a revocation, expiries and a checkpoint in the middle.
fn trail() -> (Account, AuditLog) {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, t(0));
    let mut log = AuditLog::new(account.account_id());
    for (i, name) in ["Laptop", "Browser"].iter().enumerate() {
        let now = t(1_000 * (i as u64 + 1));
        link(&mut account, &mut log, &mut rng, name, now);
    }
    log.checkpoint(account.key(), t(5_000)).unwrap();
    account.revoke(DeviceIndex(1), t(6_000)).unwrap();
    log.record_registry(&mut account, t(6_000)).unwrap();
    log.record_registry(&mut account, t(6_000 + 15 * 86_400_000))
        .unwrap();
    log.checkpoint(account.key(), t(7_000 + 15 * 86_400_000))
        .unwrap();
    (account, log)
}

/// Links one companion called `name` at `now`, recording the offer, the
/// request and the registry's events.
fn link(
    account: &mut Account,
    log: &mut AuditLog,
    rng: &mut ChaCha20Rng,
    name: &str,
    now: Timestamp,
) {
    let policy = account.policy().clone();
    let mut c = Companion::new(
        DeviceIdentity::generate(rng),
        DeviceLabel::new(name).unwrap(),
        &policy,
        rng,
        now,
    );
    let text = c.offer().unwrap().to_text();
    log.offer_shown(&text, now).unwrap();
    account.open_link_intent(now);
    let (mut p, hello) = account.scan(&text, rng, now).unwrap();
    let request = c.receive_hello(&hello, rng, now).unwrap();
    let asked = account.receive_request(&mut p, &request, rng, now).unwrap();
    log.link_requested(&asked, now).unwrap();
    let grant = account.grant(&mut p, rng, now).unwrap();
    c.receive_grant(&grant, now).unwrap();
    let confirm = c.consent(now).unwrap();
    account.confirm(&mut p, &confirm, now).unwrap();
    log.record_registry(account, now).unwrap();
}

/// What a verifier holds: the anchor of a device list or heartbeat it
/// received as bytes and verified.
fn list_anchor(list: &SignedDeviceList) -> SignedAnchor {
    SignedAnchor::from(&SignedDeviceList::from_bytes(&list.to_bytes()).unwrap())
}

fn heartbeat_anchor(hb: &PrimaryHeartbeat) -> SignedAnchor {
    SignedAnchor::from(&PrimaryHeartbeat::from_bytes(&hb.to_bytes()).unwrap())
}

fn other_account() -> AccountId {
    Account::generate(Policy::default(), &mut ChaCha20Rng::seed_from_u64(77), t(0)).account_id()
}

fn lines(log: &AuditLog) -> Vec<String> {
    log.to_json_lines()
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn load(lines: &[String], account: &AccountId) -> Result<AuditLog, AuditError> {
    AuditLog::from_json_lines(&lines.join("\n"), account)
}

#[test]
fn records_who_did_what_and_verifies() {
    let (account, log) = trail();
    // The trail ends with a checkpoint: v2 counts the checkpoint entry itself
    // as covered by its signature (v1 reported the entries before it).
    assert_eq!(
        log.verify(&account.account_id(), None),
        Ok(AuditReport {
            entries: log.len() as u64,
            anchored: log.len() as u64,
            unanchored: 0,
        })
    );
    assert!(matches!(
        log.entries().last().unwrap().event,
        AuditEvent::Checkpoint { .. }
    ));
    let events: Vec<&AuditEvent> = log.entries().iter().map(|e| &e.event).collect();
    assert!(events.iter().any(|e| matches!(e, AuditEvent::Granted { index: DeviceIndex(2), label, .. } if label == "Browser")));
    let revoked = log
        .entries()
        .iter()
        .find(|e| {
            matches!(
                e.event,
                AuditEvent::LoggedOut {
                    reason: LogoutReason::Revoked,
                    ..
                }
            )
        })
        .unwrap();
    assert_eq!(revoked.actor, Actor::Primary);
    assert_eq!(revoked.at, t(6_000));
    let expired = log
        .entries()
        .iter()
        .find(|e| {
            matches!(
                e.event,
                AuditEvent::LoggedOut {
                    reason: LogoutReason::PrimaryOffline,
                    ..
                }
            )
        })
        .unwrap();
    assert_eq!(expired.actor, Actor::Policy);
    // Logged out exactly at last activity (6 s, the revocation) + 14 days.
    assert_eq!(expired.at, t(6_000 + 14 * 86_400_000));
    let back =
        AuditLog::from_json_lines(&log.to_json_lines().unwrap(), &account.account_id()).unwrap();
    assert_eq!(back, log);
}

#[test]
fn every_edit_of_every_entry_is_detected() {
    let (account, log) = trail();
    let id = account.account_id();
    let l = lines(&log);
    for i in 1..l.len() {
        // Change one character of the entry's body (not its hash fields).
        let line = &l[i];
        let cut = line.find(",\"prev\"").unwrap();
        for pos in (1..cut).step_by(7) {
            let mut bytes = line.clone().into_bytes();
            bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
            let Ok(edited) = String::from_utf8(bytes) else {
                continue;
            };
            let mut copy = l.clone();
            copy[i] = edited;
            assert!(
                load(&copy, &id).is_err(),
                "edit at line {i} pos {pos} undetected"
            );
        }
    }
}

#[test]
fn removal_reordering_insertion_and_a_recomputed_hash_are_detected() {
    let (account, log) = trail();
    let id = account.account_id();
    let l = lines(&log);
    for i in 1..l.len() {
        let mut removed = l.clone();
        removed.remove(i);
        if i < l.len() - 1 {
            assert!(
                matches!(load(&removed, &id), Err(AuditError::OutOfSequence { .. })),
                "removal of {i}"
            );
        }
        let mut inserted = l.clone();
        inserted.insert(i, l[i].clone());
        assert!(load(&inserted, &id).is_err(), "insertion at {i}");
        if i + 1 < l.len() {
            let mut swapped = l.clone();
            swapped.swap(i, i + 1);
            assert!(load(&swapped, &id).is_err(), "swap at {i}");
        }
    }
    // An attacker who edits an entry and recomputes its hash breaks the link
    // to the next entry; editing the last entries is caught by the checkpoint.
    let mut forged = AuditLog::new(account.account_id());
    for e in &log.entries()[..3] {
        let mut event = e.event.clone();
        if let AuditEvent::Granted { label, .. } = &mut event {
            *label = "Attacker".into();
        }
        forged.append(e.actor, event, e.at).unwrap();
    }
    let mut mixed = lines(&forged);
    mixed.extend_from_slice(&l[4..]);
    assert!(matches!(
        load(&mixed, &id),
        Err(AuditError::BrokenChain { .. })
    ));
    // Truncating the tail and forging a checkpoint needs the account key.
    let mut truncated = l[..l.len() - 3].to_vec();
    truncated.push(l[l.len() - 1].replace(
        &format!("\"seq\":{}", log.len() - 1),
        &format!("\"seq\":{}", log.len() - 3),
    ));
    assert!(load(&truncated, &id).is_err());
    // Garbage never panics.
    for junk in ["", "{}", "not json", "{\"account\":\"AAAA\"}\n{\"seq\":0}"] {
        assert!(AuditLog::from_json_lines(junk, &id).is_err());
    }
}

/// `trail()`, then anchored: the registry gets the trail's head (including
/// the final checkpoint) and signs a heartbeat that carries it.
fn anchored_trail() -> (Account, AuditLog, PrimaryHeartbeat) {
    let (mut account, mut log) = trail();
    let now = t(8_000 + 15 * 86_400_000);
    log.record_registry(&mut account, now).unwrap();
    let hb = account.heartbeat(now);
    (account, log, hb)
}

#[test]
fn verification_takes_the_expected_account_never_the_files() {
    let (account, log, hb) = anchored_trail();
    let id = account.account_id();
    let other = other_account();
    let text = log.to_json_lines().unwrap();
    // Loading for another account than the file's: refused.
    assert_eq!(
        AuditLog::from_json_lines(&text, &other),
        Err(AuditError::WrongAccount)
    );
    // A file whose header names another account is refused for ours, even
    // though its entries chain.
    let other_header = AuditLog::new(other).to_json_lines().unwrap();
    let mut relabelled = lines(&log);
    relabelled[0] = other_header.lines().next().unwrap().to_string();
    assert_ne!(relabelled[0], lines(&log)[0]);
    assert_eq!(load(&relabelled, &id), Err(AuditError::WrongAccount));
    // The same file loads for the account it names.
    assert_eq!(AuditLog::from_json_lines(&text, &id).unwrap().account(), id);
    // Verifying for another account, or against another account's anchor.
    assert_eq!(log.verify(&other, None), Err(AuditError::WrongAccount));
    assert_eq!(
        log.verify(&other, Some(heartbeat_anchor(&hb))),
        Err(AuditError::WrongAccount)
    );
    let mut rng = ChaCha20Rng::seed_from_u64(78);
    let mut stranger = Account::generate(Policy::default(), &mut rng, t(0));
    let foreign = heartbeat_anchor(&stranger.heartbeat(t(1)));
    assert_eq!(foreign.account(), stranger.account_id());
    assert_eq!(
        log.verify(&id, Some(foreign)),
        Err(AuditError::WrongAccount)
    );
    // A trail recorded for another account refuses to record ours.
    let mut wrong = AuditLog::new(other);
    assert_eq!(
        wrong.record_registry(&mut stranger, t(2)),
        Err(AuditError::WrongAccount)
    );
    assert_eq!(
        wrong.checkpoint(account.key(), t(2)),
        Err(AuditError::WrongAccount)
    );
}

#[test]
fn a_cut_tail_is_truncated_against_the_latest_heartbeat() {
    let (account, log, hb) = anchored_trail();
    let id = account.account_id();
    let n = log.len() as u64;
    let anchor = heartbeat_anchor(&hb);
    assert_eq!(anchor.anchor(), log.anchor());
    assert_eq!(
        log.verify(&id, Some(anchor)),
        Ok(AuditReport {
            entries: n,
            anchored: n,
            unanchored: 0
        })
    );
    let l = lines(&log);
    // Remove the final checkpoint, then more of the tail: every cut prefix
    // still chains (and loads), but the heartbeat vouches for more entries.
    for cut in 1..l.len() - 1 {
        let kept = &l[..l.len() - cut];
        let cut_log = load(kept, &id).unwrap();
        let have = n - cut as u64;
        assert_eq!(cut_log.len() as u64, have);
        assert_eq!(
            cut_log.verify(&id, Some(anchor)),
            Err(AuditError::Truncated { anchored: n, have }),
            "cut of {cut}"
        );
        // Without the anchor the cut goes unnoticed.
        let report = cut_log.verify(&id, None).unwrap();
        assert_eq!(report.entries, have);
        assert_eq!(report.anchored + report.unanchored, have);
    }
}

#[test]
fn a_cut_tail_is_truncated_against_the_latest_device_list() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut account = Account::generate(Policy::default(), &mut rng, t(0));
    let id = account.account_id();
    let mut log = AuditLog::new(id);
    link(&mut account, &mut log, &mut rng, "Laptop", t(1_000));
    link(&mut account, &mut log, &mut rng, "Browser", t(2_000));
    log.checkpoint(account.key(), t(3_000)).unwrap();
    // Anchor the trail, checkpoint included; the next list carries it.
    log.record_registry(&mut account, t(3_000)).unwrap();
    let n = log.len() as u64;
    let before = account.device_list_version();
    account.revoke(DeviceIndex(1), t(4_000)).unwrap();
    let list = account.device_list().clone();
    assert_eq!(list.version(), before + 1);
    assert_eq!(list.audit(), log.anchor());
    assert_eq!(list.audit().entries, n);
    let anchor = list_anchor(&list);
    // The revocation's entries come after the anchor: unanchored.
    log.record_registry(&mut account, t(4_000)).unwrap();
    let total = log.len() as u64;
    assert!(total > n);
    assert_eq!(
        log.verify(&id, Some(anchor)),
        Ok(AuditReport {
            entries: total,
            anchored: n,
            unanchored: total - n
        })
    );
    // Cutting the unanchored tail is not detectable (nothing signed it)...
    let l = lines(&log);
    let at_anchor = &l[..=n as usize];
    assert_eq!(
        load(at_anchor, &id).unwrap().verify(&id, Some(anchor)),
        Ok(AuditReport {
            entries: n,
            anchored: n,
            unanchored: 0
        })
    );
    // ...but cutting into the anchored part, checkpoint first, is.
    for cut in 1..=3u64 {
        let kept = &l[..(n - cut) as usize + 1];
        assert_eq!(
            load(kept, &id).unwrap().verify(&id, Some(anchor)),
            Err(AuditError::Truncated {
                anchored: n,
                have: n - cut
            })
        );
    }
}

#[test]
fn a_rewritten_tail_with_recomputed_hashes_is_an_anchor_mismatch() {
    let (account, log, hb) = anchored_trail();
    let id = account.account_id();
    let anchor = heartbeat_anchor(&hb);
    // Rewrite the revocation as an idle logout, recomputing every hash after
    // it, and drop the final checkpoint (it would not verify any more); a
    // fresh unsigned entry keeps the length the anchor names.
    assert!(matches!(
        log.entries().last().unwrap().event,
        AuditEvent::Checkpoint { .. }
    ));
    let mut forged = AuditLog::new(id);
    let mut rewritten = false;
    for e in &log.entries()[..log.len() - 1] {
        let mut event = e.event.clone();
        if let AuditEvent::LoggedOut { reason, .. } = &mut event {
            if *reason == LogoutReason::Revoked {
                *reason = LogoutReason::CompanionIdle;
                rewritten = true;
            }
        }
        forged.append(e.actor, event, e.at).unwrap();
    }
    assert!(rewritten);
    forged
        .append(
            Actor::Policy,
            AuditEvent::DeviceListUpdated { version: 99 },
            t(9_000 + 15 * 86_400_000),
        )
        .unwrap();
    assert_eq!(forged.len(), log.len());
    // The forged file loads: its chain and its earlier checkpoint verify...
    let reloaded = load(&lines(&forged), &id).unwrap();
    assert!(reloaded.verify(&id, None).is_ok());
    // ...but not against what the account signed.
    assert_eq!(
        reloaded.verify(&id, Some(anchor)),
        Err(AuditError::AnchorMismatch {
            entries: anchor.anchor().entries
        })
    );
    // Entries appended after the anchor leave the anchored part intact.
    let mut extended = log.clone();
    extended
        .append(
            Actor::Primary,
            AuditEvent::DeviceListUpdated { version: 7 },
            t(1),
        )
        .unwrap();
    let report = extended.verify(&id, Some(anchor)).unwrap();
    assert_eq!(report.unanchored, 1);
}

#[test]
fn entries_after_the_last_anchor_are_reported_unanchored() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut account = Account::generate(Policy::default(), &mut rng, t(0));
    let id = account.account_id();
    let mut log = AuditLog::new(id);
    link(&mut account, &mut log, &mut rng, "Laptop", t(1_000));
    let hb = account.heartbeat(t(1_500));
    let first = log.len() as u64;
    assert_eq!(hb.audit().entries, first);
    link(&mut account, &mut log, &mut rng, "Browser", t(2_000));
    let total = log.len() as u64;
    assert!(total > first);
    assert_eq!(
        log.verify(&id, Some(heartbeat_anchor(&hb))),
        Ok(AuditReport {
            entries: total,
            anchored: first,
            unanchored: total - first
        })
    );
    // Without any anchor or checkpoint, nothing is covered.
    assert_eq!(
        log.verify(&id, None),
        Ok(AuditReport {
            entries: total,
            anchored: 0,
            unanchored: total
        })
    );
    // A checkpoint covers more than an older anchor: the larger one counts.
    log.checkpoint(account.key(), t(3_000)).unwrap();
    let total = log.len() as u64;
    assert_eq!(
        log.verify(&id, Some(heartbeat_anchor(&hb))),
        Ok(AuditReport {
            entries: total,
            anchored: total,
            unanchored: 0
        })
    );
}

#[test]
fn the_anchor_travels_from_record_registry_to_the_next_heartbeat() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut account = Account::generate(Policy::default(), &mut rng, t(0));
    let id = account.account_id();
    let mut log = AuditLog::new(id);
    link(&mut account, &mut log, &mut rng, "Laptop", t(1_000));
    link(&mut account, &mut log, &mut rng, "Browser", t(2_000));
    account.revoke(DeviceIndex(2), t(3_000)).unwrap();
    log.record_registry(&mut account, t(3_000)).unwrap();
    assert_eq!(account.audit_anchor(), log.anchor());
    let hb = account.heartbeat(t(4_000));
    assert_eq!(hb.audit(), log.anchor());
    let n = log.len() as u64;
    assert_eq!(
        log.verify(&id, Some(heartbeat_anchor(&hb))),
        Ok(AuditReport {
            entries: n,
            anchored: n,
            unanchored: 0
        })
    );
    // Also through the exported file.
    let reloaded = AuditLog::from_json_lines(&log.to_json_lines().unwrap(), &id).unwrap();
    assert_eq!(
        reloaded.verify(&id, Some(heartbeat_anchor(&hb))),
        Ok(AuditReport {
            entries: n,
            anchored: n,
            unanchored: 0
        })
    );
    // An empty trail matches the default anchor of a fresh account.
    let mut fresh = Account::generate(Policy::default(), &mut rng, t(0));
    let empty = AuditLog::new(fresh.account_id());
    let hb = fresh.heartbeat(t(1));
    assert_eq!(
        empty.verify(&fresh.account_id(), Some(heartbeat_anchor(&hb))),
        Ok(AuditReport {
            entries: 0,
            anchored: 0,
            unanchored: 0
        })
    );
}
