//! Arbitrary bytes as what clients send the code endpoint (`/v1/code`),
//! dispatched as the relay's connection does: a code frame
//! (`CodeFrame::decode`) or one of the relay's own (`Frame::decode`), and
//! the code frames carried to the core's `CodeRendezvous` as three clients
//! from two network sources would, with the clock moving.
//!
//! Input: records `client (u8) ‖ advance (u8, seconds) ‖ len (u8) ‖ frame`.
//!
//! Properties: both decoders are total and the dispatch by type byte is
//! unambiguous; accepted frames re-encode to the input; the rendezvous
//! never holds more sessions for a client or a source than its budget,
//! counts failures only against joiners (never a companion that only
//! opened and published), and saves and restores to the same bytes
//! whatever it went through.
#![no_main]

use devicelink::relay::{
    AttemptKey, ClientId, CodeRelayConfig, CodeRendezvous, SourceKey,
};
use devicelink::{Policy, Timestamp};
use devicelink_relay::code_frame::{is_code_frame, CodeFrame};
use devicelink_relay::Frame;
use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let config = CodeRelayConfig::from_policy(&Policy::default());
    let mut relay = CodeRendezvous::new(config);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let mut now = Timestamp::from_unix_millis(1_700_000_000_000);
    let clients = [ClientId::from(1), ClientId::from(2), ClientId::from(3)];
    let sources = [SourceKey::from_bytes([1; 16]), SourceKey::from_bytes([2; 16])];
    let mut joined = [false; 3];
    let mut rest = data;
    while let [who, advance, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, after) = tail.split_at(n);
        rest = after;
        let i = usize::from(*who % 3);
        let (client, source) = (clients[i], sources[i % 2]);
        now = now.saturating_add_millis(u64::from(*advance) * 1_000);
        if frame.first().copied().is_some_and(is_code_frame) {
            assert!(Frame::decode(frame).is_err(), "a code frame is no relay frame");
            let Ok(f) = CodeFrame::decode(frame) else { continue };
            assert_eq!(f.encode(), frame, "accepted a non-canonical code frame");
            match f {
                CodeFrame::Open => {
                    let _ = relay.open(client, source, &mut rng, now);
                }
                CodeFrame::Publish(offer) => {
                    let _ = relay.publish(client, offer, now);
                }
                CodeFrame::Join(handle) => {
                    joined[i] = true;
                    let _ = relay.join(handle, client, source, None, now);
                }
                CodeFrame::Message(m) => {
                    let _ = relay.route(client, m, now);
                }
                CodeFrame::WrongCode(token) => {
                    let _ = relay.report_wrong_code(&token, client, now);
                }
                _ => {}
            }
        } else if let Ok(f) = Frame::decode(frame) {
            assert_eq!(f.encode(), frame);
        }
        let _ = relay.sweep(now);
        for (s, src) in sources.iter().enumerate() {
            let _ = s;
            assert!(relay.source_sessions(src) <= config.sessions.per_source);
        }
        for (c, client) in clients.iter().enumerate() {
            if !joined[c] {
                assert_eq!(relay.attempts().failures(&AttemptKey::Client(*client), now), 0);
            }
        }
    }
    let saved = relay.save().expect("save");
    assert_eq!(
        CodeRendezvous::restore(&saved).expect("restore").save().expect("save"),
        saved
    );
});
