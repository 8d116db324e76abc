//! Versioned persistence of every state a host keeps (companion, primary
//! handshake, account registry, linked session, offer display, relay ledger
//! and directory).
//!
//! The format is JSON: `{"format":"devicelink","kind":K,"version":1,"state":…}`.
//! Restoring checks the envelope, the kind and the version, decodes the state
//! (signed parts are re-verified) and checks its internal consistency; any
//! corrupted or truncated input gives a typed [`PersistError`]. Saved states
//! that hold secrets (account key, device identity, offer and session keys)
//! are secret material: store them as such.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The current format version.
pub const FORMAT_VERSION: u32 = 1;
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
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    format: &'static str,
    kind: &'a str,
    version: u32,
    state: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    format: String,
    kind: String,
    version: u32,
    state: serde_json::Value,
}

pub(crate) fn save<T: Serialize>(kind: &'static str, state: &T) -> Result<Vec<u8>, PersistError> {
    serde_json::to_vec(&EnvelopeOut {
        format: FORMAT,
        kind,
        version: FORMAT_VERSION,
        state,
    })
    .map_err(|e| PersistError::Malformed(e.to_string()))
}

pub(crate) fn restore<T: DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, PersistError> {
    let env: EnvelopeIn =
        serde_json::from_slice(bytes).map_err(|e| PersistError::Malformed(e.to_string()))?;
    if env.format != FORMAT || env.kind != kind {
        return Err(PersistError::WrongKind {
            expected: kind,
            found: format!("{}/{}", env.format, env.kind),
        });
    }
    if env.version != FORMAT_VERSION {
        return Err(PersistError::UnsupportedVersion(env.version));
    }
    serde_json::from_value(env.state).map_err(|e| PersistError::Malformed(e.to_string()))
}
