//! A companion's pairing offer rotating on screen, with the policy's timings:
//! the first code lives 60 s, each of the 5 rotations 20 s. Each rotation
//! redraws the QR code. Either a (simulated) primary scans it at some
//! rotation and the full handshake completes — the offer ends *redeemed* and
//! the companion is linked — or nobody scans and the display times out: the
//! user must reload.
//!
//! ```text
//! cargo run --example rotating_qr -- --fast               # virtual clock, no waiting
//! cargo run --example rotating_qr -- --fast --timeout     # never scanned: times out
//! cargo run --example rotating_qr -- --fast --scan-at 3   # scanned during rotation 3
//! cargo run --example rotating_qr                         # real time: sleeps between deadlines
//! ```
//!
//! The clock is virtual in both cases; without `--fast` the example sleeps
//! between deadlines in real time (the only use of real time), and on a
//! terminal it redraws the code in place. `--seed S` picks the keys and,
//! unless `--scan-at` is given, the rotation that gets scanned.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use devicelink::handshake::{CompanionEvent, FailureReason};
use devicelink::offer::OfferState;
use devicelink::qr::{OfferQr, TerminalStyle};
use devicelink::{
    Account, Companion, CompanionState, DeviceIdentity, DeviceLabel, Policy, Timestamp,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const START: u64 = 1_700_000_000_000;

/// The virtual clock; in real-time mode, advancing it sleeps as long.
struct Clock {
    now: Timestamp,
    real: bool,
}

impl Clock {
    fn advance_to(&mut self, t: Timestamp) {
        if t > self.now {
            if self.real {
                std::thread::sleep(t.saturating_duration_since(self.now));
            }
            self.now = t;
        }
    }

    fn elapsed(&self) -> String {
        let ms = self.now.as_unix_millis().saturating_sub(START);
        format!("+{}.{:03} s", ms / 1000, ms % 1000)
    }
}

fn main() -> Result<()> {
    let (mut fast, mut timeout, mut seed, mut scan_at) = (false, false, 1u64, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fast" => fast = true,
            "--timeout" => timeout = true,
            "--seed" => seed = args.next().ok_or("--seed needs a number")?.parse()?,
            "--scan-at" => {
                scan_at = Some(args.next().ok_or("--scan-at needs a rotation")?.parse()?)
            }
            other => {
                return Err(format!("unknown argument {other:?}; see the example's doc").into())
            }
        }
    }

    let policy = Policy::default();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut clock = Clock {
        now: Timestamp::from_unix_millis(START),
        real: !fast,
    };
    let redraw = !fast && std::io::stdout().is_terminal();
    let scan_rotation: Option<u32> = if timeout {
        None
    } else {
        Some(
            scan_at
                .unwrap_or(u32::try_from(seed % u64::from(policy.max_rotations() + 1))?)
                .min(policy.max_rotations()),
        )
    };

    let mut account = Account::generate(policy.clone(), &mut rng, clock.now);
    let label = DeviceLabel::new("Firefox on Linux")?;
    let identity = DeviceIdentity::generate(&mut rng);
    let mut companion = Companion::new(identity, label, &policy, &mut rng, clock.now);
    println!(
        "Pairing offer: first code {} s, then {} s per rotation, {} rotations; {}",
        policy.first_offer_lifetime().as_secs(),
        policy.rotated_offer_lifetime().as_secs(),
        policy.max_rotations(),
        match scan_rotation {
            Some(k) => format!("the phone will scan during rotation {k}"),
            None => "nobody will scan it".to_owned(),
        }
    );

    let style = TerminalStyle::default();
    loop {
        let CompanionState::AwaitingScan {
            offer:
                OfferState::Showing {
                    rotation,
                    token_id,
                    expires_at,
                },
        } = companion.state()
        else {
            return Err("the display is not showing an offer".into());
        };
        let text = companion.offer().ok_or("no offer on screen")?.to_text();
        if redraw {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "\n[{}] rotation {rotation}/{} — token {token_id}, valid for {} s",
            clock.elapsed(),
            policy.max_rotations(),
            expires_at.saturating_duration_since(clock.now).as_secs()
        );
        print!("{}", OfferQr::new(&text)?.to_terminal(&style));
        std::io::stdout().flush()?;

        if scan_rotation == Some(rotation) {
            // Halfway through this code's life, the phone scans it.
            let half = expires_at.saturating_duration_since(clock.now) / 2;
            clock.advance_to(clock.now.saturating_add(half));
            let now = clock.now;
            println!("[{}] the phone scans the code", clock.elapsed());
            account.open_link_intent(now);
            let (mut primary, hello) = account.scan(&text, &mut rng, now)?;
            let request = companion.receive_hello(&hello, &mut rng, now)?;
            let asking = primary.receive_request(&request, now)?;
            let code = asking.check_code.ok_or("a QR link has a check code")?;
            println!(
                "[{}] phone: link \"{}\"? check code {code}",
                clock.elapsed(),
                asking.label,
            );
            clock.advance_to(now.saturating_add(Duration::from_secs(2)));
            let grant = account.grant(&mut primary, &mut rng, clock.now)?;
            let join = companion.receive_grant(&grant, clock.now)?;
            println!(
                "[{}] companion: join account {}? check code {} (the user compares it with the phone's and agrees)",
                clock.elapsed(),
                join.account_fingerprint(),
                join.check_code.ok_or("a QR link has a check code")?,
            );
            let confirm = companion.consent(clock.now)?;
            let link = account.confirm(&mut primary, &confirm, clock.now)?;
            let session = companion.session().ok_or("not linked")?;
            println!(
                "[{}] offer redeemed: linked as device {} ({} companion(s)), lease until +{} days",
                clock.elapsed(),
                link.certificate.index(),
                account.companion_count(clock.now),
                session
                    .expires_at()
                    .saturating_duration_since(clock.now)
                    .as_secs()
                    / 86_400
            );
            println!("result: redeemed");
            return Ok(());
        }

        clock.advance_to(companion.next_deadline().ok_or("no deadline")?);
        match companion.poll(&mut rng, clock.now) {
            Some(CompanionEvent::OfferRotated { .. }) => {}
            Some(CompanionEvent::Failed(FailureReason::OfferEnded(state))) => {
                let how = match state {
                    OfferState::Expired { .. } => "expired",
                    _ => "timed out",
                };
                println!(
                    "\n[{}] the code {how} after {} rotations: reload to show a new one",
                    clock.elapsed(),
                    policy.max_rotations()
                );
                println!("result: {how}");
                return Ok(());
            }
            other => return Err(format!("unexpected display event {other:?}").into()),
        }
    }
}
