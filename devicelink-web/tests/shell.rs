//! The browser companion's shell, natively, through its public API: a whole
//! link against the core's `Account` with real crypto, the frames the relay
//! would carry in between (built and read with `devicelink_relay::frame`),
//! rotation, forged messages, persistence, revocation, notices and the
//! lease.

use devicelink::handshake::MessageKind;
use devicelink::time::days;
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, LogoutReason, Policy,
    RefusalReason, Timestamp,
};
use devicelink_relay::codes;
use devicelink_relay::frame::{Frame, FrameType};
use devicelink_web::shell::{logout_text, BrowserCompanion, Notice, Phase, Problem, WebError};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

fn at(ms: u64) -> Timestamp {
    T0.saturating_add_millis(ms)
}

/// The frames the shell wants sent, decoded (owned copies).
fn sent(c: &mut BrowserCompanion) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| c.take_frame()).collect()
}

fn types(frames: &[Vec<u8>]) -> Vec<FrameType> {
    frames
        .iter()
        .map(|f| Frame::decode(f).unwrap().frame_type())
        .collect()
}

fn ack(of: FrameType) -> Vec<u8> {
    Frame::Ack { of, changed: true }.encode()
}

fn routed(frame: &[u8]) -> Vec<u8> {
    let Ok(Frame::Message { header, .. }) = Frame::decode(frame) else {
        panic!("not a message")
    };
    Frame::Routed { header }.encode()
}

fn message(bytes: &[u8]) -> Vec<u8> {
    let header = devicelink::handshake::MessageHeader::parse(bytes).unwrap();
    Frame::Message { header, bytes }.encode()
}

/// The message inside a Message frame.
fn body(frame: &[u8]) -> Vec<u8> {
    match Frame::decode(frame).unwrap() {
        Frame::Message { bytes, .. } => bytes.to_vec(),
        other => panic!("expected a message, got {other:?}"),
    }
}

struct World {
    rng: ChaCha20Rng,
    account: Account,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let account = Account::generate(Policy::default(), &mut rng, T0);
        World { rng, account }
    }

    /// A companion connected and its first Register acknowledged.
    fn showing(&mut self, label: &str, now: Timestamp) -> BrowserCompanion {
        let mut c = BrowserCompanion::new(label, None, &mut self.rng, now).unwrap();
        assert_eq!(c.phase(now), Phase::Connecting);
        c.connected(now).unwrap();
        assert_eq!(
            types(&sent(&mut c)),
            [FrameType::Identify, FrameType::Register]
        );
        assert_eq!(c.qr_text(), None, "no QR before the relay knows the token");
        c.receive(&ack(FrameType::Identify), &mut self.rng, now)
            .unwrap();
        c.receive(&ack(FrameType::Register), &mut self.rng, now)
            .unwrap();
        assert_eq!(c.phase(now), Phase::Showing);
        c
    }

    /// Links `c` (showing) through the frames the relay would carry.
    fn link(&mut self, c: &mut BrowserCompanion, now: Timestamp) {
        let text = c.qr_text().unwrap();
        self.account.open_link_intent(now);
        let (mut primary, hello) = self.account.scan(&text, &mut self.rng, now).unwrap();
        c.receive(&message(&hello), &mut self.rng, now).unwrap();
        let out = sent(c);
        assert_eq!(types(&out), [FrameType::Message]);
        assert_eq!(c.phase(now), Phase::AwaitingApproval);
        let asking = self
            .account
            .receive_request(&mut primary, &body(&out[0]), &mut self.rng, now)
            .unwrap();
        c.receive(&routed(&out[0]), &mut self.rng, now).unwrap();
        let grant = self
            .account
            .grant(&mut primary, &mut self.rng, now)
            .unwrap();
        c.receive(&message(&grant), &mut self.rng, now).unwrap();
        // Nothing leaves before this browser's user agrees: the page shows
        // the account it would join and the phone's check code.
        assert!(sent(c).is_empty(), "no Confirm before consent");
        assert_eq!(c.phase(now), Phase::AwaitingConsent);
        assert_eq!(
            c.check_code(),
            asking.check_code.map(|code| code.to_string()),
            "the same check code on both screens"
        );
        assert_eq!(
            c.joining_account(),
            Some(self.account.account_id().fingerprint())
        );
        c.consent(now).unwrap();
        let out = sent(c);
        // The Confirm, then the session's own list and the Subscribe.
        assert_eq!(
            types(&out),
            [
                FrameType::Message,
                FrameType::PublishList,
                FrameType::Subscribe
            ]
        );
        self.account
            .confirm(&mut primary, &body(&out[0]), now)
            .unwrap();
        c.receive(&routed(&out[0]), &mut self.rng, now).unwrap();
        c.receive(&ack(FrameType::PublishList), &mut self.rng, now)
            .unwrap();
        c.receive(&ack(FrameType::Subscribe), &mut self.rng, now)
            .unwrap();
    }

    fn list_frame(&self) -> Vec<u8> {
        let bytes = self.account.device_list().to_bytes();
        Frame::PublishList { bytes: &bytes }.encode()
    }
}

#[test]
fn a_whole_link_then_a_reload_keeps_it() {
    let mut w = World::new(1);
    let mut c = w.showing("Chromium on Linux", T0);
    let svg = c.qr_svg().unwrap().unwrap();
    assert!(svg.contains("<svg") && svg.contains("width=\"328\""));
    assert_eq!(c.offer_rotation(), Some((0, at(60_000))));
    assert_eq!(c.save().unwrap(), None, "a pairing is not kept");
    w.link(&mut c, at(1_000));

    let now = at(2_000);
    assert_eq!(c.phase(now), Phase::Linked);
    assert_eq!(c.index(), Some(DeviceIndex(1)));
    assert_eq!(
        c.account_fingerprint(),
        Some(w.account.account_id().fingerprint())
    );
    assert_eq!(c.devices().len(), 1);
    assert_eq!(c.devices()[0].label.as_str(), "Chromium on Linux");
    assert_eq!(
        c.lease_expires_at(now),
        Some(at(1_000).saturating_add(days(14)))
    );
    assert_eq!(c.qr_text(), None);
    assert!(c.needs_save());

    // The reload: the saved session comes back linked and subscribes again.
    let saved = c.save().unwrap().unwrap();
    assert!(!c.needs_save());
    let mut r = BrowserCompanion::restore(&saved, &mut w.rng, now).unwrap();
    assert_eq!(r.phase(now), Phase::Linked);
    assert_eq!(r.index(), c.index());
    assert_eq!(r.account_fingerprint(), c.account_fingerprint());
    r.connected(now).unwrap();
    let out = sent(&mut r);
    assert_eq!(
        types(&out),
        [
            FrameType::Identify,
            FrameType::PublishList,
            FrameType::Subscribe
        ]
    );
    // The proof is the device's, for the client id the tab identified as.
    let (
        Ok(Frame::Identify { secret }),
        Ok(Frame::Subscribe {
            account,
            index,
            proof,
            after: Some(_),
        }),
    ) = (Frame::decode(&out[0]), Frame::decode(&out[2]))
    else {
        panic!("expected Identify and Subscribe")
    };
    assert_eq!((account, index), (w.account.account_id(), DeviceIndex(1)));
    let device = w.account.device_list().devices()[0].device;
    assert_eq!(
        proof.verify(&device, &account, index, secret.client_id()),
        Ok(())
    );
    // The relay's catch-up sends the list the session already holds: no
    // change, no notice.
    for of in [
        FrameType::Identify,
        FrameType::PublishList,
        FrameType::Subscribe,
    ] {
        r.receive(&ack(of), &mut w.rng, now).unwrap();
    }
    r.receive(&w.list_frame(), &mut w.rng, now).unwrap();
    assert!(r.take_notices().is_empty());
    assert_eq!(r.phase(now), Phase::Linked);
}

#[test]
fn the_offer_rotates_and_registers_each_new_token() {
    let mut w = World::new(2);
    let mut c = w.showing("Firefox", T0);
    let first = c.qr_text().unwrap();
    assert!(!c.poll(&mut w.rng, at(59_999)));
    assert!(c.poll(&mut w.rng, at(60_000)));
    let out = sent(&mut c);
    assert_eq!(types(&out), [FrameType::Register]);
    assert_eq!(
        c.phase(at(60_000)),
        Phase::Connecting,
        "hidden until acknowledged"
    );
    c.receive(&ack(FrameType::Register), &mut w.rng, at(60_001))
        .unwrap();
    let second = c.qr_text().unwrap();
    assert_ne!(first, second);
    assert_eq!(c.offer_rotation(), Some((1, at(80_000))));
    // The old code no longer links: its token is unknown to the display.
    w.account.open_link_intent(at(60_002));
    let (_, hello) = w.account.scan(&first, &mut w.rng, at(60_002)).unwrap();
    c.receive(&message(&hello), &mut w.rng, at(60_002)).unwrap();
    assert_eq!(types(&sent(&mut c)), [FrameType::Release]);
    assert_eq!(c.phase(at(60_002)), Phase::Showing);
    // After the last rotation the display ends: reload.
    let end = at(60_000 + 20_000 * u64::from(c.max_rotations()));
    assert!(c.poll(&mut w.rng, end));
    assert_eq!(c.phase(end), Phase::Failed);
    assert!(c.failure().unwrap().contains("Reload"));
    assert_eq!(c.qr_text(), None);
}

#[test]
fn a_forged_hello_is_released_and_the_genuine_one_links() {
    let mut w = World::new(3);
    let mut c = w.showing("Edge", T0);
    let text = c.qr_text().unwrap();
    w.account.open_link_intent(T0);
    let (_, hello) = w.account.scan(&text, &mut w.rng, T0).unwrap();
    let mut forged = hello.clone();
    *forged.last_mut().unwrap() ^= 1;
    c.receive(&message(&forged), &mut w.rng, T0).unwrap();
    assert_eq!(types(&sent(&mut c)), [FrameType::Release]);
    assert_eq!(c.phase(T0), Phase::Showing);
    // The relay refuses the Release (nothing reserved any more): no notice.
    let refused = Frame::Error {
        code: 300,
        text: "not reserved",
    }
    .encode();
    c.receive(&refused, &mut w.rng, T0).unwrap();
    assert!(c.take_notices().is_empty());
    let mut w2 = World {
        rng: ChaCha20Rng::seed_from_u64(33),
        account: w.account.clone(),
    };
    w2.link(&mut c, at(10));
    assert_eq!(c.phase(at(20)), Phase::Linked);
}

#[test]
fn bad_bytes_are_an_error_and_change_nothing() {
    let mut w = World::new(4);
    let mut c = w.showing("Safari", T0);
    let text = c.qr_text();
    for bad in [&[][..], &[0x7f], &[0x84, 0x01], &[0x83, 0, 0, 0, 1, 9]] {
        assert!(matches!(
            c.receive(bad, &mut w.rng, T0),
            Err(WebError::Frame(_))
        ));
    }
    assert_eq!(c.qr_text(), text);
    assert_eq!(c.phase(T0), Phase::Showing);
    // A relay refusal of our Register is told to the user.
    c.poll(&mut w.rng, at(60_000));
    sent(&mut c);
    let err = Frame::Error {
        code: 400,
        text: "quota exceeded",
    }
    .encode();
    c.receive(&err, &mut w.rng, at(60_000)).unwrap();
    assert_eq!(
        c.take_notices(),
        [Notice::RelayError {
            code: 400,
            problem: Problem::RelayRefused
        }]
    );
    assert_eq!(c.phase(at(60_000)), Phase::Connecting);
    // A pairing goes on over a new connection: the same client, the offer
    // registered again; the relay's "already registered" (a conflict) is
    // expected, not a notice, and the QR code shows.
    c.connected(at(60_000)).unwrap();
    let again = sent(&mut c);
    assert_eq!(types(&again), [FrameType::Identify, FrameType::Register]);
    c.receive(&ack(FrameType::Identify), &mut w.rng, at(60_000))
        .unwrap();
    let held = Frame::Error {
        code: 600,
        text: "token already registered",
    }
    .encode();
    c.receive(&held, &mut w.rng, at(60_000)).unwrap();
    assert!(c.take_notices().is_empty());
    assert_eq!(c.phase(at(60_000)), Phase::Showing);
    // A label the core refuses.
    assert!(matches!(
        BrowserCompanion::new("", None, &mut w.rng, T0),
        Err(WebError::Label(_))
    ));
    assert!(matches!(
        BrowserCompanion::restore(b"not a session", &mut w.rng, T0),
        Err(WebError::Persist(_))
    ));
}

/// Whether `s` obeys a device label's character rules (no control,
/// bidirectional, zero-width or separator characters): every character but
/// the plain space is a valid one-character label.
fn label_safe(s: &str) -> bool {
    s.chars()
        .all(|c| c == ' ' || devicelink::DeviceLabel::new(c.to_string()).is_ok())
}

/// A relay's error text that would spoof the page: a right-to-left
/// override, isolates, zero-width and line separators, controls, and words
/// of the relay's choosing.
const SPOOF: &str = "Linked\u{202E}devorppa\u{202C} \u{2066}ok\u{2069}\u{200B}\u{2028}\u{1b}[2J\r\nType your password";

/// Every string the page shows for a notice, a failure or a logout.
fn displayed(c: &BrowserCompanion, notices: &[Notice], now: Timestamp) -> Vec<String> {
    let mut out: Vec<String> = notices
        .iter()
        .flat_map(|n| [n.kind().to_owned(), n.text()])
        .collect();
    out.extend(c.failure());
    out.extend(c.check_code());
    out.extend(c.logout_reason(now).map(|r| logout_text(r).to_owned()));
    out.extend(c.devices().iter().map(|d| d.label.as_str().to_owned()));
    out
}

#[test]
fn a_relay_error_text_never_reaches_the_page() {
    let mut w = World::new(11);
    let mut c = w.showing("Chromium", T0);
    // Every code the relay sends (the transport's own, each kind's core
    // code, unknown ones), with text that carries bidi overrides and
    // controls, answering a frame whose refusal is not expected.
    let all_codes = [
        codes::MALFORMED_FRAME,
        codes::TEXT_MESSAGE,
        codes::TOO_BIG,
        codes::NOT_IDENTIFIED,
        codes::ACCOUNT_PROOF_NEEDED,
        codes::WRONG_FRAME,
        codes::WRONG_KIND,
        codes::IDENTIFY_NOT_FIRST,
        codes::RATE_LIMITED,
        codes::NEW_ACCOUNTS_RATE,
        codes::IDLE,
        codes::PEER_GONE,
        codes::SHUTTING_DOWN,
        100,
        200,
        300,
        400,
        500,
        600,
        700,
        800,
        0,
        99,
        900,
        u16::MAX,
    ];
    for (i, code) in all_codes.into_iter().enumerate() {
        let now = at(i as u64);
        // A rotation queues a Register: its refusal (other than "already
        // registered") is told to the user.
        c.connected(now).unwrap();
        sent(&mut c);
        c.receive(&ack(FrameType::Identify), &mut w.rng, now)
            .unwrap();
        let err = Frame::Error { code, text: SPOOF }.encode();
        c.receive(&err, &mut w.rng, now).unwrap();
        let notices = c.take_notices();
        if code / 100 == 6 {
            // A conflict on Register is the expected "already held".
            assert!(notices.is_empty(), "{code}");
            continue;
        }
        let problem = Problem::from_relay_code(code);
        assert_eq!(notices, [Notice::RelayError { code, problem }], "{code}");
        assert_eq!(notices[0].text(), problem.sentence());
        assert_eq!(notices[0].problem(), Some(problem));
        for s in displayed(&c, &notices, now) {
            assert!(!s.contains("Type your password"), "{code}: {s:?}");
            assert!(label_safe(&s), "{code}: {s:?}");
        }
    }
    // Linked, the same: a refused Subscribe.
    let mut c = w.showing("Firefox", T0);
    w.link(&mut c, T0);
    c.connected(at(100)).unwrap();
    sent(&mut c);
    for of in [FrameType::Identify, FrameType::PublishList] {
        c.receive(&ack(of), &mut w.rng, at(100)).unwrap();
    }
    let err = Frame::Error {
        code: codes::NOT_IDENTIFIED,
        text: SPOOF,
    }
    .encode();
    c.receive(&err, &mut w.rng, at(100)).unwrap();
    let notices = c.take_notices();
    assert_eq!(
        notices,
        [Notice::RelayError {
            code: codes::NOT_IDENTIFIED,
            problem: Problem::RelayUnauthenticated
        }]
    );
    for s in displayed(&c, &notices, at(100)) {
        assert!(label_safe(&s) && !s.contains("password"), "{s:?}");
    }
}

#[test]
fn each_problem_class_has_its_fixed_sentence() {
    let mut sentences = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for p in Problem::ALL {
        let s = p.sentence();
        assert!(label_safe(s), "{p:?}: {s:?}");
        assert!(s.ends_with('.'), "{p:?}: {s:?}");
        assert!(sentences.insert(s), "{p:?} shares its sentence");
        assert!(names.insert(p.as_str()), "{p:?} shares its name");
        assert!(p
            .as_str()
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-'));
    }
    assert!(Problem::LabelTooLong
        .sentence()
        .contains(&devicelink::label::MAX_LABEL_LEN.to_string()));
    // Relay codes: the transport's own details, then the code's kind.
    for (code, p) in [
        (codes::MALFORMED_FRAME, Problem::RelayMalformed),
        (100, Problem::RelayMalformed),
        (codes::NOT_IDENTIFIED, Problem::RelayUnauthenticated),
        (codes::ACCOUNT_PROOF_NEEDED, Problem::RelayUnauthenticated),
        (codes::WRONG_FRAME, Problem::RelayUnexpected),
        (codes::RATE_LIMITED, Problem::RelayRateLimited),
        (codes::NEW_ACCOUNTS_RATE, Problem::RelayRateLimited),
        (400, Problem::RelayRefused),
        (codes::IDLE, Problem::RelayExpired),
        (500, Problem::RelayExpired),
        (600, Problem::RelayConflict),
        (codes::PEER_GONE, Problem::PhoneNotConnected),
        (codes::SHUTTING_DOWN, Problem::RelayShuttingDown),
        (700, Problem::RelayUnavailable),
        (800, Problem::RelayMisuse),
        (0, Problem::RelayUnknown),
        (900, Problem::RelayUnknown),
        (u16::MAX, Problem::RelayUnknown),
    ] {
        assert_eq!(Problem::from_relay_code(code), p, "{code}");
    }
    // The shell's errors: one class each, whatever their details.
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let class = |r: Result<BrowserCompanion, WebError>| r.unwrap_err().problem();
    assert_eq!(
        class(BrowserCompanion::new("", None, &mut rng, T0)),
        Problem::LabelEmpty
    );
    assert_eq!(
        class(BrowserCompanion::new(&"a".repeat(65), None, &mut rng, T0)),
        Problem::LabelTooLong
    );
    assert_eq!(
        class(BrowserCompanion::new("a\u{202E}b", None, &mut rng, T0)),
        Problem::LabelCharacters
    );
    // A saved state whose defect the core would quote: a spoofing string.
    let spoofed = format!("{{\"format\":\"{SPOOF}\"}}");
    let err = BrowserCompanion::restore(spoofed.as_bytes(), &mut rng, T0).unwrap_err();
    assert_eq!(err.problem(), Problem::SavedState);
    assert!(label_safe(err.problem().sentence()));
    let mut c = BrowserCompanion::new("Chromium", None, &mut rng, T0).unwrap();
    let err = c.receive(&[0x7f], &mut rng, T0).unwrap_err();
    assert_eq!(err.problem(), Problem::BadFrame);
}

#[test]
fn a_declined_link_fails_with_the_reason() {
    let mut w = World::new(5);
    let mut c = w.showing("Chromium", T0);
    let text = c.qr_text().unwrap();
    w.account.open_link_intent(T0);
    let (mut primary, hello) = w.account.scan(&text, &mut w.rng, T0).unwrap();
    c.receive(&message(&hello), &mut w.rng, T0).unwrap();
    let request = body(&sent(&mut c)[0]);
    w.account
        .receive_request(&mut primary, &request, &mut w.rng, T0)
        .unwrap();
    let refusal = w
        .account
        .refuse(&mut primary, RefusalReason::Declined, &mut w.rng, T0)
        .unwrap();
    assert_eq!(
        devicelink::handshake::MessageHeader::parse(&refusal)
            .unwrap()
            .kind,
        MessageKind::Refusal
    );
    c.receive(&message(&refusal), &mut w.rng, T0).unwrap();
    assert_eq!(c.phase(T0), Phase::Failed);
    assert_eq!(c.failure_problem(), Some(Problem::Declined));
    assert_eq!(c.failure().as_deref(), Some(Problem::Declined.sentence()));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn revocation_logs_out_and_survives_a_reload() {
    let mut w = World::new(6);
    let mut c = w.showing("Chromium", T0);
    w.link(&mut c, T0);
    c.save().unwrap();
    let now = at(5_000);
    w.account.revoke(DeviceIndex(1), now).unwrap();
    c.receive(&w.list_frame(), &mut w.rng, now).unwrap();
    assert_eq!(c.phase(now), Phase::LoggedOut);
    assert_eq!(c.logout_reason(now), Some(LogoutReason::Revoked));
    assert_eq!(c.lease_expires_at(now), None);
    assert!(c.needs_save());
    // The relay's Logout after the list: the session already agrees.
    let logout = Frame::Logout {
        index: DeviceIndex(1),
        reason: LogoutReason::Revoked,
    }
    .encode();
    c.receive(&logout, &mut w.rng, now).unwrap();
    assert!(c.take_notices().is_empty());
    let saved = c.save().unwrap().unwrap();
    let mut r = BrowserCompanion::restore(&saved, &mut w.rng, at(10_000)).unwrap();
    assert_eq!(r.phase(at(10_000)), Phase::LoggedOut);
    assert_eq!(r.logout_reason(at(10_000)), Some(LogoutReason::Revoked));
    r.connected(at(10_000)).unwrap();
    assert_eq!(
        types(&sent(&mut r)),
        [FrameType::Identify],
        "a logged-out tab subscribes to nothing"
    );
}

#[test]
fn other_devices_are_announced_and_the_relay_alone_logs_nobody_out() {
    let mut w = World::new(7);
    let mut first = w.showing("Chromium", T0);
    w.link(&mut first, T0);
    let mut second = w.showing("Firefox on Windows", at(1_000));
    w.link(&mut second, at(1_000));
    assert_eq!(second.index(), Some(DeviceIndex(2)));
    first
        .receive(&w.list_frame(), &mut w.rng, at(2_000))
        .unwrap();
    let notices = first.take_notices();
    let [Notice::DeviceAdded(entry)] = notices.as_slice() else {
        panic!("{notices:?}")
    };
    assert_eq!(entry.index, DeviceIndex(2));
    assert_eq!(entry.label.as_str(), "Firefox on Windows");
    assert_eq!(first.devices().len(), 2);

    // A Logout the signed facts do not back: the session stays linked and
    // the user is told what the relay said.
    let logout = Frame::Logout {
        index: DeviceIndex(1),
        reason: LogoutReason::PrimaryOffline,
    }
    .encode();
    first.receive(&logout, &mut w.rng, at(3_000)).unwrap();
    assert_eq!(first.phase(at(3_000)), Phase::Linked);
    assert_eq!(
        first.take_notices(),
        [Notice::RelayLogout {
            reason: LogoutReason::PrimaryOffline
        }]
    );

    // Revoking the second tells the first.
    w.account.revoke(DeviceIndex(2), at(4_000)).unwrap();
    first
        .receive(&w.list_frame(), &mut w.rng, at(4_000))
        .unwrap();
    let notices = first.take_notices();
    let [Notice::DeviceRemoved { entry, reason }] = notices.as_slice() else {
        panic!("{notices:?}")
    };
    assert_eq!(
        (entry.index, *reason),
        (DeviceIndex(2), Some(LogoutReason::Revoked))
    );
    assert_eq!(first.phase(at(4_000)), Phase::Linked);
}

#[test]
fn heartbeats_extend_the_lease_and_silence_ends_it() {
    let mut w = World::new(8);
    let mut c = w.showing("Chromium", T0);
    w.link(&mut c, T0);
    let later = T0.saturating_add(days(10));
    let hb = w.account.heartbeat(later).to_bytes();
    c.receive(
        &Frame::PublishHeartbeat { bytes: &hb }.encode(),
        &mut w.rng,
        later,
    )
    .unwrap();
    assert_eq!(
        c.lease_expires_at(later),
        Some(later.saturating_add(days(14)))
    );
    // Within two days of the end: expiring soon.
    let warn = later.saturating_add(days(12));
    assert_eq!(c.phase(warn), Phase::ExpiringSoon);
    let end = later.saturating_add(days(14));
    assert_eq!(c.next_deadline(), Some(warn));
    assert!(c.poll(&mut w.rng, end));
    assert_eq!(c.phase(end), Phase::LoggedOut);
    assert_eq!(c.logout_reason(end), Some(LogoutReason::PrimaryOffline));
    assert!(!c.poll(&mut w.rng, end), "seen once");
    // A clock set back does not revive it.
    assert_eq!(c.phase(T0), Phase::LoggedOut);
}

// Natively only: proptest is a native dev-dependency.
#[cfg(not(target_arch = "wasm32"))]
mod total {
    use super::*;
    use proptest::prelude::*;

    /// A first byte of every frame type, and some that are none.
    fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec![
                0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81, 0x82, 0x83, 0x84, 0x85,
                0xff,
            ]),
            prop::collection::vec(any::<u8>(), 0..400),
        )
            .prop_map(|(t, mut body)| {
                body.insert(0, t);
                body
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the relay sends, the shell answers with a frame error
        /// or handles it; it never panics, and bytes that are not a frame
        /// change nothing, while pairing or linked.
        #[test]
        fn receive_is_total(frames in prop::collection::vec(frame_bytes(), 1..8)) {
            let mut w = World::new(9);
            let mut pairing = w.showing("Chromium", T0);
            let mut linked = w.showing("Firefox", T0);
            w.link(&mut linked, T0);
            for c in [&mut pairing, &mut linked] {
                for f in &frames {
                    let (phase, qr) = (c.phase(T0), c.qr_text());
                    if c.receive(f, &mut w.rng, T0).is_err() {
                        prop_assert!(Frame::decode(f).is_err());
                        prop_assert_eq!(c.phase(T0), phase);
                        prop_assert_eq!(c.qr_text(), qr);
                    }
                }
                c.poll(&mut w.rng, T0);
            }
            // Random bytes never log the linked one out or link the other.
            prop_assert_eq!(linked.phase(T0), Phase::Linked);
            prop_assert!(matches!(pairing.phase(T0), Phase::Showing | Phase::Connecting));
        }

        /// Saved state from storage is untrusted too: restore refuses
        /// garbage and a damaged save with an error.
        #[test]
        fn restore_is_total(cut in 0usize..4000, flip in any::<(usize, u8)>()) {
            let mut w = World::new(10);
            let mut c = w.showing("Chromium", T0);
            w.link(&mut c, T0);
            let saved = c.save().unwrap().unwrap();
            let cut = cut.min(saved.len());
            let _ = BrowserCompanion::restore(&saved[..cut], &mut w.rng, T0);
            let mut damaged = saved.clone();
            let at = flip.0 % damaged.len();
            damaged[at] ^= flip.1.max(1);
            prop_assert!(BrowserCompanion::restore(&damaged, &mut w.rng, T0).is_err());
            prop_assert!(BrowserCompanion::restore(&saved, &mut w.rng, T0).is_ok());
        }
    }
}

/// Issue 17, finding 2: a photographed code cannot link this browser
/// without its user. A verified Grant only shows the account and the check
/// code; "No" sends nothing and ends the pairing; "Link again" after a
/// logout refuses any other account's Grant before asking.
#[test]
fn the_page_confirms_only_on_its_users_yes_and_link_again_expects_its_account() {
    let mut attacker = World::new(71);
    let mut c = attacker.showing("Chromium on Linux", T0);
    let text = c.qr_text().unwrap();
    attacker.account.open_link_intent(T0);
    let (mut primary, hello) = attacker.account.scan(&text, &mut attacker.rng, T0).unwrap();
    c.receive(&message(&hello), &mut attacker.rng, T0).unwrap();
    let out = sent(&mut c);
    attacker
        .account
        .receive_request(&mut primary, &body(&out[0]), &mut attacker.rng, T0)
        .unwrap();
    c.receive(&routed(&out[0]), &mut attacker.rng, T0).unwrap();
    let grant = attacker
        .account
        .grant(&mut primary, &mut attacker.rng, T0)
        .unwrap();
    c.receive(&message(&grant), &mut attacker.rng, T0).unwrap();
    assert_eq!(c.phase(T0), Phase::AwaitingConsent);
    assert!(sent(&mut c).is_empty(), "no Confirm before the user's yes");
    assert_eq!(
        c.joining_account(),
        Some(attacker.account.account_id().fingerprint())
    );
    c.decline(T0).unwrap();
    assert!(sent(&mut c).is_empty(), "a No sends nothing");
    assert_eq!(c.phase(T0), Phase::Failed);
    assert!(c.session().is_none());

    // Linked to the genuine account, then logged out: "Link again" accepts
    // only that account.
    let mut w = World::new(72);
    let mut linked = w.showing("Chromium on Linux", T0);
    w.link(&mut linked, T0);
    let again = linked.link_again(None, &mut w.rng, at(1_000)).unwrap();
    assert!(c.link_again(None, &mut w.rng, T0).is_none(), "never linked");
    let mut again = again;
    again.connected(at(1_000)).unwrap();
    sent(&mut again);
    again
        .receive(&ack(FrameType::Identify), &mut w.rng, at(1_000))
        .unwrap();
    again
        .receive(&ack(FrameType::Register), &mut w.rng, at(1_000))
        .unwrap();
    let text = again.qr_text().unwrap();
    attacker.account.open_link_intent(at(1_000));
    let (mut primary, hello) = attacker
        .account
        .scan(&text, &mut attacker.rng, at(1_000))
        .unwrap();
    again
        .receive(&message(&hello), &mut attacker.rng, at(1_000))
        .unwrap();
    let out = sent(&mut again);
    attacker
        .account
        .receive_request(&mut primary, &body(&out[0]), &mut attacker.rng, at(1_000))
        .unwrap();
    let grant = attacker
        .account
        .grant(&mut primary, &mut attacker.rng, at(1_000))
        .unwrap();
    again
        .receive(&message(&grant), &mut attacker.rng, at(1_000))
        .unwrap();
    assert_eq!(
        again.phase(at(1_000)),
        Phase::AwaitingApproval,
        "another account's Grant is refused before the user is asked"
    );
    assert_eq!(again.joining_account(), None);
}

/// A device linked to `account` with the core's own companion (no page).
fn link_core(account: &mut Account, rng: &mut ChaCha20Rng, now: Timestamp) {
    let policy = account.policy().clone();
    let mut c = Companion::new(
        DeviceIdentity::generate(rng),
        DeviceLabel::new("core").unwrap(),
        &policy,
        rng,
        now,
    );
    account.open_link_intent(now);
    let (mut p, hello) = account
        .scan(&c.offer().unwrap().to_text(), rng, now)
        .unwrap();
    let request = c.receive_hello(&hello, rng, now).unwrap();
    account.receive_request(&mut p, &request, rng, now).unwrap();
    let grant = account.grant(&mut p, rng, now).unwrap();
    c.receive_grant(&grant, now).unwrap();
    let confirm = c.consent(now).unwrap();
    account.confirm(&mut p, &confirm, now).unwrap();
}

fn list_frame_of(account: &Account) -> Vec<u8> {
    let bytes = account.device_list().to_bytes();
    Frame::PublishList { bytes: &bytes }.encode()
}

/// Issue 17, finding 1, in the page: a list from another history of the
/// account (a phone restored from an old backup) is refused, the user is
/// told once, and the mark survives a reload: a later list of that history
/// that skips versions is refused too, so the restored phone cannot re-list
/// a device by signing more versions.
#[test]
fn a_fork_is_refused_told_and_remembered_across_a_reload() {
    let mut w = World::new(81);
    let mut c = w.showing("Chromium on Linux", T0);
    w.link(&mut c, T0);
    let mut rng = ChaCha20Rng::seed_from_u64(82);
    let backup = w.account.save().unwrap();
    // Genuine: another device; the page holds the newest list.
    link_core(&mut w.account, &mut rng, at(10));
    c.receive(&list_frame_of(&w.account), &mut rng, at(10))
        .unwrap();
    let held = c.session().unwrap().device_list().version();
    assert_eq!(held, w.account.device_list_version());
    c.take_notices();
    c.save().unwrap();
    // The restored phone signs its own versions up to the held one.
    let mut restored = Account::restore(&backup).unwrap();
    while restored.device_list_version() < held {
        link_core(&mut restored, &mut rng, at(20));
    }
    assert_eq!(restored.device_list_version(), held);
    c.receive(&list_frame_of(&restored), &mut rng, at(30))
        .unwrap();
    let notices = c.take_notices();
    assert_eq!(notices, [Notice::Fork { version: held }]);
    assert_eq!(notices[0].kind(), "fork");
    assert!(notices[0].text().contains("Another copy of your phone"));
    assert_eq!(c.phase(at(30)), Phase::Linked);
    assert_eq!(c.session().unwrap().device_list().version(), held);
    assert!(c.needs_save(), "the fork mark must be saved");
    // After a reload, a list of the other history two versions ahead is
    // still refused (it would be accepted unchecked without the mark).
    let saved = c.save().unwrap().unwrap();
    let mut r = BrowserCompanion::restore(&saved, &mut rng, at(40)).unwrap();
    assert_eq!(r.session().unwrap().fork_seen(), Some(held));
    // On a connection, the tab subscribes after the version it holds (the
    // relay then sends every newer version it keeps, in order).
    r.connected(at(40)).unwrap();
    let out = sent(&mut r);
    assert!(out.iter().any(|f| matches!(
        Frame::decode(f),
        Ok(Frame::Subscribe { after: Some(v), .. }) if v == held
    )));
    link_core(&mut restored, &mut rng, at(40));
    link_core(&mut restored, &mut rng, at(40));
    assert!(restored.device_list_version() >= held + 2);
    r.receive(&list_frame_of(&restored), &mut rng, at(50))
        .unwrap();
    assert_eq!(r.session().unwrap().device_list().version(), held);
    assert!(r.take_notices().is_empty(), "told once");
    // A list too far ahead while connected: the tab asks again for the
    // versions after the one it holds, once.
    r.receive(&ack(FrameType::Identify), &mut rng, at(50))
        .unwrap();
    let mut w2 = w;
    link_core(&mut w2.account, &mut rng, at(60));
    link_core(&mut w2.account, &mut rng, at(60));
    let mut r2 = BrowserCompanion::restore(&saved, &mut rng, at(60)).unwrap();
    r2.receive(&list_frame_of(&w2.account), &mut rng, at(61))
        .unwrap();
    let out = sent(&mut r2);
    assert_eq!(types(&out), [FrameType::PublishList, FrameType::Subscribe]);
    assert!(matches!(
        Frame::decode(&out[1]),
        Ok(Frame::Subscribe { after: Some(v), .. }) if v == held
    ));
    r2.receive(&list_frame_of(&w2.account), &mut rng, at(62))
        .unwrap();
    assert!(sent(&mut r2).is_empty(), "asked once per held version");
}

/// A "yes" given while the socket was down is not lost: the Confirm goes out
/// again on the next connection until the relay routes it.
#[test]
fn a_confirm_released_while_disconnected_is_sent_on_the_next_connection() {
    let mut w = World::new(91);
    let mut c = w.showing("Chromium on Linux", T0);
    let text = c.qr_text().unwrap();
    w.account.open_link_intent(T0);
    let (mut primary, hello) = w.account.scan(&text, &mut w.rng, T0).unwrap();
    c.receive(&message(&hello), &mut w.rng, T0).unwrap();
    let out = sent(&mut c);
    w.account
        .receive_request(&mut primary, &body(&out[0]), &mut w.rng, T0)
        .unwrap();
    c.receive(&routed(&out[0]), &mut w.rng, T0).unwrap();
    let grant = w.account.grant(&mut primary, &mut w.rng, T0).unwrap();
    c.receive(&message(&grant), &mut w.rng, T0).unwrap();
    // The socket drops; the user says yes; the queued frames are gone.
    c.consent(T0).unwrap();
    assert_eq!(c.phase(T0), Phase::Linked);
    c.connected(at(1)).unwrap();
    let out = sent(&mut c);
    assert_eq!(
        types(&out),
        [
            FrameType::Identify,
            FrameType::Message,
            FrameType::PublishList,
            FrameType::Subscribe
        ]
    );
    // The phone confirms it (idempotently), and once routed it is not sent
    // again.
    w.account
        .confirm(&mut primary, &body(&out[1]), at(1))
        .unwrap();
    c.receive(&ack(FrameType::Identify), &mut w.rng, at(1))
        .unwrap();
    c.receive(&routed(&out[1]), &mut w.rng, at(1)).unwrap();
    c.connected(at(2)).unwrap();
    assert_eq!(
        types(&sent(&mut c)),
        [
            FrameType::Identify,
            FrameType::PublishList,
            FrameType::Subscribe
        ]
    );
}

/// The browser's key store in these tests: an Ed25519 key whose secret the
/// shell never sees (WebCrypto's non-extractable `CryptoKey` in the page).
struct KeyStore(ed25519_dalek::SigningKey);

impl KeyStore {
    fn new(seed: u8) -> Self {
        KeyStore(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
    fn public(&self) -> devicelink::DeviceKey {
        devicelink::DeviceKey::from_bytes(self.0.verifying_key().to_bytes())
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes().to_vec()
    }
}

#[test]
fn a_key_store_device_links_and_no_saved_state_holds_its_secret() {
    let mut w = World::new(40);
    let keys = KeyStore::new(9);
    let stranger = KeyStore::new(10);
    let now = at(1_000);
    let mut c = BrowserCompanion::new("Chromium", Some(keys.public()), &mut w.rng, T0).unwrap();
    assert!(c.uses_key_store());
    assert_eq!(c.to_sign(), None, "nothing to sign before a Grant");
    assert!(matches!(
        c.signed(&keys.sign(b"x")),
        Err(WebError::Signature)
    ));
    c.connected(T0).unwrap();
    sent(&mut c);
    c.receive(&ack(FrameType::Identify), &mut w.rng, T0)
        .unwrap();
    c.receive(&ack(FrameType::Register), &mut w.rng, T0)
        .unwrap();

    // Scan, Request, Grant as in `World::link`.
    let text = c.qr_text().unwrap();
    w.account.open_link_intent(now);
    let (mut primary, hello) = w.account.scan(&text, &mut w.rng, now).unwrap();
    c.receive(&message(&hello), &mut w.rng, now).unwrap();
    let request = sent(&mut c);
    w.account
        .receive_request(&mut primary, &body(&request[0]), &mut w.rng, now)
        .unwrap();
    c.receive(&routed(&request[0]), &mut w.rng, now).unwrap();
    let grant = w.account.grant(&mut primary, &mut w.rng, now).unwrap();
    c.receive(&message(&grant), &mut w.rng, now).unwrap();
    assert_eq!(c.phase(now), Phase::AwaitingConsent);

    // Consent needs the key store's signature over the Confirm.
    let err = c.consent(now).unwrap_err();
    assert_eq!(err.problem(), Problem::KeyStore);
    assert_eq!(c.phase(now), Phase::AwaitingConsent, "nothing changed");
    let confirm_bytes = c.to_sign().unwrap();
    assert!(confirm_bytes.starts_with(b"devicelink/v2 confirm"));
    // Another key's signature, or a short one, is refused and changes nothing.
    for bad in [
        stranger.sign(&confirm_bytes),
        keys.sign(&confirm_bytes)[..63].to_vec(),
    ] {
        assert!(matches!(c.signed(&bad), Err(WebError::Signature)));
        assert_eq!(c.to_sign().as_deref(), Some(&confirm_bytes[..]));
    }
    c.signed(&keys.sign(&confirm_bytes)).unwrap();
    assert_eq!(c.to_sign(), None);
    assert!(sent(&mut c).is_empty(), "signing is not consent");
    c.consent(now).unwrap();
    let out = sent(&mut c);
    // The Confirm goes; the Subscribe waits for the key store's proof.
    assert_eq!(types(&out), [FrameType::Message]);
    w.account
        .confirm(&mut primary, &body(&out[0]), now)
        .unwrap();
    assert_eq!(
        w.account.device_list().devices()[0].device,
        keys.public(),
        "the account certified the key store's key"
    );
    c.receive(&routed(&out[0]), &mut w.rng, now).unwrap();
    let proof_bytes = c.to_sign().unwrap();
    assert!(proof_bytes.starts_with(b"devicelink/v2 relay subscription"));
    assert!(matches!(
        c.signed(&stranger.sign(&proof_bytes)),
        Err(WebError::Signature)
    ));
    assert!(sent(&mut c).is_empty());
    c.signed(&keys.sign(&proof_bytes)).unwrap();
    assert_eq!(
        types(&sent(&mut c)),
        [FrameType::PublishList, FrameType::Subscribe]
    );

    // The saved session holds the public key only.
    let saved = c.save().unwrap().unwrap();
    let text = String::from_utf8(saved.clone()).unwrap();
    let (_header, body) = text.split_once('\n').unwrap();
    let state: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(state.get("identity").is_none(), "{text}");
    let stored = state["key_store"].as_str().unwrap();
    let probe = devicelink::DeviceKey::from_bytes(keys.public().to_bytes());
    assert_eq!(serde_json::to_value(probe).unwrap().as_str(), Some(stored));
    assert!(!text.contains(
        &serde_json::to_value(devicelink::DeviceIdentity::from_secret_bytes(&[9; 32]))
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    ));

    // A reload identifies as a new client: its proof is signed again
    // before the Subscribe leaves.
    let mut r = BrowserCompanion::restore(&saved, &mut w.rng, at(2_000)).unwrap();
    assert!(r.uses_key_store());
    r.connected(at(2_000)).unwrap();
    assert_eq!(types(&sent(&mut r)), [FrameType::Identify]);
    let again = r.to_sign().unwrap();
    assert_ne!(again, proof_bytes, "bound to the new client id");
    r.signed(&keys.sign(&again)).unwrap();
    let out = sent(&mut r);
    assert_eq!(types(&out), [FrameType::PublishList, FrameType::Subscribe]);
    let Ok(Frame::Subscribe {
        proof,
        account,
        index,
        ..
    }) = Frame::decode(&out[1])
    else {
        panic!("expected a Subscribe")
    };
    assert_eq!(proof.to_bytes().to_vec(), keys.sign(&again));
    assert_eq!((account, index), (w.account.account_id(), DeviceIndex(1)));
}
