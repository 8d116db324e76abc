//! Which web origins may talk to the relay (`--allowed-origin`).
//!
//! Browsers send `Origin` on every WebSocket handshake and every
//! cross-origin request; native clients (the phone, the Rust client) send
//! none. A request without `Origin` passes. A request with one passes if
//! the origin is configured, or, when none is configured, if it is the
//! relay's own (its `Host`): the page the relay serves itself. Anything else
//! is refused with 403 before any session exists, so a page on another
//! site cannot drive a visitor's browser against the relay. For the
//! long-poll routes the configured origins also get CORS answers, so the
//! page can be served from a separate static origin.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The web origins the relay accepts besides its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

/// Why an origin given on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a web origin (scheme://host[:port], no path): {0:?}")]
pub struct OriginError(String);

impl AllowedOrigins {
    /// None but the relay's own.
    pub fn none() -> Self {
        AllowedOrigins(Vec::new())
    }

    /// Parses `https://example.org` style origins (scheme `http` or
    /// `https`, a host, an optional port, nothing after), lower-cased as
    /// browsers send them.
    pub fn parse<'a>(origins: impl IntoIterator<Item = &'a str>) -> Result<Self, OriginError> {
        let mut out = Vec::new();
        for o in origins {
            let lower = o.trim_end_matches('/').to_ascii_lowercase();
            let rest = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty()
                    && !r.contains(['/', '?', '#', '@', ' '])
                    && HeaderValue::from_str(&lower).is_ok()
            });
            if !ok {
                return Err(OriginError(o.to_owned()));
            }
            out.push(lower);
        }
        Ok(AllowedOrigins(out))
    }

    /// Whether a request whose `Origin` is `origin` and whose `Host` is
    /// `host`, to a relay serving `https` (`tls`) or `http`, may go on: a
    /// configured origin, or the relay's own (the scheme it serves and the
    /// `Host`). Over TLS a page on another name cannot pass as the relay's
    /// own by rebinding its DNS to the relay: the certificate names the
    /// relay, so the browser stops at the handshake.
    pub fn admits(&self, origin: &str, host: Option<&str>, tls: bool) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.0.contains(&origin) {
            return true;
        }
        let scheme = if tls { "https://" } else { "http://" };
        match (origin.strip_prefix(scheme), host) {
            (Some(authority), Some(h)) => authority == h.to_ascii_lowercase(),
            _ => false,
        }
    }

    /// CORS answers for the configured origins (the long-poll routes).
    pub(crate) fn cors(&self) -> Option<CorsLayer> {
        if self.0.is_empty() {
            return None;
        }
        let list: Vec<HeaderValue> = self
            .0
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(list))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::IF_MATCH,
                    header::IF_NONE_MATCH,
                    header::CONTENT_TYPE,
                ])
                .expose_headers([header::ETAG]),
        )
    }
}

/// Refuses (403) a request whose `Origin` the relay does not admit.
pub(crate) async fn guard(
    allowed: Arc<AllowedOrigins>,
    tls: bool,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let admitted = origin.to_str().is_ok_and(|o| allowed.admits(o, host, tls));
        // A CORS preflight from an admitted origin is the CORS layer's.
        if !admitted {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_strictly_and_admit_exactly() {
        let a = AllowedOrigins::parse(["https://Static.Example.org", "http://127.0.0.1:8000/"])
            .unwrap();
        let relay = Some("relay.example.org");
        assert!(a.admits("https://static.example.org", relay, true));
        assert!(a.admits("http://127.0.0.1:8000", None, false));
        assert!(!a.admits("https://static.example.org.evil", relay, true));
        assert!(!a.admits("https://evil.example", relay, true));
        assert!(!a.admits("null", relay, true));
        // The relay's own page, with the scheme it serves only.
        assert!(a.admits("https://relay.example.org", relay, true));
        assert!(!a.admits("http://relay.example.org", relay, true));
        let none = AllowedOrigins::none();
        assert!(none.admits("http://127.0.0.1:9", Some("127.0.0.1:9"), false));
        assert!(!none.admits("https://127.0.0.1:9", Some("127.0.0.1:9"), false));
        assert!(!none.admits("http://127.0.0.1:8", Some("127.0.0.1:9"), false));
        for bad in [
            "static.example.org",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://a b",
        ] {
            assert!(AllowedOrigins::parse([bad]).is_err(), "{bad}");
        }
    }
}
