//! Text forms of bytes: base64 (the owner's `base64` crate) for JSON, test
//! vectors and persisted state. The QR text uses base32 (see `offer`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Standard base64 with padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Serde for byte strings of any length as base64.
pub(crate) mod b64_vec {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Serde for fixed-size byte arrays as base64.
pub(crate) mod b64_array {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroize;

    /// The base64 text is zeroized after use: fixed-size arrays here are
    /// keys and secrets as often as not.
    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text = zeroize::Zeroizing::new(b64(bytes));
        s.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        let out = <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
            serde::de::Error::invalid_length(bytes.len(), &"a base64 string of the right length")
        });
        bytes.zeroize();
        out
    }
}

/// Serde for an optional fixed-size byte array: base64, or `null`.
pub(crate) mod b64_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct B64<const N: usize>(#[serde(with = "super::b64_array")] [u8; N]);

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        bytes.map(B64).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<[u8; N]>, D::Error> {
        Ok(Option::<B64<N>>::deserialize(d)?.map(|b| b.0))
    }
}

/// A byte string that serializes as base64: the serde form of every signed
/// structure (which then re-verifies on the way in).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Bytes(#[serde(with = "b64_vec")] pub(crate) Vec<u8>);
