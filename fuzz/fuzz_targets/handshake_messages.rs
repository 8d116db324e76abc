//! Arbitrary bytes as a handshake message, fed to every receiver of the
//! seeded fixture at the step that expects a message (the primary's Request
//! step both bare and through its account), to the header parser and to the
//! relay's router.
//!
//! Properties:
//! - every receiver is total (no panic);
//! - a refusal that is not terminal leaves the receiver's `save()` unchanged
//!   (a forged or corrupted message cannot disturb the genuine pairing), and
//!   the account's too;
//! - the fixture's account has room, so its request step never refuses the
//!   link on its own (`RegistryError::Refused`);
//! - a receiver accepts only the genuine message of the fixture (every
//!   message is authenticated: MAC, AEAD or strict Ed25519), so any other
//!   accepted input is a forgery;
//! - the relay checks the size of every message before anything else;
//!   reserves a token only for a Hello whose proof hashes to it, once;
//!   redeems it only with the registering companion's Request; routes later
//!   messages only for a redeemed token; and a refusal leaves the ledger's
//!   `save()` unchanged.
#![no_main]

use devicelink::handshake::PrimaryState;
use devicelink::handshake::{MessageHeader, MessageKind, HEADER_LEN, MESSAGE_VERSION};
use devicelink::relay::LedgerError;
use devicelink::{CompanionState, RegistryError};
use devicelink_fuzz::{fixture, ledger_redeemed, ledger_registered, now, rng, COMPANION, PRIMARY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let now = now();

    // The header parser.
    let header = MessageHeader::parse(data);
    if let Ok(h) = &header {
        assert!(data.len() >= HEADER_LEN && data[0] == MESSAGE_VERSION);
        assert_eq!(&h.token_id.to_bytes()[..], &data[2..HEADER_LEN]);
    }

    // Companion showing the offer: expects the Hello.
    let mut c = f.companion_awaiting_hello.clone();
    match c.receive_hello(data, &mut rng(1), now) {
        Ok(_) => {
            assert_eq!(data, &f.hello[..], "companion accepted a forged Hello");
            assert!(matches!(c.state(), CompanionState::AwaitingGrant { .. }));
        }
        Err(e) => {
            if !e.is_terminal() {
                assert_eq!(
                    c.save().expect("save"),
                    f.saved.companion_awaiting_hello,
                    "refused Hello ({e}) changed the companion"
                );
            }
        }
    }

    // Companion that sent its Request: expects the Grant (or a Refusal).
    let mut c = f.companion_awaiting_grant.clone();
    match c.receive_grant(data, now) {
        Ok(_) => {
            assert_eq!(data, &f.grant[..], "companion accepted a forged Grant");
            assert!(
                matches!(c.state(), CompanionState::AwaitingConsent { .. }),
                "a verified Grant waits for the user's consent"
            );
            assert!(c.confirm_message().is_none(), "a Confirm before consent");
        }
        Err(e) => {
            if e.is_terminal() {
                // Only the genuine (authenticated) Refusal may end the pairing
                // at `now` (the grant deadline is two minutes away).
                assert_eq!(
                    data,
                    &f.refusal[..],
                    "terminal error {e} from a forged message"
                );
            } else {
                assert_eq!(
                    c.save().expect("save"),
                    f.saved.companion_awaiting_grant,
                    "refused Grant ({e}) changed the companion"
                );
            }
        }
    }

    // Primary that sent the Hello: expects the Request.
    let mut p = f.primary_awaiting_request.clone();
    match p.receive_request(data, now) {
        Ok(req) => {
            assert_eq!(data, &f.request[..], "primary accepted a forged Request");
            assert_eq!(req.device, f.session.device_key());
            assert_eq!(p.state(), PrimaryState::RequestReceived);
        }
        Err(e) => {
            if !e.is_terminal() {
                assert_eq!(
                    p.save().expect("save"),
                    f.saved.primary_awaiting_request,
                    "refused Request ({e}) changed the primary"
                );
            }
        }
    }

    // The same step through the account (the registry's request step).
    let mut p = f.primary_awaiting_request.clone();
    let mut a = f.account_awaiting_request.clone();
    match a.receive_request(&mut p, data, &mut rng(2), now) {
        Ok(req) => {
            assert_eq!(data, &f.request[..], "account accepted a forged Request");
            assert_eq!(req.device, f.session.device_key());
            assert_eq!(p.state(), PrimaryState::RequestReceived);
        }
        Err(RegistryError::Refused { reason, .. }) => {
            panic!("an account with free slots refused the link itself ({reason})")
        }
        Err(e) => {
            if !e.is_terminal() {
                assert_eq!(
                    p.save().expect("save"),
                    f.saved.primary_awaiting_request,
                    "refused Request ({e}) changed the primary"
                );
                assert_eq!(
                    a.save().expect("save"),
                    f.saved.account_awaiting_request,
                    "refused Request ({e}) changed the account"
                );
            }
        }
    }

    // Primary that sent the Grant, with its account: expects the Confirm.
    let mut p = f.primary_awaiting_confirm.clone();
    let mut a = f.account_awaiting_confirm.clone();
    match a.confirm(&mut p, data, now) {
        Ok(link) => {
            assert_eq!(data, &f.confirm[..], "primary accepted a forged Confirm");
            assert_eq!(link.certificate.device(), f.session.device_key());
            assert_eq!(a.companion_count(now), 1);
        }
        Err(e) => {
            if !e.is_terminal() {
                assert_eq!(
                    p.save().expect("save"),
                    f.saved.primary_awaiting_confirm,
                    "refused Confirm ({e}) changed the primary"
                );
                assert_eq!(
                    a.save().expect("save"),
                    f.saved.account_awaiting_confirm,
                    "refused Confirm ({e}) changed the account"
                );
            }
        }
    }

    // A companion waiting for its user's consent refuses every message.
    let mut c = f.companion_awaiting_consent.clone();
    assert!(c.receive_grant(data, now).is_err());
    assert!(c.receive_hello(data, &mut rng(3), now).is_err());

    // Already-finished state machines refuse everything.
    let mut c = f.companion_linked.clone();
    assert!(c.receive_grant(data, now).is_err());
    assert!(c.receive_hello(data, &mut rng(3), now).is_err());
    let mut p = f.primary_confirmed.clone();
    assert!(p.receive_request(data, now).is_err());

    // The relay: a ledger where the fixture's token is registered.
    let wrong_size = |h: &MessageHeader| h.check_size(data).is_err();
    let ledger = ledger_registered(f);
    let before = ledger.save().expect("save");
    match ledger.route(PRIMARY, data, now) {
        Ok(routed) => {
            let h = header.as_ref().expect("routed message has a header");
            assert!(!wrong_size(h), "routed a message of the wrong size");
            assert_eq!(
                h.kind,
                MessageKind::Hello,
                "routed a non-Hello to an unredeemed token"
            );
            assert_eq!(routed.kind, MessageKind::Hello);
            assert_eq!(
                routed.token_id, f.token,
                "reserved a token that was never registered"
            );
            assert_eq!(routed.forward_to, COMPANION);
            let proof = h.redemption_proof(data).expect("routed Hello has a proof");
            assert_eq!(proof.token_id(), f.token, "reserved without the QR's proof");
            assert!(
                matches!(
                    ledger.route(PRIMARY, data, now),
                    Err(LedgerError::TokenReserved { .. })
                ),
                "a token was reserved twice"
            );
        }
        Err(e) => {
            match &header {
                Err(_) => assert!(matches!(e, LedgerError::Unroutable(_)), "{e}"),
                Ok(h) if wrong_size(h) => assert_eq!(
                    e,
                    LedgerError::WrongSize {
                        kind: h.kind,
                        len: data.len()
                    }
                ),
                Ok(_) => {}
            }
            assert_eq!(
                ledger.save().expect("save"),
                before,
                "a refusal ({e}) changed the ledger"
            );
        }
    }
    // A ledger where the genuine Hello and Request redeemed the token: later
    // messages of the session are routed, a second Hello or Request never is.
    let ledger = ledger_redeemed(f);
    let before = ledger.save().expect("save");
    let routed = ledger.route(PRIMARY, data, now);
    match &header {
        Err(_) => assert!(matches!(routed, Err(LedgerError::Unroutable(_)))),
        Ok(h) if wrong_size(h) => assert_eq!(
            routed,
            Err(LedgerError::WrongSize {
                kind: h.kind,
                len: data.len()
            })
        ),
        Ok(h) if h.kind == MessageKind::Hello => {
            assert!(routed.is_err(), "a second Hello was routed");
        }
        Ok(h) if h.token_id == f.token && h.kind == MessageKind::Request => {
            assert_eq!(routed, Err(LedgerError::WrongClient));
        }
        Ok(h) if h.token_id == f.token => {
            let to = if h.kind == MessageKind::Confirm {
                PRIMARY
            } else {
                COMPANION
            };
            assert_eq!(
                routed.map(|r| (r.token_id, r.forward_to)),
                Ok((f.token, to)),
                "message of the redeemed session not routed"
            );
        }
        Ok(_) => assert_eq!(routed, Err(LedgerError::UnknownToken)),
    }
    if let Ok(h) = &header {
        if h.kind == MessageKind::Request && !wrong_size(h) && h.token_id == f.token {
            assert_eq!(
                ledger.route(COMPANION, data, now),
                Err(LedgerError::TokenAlreadyRedeemed),
                "a token was redeemed twice"
            );
        }
    }
    assert_eq!(
        ledger.save().expect("save"),
        before,
        "routing changed the ledger"
    );
});
