//! Known-answer vectors: a seeded RNG and fixed clock give fixed bytes for the
//! offer, every message and every derived public value. The JSON file lets
//! another implementation check itself byte for byte.
//!
//! Regenerate (only when the protocol version changes) with
//! `DEVICELINK_WRITE_VECTORS=1 cargo test --test vectors`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/devicelink-v2.json"
);

/// Runs one complete link from `seed` at `now` and records every public value.
/// The RNG is drawn in this order: account key, device identity, offer
/// (X25519 key, then 16-byte secret), primary ephemeral key.
fn compute(seed: u64, now_ms: u64, label: &str) -> Value {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let now = Timestamp::from_unix_millis(now_ms);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let identity = DeviceIdentity::generate(&mut rng);
    let device_key = identity.device_key();
    let mut companion = Companion::new(
        identity,
        DeviceLabel::new(label).unwrap(),
        &policy,
        &mut rng,
        now,
    );
    let offer = companion.offer().unwrap().clone();
    account.open_link_intent(now);
    let (mut primary, hello) = account.scan(&offer.to_text(), &mut rng, now).unwrap();
    let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
    let asked = primary.receive_request(&request, now).unwrap();
    let grant = account.grant(&mut primary, &mut rng, now).unwrap();
    let confirm = companion.receive_grant(&grant, now).unwrap();
    let link = account.confirm(&mut primary, &confirm, now).unwrap();
    let heartbeat = account.heartbeat(now);
    let b = |bytes: &[u8]| Value::String(B64.encode(bytes));
    json!({
        "seed": seed,
        "now_ms": now_ms,
        "label": label,
        "account_id": b(&account.account_id().to_bytes()),
        "device_key": b(&device_key.to_bytes()),
        "offer_text": offer.to_text(),
        "offer_bytes": b(&offer.to_bytes()),
        "token_id": b(&offer.token_id().to_bytes()),
        "hello": b(&hello),
        "request": b(&request),
        "check_code": asked.check_code,
        "grant": b(&grant),
        "confirm": b(&confirm),
        "certificate": b(&link.certificate.to_bytes()),
        "device_list": b(&account.device_list().to_bytes()),
        "heartbeat": b(&heartbeat.to_bytes()),
    })
}

fn all() -> Value {
    json!({
        "description": "devicelink v2 known-answer vectors: ChaCha20Rng::seed_from_u64(seed) (rand_chacha 0.3), fixed now; bytes in standard base64. See docs/PROTOCOL.md.",
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
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(got) {
        let fields = w.as_object().unwrap();
        assert!(fields.len() >= 16);
        for (k, v) in fields {
            assert_eq!(&g[k], v, "vector seed {} field {k}", w["seed"]);
        }
    }
}

#[test]
fn vectors_decode_with_the_public_decoders() {
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    for v in stored["vectors"].as_array().unwrap() {
        let bytes = |k: &str| B64.decode(v[k].as_str().unwrap()).unwrap();
        let offer = devicelink::PairingOffer::from_text(v["offer_text"].as_str().unwrap()).unwrap();
        assert_eq!(offer.to_bytes().to_vec(), bytes("offer_bytes"));
        assert_eq!(offer.token_id().to_bytes().to_vec(), bytes("token_id"));
        let cert = devicelink::DeviceCertificate::from_bytes(&bytes("certificate")).unwrap();
        assert_eq!(cert.device().to_bytes().to_vec(), bytes("device_key"));
        assert_eq!(cert.account().to_bytes().to_vec(), bytes("account_id"));
        let list = devicelink::SignedDeviceList::from_bytes(&bytes("device_list")).unwrap();
        assert!(list.contains(cert.index(), &cert.device()));
        devicelink::PrimaryHeartbeat::from_bytes(&bytes("heartbeat")).unwrap();
        for k in ["hello", "request", "grant", "confirm"] {
            let h = devicelink::handshake::MessageHeader::parse(&bytes(k)).unwrap();
            assert_eq!(h.token_id, offer.token_id());
        }
    }
}
