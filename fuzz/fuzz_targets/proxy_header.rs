//! Arbitrary bytes as the start of a connection from a trusted proxy
//! (`devicelink_relay::proxy_header::parse`: the PROXY protocol, v1 and v2).
//!
//! Properties: the parser is total and reads at most `MAX_HEADER` bytes; a
//! whole header's length fits in what was given and parsing exactly that
//! many bytes gives the same header (more bytes after it change nothing);
//! "not a header" is said only of bytes that cannot begin either signature,
//! and an incomplete header's every prefix is incomplete too (bytes are
//! never refused before they are wrong).
#![no_main]

use devicelink_relay::proxy_header::{parse, Parsed, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1: &[u8] = b"PROXY ";

fn may_begin(bytes: &[u8], signature: &[u8]) -> bool {
    let n = bytes.len().min(signature.len());
    bytes[..n] == signature[..n]
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    // Nothing past MAX_HEADER is read.
    if data.len() > MAX_HEADER {
        assert_eq!(parse(&data[..MAX_HEADER]), parsed);
    }
    match parsed {
        Parsed::NotProxy => {
            assert!(!data.is_empty());
            assert!(!may_begin(data, V1) && !may_begin(data, V2));
        }
        Parsed::Incomplete => {
            assert!(data.len() < MAX_HEADER);
            for n in 0..data.len() {
                assert_eq!(parse(&data[..n]), Parsed::Incomplete, "a prefix of {n} bytes");
            }
        }
        Parsed::Header { len, client } => {
            assert!(len > 0 && len <= data.len().min(MAX_HEADER));
            assert_eq!(parse(&data[..len]), Parsed::Header { len, client });
            let mut more = data[..len].to_vec();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&more), Parsed::Header { len, client });
        }
        Parsed::Invalid => {
            assert!(may_begin(data, V1) || may_begin(data, V2));
        }
    }
});
