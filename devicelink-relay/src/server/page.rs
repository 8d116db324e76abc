//! The browser companion page (`devicelink-web/www/`), embedded in the
//! binary so a fresh build serves a working page without the wasm
//! toolchain: `GET /` and its four assets. The `.wasm` and its JS glue are
//! built by `scripts/build_web.sh` and committed; CI rebuilds them and
//! fails if they differ (`docs/RELAY.md` §6).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

macro_rules! asset {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../devicelink-web/www/",
            $path
        ))
    };
}

/// What the page may load: its own scripts, styles and wasm, images from
/// `data:` (the QR code's SVG), sockets to this origin; no framing (a QR
/// login page inside someone else's frame is a phishing tool).
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate every load: a new relay build may carry a new page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(asset!("index.html"), "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(asset!("app.js"), "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(asset!("app.css"), "text/css; charset=utf-8")
}

async fn glue_js() -> Response {
    asset(
        asset!("pkg/devicelink_web.js"),
        "text/javascript; charset=utf-8",
    )
}

async fn wasm() -> Response {
    asset(asset!("pkg/devicelink_web_bg.wasm"), "application/wasm")
}

/// The page's routes, for any router state.
pub(super) fn routes<T: Clone + Send + Sync + 'static>() -> Router<T> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/pkg/devicelink_web.js", get(glue_js))
        .route("/pkg/devicelink_web_bg.wasm", get(wasm))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_page_names_its_assets() {
        let html = std::str::from_utf8(asset!("index.html")).unwrap();
        for path in [
            "app.css",
            "app.js",
            "pkg/devicelink_web.js",
            "pkg/devicelink_web_bg.wasm",
        ] {
            assert!(html.contains(path), "{path}");
        }
        assert_eq!(&asset!("pkg/devicelink_web_bg.wasm")[..4], b"\0asm");
        let glue = std::str::from_utf8(asset!("pkg/devicelink_web.js")).unwrap();
        assert!(glue.contains("devicelink_web_bg.wasm"));
        let app = std::str::from_utf8(asset!("app.js")).unwrap();
        assert!(app.contains("./pkg/devicelink_web.js"));
    }

    /// Subresource Integrity: every asset the page loads is pinned by its
    /// SHA-384 in index.html (the wasm through a meta that app.js passes to
    /// fetch), so an altered asset does not run. Stale after an asset
    /// changes: run `scripts/page_integrity.py`.
    #[test]
    fn the_page_pins_every_asset_by_integrity() {
        use base64::Engine;
        let html = std::str::from_utf8(asset!("index.html")).unwrap();
        let sri = |bytes: &[u8]| {
            let d = ring::digest::digest(&ring::digest::SHA384, bytes);
            format!(
                "sha384-{}",
                base64::engine::general_purpose::STANDARD.encode(d.as_ref())
            )
        };
        for (path, bytes, tags) in [
            ("app.css", &asset!("app.css")[..], 1),
            ("app.js", &asset!("app.js")[..], 1),
            (
                "pkg/devicelink_web.js",
                &asset!("pkg/devicelink_web.js")[..],
                1,
            ),
            (
                "pkg/devicelink_web_bg.wasm",
                &asset!("pkg/devicelink_web_bg.wasm")[..],
                2,
            ),
        ] {
            let want = sri(bytes);
            let found = html.matches(&format!("integrity=\"{want}\"")).count()
                + html.matches(&format!("content=\"{want}\"")).count();
            assert_eq!(
                found, tags,
                "{path}: index.html does not pin {want}: run scripts/page_integrity.py"
            );
        }
        let app = std::str::from_utf8(asset!("app.js")).unwrap();
        assert!(app.contains("devicelink-wasm-integrity") && app.contains("integrity"));
        assert_eq!(html.matches("integrity=\"\"").count(), 0);
    }
}
