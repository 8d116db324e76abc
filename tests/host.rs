//! The host API (`devicelink::host`): the phone's outbox carries every
//! message, list and heartbeat a host must send, in order, so the traps of
//! the bare state machines (a re-pair's two list versions, a refusal inside
//! an error, a Grant sent before the account is saved) cannot be fallen
//! into.

use devicelink::code::{CodeCompanion, CodeHandle, TypedCode};
use devicelink::host::{Output, Phone, PhoneError, PhoneEvent};
use devicelink::{
    Companion, DeviceIdentity, DeviceLabel, HandshakeError, LinkedSession, Policy,
    PrimaryHeartbeat, RefusalReason, SignedDeviceList, Timestamp, TokenId,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

fn at(ms: u64) -> Timestamp {
    T0.saturating_add_millis(ms)
}

fn drain(phone: &mut Phone) -> Vec<Output> {
    std::iter::from_fn(|| phone.poll_output()).collect()
}

fn sent(outputs: &[Output]) -> Vec<Vec<u8>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn lists(outputs: &[Output]) -> Vec<SignedDeviceList> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::PublishList { version, bytes } => {
                let list = SignedDeviceList::from_bytes(bytes).unwrap();
                assert_eq!(list.version(), *version);
                Some(list)
            }
            _ => None,
        })
        .collect()
}

/// Links a companion with `identity` through the phone; returns its
/// session and every output the phone gave.
fn link(
    phone: &mut Phone,
    identity: DeviceIdentity,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> (LinkedSession, Vec<Output>) {
    let policy = Policy::default();
    let label = DeviceLabel::new("tab").unwrap();
    let mut tab = Companion::new(identity, label, &policy, rng, now);
    phone.open_link_intent(now);
    let token = phone
        .scan(&tab.offer().unwrap().to_text(), rng, now)
        .unwrap();
    let mut outputs = drain(phone);
    let request = tab.receive_hello(&sent(&outputs)[0], rng, now).unwrap();
    let event = phone.receive(&request, rng, now).unwrap();
    assert!(matches!(event, PhoneEvent::Prompt { token: t, .. } if t == token));
    assert!(drain(phone).is_empty(), "nothing leaves before approval");
    phone.approve(token, rng, now).unwrap();
    let approved = drain(phone);
    assert_eq!(approved[0], Output::Save, "saved before the Grant leaves");
    let grant = sent(&approved)[0].clone();
    outputs.extend(approved);
    tab.receive_grant(&grant, now).unwrap();
    let confirm = tab.consent(now).unwrap();
    let event = phone.receive(&confirm, rng, now).unwrap();
    let PhoneEvent::Linked { index, .. } = event else {
        panic!("{event:?}")
    };
    outputs.extend(drain(phone));
    let session = tab.into_session().unwrap();
    assert_eq!(session.index(), index);
    (session, outputs)
}

#[test]
fn a_link_gives_save_grant_and_each_list_version_in_order() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    assert!(drain(&mut phone).is_empty());
    let before = phone.account().device_list().version();
    let (session, outputs) = link(
        &mut phone,
        DeviceIdentity::generate(&mut rng),
        &mut rng,
        at(1),
    );
    let kinds: Vec<&str> = outputs
        .iter()
        .map(|o| match o {
            Output::Save => "save",
            Output::Send { .. } => "send",
            Output::PublishList { .. } => "list",
            Output::PublishHeartbeat { .. } => "heartbeat",
            Output::Register { .. } => "register",
            Output::Subscribe { .. } => "subscribe",
        })
        .collect();
    // Hello; Save, the list naming the new device, the Grant (a first
    // link's Confirm changes no list: a re-pair's does, below).
    assert_eq!(kinds, ["send", "save", "list", "send"]);
    let versions: Vec<u64> = lists(&outputs).iter().map(|l| l.version()).collect();
    assert_eq!(versions, [before + 1]);
    assert_eq!(
        lists(&outputs).last().unwrap().hash(),
        phone.account().device_list().hash()
    );
    assert_eq!(session.device_list().version(), before + 1);
}

/// The trap of the bare API: a re-pair makes one list version at the
/// Grant and one at the Confirm, and a host that published only one left
/// the re-paired companion's next heartbeat failing with NeedDeviceList.
#[test]
fn a_re_pair_publishes_both_versions_and_the_session_takes_the_heartbeat() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let identity = DeviceIdentity::generate(&mut rng);
    let (first, _) = link(&mut phone, identity.clone(), &mut rng, at(1));
    let (mut again, outputs) = link(&mut phone, identity, &mut rng, at(1_000));
    assert_ne!(again.index(), first.index());
    let published = lists(&outputs);
    assert_eq!(
        published.len(),
        2,
        "one list at the Grant, one at the Confirm"
    );
    assert_eq!(published[1].version(), published[0].version() + 1);
    assert_eq!(published[1].hash(), phone.account().device_list().hash());
    // The old record is gone from the newest list, the new one is in it.
    assert!(!published[1].contains(first.index(), &first.device_key()));
    assert!(published[1].contains(again.index(), &again.device_key()));
    // The companion applies what the host published, then the heartbeat.
    for list in &published {
        let _ = again.accept_device_list(list, at(2_000));
    }
    phone.heartbeat(at(3_000));
    let out = drain(&mut phone);
    let Some(Output::PublishHeartbeat { bytes }) = out.last() else {
        panic!("{out:?}")
    };
    let heartbeat = PrimaryHeartbeat::from_bytes(bytes).unwrap();
    again.accept_heartbeat(&heartbeat, at(3_000)).unwrap();
}

#[test]
fn a_full_account_refuses_as_an_outcome_with_the_refusal_in_the_outbox() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    for i in 0..4 {
        link(
            &mut phone,
            DeviceIdentity::generate(&mut rng),
            &mut rng,
            at(i),
        );
    }
    let policy = Policy::default();
    let label = DeviceLabel::new("fifth").unwrap();
    let identity = DeviceIdentity::generate(&mut rng);
    let mut tab = Companion::new(identity, label, &policy, &mut rng, at(10));
    phone.open_link_intent(at(10));
    let token = phone
        .scan(&tab.offer().unwrap().to_text(), &mut rng, at(10))
        .unwrap();
    let hello = sent(&drain(&mut phone))[0].clone();
    let request = tab.receive_hello(&hello, &mut rng, at(10)).unwrap();
    let event = phone.receive(&request, &mut rng, at(10)).unwrap();
    assert_eq!(
        event,
        PhoneEvent::Refused {
            token,
            reason: RefusalReason::DeviceLimitReached { limit: 4 }
        }
    );
    let out = drain(&mut phone);
    assert_eq!(out.len(), 1);
    let refusal = sent(&out)[0].clone();
    assert!(matches!(
        tab.receive_grant(&refusal, at(10)),
        Err(HandshakeError::Refused(RefusalReason::DeviceLimitReached {
            limit: 4
        }))
    ));
    // The pairing is over.
    assert!(matches!(
        phone.approve(token, &mut rng, at(11)),
        Err(PhoneError::UnknownPairing)
    ));
}

#[test]
fn a_forged_or_stray_message_changes_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let policy = Policy::default();
    let label = DeviceLabel::new("tab").unwrap();
    let mut tab = Companion::new(
        DeviceIdentity::generate(&mut rng),
        label,
        &policy,
        &mut rng,
        T0,
    );
    phone.open_link_intent(T0);
    let token = phone
        .scan(&tab.offer().unwrap().to_text(), &mut rng, T0)
        .unwrap();
    let hello = sent(&drain(&mut phone))[0].clone();
    let request = tab.receive_hello(&hello, &mut rng, T0).unwrap();
    let mut forged = request.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(phone.receive(&forged, &mut rng, T0).is_err());
    assert!(phone.receive(b"junk", &mut rng, T0).is_err());
    assert!(phone.receive(&[], &mut rng, T0).is_err());
    assert!(matches!(
        phone.approve(TokenId::from_bytes([9; 16]), &mut rng, T0),
        Err(PhoneError::UnknownPairing)
    ));
    assert!(drain(&mut phone).is_empty());
    // The genuine Request still works.
    assert!(matches!(
        phone.receive(&request, &mut rng, T0).unwrap(),
        PhoneEvent::Prompt { token: t, .. } if t == token
    ));
}

#[test]
fn a_restored_phone_keeps_its_pairing_and_publishes_its_list_again() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    link(
        &mut phone,
        DeviceIdentity::generate(&mut rng),
        &mut rng,
        at(1),
    );
    let policy = Policy::default();
    let label = DeviceLabel::new("second").unwrap();
    let mut tab = Companion::new(
        DeviceIdentity::generate(&mut rng),
        label,
        &policy,
        &mut rng,
        at(2),
    );
    phone.open_link_intent(at(2));
    let token = phone
        .scan(&tab.offer().unwrap().to_text(), &mut rng, at(2))
        .unwrap();
    let hello = sent(&drain(&mut phone))[0].clone();
    let saved = phone.save().unwrap();
    // The crash: the restored phone's first output is its current list.
    let mut phone = Phone::restore(&saved).unwrap();
    let out = drain(&mut phone);
    assert_eq!(lists(&out).len(), 1);
    assert_eq!(lists(&out)[0].hash(), phone.account().device_list().hash());
    let request = tab.receive_hello(&hello, &mut rng, at(3)).unwrap();
    assert!(matches!(
        phone.receive(&request, &mut rng, at(3)).unwrap(),
        PhoneEvent::Prompt { token: t, .. } if t == token
    ));
    // A saved state that is not a phone's is refused.
    assert!(Phone::restore(&saved[..saved.len() - 2]).is_err());
    assert!(Phone::restore(b"{}").is_err());
}

#[test]
fn a_typed_code_links_through_the_phone() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let policy = Policy::default();
    let label = DeviceLabel::new("desktop").unwrap();
    let handle = CodeHandle::new(77).unwrap();
    let mut shown = CodeCompanion::new(
        DeviceIdentity::generate(&mut rng),
        label,
        handle,
        &policy,
        &mut rng,
        T0,
    );
    let typed = TypedCode::parse(&shown.code_text().unwrap()).unwrap();
    let offer = shown.offer_message().unwrap().to_vec();
    phone.open_link_intent(T0);
    let token = phone.enter_code(&typed, &offer, &mut rng, T0).unwrap();
    let hello = sent(&drain(&mut phone))[0].clone();
    let accepted = shown.receive_hello(&hello, &mut rng, T0).unwrap();
    assert_eq!(
        phone.receive(&accepted.confirm, &mut rng, T0).unwrap(),
        PhoneEvent::CodeAccepted { token }
    );
    let event = phone.receive(&accepted.request, &mut rng, T0).unwrap();
    let PhoneEvent::Prompt { request, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!(request.check_code, None, "the typed code is the proof");
    phone.approve(token, &mut rng, T0).unwrap();
    let out = drain(&mut phone);
    assert_eq!((out[0].clone(), lists(&out).len()), (Output::Save, 1));
    let grant = sent(&out)[0].clone();
    let mut companion = accepted.companion;
    companion.receive_grant(&grant, T0).unwrap();
    let confirm = companion.consent(T0).unwrap();
    assert!(matches!(
        phone.receive(&confirm, &mut rng, T0).unwrap(),
        PhoneEvent::Linked { .. }
    ));
    assert!(drain(&mut phone).is_empty());
    assert_eq!(phone.account().companion_count(T0), 1);
}

// ---- the device, against the phone, through their outboxes alone -------

use devicelink::host::{Device, DeviceEvent, DeviceFailure};
use devicelink::{DeviceIndex, LogoutReason};

/// What moved between the two and what each said, as a stand-in relay
/// carries it: every `Send` to the other side, every list and heartbeat
/// to the device once it is linked.
#[derive(Default, Debug)]
struct Carried {
    phone_events: Vec<PhoneEvent>,
    device_events: Vec<DeviceEvent>,
    device_outputs: Vec<Output>,
    phone_outputs: Vec<Output>,
}

fn carry(phone: &mut Phone, device: &mut Device, rng: &mut ChaCha20Rng, now: Timestamp) -> Carried {
    let mut c = Carried::default();
    loop {
        let mut moved = false;
        while let Some(out) = phone.poll_output() {
            moved = true;
            c.phone_outputs.push(out.clone());
            let event = match &out {
                Output::Send { message, .. } => device.receive(message, rng, now).ok(),
                Output::PublishList { bytes, .. } if device.session().is_some() => {
                    device.receive_list(bytes, now).ok()
                }
                Output::PublishHeartbeat { bytes } if device.session().is_some() => {
                    device.receive_heartbeat(bytes, now).ok()
                }
                _ => None,
            };
            c.device_events.extend(event);
        }
        while let Some(out) = device.poll_output() {
            moved = true;
            c.device_outputs.push(out.clone());
            if let Output::Send { message, .. } = &out {
                c.phone_events.extend(phone.receive(message, rng, now).ok());
            }
        }
        if !moved {
            return c;
        }
    }
}

fn new_device(rng: &mut ChaCha20Rng, signer: impl Into<devicelink::DeviceSigner>) -> Device {
    let label = DeviceLabel::new("tab").unwrap();
    Device::new(signer, label, &Policy::default(), rng, T0)
}

/// Scans, approves and consents; returns the device's index.
fn link_device(
    phone: &mut Phone,
    device: &mut Device,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> DeviceIndex {
    phone.open_link_intent(now);
    let token = phone.scan(&device.offer_text().unwrap(), rng, now).unwrap();
    let c = carry(phone, device, rng, now);
    assert!(
        matches!(c.phone_events[..], [PhoneEvent::Prompt { .. }]),
        "{c:?}"
    );
    phone.approve(token, rng, now).unwrap();
    let c = carry(phone, device, rng, now);
    let [DeviceEvent::Prompt(prompt)] = &c.device_events[..] else {
        panic!("{c:?}")
    };
    assert_eq!(prompt.account, phone.account().account_id());
    let DeviceEvent::Linked { index } = device.consent(now).unwrap() else {
        panic!("not linked")
    };
    let c = carry(phone, device, rng, now);
    assert!(matches!(c.phone_events[..], [PhoneEvent::Linked { index: i, .. }] if i == index));
    assert_eq!(
        c.device_outputs[1..],
        [
            Output::Save,
            Output::Subscribe {
                after: device.session().unwrap().device_list().version()
            }
        ]
    );
    index
}

#[test]
fn a_device_links_is_told_of_its_revocation_and_saves_at_each_step() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut device = new_device(&mut rng, identity);
    let Some(Output::Register { token, expires_at }) = device.poll_output() else {
        panic!("the offer's token is registered first")
    };
    assert_eq!(expires_at, at(60_000));
    assert!(device.offer_text().unwrap().len() > 10);
    // The offer rotates: the new token is registered.
    assert_eq!(device.poll(&mut rng, at(60_000)), None);
    let Some(Output::Register { token: next, .. }) = device.poll_output() else {
        panic!("rotation registers the new token")
    };
    assert_ne!(next, token);

    let now = at(61_000);
    let index = link_device(&mut phone, &mut device, &mut rng, now);
    assert_eq!(index, DeviceIndex(1));
    // Restored, the device subscribes again after the list it holds.
    let saved = device.save().unwrap();
    let mut device = Device::restore(&saved, &Policy::default()).unwrap();
    assert!(matches!(
        device.poll_output(),
        Some(Output::Subscribe { .. })
    ));

    // The revocation reaches the device as a list: logged out, saved.
    phone.revoke(index, at(70_000)).unwrap();
    let c = carry(&mut phone, &mut device, &mut rng, at(70_000));
    assert_eq!(
        c.device_events,
        [DeviceEvent::LoggedOut(LogoutReason::Revoked)]
    );
    assert!(c.device_outputs.contains(&Output::Save));
    // Told once.
    assert_eq!(device.poll(&mut rng, at(80_000)), None);
}

#[test]
fn a_device_whose_user_declines_sends_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let identity = DeviceIdentity::generate(&mut rng);
    let mut device = new_device(&mut rng, identity);
    device.poll_output();
    phone.open_link_intent(T0);
    let token = phone
        .scan(&device.offer_text().unwrap(), &mut rng, T0)
        .unwrap();
    carry(&mut phone, &mut device, &mut rng, T0);
    phone.approve(token, &mut rng, T0).unwrap();
    carry(&mut phone, &mut device, &mut rng, T0);
    assert!(device.join_prompt().is_some());
    assert_eq!(
        device.decline(T0).unwrap(),
        DeviceEvent::Failed(DeviceFailure::Pairing(
            devicelink::handshake::FailureReason::Declined
        ))
    );
    assert_eq!(device.poll_output(), None, "a decline sends nothing");
    assert!(device.consent(T0).is_err());
    assert_eq!(
        phone.account().companion_count(T0),
        1,
        "pending until it times out"
    );
}

#[test]
fn a_key_store_device_consents_with_the_stores_signature() {
    use ed25519_dalek::Signer;
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let store = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let public = devicelink::DeviceKey::from_bytes(store.verifying_key().to_bytes());
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let mut device = new_device(&mut rng, public);
    device.poll_output();
    phone.open_link_intent(T0);
    let token = phone
        .scan(&device.offer_text().unwrap(), &mut rng, T0)
        .unwrap();
    carry(&mut phone, &mut device, &mut rng, T0);
    phone.approve(token, &mut rng, T0).unwrap();
    carry(&mut phone, &mut device, &mut rng, T0);
    assert!(matches!(
        device.consent(T0),
        Err(devicelink::host::DeviceError::Handshake(
            HandshakeError::SignatureNeeded
        ))
    ));
    assert_eq!(device.poll_output(), None);
    let message = device.confirm_to_sign().unwrap();
    let signature = store.sign(&message).to_bytes();
    assert!(matches!(
        device.consent_signed(&signature, T0).unwrap(),
        DeviceEvent::Linked { .. }
    ));
    let c = carry(&mut phone, &mut device, &mut rng, T0);
    assert!(matches!(c.phone_events[..], [PhoneEvent::Linked { .. }]));
    let saved = String::from_utf8(device.save().unwrap()).unwrap();
    assert!(!saved.contains("identity"), "no secret saved");
}

#[test]
fn a_typed_code_device_links_through_the_phone() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let label = DeviceLabel::new("desktop").unwrap();
    let handle = CodeHandle::new(5).unwrap();
    let identity = DeviceIdentity::generate(&mut rng);
    let mut device = Device::with_code(identity, label, handle, &Policy::default(), &mut rng, T0);
    let Some(Output::Send { message: offer, .. }) = device.poll_output() else {
        panic!("the CodeOffer to publish")
    };
    let typed = TypedCode::parse(&device.code_text().unwrap()).unwrap();
    phone.open_link_intent(T0);
    let token = phone.enter_code(&typed, &offer, &mut rng, T0).unwrap();
    let c = carry(&mut phone, &mut device, &mut rng, T0);
    assert!(
        matches!(
            c.phone_events[..],
            [PhoneEvent::CodeAccepted { .. }, PhoneEvent::Prompt { .. }]
        ),
        "{c:?}"
    );
    phone.approve(token, &mut rng, T0).unwrap();
    let c = carry(&mut phone, &mut device, &mut rng, T0);
    let [DeviceEvent::Prompt(prompt)] = &c.device_events[..] else {
        panic!("{c:?}")
    };
    assert_eq!(prompt.check_code, None);
    device.consent(T0).unwrap();
    let c = carry(&mut phone, &mut device, &mut rng, T0);
    assert!(matches!(c.phone_events[..], [PhoneEvent::Linked { .. }]));
}

#[test]
fn a_wrong_typed_code_ends_both_sides() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let mut phone = Phone::generate(Policy::default(), &mut rng, T0);
    let label = DeviceLabel::new("desktop").unwrap();
    let handle = CodeHandle::new(6).unwrap();
    let identity = DeviceIdentity::generate(&mut rng);
    let mut device = Device::with_code(identity, label, handle, &Policy::default(), &mut rng, T0);
    let Some(Output::Send { message: offer, .. }) = device.poll_output() else {
        panic!("the CodeOffer to publish")
    };
    let right = device.code_text().unwrap();
    // Another code under the same handle.
    let mut wrong = right.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'2' { b'3' } else { b'2' };
    let typed = TypedCode::parse(std::str::from_utf8(&wrong).unwrap()).unwrap();
    phone.open_link_intent(T0);
    phone.enter_code(&typed, &offer, &mut rng, T0).unwrap();
    let c = carry(&mut phone, &mut device, &mut rng, T0);
    assert_eq!(
        c.device_events,
        [DeviceEvent::Failed(DeviceFailure::Code(
            devicelink::code::CodeFailure::WrongCode
        ))]
    );
    assert!(
        matches!(c.phone_events[..], [PhoneEvent::WrongCode { .. }]),
        "{c:?}"
    );
}

/// The root names what a host needs, with one argument order: the sender
/// before the message, `rng` before `now`, and a token's record read
/// without a trait in scope.
#[test]
fn the_root_names_what_a_host_needs_in_one_order() {
    use devicelink::{ClientId, Ledger, LedgerConfig, MessageHeader, MessageKind};
    let mut rng = ChaCha20Rng::seed_from_u64(20);
    let ledger = Ledger::in_memory(LedgerConfig::default());
    let policy = Policy::default();
    let label = DeviceLabel::new("tab").unwrap();
    let mut tab = Companion::new(
        DeviceIdentity::generate(&mut rng),
        label,
        &policy,
        &mut rng,
        T0,
    );
    let CompanionStateShowing { token, expires_at } = showing(&tab);
    let companion = ClientId::from_bytes([1; 16]);
    let primary = ClientId::from_bytes([2; 16]);
    ledger
        .register(
            companion,
            devicelink::relay::SourceKey::LOCAL,
            token,
            expires_at,
            T0,
        )
        .unwrap();
    let mut phone = Phone::generate(policy, &mut rng, T0);
    phone.open_link_intent(T0);
    phone
        .scan(&tab.offer().unwrap().to_text(), &mut rng, T0)
        .unwrap();
    let hello = sent(&drain(&mut phone))[0].clone();
    assert_eq!(
        MessageHeader::parse(&hello).unwrap().kind,
        MessageKind::Hello
    );
    let routed = ledger.route(primary, &hello, T0).unwrap();
    assert_eq!(routed.forward_to, companion);
    assert!(ledger.token(&token).unwrap().is_some());
    tab.receive_hello(&hello, &mut rng, T0).unwrap();
    assert!(matches!(
        tab.state(),
        devicelink::CompanionState::AwaitingGrant { .. }
    ));
}

struct CompanionStateShowing {
    token: TokenId,
    expires_at: Timestamp,
}

fn showing(c: &Companion) -> CompanionStateShowing {
    match c.state() {
        devicelink::CompanionState::AwaitingScan {
            offer:
                devicelink::OfferState::Showing {
                    token_id,
                    expires_at,
                    ..
                },
        } => CompanionStateShowing {
            token: token_id,
            expires_at,
        },
        other => panic!("{other:?}"),
    }
}
