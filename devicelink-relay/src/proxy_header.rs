//! The PROXY protocol header (HAProxy's, versions 1 and 2), parsed: what a
//! trusted load balancer sends at the start of each connection to say whose
//! connection it is. [`parse`] is pure and total (fuzzed by
//! `fuzz/fuzz_targets/proxy_header.rs`); the server reads headers with it
//! (`server::proxy`) only from peers in `--trusted-proxy`. Parsing is the
//! `ppp` crate's; this module bounds the input and says what the bytes are.

use std::net::IpAddr;

use ppp::{v1, v2, HeaderResult, PartialResult};

/// The most bytes read for a header: a version 1 header is at most 107
/// bytes, a version 2 header 16 plus what it announces (addresses and TLVs;
/// load balancers send a few hundred bytes); a longer one is refused.
pub const MAX_HEADER: usize = 1024;

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a PROXY header (they cannot begin one).
    NotProxy,
    /// The beginning of a header: more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes. `client` is the source address it
    /// names; `None` for `UNKNOWN` (v1), `LOCAL` or a non-IP family (v2):
    /// the proxy's own connection (a health check), for which the proxy's
    /// address stands.
    Header {
        /// Bytes the header takes.
        len: usize,
        /// The client's address.
        client: Option<IpAddr>,
    },
    /// A header that is malformed, or longer than [`MAX_HEADER`].
    Invalid,
}

/// Whether `bytes` begin (or may begin, being short) with `signature`.
fn may_begin(bytes: &[u8], signature: &[u8]) -> bool {
    let n = bytes.len().min(signature.len());
    bytes[..n] == signature[..n]
}

/// Parses the start of a connection. Total; reads at most
/// [`MAX_HEADER`] bytes of `bytes`.
pub fn parse(bytes: &[u8]) -> Parsed {
    let bytes = &bytes[..bytes.len().min(MAX_HEADER)];
    if bytes.is_empty() {
        return Parsed::Incomplete;
    }
    if !may_begin(bytes, V2_SIGNATURE) && !may_begin(bytes, V1_SIGNATURE) {
        return Parsed::NotProxy;
    }
    let result = HeaderResult::parse(bytes);
    // A version 1 line that ended cannot become whole with more bytes
    // (`ppp` calls a line missing its fields "incomplete").
    let v1_line_ended = may_begin(bytes, V1_SIGNATURE) && bytes.contains(&b'\n');
    if result.is_incomplete() {
        return if bytes.len() >= MAX_HEADER || v1_line_ended {
            Parsed::Invalid
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                v1::Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(IpAddr::V4(a.source_address)),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(IpAddr::V6(a.source_address)),
                _ => None,
            },
        },
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(addresses.len()).unwrap().to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn v1_and_v2_headers_name_the_client() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 45,
                client: Some("192.0.2.7".parse().unwrap())
            }
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: h.len(),
                client: Some("2001:db8::1".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
        let mut a4 = vec![192, 0, 2, 9, 198, 51, 100, 1];
        a4.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        let h = v2(1, 0x11, &a4);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 28,
                client: Some("192.0.2.9".parse().unwrap())
            }
        );
        // LOCAL: the proxy's own connection.
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Header {
                len: 16,
                client: None
            }
        );
    }

    #[test]
    fn prefixes_wait_and_everything_else_is_refused_or_not_a_header() {
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Parsed::Incomplete);
        assert_eq!(parse(&V2_SIGNATURE[..5]), Parsed::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotProxy);
        assert_eq!(parse(&[0x16, 3, 1]), Parsed::NotProxy);
        assert_eq!(parse(b"PROXY TCP4 nonsense\r\n"), Parsed::Invalid);
        // A v1 line that never ends.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse(&long), Parsed::Invalid);
        // A v2 header announcing more than the limit.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        big.resize(MAX_HEADER + 10, 0);
        assert_eq!(parse(&big), Parsed::Invalid);
    }
}
