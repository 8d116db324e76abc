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

use std::net::{IpAddr, Ipv6Addr};

use devicelink::relay::SourceKey;

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

#[cfg(test)]
mod tests {
    use super::*;

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
