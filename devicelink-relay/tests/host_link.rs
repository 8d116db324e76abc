//! The core's host API over a real relay: a `host::Phone` and a
//! `host::Device`, each on its own `HostLink`, link, revoke and hear about
//! it with nothing but their outboxes carried as frames.

mod common;

use common::*;
use devicelink::host::{Device, DeviceEvent, Output, Phone, PhoneEvent};
use devicelink::{DeviceIdentity, DeviceLabel, LogoutReason, Policy};
use devicelink_relay::client::{HostInbound, HostLink};
use devicelink_relay::identity::ClientSecret;

async fn carry_phone(link: &mut HostLink, phone: &mut Phone) -> Vec<Output> {
    let mut carried = Vec::new();
    while let Some(out) = phone.poll_output() {
        bounded(link.carry_phone(phone, &out)).await.unwrap();
        carried.push(out);
    }
    carried
}

async fn carry_device(link: &mut HostLink, device: &mut Device) -> Vec<Output> {
    let mut carried = Vec::new();
    while let Some(out) = device.poll_output() {
        bounded(link.carry_device(device, &out)).await.unwrap();
        carried.push(out);
    }
    carried
}

#[tokio::test]
async fn a_phone_and_a_device_link_and_revoke_through_the_relay_by_their_outboxes() {
    let relay = start(test_limits()).await;
    let mut rng = rng(70);
    let now = relay.now();
    let mut phone = Phone::generate(Policy::default(), &mut rng, now);
    let label = DeviceLabel::new("host tab").unwrap();
    let identity = DeviceIdentity::generate(&mut rng);
    let mut device = Device::new(identity, label, &Policy::default(), &mut rng, now);
    let mut phone_link = bounded(HostLink::connect(
        &relay.base,
        true,
        ClientSecret::generate(&mut rng),
    ))
    .await
    .unwrap();
    let mut device_link = bounded(HostLink::connect(
        &relay.base,
        false,
        ClientSecret::generate(&mut rng),
    ))
    .await
    .unwrap();
    // The offer's token is registered before the code is shown.
    let registered = carry_device(&mut device_link, &mut device).await;
    assert!(matches!(registered[..], [Output::Register { .. }]));

    phone.open_link_intent(now);
    let token = phone
        .scan(&device.offer_text().unwrap(), &mut rng, now)
        .unwrap();
    carry_phone(&mut phone_link, &mut phone).await; // the Hello
    let HostInbound::Message(hello) = bounded(device_link.next()).await.unwrap() else {
        panic!("expected the Hello")
    };
    assert_eq!(
        device.receive(&hello, &mut rng, now).unwrap(),
        DeviceEvent::Accepted
    );
    carry_device(&mut device_link, &mut device).await; // the Request
    let HostInbound::Message(request) = bounded(phone_link.next()).await.unwrap() else {
        panic!("expected the Request")
    };
    let PhoneEvent::Prompt { request: asked, .. } = phone.receive(&request, &mut rng, now).unwrap()
    else {
        panic!("expected the prompt")
    };
    assert_eq!(asked.label.as_str(), "host tab");
    phone.approve(token, &mut rng, now).unwrap();
    carry_phone(&mut phone_link, &mut phone).await; // Save, the list, the Grant
    let HostInbound::Message(grant) = bounded(device_link.next()).await.unwrap() else {
        panic!("expected the Grant")
    };
    let DeviceEvent::Prompt(join) = device.receive(&grant, &mut rng, now).unwrap() else {
        panic!("expected the join prompt")
    };
    assert_eq!(
        join.check_code, asked.check_code,
        "the same code on both screens"
    );
    assert!(matches!(
        device.consent(now).unwrap(),
        DeviceEvent::Linked { .. }
    ));
    let carried = carry_device(&mut device_link, &mut device).await; // Confirm, Save, Subscribe
    assert!(matches!(
        carried[..],
        [Output::Send { .. }, Output::Save, Output::Subscribe { .. }]
    ));
    let HostInbound::Message(confirm) = bounded(phone_link.next()).await.unwrap() else {
        panic!("expected the Confirm")
    };
    let PhoneEvent::Linked { index, .. } = phone.receive(&confirm, &mut rng, now).unwrap() else {
        panic!("expected the link")
    };
    carry_phone(&mut phone_link, &mut phone).await;

    // The revocation: the phone's list reaches the device as a push.
    phone.revoke(index, now).unwrap();
    carry_phone(&mut phone_link, &mut phone).await;
    let event = loop {
        match bounded(device_link.next()).await.unwrap() {
            HostInbound::List(bytes) => match device.receive_list(&bytes, now) {
                Ok(DeviceEvent::LoggedOut(reason)) => break reason,
                // The catch-up's copy of the list the device holds.
                Ok(_) | Err(_) => continue,
            },
            HostInbound::Heartbeat(_) | HostInbound::Logout { .. } => continue,
            HostInbound::Message(_) => panic!("no message expected"),
        }
    };
    assert_eq!(event, LogoutReason::Revoked);
    relay.stop().await;
}
