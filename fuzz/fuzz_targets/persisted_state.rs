//! Arbitrary bytes as a saved state of every persisted kind.
//!
//! Saved states carry a SHA-256 digest of their state line, so a blind
//! mutation only ever reaches the digest check. Each input is therefore tried
//! twice: as is (header parsing, digest refusal), and with its state line
//! (what follows the first newline) re-sealed under a valid header of each
//! kind (`devicelink_fuzz::seal`), which lets the fuzzer reach the decoders
//! and consistency checks behind the digest.
//!
//! Properties:
//! - every `restore` is total (typed error, no panic);
//! - whatever restores can be driven (poll, deadlines, a few operations)
//!   without panicking, and `save → restore → save` is a fixed point both
//!   right after the restore and after driving it (a state the library
//!   reaches by itself must restore).
//!
//! The relay's directory keeps hash maps, whose JSON key order is not stable
//! between two maps; its saves are compared as JSON values. The ledger saves
//! in key order and is compared byte for byte.
#![no_main]

use devicelink::host::{Device, Phone};
use devicelink::persist::PersistError;
use devicelink::relay::{
    Directory, HelloDigest, Ledger, LedgerConfig, MemoryTokenStore, TokenStore,
};
use devicelink::Policy;
use devicelink::{
    Account, Companion, LinkedSession, OfferDisplay, PrimaryHandshake, PrimaryHeartbeat,
    SignedDeviceList, Timestamp,
};
use devicelink_fuzz::{at, body_of, fixture, now, rng, seal, COMPANION, KINDS, PRIMARY};
use libfuzzer_sys::fuzz_target;

/// `save → restore → save` is a fixed point (byte-identical, or equal JSON
/// values when `as_json`).
fn fixed_point<T>(
    what: &str,
    x: &T,
    save: impl Fn(&T) -> Result<Vec<u8>, PersistError>,
    restore: impl Fn(&[u8]) -> Result<T, PersistError>,
    as_json: bool,
) {
    let first = save(x).unwrap_or_else(|e| panic!("{what}: save failed: {e}"));
    let back =
        restore(&first).unwrap_or_else(|e| panic!("{what}: its own save does not restore: {e}"));
    let second = save(&back).unwrap_or_else(|e| panic!("{what}: save failed: {e}"));
    if as_json {
        // Header line (without its digest, which hashes the body's bytes)
        // and state line, each compared as a JSON value.
        let value = |b: &[u8]| -> serde_json::Value {
            serde_json::from_slice(b).unwrap_or_else(|e| panic!("{what}: save is not JSON: {e}"))
        };
        let header = |b: &[u8]| {
            let mut h = value(b.split(|c| *c == b'\n').next().unwrap_or_default());
            if let Some(m) = h.as_object_mut() {
                m.remove("sha256");
            }
            h
        };
        assert_eq!(header(&first), header(&second), "{what}: header changed");
        assert_eq!(
            value(body_of(&first)),
            value(body_of(&second)),
            "{what}: save → restore → save changed the state"
        );
    } else {
        assert_eq!(
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&second),
            "{what}: save → restore → save changed the state"
        );
    }
}

/// Instants to drive a restored state at: its own deadline (and just
/// after), the fixture's `now`, and the far future.
fn instants(deadline: Option<Timestamp>) -> Vec<Timestamp> {
    let mut v = vec![now()];
    if let Some(d) = deadline {
        v.push(d);
        v.push(Timestamp::from_unix_millis(
            d.as_unix_millis().saturating_add(1),
        ));
    }
    v.push(at(30 * 86_400_000));
    v.push(Timestamp::MAX);
    v
}

fuzz_target!(|data: &[u8]| {
    for kind in KINDS {
        drive(kind, data);
    }
    let body = body_of(data);
    for kind in KINDS {
        drive(kind, &seal(kind, body));
    }
});

/// Restores `data` as a `kind` and, if it restores, drives it.
fn drive(kind: &str, data: &[u8]) {
    match kind {
        "account" => account(data),
        "companion" => companion(data),
        "primary handshake" => primary(data),
        "linked session" => session(data),
        "offer display" => display(data),
        "directory" => directory(data),
        "ledger" => ledger(data),
        "token store" => token_store(data),
        "phone" => phone(data),
        "device" => device(data),
        _ => unreachable!("unknown kind {kind}"),
    }
}

/// A host-API error as the persist error `fixed_point` reports.
fn persist<E: std::fmt::Display>(e: E) -> PersistError {
    PersistError::Malformed(e.to_string())
}

fn phone(data: &[u8]) {
    let f = fixture();
    if let Ok(mut p) = Phone::restore(data) {
        let save = |p: &Phone| p.save().map_err(persist);
        let restore = |b: &[u8]| Phone::restore(b).map_err(persist);
        fixed_point("phone", &p, save, restore, false);
        while p.poll_output().is_some() {}
        for t in instants(p.next_deadline()) {
            p.poll(t);
            fixed_point("phone after poll", &p, save, restore, false);
        }
        let mut r = rng(7);
        p.open_link_intent(now());
        let _ = p.scan(&f.offer_text, &mut r, now());
        let _ = p.receive(&f.request, &mut r, now());
        let _ = p.receive(&f.confirm, &mut r, now());
        p.heartbeat(Timestamp::MAX);
        while p.poll_output().is_some() {}
        fixed_point("phone after messages", &p, save, restore, false);
    }
}

fn device(data: &[u8]) {
    let f = fixture();
    if let Ok(mut d) = Device::restore(data, &Policy::default()) {
        let save = |d: &Device| d.save().map_err(persist);
        let restore = |b: &[u8]| Device::restore(b, &Policy::default()).map_err(persist);
        fixed_point("device", &d, save, restore, false);
        let mut r = rng(8);
        for t in instants(d.next_deadline()) {
            let _ = d.poll(&mut r, t);
            fixed_point("device after poll", &d, save, restore, false);
        }
        let _ = d.receive(&f.hello, &mut r, now());
        let _ = d.receive(&f.grant, &mut r, now());
        let _ = d.consent(now());
        let _ = d.receive_list(&f.grant, now());
        let _ = d.receive_heartbeat(&f.grant, now());
        while d.poll_output().is_some() {}
        fixed_point("device after messages", &d, save, restore, false);
    }
}

fn account(data: &[u8]) {
    if let Ok(mut a) = Account::restore(data) {
        fixed_point("account", &a, Account::save, Account::restore, false);
        let _ = a.device_list();
        let _ = a.companion_count(now());
        let devices: Vec<_> = a.devices().map(|r| r.index).collect();
        for t in instants(a.next_deadline()) {
            for i in &devices {
                let _ = a.device_state(*i, t);
            }
            a.poll(t);
            fixed_point(
                "account after poll",
                &a,
                Account::save,
                Account::restore,
                false,
            );
        }
        // The link steps: an intent, the fixture's offer, its Request.
        let f = fixture();
        a.open_link_intent(now());
        if let Ok((mut p, _)) = a.scan(&f.offer_text, &mut rng(4), now()) {
            let _ = a.receive_request(&mut p, &f.request, &mut rng(5), now());
            let _ = a.grant(&mut p, &mut rng(6), now());
            let _ = a.confirm(&mut p, &f.confirm, now());
        }
        fixed_point(
            "account after link steps",
            &a,
            Account::save,
            Account::restore,
            false,
        );
        if let Some(i) = devices.first() {
            let _ = a.revoke(*i, Timestamp::MAX);
        }
        let _ = a.heartbeat(Timestamp::MAX);
        let _ = a.device_list();
        let _ = a.take_events();
        fixed_point(
            "account after revoke",
            &a,
            Account::save,
            Account::restore,
            false,
        );
    }
}

fn companion(data: &[u8]) {
    let f = fixture();
    if let Ok(mut c) = Companion::restore(data) {
        fixed_point("companion", &c, Companion::save, Companion::restore, false);
        let _ = (c.state(), c.offer().map(|o| o.to_text()), c.check_code());
        let _ = c.confirm_message();
        let mut r = rng(1);
        for t in instants(c.next_deadline()) {
            let _ = c.poll(&mut r, t);
            let _ = c.state();
            fixed_point(
                "companion after poll",
                &c,
                Companion::save,
                Companion::restore,
                false,
            );
        }
        let _ = c.cancel(Timestamp::MAX);
        let _ = c.receive_hello(&f.hello, &mut r, now());
        let _ = c.receive_grant(&f.grant, now());
        let _ = c.join_prompt();
        let _ = c.consent(now());
        fixed_point(
            "companion after messages",
            &c,
            Companion::save,
            Companion::restore,
            false,
        );
    }
}

fn primary(data: &[u8]) {
    let f = fixture();
    if let Ok(mut p) = PrimaryHandshake::restore(data) {
        fixed_point(
            "primary handshake",
            &p,
            PrimaryHandshake::save,
            PrimaryHandshake::restore,
            false,
        );
        let _ = (
            p.state(),
            p.request(),
            p.check_code(),
            p.token_id(),
            p.scanned_at(),
        );
        assert_eq!(p.hello().len(), f.hello.len());
        let _ = p.receive_request(&f.request, now());
        let _ = p.receive_confirm(&f.confirm, now());
        fixed_point(
            "primary after messages",
            &p,
            PrimaryHandshake::save,
            PrimaryHandshake::restore,
            false,
        );
        let _ = f.account_linked.clone().refuse(
            &mut p,
            devicelink::RefusalReason::Declined,
            &mut rng(2),
            now(),
        );
        fixed_point(
            "primary after refusal",
            &p,
            PrimaryHandshake::save,
            PrimaryHandshake::restore,
            false,
        );
    }
}

fn session(data: &[u8]) {
    let f = fixture();
    if let Ok(mut s) = LinkedSession::restore(data, &Policy::default()) {
        fixed_point(
            "linked session",
            &s,
            LinkedSession::save,
            restore_session,
            false,
        );
        let _ = (
            s.index(),
            s.account(),
            s.device_key(),
            s.expires_at(),
            s.warn_at(),
        );
        for t in instants(s.next_deadline()) {
            let _ = s.next_deadline();
            let before = s.status(t);
            assert_eq!(s.poll(t), before, "poll disagrees with status");
            fixed_point(
                "session after poll",
                &s,
                LinkedSession::save,
                restore_session,
                false,
            );
        }
        let list = SignedDeviceList::from_bytes(&f.device_list).expect("fixture list");
        let heartbeat = PrimaryHeartbeat::from_bytes(&f.heartbeat).expect("fixture heartbeat");
        let _ = s.accept_device_list(&list, now());
        let _ = s.accept_heartbeat(&heartbeat, now());
        let _ = (
            s.recently_linked(now()),
            s.certificate().device_list().version(),
        );
        fixed_point(
            "session after list and heartbeat",
            &s,
            LinkedSession::save,
            restore_session,
            false,
        );
        let heartbeat = PrimaryHeartbeat::from_bytes(&f.heartbeat).expect("fixture heartbeat");
        let _ = s.accept_heartbeat(&heartbeat, Timestamp::MAX);
        fixed_point(
            "session after heartbeat",
            &s,
            LinkedSession::save,
            restore_session,
            false,
        );
    }
}

fn display(data: &[u8]) {
    if let Ok(mut d) = OfferDisplay::restore(data) {
        fixed_point(
            "offer display",
            &d,
            OfferDisplay::save,
            OfferDisplay::restore,
            false,
        );
        let _ = d.offer().map(|o| o.to_text());
        let mut r = rng(3);
        for t in instants(d.next_deadline()) {
            let _ = d.poll(&mut r, t);
            let _ = d.state();
            fixed_point(
                "offer display after poll",
                &d,
                OfferDisplay::save,
                OfferDisplay::restore,
                false,
            );
        }
        let _ = d.cancel(Timestamp::MAX);
        fixed_point(
            "offer display after cancel",
            &d,
            OfferDisplay::save,
            OfferDisplay::restore,
            false,
        );
    }
}

fn directory(data: &[u8]) {
    let f = fixture();
    if let Ok(mut dir) = Directory::restore(data) {
        fixed_point("directory", &dir, Directory::save, Directory::restore, true);
        let _ = (dir.len(), dir.is_empty(), dir.device_count());
        let list = f.account_linked.device_list();
        let _ = dir.is_linked(
            &list.account(),
            f.session.index(),
            &f.session.device_key(),
            now(),
        );
        let _ = dir.apply_device_list(list, now());
        if let Ok(hb) = PrimaryHeartbeat::from_bytes(&f.heartbeat) {
            let _ = dir.apply_heartbeat(&hb, now());
        }
        fixed_point(
            "directory after list and heartbeat",
            &dir,
            Directory::save,
            Directory::restore,
            true,
        );
        // The server's own store reloads an account (here another one's
        // facts under a fresh id, and the fixture's again).
        let _ = dir.load_account(
            devicelink::AccountId::from_bytes([0x42; 32]),
            (list.version(), list.hash()),
            now(),
            list.devices(),
        );
        let _ = dir.load_account(
            list.account(),
            (list.version(), list.hash()),
            list.issued_at(),
            list.devices(),
        );
        fixed_point(
            "directory after updates",
            &dir,
            Directory::save,
            Directory::restore,
            true,
        );
        for t in instants(dir.next_deadline()) {
            let _ = dir.sweep(t);
            fixed_point(
                "directory after sweep",
                &dir,
                Directory::save,
                Directory::restore,
                true,
            );
        }
        // Every deadline is at or before the end of time: nothing survives.
        assert_eq!(
            dir.device_count(),
            0,
            "a device outlived a sweep at Timestamp::MAX"
        );
    }
}

fn ledger(data: &[u8]) {
    if let Ok(ledger) = Ledger::restore(data) {
        fixed_point("ledger", &ledger, Ledger::save, Ledger::restore, false);
        drive_ledger(&ledger);
        fixed_point(
            "ledger after route",
            &ledger,
            Ledger::save,
            Ledger::restore,
            false,
        );
        let _ = ledger.sweep(Timestamp::MAX, usize::MAX);
        assert!(
            ledger.store().is_empty(),
            "a token outlived a sweep at Timestamp::MAX"
        );
    }
}

fn token_store(data: &[u8]) {
    if let Ok(store) = MemoryTokenStore::restore(data) {
        fixed_point(
            "token store",
            &store,
            MemoryTokenStore::save,
            MemoryTokenStore::restore,
            false,
        );
        let _ = (
            store.len(),
            store.is_empty(),
            store.client_tokens(&COMPANION),
            store.source_tokens(&devicelink::relay::SourceKey::LOCAL),
        );
        let ledger = Ledger::new(store, LedgerConfig::default());
        drive_ledger(&ledger);
        fixed_point(
            "token store after route",
            ledger.store(),
            MemoryTokenStore::save,
            MemoryTokenStore::restore,
            false,
        );
        let _ = ledger.sweep(Timestamp::MAX, usize::MAX);
        assert!(
            ledger.store().is_empty(),
            "a token outlived a sweep at Timestamp::MAX"
        );
    }
}

/// The fixture's exchange through a restored ledger, whatever it holds.
fn drive_ledger(ledger: &Ledger) {
    let f = fixture();
    let _ = ledger.store().get(&f.token);
    let _ = ledger.route(PRIMARY, &f.hello, now());
    let _ = ledger.release(COMPANION, &f.token, &HelloDigest::of(&f.hello), now());
    let _ = ledger.route(PRIMARY, &f.hello, now());
    let _ = ledger.route(COMPANION, &f.request, now());
    let _ = ledger.route(PRIMARY, &f.grant, now());
    let _ = ledger.route(COMPANION, &f.confirm, now());
    let _ = ledger.register(
        COMPANION,
        devicelink::relay::SourceKey::LOCAL,
        f.token,
        at(60_000),
        now(),
    );
    let _ = ledger.abandon(COMPANION);
    let _ = ledger.sweep(now(), 16);
}

/// [`LinkedSession::restore`] under the default policy.
fn restore_session(bytes: &[u8]) -> Result<LinkedSession, devicelink::PersistError> {
    LinkedSession::restore(bytes, &Policy::default())
}
