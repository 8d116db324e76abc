//! The Rust side of the bindings bench (scripts/bindings_bench.sh): N whole
//! links in process through the core's host API (`host::Phone`,
//! `host::Device`, their outboxes carried by hand), the same steps the
//! Python and Kotlin benches take through the binding.
//!
//!   cargo run --release -p devicelink-ffi --example link_bench -- 200

use std::time::Instant;

use devicelink::host::{Device, DeviceEvent, Output, Phone, PhoneEvent};
use devicelink::{DeviceIdentity, DeviceLabel, Policy, Timestamp};
use rand_core::OsRng;

fn sent(out: Option<Output>) -> Vec<u8> {
    match out {
        Some(Output::Send { message, .. }) => message,
        other => {
            eprintln!("expected a message, got {other:?}");
            std::process::exit(1)
        }
    }
}

fn drain_until_send(role: &mut dyn FnMut() -> Option<Output>) -> Vec<u8> {
    loop {
        match role() {
            Some(Output::Send { message, .. }) => return message,
            Some(_) => continue,
            None => return sent(None),
        }
    }
}

fn one_link(now: Timestamp) -> bool {
    let mut phone = Phone::generate(Policy::default(), &mut OsRng, now);
    let Ok(label) = DeviceLabel::new("bench") else {
        return false;
    };
    let identity = DeviceIdentity::generate(&mut OsRng);
    let mut device = Device::new(identity, label, &Policy::default(), &mut OsRng, now);
    while device.poll_output().is_some() {}
    phone.open_link_intent(now);
    let Some(text) = device.offer_text() else {
        return false;
    };
    let Ok(token) = phone.scan(&text, &mut OsRng, now) else {
        return false;
    };
    let hello = drain_until_send(&mut || phone.poll_output());
    if device.receive(&hello, &mut OsRng, now).is_err() {
        return false;
    }
    let request = drain_until_send(&mut || device.poll_output());
    if !matches!(
        phone.receive(&request, &mut OsRng, now),
        Ok(PhoneEvent::Prompt { .. })
    ) {
        return false;
    }
    if phone.approve(token, &mut OsRng, now).is_err() {
        return false;
    }
    let grant = drain_until_send(&mut || phone.poll_output());
    if !matches!(
        device.receive(&grant, &mut OsRng, now),
        Ok(DeviceEvent::Prompt(_))
    ) {
        return false;
    }
    if device.consent(now).is_err() {
        return false;
    }
    let confirm = drain_until_send(&mut || device.poll_output());
    let linked = matches!(
        phone.receive(&confirm, &mut OsRng, now),
        Ok(PhoneEvent::Linked { .. })
    );
    while phone.poll_output().is_some() {}
    while device.poll_output().is_some() {}
    linked
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    // Warm up (page faults, lazy tables), as the other languages do.
    for _ in 0..10 {
        one_link(now);
    }
    let start = Instant::now();
    for _ in 0..n {
        if !one_link(now) {
            eprintln!("a link failed");
            std::process::exit(1);
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!("rust: {n} links in {ms:.1} ms");
}
