//! QR rendering of a pairing-offer text.
//!
//! A pairing offer is shown to the user as a QR code that the companion
//! device scans. The offer text (`DL:` followed by 85 upper-case base32
//! characters, 88 characters in total) lies entirely within the QR
//! alphanumeric set, so at error-correction level M it fits QR version 4
//! (33×33 modules, capacity 90 alphanumeric characters).
//!
//! [`OfferQr`] encodes such a text once and renders it three ways:
//!
//! * [`OfferQr::to_terminal`]: Unicode half blocks, two module rows per text
//!   line, for printing in a terminal (see [`TerminalStyle`] for which
//!   terminal colour scheme each mode is meant for);
//! * [`OfferQr::to_png`]: a greyscale PNG, black modules on white;
//! * [`OfferQr::to_svg`]: an SVG document, black modules on white.
//!
//! Style values are clamped (see [`MAX_QUIET_ZONE`], [`MAX_MODULE_PX`] and
//! [`MAX_IMAGE_SIDE_PX`]) so that absurd values neither panic nor allocate
//! huge buffers.

use std::fmt;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, Luma};
use qrcode::render::{svg, Renderer};
use qrcode::{Color, EcLevel, QrCode, Version};

/// Largest quiet zone, in modules, that any renderer honours; larger values
/// are clamped to this. The QR specification asks for 4.
pub const MAX_QUIET_ZONE: usize = 16;

/// Largest module size, in pixels, that the image renderers honour; larger
/// values are clamped to this. A module size of 0 is raised to 1.
pub const MAX_MODULE_PX: u32 = 64;

/// Upper bound on the side of a rendered image in pixels (quiet zone
/// included). When the requested module size would exceed it, the module
/// size is reduced (but never below 1 pixel).
pub const MAX_IMAGE_SIDE_PX: u32 = 8192;

/// Errors from encoding or rendering an offer QR code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    /// The text does not fit in the largest QR code (version 40) at
    /// error-correction level M.
    #[error("text of {len} bytes is too long for a QR code at error-correction level M")]
    TooLong {
        /// Length of the rejected text, in bytes.
        len: usize,
    },
    /// The QR encoder rejected the text for a reason other than its length.
    #[error("QR encoding failed: {0}")]
    Encode(String),
    /// Encoding the rendered image as PNG failed.
    #[error("PNG encoding failed: {0}")]
    Image(String),
}

/// How [`OfferQr::to_terminal`] draws the code.
///
/// The output uses the glyphs `█`, `▀`, `▄` and space. A glyph's "ink" (the
/// block part) shows in the terminal's foreground colour and the rest shows
/// the background colour. A scanner needs dark modules to appear dark, so
/// which modules get ink depends on the terminal's colour scheme:
///
/// * `invert: false` (default), for the common light-text-on-dark-background
///   terminal: **light** modules (including the quiet zone) are drawn as
///   blocks, dark modules as spaces, so the dark background shows through
///   where the code is dark.
/// * `invert: true`, for dark-text-on-light-background terminals: **dark**
///   modules are drawn as blocks and light modules (including the quiet
///   zone) as spaces.
///
/// The two modes produce exact complements of each other, glyph for glyph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalStyle {
    /// Width of the light border around the code, in modules (default 4,
    /// clamped to [`MAX_QUIET_ZONE`]).
    pub quiet_zone: usize,
    /// `false` (default) for light-on-dark terminals, `true` for
    /// dark-on-light terminals; see the type documentation.
    pub invert: bool,
}

impl Default for TerminalStyle {
    fn default() -> Self {
        Self {
            quiet_zone: 4,
            invert: false,
        }
    }
}

/// Size and border of images from [`OfferQr::to_png`] and [`OfferQr::to_svg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStyle {
    /// Side of one module in pixels (default 8). Clamped to
    /// `1..=`[`MAX_MODULE_PX`], and reduced further if the whole image would
    /// exceed [`MAX_IMAGE_SIDE_PX`].
    pub module_px: u32,
    /// Width of the white border around the code, in modules (default 4,
    /// clamped to [`MAX_QUIET_ZONE`]).
    pub quiet_zone: u32,
}

impl Default for ImageStyle {
    fn default() -> Self {
        Self {
            module_px: 8,
            quiet_zone: 4,
        }
    }
}

/// A pairing-offer text encoded as a QR code at error-correction level M.
#[derive(Clone)]
pub struct OfferQr {
    code: QrCode,
    /// Module colours, row-major, `width * width` entries.
    colors: Vec<Color>,
    /// Width (and height) in modules.
    width: usize,
}

impl fmt::Debug for OfferQr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfferQr")
            .field("version", &self.version())
            .field("modules", &self.width)
            .finish_non_exhaustive()
    }
}

impl OfferQr {
    /// Encodes `text` at error-correction level M in the smallest QR version
    /// that holds it. Texts made only of QR alphanumeric characters (such as
    /// pairing offers) are encoded in alphanumeric mode; an 88-character
    /// offer gives version 4.
    ///
    /// # Errors
    ///
    /// [`QrError::TooLong`] if the text does not fit even version 40, and
    /// [`QrError::Encode`] for any other encoder failure.
    pub fn new(text: &str) -> Result<Self, QrError> {
        let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(
            |e| match e {
                qrcode::types::QrError::DataTooLong => QrError::TooLong { len: text.len() },
                other => QrError::Encode(other.to_string()),
            },
        )?;
        let colors = code.to_colors();
        let width = code.width();
        if colors.len() != width.saturating_mul(width) {
            return Err(QrError::Encode(
                "encoder returned an inconsistent module grid".to_owned(),
            ));
        }
        Ok(Self {
            code,
            colors,
            width,
        })
    }

    /// The QR version, 1 to 40 (4 for a pairing offer). Micro QR versions are
    /// never produced by [`OfferQr::new`]; if one ever were, this returns 0.
    pub fn version(&self) -> u8 {
        match self.code.version() {
            Version::Normal(v) => u8::try_from(v).unwrap_or(0),
            Version::Micro(_) => 0,
        }
    }

    /// Width (and height) of the code in modules, without quiet zone: 33 for
    /// version 4.
    pub fn modules(&self) -> usize {
        self.width
    }

    /// Whether the module at column `x`, row `y` (0-based, quiet zone not
    /// counted) is dark. Coordinates outside the code are light.
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        if x >= self.width || y >= self.width {
            return false;
        }
        self.colors.get(y * self.width + x) == Some(&Color::Dark)
    }

    /// Whether the module at column `x`, row `y` of the code *with* a quiet
    /// zone of `qz` modules is dark.
    fn is_dark_padded(&self, x: usize, y: usize, qz: usize) -> bool {
        match (x.checked_sub(qz), y.checked_sub(qz)) {
            (Some(x), Some(y)) => self.is_dark(x, y),
            _ => false,
        }
    }

    /// Side of the code in modules including a quiet zone of `qz` modules.
    fn padded_side(&self, qz: usize) -> usize {
        self.width.saturating_add(qz.saturating_mul(2))
    }

    /// Size of [`OfferQr::to_terminal`]'s output as `(columns, lines)`:
    /// `(41, 21)` for version 4 with the default quiet zone of 4.
    pub fn terminal_size(&self, style: &TerminalStyle) -> (usize, usize) {
        let side = self.padded_side(style.quiet_zone.min(MAX_QUIET_ZONE));
        (side, side.div_ceil(2))
    }

    /// Whether [`OfferQr::to_terminal`]'s output fits a terminal of `cols`
    /// columns and `rows` lines.
    pub fn fits_terminal(&self, style: &TerminalStyle, cols: usize, rows: usize) -> bool {
        let (need_cols, need_rows) = self.terminal_size(style);
        need_cols <= cols && need_rows <= rows
    }

    /// Renders the code with Unicode half blocks, two module rows per line,
    /// with a quiet zone on all four sides; every line ends with `\n`.
    ///
    /// See [`TerminalStyle`] for which modules are drawn as blocks. The
    /// padded side is always odd, so the bottom half of the last line lies
    /// past the quiet zone; it is drawn as a light module, which keeps the
    /// two modes exact complements.
    pub fn to_terminal(&self, style: &TerminalStyle) -> String {
        let qz = style.quiet_zone.min(MAX_QUIET_ZONE);
        let (cols, lines) = self.terminal_size(style);
        let ink = |x: usize, y: usize| self.is_dark_padded(x, y, qz) == style.invert;
        let mut out = String::with_capacity(lines * (cols * '█'.len_utf8() + 1));
        for line in 0..lines {
            let top_y = line * 2;
            for x in 0..cols {
                out.push(match (ink(x, top_y), ink(x, top_y + 1)) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            out.push('\n');
        }
        out
    }

    /// Effective `(module_px, quiet_zone)` after clamping `style`.
    fn image_params(&self, style: &ImageStyle) -> (u32, u32) {
        let qz = style.quiet_zone.min(MAX_QUIET_ZONE as u32);
        let side_modules = u32::try_from(self.padded_side(qz as usize)).unwrap_or(u32::MAX);
        let max_px = (MAX_IMAGE_SIDE_PX / side_modules.max(1)).max(1);
        let module_px = style.module_px.clamp(1, MAX_MODULE_PX).min(max_px);
        (module_px, qz)
    }

    /// Side in pixels of the square image [`OfferQr::to_png`] and
    /// [`OfferQr::to_svg`] produce for `style`, after clamping: 328 for
    /// version 4 with the default style ((33 + 2·4) modules × 8 px).
    pub fn image_size_px(&self, style: &ImageStyle) -> u32 {
        let (module_px, qz) = self.image_params(style);
        let side_modules = u32::try_from(self.padded_side(qz as usize)).unwrap_or(u32::MAX);
        side_modules.saturating_mul(module_px)
    }

    /// Renders the code as a PNG-encoded 8-bit greyscale image: black (0)
    /// modules on white (255), each module exactly `module_px` pixels square,
    /// with a white quiet zone of `quiet_zone` modules (after clamping).
    ///
    /// # Errors
    ///
    /// [`QrError::Image`] if PNG encoding fails.
    pub fn to_png(&self, style: &ImageStyle) -> Result<Vec<u8>, QrError> {
        let (module_px, qz) = self.image_params(style);
        let side = self.image_size_px(style);
        let qz = qz as usize;
        let img = GrayImage::from_fn(side, side, |px, py| {
            let x = (px / module_px) as usize;
            let y = (py / module_px) as usize;
            Luma([if self.is_dark_padded(x, y, qz) {
                0
            } else {
                255
            }])
        });
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(img.as_raw(), side, side, ExtendedColorType::L8)
            .map_err(|e| QrError::Image(e.to_string()))?;
        Ok(png)
    }

    /// Renders the code as an SVG document (black modules on a white
    /// background), `module_px` user units per module and a quiet zone of
    /// `quiet_zone` modules (after clamping). Its `width`, `height` and
    /// `viewBox` are [`OfferQr::image_size_px`].
    pub fn to_svg(&self, style: &ImageStyle) -> String {
        let (module_px, qz) = self.image_params(style);
        Renderer::<svg::Color<'_>>::new(&self.colors, self.width, qz)
            .dark_color(svg::Color("#000000"))
            .light_color(svg::Color("#ffffff"))
            .quiet_zone(true)
            .module_dimensions(module_px, module_px)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    /// Deterministic offer-like text: `DL:` + 85 base32 characters.
    fn offer(seed: u64) -> String {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        let mut s = String::from("DL:");
        for _ in 0..85 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            s.push(B32[(state >> 59) as usize] as char);
        }
        s
    }

    fn lines(s: &str) -> Vec<&str> {
        s.split_terminator('\n').collect()
    }

    #[test]
    fn offer_texts_are_version_4() {
        for seed in 0..16 {
            let text = offer(seed);
            assert_eq!(text.len(), 88);
            let qr = OfferQr::new(&text).unwrap();
            assert_eq!(qr.version(), 4, "{text}");
            assert_eq!(qr.modules(), 33);
        }
        // All letters: pure alphanumeric mode, the worst case, still fits.
        let qr = OfferQr::new(&format!("DL:{}", "Z".repeat(85))).unwrap();
        assert_eq!(qr.version(), 4);
        // Long digit runs let the encoder switch to numeric mode, so a
        // (vanishingly unlikely) all-digit offer needs only version 3.
        let qr = OfferQr::new(&format!("DL:{}", "7".repeat(85))).unwrap();
        assert_eq!(qr.version(), 3);
        assert_eq!(qr.modules(), 29);
    }

    #[test]
    fn terminal_is_41_by_21() {
        let qr = OfferQr::new(&offer(1)).unwrap();
        let style = TerminalStyle::default();
        let out = qr.to_terminal(&style);
        assert!(out.ends_with('\n'));
        let ls = lines(&out);
        assert_eq!(ls.len(), 21);
        for l in &ls {
            assert_eq!(l.chars().count(), 41, "{l:?}");
            assert!(l.chars().all(|c| matches!(c, '█' | '▀' | '▄' | ' ')));
        }
        assert_eq!(out.matches('\n').count(), 21);
        assert_eq!(qr.terminal_size(&style), (41, 21));
    }

    #[test]
    fn fits_terminal_sizes() {
        let qr = OfferQr::new(&offer(2)).unwrap();
        let style = TerminalStyle::default();
        assert!(qr.fits_terminal(&style, 80, 24));
        assert!(qr.fits_terminal(&style, 41, 21));
        assert!(!qr.fits_terminal(&style, 40, 20));
        assert!(!qr.fits_terminal(&style, 40, 24));
        assert!(!qr.fits_terminal(&style, 80, 20));
        let tight = TerminalStyle {
            quiet_zone: 1,
            invert: false,
        };
        assert_eq!(qr.terminal_size(&tight), (35, 18));
        assert!(qr.fits_terminal(&tight, 40, 20));
    }

    #[test]
    fn inverted_is_complement() {
        let qr = OfferQr::new(&offer(3)).unwrap();
        let normal = qr.to_terminal(&TerminalStyle::default());
        let inverted = qr.to_terminal(&TerminalStyle {
            invert: true,
            ..TerminalStyle::default()
        });
        assert_ne!(normal, inverted);
        for (a, b) in normal.chars().zip(inverted.chars()) {
            let expect = match a {
                '█' => ' ',
                ' ' => '█',
                '▀' => '▄',
                '▄' => '▀',
                '\n' => '\n',
                other => panic!("unexpected glyph {other:?}"),
            };
            assert_eq!(b, expect);
        }
        assert_eq!(normal.chars().count(), inverted.chars().count());
    }

    #[test]
    fn quiet_zone_rows_are_uniform() {
        let qr = OfferQr::new(&offer(4)).unwrap();
        // Quiet zone 4 = two full text lines at the top and bottom, plus the
        // half line past the bottom (41 module rows, 21 lines).
        let inverted = qr.to_terminal(&TerminalStyle {
            quiet_zone: 4,
            invert: true,
        });
        let ls = lines(&inverted);
        for &i in &[0, 1, 19, 20] {
            assert_eq!(ls[i], " ".repeat(41), "line {i}");
        }
        for l in &ls[2..19] {
            assert!(l.starts_with("    ") && l.ends_with("    "), "{l:?}");
            assert_ne!(l.trim(), "");
        }
        let normal = qr.to_terminal(&TerminalStyle::default());
        let ls = lines(&normal);
        for &i in &[0, 1, 19, 20] {
            assert_eq!(ls[i], "█".repeat(41), "line {i}");
        }
        for l in &ls[2..19] {
            assert!(l.starts_with("████") && l.ends_with("████"), "{l:?}");
        }
    }

    #[test]
    fn terminal_matches_modules() {
        let qr = OfferQr::new(&offer(5)).unwrap();
        for invert in [false, true] {
            for qz in [0, 1, 4] {
                let style = TerminalStyle {
                    quiet_zone: qz,
                    invert,
                };
                let out = qr.to_terminal(&style);
                let ls = lines(&out);
                let side = 33 + 2 * qz;
                assert_eq!(ls.len(), side.div_ceil(2));
                for (li, l) in ls.iter().enumerate() {
                    for (x, c) in l.chars().enumerate() {
                        let (top, bottom) = match c {
                            '█' => (true, true),
                            '▀' => (true, false),
                            '▄' => (false, true),
                            _ => (false, false),
                        };
                        for (y, ink) in [(2 * li, top), (2 * li + 1, bottom)] {
                            let dark = x >= qz
                                && y >= qz
                                && x - qz < 33
                                && y - qz < 33
                                && qr.is_dark(x - qz, y - qz);
                            assert_eq!(ink, dark == invert, "x={x} y={y} qz={qz}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn finder_pattern_corners_are_dark() {
        let qr = OfferQr::new(&offer(6)).unwrap();
        for (x, y) in [(0, 0), (6, 0), (0, 6), (32, 0), (26, 6), (0, 32), (6, 26)] {
            assert!(qr.is_dark(x, y), "({x},{y})");
        }
        assert!(!qr.is_dark(1, 1));
        assert!(!qr.is_dark(7, 7));
        assert!(!qr.is_dark(33, 0));
        assert!(!qr.is_dark(usize::MAX, usize::MAX));
    }

    #[test]
    fn too_long_is_rejected() {
        let text = "A".repeat(5000);
        assert_eq!(
            OfferQr::new(&text).unwrap_err(),
            QrError::TooLong { len: 5000 }
        );
        let bytes = "\u{e9}".repeat(3000);
        assert_eq!(
            OfferQr::new(&bytes).unwrap_err(),
            QrError::TooLong { len: 6000 }
        );
    }

    #[test]
    fn other_texts_still_encode() {
        assert_eq!(OfferQr::new("").unwrap().version(), 1);
        assert!(OfferQr::new("dl:lower case ünïcode").unwrap().version() >= 1);
    }

    #[test]
    fn absurd_styles_are_clamped() {
        let qr = OfferQr::new(&offer(7)).unwrap();
        let zero = ImageStyle {
            module_px: 0,
            quiet_zone: 0,
        };
        assert_eq!(qr.image_size_px(&zero), 33);
        let png = qr.to_png(&zero).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let huge = ImageStyle {
            module_px: u32::MAX,
            quiet_zone: u32::MAX,
        };
        let side = qr.image_size_px(&huge);
        assert!(side <= MAX_IMAGE_SIDE_PX);
        assert_eq!(side, (33 + 2 * MAX_QUIET_ZONE as u32) * MAX_MODULE_PX);
        assert!(qr
            .to_svg(&huge)
            .contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        let term = TerminalStyle {
            quiet_zone: usize::MAX,
            invert: false,
        };
        assert_eq!(
            qr.terminal_size(&term),
            (
                33 + 2 * MAX_QUIET_ZONE,
                (33 + 2 * MAX_QUIET_ZONE).div_ceil(2)
            )
        );
        assert_eq!(lines(&qr.to_terminal(&term)).len(), 33);
    }

    #[test]
    fn large_versions_limit_image_side() {
        // Version 40 (177 modules): 209 modules with a 16-module quiet zone,
        // so 64 px modules would exceed the image side limit.
        let qr = OfferQr::new(&"A".repeat(3391)).unwrap();
        assert_eq!(qr.version(), 40);
        assert_eq!(qr.modules(), 177);
        let style = ImageStyle {
            module_px: 64,
            quiet_zone: 16,
        };
        assert_eq!(qr.image_size_px(&style), 209 * (MAX_IMAGE_SIDE_PX / 209));
        assert_eq!(
            OfferQr::new(&"A".repeat(3392)).unwrap_err(),
            QrError::TooLong { len: 3392 }
        );
        assert!(qr.image_size_px(&style) <= MAX_IMAGE_SIDE_PX);
    }

    #[test]
    fn default_image_size() {
        let qr = OfferQr::new(&offer(8)).unwrap();
        assert_eq!(qr.image_size_px(&ImageStyle::default()), 328);
        let svg = qr.to_svg(&ImageStyle::default());
        assert!(svg.contains("<svg"));
        assert!(svg.contains("width=\"328\" height=\"328\""));
        assert!(svg.contains("viewBox=\"0 0 328 328\""));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn debug_shows_version() {
        let qr = OfferQr::new(&offer(9)).unwrap();
        let dbg = format!("{qr:?}");
        assert!(dbg.contains("version: 4"), "{dbg}");
        assert!(dbg.contains("modules: 33"), "{dbg}");
    }
}
