//! Shows a pairing offer as a QR code: in the terminal, and optionally as PNG
//! and SVG files.
//!
//! ```text
//! cargo run --example qr
//! cargo run --example qr -- --png offer.png --svg offer.svg
//! cargo run --example qr -- --invert --seed 7     # dark-on-light terminal, fixed offer
//! ```
//!
//! The first line is `payload: <the exact QR text>`, so any QR tool can check
//! it (for example `zbarimg --raw offer.png` prints the same text).

use devicelink::qr::{ImageStyle, OfferQr, TerminalStyle};
use devicelink::{Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
use rand_chacha::rand_core::{OsRng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut png = None;
    let mut svg = None;
    let mut invert = false;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--png" => png = Some(args.next().ok_or("--png needs a file name")?),
            "--svg" => svg = Some(args.next().ok_or("--svg needs a file name")?),
            "--invert" => invert = true,
            "--seed" => seed = Some(args.next().ok_or("--seed needs a number")?.parse::<u64>()?),
            other => {
                return Err(format!("unknown argument {other:?}; see the example's doc").into())
            }
        }
    }

    // The system RNG in normal use; a seed makes the offer reproducible.
    let mut rng = match seed {
        Some(s) => ChaCha20Rng::seed_from_u64(s),
        None => ChaCha20Rng::from_rng(OsRng).map_err(|e| e.to_string())?,
    };
    let now = Timestamp::now_from_system();

    // A new companion: its own identity key, a label, and a fresh offer.
    let identity = DeviceIdentity::generate(&mut rng);
    let label = DeviceLabel::new("devicelink example")?;
    let companion = Companion::new(identity, label, &Policy::default(), &mut rng, now);
    let offer = companion.offer().ok_or("no offer on screen")?;
    let text = offer.to_text();

    let qr = OfferQr::new(&text)?;
    let style = TerminalStyle {
        invert,
        ..TerminalStyle::default()
    };
    let (cols, rows) = qr.terminal_size(&style);
    println!("payload: {text}");
    println!(
        "QR version {} at level M ({m}x{m} modules), {} characters, token {}; {cols}x{rows} in the terminal{}",
        qr.version(),
        text.len(),
        offer.token_id(),
        if qr.fits_terminal(&style, 80, 24) { ", fits 80x24" } else { "" },
        m = qr.modules(),
    );
    print!("{}", qr.to_terminal(&style));

    let image = ImageStyle::default();
    if let Some(path) = png {
        std::fs::write(&path, qr.to_png(&image)?)?;
        println!("wrote {path}");
    }
    if let Some(path) = svg {
        std::fs::write(&path, qr.to_svg(&image))?;
        println!("wrote {path}");
    }
    Ok(())
}
