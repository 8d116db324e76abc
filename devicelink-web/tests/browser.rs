//! The JS class in the browser (wasm-bindgen-test in headless Chromium):
//! a whole link with real crypto, the browser's CSPRNG and both ends in
//! wasm — the companion through `WebCompanion` (what the page calls), the
//! phone through the core's `Account` — with the relay's frames carried by
//! hand. Then a save and restore, a revocation, and errors as `JsError`.
//!
//! ```sh
//! CHROMEDRIVER=/usr/bin/chromedriver \
//! CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//!   cargo test -p devicelink-web --target wasm32-unknown-unknown --test browser
//! ```
#![cfg(target_arch = "wasm32")]

use devicelink::handshake::MessageHeader;
use devicelink::{Account, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, Policy, Timestamp};
use devicelink_relay::frame::{Frame, FrameType};
use devicelink_web::WebCompanion;
use rand_core::OsRng;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const NOW: f64 = 1_700_000_000_000.0;

fn ts(ms: f64) -> Timestamp {
    Timestamp::from_unix_millis(ms as u64)
}

fn frames(c: &mut WebCompanion) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| c.take_frame()).collect()
}

fn kind(frame: &[u8]) -> FrameType {
    Frame::decode(frame).unwrap().frame_type()
}

fn message_frame(bytes: &[u8]) -> Vec<u8> {
    let header = MessageHeader::parse(bytes).unwrap();
    Frame::Message { header, bytes }.encode()
}

fn inner(frame: &[u8]) -> Vec<u8> {
    let Ok(Frame::Message { bytes, .. }) = Frame::decode(frame) else {
        panic!("not a message")
    };
    bytes.to_vec()
}

/// A device linked to `account` with the core's own companion.
fn link_core(account: &mut Account, now: Timestamp) {
    let policy = account.policy().clone();
    let mut c = Companion::new(
        DeviceIdentity::generate(&mut OsRng),
        DeviceLabel::new("core").unwrap(),
        &policy,
        &mut OsRng,
        now,
    );
    account.open_link_intent(now);
    let (mut p, hello) = account
        .scan(&c.offer().unwrap().to_text(), &mut OsRng, now)
        .unwrap();
    let request = c.receive_hello(&hello, &mut OsRng, now).unwrap();
    account
        .receive_request(&mut p, &request, &mut OsRng, now)
        .unwrap();
    let grant = account.grant(&mut p, &mut OsRng, now).unwrap();
    c.receive_grant(&grant, now).unwrap();
    let confirm = c.consent(now).unwrap();
    account.confirm(&mut p, &confirm, now).unwrap();
}

fn list_frame(account: &Account) -> Vec<u8> {
    let bytes = account.device_list().to_bytes();
    Frame::PublishList { bytes: &bytes }.encode()
}

fn answer(c: &mut WebCompanion, frame: &[u8], now: f64) {
    let reply = match Frame::decode(frame).unwrap() {
        Frame::Message { header, .. } => Frame::Routed { header }.encode(),
        other => Frame::Ack {
            of: other.frame_type(),
            changed: true,
        }
        .encode(),
    };
    c.receive(&reply, now).unwrap();
}

#[wasm_bindgen_test]
fn a_whole_link_in_the_browser() {
    let mut account = Account::generate(Policy::default(), &mut OsRng, ts(NOW));
    let mut c = WebCompanion::new("Chromium on Linux", None, NOW).unwrap();
    assert_eq!(c.phase(NOW), "connecting");
    c.connected(NOW).unwrap();
    let opening = frames(&mut c);
    let kinds: Vec<_> = opening.iter().map(|f| kind(f)).collect();
    assert_eq!(kinds, [FrameType::Identify, FrameType::Register]);
    for frame in &opening {
        answer(&mut c, frame, NOW);
    }
    assert_eq!(c.phase(NOW), "showing");
    assert_eq!(c.rotation(), Some(0));
    assert_eq!(c.offer_expires_at(), Some(NOW + 60_000.0));
    let svg = c.qr_svg().unwrap().unwrap();
    assert!(svg.contains("<svg"));

    // The phone scans the text the page shows.
    let t = NOW + 1_000.0;
    account.open_link_intent(ts(t));
    let (mut primary, hello) = account
        .scan(&c.qr_text().unwrap(), &mut OsRng, ts(t))
        .unwrap();
    c.receive(&message_frame(&hello), t).unwrap();
    let out = frames(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(c.phase(t), "awaiting-approval");
    let asking = account
        .receive_request(&mut primary, &inner(&out[0]), &mut OsRng, ts(t))
        .unwrap();
    assert_eq!(c.check_code(), None, "no code before the Grant");
    assert_eq!(asking.label.as_str(), "Chromium on Linux");
    answer(&mut c, &out[0], t);

    let grant = account.grant(&mut primary, &mut OsRng, ts(t)).unwrap();
    c.receive(&message_frame(&grant), t).unwrap();
    // Nothing leaves before this browser's user agrees.
    assert!(frames(&mut c).is_empty());
    assert_eq!(c.phase(t), "awaiting-consent");
    assert_eq!(
        c.check_code(),
        asking.check_code.map(|code| code.to_string())
    );
    assert_eq!(
        c.joining_account(),
        Some(account.account_id().fingerprint())
    );
    c.consent(t).unwrap();
    let out = frames(&mut c);
    let kinds: Vec<_> = out.iter().map(|f| kind(f)).collect();
    assert_eq!(
        kinds,
        [
            FrameType::Message,
            FrameType::PublishList,
            FrameType::Subscribe
        ]
    );
    let link = account
        .confirm(&mut primary, &inner(&out[0]), ts(t))
        .unwrap();
    assert_eq!(link.certificate.index(), DeviceIndex(1));

    assert_eq!(c.phase(t), "linked");
    assert_eq!(c.device_index(), Some(1));
    assert_eq!(
        c.account_fingerprint(),
        Some(account.account_id().fingerprint())
    );
    assert_eq!(c.label().as_deref(), Some("Chromium on Linux"));
    assert_eq!(
        c.lease_expires_at(t),
        Some(t + 14.0 * 86_400_000.0),
        "14 days from the grant"
    );
    let devices = c.devices();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].this_device());
    assert_eq!(devices[0].index(), 1);

    // Saved as text, restored as a new object (a reload).
    assert!(c.needs_save());
    let saved = c.save().unwrap().unwrap();
    assert!(!c.needs_save());
    let mut r = WebCompanion::restore(&saved, t + 5.0).unwrap();
    assert_eq!(r.phase(t + 5.0), "linked");
    assert_eq!(r.device_index(), Some(1));
    r.connected(t + 5.0).unwrap();
    let kinds: Vec<_> = frames(&mut r).iter().map(|f| kind(f)).collect();
    assert_eq!(
        kinds,
        [
            FrameType::Identify,
            FrameType::PublishList,
            FrameType::Subscribe
        ]
    );

    // A phone restored from an old backup signs another history: the tab
    // refuses its list, says so once, and keeps the genuine one.
    let backup = account.save().unwrap();
    link_core(&mut account, ts(t + 10.0));
    r.receive(&list_frame(&account), t + 10.0).unwrap();
    let held = account.device_list_version();
    let mut restored = Account::restore(&backup).unwrap();
    while restored.device_list_version() < held {
        link_core(&mut restored, ts(t + 20.0));
    }
    let _ = r.take_notices();
    r.receive(&list_frame(&restored), t + 30.0).unwrap();
    let notices: Vec<String> = r.take_notices().iter().map(|n| n.kind()).collect();
    assert_eq!(notices, ["fork"]);
    assert_eq!(r.phase(t + 30.0), "linked");
    assert!(r.needs_save(), "the fork mark is saved");

    // The phone revokes it; the pushed list logs it out, with the reason.
    let later = t + 60_000.0;
    account.revoke(DeviceIndex(1), ts(later)).unwrap();
    let list = account.device_list().to_bytes();
    r.receive(&Frame::PublishList { bytes: &list }.encode(), later)
        .unwrap();
    assert_eq!(r.phase(later), "logged-out");
    assert_eq!(
        r.logout_reason(later).as_deref(),
        Some("your phone removed this device")
    );
    assert!(r.needs_save());
}

#[wasm_bindgen_test]
fn errors_cross_as_js_errors() {
    assert!(WebCompanion::new("", None, NOW).is_err());
    assert!(WebCompanion::new("bad\u{202e}label", None, NOW).is_err());
    assert!(WebCompanion::restore("{}", NOW).is_err());
    let mut c = WebCompanion::new("Chromium", None, NOW).unwrap();
    assert!(c.receive(&[], NOW).is_err());
    assert!(c.receive(&[0xff, 1, 2], NOW).is_err());
    assert_eq!(c.phase(NOW), "connecting");
    c.connected(NOW).unwrap();
    // A second connection resumes the pairing (Identify, Register again).
    c.connected(NOW).unwrap();
    // Clocks from JS that are not numbers of milliseconds are total.
    assert!(!c.poll(f64::NAN));
    assert!(!c.poll(-1.0));
    assert_eq!(c.phase(f64::INFINITY), "connecting");
}
