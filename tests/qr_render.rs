//! Round-trip tests for `devicelink::qr`: render offer-like texts, decode the
//! rendering with `rqrr`, and compare.

use devicelink::qr::{ImageStyle, OfferQr, TerminalStyle};

const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Deterministic pseudo-random offer-like texts (`DL:` + 85 base32 chars)
/// from a 64-bit LCG.
fn offers(count: usize) -> Vec<String> {
    let mut state: u64 = 0x0DEF_1CE1_1C4B_5EED;
    (0..count)
        .map(|_| {
            let mut s = String::from("DL:");
            for _ in 0..85 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                s.push(B32[(state >> 59) as usize] as char);
            }
            s
        })
        .collect()
}

/// Decodes exactly one QR code from a greyscale image; returns (version, text).
fn decode_luma(img: image::GrayImage) -> (usize, String) {
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "expected exactly one QR code");
    let (meta, text) = grids[0].decode().unwrap();
    (meta.version.0, text)
}

fn decode_png(png: &[u8]) -> (usize, String) {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap();
    assert_eq!(
        img.color(),
        image::ColorType::L8,
        "PNG must be 8-bit greyscale"
    );
    decode_luma(img.into_luma8())
}

#[test]
fn offers_are_distinct_and_well_formed() {
    let texts = offers(32);
    for t in &texts {
        assert_eq!(t.len(), 88);
        assert!(t.starts_with("DL:"));
        assert!(t[3..].bytes().all(|b| B32.contains(&b)));
    }
    let mut sorted = texts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), texts.len());
}

#[test]
fn png_round_trip_default_style() {
    let style = ImageStyle::default();
    for text in offers(32) {
        let qr = OfferQr::new(&text).unwrap();
        assert_eq!(qr.version(), 4, "{text}");
        assert_eq!(qr.modules(), 33);
        let png = qr.to_png(&style).unwrap();
        let (version, decoded) = decode_png(&png);
        assert_eq!(version, 4);
        assert_eq!(decoded, text);
    }
}

#[test]
fn png_round_trip_small_style() {
    let style = ImageStyle {
        module_px: 3,
        quiet_zone: 2,
    };
    for text in offers(32) {
        let qr = OfferQr::new(&text).unwrap();
        let png = qr.to_png(&style).unwrap();
        let (version, decoded) = decode_png(&png);
        assert_eq!(version, 4);
        assert_eq!(decoded, text);
    }
}

#[test]
fn png_has_exact_module_geometry() {
    for (module_px, quiet_zone) in [(8u32, 4u32), (3, 2), (1, 0), (5, 1)] {
        let style = ImageStyle {
            module_px,
            quiet_zone,
        };
        let text = &offers(1)[0];
        let qr = OfferQr::new(text).unwrap();
        let png = qr.to_png(&style).unwrap();
        let img = image::load_from_memory(&png).unwrap().into_luma8();
        let side = (33 + 2 * quiet_zone) * module_px;
        assert_eq!(qr.image_size_px(&style), side);
        assert_eq!(img.dimensions(), (side, side));
        for (px, py, p) in img.enumerate_pixels() {
            let mx = (px / module_px) as usize;
            let my = (py / module_px) as usize;
            let qz = quiet_zone as usize;
            let dark = mx >= qz && my >= qz && qr.is_dark(mx - qz, my - qz);
            assert_eq!(p.0[0], if dark { 0 } else { 255 }, "pixel ({px},{py})");
        }
    }
}

#[test]
fn svg_has_expected_size() {
    let qr = OfferQr::new(&offers(1)[0]).unwrap();
    for (style, side) in [
        (ImageStyle::default(), 328u32),
        (
            ImageStyle {
                module_px: 3,
                quiet_zone: 2,
            },
            111,
        ),
    ] {
        let svg = qr.to_svg(&style);
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains(&format!("width=\"{side}\" height=\"{side}\"")));
        assert!(svg.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(qr.image_size_px(&style), side);
    }
}

/// Rasterises terminal output the way a terminal shows it: glyph ink in the
/// foreground colour, the rest in the background colour, one character cell
/// = 1 module wide and 2 modules tall, `px` pixels per module.
fn rasterise_terminal(text: &str, fg: u8, bg: u8, px: u32) -> image::GrayImage {
    let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    let cols = lines[0].len() as u32;
    let rows = lines.len() as u32 * 2;
    // Add a background margin, as the terminal around the output would.
    let margin = 4;
    image::GrayImage::from_fn(
        (cols + 2 * margin) * px,
        (rows + 2 * margin) * px,
        |x, y| {
            let (mx, my) = (x / px, y / px);
            if mx < margin || my < margin || mx >= cols + margin || my >= rows + margin {
                return image::Luma([bg]);
            }
            let (mx, my) = ((mx - margin) as usize, (my - margin) as usize);
            let c = lines[my / 2][mx];
            let ink = match (c, my % 2 == 0) {
                ('█', _) => true,
                ('▀', top) => top,
                ('▄', top) => !top,
                _ => false,
            };
            image::Luma([if ink { fg } else { bg }])
        },
    )
}

#[test]
fn terminal_output_scans_on_matching_terminal() {
    for text in offers(4) {
        let qr = OfferQr::new(&text).unwrap();
        // Default style: light text on a dark terminal.
        let normal = qr.to_terminal(&TerminalStyle::default());
        let (version, decoded) = decode_luma(rasterise_terminal(&normal, 230, 20, 4));
        assert_eq!((version, decoded.as_str()), (4, text.as_str()));
        // Inverted style: dark text on a light terminal.
        let inverted = qr.to_terminal(&TerminalStyle {
            invert: true,
            ..TerminalStyle::default()
        });
        let (version, decoded) = decode_luma(rasterise_terminal(&inverted, 20, 230, 4));
        assert_eq!((version, decoded.as_str()), (4, text.as_str()));
    }
}

#[test]
fn terminal_size_for_offers() {
    let qr = OfferQr::new(&offers(1)[0]).unwrap();
    let style = TerminalStyle::default();
    assert_eq!(qr.terminal_size(&style), (41, 21));
    assert!(qr.fits_terminal(&style, 80, 24));
    assert!(!qr.fits_terminal(&style, 40, 20));
    let out = qr.to_terminal(&style);
    assert_eq!(out.lines().count(), 21);
    assert!(out.lines().all(|l| l.chars().count() == 41));
}

/// Guards the colour semantics: the default output shown as dark text on a
/// light terminal is a negative image, which scanners (rqrr included) reject.
#[test]
fn terminal_output_on_mismatched_terminal_does_not_scan() {
    for text in offers(4) {
        let qr = OfferQr::new(&text).unwrap();
        for (invert, fg, bg) in [(false, 20, 230), (true, 230, 20)] {
            let out = qr.to_terminal(&TerminalStyle {
                invert,
                ..TerminalStyle::default()
            });
            let mut prepared = rqrr::PreparedImage::prepare(rasterise_terminal(&out, fg, bg, 4));
            let decoded: Vec<String> = prepared
                .detect_grids()
                .iter()
                .filter_map(|g| g.decode().ok().map(|(_, t)| t))
                .collect();
            assert!(!decoded.contains(&text), "invert={invert}");
        }
    }
}
