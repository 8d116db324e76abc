//! A full device lifecycle on a virtual clock, with real key exchanges:
//! link four companions, refuse the fifth, revoke one, link the fifth, let
//! the primary go silent for 14 days (every companion logged out), re-pair.
//!
//! ```text
//! cargo run --example lifecycle            # seed 1
//! cargo run --example lifecycle -- 42      # another seed, another run
//! ```
//!
//! Same seed, same output: the RNG is seeded and the clock is virtual.

use std::time::Duration;

use devicelink::audit::AuditLog;
use devicelink::qr::{OfferQr, TerminalStyle};
use devicelink::time::days;
use devicelink::{
    Account, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, HandshakeError, LinkedSession,
    Policy, RefusalReason, RegistryError, SessionStatus, SignedDeviceList, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Pairs one new companion with the account: offer → scan → request →
/// grant → confirm. Returns the companion's session.
fn pair(
    account: &mut Account,
    audit: &mut AuditLog,
    name: &str,
    rng: &mut ChaCha20Rng,
    now: Timestamp,
) -> Result<LinkedSession> {
    let policy = account.policy().clone();
    let mut companion = Companion::new(
        DeviceIdentity::generate(rng),
        DeviceLabel::new(name)?,
        &policy,
        rng,
        now,
    );
    let offer = companion.offer().ok_or("no offer")?.to_text();
    audit.offer_shown(&offer, now)?;
    // The user opened "Link a device" on the phone: only then does a scan link.
    account.open_link_intent(now);
    let (mut primary, hello) = account.scan(&offer, rng, now)?;
    let request = companion.receive_hello(&hello, rng, now)?;
    let asking = account.receive_request(&mut primary, &request, rng, now)?;
    audit.link_requested(&asking, now)?;
    println!("  phone asks: {}", asking.prompt().replace('\n', "\n    "));
    let grant = account.grant(&mut primary, rng, now)?;
    let join = companion.receive_grant(&grant, now)?;
    println!(
        "  companion asks its user: {}",
        join.prompt().replace('\n', "\n    ")
    );
    let confirm = companion.consent(now)?;
    account.confirm(&mut primary, &confirm, now)?;
    audit.record_registry(account, now)?;
    let session = companion.into_session().map_err(|_| "not linked")?;
    println!(
        "  linked {name} as device {} (key {})",
        session.index(),
        session.device_key()
    );
    Ok(session)
}

fn status(s: &LinkedSession, now: Timestamp) -> String {
    match s.status(now) {
        SessionStatus::Linked { expires_at } => format!("linked until {}", day(expires_at)),
        SessionStatus::ExpiringSoon { expires_at } => format!("expiring at {}", day(expires_at)),
        SessionStatus::LoggedOut { reason } => format!("logged out: {reason}"),
    }
}

const START: u64 = 1_700_000_000_000;

/// A virtual instant as "day D hh:mm:ss.mmm" since the start.
fn day(t: Timestamp) -> String {
    let ms = t.as_unix_millis().saturating_sub(START);
    let (d, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (h, m, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    format!("day {d} {h:02}:{m:02}:{s:02}.{milli:03}")
}

fn main() -> Result<()> {
    let seed = std::env::args()
        .nth(1)
        .map(|s| s.parse::<u64>())
        .transpose()?
        .unwrap_or(1);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut now = Timestamp::from_unix_millis(START);
    let policy = Policy::default();
    let mut account = Account::generate(policy.clone(), &mut rng, now);
    let mut audit = AuditLog::new(account.account_id());
    println!(
        "account {} (seed {seed}), policy: {} companions, {} days offline limit",
        account.account_id(),
        policy.max_companions(),
        policy.primary_offline_limit().as_secs() / 86_400
    );

    // The QR code a companion shows (QR version 4, 41x21 characters).
    let preview = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("preview")?,
        &policy,
        &mut rng,
        now,
    );
    let text = preview.offer().ok_or("no offer")?.to_text();
    let qr = OfferQr::new(&text)?;
    println!(
        "\nA pairing QR code (version {}), payload: {text}",
        qr.version()
    );
    print!("{}", qr.to_terminal(&TerminalStyle::default()));

    println!("\n1. Link four companions");
    let mut sessions = Vec::new();
    for name in [
        "Firefox on Linux",
        "Chrome on macOS",
        "Desktop app",
        "Tablet",
    ] {
        now = now.saturating_add(Duration::from_secs(60));
        sessions.push(pair(&mut account, &mut audit, name, &mut rng, now)?);
    }
    println!(
        "  companions: {}/{}",
        account.companion_count(now),
        policy.max_companions()
    );

    println!("\n2. A fifth companion is refused");
    let fifth = Companion::new(
        DeviceIdentity::generate(&mut rng),
        DeviceLabel::new("Work laptop")?,
        &policy,
        &mut rng,
        now,
    );
    let mut fifth = fifth;
    let offer = fifth.offer().ok_or("no offer")?.to_text();
    account.open_link_intent(now);
    let (mut primary, hello) = account.scan(&offer, &mut rng, now)?;
    let request = fifth.receive_hello(&hello, &mut rng, now)?;
    match account.receive_request(&mut primary, &request, &mut rng, now) {
        Err(RegistryError::Refused {
            reason: reason @ RefusalReason::DeviceLimitReached { .. },
            refusal,
        }) => {
            println!("  phone: device limit reached ({reason})");
            // The companion gets the authenticated refusal and shows why.
            match fifth.receive_grant(&refusal, now) {
                Err(HandshakeError::Refused(r)) => println!("  companion shows: {r}"),
                other => return Err(format!("expected a refusal, got {other:?}").into()),
            }
            audit.record_registry(&mut account, now)?;
        }
        other => return Err(format!("expected DeviceLimitReached, got {other:?}").into()),
    }

    println!("\n3. Revoke device #2; the others are untouched");
    now = now.saturating_add(Duration::from_secs(3_600));
    account.revoke(DeviceIndex(2), now)?;
    audit.record_registry(&mut account, now)?;
    // What the relay carries: bytes, decoded (signature checked) on arrival.
    let list = SignedDeviceList::from_bytes(&account.device_list().to_bytes())?;
    for s in &mut sessions {
        // Each companion receives the new signed device list via the relay,
        // and learns who left and why.
        if let Ok(change) = s.accept_device_list(&list, now) {
            for left in &change.removed {
                let why = left.reason.map_or("unknown".to_string(), |r| r.to_string());
                println!(
                    "  device {} sees: {} was removed ({why})",
                    s.index(),
                    left.entry.label
                );
            }
        }
        println!("  device {} ({}): {}", s.index(), s.label(), status(s, now));
    }

    println!("\n4. The fifth companion links now, with a new index");
    sessions.push(pair(
        &mut account,
        &mut audit,
        "Work laptop",
        &mut rng,
        now,
    )?);

    println!("\n5. The primary goes silent");
    let last = account.last_primary_activity();
    let deadline = last.saturating_add(days(14));
    let just_before = deadline.saturating_sub(Duration::from_millis(1));
    println!(
        "  last primary activity {}, deadline {}",
        day(last),
        day(deadline)
    );
    for (label, at) in [("14 days - 1 ms", just_before), ("14 days", deadline)] {
        account.poll(at);
        let linked = sessions.iter().filter(|s| s.is_linked(at)).count();
        println!(
            "  after {label}: {linked} companions linked, registry holds {}",
            account.companion_count(at)
        );
    }
    now = deadline;
    audit.record_registry(&mut account, now)?;
    for s in &mut sessions {
        s.poll(now);
        println!("  device {} ({}): {}", s.index(), s.label(), status(s, now));
    }

    println!("\n6. The phone comes back; companions re-pair as new devices");
    now = now.saturating_add(days(1));
    account.heartbeat(now);
    let again = pair(&mut account, &mut audit, "Firefox on Linux", &mut rng, now)?;
    println!("  {}: {}", again.label(), status(&again, now));

    // The next heartbeat carries the audit trail's head: the account vouches
    // for every entry without a signature of its own.
    audit.record_registry(&mut account, now)?;
    let heartbeat = account.heartbeat(now);
    let report = audit.verify(&account.account_id(), Some((&heartbeat).into()))?;
    println!(
        "\nAudit trail ({} entries, {} vouched for by the heartbeat, {} unanchored):",
        report.entries, report.anchored, report.unanchored
    );
    print!("{}", audit.to_json_lines()?);
    Ok(())
}
