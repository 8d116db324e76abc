//! A linked companion's proof, to the relay, that it may receive its
//! account's signed facts: a signature by its device identity key, bound to
//! the relay client it subscribes as.
//!
//! The relay pushes an account's device lists (device keys and labels),
//! heartbeats and each device's logout to the companions that subscribe.
//! Without a proof anyone who knows an account id could listen. With it, a
//! relay accepts a subscription to `(account, index)` only from a client
//! that holds the identity key the account's newest list names at `index`,
//! and only for the [`ClientId`] the proof names, so a captured proof is
//! useless on another connection (the relay derives a resumable client's id
//! from a secret only that client holds).
//!
//! Signed message: `"devicelink/v2 relay subscription"` ‖ account (32) ‖
//! index (u32, big-endian) ‖ client id (16); strict Ed25519 as everywhere
//! (`docs/PROTOCOL.md` §0.1, §7.4).
//!
//! [`AccountProof`] is the same idea for the account itself: a signature by
//! the account key bound to the relay client that presents it, which a
//! relay asks for before it lets a client make it keep an account it never
//! saw (the first device list) and before it counts a code join against an
//! account. Signed message: `"devicelink/v2 relay account"` ‖ account (32) ‖
//! client id (16).

use std::fmt;

use crate::certificate::DeviceIndex;
use crate::error::ErrorKind;
use crate::keys::{AccountId, AccountKey, DeviceKey, SIGNATURE_LEN};
use crate::relay::ClientId;
use crate::session::LinkedSession;

/// The signed message's domain-separation label.
const SUBSCRIPTION_LABEL: &[u8] = b"devicelink/v2 relay subscription";

/// The account proof's domain-separation label.
const ACCOUNT_LABEL: &[u8] = b"devicelink/v2 relay account";

/// Bytes of a [`SubscriptionProof`].
pub const SUBSCRIPTION_PROOF_LEN: usize = SIGNATURE_LEN;

/// A subscription proof that does not verify for the device, account,
/// index and client it was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscription proof does not verify")]
pub struct BadSubscriptionProof;

impl BadSubscriptionProof {
    /// The coarse kind of this error: [`ErrorKind::Unauthenticated`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthenticated
    }
}

/// A device's signature allowing `client` to receive its account's facts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionProof([u8; SUBSCRIPTION_PROOF_LEN]);

fn message(account: &AccountId, index: DeviceIndex, client: ClientId) -> Vec<u8> {
    let mut m = Vec::with_capacity(SUBSCRIPTION_LABEL.len() + 32 + 4 + 16);
    m.extend_from_slice(SUBSCRIPTION_LABEL);
    m.extend_from_slice(&account.to_bytes());
    m.extend_from_slice(&index.0.to_be_bytes());
    m.extend_from_slice(&client.to_bytes());
    m
}

impl SubscriptionProof {
    /// The session's proof for subscribing as `client`; `None` when the
    /// host's key store holds the device key ([`crate::DeviceSigner`]): it
    /// signs [`SubscriptionProof::to_sign`] and
    /// [`SubscriptionProof::from_signature`] checks what it made.
    pub fn sign(session: &LinkedSession, client: ClientId) -> Option<Self> {
        let m = message(&session.account(), session.index(), client);
        session.signer().sign(&m).map(SubscriptionProof)
    }

    /// The bytes the session's device key signs to subscribe as `client`.
    pub fn to_sign(session: &LinkedSession, client: ClientId) -> Vec<u8> {
        message(&session.account(), session.index(), client)
    }

    /// The proof from a signature the host's key store made over
    /// [`SubscriptionProof::to_sign`], checked under the session's device
    /// key (a wrong one is refused here, not at the relay).
    pub fn from_signature(
        session: &LinkedSession,
        client: ClientId,
        signature: [u8; SUBSCRIPTION_PROOF_LEN],
    ) -> Result<Self, BadSubscriptionProof> {
        let proof = SubscriptionProof(signature);
        proof.verify(
            &session.device_key(),
            &session.account(),
            session.index(),
            client,
        )?;
        Ok(proof)
    }

    /// Checks the proof for `(account, index)` and `client` against the
    /// identity key the account's list names at `index`.
    pub fn verify(
        &self,
        device: &DeviceKey,
        account: &AccountId,
        index: DeviceIndex,
        client: ClientId,
    ) -> Result<(), BadSubscriptionProof> {
        if device.verify(&message(account, index, client), &self.0) {
            Ok(())
        } else {
            Err(BadSubscriptionProof)
        }
    }

    /// A proof from its 64 bytes (as a Subscribe frame carries it).
    pub const fn from_bytes(bytes: [u8; SUBSCRIPTION_PROOF_LEN]) -> Self {
        SubscriptionProof(bytes)
    }

    /// The proof's 64 bytes.
    pub const fn to_bytes(&self) -> [u8; SUBSCRIPTION_PROOF_LEN] {
        self.0
    }
}

impl fmt::Debug for SubscriptionProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionProof(…)")
    }
}

/// The account key's signature naming the relay client allowed to act for
/// the account (publish its first list, join a code session as it). The
/// client id derives from a secret only that client sends, so a captured
/// proof is useless to anyone else.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AccountProof([u8; SIGNATURE_LEN]);

fn account_message(account: &AccountId, client: ClientId) -> Vec<u8> {
    let mut m = Vec::with_capacity(ACCOUNT_LABEL.len() + 32 + 16);
    m.extend_from_slice(ACCOUNT_LABEL);
    m.extend_from_slice(&account.to_bytes());
    m.extend_from_slice(&client.to_bytes());
    m
}

impl AccountProof {
    /// The account's proof for acting as `client`.
    pub fn sign(key: &AccountKey, client: ClientId) -> Self {
        AccountProof(key.sign(&account_message(&key.account_id(), client)))
    }

    /// Checks the proof for `account` and `client`.
    ///
    /// # Errors
    /// [`BadSubscriptionProof`] (the same refusal as a subscription's).
    pub fn verify(
        &self,
        account: &AccountId,
        client: ClientId,
    ) -> Result<(), BadSubscriptionProof> {
        if account.verify(&account_message(account, client), &self.0) {
            Ok(())
        } else {
            Err(BadSubscriptionProof)
        }
    }

    /// A proof from its 64 bytes.
    pub const fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        AccountProof(bytes)
    }

    /// The proof's 64 bytes.
    pub const fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0
    }
}

impl fmt::Debug for AccountProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountProof(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceIdentity;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn a_proof_verifies_only_for_its_device_account_index_and_client() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let id = DeviceIdentity::generate(&mut rng);
        let other = DeviceIdentity::generate(&mut rng).device_key();
        let account = AccountId::from_bytes([3; 32]);
        let (index, client) = (DeviceIndex(2), ClientId::from(7));
        let proof = SubscriptionProof(id.sign(&message(&account, index, client)));
        let key = id.device_key();
        assert_eq!(proof.verify(&key, &account, index, client), Ok(()));
        for (k, a, i, c) in [
            (other, account, index, client),
            (key, AccountId::from_bytes([4; 32]), index, client),
            (key, account, DeviceIndex(3), client),
            (key, account, index, ClientId::from(8)),
        ] {
            assert_eq!(proof.verify(&k, &a, i, c), Err(BadSubscriptionProof));
        }
        let mut flipped = proof.to_bytes();
        flipped[10] ^= 1;
        assert_eq!(
            SubscriptionProof::from_bytes(flipped).verify(&key, &account, index, client),
            Err(BadSubscriptionProof)
        );
        assert_eq!(format!("{proof:?}"), "SubscriptionProof(…)");
    }

    #[test]
    fn an_account_proof_verifies_only_for_its_account_and_client() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(10);
        let key = AccountKey::generate(&mut rng);
        let other = AccountKey::generate(&mut rng).account_id();
        let client = ClientId::from(7);
        let proof = AccountProof::sign(&key, client);
        assert_eq!(proof.verify(&key.account_id(), client), Ok(()));
        assert_eq!(proof.verify(&other, client), Err(BadSubscriptionProof));
        assert_eq!(
            proof.verify(&key.account_id(), ClientId::from(8)),
            Err(BadSubscriptionProof)
        );
        let mut flipped = proof.to_bytes();
        flipped[0] ^= 1;
        assert_eq!(
            AccountProof::from_bytes(flipped).verify(&key.account_id(), client),
            Err(BadSubscriptionProof)
        );
        assert_eq!(format!("{proof:?}"), "AccountProof(…)");
    }
}
