//! Every decoder of untrusted input is total: arbitrary strings and bytes (and
//! random mutations of valid ones) give `Ok` or a typed `Err`, never a panic,
//! and a refusal never changes the receiving state.

mod wire;
use wire::FromWire;

use devicelink::handshake::MessageHeader;
use devicelink::relay::{Directory, MemoryTokenStore};
use devicelink::{
    Account, Companion, DeviceCertificate, DeviceIdentity, DeviceLabel, LinkedSession,
    OfferDisplay, PairingOffer, Policy, PrimaryHandshake, PrimaryHeartbeat, SignedDeviceList,
    Timestamp,
};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn t(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

/// One link, stopped at each receiving state, with the genuine messages.
struct Fixture {
    companion_awaiting_hello: Companion,
    companion_awaiting_grant: Companion,
    primary_awaiting_request: PrimaryHandshake,
    primary_awaiting_confirm: PrimaryHandshake,
    session: LinkedSession,
    account: Account,
    offer: String,
    msgs: [Vec<u8>; 4],
    saves: Vec<Vec<u8>>,
}

fn fixture() -> Fixture {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, t(0));
    let identity = DeviceIdentity::generate(&mut rng);
    let mut companion = Companion::new(
        identity,
        DeviceLabel::new("Laptop").unwrap(),
        &policy,
        &mut rng,
        t(0),
    );
    let companion_awaiting_hello = companion.clone();
    let offer = companion.offer().unwrap().to_text();
    account.open_link_intent(t(1));
    let (mut primary, hello) = account.scan(&offer, &mut rng, t(1)).unwrap();
    let primary_awaiting_request = primary.clone();
    let request = companion.receive_hello(&hello, &mut rng, t(2)).unwrap();
    let companion_awaiting_grant = companion.clone();
    primary.receive_request(&request, t(3)).unwrap();
    let grant = account.grant(&mut primary, &mut rng, t(4)).unwrap();
    let primary_awaiting_confirm = primary.clone();
    companion.receive_grant(&grant, t(5)).unwrap();
    let confirm = companion.consent(t(5)).unwrap();
    account
        .confirm(&mut primary.clone(), &confirm, t(6))
        .unwrap();
    let session = companion.session().unwrap().clone();
    let display = OfferDisplay::new(&policy, &mut rng, t(0));
    let saves = vec![
        account.save().unwrap(),
        companion_awaiting_grant.save().unwrap(),
        primary.save().unwrap(),
        session.save().unwrap(),
        display.save().unwrap(),
        Directory::new(&policy).save().unwrap(),
        MemoryTokenStore::new().save().unwrap(),
    ];
    Fixture {
        companion_awaiting_hello,
        companion_awaiting_grant,
        primary_awaiting_request,
        primary_awaiting_confirm,
        session,
        account,
        offer,
        msgs: [hello, request, grant, confirm],
        saves,
    }
}

/// Feeds `bytes` to every byte decoder and to each state machine at the
/// step that expects it; a refusal must leave the state's save unchanged.
fn feed(f: &Fixture, bytes: &[u8]) {
    let _ = MessageHeader::parse(bytes);
    let _ = PairingOffer::from_bytes(bytes);
    let _ = DeviceCertificate::from_bytes(bytes);
    let _ = SignedDeviceList::from_bytes(bytes);
    let _ = PrimaryHeartbeat::from_bytes(bytes);
    let _ = Account::restore(bytes);
    let _ = Companion::restore(bytes);
    let _ = PrimaryHandshake::restore(bytes);
    let _ = LinkedSession::restore(bytes, &Policy::default());
    let _ = OfferDisplay::restore(bytes);
    let _ = Directory::restore(bytes);
    let _ = MemoryTokenStore::restore(bytes);
    let _ = devicelink::host::Phone::restore(bytes);
    let _ = devicelink::host::Device::restore(bytes, &Policy::default());

    let mut c = f.companion_awaiting_hello.clone();
    if c.receive_hello(bytes, &mut ChaCha20Rng::seed_from_u64(9), t(2))
        .is_err()
    {
        assert_eq!(
            c.save().unwrap(),
            f.companion_awaiting_hello.save().unwrap()
        );
    }
    let mut c = f.companion_awaiting_grant.clone();
    if let Err(e) = c.receive_grant(bytes, t(5)) {
        if !e.is_terminal() {
            assert_eq!(
                c.save().unwrap(),
                f.companion_awaiting_grant.save().unwrap()
            );
        }
    }
    let mut p = f.primary_awaiting_request.clone();
    if p.receive_request(bytes, t(3)).is_err() {
        assert_eq!(
            p.save().unwrap(),
            f.primary_awaiting_request.save().unwrap()
        );
    }
    let mut p = f.primary_awaiting_confirm.clone();
    let mut a = f.account.clone();
    let _ = a.confirm(&mut p, bytes, t(6));
    let mut s = f.session.clone();
    if s.device_list_bytes(bytes, t(7)).is_err() {
        assert_eq!(s.save().unwrap(), f.session.save().unwrap());
    }
    if s.heartbeat_bytes(bytes, t(7)).is_err() {
        assert_eq!(s.save().unwrap(), f.session.save().unwrap());
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn offer_text_decoding_is_total(s in ".{0,120}") {
        let _ = PairingOffer::from_text(&s);
    }

    #[test]
    fn offer_like_texts_decode_or_refuse(body in "[A-Z2-7]{80,90}") {
        let text = format!("DL:{body}");
        if let Ok(o) = PairingOffer::from_text(&text) {
            prop_assert_eq!(o.to_text(), text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        feed(fixture_ref(), &bytes);
    }

    #[test]
    fn mutated_genuine_inputs_never_panic(
        which in 0usize..11,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let f = fixture_ref();
        let mut bytes = if which < 4 { f.msgs[which].clone() } else { f.saves[which - 4].clone() };
        for (i, b) in &edits {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        feed(f, &bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = PairingOffer::from_text(&text);
        let mut offer = f.offer.clone().into_bytes();
        let (i, b) = edits[0];
        let i = i.index(offer.len());
        offer[i] = b;
        let _ = PairingOffer::from_text(&String::from_utf8_lossy(&offer));
    }
}

fn fixture_ref() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}
