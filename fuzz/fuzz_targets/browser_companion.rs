//! A hostile relay's frames into the browser companion
//! (`devicelink_web::shell::BrowserCompanion::receive`, what the page calls
//! for every WebSocket message), both while pairing and once linked.
//!
//! The input is a sequence of frames, each `selector ‖ len ‖ bytes`: the
//! selector picks a template (raw bytes, or a valid frame of the fixture's
//! link: its Hello, Grant, signed list, heartbeat, an Ack, a Routed, a
//! Logout, an Error) and the bytes are XORed into it, so most frames decode
//! and reach the core.
//!
//! Properties:
//! - `receive` is total, and so are `poll`, `phase` and `take_frame` after it;
//! - a frame the linked companion refuses (`Err`) leaves its saved session
//!   byte-identical;
//! - whatever it queues to send is a frame the relay's decoder accepts.
#![no_main]

use devicelink::handshake::MessageHeader;
use devicelink::{DeviceIndex, LogoutReason, Timestamp};
use devicelink_fuzz::{at, fixture, now, rng};
use devicelink_relay::{Frame, FrameType};
use devicelink_web::shell::BrowserCompanion;
use libfuzzer_sys::fuzz_target;

fn message(bytes: &[u8]) -> Vec<u8> {
    match MessageHeader::parse(bytes) {
        Ok(header) => Frame::Message { header, bytes }.encode(),
        Err(_) => bytes.to_vec(),
    }
}

fn template(selector: u8) -> Vec<u8> {
    let f = fixture();
    match selector % 10 {
        0 => Vec::new(),
        1 => message(&f.hello),
        2 => message(&f.grant),
        3 => Frame::PublishList {
            bytes: &f.device_list,
        }
        .encode(),
        4 => Frame::PublishHeartbeat {
            bytes: &f.heartbeat,
        }
        .encode(),
        5 => Frame::Ack {
            of: FrameType::Register,
            changed: true,
        }
        .encode(),
        6 => Frame::Ack {
            of: FrameType::Subscribe,
            changed: true,
        }
        .encode(),
        7 => match MessageHeader::parse(&f.confirm) {
            Ok(header) => Frame::Routed { header }.encode(),
            Err(_) => Vec::new(),
        },
        8 => Frame::Logout {
            index: DeviceIndex(1),
            reason: LogoutReason::Revoked,
        }
        .encode(),
        _ => Frame::Error {
            code: 400,
            text: "refused",
        }
        .encode(),
    }
}

/// Splits the input into frames: `selector ‖ len ‖ len bytes` (the last
/// one takes what is left).
fn frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let [selector, len, rest @ ..] = data {
        let n = usize::from(*len).min(rest.len());
        let (mask, tail) = rest.split_at(n);
        let mut frame = template(*selector);
        if frame.len() < mask.len() {
            frame.resize(mask.len(), 0);
        }
        // The mask starts at an offset chosen by the selector's high bits.
        let offset = usize::from(selector / 10) % frame.len().max(1);
        for (i, m) in mask.iter().enumerate() {
            let at = (offset + i) % frame.len().max(1);
            if let Some(b) = frame.get_mut(at) {
                *b ^= m;
            }
        }
        out.push(frame);
        data = tail;
        if out.len() == 32 {
            break;
        }
    }
    out
}

fn check_outbox(c: &mut BrowserCompanion) {
    while let Some(frame) = c.take_frame() {
        assert!(Frame::decode(&frame).is_ok(), "queued an undecodable frame");
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut r = rng(7);
    let t0 = now();
    let mut pairing = BrowserCompanion::new("Fuzzed browser", None, &mut r, t0).expect("label");
    // A key-store browser: its signatures come from outside, and one that
    // does not verify changes nothing.
    let store = devicelink::DeviceKey::from_bytes([9; 32]);
    let mut keyed = BrowserCompanion::new("Key store", Some(store), &mut r, t0).expect("label");
    keyed.connected(t0).expect("connected");
    check_outbox(&mut keyed);
    pairing.connected(t0).expect("connected");
    let mut linked =
        BrowserCompanion::restore(&f.saved.session, &mut r, t0).expect("fixture session");
    linked.connected(t0).expect("connected");
    check_outbox(&mut pairing);
    check_outbox(&mut linked);

    for (i, frame) in frames(data).iter().enumerate() {
        let t: Timestamp = at(t0.as_unix_millis() + 1_000 * i as u64);
        let _ = pairing.receive(frame, &mut r, t);
        let _ = pairing.poll(&mut r, t);
        let _ = pairing.phase(t);
        check_outbox(&mut pairing);

        let before = linked.save().expect("save");
        if linked.receive(frame, &mut r, t).is_err() {
            assert_eq!(
                linked.save().expect("save"),
                before,
                "a refused frame changed the saved session"
            );
        }
        let _ = linked.poll(&mut r, t);
        let _ = linked.phase(t);
        check_outbox(&mut linked);

        let _ = keyed.receive(frame, &mut r, t);
        let asked = keyed.to_sign();
        assert!(keyed.signed(frame).is_err(), "a fuzzed signature verified");
        assert_eq!(keyed.to_sign(), asked, "a refused signature changed the request");
        check_outbox(&mut keyed);
    }
});
