//! The typed code: what the companion shows and the user types on the phone.
//!
//! Twelve symbols of Crockford's base32 (`0-9 A-Z` without `I L O U`), shown
//! in three groups, `HHHH-CCCC-CCCC`:
//!
//! - `HHHH`, the **handle** ([`CodeHandle`], 20 bits): issued by the relay
//!   for this companion's code session, the routing key. Not secret.
//! - `CCCC-CCCC`, the **code** ([`LinkCode`], 40 bits from the RNG): the
//!   PAKE's password. Secret; never sent anywhere, not even to the relay.
//!
//! The parser ([`TypedCode::parse`]) is total and forgiving as Crockford's
//! decoding is: case does not matter, spaces and hyphens are ignored, `O`
//! reads as `0` and `I`/`L` as `1`. Anything else is a typed
//! [`CodeTextError`]; input longer than [`MAX_TYPED_LEN`] bytes is refused
//! before it is looked at.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Crockford's base32 alphabet (value = position).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols of the handle.
pub const HANDLE_SYMBOLS: usize = 4;
/// Symbols of the code.
pub const CODE_SYMBOLS: usize = 8;
/// Bits of the handle (4 symbols × 5 bits).
pub const HANDLE_BITS: u32 = 20;
/// Bytes of the code (8 symbols × 5 bits = 40 bits).
pub const CODE_LEN: usize = 5;
/// Longest typed text the parser looks at, in bytes (the 14 characters of
/// `HHHH-CCCC-CCCC` and generous room for spaces).
pub const MAX_TYPED_LEN: usize = 64;

/// Why a typed code was refused. Nothing is sent for a refused text: the
/// user can type it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeTextError {
    /// Longer than [`MAX_TYPED_LEN`] bytes (refused before decoding).
    #[error("typed code of {len} bytes is too long")]
    TooLong {
        /// Bytes given.
        len: usize,
    },
    /// A character that is not a Crockford symbol, a space or a hyphen.
    #[error("character {found:?} at position {at} is not part of a code")]
    BadCharacter {
        /// Its position, counted in characters from 0.
        at: usize,
        /// The character.
        found: char,
    },
    /// The wrong number of symbols (spaces and hyphens not counted).
    #[error("a code has {expected} symbols, found {found}")]
    WrongLength {
        /// Symbols expected.
        expected: usize,
        /// Symbols found.
        found: usize,
    },
}

/// The value of one typed character, `Ok(None)` for a separator.
fn symbol(c: char) -> Result<Option<u8>, ()> {
    let up = c.to_ascii_uppercase();
    let v = match up {
        ' ' | '-' | '\t' => return Ok(None),
        'O' => 0,
        'I' | 'L' => 1,
        _ => match ALPHABET.iter().position(|&a| char::from(a) == up) {
            // Position in a 32-entry table.
            Some(p) => u8::try_from(p).map_err(|_| ())?,
            None => return Err(()),
        },
    };
    Ok(Some(v))
}

/// The symbols of `text` (5-bit values), after the size check.
fn symbols(text: &str, expected: usize) -> Result<Vec<u8>, CodeTextError> {
    if text.len() > MAX_TYPED_LEN {
        return Err(CodeTextError::TooLong { len: text.len() });
    }
    let mut out = Vec::with_capacity(expected);
    for (at, c) in text.chars().enumerate() {
        match symbol(c) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(()) => return Err(CodeTextError::BadCharacter { at, found: c }),
        }
    }
    if out.len() != expected {
        let found = out.len();
        out.zeroize();
        return Err(CodeTextError::WrongLength { expected, found });
    }
    Ok(out)
}

fn push_symbols(value: u64, count: usize, out: &mut String) {
    for i in (0..count).rev() {
        let v = (value >> (5 * i)) & 31;
        out.push(char::from(ALPHABET[usize::try_from(v).unwrap_or(0)]));
    }
}

fn value_of(symbols: &[u8]) -> u64 {
    symbols
        .iter()
        .fold(0u64, |acc, s| (acc << 5) | u64::from(*s))
}

/// The relay-issued routing key of one code session: 20 bits, shown as the
/// first group of four symbols. Public: the relay routes by it.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct CodeHandle(u32);

impl CodeHandle {
    /// The largest handle value plus one (2²⁰).
    pub const LIMIT: u32 = 1 << HANDLE_BITS;

    /// A handle from its value; `None` at or above [`CodeHandle::LIMIT`].
    pub fn new(value: u32) -> Option<Self> {
        (value < Self::LIMIT).then_some(CodeHandle(value))
    }

    /// A uniformly random handle (the relay issues these).
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        CodeHandle(rng.next_u32() & (Self::LIMIT - 1))
    }

    /// The handle's value.
    pub fn value(self) -> u32 {
        self.0
    }

    /// The 4 bytes bound into the key exchange (big-endian value).
    pub fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    /// Parses four symbols (forgiving, as [`TypedCode::parse`]).
    pub fn parse(text: &str) -> Result<Self, CodeTextError> {
        let s = symbols(text, HANDLE_SYMBOLS)?;
        // Four 5-bit symbols are 20 bits.
        Ok(CodeHandle(u32::try_from(value_of(&s)).unwrap_or(0)))
    }
}

impl TryFrom<u32> for CodeHandle {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        CodeHandle::new(v).ok_or_else(|| format!("code handle {v} is not below 2^20"))
    }
}

impl From<CodeHandle> for u32 {
    fn from(h: CodeHandle) -> u32 {
        h.0
    }
}

impl fmt::Display for CodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(HANDLE_SYMBOLS);
        push_symbols(u64::from(self.0), HANDLE_SYMBOLS, &mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for CodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeHandle({self})")
    }
}

/// The secret part of a typed code: 40 bits from the RNG, the PAKE's
/// password. Zeroized on drop, compared in constant time, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct LinkCode(#[serde(with = "crate::encoding::b64_array")] [u8; CODE_LEN]);

impl LinkCode {
    /// A fresh code from `rng` (one 5-byte draw).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut c = [0u8; CODE_LEN];
        rng.fill_bytes(&mut c);
        LinkCode(c)
    }

    /// Parses eight symbols (forgiving, as [`TypedCode::parse`]).
    pub fn parse(text: &str) -> Result<Self, CodeTextError> {
        let mut s = symbols(text, CODE_SYMBOLS)?;
        let code = Self::from_symbols(&s);
        s.zeroize();
        Ok(code)
    }

    fn from_symbols(s: &[u8]) -> Self {
        let mut v = value_of(s);
        let mut out = [0u8; CODE_LEN];
        out.copy_from_slice(&v.to_be_bytes()[8 - CODE_LEN..]);
        v.zeroize();
        LinkCode(out)
    }

    /// The code's 5 bytes (the PAKE password).
    pub(crate) fn as_bytes(&self) -> &[u8; CODE_LEN] {
        &self.0
    }

    /// The eight symbols as two groups, `CCCC-CCCC` (secret: show it only
    /// on the companion's own screen).
    pub fn to_text(&self) -> String {
        let mut bytes = [0u8; 8];
        bytes[8 - CODE_LEN..].copy_from_slice(&self.0);
        let mut v = u64::from_be_bytes(bytes);
        let mut s = String::with_capacity(CODE_SYMBOLS + 1);
        push_symbols(v >> 20, 4, &mut s);
        s.push('-');
        push_symbols(v & 0xF_FFFF, 4, &mut s);
        v.zeroize();
        bytes.zeroize();
        s
    }
}

impl PartialEq for LinkCode {
    fn eq(&self, other: &Self) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }
}

impl Eq for LinkCode {}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkCode(..)")
    }
}

/// What the user typed on the phone: the handle and the code.
#[derive(Clone, PartialEq, Eq)]
pub struct TypedCode {
    handle: CodeHandle,
    code: LinkCode,
}

impl TypedCode {
    /// A typed code from its parts.
    pub fn new(handle: CodeHandle, code: LinkCode) -> Self {
        TypedCode { handle, code }
    }

    /// Parses the twelve symbols `HHHH-CCCC-CCCC`. Total; case, spaces and
    /// hyphens do not matter, `O` is `0`, `I` and `L` are `1`.
    pub fn parse(text: &str) -> Result<Self, CodeTextError> {
        let mut s = symbols(text, HANDLE_SYMBOLS + CODE_SYMBOLS)?;
        let (h, c) = s.split_at(HANDLE_SYMBOLS);
        let handle = CodeHandle(u32::try_from(value_of(h)).unwrap_or(0));
        let code = LinkCode::from_symbols(c);
        s.zeroize();
        Ok(TypedCode { handle, code })
    }

    /// The handle (look the session up at the relay with it).
    pub fn handle(&self) -> CodeHandle {
        self.handle
    }

    /// The code.
    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// The canonical text, `HHHH-CCCC-CCCC` (secret).
    pub fn to_text(&self) -> String {
        format!("{}-{}", self.handle, self.code.to_text())
    }
}

impl fmt::Debug for TypedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCode")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn round_trips_and_forgives_case_separators_and_look_alikes() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..200 {
            let t = TypedCode::new(CodeHandle::random(&mut rng), LinkCode::generate(&mut rng));
            let text = t.to_text();
            assert_eq!(text.len(), 14);
            assert_eq!(TypedCode::parse(&text).unwrap(), t);
            assert_eq!(TypedCode::parse(&text.to_lowercase()).unwrap(), t);
            let spaced: String = text.replace('-', " ");
            assert_eq!(TypedCode::parse(&format!("  {spaced} ")).unwrap(), t);
            let squashed: String = text.replace('-', "");
            assert_eq!(TypedCode::parse(&squashed).unwrap(), t);
            let alike = text.replace('0', "O").replace('1', "l");
            assert_eq!(TypedCode::parse(&alike).unwrap(), t);
            assert_eq!(TypedCode::parse(&text.replace('1', "I")).unwrap(), t);
        }
    }

    #[test]
    fn refusals_are_typed_and_sizes_come_first() {
        assert_eq!(
            TypedCode::parse("ABCD-EFGH-JKMU"),
            Err(CodeTextError::BadCharacter { at: 13, found: 'U' })
        );
        assert_eq!(
            TypedCode::parse("ABCD-EFGH-JKM"),
            Err(CodeTextError::WrongLength {
                expected: 12,
                found: 11
            })
        );
        assert_eq!(
            TypedCode::parse(&"A".repeat(65)),
            Err(CodeTextError::TooLong { len: 65 })
        );
        assert!(matches!(
            TypedCode::parse("ABCD-EFGH-JKMé"),
            Err(CodeTextError::BadCharacter { found: 'é', .. })
        ));
        assert!(TypedCode::parse("").is_err());
        assert_eq!(
            CodeHandle::parse("zzzz").unwrap().value(),
            CodeHandle::LIMIT - 1
        );
        assert_eq!(CodeHandle::new(CodeHandle::LIMIT), None);
        assert_eq!(
            LinkCode::parse("0000-0001").unwrap().as_bytes(),
            &[0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn debug_never_shows_the_code() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let t = TypedCode::new(CodeHandle::random(&mut rng), LinkCode::generate(&mut rng));
        let code = t.code().to_text().replace('-', "");
        assert!(!format!("{t:?}").contains(&code));
        assert_eq!(format!("{:?}", t.code()), "LinkCode(..)");
    }
}
