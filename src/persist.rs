//! Versioned persistence of every state a host keeps (companion, primary
//! handshake, account registry, linked session, offer display, relay ledger
//! and directory).
//!
//! The format is two lines of JSON: a header
//! `{"format":"devicelink","kind":K,"version":3,"sha256":H}` and the state,
//! where `H` is the base64 SHA-256 of the state line's bytes. Restoring checks
//! the header, the kind, the version and the digest, decodes the state (signed
//! parts are re-verified) and checks its internal consistency; corrupted or
//! truncated input gives a typed [`PersistError`]. The digest detects
//! accidental corruption, not deliberate tampering: whoever can write the
//! saved bytes can recompute it, so protect saved states at rest (they hold
//! secrets anyway). Saved states
//! that hold secrets (account key, device identity, offer and session keys)
//! are secret material: store them as such.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The current format version.
pub const FORMAT_VERSION: u32 = 3;
const FORMAT: &str = "devicelink";

/// Why a state could not be saved or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// Not JSON, truncated, or fields of the wrong shape.
    #[error("malformed saved state: {0}")]
    Malformed(String),
    /// A saved state of another kind (an account where a session was expected…).
    #[error("saved state is a `{found}`, expected `{expected}`")]
    WrongKind {
        /// What was asked for.
        expected: &'static str,
        /// What the bytes hold.
        found: String,
    },
    /// A format version this implementation cannot read.
    #[error("unsupported saved-state version {0}")]
    UnsupportedVersion(u32),
    /// The state decoded but contradicts itself.
    #[error("inconsistent saved state: {0}")]
    Inconsistent(&'static str),
    /// The state's bytes do not match the header's digest (corrupted).
    #[error("saved state is corrupted (digest mismatch)")]
    Corrupted,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    format: &'static str,
    kind: &'a str,
    version: u32,
    sha256: String,
}

#[derive(Deserialize)]
struct HeaderIn {
    format: String,
    kind: String,
    version: u32,
    sha256: String,
}

fn digest_b64(bytes: &[u8]) -> String {
    crate::encoding::b64(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A writer that only counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn save<T: Serialize>(kind: &'static str, state: &T) -> Result<Vec<u8>, PersistError> {
    let malformed = |e: serde_json::Error| PersistError::Malformed(e.to_string());
    // The state may hold secrets: the intermediate copy is zeroized, and it is
    // allocated at its exact size first (a reallocation while writing would
    // free an unzeroized copy), measured by a writer that keeps nothing.
    let len = {
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, state).map_err(malformed)?;
        counter.0
    };
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(len));
    serde_json::to_writer(&mut *body, state).map_err(malformed)?;
    let mut out = serde_json::to_vec(&HeaderOut {
        format: FORMAT,
        kind,
        version: FORMAT_VERSION,
        sha256: digest_b64(&body),
    })
    .map_err(malformed)?;
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn restore<T: DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, PersistError> {
    let malformed = |e: serde_json::Error| PersistError::Malformed(e.to_string());
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| PersistError::Malformed("missing header line".into()))?;
    let (head, body) = bytes.split_at(split);
    let body = body.get(1..).unwrap_or(&[]);
    let header: HeaderIn = serde_json::from_slice(head).map_err(malformed)?;
    if header.format != FORMAT || header.kind != kind {
        return Err(PersistError::WrongKind {
            expected: kind,
            found: format!("{}/{}", header.format, header.kind),
        });
    }
    if header.version != FORMAT_VERSION {
        return Err(PersistError::UnsupportedVersion(header.version));
    }
    if header.sha256 != digest_b64(body) {
        return Err(PersistError::Corrupted);
    }
    serde_json::from_slice(body).map_err(malformed)
}
