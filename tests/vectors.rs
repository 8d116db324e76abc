//! Known-answer vectors of protocol v2, and a second implementation.
//!
//! `compute` runs seeded links through the public API. Beside it, module
//! `spec` rebuilds every secret, intermediate and message from the seeded
//! RNG and `docs/PROTOCOL.md` alone, with the primitives used directly
//! (`ring` for SHA-256, HMAC and ChaCha20-Poly1305, HKDF written out from
//! HMAC as in RFC 5869, `x25519-dalek`'s RFC 7748 function, `ed25519-dalek`
//! for RFC 8032), and every library output is asserted equal to it. If the
//! document and the code disagree, this test fails.
//!
//! The JSON file lets another implementation check itself byte for byte.
//! Regenerate (only when the protocol changes) with
//! `DEVICELINK_WRITE_VECTORS=1 cargo test --test vectors`.

#![recursion_limit = "256"]

mod wire;
use wire::FromWire;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use devicelink::audit::AuditLog;
use devicelink::handshake::HandshakeError;
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, Directory, LinkedSession, Policy,
    PrimaryHeartbeat, RefusalReason, RegistryError, SignedDeviceList, Timestamp,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

/// Linking by typed code: its own vector file (`docs/PROTOCOL.md` §13.7).
#[path = "vectors/code.rs"]
mod code;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/devicelink-v2.json"
);

/// The second implementation, written from `docs/PROTOCOL.md`.
mod spec {
    use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
    use ring::{aead, digest, hmac};

    pub const OFFER: &[u8] = b"devicelink/v1 offer";
    pub const TOKEN_ID: &[u8] = b"devicelink/v1 token id";
    pub const TRANSCRIPT: &[u8] = b"devicelink/v2 transcript";
    pub const CONFIRM_TRANSCRIPT: &[u8] = b"devicelink/v2 confirm transcript";
    pub const HELLO: &[u8] = b"devicelink/v2 hello";
    pub const REQUEST: &[u8] = b"devicelink/v2 request";
    pub const GRANT: &[u8] = b"devicelink/v2 grant";
    pub const CHECK_CODE: &[u8] = b"devicelink/v2 check code";
    pub const CHECK_COMMITMENT: &[u8] = b"devicelink/v2.1 check commitment";
    pub const CHECK_CODE_MAC: &[u8] = b"devicelink/v2.1 check code";
    pub const CONFIRM: &[u8] = b"devicelink/v2 confirm";
    pub const LIST: &[u8] = b"devicelink/v2 device list";
    pub const LIST_HASH: &[u8] = b"devicelink/v2 device list hash";
    pub const HEARTBEAT: &[u8] = b"devicelink/v2 heartbeat";
    pub const AUDIT: &[u8] = b"devicelink/v2 audit";
    pub const CHECKPOINT: &[u8] = b"devicelink/v2 audit checkpoint";

    pub const HELLO_KIND: u8 = 1;
    pub const REQUEST_KIND: u8 = 2;
    pub const GRANT_KIND: u8 = 3;
    pub const REFUSAL_KIND: u8 = 4;
    pub const CONFIRM_KIND: u8 = 5;

    pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }

    pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
        for p in parts {
            ctx.update(p);
        }
        ctx.sign().as_ref().try_into().unwrap()
    }

    /// RFC 5869 HKDF-Expand for at most 32 bytes: `T(1) = HMAC(prk, info ‖ 0x01)`.
    pub fn expand(prk: &[u8; 32], label: &[u8], th: &[u8; 32], len: usize) -> Vec<u8> {
        assert!(len <= 32);
        hmac(prk, &[label, th, &[1]])[..len].to_vec()
    }

    pub fn seal(key: &[u8; 32], nonce: &[u8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let k =
            aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).unwrap());
        let mut buf = plain.to_vec();
        k.seal_in_place_append_tag(
            aead::Nonce::try_assume_unique_for_key(nonce).unwrap(),
            aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap();
        buf
    }

    pub fn open(key: &[u8; 32], nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let k =
            aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).unwrap());
        let mut buf = sealed.to_vec();
        let plain = k
            .open_in_place(
                aead::Nonce::try_assume_unique_for_key(nonce).unwrap(),
                aead::Aad::from(aad),
                &mut buf,
            )
            .ok()?;
        Some(plain.to_vec())
    }

    pub fn ed_public(seed: &[u8; 32]) -> [u8; 32] {
        SigningKey::from_bytes(seed).verifying_key().to_bytes()
    }

    pub fn ed_sign(seed: &[u8; 32], msg: &[u8]) -> [u8; 64] {
        SigningKey::from_bytes(seed).sign(msg).to_bytes()
    }

    pub fn ed_verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(public) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        key.verify_strict(msg, &sig).is_ok()
    }

    pub fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
        x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
    }

    pub fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
        x25519_dalek::x25519(*secret, *public)
    }

    /// The offer (§2): its 53 bytes, the redemption proof and the token id.
    pub struct Offer {
        pub bytes: Vec<u8>,
        pub proof: [u8; 16],
        pub token: [u8; 16],
    }

    pub fn offer(e_c: &[u8; 32], s: &[u8]) -> Offer {
        let mut body = vec![3u8];
        body.extend_from_slice(e_c);
        body.extend_from_slice(s);
        let d = sha256(&[OFFER, &body]);
        let mut bytes = body;
        bytes.extend_from_slice(&d[..4]);
        let proof: [u8; 16] = d[16..32].try_into().unwrap();
        let token = sha256(&[TOKEN_ID, &proof])[..16].try_into().unwrap();
        Offer {
            bytes,
            proof,
            token,
        }
    }

    pub fn header(kind: u8, token: &[u8; 16]) -> Vec<u8> {
        let mut h = vec![3, kind];
        h.extend_from_slice(token);
        h
    }

    /// The key schedule (§4).
    pub struct Schedule {
        pub dh: [u8; 32],
        pub th: [u8; 32],
        pub prk: [u8; 32],
        pub k_h: [u8; 32],
        pub k_r: [u8; 32],
        pub k_g: [u8; 32],
        /// The check-code key `k_c`.
        pub k_c: [u8; 32],
    }

    /// The primary's commitment to its check-code nonce (§4).
    pub fn check_commitment(th: &[u8; 32], n_p: &[u8; 32]) -> [u8; 32] {
        sha256(&[CHECK_COMMITMENT, th, n_p])
    }

    /// The six-digit check code (§4).
    pub fn check_code(k_c: &[u8; 32], n_c: &[u8; 32], n_p: &[u8; 32]) -> u32 {
        let mac = hmac(k_c, &[CHECK_CODE_MAC, n_c, n_p]);
        (u64::from_be_bytes(mac[..8].try_into().unwrap()) % 1_000_000) as u32
    }

    pub fn schedule(
        token: &[u8; 16],
        e_c: &[u8; 32],
        e_p: &[u8; 32],
        dh: [u8; 32],
        s: &[u8],
    ) -> Schedule {
        assert_ne!(dh, [0; 32]);
        let th = sha256(&[TRANSCRIPT, token, e_c, e_p]);
        let prk = hmac(s, &[&dh]);
        let key = |label| -> [u8; 32] { expand(&prk, label, &th, 32).try_into().unwrap() };
        Schedule {
            dh,
            th,
            prk,
            k_h: key(HELLO),
            k_r: key(REQUEST),
            k_g: key(GRANT),
            k_c: key(CHECK_CODE),
        }
    }

    pub fn th2(th: &[u8; 32], request: &[u8], grant: &[u8]) -> [u8; 32] {
        let rl = (request.len() as u32).to_be_bytes();
        let gl = (grant.len() as u32).to_be_bytes();
        sha256(&[CONFIRM_TRANSCRIPT, th, &rl, request, &gl, grant])
    }

    #[derive(Clone, Debug, PartialEq)]
    pub struct Entry {
        pub index: u32,
        pub key: [u8; 32],
        pub linked_at: u64,
        pub label: String,
    }

    /// A device list (§5.1) before its signature.
    #[derive(Clone, Debug, PartialEq)]
    pub struct List {
        pub account: [u8; 32],
        pub version: u64,
        pub issued_at: u64,
        pub previous: [u8; 32],
        pub anchor: (u64, [u8; 32]),
        pub entries: Vec<Entry>,
        pub removed: Vec<(u32, u8)>,
    }

    impl List {
        pub fn body(&self) -> Vec<u8> {
            let mut b = vec![2u8];
            b.extend_from_slice(&self.account);
            b.extend_from_slice(&self.version.to_be_bytes());
            b.extend_from_slice(&self.issued_at.to_be_bytes());
            b.extend_from_slice(&self.previous);
            b.extend_from_slice(&self.anchor.0.to_be_bytes());
            b.extend_from_slice(&self.anchor.1);
            b.push(self.entries.len() as u8);
            for e in &self.entries {
                b.extend_from_slice(&e.index.to_be_bytes());
                b.extend_from_slice(&e.key);
                b.extend_from_slice(&e.linked_at.to_be_bytes());
                b.push(e.label.len() as u8);
                b.extend_from_slice(e.label.as_bytes());
            }
            b.push(self.removed.len() as u8);
            for (index, code) in &self.removed {
                b.extend_from_slice(&index.to_be_bytes());
                b.push(*code);
            }
            b
        }

        pub fn hash(&self) -> [u8; 32] {
            sha256(&[LIST_HASH, &self.body()])
        }

        pub fn signed(&self, account_seed: &[u8; 32]) -> Vec<u8> {
            let body = self.body();
            let sig = ed_sign(account_seed, &[LIST, &body].concat());
            [body, sig.to_vec()].concat()
        }

        /// The list's successor as the registry makes it (§6.4).
        pub fn next(
            &self,
            issued_at: u64,
            entries: Vec<Entry>,
            removed: Vec<(u32, u8)>,
            anchor: (u64, [u8; 32]),
        ) -> List {
            List {
                account: self.account,
                version: self.version + 1,
                issued_at: issued_at.max(self.issued_at),
                previous: self.hash(),
                anchor,
                entries,
                removed,
            }
        }
    }

    pub fn heartbeat(
        account_seed: &[u8; 32],
        at: u64,
        list: &List,
        anchor: (u64, [u8; 32]),
    ) -> Vec<u8> {
        let mut b = vec![2u8];
        b.extend_from_slice(&ed_public(account_seed));
        b.extend_from_slice(&at.to_be_bytes());
        b.extend_from_slice(&list.version.to_be_bytes());
        b.extend_from_slice(&list.hash());
        b.extend_from_slice(&anchor.0.to_be_bytes());
        b.extend_from_slice(&anchor.1);
        let sig = ed_sign(account_seed, &[HEARTBEAT, &b].concat());
        [b, sig.to_vec()].concat()
    }

    /// Adds ℓ (the Ed25519 group order) to a little-endian scalar.
    pub fn add_group_order(s: &[u8]) -> Vec<u8> {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        let out = s
            .iter()
            .zip(L)
            .map(|(a, l)| {
                let v = u16::from(*a) + u16::from(l) + carry;
                carry = v >> 8;
                v as u8
            })
            .collect();
        assert_eq!(carry, 0);
        out
    }
}

/// The test's own copy of the seeded RNG: draws the documented values in the
/// documented order and records them.
struct Replica {
    rng: ChaCha20Rng,
    offset: usize,
    draws: Vec<Value>,
}

impl Replica {
    fn new(seed: u64) -> Self {
        Replica {
            rng: ChaCha20Rng::seed_from_u64(seed),
            offset: 0,
            draws: Vec::new(),
        }
    }

    fn draw<const N: usize>(&mut self, name: &str) -> [u8; N] {
        let mut out = [0u8; N];
        self.rng.fill_bytes(&mut out);
        self.draws
            .push(json!({"name": name, "len": N, "offset": self.offset}));
        self.offset += N;
        out
    }

    /// The library's RNG has used exactly what the replica drew, and the
    /// draws are consecutive bytes of one ChaCha20 keystream.
    fn check(&self, library: &ChaCha20Rng) {
        assert_eq!(library.get_word_pos(), self.rng.get_word_pos());
        assert_eq!(self.rng.get_word_pos() * 4, self.offset as u128);
    }
}

fn b(bytes: &[u8]) -> Value {
    Value::String(B64.encode(bytes))
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 1;
    v
}

/// One link's handshake as the library ran it, checked against `spec`.
struct Link {
    device_seed: [u8; 32],
    device_key: [u8; 32],
    e_c_secret: [u8; 32],
    s: [u8; 16],
    e_p_secret: [u8; 32],
    offer: spec::Offer,
    ks: spec::Schedule,
    /// The primary's check-code nonce `n_p` and its commitment.
    n_p: [u8; 32],
    commitment: [u8; 32],
    /// The companion's check-code nonce `n_c`.
    n_c: [u8; 32],
    code: u32,
    request_nonce: [u8; 12],
    hello: Vec<u8>,
    request: Vec<u8>,
    request_plain: Vec<u8>,
    companion_at_scan: Companion,
    companion_at_grant: Companion,
    companion: Companion,
    primary_at_scan: devicelink::PrimaryHandshake,
    primary: devicelink::PrimaryHandshake,
}

/// Runs a link up to the Request (the registry's answer is the caller's),
/// drawing the replica in the documented order and checking every byte.
fn start_link(
    account: &mut Account,
    rng: &mut ChaCha20Rng,
    rep: &mut Replica,
    prefix: &str,
    label: &str,
    now: Timestamp,
) -> Link {
    let policy = account.policy().clone();
    let identity = DeviceIdentity::generate(rng);
    let device_seed = rep.draw::<32>(&format!("{prefix}device identity seed"));
    assert_eq!(*identity.to_secret_bytes(), device_seed);
    let device_key = spec::ed_public(&device_seed);
    assert_eq!(identity.device_key().to_bytes(), device_key);

    let companion = Companion::new(
        identity,
        DeviceLabel::new(label).unwrap(),
        &policy,
        rng,
        now,
    );
    let e_c_secret = rep.draw::<32>(&format!("{prefix}offer X25519 secret"));
    let s = rep.draw::<16>(&format!("{prefix}offer secret"));
    let e_c = spec::x25519_public(&e_c_secret);
    let offer = spec::offer(&e_c, &s);
    let lib_offer = companion.offer().unwrap().clone();
    assert_eq!(lib_offer.to_bytes().to_vec(), offer.bytes);
    assert_eq!(
        lib_offer.to_text(),
        format!("DL:{}", data_encoding::BASE32_NOPAD.encode(&offer.bytes))
    );
    assert_eq!(lib_offer.token_id().to_bytes(), offer.token);
    assert_eq!(lib_offer.redemption_proof().to_bytes(), offer.proof);

    account.open_link_intent(now);
    let companion_at_scan = companion.clone();
    let mut companion = companion;
    let (primary, hello) = account.scan(&lib_offer.to_text(), rng, now).unwrap();
    let e_p_secret = rep.draw::<32>(&format!("{prefix}primary ephemeral secret"));
    let e_p = spec::x25519_public(&e_p_secret);
    let dh = spec::x25519(&e_p_secret, &e_c);
    assert_eq!(dh, spec::x25519(&e_c_secret, &e_p));
    let n_p = rep.draw::<32>(&format!("{prefix}primary check-code nonce"));
    let ks = spec::schedule(&offer.token, &e_c, &e_p, dh, &s);
    let commitment = spec::check_commitment(&ks.th, &n_p);
    assert_eq!(primary.check_code(), None, "not before the Request");

    let mut want_hello = spec::header(spec::HELLO_KIND, &offer.token);
    want_hello.extend_from_slice(&offer.proof);
    want_hello.extend_from_slice(&e_p);
    want_hello.extend_from_slice(&commitment);
    let mac = spec::hmac(&ks.k_h, &[&want_hello]);
    want_hello.extend_from_slice(&mac);
    assert_eq!(hello, want_hello, "Hello");
    assert_eq!(hello.len(), 130);

    let primary_at_scan = primary.clone();
    let request = companion.receive_hello(&hello, rng, now).unwrap();
    let n_c = rep.draw::<32>(&format!("{prefix}companion check-code nonce"));
    let request_nonce = rep.draw::<12>(&format!("{prefix}request nonce"));
    let code = spec::check_code(&ks.k_c, &n_c, &n_p);
    let mut request_plain = device_key.to_vec();
    request_plain.push(label.len() as u8);
    request_plain.extend_from_slice(label.as_bytes());
    request_plain.extend_from_slice(&n_c);
    let request_header = spec::header(spec::REQUEST_KIND, &offer.token);
    let want_request = [
        request_header.clone(),
        request_nonce.to_vec(),
        spec::seal(&ks.k_r, &request_nonce, &request_header, &request_plain),
    ]
    .concat();
    assert_eq!(request, want_request, "Request");
    assert_eq!(request.len(), 111 + label.len());
    assert_eq!(
        spec::open(&ks.k_r, &request[18..30], &request[..18], &request[30..]),
        Some(request_plain.clone())
    );
    assert_eq!(companion.check_code(), None, "not before the Grant");
    rep.check(rng);
    Link {
        device_seed,
        device_key,
        e_c_secret,
        s,
        e_p_secret,
        offer,
        ks,
        n_p,
        commitment,
        n_c,
        code,
        request_nonce,
        hello,
        request,
        request_plain,
        companion_at_scan,
        companion_at_grant: companion.clone(),
        companion,
        primary_at_scan,
        primary,
    }
}

struct Granted {
    grant_nonce: [u8; 12],
    grant: Vec<u8>,
    certificate: Vec<u8>,
    th2: [u8; 32],
    confirm: Vec<u8>,
    primary_at_confirm: devicelink::PrimaryHandshake,
}

/// The registry receives the Request and grants; the companion confirms.
/// `list` is the spec's model of the list this grant makes.
#[allow(clippy::too_many_arguments)]
fn finish_link(
    account: &mut Account,
    rng: &mut ChaCha20Rng,
    rep: &mut Replica,
    prefix: &str,
    link: &mut Link,
    account_seed: &[u8; 32],
    list: &spec::List,
    index: u32,
    now: Timestamp,
) -> Granted {
    let asked = account
        .receive_request(&mut link.primary, &link.request, rng, now)
        .unwrap();
    assert_eq!(asked.device.to_bytes(), link.device_key);
    assert_eq!(asked.check_code.map(|c| c.value()), Some(link.code));
    let grant = account.grant(&mut link.primary, rng, now).unwrap();
    let grant_nonce = rep.draw::<12>(&format!("{prefix}grant nonce"));
    let certificate = [index.to_be_bytes().to_vec(), list.signed(account_seed)].concat();
    let grant_plain = [link.n_p.to_vec(), certificate.clone()].concat();
    let header = spec::header(spec::GRANT_KIND, &link.offer.token);
    let want = [
        header.clone(),
        grant_nonce.to_vec(),
        spec::seal(&link.ks.k_g, &grant_nonce, &header, &grant_plain),
    ]
    .concat();
    assert_eq!(grant, want, "Grant");
    assert_eq!(
        spec::open(&link.ks.k_g, &grant[18..30], &grant[..18], &grant[30..]),
        Some(grant_plain.clone())
    );
    rep.check(rng);

    let th2 = spec::th2(&link.ks.th, &link.request, &grant);
    link.companion_at_grant = link.companion.clone();
    let join = link.companion.receive_grant(&grant, now).unwrap();
    assert_eq!(join.check_code.map(|c| c.value()), Some(link.code));
    assert!(
        link.companion.confirm_message().is_none(),
        "no Confirm before consent"
    );
    let confirm = link.companion.consent(now).unwrap();
    let msg = [spec::CONFIRM, &th2[..]].concat();
    let want = [
        spec::header(spec::CONFIRM_KIND, &link.offer.token),
        spec::ed_sign(&link.device_seed, &msg).to_vec(),
    ]
    .concat();
    assert_eq!(confirm, want, "Confirm");
    assert!(spec::ed_verify(&link.device_key, &msg, &confirm[18..]));
    let primary_at_confirm = link.primary.clone();
    let confirmed = account.confirm(&mut link.primary, &confirm, now).unwrap();
    assert_eq!(confirmed.certificate.to_bytes(), certificate);
    assert_eq!(account.device_list().to_bytes(), list.signed(account_seed));
    Granted {
        grant_nonce,
        grant,
        certificate,
        th2,
        confirm,
        primary_at_confirm,
    }
}

fn rejected(name: &str, receiver: &str, input: &[u8], error: String) -> Value {
    json!({"name": name, "receiver": receiver, "input": b(input), "error": error})
}

/// Recomputes an audit entry's hash from its exported line: the hashed body
/// is the line without its `prev` and `hash` members (§8.2).
fn audit_entry_hash(line: &str, prev: &[u8; 32]) -> [u8; 32] {
    let cut = line.find(",\"prev\":").unwrap();
    let body = format!("{}}}", &line[..cut]);
    spec::sha256(&[spec::AUDIT, prev, body.as_bytes()])
}

/// Runs the vector of `seed` at `now_ms` and checks it against `spec`.
fn compute(seed: u64, now_ms: u64, label: &str) -> Value {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut rep = Replica::new(seed);
    let now = t(now_ms);
    let policy = Policy::default();

    // --- The main link ---------------------------------------------------
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let account_seed = rep.draw::<32>("account key seed");
    assert_eq!(*account.key().to_secret_bytes(), account_seed);
    let account_id = spec::ed_public(&account_seed);
    assert_eq!(account.account_id().to_bytes(), account_id);

    let v1 = spec::List {
        account: account_id,
        version: 1,
        issued_at: now_ms,
        previous: [0; 32],
        anchor: (0, [0; 32]),
        entries: vec![],
        removed: vec![],
    };
    assert_eq!(account.device_list().to_bytes(), v1.signed(&account_seed));

    let mut link = start_link(&mut account, &mut rng, &mut rep, "", label, now);
    let entry1 = spec::Entry {
        index: 1,
        key: link.device_key,
        linked_at: now_ms,
        label: label.into(),
    };
    let v2 = v1.next(now_ms, vec![entry1.clone()], vec![], (0, [0; 32]));
    let g = finish_link(
        &mut account,
        &mut rng,
        &mut rep,
        "",
        &mut link,
        &account_seed,
        &v2,
        1,
        now,
    );
    let main_draws = rep.draws.clone();
    let heartbeat = account.heartbeat(now).to_bytes();
    assert_eq!(
        heartbeat,
        spec::heartbeat(&account_seed, now_ms, &v2, (0, [0; 32]))
    );

    // Rejected inputs at each receiver of the main link.
    let mut rejections = Vec::new();
    let mut throwaway = ChaCha20Rng::seed_from_u64(u64::MAX);
    {
        let cases: [(&str, Vec<u8>); 3] = [
            ("hello_mac_bit_flipped", flip(&link.hello, 97)),
            ("hello_key_bit_flipped", flip(&link.hello, 40)),
            ("hello_wrong_size", link.hello[..97].to_vec()),
        ];
        for (name, input) in cases {
            let mut c = link.companion_at_scan.clone();
            let e = c.receive_hello(&input, &mut throwaway, now).unwrap_err();
            rejections.push(rejected(
                name,
                "companion (awaiting scan)",
                &input,
                format!("{e:?}"),
            ));
        }
        let want = [
            HandshakeError::AuthenticationFailed,
            HandshakeError::AuthenticationFailed,
            HandshakeError::WrongSize {
                kind: devicelink::handshake::MessageKind::Hello,
                len: 97,
            },
        ];
        for (r, w) in rejections.iter().zip(want) {
            assert_eq!(r["error"], format!("{w:?}"));
        }
        let short = link.request[..79].to_vec();
        let e = link
            .primary_at_scan
            .clone()
            .receive_request(&short, now)
            .unwrap_err();
        assert_eq!(
            e,
            HandshakeError::WrongSize {
                kind: devicelink::handshake::MessageKind::Request,
                len: 79
            }
        );
        rejections.push(rejected(
            "request_wrong_size",
            "primary (offer scanned)",
            &short,
            format!("{e:?}"),
        ));
        let bad = flip(&link.request, 40);
        let e = link
            .primary_at_scan
            .clone()
            .receive_request(&bad, now)
            .unwrap_err();
        assert_eq!(e, HandshakeError::AuthenticationFailed);
        rejections.push(rejected(
            "request_bit_flipped",
            "primary (offer scanned)",
            &bad,
            format!("{e:?}"),
        ));
        let bad = flip(&g.grant, 60);
        let e = link
            .companion_at_grant
            .clone()
            .receive_grant(&bad, now)
            .unwrap_err();
        assert_eq!(e, HandshakeError::AuthenticationFailed);
        rejections.push(rejected(
            "grant_bit_flipped",
            "companion (awaiting grant)",
            &bad,
            format!("{e:?}"),
        ));
        let bad = flip(&g.confirm, 30);
        let e = g
            .primary_at_confirm
            .clone()
            .receive_confirm(&bad, now)
            .unwrap_err();
        assert_eq!(
            e,
            HandshakeError::BadSignature {
                what: "confirmation"
            }
        );
        rejections.push(rejected(
            "confirm_bit_flipped",
            "primary (grant sent)",
            &bad,
            format!("{e:?}"),
        ));
        // S + ℓ: the same signature with a non-canonical scalar.
        let mut bad = heartbeat.clone();
        let s = spec::add_group_order(&bad[185 - 32..]);
        bad[185 - 32..].copy_from_slice(&s);
        let e = PrimaryHeartbeat::from_bytes(&bad).unwrap_err();
        assert_eq!(
            e,
            devicelink::CertificateError::BadSignature { what: "heartbeat" }
        );
        rejections.push(rejected(
            "heartbeat_signature_s_plus_l",
            "PrimaryHeartbeat::from_bytes",
            &bad,
            format!("{e:?}"),
        ));
    }
    let mut session1: LinkedSession = link.companion.clone().into_session().unwrap();

    let main = json!({
        "account_key_seed": b(&account_seed),
        "device_identity_seed": b(&link.device_seed),
        "offer_x25519_secret": b(&link.e_c_secret),
        "offer_secret": b(&link.s),
        "primary_ephemeral_secret": b(&link.e_p_secret),
        "request_nonce": b(&link.request_nonce),
        "grant_nonce": b(&g.grant_nonce),
        "rng_draws": main_draws,
        "account_id": b(&account_id),
        "device_key": b(&link.device_key),
        "offer_ephemeral": b(&spec::x25519_public(&link.e_c_secret)),
        "primary_ephemeral": b(&spec::x25519_public(&link.e_p_secret)),
        "offer_bytes": b(&link.offer.bytes),
        "offer_text": format!("DL:{}", data_encoding::BASE32_NOPAD.encode(&link.offer.bytes)),
        "redemption_proof": b(&link.offer.proof),
        "token_id": b(&link.offer.token),
        "dh": b(&link.ks.dh),
        "th": b(&link.ks.th),
        "prk": b(&link.ks.prk),
        "hello_key": b(&link.ks.k_h),
        "request_key": b(&link.ks.k_r),
        "grant_key": b(&link.ks.k_g),
        "check_code_key": b(&link.ks.k_c),
        "primary_check_nonce": b(&link.n_p),
        "check_commitment": b(&link.commitment),
        "companion_check_nonce": b(&link.n_c),
        "check_code": link.code,
        "th2": b(&g.th2),
        "hello": b(&link.hello),
        "request_plaintext": b(&link.request_plain),
        "request": b(&link.request),
        "grant": b(&g.grant),
        "certificate": b(&g.certificate),
        "confirm": b(&g.confirm),
        "device_list_v1": b(&v1.signed(&account_seed)),
        "device_list_v1_hash": b(&v1.hash()),
        "device_list": b(&v2.signed(&account_seed)),
        "device_list_hash": b(&v2.hash()),
        "heartbeat": b(&heartbeat),
    });

    // --- Three more links fill the account (limit 4) ----------------------
    let mut entries = vec![entry1];
    let mut list = v2.clone();
    for k in 2..=4u32 {
        let at = now_ms + 1_000 * u64::from(k);
        let prefix = format!("link {k}: ");
        let name = format!("Device {k}");
        let mut l = start_link(&mut account, &mut rng, &mut rep, &prefix, &name, t(at));
        entries.push(spec::Entry {
            index: k,
            key: l.device_key,
            linked_at: at,
            label: name,
        });
        list = list.next(at, entries.clone(), vec![], (0, [0; 32]));
        finish_link(
            &mut account,
            &mut rng,
            &mut rep,
            &prefix,
            &mut l,
            &account_seed,
            &list,
            k,
            t(at),
        );
    }
    let v5 = list.clone();
    assert_eq!(v5.version, 5);

    // --- A fifth device: refused at request time -----------------------------
    let at5 = now_ms + 5_000;
    let mut l5 = start_link(
        &mut account,
        &mut rng,
        &mut rep,
        "link 5: ",
        "Device 5",
        t(at5),
    );
    let Err(RegistryError::Refused { reason, refusal }) =
        account.receive_request(&mut l5.primary, &l5.request, &mut rng, t(at5))
    else {
        panic!("a full account must refuse");
    };
    assert_eq!(reason, RefusalReason::DeviceLimitReached { limit: 4 });
    let refusal_nonce = rep.draw::<12>("link 5: refusal nonce");
    let refusal_plain = [1u8, 0, 0, 0, 4];
    let header = spec::header(spec::REFUSAL_KIND, &l5.offer.token);
    let want = [
        header.clone(),
        refusal_nonce.to_vec(),
        spec::seal(&l5.ks.k_g, &refusal_nonce, &header, &refusal_plain),
    ]
    .concat();
    assert_eq!(refusal, want, "Refusal");
    assert_eq!(refusal.len(), 51);
    rep.check(&rng);
    assert_eq!(
        l5.companion.receive_grant(&refusal, t(at5)),
        Err(HandshakeError::Refused(reason))
    );
    let refusal_vector = json!({
        "device_identity_seed": b(&l5.device_seed),
        "offer_x25519_secret": b(&l5.e_c_secret),
        "offer_secret": b(&l5.s),
        "primary_ephemeral_secret": b(&l5.e_p_secret),
        "request_nonce": b(&l5.request_nonce),
        "refusal_nonce": b(&refusal_nonce),
        "now_ms": at5,
        "token_id": b(&l5.offer.token),
        "grant_key": b(&l5.ks.k_g),
        "check_code": l5.code,
        "hello": b(&l5.hello),
        "request": b(&l5.request),
        "refusal_plaintext": b(&refusal_plain),
        "refusal": b(&refusal),
        "reason": "DeviceLimitReached",
        "reason_code": 1,
        "reason_argument": 4,
    });

    // --- Audit trail, revocation, chained lists -------------------------------
    let mut audit = AuditLog::new(account.account_id());
    audit
        .record_registry(&mut account, t(now_ms + 9_000))
        .unwrap();
    let anchor_at_revoke = audit.anchor();
    let anchor_pair = (anchor_at_revoke.entries, anchor_at_revoke.head);
    let saved_before_revoke = account.save().unwrap();
    let revoked_at = now_ms + 10_000;
    account.revoke(DeviceIndex(2), t(revoked_at)).unwrap();
    let after: Vec<spec::Entry> = entries.iter().filter(|e| e.index != 2).cloned().collect();
    let v6 = v5.next(revoked_at, after, vec![(2, 1)], anchor_pair);
    let v6_bytes = account.device_list().to_bytes();
    assert_eq!(v6_bytes, v6.signed(&account_seed), "list after revoke");
    assert_eq!(v6.previous, v5.hash());
    let parsed = SignedDeviceList::from_bytes(&v6_bytes).unwrap();
    assert_eq!(parsed.previous(), v5.hash());
    assert_eq!(parsed.hash(), v6.hash());
    assert_eq!(
        parsed.removed()[0].reason,
        devicelink::LogoutReason::Revoked
    );

    audit.record_registry(&mut account, t(revoked_at)).unwrap();
    let checkpoint_at = now_ms + 11_000;
    let head_before_checkpoint = audit.anchor();
    audit.checkpoint(account.key(), t(checkpoint_at)).unwrap();
    account.anchor_audit(audit.anchor());
    let trail = audit.to_json_lines().unwrap();
    // Every entry's hash from its line, and the checkpoint's signature.
    let mut head = [0u8; 32];
    for (i, line) in trail.lines().skip(1).enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], i as u64);
        assert_eq!(v["prev"], b(&head));
        head = audit_entry_hash(line, &head);
        assert_eq!(v["hash"], b(&head), "audit entry {i}");
        if v["event"] == "checkpoint" {
            let msg = [
                spec::CHECKPOINT,
                &(i as u64).to_be_bytes(),
                &checkpoint_at.to_be_bytes(),
                &head_before_checkpoint.head,
            ]
            .concat();
            let sig = B64.decode(v["signature"].as_str().unwrap()).unwrap();
            assert!(spec::ed_verify(&account_id, &msg, &sig));
            assert_eq!(i as u64, head_before_checkpoint.entries);
            // The body, written out from §8.2.
            let body = format!(
                "{{\"seq\":{i},\"at\":{checkpoint_at},\"actor\":\"Primary\",\"event\":\"checkpoint\",\"signature\":\"{}\"}}",
                B64.encode(&sig)
            );
            assert_eq!(
                spec::sha256(&[spec::AUDIT, &head_before_checkpoint.head, body.as_bytes()]),
                head
            );
        }
        if i == 0 {
            // The first entry is the main link's grant (§8.2).
            let body = format!(
                "{{\"seq\":0,\"at\":{now_ms},\"actor\":\"Primary\",\"event\":\"granted\",\"index\":1,\"device\":\"{}\",\"label\":{}}}",
                B64.encode(link.device_key),
                serde_json::to_string(label).unwrap()
            );
            assert_eq!(
                spec::sha256(&[spec::AUDIT, &[0; 32], body.as_bytes()]),
                head
            );
        }
        if i as u64 + 1 == anchor_at_revoke.entries {
            assert_eq!(head, anchor_at_revoke.head);
        }
    }
    let final_anchor = audit.anchor();
    assert_eq!(head, final_anchor.head);

    let hb_at = now_ms + 20_000;
    let heartbeat2 = account.heartbeat(t(hb_at)).to_bytes();
    assert_eq!(
        heartbeat2,
        spec::heartbeat(
            &account_seed,
            hb_at,
            &v6,
            (final_anchor.entries, final_anchor.head)
        ),
        "heartbeat with list binding"
    );

    // --- The restored old phone: a fork of version 6 ---------------------------
    let mut old_phone = Account::restore(&saved_before_revoke).unwrap();
    old_phone.revoke(DeviceIndex(3), t(revoked_at)).unwrap();
    let forked = old_phone.device_list().to_bytes();
    let forked_model = v5.next(
        revoked_at,
        entries.iter().filter(|e| e.index != 3).cloned().collect(),
        vec![(3, 1)],
        anchor_pair,
    );
    assert_eq!(forked, forked_model.signed(&account_seed));

    let session_before = session1.clone();
    session1
        .device_list_bytes(&v6_bytes, t(revoked_at))
        .unwrap();
    let e = session1
        .device_list_bytes(&forked, t(revoked_at))
        .unwrap_err();
    assert_eq!(format!("{e:?}"), "Certificate(Fork { version: 6 })");
    rejections.push(rejected(
        "device_list_fork",
        "linked session holding version 6",
        &forked,
        format!("{e:?}"),
    ));
    let e = session_before
        .clone()
        .heartbeat_bytes(&heartbeat2, t(hb_at))
        .unwrap_err();
    assert_eq!(
        format!("{e:?}"),
        "Certificate(NeedDeviceList { version: 6 })"
    );
    rejections.push(rejected(
        "heartbeat_needs_device_list",
        "linked session holding version 2",
        &heartbeat2,
        format!("{e:?}"),
    ));
    session1.heartbeat_bytes(&heartbeat2, t(hb_at)).unwrap();

    let v5_list = SignedDeviceList::from_bytes(&v5.signed(&account_seed)).unwrap();
    let mut dir = Directory::new(&policy);
    assert_eq!(
        dir.apply_device_list(&v5_list, t(hb_at))
            .map(|a| a.changed()),
        Ok(true)
    );
    let hb2 = PrimaryHeartbeat::from_bytes(&heartbeat2).unwrap();
    let e = dir.apply_heartbeat(&hb2, t(hb_at)).unwrap_err();
    assert_eq!(format!("{e:?}"), "NeedDeviceList { version: 6 }");
    rejections.push(rejected(
        "directory_heartbeat_needs_device_list",
        "directory holding version 5",
        &heartbeat2,
        format!("{e:?}"),
    ));
    let v6_list = SignedDeviceList::from_bytes(&v6_bytes).unwrap();
    assert_eq!(
        dir.apply_device_list(&v6_list, t(hb_at))
            .map(|a| a.changed()),
        Ok(true)
    );
    let e = dir
        .apply_device_list(&SignedDeviceList::from_bytes(&forked).unwrap(), t(hb_at))
        .unwrap_err();
    assert_eq!(format!("{e:?}"), "Fork { version: 6 }");
    rejections.push(rejected(
        "directory_device_list_fork",
        "directory holding version 6",
        &forked,
        format!("{e:?}"),
    ));
    assert_eq!(dir.apply_heartbeat(&hb2, t(hb_at)), Ok(()));

    json!({
        "seed": seed,
        "now_ms": now_ms,
        "label": label,
        "link": main,
        "refusal": refusal_vector,
        "revocation": {
            "device_list_before": b(&v5.signed(&account_seed)),
            "device_list_before_hash": b(&v5.hash()),
            "revoked_at_ms": revoked_at,
            "device_list_after": b(&v6_bytes),
            "device_list_after_hash": b(&v6.hash()),
            "previous": b(&v6.previous),
            "removed": [{"index": 2, "reason": "Revoked", "reason_code": 1}],
            "audit_anchor_entries": anchor_at_revoke.entries,
            "audit_anchor_head": b(&anchor_at_revoke.head),
            "forked_device_list": b(&forked),
        },
        "audit": {
            "trail": trail,
            "checkpoint_at_ms": checkpoint_at,
            "anchor_entries": final_anchor.entries,
            "anchor_head": b(&final_anchor.head),
        },
        "heartbeat_with_list": {
            "at_ms": hb_at,
            "list_version": 6,
            "heartbeat": b(&heartbeat2),
        },
        "rng_draws": rep.draws,
        "rejected": rejections,
    })
}

fn all() -> Value {
    json!({
        "description": "devicelink protocol v2 known-answer vectors: ChaCha20Rng::seed_from_u64(seed) (rand_chacha 0.3), fixed clock; bytes in standard base64 (RFC 4648 §4). `link` is one complete link with every secret and intermediate; `refusal` a fifth device refused by a full account; `revocation` the list before and after revoking device 2 and a fork of it; `audit` the trail; `rejected` inputs and the error each gives. See docs/PROTOCOL.md §11.",
        "vectors": [
            compute(0, 1_700_000_000_000, "Firefox on Linux"),
            compute(1, 1_750_000_000_123, "Chrome on macOS"),
            compute(0xdead_beef, 0, "Käse-Tablet 🧀"),
        ]
    })
}

#[test]
fn known_answer_vectors_match_byte_for_byte() {
    let computed = all();
    if std::env::var_os("DEVICELINK_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap();
        std::fs::write(PATH, text + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let (Some(want), Some(got)) = (stored["vectors"].as_array(), computed["vectors"].as_array())
    else {
        panic!("vectors missing");
    };
    assert_eq!(want.len(), 3);
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(got) {
        assert!(w["link"].as_object().unwrap().len() >= 36);
        for section in [
            "link",
            "refusal",
            "revocation",
            "audit",
            "heartbeat_with_list",
        ] {
            for (k, v) in w[section].as_object().unwrap() {
                assert_eq!(&g[section][k], v, "vector seed {} {section}.{k}", w["seed"]);
            }
        }
        assert_eq!(w, g, "vector seed {}", w["seed"]);
    }
    assert_eq!(stored, computed);
}

#[test]
fn stored_vectors_decode_with_the_public_decoders() {
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    for v in stored["vectors"].as_array().unwrap() {
        let l = &v["link"];
        let bytes = |k: &str| B64.decode(l[k].as_str().unwrap()).unwrap();
        let offer = devicelink::PairingOffer::from_text(l["offer_text"].as_str().unwrap()).unwrap();
        assert_eq!(offer.to_bytes().to_vec(), bytes("offer_bytes"));
        assert_eq!(offer.token_id().to_bytes().to_vec(), bytes("token_id"));
        let cert = devicelink::DeviceCertificate::from_bytes(&bytes("certificate")).unwrap();
        assert_eq!(cert.device().to_bytes().to_vec(), bytes("device_key"));
        assert_eq!(cert.account().to_bytes().to_vec(), bytes("account_id"));
        let list = SignedDeviceList::from_bytes(&bytes("device_list")).unwrap();
        assert!(list.contains(cert.index(), &cert.device()));
        assert_eq!(list.hash().to_vec(), bytes("device_list_hash"));
        PrimaryHeartbeat::from_bytes(&bytes("heartbeat")).unwrap();
        for k in ["hello", "request", "grant", "confirm"] {
            let h = devicelink::handshake::MessageHeader::parse(&bytes(k)).unwrap();
            assert_eq!(h.token_id, offer.token_id());
            h.check_size(&bytes(k)).unwrap();
        }
        let r = &v["revocation"];
        let rb = |k: &str| B64.decode(r[k].as_str().unwrap()).unwrap();
        let before = SignedDeviceList::from_bytes(&rb("device_list_before")).unwrap();
        let after = SignedDeviceList::from_bytes(&rb("device_list_after")).unwrap();
        assert_eq!(after.previous(), before.hash());
        assert_eq!(
            after.check_successor_of(before.version(), &before.hash()),
            Ok(())
        );
        let forked = SignedDeviceList::from_bytes(&rb("forked_device_list")).unwrap();
        assert!(matches!(
            forked.check_successor_of(after.version(), &after.hash()),
            Err(devicelink::CertificateError::Fork { .. })
        ));
        let account = devicelink::AccountId::from_bytes(bytes("account_id").try_into().unwrap());
        let trail =
            AuditLog::from_json_lines(v["audit"]["trail"].as_str().unwrap(), &account).unwrap();
        let hb = PrimaryHeartbeat::from_bytes(
            &B64.decode(v["heartbeat_with_list"]["heartbeat"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let report = trail.verify(&account, Some((&hb).into())).unwrap();
        assert_eq!(report.unanchored, 0);
        assert_eq!(hb.check_list(after.version(), &after.hash()), Ok(()));
    }
}
