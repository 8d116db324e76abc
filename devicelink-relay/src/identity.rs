//! Stable, resumable client ids.
//!
//! The relay's ledger binds a token to the [`ClientId`] that registered it
//! and routes each message to a `ClientId`. A connection that sends no
//! `Identify` frame gets a fresh random id, which ends with it. A client
//! that sends `Identify { secret }` as its first frame is
//! [`ClientSecret::client_id`] of that secret, on this connection and on
//! every later one (to any relay node): a companion that loses its
//! connection while pairing reconnects as the same client, keeps its
//! registered tokens, and receives what was routed to it meanwhile.
//!
//! The id is a hash of the secret, so knowing an id (the relay's logs)
//! does not let anyone act as that client; only the secret does, and it
//! travels only to the relay (inside TLS in a deployment).

use std::fmt;

use devicelink::relay::ClientId;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The label hashed before the secret.
const CLIENT_ID_LABEL: &[u8] = b"devicelink-relay/v1 client id";

/// A client's 32-byte secret. Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ClientSecret([u8; 32]);

impl ClientSecret {
    /// A fresh secret from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        ClientSecret(b)
    }

    /// A secret from its 32 bytes (as an `Identify` frame, or the client's
    /// saved state, carries it).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        ClientSecret(bytes)
    }

    /// The secret's bytes, for the client's saved state.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The client id this secret stands for: the first 16 bytes of
    /// SHA-256(`"devicelink-relay/v1 client id"` ‖ secret).
    pub fn client_id(&self) -> ClientId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(CLIENT_ID_LABEL);
        ctx.update(&self.0);
        let d = ctx.finish();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.as_ref()[..16]);
        ClientId::from_bytes(id)
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientSecret(… for {})", self.client_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_secrets_quiet() {
        let a = ClientSecret::from_bytes([1; 32]);
        assert_eq!(a.client_id(), ClientSecret::from_bytes([1; 32]).client_id());
        assert_ne!(a.client_id(), ClientSecret::from_bytes([2; 32]).client_id());
        let shown = format!("{a:?}");
        assert!(!shown.contains("0101"), "{shown}");
        assert!(shown.contains(&a.client_id().to_string()));
    }
}
