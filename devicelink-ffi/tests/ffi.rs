//! The binding's surface from Rust: what every language gets, checked once
//! here (the languages' own tests run in scripts/test_bindings.sh).

use devicelink_ffi::{Device, DeviceEvent, DevicelinkError, Output, Phone, PhoneEvent};

const NOW: u64 = 1_700_000_000_000;

fn drain_phone(p: &Phone) -> Vec<Output> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

fn drain_device(d: &Device) -> Vec<Output> {
    std::iter::from_fn(|| d.poll_output()).collect()
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

#[test]
fn a_link_through_the_binding_surface() {
    let phone = Phone::new(NOW);
    let device = Device::new("ffi".into(), NOW).unwrap();
    assert!(matches!(
        drain_device(&device)[..],
        [Output::Register { .. }]
    ));
    phone.open_link_intent(NOW);
    let token = phone.scan(device.offer_text().unwrap(), NOW).unwrap();
    assert_eq!(token.len(), 16);
    let hello = sent(&drain_phone(&phone)).remove(0);
    assert_eq!(device.receive(hello, NOW).unwrap(), DeviceEvent::Accepted);
    let request = sent(&drain_device(&device)).remove(0);
    let PhoneEvent::Prompt { prompt } = phone.receive(request, NOW).unwrap() else {
        panic!("expected the prompt")
    };
    assert_eq!((prompt.label.as_str(), &prompt.token), ("ffi", &token));
    phone.approve(token.clone(), NOW).unwrap();
    let outputs = drain_phone(&phone);
    assert!(matches!(
        outputs[..],
        [
            Output::Save,
            Output::PublishList { .. },
            Output::Send { .. }
        ]
    ));
    let DeviceEvent::Prompt { prompt: join } =
        device.receive(sent(&outputs).remove(0), NOW).unwrap()
    else {
        panic!("expected the join prompt")
    };
    assert_eq!(join.check_code, prompt.check_code);
    assert_eq!(
        device.consent(NOW).unwrap(),
        DeviceEvent::Linked { index: 1 }
    );
    let confirm = sent(&drain_device(&device)).remove(0);
    assert_eq!(
        phone.receive(confirm, NOW).unwrap(),
        PhoneEvent::Linked { token, index: 1 }
    );
    assert_eq!(phone.devices()[0].label, "ffi");
    assert_eq!(
        device.account_fingerprint(),
        Some(phone.account_fingerprint())
    );

    // Saved and restored on both sides.
    let phone = Phone::restore(phone.save().unwrap()).unwrap();
    assert!(matches!(
        drain_phone(&phone)[..],
        [Output::PublishList { .. }]
    ));
    let device = Device::restore(device.save().unwrap()).unwrap();
    assert!(matches!(
        drain_device(&device)[..],
        [Output::Subscribe { .. }]
    ));
}

#[test]
fn errors_carry_their_class() {
    let phone = Phone::new(NOW);
    let device = Device::new("ffi".into(), NOW).unwrap();
    assert!(matches!(
        phone.scan(device.offer_text().unwrap(), NOW),
        Err(DevicelinkError::Refused { .. })
    ));
    assert!(matches!(
        phone.approve(vec![1, 2, 3], NOW),
        Err(DevicelinkError::Malformed { .. })
    ));
    assert!(matches!(
        phone.approve(vec![0; 16], NOW),
        Err(DevicelinkError::Unexpected { .. })
    ));
    assert!(matches!(
        Device::new(String::new(), NOW),
        Err(DevicelinkError::Malformed { .. })
    ));
    assert!(matches!(
        Device::new("a\u{202e}b".into(), NOW),
        Err(DevicelinkError::Malformed { .. })
    ));
    assert!(matches!(
        Phone::restore(b"{}".to_vec()),
        Err(DevicelinkError::Malformed { .. })
    ));
    assert!(matches!(
        device.consent(NOW),
        Err(DevicelinkError::Misuse { .. })
    ));
    assert!(matches!(
        device.receive_list(vec![1, 2, 3], NOW),
        Err(DevicelinkError::Misuse { .. })
    ));
}
