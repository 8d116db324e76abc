//! A phone on the command line: the primary device of one account, kept in
//! a file, talking to a relay with `devicelink_relay::client::PrimaryClient`.
//!
//! ```text
//! cargo run -p devicelink-relay --example phone -- link 'DL:…'          # scan a code's text
//! cargo run -p devicelink-relay --example phone -- link --png shot.png  # or a screenshot of it
//! cargo run -p devicelink-relay --example phone -- list
//! cargo run -p devicelink-relay --example phone -- revoke 1
//! cargo run -p devicelink-relay --example phone -- heartbeat [--every 60 --count 10]
//! ```
//!
//! `link` opens a link intent (the phone's "Link a device" screen), scans
//! the code, shows who is asking (label, check code, fingerprint) and asks
//! y/n (`--yes` approves without asking, for scripts). Every command takes
//! `--relay ws://127.0.0.1:8080` and `--account phone-account.json`; the file
//! is created on first use and holds the account's secret key (mode 0600).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use devicelink::{Account, DeviceIndex, DeviceState, LinkRequest, Policy, Timestamp};
use devicelink_relay::client::{LinkOutcome, PrimaryClient};
use devicelink_relay::server::{Clock, SystemClock};
use rand_core::OsRng;

/// A phone on the command line: links, lists and revokes an account's
/// companions through a devicelink relay, and proves it is alive.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// The relay's WebSocket base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    relay: String,
    /// The account file (created if missing; holds the account's secret key).
    #[arg(long, default_value = "phone-account.json")]
    account: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open "Link a device", scan a companion's code, and approve or refuse.
    Link {
        /// The code's text (`DL:…`), as the companion shows it.
        text: Option<String>,
        /// A PNG (a photo or screenshot) to read the QR code from.
        #[arg(long, conflicts_with = "text")]
        png: Option<PathBuf>,
        /// Approve without asking.
        #[arg(long)]
        yes: bool,
    },
    /// The account's companions and their states.
    List,
    /// Remove a companion and publish the new device list.
    Revoke {
        /// The companion's index (`list` shows it).
        index: u32,
    },
    /// Publish signed heartbeats, so the companions' leases extend.
    Heartbeat {
        /// Seconds between heartbeats.
        #[arg(long, default_value_t = 60)]
        every: u64,
        /// How many to send.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

type Error = Box<dyn std::error::Error>;

fn load(path: &Path, now: Timestamp) -> Result<Account, Error> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut account =
                Account::restore(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            account.poll(now);
            Ok(account)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let account = Account::generate(Policy::default(), &mut OsRng, now);
            save(path, &account)?;
            println!(
                "new account {} saved to {}",
                account.account_id().fingerprint(),
                path.display()
            );
            Ok(account)
        }
        Err(e) => Err(format!("{}: {e}", path.display()).into()),
    }
}

/// Writes the account (secret material) beside the file, then renames it
/// over, so a crash leaves the old or the new account, never half of one.
fn save(path: &Path, account: &Account) -> Result<(), Error> {
    let bytes = account.save()?;
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads the pairing code from a PNG with an independent QR decoder
/// (`rqrr`): the first code that reads as `DL:…`.
fn scan_png(path: &Path) -> Result<String, Error> {
    let image = image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    for grid in prepared.detect_grids() {
        if let Ok((_, text)) = grid.decode() {
            if text.starts_with("DL:") {
                return Ok(text);
            }
        }
    }
    Err(format!("{}: no devicelink QR code found", path.display()).into())
}

fn ask(request: &LinkRequest, account: &str, yes: bool) -> bool {
    println!("{}", request.prompt());
    println!("label: {}", request.label);
    if let Some(code) = request.check_code {
        println!("check code: {code}");
    }
    println!("device fingerprint: {}", request.fingerprint());
    println!("account fingerprint: {account}");
    if yes {
        println!("approve? [y/N] y (--yes)");
        return true;
    }
    println!("approve? [y/N]");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes")
}

fn state_text(state: DeviceState) -> String {
    match state {
        DeviceState::Pending { .. } => "pending".into(),
        DeviceState::Active { .. } => "active".into(),
        DeviceState::LoggedOut { reason, .. } => format!("logged out ({reason})"),
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut account = load(&args.account, clock.now())?;
    let fingerprint = account.account_id().fingerprint();
    match args.command {
        Command::Link { text, png, yes } => {
            let text = match (text, png) {
                (Some(t), _) => t.trim().to_owned(),
                (None, Some(p)) => scan_png(&p)?,
                (None, None) => return Err("give the code's text or --png FILE".into()),
            };
            println!("scanned {text}");
            account.open_link_intent(clock.now());
            let mut phone = PrimaryClient::connect(&args.relay, clock.clone()).await?;
            let outcome = phone
                .link(&mut account, &text, &mut OsRng, |r| {
                    ask(r, &fingerprint, yes)
                })
                .await;
            account.close_link_intent();
            save(&args.account, &account)?;
            match outcome? {
                LinkOutcome::Linked(link) => println!(
                    "linked as device #{}: \"{}\" (account fingerprint {fingerprint})",
                    link.certificate.index().0,
                    link.label
                ),
                LinkOutcome::Refused(reason) => println!("refused: {reason}"),
            }
            phone.close().await;
        }
        Command::List => {
            let now = clock.now();
            println!(
                "account {fingerprint}: {} of {} companions, list version {}",
                account.companion_count(now),
                account.policy().max_companions(),
                account.device_list_version()
            );
            for d in account.devices() {
                let state = account.device_state(d.index, now).unwrap_or(d.state);
                println!(
                    "#{} \"{}\" {} linked at {} ms: {}",
                    d.index.0,
                    d.label,
                    d.device.fingerprint(),
                    d.linked_at.as_unix_millis(),
                    state_text(state)
                );
            }
        }
        Command::Revoke { index } => {
            account.revoke(DeviceIndex(index), clock.now())?;
            // Kept before it is published: the list must never be ahead of
            // the account that signed it.
            save(&args.account, &account)?;
            let mut phone = PrimaryClient::connect(&args.relay, clock.clone()).await?;
            phone.publish_list(account.device_list()).await?;
            println!(
                "revoked #{index}; device list version {} published",
                account.device_list_version()
            );
            phone.close().await;
        }
        Command::Heartbeat { every, count } => {
            let mut phone = PrimaryClient::connect(&args.relay, clock.clone()).await?;
            for n in 0..count {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(every)).await;
                }
                let heartbeat = account.heartbeat(clock.now());
                save(&args.account, &account)?;
                phone.publish_heartbeat(&heartbeat).await?;
                println!(
                    "heartbeat {} of {count} published (list version {})",
                    n + 1,
                    heartbeat.list_version()
                );
            }
            phone.close().await;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phone: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phone: {e}");
            ExitCode::FAILURE
        }
    }
}
