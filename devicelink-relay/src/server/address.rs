//! Who a connection comes from, as the budgets count it: the client's IP
//! address, keyed as a [`SourceKey`] (an IPv4 address whole; an IPv6
//! address by its prefix, /64 unless told otherwise, since one subscriber
//! is routinely handed a whole /64 and could otherwise pick a fresh
//! address per connection).
//!
//! The address is the TCP peer's, unless the peer is a trusted proxy
//! (`--trusted-proxy CIDR`): then it is the one the proxy vouches for, in
//! a PROXY protocol header (v1 or v2) at the start of the connection, or in
//! the last `X-Forwarded-For` entry of each request
//! ([`super::proxy`]).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use devicelink::relay::SourceKey;
use ipnet::IpNet;

/// The default IPv6 prefix length a source is keyed by.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The budgets' key for `ip`: an IPv4 address (or an IPv4-mapped IPv6 one)
/// as its IPv4-mapped form, an IPv6 address with every bit past its first
/// `ipv6_prefix` cleared.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> SourceKey {
    let v6 = match ip.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            Ipv6Addr::from(u128::from(a) & mask)
        }
    };
    SourceKey::from_bytes(v6.octets())
}

/// The networks whose connections may vouch for another client address
/// (`--trusted-proxy CIDR`, repeatable): a reverse proxy or load balancer
/// in front of the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// No proxy is trusted: the TCP peer is the client.
    pub fn none() -> Self {
        TrustedProxies(Vec::new())
    }

    /// The given networks (`"10.0.0.0/8"`, `"::1/128"`, or a bare address
    /// for one host).
    ///
    /// # Errors
    /// The first entry that is not a network or an address.
    pub fn parse<'a>(cidrs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        cidrs
            .into_iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("not a network or an address: {c:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the accept loop learnt about a connection, attached to each of its
/// requests: the TCP peer, the address a trusted peer's PROXY protocol
/// header gave (if any), and whom to trust.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) peer: IpAddr,
    pub(crate) proxied: Option<IpAddr>,
    pub(crate) trusted: Arc<TrustedProxies>,
}

impl ConnectionInfo {
    /// The client's address for a request with these headers: the PROXY
    /// header's, else (from a trusted peer) the `X-Forwarded-For` entry
    /// nearest to the relay that is not itself a trusted proxy, else the
    /// TCP peer.
    pub(crate) fn client(&self, headers: &axum::http::HeaderMap) -> IpAddr {
        if let Some(ip) = self.proxied {
            return ip;
        }
        if !self.trusted.contains(self.peer) {
            return self.peer;
        }
        forwarded_for(headers, &self.trusted).unwrap_or(self.peer)
    }
}

/// The client in `X-Forwarded-For` headers as trusted proxies appended it:
/// walking from the last entry (the one the nearest proxy added) back, the
/// first address that is not a trusted proxy. `None` if there is no such
/// header, or an entry that is not an address is met first.
pub(crate) fn forwarded_for(
    headers: &axum::http::HeaderMap,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut last = None;
    for entry in entries.iter().rev() {
        let ip = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        last = Some(ip);
    }
    last
}

/// The client's IP address for this request: as the accept loop vouched
/// for it ([`ConnectionInfo`]), else the TCP peer of a router served with
/// connect info, else none (a router served some other way: no per-address
/// limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(info) = parts.extensions.get::<ConnectionInfo>() {
            return Ok(ClientIp(Some(info.client(&parts.headers))));
        }
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted = Arc::new(TrustedProxies::parse(["10.0.0.0/8", "192.0.2.7"]).unwrap());
        let mut headers = axum::http::HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.1".parse().unwrap(),
        );
        headers.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        let info = |peer: &str| ConnectionInfo {
            peer: peer.parse().unwrap(),
            proxied: None,
            trusted: trusted.clone(),
        };
        // From a trusted proxy: the nearest untrusted entry (the client as
        // the first trusted proxy saw it), never the one the client wrote.
        assert_eq!(
            info("10.0.0.1").client(&headers),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            info("192.0.2.7").client(&headers),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the TCP peer.
        assert_eq!(
            info("198.51.100.77").client(&headers),
            "198.51.100.77".parse::<IpAddr>().unwrap()
        );
        // A PROXY header wins.
        let mut p = info("10.0.0.1");
        p.proxied = Some("2001:db8::1".parse().unwrap());
        assert_eq!(p.client(&headers), "2001:db8::1".parse::<IpAddr>().unwrap());
        // Garbage stops the walk: the peer is kept.
        let mut bad = axum::http::HeaderMap::new();
        bad.append("x-forwarded-for", "1.2.3.4, nonsense".parse().unwrap());
        assert_eq!(
            info("10.0.0.1").client(&bad),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            info("10.0.0.1").client(&axum::http::HeaderMap::new()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(TrustedProxies::parse(["nope"]).is_err());
    }

    #[test]
    fn v4_whole_v6_by_prefix() {
        let k = |s: &str, p| source_key(s.parse().unwrap(), p);
        assert_ne!(k("192.0.2.1", 64), k("192.0.2.2", 64));
        // The same IPv4 address, plain or mapped, is one source.
        assert_eq!(k("192.0.2.1", 64), k("::ffff:192.0.2.1", 64));
        // One /64: one source, whatever the interface id.
        assert_eq!(k("2001:db8:1:2::1", 64), k("2001:db8:1:2:ffff::9", 64));
        assert_ne!(k("2001:db8:1:2::1", 64), k("2001:db8:1:3::1", 64));
        // Other prefix lengths.
        assert_eq!(k("2001:db8:1:2::1", 48), k("2001:db8:1:3::1", 48));
        assert_ne!(k("2001:db8::1", 128), k("2001:db8::2", 128));
        assert_eq!(k("2001:db8::1", 0), k("fe80::1", 0));
        assert_eq!(k("2001:db8::1", 200), k("2001:db8::1", 128));
        assert_eq!(
            k("192.0.2.1", 64).to_bytes(),
            "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }
}
