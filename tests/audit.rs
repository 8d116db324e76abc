//! The audit trail through the public API: a real lifecycle is recorded,
//! exported as JSON Lines, and every kind of tampering is detected.

use devicelink::audit::{Actor, AuditError, AuditEvent, AuditLog};
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, LogoutReason, Policy, Timestamp,
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
        let mut c = Companion::new(
            DeviceIdentity::generate(&mut rng),
            DeviceLabel::new(*name).unwrap(),
            &policy,
            &mut rng,
            now,
        );
        let text = c.offer().unwrap().to_text();
        log.offer_shown(&text, now).unwrap();
        let (mut p, hello) = account.scan(&text, &mut rng, now).unwrap();
        let request = c.receive_hello(&hello, now).unwrap();
        let asked = p.receive_request(&request, now).unwrap();
        log.link_requested(&asked, now).unwrap();
        let grant = account.grant(&mut p, &mut rng, now).unwrap();
        let confirm = c.receive_grant(&grant, now).unwrap();
        account.confirm(&mut p, &confirm, now).unwrap();
        log.record_registry(&mut account, now).unwrap();
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

fn lines(log: &AuditLog) -> Vec<String> {
    log.to_json_lines()
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn load(lines: &[String]) -> Result<AuditLog, AuditError> {
    AuditLog::from_json_lines(&lines.join("\n"))
}

#[test]
fn records_who_did_what_and_verifies() {
    let (account, log) = trail();
    let covered = log.verify(&account.account_id()).unwrap();
    assert_eq!(covered as usize, log.len() - 1);
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
    let back = AuditLog::from_json_lines(&log.to_json_lines().unwrap()).unwrap();
    assert_eq!(back, log);
}

#[test]
fn every_edit_of_every_entry_is_detected() {
    let (_, log) = trail();
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
                load(&copy).is_err(),
                "edit at line {i} pos {pos} undetected"
            );
        }
    }
}

#[test]
fn removal_reordering_insertion_and_a_recomputed_hash_are_detected() {
    let (account, log) = trail();
    let l = lines(&log);
    for i in 1..l.len() {
        let mut removed = l.clone();
        removed.remove(i);
        if i < l.len() - 1 {
            assert!(
                matches!(load(&removed), Err(AuditError::OutOfSequence { .. })),
                "removal of {i}"
            );
        }
        let mut inserted = l.clone();
        inserted.insert(i, l[i].clone());
        assert!(load(&inserted).is_err(), "insertion at {i}");
        if i + 1 < l.len() {
            let mut swapped = l.clone();
            swapped.swap(i, i + 1);
            assert!(load(&swapped).is_err(), "swap at {i}");
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
    assert!(matches!(load(&mixed), Err(AuditError::BrokenChain { .. })));
    // Truncating the tail and forging a checkpoint needs the account key.
    let mut truncated = l[..l.len() - 3].to_vec();
    truncated.push(l[l.len() - 1].replace(
        &format!("\"seq\":{}", log.len() - 1),
        &format!("\"seq\":{}", log.len() - 3),
    ));
    assert!(load(&truncated).is_err());
    // Garbage never panics.
    for junk in ["", "{}", "not json", "{\"account\":\"AAAA\"}\n{\"seq\":0}"] {
        assert!(AuditLog::from_json_lines(junk).is_err());
    }
}
