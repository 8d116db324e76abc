//! Arbitrary bytes against every decoder and receiver of linking by typed
//! code: the typed-text parsers, `CodeHeader::parse`, the companion showing
//! a code (`receive_hello`), the phone waiting for the confirmation
//! (`receive_confirm`), the phone entering a code (`Account::enter_code`,
//! the bytes as the CodeOffer), the relay's rendezvous (`publish`, `route`),
//! the relay crate's `CodeFrame::decode` and the three saved states
//! (`restore`).
//!
//! Properties:
//! - everything is total (no panic);
//! - an accepted typed code re-parses from its canonical text;
//! - a receiver accepts only the fixture's genuine message; a non-terminal
//!   refusal leaves its `save()` unchanged; the only terminal refusal of a
//!   code message is `WrongCode`, and only for a message of the right kind,
//!   token and size (the documented wrong-code rule);
//! - a refused `enter_code` leaves the account's `save()` unchanged;
//! - the rendezvous never routes a message to a client outside the session
//!   and a refused publish or route keeps its sessions;
//! - a restored state saves back to the same bytes.
#![no_main]

use std::sync::OnceLock;

use devicelink::code::{CodeCompanion, CodeEntry, CodeHeader, CodeMessageKind, TypedCode};
use devicelink::handshake::HandshakeError;
use devicelink::relay::{ClientId, CodeRelayConfig, CodeRendezvous};
use devicelink::{Account, DeviceIdentity, DeviceLabel, Policy};
use devicelink_fuzz::{now, rng};
use libfuzzer_sys::fuzz_target;

const LAPTOP: ClientId = ClientId::from_bytes([0xc0; 16]);
const PHONE: ClientId = ClientId::from_bytes([0xa0; 16]);

struct Fixture {
    showing: Vec<u8>,
    entry: Vec<u8>,
    account: Vec<u8>,
    typed: String,
    offer: Vec<u8>,
    hello: Vec<u8>,
    confirm: Vec<u8>,
    relay: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut r = rng(0);
        let policy = Policy::default();
        let mut relay = CodeRendezvous::new(CodeRelayConfig::from_policy(&policy));
        let mut account = Account::generate(policy.clone(), &mut r, now());
        let (handle, _) = relay
            .open(LAPTOP, devicelink::relay::SourceKey::LOCAL, &mut r, now())
            .expect("open");
        let shown = CodeCompanion::new(
            DeviceIdentity::generate(&mut r),
            DeviceLabel::new("Firefox on Linux").expect("label"),
            handle,
            &policy,
            &mut r,
            now(),
        );
        let offer = shown.offer_message().expect("showing").to_vec();
        relay.publish(LAPTOP, &offer, now()).expect("publish");
        let typed = shown.code_text().expect("showing");
        relay
            .join(
                handle,
                PHONE,
                devicelink::relay::SourceKey::LOCAL,
                Some(account.account_id()),
                now(),
            )
            .expect("join");
        account.open_link_intent(now());
        let saved_account = account.save().expect("save");
        let t = TypedCode::parse(&typed).expect("typed");
        let (entry, hello) = account.enter_code(&t, &offer, &mut r, now()).expect("enter");
        let confirm = shown
            .clone()
            .receive_hello(&hello, &mut r, now())
            .expect("hello")
            .confirm;
        Fixture {
            showing: shown.save().expect("save"),
            entry: entry.save().expect("save"),
            account: saved_account,
            typed,
            offer,
            hello,
            confirm,
            relay: relay.save().expect("save"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let now = now();

    // Typed text.
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = TypedCode::parse(&text) {
        assert_eq!(TypedCode::parse(&t.to_text()).expect("canonical"), t);
    }
    let _ = devicelink::code::CodeHandle::parse(&text);
    let _ = devicelink::code::LinkCode::parse(&text);

    // The relay's code frames: total; an accepted frame re-encodes to the input.
    if let Ok(frame) = devicelink_relay::code_frame::CodeFrame::decode(data) {
        assert_eq!(frame.encode(), data);
    }

    // Header.
    let header = CodeHeader::parse(data);
    if let Ok(h) = &header {
        assert_eq!(data.len(), h.kind.message_len());
    }

    // Companion showing the code.
    let mut c = CodeCompanion::restore(&f.showing).expect("restore");
    match c.receive_hello(data, &mut rng(1), now) {
        Ok(_) => assert_eq!(data, &f.hello[..], "accepted a forged CodeHello"),
        Err(e) if e.is_terminal() => {
            assert_eq!(e, HandshakeError::WrongCode, "terminal {e}");
            let h = header.as_ref().expect("a wrong code needs a header");
            assert_eq!(h.kind, CodeMessageKind::CodeHello);
            assert_eq!(data.len(), f.hello.len());
            assert_eq!(&data[2..18], &f.hello[2..18]);
            assert!(c.wrong_code_notice().is_some());
        }
        Err(e) => assert_eq!(c.save().expect("save"), f.showing, "refusal {e} changed it"),
    }

    // Phone waiting for the confirmation.
    let mut e = CodeEntry::restore(&f.entry).expect("restore");
    match e.receive_confirm(data, now) {
        Ok(_) => assert_eq!(data, &f.confirm[..], "accepted a forged CodeConfirm"),
        Err(err) if err.is_terminal() => {
            assert_eq!(err, HandshakeError::WrongCode);
            assert_eq!(data.len(), f.confirm.len());
            assert_eq!(&data[..18], &f.confirm[..18]);
        }
        Err(err) => assert_eq!(e.save().expect("save"), f.entry, "refusal {err} changed it"),
    }

    // Phone entering the code with these bytes as the CodeOffer.
    let mut account = Account::restore(&f.account).expect("restore");
    let typed = TypedCode::parse(&f.typed).expect("typed");
    if account.enter_code(&typed, data, &mut rng(2), now).is_err() {
        assert_eq!(account.save().expect("save"), f.account);
    } else {
        assert_eq!(data, &f.offer[..], "accepted a forged CodeOffer");
    }

    // The relay.
    let mut relay = CodeRendezvous::restore(&f.relay).expect("restore");
    let before = relay.len();
    for from in [LAPTOP, PHONE, ClientId::from(7)] {
        match relay.route(from, data, now) {
            Ok(r) => assert!(r.forward_to == LAPTOP || r.forward_to == PHONE),
            Err(_) => assert_eq!(relay.len(), before),
        }
    }
    if relay.publish(LAPTOP, data, now).is_err() {
        assert_eq!(relay.len(), before);
    }

    // Saved states.
    for_each_restore(data);
});

fn for_each_restore(data: &[u8]) {
    if let Ok(c) = CodeCompanion::restore(data) {
        let saved = c.save().expect("save");
        assert_eq!(CodeCompanion::restore(&saved).expect("again").save().expect("save"), saved);
    }
    if let Ok(e) = CodeEntry::restore(data) {
        let saved = e.save().expect("save");
        assert_eq!(CodeEntry::restore(&saved).expect("again").save().expect("save"), saved);
    }
    if let Ok(mut r) = CodeRendezvous::restore(data) {
        let saved = r.save().expect("save");
        assert_eq!(CodeRendezvous::restore(&saved).expect("again").save().expect("save"), saved);
        r.sweep(devicelink::Timestamp::MAX);
        assert!(r.is_empty());
    }
}
