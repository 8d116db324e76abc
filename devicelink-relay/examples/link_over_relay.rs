//! Links four companions to one account through a relay running in this
//! process on 127.0.0.1 (a free port), with real crypto over real
//! WebSockets; shows the fifth refused (the primary's authenticated
//! `DeviceLimitReached` travels through the relay to the companion), then
//! revokes one and shows the logout the relay pushes to it.
//!
//! `cargo run -p devicelink-relay --example link_over_relay`

use std::sync::Arc;
use std::time::Duration;

use devicelink::{
    Account, Companion, DeviceIdentity, DeviceLabel, HandshakeError, Policy, RefusalReason,
};
use devicelink_relay::client::{
    ClientError, CompanionClient, CompanionUpdate, LinkOutcome, PrimaryClient,
};
use devicelink_relay::server::{Clock, Limits, Relay, SystemClock};
use devicelink_relay::MemoryStore;
use rand_core::OsRng;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Every step is bounded.
const STEP: Duration = Duration::from_secs(10);

async fn step<T>(f: impl std::future::Future<Output = T>) -> Result<T, Error> {
    Ok(tokio::time::timeout(STEP, f).await?)
}

async fn new_companion(
    base: &str,
    clock: Arc<dyn Clock>,
    label: &str,
) -> Result<CompanionClient, Error> {
    let companion = Companion::new(
        DeviceIdentity::generate(&mut OsRng),
        DeviceLabel::new(label)?,
        &Policy::default(),
        &mut OsRng,
        clock.now(),
    );
    Ok(step(CompanionClient::connect(base, companion, clock)).await??)
}

/// Runs both ends of one link; returns the companion's and the primary's results.
async fn link(
    primary: &mut PrimaryClient,
    account: &mut Account,
    companion: &mut CompanionClient,
    clock: &dyn Clock,
) -> Result<(Result<(), ClientError>, Result<LinkOutcome, ClientError>), Error> {
    let qr = companion.offer_text().ok_or("no offer on screen")?;
    account.open_link_intent(clock.now());
    let (mut rc, mut rp) = (OsRng, OsRng);
    let (c, p) = step(async {
        tokio::join!(
            companion.link(&mut rc, |join| {
                println!(
                    "  companion: join account {} (check code {})? yes",
                    join.account_fingerprint(),
                    join.check_code.map(|c| c.to_string()).unwrap_or_default()
                );
                true
            }),
            primary.link(account, &qr, &mut rp, |ask| {
                println!(
                    "  phone: link \"{}\" (check code {})? yes",
                    ask.label.as_str(),
                    ask.check_code.map(|c| c.to_string()).unwrap_or_default()
                );
                true
            })
        )
    })
    .await?;
    Ok((c.map(|_| ()), p))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let relay = Relay::new(
        MemoryStore::new(),
        &Policy::default(),
        Limits::default(),
        clock.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("ws://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay.serve(listener, async {
        let _ = stopped.await;
    }));
    println!("relay listening on {base}");

    let mut account = Account::generate(Policy::default(), &mut OsRng, clock.now());
    println!("account {}", account.account_id().fingerprint());
    let mut primary = step(PrimaryClient::connect(&base, clock.clone())).await??;

    let mut companions = Vec::new();
    for name in [
        "Firefox on Linux",
        "Chrome on macOS",
        "Desktop app",
        "Tablet",
    ] {
        let mut c = new_companion(&base, clock.clone(), name).await?;
        println!("{name}: showing {}", c.offer_text().unwrap_or_default());
        let (cr, pr) = link(&mut primary, &mut account, &mut c, &*clock).await?;
        cr?;
        let LinkOutcome::Linked(linked) = pr? else {
            return Err("link refused".into());
        };
        println!("{name}: linked as device {}", linked.certificate.index().0);
        companions.push(c);
    }
    println!(
        "companions linked: {}",
        account.companion_count(clock.now())
    );

    let mut fifth = new_companion(&base, clock.clone(), "One too many").await?;
    let (cr, pr) = link(&mut primary, &mut account, &mut fifth, &*clock).await?;
    match (cr, pr?) {
        (
            Err(ClientError::Handshake(HandshakeError::Refused(
                RefusalReason::DeviceLimitReached { limit },
            ))),
            LinkOutcome::Refused(_),
        ) => println!("fifth companion refused: device limit reached ({limit} companions)"),
        other => return Err(format!("the fifth was not refused: {other:?}").into()),
    }

    let victim = companions[1].session().ok_or("not linked")?.index();
    account.revoke(victim, clock.now())?;
    step(primary.publish_list(account.device_list())).await??;
    println!("phone: revoked device {}", victim.0);
    loop {
        match step(companions[1].next_update()).await?? {
            CompanionUpdate::Logout {
                index,
                reason,
                status,
            } => {
                println!(
                    "device {}: logged out by the relay's push ({reason}); session says {status:?}",
                    index.0
                );
                break;
            }
            CompanionUpdate::DeviceList(change) => {
                println!(
                    "device {}: new device list, standing {:?}",
                    victim.0, change.status
                )
            }
            // Lists it already held (the catch-up on subscribing) and
            // heartbeats: nothing to show.
            CompanionUpdate::Ignored(_) | CompanionUpdate::Heartbeat(_) => {}
        }
    }
    for c in &companions {
        if let Some(s) = c.session() {
            if s.index() != victim {
                println!(
                    "device {}: still linked: {}",
                    s.index().0,
                    s.is_linked(clock.now())
                );
            }
        }
    }

    let _ = stop.send(());
    let drained = step(server).await???;
    println!(
        "relay stopped (all connections closed: {})",
        drained.all_closed
    );
    Ok(())
}
