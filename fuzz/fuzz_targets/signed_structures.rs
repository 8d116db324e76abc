//! Arbitrary bytes as a device certificate, a signed device list and a
//! primary heartbeat, and as updates to the fixture's linked session.
//!
//! Properties:
//! - the three decoders are total, and what they accept re-encodes to the
//!   exact input bytes (one encoding per signed value);
//! - the session refuses anything not signed by its account or not newer,
//!   and a refusal changes nothing, except the documented case of signed
//!   activity at or after the lease's end, which logs the session out;
//! - an accepted update only moves the lease forward.
#![no_main]

use devicelink::session::SessionError;
use devicelink::{DeviceCertificate, PrimaryHeartbeat, SessionStatus, SignedDeviceList};
use devicelink_fuzz::{fixture, now};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let now = now();

    if let Ok(cert) = DeviceCertificate::from_bytes(data) {
        assert_eq!(cert.to_bytes(), data, "certificate re-encodes differently");
    }
    let list = SignedDeviceList::from_bytes(data);
    if let Ok(list) = &list {
        assert_eq!(list.to_bytes(), data, "device list re-encodes differently");
        assert!(list.devices().len() <= 255);
    }
    let heartbeat = PrimaryHeartbeat::from_bytes(data);
    if let Ok(hb) = &heartbeat {
        assert_eq!(hb.to_bytes(), data, "heartbeat re-encodes differently");
    }

    let account = f.session.account();
    let lease = f.session.expires_at();

    let mut s = f.session.clone();
    match s.accept_device_list(data, now) {
        Ok(status) => {
            let list = list.as_ref().expect("accepted list decodes");
            assert_eq!(list.account(), account, "accepted another account's list");
            assert!(list.version() > f.session.device_list().version());
            assert_eq!(s.device_list(), list);
            assert!(s.expires_at() >= lease, "a device list shortened the lease");
            let listed = list.contains(f.session.index(), &f.session.device_key());
            assert_eq!(
                matches!(status, SessionStatus::LoggedOut { .. }),
                !listed,
                "revocation and listing disagree"
            );
        }
        Err(SessionError::LoggedOut(_)) => {
            let list = list.as_ref().expect("only a signed list can log out");
            assert_eq!(list.account(), account);
            assert!(
                list.issued_at() >= lease,
                "logged out by activity inside the lease"
            );
        }
        Err(e) => {
            assert_eq!(
                s.save().expect("save"),
                f.saved.session,
                "refused device list ({e}) changed the session"
            );
        }
    }

    let mut s = f.session.clone();
    match s.accept_heartbeat(data, now) {
        Ok(status) => {
            let hb = heartbeat.as_ref().expect("accepted heartbeat decodes");
            assert_eq!(
                hb.account(),
                account,
                "accepted another account's heartbeat"
            );
            assert!(!matches!(status, SessionStatus::LoggedOut { .. }));
            assert_eq!(
                s.last_primary_activity(),
                f.session.last_primary_activity().max(hb.at())
            );
        }
        Err(SessionError::LoggedOut(_)) => {
            let hb = heartbeat
                .as_ref()
                .expect("only a signed heartbeat can log out");
            assert_eq!(hb.account(), account);
            assert!(hb.at() >= lease, "logged out by activity inside the lease");
        }
        Err(e) => {
            assert_eq!(
                s.save().expect("save"),
                f.saved.session,
                "refused heartbeat ({e}) changed the session"
            );
        }
    }
});
