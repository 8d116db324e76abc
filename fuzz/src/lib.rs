//! Shared fixture of the devicelink fuzz targets and of the seed-corpus
//! generator (`examples/seed_corpus.rs`).
//!
//! The fixture is one complete link run exactly like known-answer vector 0 of
//! `tests/vectors/devicelink-v2.json` (`ChaCha20Rng::seed_from_u64(0)`, every
//! step at `now = 1_700_000_000_000`, label "Firefox on Linux", one RNG for
//! the whole run, the link intent opened just before the scan), stopped at
//! each receiving state. So the vector's messages are the *genuine* messages
//! for the fixture's state machines, and a corpus seeded from the vectors lets
//! the fuzzer mutate inputs that get past the header and length checks all
//! the way into the AEAD, signature and certificate code. [`build`] asserts
//! that it reproduces the vector (read by key, so new fields do not matter).
//!
//! Targets reach it through [`fixture`], built once per process (`OnceLock`).
//! Being test scaffolding, the fixture unwraps and asserts: if the library
//! refuses its own genuine exchange, the fixture (not a fuzz input) is broken.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use devicelink::audit::{AuditLog, SignedAnchor};
use devicelink::certificate::{DeviceListDraft, DeviceListEntry, RemovedDevice};
use devicelink::relay::{ClientId, Directory, Ledger, SourceKey};
use devicelink::{
    Account, AccountId, Companion, DeviceIdentity, DeviceLabel, LinkedSession, LogoutReason,
    OfferDisplay, Policy, PrimaryHandshake, PrimaryHeartbeat, RefusalReason, SignedDeviceList,
    Timestamp, TokenId,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Seed of the fixture's RNG (known-answer vector 0).
pub const SEED: u64 = 0;
/// The fixture's clock (known-answer vector 0).
pub const NOW_MS: u64 = 1_700_000_000_000;
/// The companion's label (known-answer vector 0).
pub const LABEL: &str = "Firefox on Linux";

/// The fixture's `now`.
pub fn now() -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS)
}

/// `now + ms`.
pub fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS + ms)
}

/// A deterministic RNG for calls that need one (polls, refusals).
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// The known-answer vectors, compiled in (so a fuzz binary runs from any
/// directory). Read by key: the file may gain fields.
pub const VECTORS_JSON: &str = include_str!("../../tests/vectors/devicelink-v2.json");

/// Known-answer vector `i`, as JSON: its top-level fields (seed, now,
/// label, …) with the fields of its `link` object (offer, messages, keys)
/// brought up beside them.
pub fn vector(i: usize) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(VECTORS_JSON).expect("the known-answer vectors are JSON");
    flatten_vector(&json["vectors"][i])
}

/// A vector's `link` fields merged into its top level.
pub fn flatten_vector(v: &serde_json::Value) -> serde_json::Value {
    let mut out = v.clone();
    if let (Some(obj), Some(link)) = (out.as_object_mut(), v["link"].as_object()) {
        for (k, val) in link {
            obj.entry(k.clone()).or_insert_with(|| val.clone());
        }
    }
    out
}

/// The base64 field `key` of a vector, decoded (panics if missing).
pub fn vector_bytes(v: &serde_json::Value, key: &str) -> Vec<u8> {
    let text = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing"));
    B64.decode(text)
        .unwrap_or_else(|e| panic!("vector field {key}: {e}"))
}

/// The saved-state kinds, as `devicelink::persist` names them in the header.
pub const KINDS: [&str; 10] = [
    "account",
    "companion",
    "primary handshake",
    "linked session",
    "offer display",
    "directory",
    "ledger",
    "token store",
    "phone",
    "device",
];

/// The state line of a saved state: what follows the first newline (the
/// header line), or all of `saved` if it has none.
pub fn body_of(saved: &[u8]) -> &[u8] {
    match saved.iter().position(|b| *b == b'\n') {
        Some(i) => &saved[i + 1..],
        None => saved,
    }
}

/// A saved state of `kind` around `body`, with the header `persist::save`
/// writes: `{"format":"devicelink","kind":K,"version":3,"sha256":H}` where `H`
/// is the base64 SHA-256 of `body`. The digest makes any blind mutation of a
/// saved state a `Corrupted` error, so the fuzzer mutates bodies and the
/// target seals them. [`build`] checks that this reproduces the library's own
/// saves byte for byte.
pub fn seal(kind: &str, body: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = format!(
        "{{\"format\":\"devicelink\",\"kind\":{},\"version\":{},\"sha256\":\"{}\"}}\n",
        serde_json::Value::from(kind),
        devicelink::persist::FORMAT_VERSION,
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// `save()` of each receiving state, computed once: a refused message must
/// leave the receiver's save byte-identical to these.
pub struct Saved {
    /// [`Fixture::companion_awaiting_hello`].
    pub companion_awaiting_hello: Vec<u8>,
    /// [`Fixture::companion_awaiting_grant`].
    pub companion_awaiting_grant: Vec<u8>,
    /// [`Fixture::primary_awaiting_request`].
    pub primary_awaiting_request: Vec<u8>,
    /// [`Fixture::account_awaiting_request`].
    pub account_awaiting_request: Vec<u8>,
    /// [`Fixture::primary_awaiting_confirm`].
    pub primary_awaiting_confirm: Vec<u8>,
    /// [`Fixture::account_awaiting_confirm`].
    pub account_awaiting_confirm: Vec<u8>,
    /// [`Fixture::session`].
    pub session: Vec<u8>,
}

/// One seeded link, stopped at each receiving state, with its genuine messages.
pub struct Fixture {
    /// The policy (default).
    pub policy: Policy,
    /// The account's id.
    pub account_id: AccountId,
    /// The QR text the companion showed.
    pub offer_text: String,
    /// The offer's token.
    pub token: TokenId,
    /// Genuine Hello (primary → companion).
    pub hello: Vec<u8>,
    /// Genuine Request (companion → primary).
    pub request: Vec<u8>,
    /// Genuine Grant (primary → companion).
    pub grant: Vec<u8>,
    /// Genuine Confirm (companion → primary).
    pub confirm: Vec<u8>,
    /// The companion's certificate (from the Grant).
    pub certificate: Vec<u8>,
    /// The account's device list after the link (version 2).
    pub device_list: Vec<u8>,
    /// A genuine authenticated Refusal for the same pairing (from a clone of
    /// the primary awaiting the user's decision).
    pub refusal: Vec<u8>,
    /// `account.heartbeat(now)` after the link (names the device list).
    pub heartbeat: Vec<u8>,
    /// Companion showing the offer, waiting for the Hello.
    pub companion_awaiting_hello: Companion,
    /// Companion that answered the Hello, waiting for the Grant.
    pub companion_awaiting_grant: Companion,
    /// Companion after the Grant, waiting for its user's consent.
    pub companion_awaiting_consent: Companion,
    /// Companion after its user's consent (linked).
    pub companion_linked: Companion,
    /// Primary that sent the Hello, waiting for the Request.
    pub primary_awaiting_request: PrimaryHandshake,
    /// The account after the scan (link intent used up; goes with
    /// [`Fixture::primary_awaiting_request`]).
    pub account_awaiting_request: Account,
    /// Primary that received the Request (the user's decision is pending).
    pub primary_request_received: PrimaryHandshake,
    /// Primary that sent the Grant, waiting for the Confirm.
    pub primary_awaiting_confirm: PrimaryHandshake,
    /// Primary after the Confirm.
    pub primary_confirmed: PrimaryHandshake,
    /// The account with the new device's slot pending (goes with
    /// [`Fixture::primary_awaiting_confirm`]).
    pub account_awaiting_confirm: Account,
    /// The account after the Confirm and the heartbeat (one active companion).
    pub account_linked: Account,
    /// The companion's linked session.
    pub session: LinkedSession,
    /// Saves of the receiving states.
    pub saved: Saved,
}

/// Runs the link of known-answer vector 0 and asserts that it reproduces the
/// vector byte for byte. Panics if the library refuses its own genuine
/// exchange or the vector changed (then the fixture, not the input, is
/// broken).
pub fn build() -> Fixture {
    let mut rng = rng(SEED);
    let now = now();
    let policy = Policy::default();
    // RNG order as in tests/vectors.rs: account key, device identity, offer,
    // primary ephemeral key, Request nonce, Grant nonce.
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let identity = DeviceIdentity::generate(&mut rng);
    let label = DeviceLabel::new(LABEL).expect("fixture label");
    let mut companion = Companion::new(identity, label, &policy, &mut rng, now);
    let companion_awaiting_hello = companion.clone();
    let offer = companion.offer().expect("fixture offer").clone();
    let offer_text = offer.to_text();
    account.open_link_intent(now);
    let (mut primary, hello) = account
        .scan(&offer_text, &mut rng, now)
        .expect("fixture scan");
    let primary_awaiting_request = primary.clone();
    let account_awaiting_request = account.clone();
    let request = companion
        .receive_hello(&hello, &mut rng, now)
        .expect("fixture hello");
    let companion_awaiting_grant = companion.clone();
    // The registry's request step (no RNG drawn: the account has room).
    let asked = account
        .receive_request(&mut primary, &request, &mut self::rng(SEED + 2), now)
        .expect("fixture request");
    let primary_request_received = primary.clone();
    let grant = account
        .grant(&mut primary, &mut rng, now)
        .expect("fixture grant");
    let primary_awaiting_confirm = primary.clone();
    let account_awaiting_confirm = account.clone();
    companion
        .receive_grant(&grant, now)
        .expect("fixture grant accepted");
    let companion_awaiting_consent = companion.clone();
    let confirm = companion.consent(now).expect("fixture consent");
    let companion_linked = companion.clone();
    let link = account
        .confirm(&mut primary, &confirm, now)
        .expect("fixture confirm");
    let session = companion.session().expect("fixture session").clone();
    let heartbeat = account.heartbeat(now).to_bytes();
    let certificate = link.certificate.to_bytes();
    let device_list = account.device_list().to_bytes();
    // A separate RNG so the refusal does not disturb the vector's RNG order.
    let refusal = account
        .clone()
        .refuse(
            &mut primary_request_received.clone(),
            RefusalReason::Declined,
            &mut self::rng(SEED + 1),
            now,
        )
        .expect("fixture refusal");

    // The fixture is vector 0, or the seeds stop reaching past authentication.
    let v = vector(0);
    assert_eq!(v["seed"].as_u64(), Some(SEED), "vector 0 seed");
    assert_eq!(v["now_ms"].as_u64(), Some(NOW_MS), "vector 0 now_ms");
    assert_eq!(v["label"].as_str(), Some(LABEL), "vector 0 label");
    assert_eq!(v["offer_text"].as_str(), Some(offer_text.as_str()));
    assert_eq!(
        v["check_code"].as_u64(),
        asked.check_code.map(|c| u64::from(c.value())),
        "vector 0 check_code"
    );
    for (k, genuine) in [
        ("account_id", &account.account_id().to_bytes()[..]),
        ("device_key", &session.device_key().to_bytes()[..]),
        ("offer_bytes", &offer.to_bytes()[..]),
        ("token_id", &offer.token_id().to_bytes()[..]),
        ("hello", &hello[..]),
        ("request", &request[..]),
        ("grant", &grant[..]),
        ("confirm", &confirm[..]),
        ("certificate", &certificate[..]),
        ("device_list", &device_list[..]),
        ("heartbeat", &heartbeat[..]),
    ] {
        assert!(
            vector_bytes(&v, k) == genuine,
            "the fixture's {k} differs from known-answer vector 0: adapt fuzz/src/lib.rs `build`"
        );
    }

    let saved = Saved {
        companion_awaiting_hello: companion_awaiting_hello.save().expect("save"),
        companion_awaiting_grant: companion_awaiting_grant.save().expect("save"),
        primary_awaiting_request: primary_awaiting_request.save().expect("save"),
        account_awaiting_request: account_awaiting_request.save().expect("save"),
        primary_awaiting_confirm: primary_awaiting_confirm.save().expect("save"),
        account_awaiting_confirm: account_awaiting_confirm.save().expect("save"),
        session: session.save().expect("save"),
    };
    for (kind, bytes) in [
        ("companion", &saved.companion_awaiting_hello),
        ("companion", &saved.companion_awaiting_grant),
        ("primary handshake", &saved.primary_awaiting_request),
        ("account", &saved.account_awaiting_request),
        ("account", &saved.account_awaiting_confirm),
        ("linked session", &saved.session),
    ] {
        assert!(
            seal(kind, body_of(bytes)) == *bytes,
            "the saved-state envelope changed: adapt fuzz/src/lib.rs `seal`"
        );
    }
    Fixture {
        policy,
        account_id: account.account_id(),
        token: offer.token_id(),
        offer_text,
        hello,
        request,
        grant,
        confirm,
        certificate,
        device_list,
        refusal,
        heartbeat,
        companion_awaiting_hello,
        companion_awaiting_grant,
        companion_awaiting_consent,
        companion_linked,
        primary_awaiting_request,
        account_awaiting_request,
        primary_request_received,
        primary_awaiting_confirm,
        primary_confirmed: primary,
        account_awaiting_confirm,
        account_linked: account,
        session,
        saved,
    }
}

/// The process-wide fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// The companion's client at the relay (it registers the fixture's token).
pub const COMPANION: ClientId = ClientId::from_bytes([0xc0; 16]);
/// The primary's client at the relay.
pub const PRIMARY: ClientId = ClientId::from_bytes([0xa0; 16]);

/// A relay ledger that knows the fixture's token (registered by
/// [`COMPANION`], open).
pub fn ledger_registered(f: &Fixture) -> Ledger {
    let ledger = Ledger::default();
    ledger
        .register(COMPANION, SourceKey::LOCAL, f.token, at(60_000), now())
        .expect("fresh ledger registers");
    ledger
}

/// A relay ledger where the fixture's genuine Hello (from [`PRIMARY`])
/// reserved the token and its genuine Request (from [`COMPANION`]) redeemed it.
pub fn ledger_redeemed(f: &Fixture) -> Ledger {
    let ledger = ledger_registered(f);
    ledger
        .route(PRIMARY, &f.hello, now())
        .expect("genuine Hello reserves");
    ledger
        .route(COMPANION, &f.request, now())
        .expect("genuine Request redeems");
    ledger
}

/// Signed structures of the fixture's account beyond the vector's, relative
/// to the session's list (version 2): chained successors (still listing the
/// device, adding one, revoking it), a gap, forks (same version, unchained
/// successor), stale and late lists; heartbeats (fresh, near the offline
/// limit, past it, naming a newer or a forked list); another account's; and
/// certificates carried by those lists. Seeds for `signed_structures`, each
/// `(name, bytes)`.
pub fn signed_extras(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let key = f.account_linked.key();
    let held = f.session.device_list();
    let anchor = f.account_linked.audit_anchor();
    let index = f.session.index();
    let me = DeviceListEntry::new(
        index,
        f.session.device_key(),
        f.session.label().clone(),
        now(),
    );
    let other = DeviceListEntry::new(
        devicelink::DeviceIndex(index.0 + 1),
        DeviceIdentity::generate(&mut rng(99)).device_key(),
        DeviceLabel::new("Chrome on Windows").expect("label"),
        at(2_000),
    );
    let day = 86_400_000;
    let sign = |draft: &DeviceListDraft, t: Timestamp| SignedDeviceList::sign(key, draft, t);
    let revoked = |draft: DeviceListDraft, index, reason| DeviceListDraft {
        removed: vec![RemovedDevice { index, reason }],
        ..draft
    };
    let v3_listed = sign(&DeviceListDraft::after(held, vec![me.clone()]), at(1_000));
    let v3_two = sign(
        &DeviceListDraft::after(held, vec![me.clone(), other.clone()]),
        at(2_000),
    );
    let v3_revoked = sign(
        &revoked(
            DeviceListDraft::after(held, vec![other.clone()]),
            index,
            LogoutReason::Revoked,
        ),
        at(3_000),
    );
    let v4_revoked = sign(
        &revoked(
            DeviceListDraft::after(&v3_two, vec![other.clone()]),
            index,
            LogoutReason::Revoked,
        ),
        at(3_000),
    );
    let v5_empty = sign(
        &revoked(
            DeviceListDraft::after(&v4_revoked, vec![]),
            other.index,
            LogoutReason::PrimaryOffline,
        ),
        at(4_000),
    );
    let v2_fork = sign(
        &DeviceListDraft::new(2, vec![me.clone(), other.clone()]),
        at(500),
    );
    let v3_unchained = sign(&DeviceListDraft::new(3, vec![me.clone()]), at(1_000));
    let v1_stale = sign(&DeviceListDraft::new(1, vec![]), now());
    let v9_late = sign(&DeviceListDraft::new(9, vec![me.clone()]), at(15 * day));
    let hb = |list: &SignedDeviceList, t: Timestamp| {
        PrimaryHeartbeat::sign(key, list, anchor, t).to_bytes()
    };
    let cert = |list: &SignedDeviceList, i: devicelink::DeviceIndex| {
        devicelink::DeviceCertificate::from_list(list.clone(), i)
            .expect("listed")
            .to_bytes()
    };
    let stranger = devicelink::AccountKey::generate(&mut rng(7));
    let stranger_list = SignedDeviceList::sign(
        &stranger,
        &DeviceListDraft::after(held, vec![me.clone()]),
        at(1),
    );
    vec![
        ("list_v3_listed".to_string(), v3_listed.to_bytes()),
        ("list_v3_two".into(), v3_two.to_bytes()),
        ("list_v3_revoked".into(), v3_revoked.to_bytes()),
        ("list_v4_revoked".into(), v4_revoked.to_bytes()),
        ("list_v5_empty".into(), v5_empty.to_bytes()),
        ("list_v2_fork".into(), v2_fork.to_bytes()),
        ("list_v3_unchained".into(), v3_unchained.to_bytes()),
        ("list_v1_stale".into(), v1_stale.to_bytes()),
        ("list_v9_after_expiry".into(), v9_late.to_bytes()),
        ("list_other_account".into(), stranger_list.to_bytes()),
        ("heartbeat_1h".into(), hb(held, at(3_600_000))),
        ("heartbeat_13d".into(), hb(held, at(13 * day))),
        ("heartbeat_15d".into(), hb(held, at(15 * day))),
        ("heartbeat_epoch".into(), hb(held, Timestamp::EPOCH)),
        ("heartbeat_needs_v3".into(), hb(&v3_listed, at(5_000))),
        ("heartbeat_fork_v2".into(), hb(&v2_fork, at(5_000))),
        (
            "heartbeat_other_account".into(),
            PrimaryHeartbeat::sign(&stranger, &stranger_list, anchor, at(1)).to_bytes(),
        ),
        ("certificate_v3_two".into(), cert(&v3_two, other.index)),
        ("certificate_v2_fork".into(), cert(&v2_fork, index)),
    ]
}

/// Saved states of every persisted kind, at several points of a seeded run,
/// each `(name, bytes)`. Seeds for `persisted_state`.
pub fn saved_states(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |name: &str, bytes: Result<Vec<u8>, devicelink::persist::PersistError>| {
        out.push((name.to_string(), bytes.expect("save")));
    };
    // Accounts: link intent open, scanned, pending slot, active, revoked,
    // expired, without events.
    let mut a = f.account_linked.clone();
    a.open_link_intent(at(1));
    push("account_intent_open", a.save());
    push("account_scanned", f.account_awaiting_request.save());
    push("account_pending", f.account_awaiting_confirm.save());
    push("account_linked", f.account_linked.save());
    let mut a = f.account_linked.clone();
    a.revoke(f.session.index(), at(10)).expect("revoke");
    push("account_revoked", a.save());
    let mut a = f.account_linked.clone();
    a.poll(at(15 * 86_400_000));
    push("account_expired", a.save());
    let mut a = f.account_linked.clone();
    let _ = a.take_events();
    push("account_no_events", a.save());
    // The host API's phone and device.
    let host = |e: &dyn std::fmt::Display| devicelink::persist::PersistError::Malformed(e.to_string());
    let phone = devicelink::host::Phone::new(f.account_linked.clone());
    push("phone_linked", phone.save().map_err(|e| host(&e)));
    let device = devicelink::host::Device::new(
        devicelink::DeviceIdentity::generate(&mut rng(11)),
        devicelink::DeviceLabel::new("fuzz").expect("label"),
        &devicelink::Policy::default(),
        &mut rng(12),
        now(),
    );
    push("device_showing", device.save().map_err(|e| host(&e)));
    // Companions at every stage, and failed ones.
    push(
        "companion_awaiting_hello",
        f.companion_awaiting_hello.save(),
    );
    push(
        "companion_awaiting_grant",
        f.companion_awaiting_grant.save(),
    );
    push("companion_awaiting_consent", f.companion_awaiting_consent.save());
    push("companion_linked", f.companion_linked.save());
    let mut c = f.companion_awaiting_grant.clone();
    let _ = c.receive_grant(&f.refusal, now());
    push("companion_refused", c.save());
    let mut c = f.companion_awaiting_hello.clone();
    c.poll(&mut rng(5), at(70_000));
    push("companion_rotated", c.save());
    c.poll(&mut rng(5), at(1_000_000));
    push("companion_timed_out", c.save());
    // Primary handshakes at every stage.
    push(
        "primary_awaiting_request",
        f.primary_awaiting_request.save(),
    );
    push(
        "primary_request_received",
        f.primary_request_received.save(),
    );
    push(
        "primary_awaiting_confirm",
        f.primary_awaiting_confirm.save(),
    );
    push("primary_confirmed", f.primary_confirmed.save());
    let mut p = f.primary_request_received.clone();
    let _ = f.account_linked.clone().refuse(
        &mut p,
        RefusalReason::DeviceLimitReached { limit: 4 },
        &mut rng(6),
        now(),
    );
    push("primary_refused", p.save());
    // Sessions: fresh, after a newer list, revoked, logged out.
    push("session", f.session.save());
    let extras = signed_extras(f);
    let extra = |name: &str| {
        extras
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .expect("signed extra")
    };
    let mut s = f.session.clone();
    let list = |name: &str| SignedDeviceList::from_bytes(&extra(name)).expect("signed list");
    s.accept_device_list(&list("list_v3_two"), at(2_500))
        .expect("chained list");
    push("session_list_v3", s.save());
    let mut s = f.session.clone();
    let _ = s.accept_device_list(&list("list_v3_revoked"), at(3_500));
    push("session_revoked", s.save());
    let mut s = f.session.clone();
    s.poll(at(15 * 86_400_000));
    push("session_logged_out", s.save());
    // Offer displays: fresh, rotated, cancelled, timed out, single-offer.
    let mut d = OfferDisplay::new(&f.policy, &mut rng(8), now());
    push("display_fresh", d.save());
    d.poll(&mut rng(9), at(61_000));
    push("display_rotated", d.save());
    d.poll(&mut rng(9), at(10_000_000));
    push("display_timed_out", d.save());
    let mut d = OfferDisplay::new(&f.policy, &mut rng(10), now());
    d.cancel(at(1)).expect("cancel");
    push("display_cancelled", d.save());
    let single = Policy::builder()
        .max_rotations(0)
        .first_offer_lifetime(Duration::from_secs(30))
        .build()
        .expect("policy");
    push(
        "display_single",
        OfferDisplay::new(&single, &mut rng(11), now()).save(),
    );
    // Relay directory: empty, one account, two accounts (one with no device),
    // a fork seen, swept.
    push("directory_empty", Directory::new(&f.policy).save());
    let mut dir = Directory::new(&f.policy);
    dir.apply_device_list(f.account_linked.device_list(), now())
        .expect("directory list");
    dir.apply_heartbeat(
        &PrimaryHeartbeat::from_bytes(&f.heartbeat).expect("heartbeat"),
        at(5),
    )
    .expect("directory heartbeat");
    push("directory_one", dir.save());
    let other = Account::generate(f.policy.clone(), &mut rng(12), at(100));
    let _ = dir.apply_device_list(other.device_list(), at(100));
    push("directory_two", dir.save());
    let mut forked = dir.clone();
    let fork = SignedDeviceList::from_bytes(&extra("list_v2_fork")).expect("fork");
    let _ = forked.apply_device_list(&fork, at(200));
    push("directory_forked", forked.save());
    dir.sweep(at(15 * 86_400_000));
    push("directory_swept", dir.save());
    // Relay ledger: empty, registered, reserved, redeemed, two tokens; and
    // a bare token store. Saves are in key order, so reproducible.
    push("ledger_empty", Ledger::default().save());
    let ledger = ledger_registered(f);
    push("ledger_registered_one", ledger.save());
    let _ = ledger.route(PRIMARY, &f.hello, at(1));
    push("ledger_reserved", ledger.save());
    let _ = ledger.route(COMPANION, &f.request, at(2));
    push("ledger_redeemed", ledger.save());
    push("token_store_redeemed", ledger.store().save());
    let ledger = ledger_registered(f);
    ledger
        .register(COMPANION, SourceKey::LOCAL, TokenId::from_bytes([7; 16]), at(90_000), now())
        .expect("register");
    let _ = ledger.route(PRIMARY, &f.hello, at(1));
    push("ledger_two", ledger.save());
    out
}

/// The audit trail of the fixture's run (offer shown, request, the
/// registry's events, a checkpoint, a revocation, a refusal, a second
/// checkpoint), and the anchor the account signed into a heartbeat after
/// recording the revocation (it covers every entry but the last two).
pub fn audit_log(f: &Fixture) -> (AuditLog, SignedAnchor) {
    let mut account = f.account_linked.clone();
    let mut log = AuditLog::new(account.account_id());
    log.offer_shown(&f.offer_text, now()).expect("offer shown");
    if let Some(req) = f.primary_request_received.request() {
        log.link_requested(&req, now()).expect("link requested");
    }
    log.record_registry(&mut account, now()).expect("record");
    log.checkpoint(account.key(), at(1)).expect("checkpoint");
    let _ = account.revoke(f.session.index(), at(2));
    log.record_registry(&mut account, at(2)).expect("record");
    let heartbeat = account.heartbeat(at(3));
    let anchor = SignedAnchor::from(&heartbeat);
    assert_eq!(
        anchor.anchor(),
        log.anchor(),
        "the heartbeat vouches for the trail"
    );
    log.refused("the user declined on the phone", at(3))
        .expect("refused");
    log.checkpoint(account.key(), at(4)).expect("checkpoint");
    (log, anchor)
}

/// [`audit_log`] of the process-wide fixture, built once.
pub fn audit_fixture() -> &'static (AuditLog, SignedAnchor) {
    static A: OnceLock<(AuditLog, SignedAnchor)> = OnceLock::new();
    A.get_or_init(|| audit_log(fixture()))
}
