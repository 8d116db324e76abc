//! Long-term identity keys: the account's key (held by the primary) and each
//! companion's own device identity key. Both are Ed25519.
//!
//! Secret halves are zeroized on drop (`ed25519-dalek`'s `ZeroizeOnDrop`) and
//! never printed: `Debug` shows only the public half.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Length of an Ed25519 public key.
pub(crate) const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// The account's public identity, which is also its id: the Ed25519 public key
/// of the [`AccountKey`]. Certificates and device lists name the account by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(#[serde(with = "crate::encoding::b64_array")] [u8; PUBLIC_KEY_LEN]);

/// A device's public identity key (Ed25519), as certified by the account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceKey(#[serde(with = "crate::encoding::b64_array")] [u8; PUBLIC_KEY_LEN]);

macro_rules! public_key_type {
    ($name:ident, $what:literal) => {
        impl $name {
            /// The key's 32 bytes.
            pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
                self.0
            }

            /// A key from 32 bytes. The bytes are checked when a signature is
            /// verified against them (an invalid point fails verification).
            pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
                Self(bytes)
            }

            pub(crate) fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
                &self.0
            }

            /// Verifies `signature` over `message` (strict Ed25519: rejects
            /// small-order keys and malleable signatures).
            pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
                match VerifyingKey::from_bytes(&self.0) {
                    Ok(key) => key
                        .verify_strict(message, &Signature::from_bytes(signature))
                        .is_ok(),
                    Err(_) => false,
                }
            }

            /// A short fingerprint for people: the first 8 bytes as base32.
            pub fn fingerprint(&self) -> String {
                let head = self.0.get(..8).unwrap_or(&[]);
                data_encoding::BASE32_NOPAD.encode(head)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, "({})"), self.fingerprint())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.fingerprint())
            }
        }
    };
}

public_key_type!(AccountId, "AccountId");
public_key_type!(DeviceKey, "DeviceKey");

/// An Ed25519 signing key whose secret is zeroized on drop and never printed.
#[derive(Clone)]
struct SecretSigningKey(SigningKey);

impl SecretSigningKey {
    fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        SecretSigningKey(SigningKey::generate(rng))
    }

    fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }
}

/// The account's identity key, held only by the primary. It signs device
/// certificates, device lists, heartbeats and audit checkpoints.
#[derive(Clone)]
pub struct AccountKey(SecretSigningKey);

impl AccountKey {
    /// A fresh account key from `rng` (the system RNG in normal use).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        AccountKey(SecretSigningKey::generate(rng))
    }

    /// The account's id (its public key).
    pub fn account_id(&self) -> AccountId {
        AccountId(self.0.public())
    }

    /// Restores a key from its 32 secret bytes (as given by
    /// [`AccountKey::to_secret_bytes`]). Treat the bytes as the account itself.
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        AccountKey(SecretSigningKey(SigningKey::from_bytes(bytes)))
    }

    /// The 32 secret bytes, for the host's secure storage. Zeroized on drop.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0 .0.to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message)
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("account", &self.account_id())
            .finish_non_exhaustive()
    }
}

/// A companion's own long-term identity key. It never leaves the companion;
/// the account certifies its public half ([`DeviceKey`]).
#[derive(Clone)]
pub struct DeviceIdentity(SecretSigningKey);

impl DeviceIdentity {
    /// A fresh device identity from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        DeviceIdentity(SecretSigningKey::generate(rng))
    }

    /// The public key the account certifies.
    pub fn device_key(&self) -> DeviceKey {
        DeviceKey(self.0.public())
    }

    /// Restores an identity from its 32 secret bytes.
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        DeviceIdentity(SecretSigningKey(SigningKey::from_bytes(bytes)))
    }

    /// The 32 secret bytes, for the host's secure storage. Zeroized on drop.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0 .0.to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message)
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device", &self.device_key())
            .finish_non_exhaustive()
    }
}

/// Who holds a companion's signing key.
///
/// Either the state itself ([`DeviceSigner::Identity`]: the secret is saved
/// with the companion and its session), or the platform's key store
/// ([`DeviceSigner::KeyStore`]: a browser's non-extractable WebCrypto
/// `CryptoKey`, Android Keystore, the Secure Enclave), which keeps the secret
/// where no saved state, script or backup can copy it. The core then holds
/// only the public key and asks the host to sign: see
/// [`crate::Companion::confirm_to_sign`] and
/// [`crate::relay::SubscriptionProof::to_sign`]. Every signature the host
/// hands back is verified before it is used.
///
/// Saved as the field `identity` (the secret) or `key_store` (the public
/// key); a saved state with both, or neither, is refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "SignerFields", into = "SignerFields")]
pub enum DeviceSigner {
    /// The secret key, saved with the state.
    Identity(DeviceIdentity),
    /// The public key of a secret the host's key store holds.
    KeyStore(DeviceKey),
}

/// [`DeviceSigner`]'s saved form: exactly one of the two.
#[derive(Serialize, Deserialize)]
struct SignerFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<DeviceIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_store: Option<DeviceKey>,
}

impl TryFrom<SignerFields> for DeviceSigner {
    type Error = &'static str;

    fn try_from(f: SignerFields) -> Result<Self, Self::Error> {
        match (f.identity, f.key_store) {
            (Some(identity), None) => Ok(DeviceSigner::Identity(identity)),
            (None, Some(key)) => Ok(DeviceSigner::KeyStore(key)),
            _ => Err("exactly one of `identity` and `key_store`"),
        }
    }
}

impl From<DeviceSigner> for SignerFields {
    fn from(signer: DeviceSigner) -> Self {
        match signer {
            DeviceSigner::Identity(identity) => SignerFields {
                identity: Some(identity),
                key_store: None,
            },
            DeviceSigner::KeyStore(key) => SignerFields {
                identity: None,
                key_store: Some(key),
            },
        }
    }
}

impl DeviceSigner {
    /// The device's public key.
    pub fn device_key(&self) -> DeviceKey {
        match self {
            DeviceSigner::Identity(identity) => identity.device_key(),
            DeviceSigner::KeyStore(key) => *key,
        }
    }

    /// The secret key, when the state holds it.
    pub fn identity(&self) -> Option<&DeviceIdentity> {
        match self {
            DeviceSigner::Identity(identity) => Some(identity),
            DeviceSigner::KeyStore(_) => None,
        }
    }

    /// Signs `message` when the state holds the secret; `None` when the
    /// host's key store must.
    pub(crate) fn sign(&self, message: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
        self.identity().map(|identity| identity.sign(message))
    }
}

impl From<DeviceIdentity> for DeviceSigner {
    fn from(identity: DeviceIdentity) -> Self {
        DeviceSigner::Identity(identity)
    }
}

impl From<DeviceKey> for DeviceSigner {
    fn from(key: DeviceKey) -> Self {
        DeviceSigner::KeyStore(key)
    }
}

/// Serde for secret keys: 32 bytes as base64, restored into a zeroizing key.
pub(crate) mod secret_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize_seed<S: Serializer>(seed: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        crate::encoding::b64_array::serialize(seed, s)
    }

    pub(crate) fn deserialize_seed<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Zeroizing<[u8; 32]>, D::Error> {
        crate::encoding::b64_array::deserialize::<D, 32>(d).map(Zeroizing::new)
    }
}

impl Serialize for AccountKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        secret_serde::serialize_seed(&self.to_secret_bytes(), s)
    }
}

impl<'de> Deserialize<'de> for AccountKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        secret_serde::deserialize_seed(d).map(|seed| AccountKey::from_secret_bytes(&seed))
    }
}

impl Serialize for DeviceIdentity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        secret_serde::serialize_seed(&self.to_secret_bytes(), s)
    }
}

impl<'de> Deserialize<'de> for DeviceIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        secret_serde::deserialize_seed(d).map(|seed| DeviceIdentity::from_secret_bytes(&seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn debug_never_shows_secret_bytes() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let account = AccountKey::generate(&mut rng);
        let device = DeviceIdentity::generate(&mut rng);
        for (dbg, secret) in [
            (format!("{account:?}"), account.to_secret_bytes()),
            (format!("{device:?}"), device.to_secret_bytes()),
        ] {
            let b64 = crate::encoding::b64(secret.as_ref());
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!dbg.contains(&b64) && !dbg.contains(&hex), "{dbg}");
            assert!(!dbg.contains(&format!("{:?}", &secret[..4])), "{dbg}");
        }
    }

    #[test]
    fn signatures_verify_only_under_their_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let a = AccountKey::generate(&mut rng);
        let b = AccountKey::generate(&mut rng);
        let sig = a.sign(b"msg");
        assert!(a.account_id().verify(b"msg", &sig));
        assert!(!b.account_id().verify(b"msg", &sig));
        assert!(!a.account_id().verify(b"msh", &sig));
        let restored = AccountKey::from_secret_bytes(&a.to_secret_bytes());
        assert_eq!(restored.account_id(), a.account_id());
    }
}
