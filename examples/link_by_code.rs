//! Link a companion by typing a code instead of scanning a QR code, on a
//! virtual clock with an in-process relay: the laptop shows the code, the
//! phone "types" it, they link; then a second laptop's code is mistyped and
//! both sides end with `WrongCode`, and a guesser is locked out.
//!
//! ```text
//! cargo run --example link_by_code            # seed 1
//! cargo run --example link_by_code -- 42      # another seed
//! ```

use std::time::Duration;

use devicelink::code::{CodeCompanion, CodeEntry, TypedCode};
use devicelink::relay::{AttemptKey, ClientId, CodeRelayConfig, CodeRendezvous, SourceKey};
use devicelink::{
    Account, DeviceIdentity, DeviceLabel, HandshakeError, LinkCode, Policy, SessionStatus,
    Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let seed = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1u64);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut now = Timestamp::from_unix_millis(1_700_000_000_000);
    let policy = Policy::default();
    let mut relay = CodeRendezvous::new(CodeRelayConfig::from_policy(&policy));
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let phone = ClientId::from(100);
    // The network sources the relay keys its budgets and lockouts by (an
    // address, an IPv6 prefix): the user's home and the guesser's.
    let home = SourceKey::from_bytes([1; 16]);
    let elsewhere = SourceKey::from_bytes([2; 16]);

    // --- 1. The right code links ---------------------------------------------
    let laptop = ClientId::from(1);
    let (handle, expires_at) = relay.open(laptop, home, &mut rng, now)?;
    let mut shown = CodeCompanion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("Firefox on Linux")?,
        handle,
        &policy,
        &mut rng,
        now,
    );
    relay.publish(laptop, shown.offer_message().ok_or("not showing")?, now)?;
    let text = shown.code_text().ok_or("not showing")?;
    println!("laptop shows: {text}   (valid until {expires_at}, handle {handle})");

    now = now.saturating_add(Duration::from_secs(20));
    account.open_link_intent(now); // "Link a device" → "Link with a code"
    let typed_by_user = text.to_lowercase().replace('-', " ");
    println!("phone: the user types \"{typed_by_user}\"");
    let typed = TypedCode::parse(&typed_by_user)?;
    let offer = relay.join(typed.handle(), phone, home, Some(account.account_id()), now)?;
    let (mut entry, hello) = account.enter_code(&typed, &offer, &mut rng, now)?;
    relay.route(phone, &hello, now)?;
    let accepted = shown.receive_hello(&hello, &mut rng, now)?;
    relay.route(laptop, &accepted.confirm, now)?;
    let mut primary = entry.receive_confirm(&accepted.confirm, now)?;
    println!("both sides confirmed the key; from here on the QR flow's messages");
    let mut companion = accepted.companion;
    relay.route(laptop, &accepted.request, now)?;
    let asking = account.receive_request(&mut primary, &accepted.request, &mut rng, now)?;
    println!(
        "phone asks: {}",
        asking.prompt().lines().next().unwrap_or("")
    );
    let grant = account.grant(&mut primary, &mut rng, now)?;
    relay.route(phone, &grant, now)?;
    companion.receive_grant(&grant, now)?;
    let confirm = companion.consent(now)?;
    relay.route(laptop, &confirm, now)?;
    let link = account.confirm(&mut primary, &confirm, now)?;
    let session = companion.session().ok_or("not linked")?;
    if let SessionStatus::Linked { expires_at } = session.status(now) {
        println!(
            "linked by code: device {} of the account, lease until {expires_at}, {} companion(s)",
            link.certificate.index(),
            account.companion_count(now)
        );
    }

    // --- 2. A mistyped code ----------------------------------------------------
    let laptop2 = ClientId::from(2);
    let (handle2, _) = relay.open(laptop2, home, &mut rng, now)?;
    let mut shown2 = CodeCompanion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("Chrome on Windows")?,
        handle2,
        &policy,
        &mut rng,
        now,
    );
    let token2 = relay.publish(laptop2, shown2.offer_message().ok_or("not showing")?, now)?;
    let text2 = shown2.code_text().ok_or("not showing")?;
    let mut typo: Vec<char> = text2.chars().collect();
    typo[6] = if typo[6] == '7' { '8' } else { '7' };
    let typo: String = typo.into_iter().collect();
    println!("\nsecond laptop shows: {text2}; the user types {typo}");
    account.open_link_intent(now);
    let typed = TypedCode::parse(&typo)?;
    let offer = relay.join(typed.handle(), phone, home, Some(account.account_id()), now)?;
    let list_before = account.device_list().to_bytes();
    let (mut entry, hello) = account.enter_code(&typed, &offer, &mut rng, now)?;
    let companion_says = shown2.receive_hello(&hello, &mut rng, now).err();
    let notice = shown2.wrong_code_notice().ok_or("no notice")?.to_vec();
    let phone_says = entry.receive_confirm(&notice, now).err();
    relay.report_wrong_code(&token2, laptop2, now)?;
    if companion_says == Some(HandshakeError::WrongCode)
        && phone_says == Some(HandshakeError::WrongCode)
    {
        println!(
            "wrong code: both sides ended with WrongCode ({})",
            HandshakeError::WrongCode
        );
    }
    let unchanged = account.device_list().to_bytes() == list_before;
    println!(
        "nothing else changed: {} companion(s), device list version {}, list unchanged: {unchanged}",
        account.companion_count(now),
        account.device_list_version()
    );
    println!(
        "the relay counted it against the phone ({} failure(s)), not the handle: the laptop may show a new code",
        relay.attempts().failures(&AttemptKey::Client(phone), now)
    );

    // --- 3. A guesser with the handle is locked out ----------------------------
    let guesser = ClientId::from(666);
    let mut guesses = 0;
    let locked = loop {
        let fresh = CodeCompanion::new(
            DeviceIdentity::generate(&mut rng),
            DeviceLabel::new("Chrome on Windows")?,
            handle2,
            &policy,
            &mut rng,
            now,
        );
        let token = match relay.publish(laptop2, fresh.offer_message().ok_or("no offer")?, now) {
            Ok(t) => t,
            Err(e) => break e,
        };
        let offer = match relay.join(handle2, guesser, elsewhere, None, now) {
            Ok(o) => o,
            Err(e) => break e,
        };
        let mut mallory = Account::generate(policy.clone(), &mut rng, now);
        mallory.open_link_intent(now);
        let guess = TypedCode::new(handle2, LinkCode::generate(&mut rng));
        let (_entry, hello): (CodeEntry, _) = mallory.enter_code(&guess, &offer, &mut rng, now)?;
        let mut fresh = fresh;
        let _ = fresh.receive_hello(&hello, &mut rng, now);
        relay.report_wrong_code(&token, laptop2, now)?;
        guesses += 1;
    };
    println!("guesser: {guesses} wrong guess(es), then refused: {locked}");
    let day = Duration::from_secs(86_400);
    println!(
        "at most {} guesses a day per joining client, source or account (2^-40 each)",
        CodeRelayConfig::from_policy(&policy)
            .lockout
            .max_failures_in(day)
    );
    Ok(())
}
