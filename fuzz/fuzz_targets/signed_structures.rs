//! Arbitrary bytes as a device certificate, a signed device list and a
//! primary heartbeat, and as updates to the fixture's linked session (which
//! holds the account's list version 2).
//!
//! Properties:
//! - the three decoders are total, and what they accept re-encodes to the
//!   exact input bytes (one encoding per signed value); a certificate is its
//!   index followed by a list that names it;
//! - `SignedDeviceList::check_successor_of` and
//!   `PrimaryHeartbeat::check_list` are total (also against a held version
//!   and hash taken from the input), and agree with what the session does;
//! - the session refuses anything not signed by its account, not newer, a
//!   fork of its list (`Fork`), or a heartbeat naming a newer list than the
//!   one it holds (`NeedDeviceList`); a refusal changes nothing (`save()`
//!   bytes), except the documented case of signed activity at or after the
//!   lease's end, which logs the session out;
//! - an accepted list re-encodes to the input, is held afterwards, only moves
//!   the lease forward, and reports exactly the devices added and removed;
//!   the session's `save → restore → save` stays a fixed point.
#![no_main]

use devicelink::certificate::{CertificateError, MAX_LIST_DEVICES, MAX_LIST_REMOVED};
use devicelink::session::SessionError;
use devicelink::Policy;
use devicelink::{
    DeviceCertificate, LinkedSession, PrimaryHeartbeat, SessionStatus, SignedDeviceList,
};
use devicelink_fuzz::{fixture, now};
use libfuzzer_sys::fuzz_target;

/// `save → restore → save` of a session is byte-identical.
fn fixed_point(what: &str, s: &LinkedSession) {
    let first = s.save().expect("save");
    let back = LinkedSession::restore(&first, &Policy::default())
        .unwrap_or_else(|e| panic!("{what}: its own save does not restore: {e}"));
    assert_eq!(back.save().expect("save"), first, "{what}: save changed");
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let now = now();
    let held = f.session.device_list();
    let (held_version, held_hash) = (held.version(), held.hash());

    // A held version and hash taken from the input, for the checks alone.
    let mut any_hash = [0u8; 32];
    let any_version = data
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes);
    if let Some(b) = data.get(8..40) {
        any_hash.copy_from_slice(b);
    }

    if let Ok(cert) = DeviceCertificate::from_bytes(data) {
        assert_eq!(cert.to_bytes(), data, "certificate re-encodes differently");
        let list = cert.device_list();
        assert!(
            list.contains(cert.index(), &cert.device()),
            "a certificate whose list does not name it"
        );
        assert_eq!(cert.account(), list.account());
        assert_eq!(
            Some(cert.issued_at()),
            list.entry(cert.index()).map(|e| e.linked_at)
        );
        assert_eq!(&data[..4], &cert.index().0.to_be_bytes());
        assert_eq!(list.to_bytes(), &data[4..]);
        let _ = list.check_successor_of(held_version, &held_hash);
    }
    let list = SignedDeviceList::from_bytes(data);
    if let Ok(list) = &list {
        assert_eq!(list.to_bytes(), data, "device list re-encodes differently");
        assert!(list.devices().len() <= MAX_LIST_DEVICES);
        assert!(list.removed().len() <= MAX_LIST_REMOVED);
        assert!(list.distinct_devices() <= list.devices().len());
        let _ = list.check_successor_of(any_version, &any_hash);
        let _ = list.check_successor_of(u64::MAX, &any_hash);
        let _ = list.check_successor_of(0, &any_hash);
        // A list is never its own successor.
        assert!(list
            .check_successor_of(list.version(), &list.hash())
            .is_err());
    }
    // Totality on the session's own list too.
    let _ = held.check_successor_of(any_version, &any_hash);
    let heartbeat = PrimaryHeartbeat::from_bytes(data);
    if let Ok(hb) = &heartbeat {
        assert_eq!(hb.to_bytes(), data, "heartbeat re-encodes differently");
        let _ = hb.check_list(any_version, &any_hash);
        let _ = hb.check_list(u64::MAX, &any_hash);
        // Holding a newer list than the one named: always fine.
        if let Some(newer) = hb.list_version().checked_add(1) {
            assert_eq!(hb.check_list(newer, &any_hash), Ok(()));
        }
    }

    let account = f.session.account();
    let lease = f.session.expires_at();

    let mut s = f.session.clone();
    match SignedDeviceList::from_bytes(data)
        .map_err(SessionError::from)
        .and_then(|l| s.accept_device_list(&l, now))
    {
        Ok(change) => {
            let list = list.as_ref().expect("accepted list decodes");
            assert_eq!(list.account(), account, "accepted another account's list");
            assert!(list.version() > held_version);
            assert_eq!(list.check_successor_of(held_version, &held_hash), Ok(()));
            if list.version() == held_version + 1 {
                assert_eq!(
                    list.previous(),
                    held_hash,
                    "accepted an unchained successor"
                );
            }
            assert_eq!(s.device_list(), list);
            assert_eq!(
                s.device_list().to_bytes(),
                data,
                "accepted list re-encodes differently"
            );
            assert!(s.expires_at() >= lease, "a device list shortened the lease");
            let listed = list.contains(f.session.index(), &f.session.device_key());
            assert_eq!(
                matches!(change.status, SessionStatus::LoggedOut { .. }),
                !listed,
                "revocation and listing disagree"
            );
            assert_eq!(change.status, s.status(now));
            for e in &change.added {
                assert!(list.contains(e.index, &e.device));
                assert!(
                    !held.contains(e.index, &e.device),
                    "reported an old device as added"
                );
            }
            for d in &change.removed {
                assert!(held.contains(d.entry.index, &d.entry.device));
                assert!(!list.contains(d.entry.index, &d.entry.device));
            }
            let added = list
                .devices()
                .iter()
                .filter(|e| !held.contains(e.index, &e.device))
                .count();
            let removed = held
                .devices()
                .iter()
                .filter(|e| !list.contains(e.index, &e.device))
                .count();
            assert_eq!((change.added.len(), change.removed.len()), (added, removed));
            fixed_point("session after a list", &s);
        }
        Err(SessionError::LoggedOut(_)) => {
            let list = list.as_ref().expect("only a signed list can log out");
            assert_eq!(list.account(), account);
            assert!(
                list.issued_at() >= lease,
                "logged out by activity inside the lease"
            );
            assert!(!s.is_linked(now));
            fixed_point("session logged out by a list", &s);
        }
        Err(e) => {
            if let Ok(list) = &list {
                if list.account() == account {
                    assert_eq!(
                        list.check_successor_of(held_version, &held_hash).err(),
                        match &e {
                            SessionError::Certificate(c) => Some(c.clone()),
                            SessionError::LoggedOut(_) => None,
                        },
                        "the session and check_successor_of disagree"
                    );
                }
            }
            assert_eq!(
                s.save().expect("save"),
                f.saved.session,
                "refused device list ({e}) changed the session"
            );
        }
    }

    let mut s = f.session.clone();
    match PrimaryHeartbeat::from_bytes(data)
        .map_err(SessionError::from)
        .and_then(|h| s.accept_heartbeat(&h, now))
    {
        Ok(status) => {
            let hb = heartbeat.as_ref().expect("accepted heartbeat decodes");
            assert_eq!(
                hb.account(),
                account,
                "accepted another account's heartbeat"
            );
            assert!(
                hb.list_version() <= held_version,
                "accepted a heartbeat naming a newer list"
            );
            assert_eq!(hb.check_list(held_version, &held_hash), Ok(()));
            assert!(!matches!(status, SessionStatus::LoggedOut { .. }));
            assert_eq!(
                s.last_primary_activity(),
                f.session.last_primary_activity().max(hb.at())
            );
            assert!(s.expires_at() >= lease, "a heartbeat shortened the lease");
            fixed_point("session after a heartbeat", &s);
        }
        Err(SessionError::LoggedOut(_)) => {
            let hb = heartbeat
                .as_ref()
                .expect("only a signed heartbeat can log out");
            assert_eq!(hb.account(), account);
            assert!(hb.at() >= lease, "logged out by activity inside the lease");
            fixed_point("session logged out by a heartbeat", &s);
        }
        Err(e) => {
            if let Ok(hb) = &heartbeat {
                if hb.account() == account && hb.list_version() > held_version {
                    assert_eq!(
                        e,
                        SessionError::Certificate(CertificateError::NeedDeviceList {
                            version: hb.list_version()
                        }),
                        "a heartbeat naming a newer list"
                    );
                }
            }
            assert_eq!(
                s.save().expect("save"),
                f.saved.session,
                "refused heartbeat ({e}) changed the session"
            );
        }
    }
});
