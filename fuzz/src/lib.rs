//! Shared fixture of the devicelink fuzz targets and of the seed-corpus
//! generator (`examples/seed_corpus.rs`).
//!
//! The fixture is one complete link run exactly like known-answer vector 0 of
//! `tests/vectors/devicelink-v1.json` (`ChaCha20Rng::seed_from_u64(0)`, every
//! step at `now = 1_700_000_000_000`, label "Firefox on Linux"), stopped at
//! each receiving state. So the vector's messages are the *genuine* messages
//! for the fixture's state machines, and a corpus seeded from the vectors lets
//! the fuzzer mutate inputs that get past the header and length checks all
//! the way into the AEAD, signature and certificate code.
//!
//! Targets reach it through [`fixture`], built once per process (`OnceLock`).

use std::sync::OnceLock;
use std::time::Duration;

use devicelink::audit::AuditLog;
use devicelink::certificate::DeviceListEntry;
use devicelink::relay::{ClientId, Directory, Ledger};
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceLabel, LinkedSession, OfferDisplay, Policy,
    PrimaryHandshake, PrimaryHeartbeat, RefusalReason, SignedDeviceList, Timestamp, TokenId,
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

/// The saved-state kinds, as `devicelink::persist` names them in the header.
pub const KINDS: [&str; 8] = [
    "account",
    "companion",
    "primary handshake",
    "linked session",
    "offer display",
    "directory",
    "ledger",
    "token store",
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
/// writes: `{"format":"devicelink","kind":K,"version":1,"sha256":H}` where `H`
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
    /// A genuine authenticated Refusal for the same pairing (from a clone of
    /// the primary awaiting the user's decision).
    pub refusal: Vec<u8>,
    /// A heartbeat signed by the account at `now`.
    pub heartbeat: Vec<u8>,
    /// Companion showing the offer, waiting for the Hello.
    pub companion_awaiting_hello: Companion,
    /// Companion that answered the Hello, waiting for the Grant.
    pub companion_awaiting_grant: Companion,
    /// Companion after the Grant (linked).
    pub companion_linked: Companion,
    /// Primary that sent the Hello, waiting for the Request.
    pub primary_awaiting_request: PrimaryHandshake,
    /// Primary that received the Request (the user's decision is pending).
    pub primary_request_received: PrimaryHandshake,
    /// Primary that sent the Grant, waiting for the Confirm.
    pub primary_awaiting_confirm: PrimaryHandshake,
    /// Primary after the Confirm.
    pub primary_confirmed: PrimaryHandshake,
    /// The account with the new device's slot pending (goes with
    /// [`Fixture::primary_awaiting_confirm`]).
    pub account_awaiting_confirm: Account,
    /// The account after the Confirm (one active companion).
    pub account_linked: Account,
    /// The companion's linked session.
    pub session: LinkedSession,
    /// Saves of the receiving states.
    pub saved: Saved,
}

/// Runs the link of known-answer vector 0. Panics if the library refuses its
/// own genuine exchange (then the fixture, not the input, is broken).
pub fn build() -> Fixture {
    let mut rng = rng(SEED);
    let now = now();
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let identity = DeviceIdentity::generate(&mut rng);
    let label = DeviceLabel::new(LABEL).expect("fixture label");
    let mut companion = Companion::new(identity, label, &policy, &mut rng, now);
    let companion_awaiting_hello = companion.clone();
    let offer = companion.offer().expect("fixture offer").clone();
    let offer_text = offer.to_text();
    let (mut primary, hello) = account
        .scan(&offer_text, &mut rng, now)
        .expect("fixture scan");
    let primary_awaiting_request = primary.clone();
    let request = companion.receive_hello(&hello, now).expect("fixture hello");
    let companion_awaiting_grant = companion.clone();
    primary
        .receive_request(&request, now)
        .expect("fixture request");
    let primary_request_received = primary.clone();
    let grant = account
        .grant(&mut primary, &mut rng, now)
        .expect("fixture grant");
    let primary_awaiting_confirm = primary.clone();
    let account_awaiting_confirm = account.clone();
    let confirm = companion
        .receive_grant(&grant, now)
        .expect("fixture grant accepted");
    let companion_linked = companion.clone();
    account
        .confirm(&mut primary, &confirm, now)
        .expect("fixture confirm");
    let session = companion.session().expect("fixture session").clone();
    let heartbeat = PrimaryHeartbeat::sign(account.key(), now).to_bytes();
    // A separate RNG so the refusal does not disturb the vector's RNG order.
    let refusal = primary_request_received
        .clone()
        .refuse(RefusalReason::Declined, &mut self::rng(SEED + 1))
        .expect("fixture refusal");
    let saved = Saved {
        companion_awaiting_hello: companion_awaiting_hello.save().expect("save"),
        companion_awaiting_grant: companion_awaiting_grant.save().expect("save"),
        primary_awaiting_request: primary_awaiting_request.save().expect("save"),
        primary_awaiting_confirm: primary_awaiting_confirm.save().expect("save"),
        account_awaiting_confirm: account_awaiting_confirm.save().expect("save"),
        session: session.save().expect("save"),
    };
    for (kind, bytes) in [
        ("companion", &saved.companion_awaiting_hello),
        ("companion", &saved.companion_awaiting_grant),
        ("primary handshake", &saved.primary_awaiting_request),
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
        token: offer.token_id(),
        offer_text,
        hello,
        request,
        grant,
        confirm,
        refusal,
        heartbeat,
        companion_awaiting_hello,
        companion_awaiting_grant,
        companion_linked,
        primary_awaiting_request,
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
        .register(COMPANION, f.token, at(60_000), now())
        .expect("fresh ledger registers");
    ledger
}

/// A relay ledger where the fixture's genuine Hello (from [`PRIMARY`])
/// reserved the token and its genuine Request (from [`COMPANION`]) redeemed it.
pub fn ledger_redeemed(f: &Fixture) -> Ledger {
    let ledger = ledger_registered(f);
    ledger
        .route(&f.hello, PRIMARY, now())
        .expect("genuine Hello reserves");
    ledger
        .route(&f.request, COMPANION, now())
        .expect("genuine Request redeems");
    ledger
}

/// Signed structures of the fixture's account beyond the vector's: newer
/// device lists (still listing the device, revoking it), heartbeats (fresh,
/// near the offline limit, past it), and another account's. Seeds for
/// `signed_structures`, each `(name, bytes)`.
pub fn signed_extras(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let key = f.account_linked.key();
    let device = f.session.device_key();
    let index = f.session.index();
    let me = DeviceListEntry { index, device };
    let other = DeviceListEntry {
        index: devicelink::DeviceIndex(index.0 + 1),
        device: DeviceIdentity::generate(&mut rng(99)).device_key(),
    };
    let day = 86_400_000;
    let mut out = vec![
        (
            "list_v3_listed".to_string(),
            SignedDeviceList::sign(key, 3, &[me], at(1_000)).to_bytes(),
        ),
        (
            "list_v3_two".into(),
            SignedDeviceList::sign(key, 3, &[me, other], at(2_000)).to_bytes(),
        ),
        (
            "list_v4_revoked".into(),
            SignedDeviceList::sign(key, 4, &[other], at(3_000)).to_bytes(),
        ),
        (
            "list_v5_empty".into(),
            SignedDeviceList::sign(key, 5, &[], at(4_000)).to_bytes(),
        ),
        (
            "list_v1_stale".into(),
            SignedDeviceList::sign(key, 1, &[me], at(0)).to_bytes(),
        ),
        (
            "list_v9_after_expiry".into(),
            SignedDeviceList::sign(key, 9, &[me], at(15 * day)).to_bytes(),
        ),
        (
            "heartbeat_1h".into(),
            PrimaryHeartbeat::sign(key, at(3_600_000)).to_bytes(),
        ),
        (
            "heartbeat_13d".into(),
            PrimaryHeartbeat::sign(key, at(13 * day)).to_bytes(),
        ),
        (
            "heartbeat_15d".into(),
            PrimaryHeartbeat::sign(key, at(15 * day)).to_bytes(),
        ),
        (
            "heartbeat_epoch".into(),
            PrimaryHeartbeat::sign(key, Timestamp::EPOCH).to_bytes(),
        ),
    ];
    let stranger = devicelink::AccountKey::generate(&mut rng(7));
    out.push((
        "heartbeat_other_account".into(),
        PrimaryHeartbeat::sign(&stranger, at(1)).to_bytes(),
    ));
    out.push((
        "list_other_account".into(),
        SignedDeviceList::sign(&stranger, 3, &[me], at(1)).to_bytes(),
    ));
    out
}

/// Saved states of every persisted kind, at several points of a seeded run,
/// each `(name, bytes)`. Seeds for `persisted_state`.
pub fn saved_states(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |name: &str, bytes: Result<Vec<u8>, devicelink::persist::PersistError>| {
        out.push((name.to_string(), bytes.expect("save")));
    };
    // Accounts: pending slot, active, revoked, expired, at the limit.
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
    // Companions at every stage, and failed ones.
    push(
        "companion_awaiting_hello",
        f.companion_awaiting_hello.save(),
    );
    push(
        "companion_awaiting_grant",
        f.companion_awaiting_grant.save(),
    );
    push("companion_linked", f.companion_linked.save());
    let mut c = f.companion_awaiting_grant.clone();
    let _ = c.receive_grant(&f.refusal, now());
    push("companion_refused", c.save());
    let mut c = f.companion_awaiting_hello.clone();
    c.poll(at(70_000), &mut rng(5));
    push("companion_rotated", c.save());
    c.poll(at(1_000_000), &mut rng(5));
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
    let _ = p.refuse(RefusalReason::DeviceLimitReached { limit: 4 }, &mut rng(6));
    push("primary_refused", p.save());
    // Sessions: fresh, revoked, logged out.
    push("session", f.session.save());
    let mut s = f.session.clone();
    s.poll(at(15 * 86_400_000));
    push("session_logged_out", s.save());
    // Offer displays: fresh, rotated, cancelled, timed out, single-offer.
    let mut d = OfferDisplay::new(&f.policy, &mut rng(8), now());
    push("display_fresh", d.save());
    d.poll(at(61_000), &mut rng(9));
    push("display_rotated", d.save());
    d.poll(at(10_000_000), &mut rng(9));
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
    // Relay directory: empty, one account, two accounts (one with no device).
    push("directory_empty", Directory::new(&f.policy).save());
    let mut dir = Directory::new(&f.policy);
    let _ = dir.apply_device_list(f.account_linked.device_list(), now());
    let _ = dir.apply_heartbeat(
        &PrimaryHeartbeat::from_bytes(&f.heartbeat).expect("heartbeat"),
        at(5),
    );
    push("directory_one", dir.save());
    let other = Account::generate(f.policy.clone(), &mut rng(12), at(100));
    let _ = dir.apply_device_list(other.device_list(), at(100));
    push("directory_two", dir.save());
    dir.sweep(at(15 * 86_400_000));
    push("directory_swept", dir.save());
    // Relay ledger: empty, registered, reserved, redeemed, two tokens; and
    // a bare token store. Saves are in key order, so reproducible.
    push("ledger_empty", Ledger::default().save());
    let ledger = ledger_registered(f);
    push("ledger_registered_one", ledger.save());
    let _ = ledger.route(&f.hello, PRIMARY, at(1));
    push("ledger_reserved", ledger.save());
    let _ = ledger.route(&f.request, COMPANION, at(2));
    push("ledger_redeemed", ledger.save());
    push("token_store_redeemed", ledger.store().save());
    let ledger = ledger_registered(f);
    ledger
        .register(COMPANION, TokenId::from_bytes([7; 16]), at(90_000), now())
        .expect("register");
    let _ = ledger.route(&f.hello, PRIMARY, at(1));
    push("ledger_two", ledger.save());
    out
}

/// The audit trail of the fixture's run: offer shown, request, the
/// registry's events, a checkpoint, a revocation, a second checkpoint.
pub fn audit_log(f: &Fixture) -> AuditLog {
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
    log.refused("the user declined on the phone", at(3))
        .expect("refused");
    log.checkpoint(account.key(), at(4)).expect("checkpoint");
    log
}
