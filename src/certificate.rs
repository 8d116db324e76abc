//! What the account signs: a [`DeviceCertificate`] for each companion, the
//! [`SignedDeviceList`] of linked devices, and the primary's
//! [`PrimaryHeartbeat`] (proof that it was alive at a time).
//!
//! All three are fixed binary layouts (see `docs/PROTOCOL.md`) signed with the
//! account's Ed25519 key under a distinct domain label; decoders are total.

use serde::{Deserialize, Serialize};

use crate::keys::{AccountId, AccountKey, DeviceKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::time::Timestamp;
use crate::wire::Reader;

const CERT_VERSION: u8 = 1;
const LIST_VERSION: u8 = 1;
const HEARTBEAT_VERSION: u8 = 1;
const CERT_LABEL: &[u8] = b"devicelink/v1 device certificate";
const LIST_LABEL: &[u8] = b"devicelink/v1 device list";
const HEARTBEAT_LABEL: &[u8] = b"devicelink/v1 heartbeat";

/// Bytes of an encoded [`DeviceCertificate`].
pub const CERTIFICATE_LEN: usize = 1 + PUBLIC_KEY_LEN + 4 + PUBLIC_KEY_LEN + 8 + SIGNATURE_LEN;
/// Bytes of an encoded [`PrimaryHeartbeat`].
pub const HEARTBEAT_LEN: usize = 1 + PUBLIC_KEY_LEN + 8 + SIGNATURE_LEN;
const LIST_ENTRY_LEN: usize = 4 + PUBLIC_KEY_LEN;
const LIST_HEADER_LEN: usize = 1 + PUBLIC_KEY_LEN + 8 + 8 + 1;
/// Most devices a signed list names.
pub const MAX_LIST_DEVICES: usize = 255;
/// Bytes of an encoded list naming no device.
pub(crate) const MIN_LIST_LEN: usize = LIST_HEADER_LEN + SIGNATURE_LEN;
/// Bytes of an encoded list naming [`MAX_LIST_DEVICES`] devices.
pub(crate) const MAX_LIST_LEN: usize = MIN_LIST_LEN + MAX_LIST_DEVICES * LIST_ENTRY_LEN;

/// Why a certificate, device list or heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Wrong length or layout.
    #[error("malformed {what}")]
    Malformed {
        /// Which structure.
        what: &'static str,
    },
    /// A layout version this implementation does not speak.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// The account's signature does not verify.
    #[error("bad account signature on {what}")]
    BadSignature {
        /// Which structure.
        what: &'static str,
    },
    /// Signed by another account than the one expected.
    #[error("signed by another account")]
    WrongAccount,
    /// The certificate or list does not name this device as expected.
    #[error("certificate or device list does not match this device")]
    WrongDevice,
    /// A device list not newer than the one already held.
    #[error("device list version {got} is not newer than {have}")]
    StaleDeviceList {
        /// The version held.
        have: u64,
        /// The version offered.
        got: u64,
    },
}

/// A device's number in its account: the primary is 0, companions count up
/// from 1, and an index is never reused, even after its device is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceIndex(pub u32);

impl DeviceIndex {
    /// The primary's own index.
    pub const PRIMARY: DeviceIndex = DeviceIndex(0);
}

impl std::fmt::Display for DeviceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The account's signature over a companion's identity key and index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::encoding::Bytes", into = "crate::encoding::Bytes")]
pub struct DeviceCertificate {
    account: AccountId,
    index: DeviceIndex,
    device: DeviceKey,
    issued_at: Timestamp,
    signature: [u8; SIGNATURE_LEN],
}

impl DeviceCertificate {
    /// Signs a certificate for `device` at `index` in the account of `account`.
    pub fn issue(
        account: &AccountKey,
        index: DeviceIndex,
        device: DeviceKey,
        now: Timestamp,
    ) -> Self {
        let mut cert = DeviceCertificate {
            account: account.account_id(),
            index,
            device,
            issued_at: now,
            signature: [0; SIGNATURE_LEN],
        };
        let mut msg = Vec::with_capacity(CERT_LABEL.len() + CERTIFICATE_LEN);
        msg.extend_from_slice(CERT_LABEL);
        cert.write_body(&mut msg);
        cert.signature = account.sign(&msg);
        cert
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.push(CERT_VERSION);
        out.extend_from_slice(self.account.as_bytes());
        out.extend_from_slice(&self.index.0.to_be_bytes());
        out.extend_from_slice(self.device.as_bytes());
        out.extend_from_slice(&self.issued_at.as_unix_millis().to_be_bytes());
    }

    /// The issuing account.
    pub fn account(&self) -> AccountId {
        self.account
    }
    /// The certified device's index.
    pub fn index(&self) -> DeviceIndex {
        self.index
    }
    /// The certified device identity key.
    pub fn device(&self) -> DeviceKey {
        self.device
    }
    /// When the primary issued it (by the primary's clock).
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// The 141-byte encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CERTIFICATE_LEN);
        self.write_body(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies the account's signature. Total.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let what = "device certificate";
        let malformed = |_| CertificateError::Malformed { what };
        if bytes.len() != CERTIFICATE_LEN {
            return Err(CertificateError::Malformed { what });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(malformed)?;
        if version != CERT_VERSION {
            return Err(CertificateError::UnsupportedVersion { what, version });
        }
        let cert = DeviceCertificate {
            account: AccountId::from_bytes(r.array().map_err(malformed)?),
            index: DeviceIndex(r.u32().map_err(malformed)?),
            device: DeviceKey::from_bytes(r.array().map_err(malformed)?),
            issued_at: Timestamp::from_unix_millis(r.u64().map_err(malformed)?),
            signature: r.array().map_err(malformed)?,
        };
        let body = bytes.get(..CERTIFICATE_LEN - SIGNATURE_LEN).unwrap_or(&[]);
        if !cert
            .account
            .verify(&[CERT_LABEL, body].concat(), &cert.signature)
        {
            return Err(CertificateError::BadSignature { what });
        }
        Ok(cert)
    }
}

/// One device in a [`SignedDeviceList`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListEntry {
    /// The device's index.
    pub index: DeviceIndex,
    /// The device's identity key.
    pub device: DeviceKey,
}

/// The account's signed list of linked companions. Every change bumps its
/// version; companions refuse an older one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::encoding::Bytes", into = "crate::encoding::Bytes")]
pub struct SignedDeviceList {
    account: AccountId,
    version: u64,
    issued_at: Timestamp,
    devices: Vec<DeviceListEntry>,
    signature: [u8; SIGNATURE_LEN],
}

impl SignedDeviceList {
    /// Signs `devices` as list `version` of the account. At most 255 entries
    /// are signed (a [`crate::Policy`] allows at most 64).
    pub fn sign(
        account: &AccountKey,
        version: u64,
        devices: &[DeviceListEntry],
        now: Timestamp,
    ) -> Self {
        let mut list = SignedDeviceList {
            account: account.account_id(),
            version,
            issued_at: now,
            devices: devices.iter().take(255).copied().collect(),
            signature: [0; SIGNATURE_LEN],
        };
        let mut msg = Vec::new();
        msg.extend_from_slice(LIST_LABEL);
        list.write_body(&mut msg);
        list.signature = account.sign(&msg);
        list
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.reserve(LIST_HEADER_LEN + self.devices.len() * LIST_ENTRY_LEN + SIGNATURE_LEN);
        out.push(LIST_VERSION);
        out.extend_from_slice(self.account.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.issued_at.as_unix_millis().to_be_bytes());
        out.push(u8::try_from(self.devices.len()).unwrap_or(u8::MAX));
        for e in &self.devices {
            out.extend_from_slice(&e.index.0.to_be_bytes());
            out.extend_from_slice(e.device.as_bytes());
        }
    }

    /// The signing account.
    pub fn account(&self) -> AccountId {
        self.account
    }
    /// The list's version (strictly increasing per account).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// When the primary signed it: proof of primary activity at that time.
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    /// The linked companions.
    pub fn devices(&self) -> &[DeviceListEntry] {
        &self.devices
    }
    /// Whether the list names `device` at `index`.
    pub fn contains(&self, index: DeviceIndex, device: &DeviceKey) -> bool {
        self.devices
            .iter()
            .any(|e| e.index == index && e.device == *device)
    }

    /// The wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_body(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies the account's signature. Total.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let what = "device list";
        let malformed = |_| CertificateError::Malformed { what };
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(malformed)?;
        if version != LIST_VERSION {
            return Err(CertificateError::UnsupportedVersion { what, version });
        }
        let account = AccountId::from_bytes(r.array().map_err(malformed)?);
        let list_version = r.u64().map_err(malformed)?;
        let issued_at = Timestamp::from_unix_millis(r.u64().map_err(malformed)?);
        let count = usize::from(r.u8().map_err(malformed)?);
        if bytes.len() != LIST_HEADER_LEN + count * LIST_ENTRY_LEN + SIGNATURE_LEN {
            return Err(CertificateError::Malformed { what });
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            devices.push(DeviceListEntry {
                index: DeviceIndex(r.u32().map_err(malformed)?),
                device: DeviceKey::from_bytes(r.array().map_err(malformed)?),
            });
        }
        let body_len = r.consumed(bytes);
        let signature = r.array().map_err(malformed)?;
        let body = bytes.get(..body_len).unwrap_or(&[]);
        if !account.verify(&[LIST_LABEL, body].concat(), &signature) {
            return Err(CertificateError::BadSignature { what });
        }
        Ok(SignedDeviceList {
            account,
            version: list_version,
            issued_at,
            devices,
            signature,
        })
    }
}

/// The primary's signed statement that it was active at `at`. Companions and
/// the relay extend leases from it without trusting the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::encoding::Bytes", into = "crate::encoding::Bytes")]
pub struct PrimaryHeartbeat {
    account: AccountId,
    at: Timestamp,
    signature: [u8; SIGNATURE_LEN],
}

impl PrimaryHeartbeat {
    /// Signs a heartbeat at `now`.
    pub fn sign(account: &AccountKey, now: Timestamp) -> Self {
        let mut hb = PrimaryHeartbeat {
            account: account.account_id(),
            at: now,
            signature: [0; SIGNATURE_LEN],
        };
        hb.signature = account.sign(&hb.signed_message());
        hb
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(HEARTBEAT_LABEL.len() + HEARTBEAT_LEN);
        msg.extend_from_slice(HEARTBEAT_LABEL);
        msg.push(HEARTBEAT_VERSION);
        msg.extend_from_slice(self.account.as_bytes());
        msg.extend_from_slice(&self.at.as_unix_millis().to_be_bytes());
        msg
    }

    /// The account that signed it.
    pub fn account(&self) -> AccountId {
        self.account
    }
    /// The instant the primary vouches it was active.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The 105-byte encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_message().split_off(HEARTBEAT_LABEL.len());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies. Total.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let what = "heartbeat";
        let malformed = |_| CertificateError::Malformed { what };
        if bytes.len() != HEARTBEAT_LEN {
            return Err(CertificateError::Malformed { what });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(malformed)?;
        if version != HEARTBEAT_VERSION {
            return Err(CertificateError::UnsupportedVersion { what, version });
        }
        let hb = PrimaryHeartbeat {
            account: AccountId::from_bytes(r.array().map_err(malformed)?),
            at: Timestamp::from_unix_millis(r.u64().map_err(malformed)?),
            signature: r.array().map_err(malformed)?,
        };
        if !hb.account.verify(&hb.signed_message(), &hb.signature) {
            return Err(CertificateError::BadSignature { what });
        }
        Ok(hb)
    }
}

macro_rules! bytes_serde {
    ($t:ty) => {
        impl From<$t> for crate::encoding::Bytes {
            fn from(v: $t) -> Self {
                crate::encoding::Bytes(v.to_bytes())
            }
        }
        impl TryFrom<crate::encoding::Bytes> for $t {
            type Error = CertificateError;
            fn try_from(b: crate::encoding::Bytes) -> Result<Self, CertificateError> {
                <$t>::from_bytes(&b.0)
            }
        }
    };
}
bytes_serde!(DeviceCertificate);
bytes_serde!(SignedDeviceList);
bytes_serde!(PrimaryHeartbeat);

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn setup() -> (AccountKey, DeviceKey) {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let account = AccountKey::generate(&mut rng);
        let device = crate::keys::DeviceIdentity::generate(&mut rng).device_key();
        (account, device)
    }

    #[test]
    fn certificate_round_trips_and_every_bit_matters() {
        let (account, device) = setup();
        let cert = DeviceCertificate::issue(
            &account,
            DeviceIndex(3),
            device,
            Timestamp::from_unix_millis(9),
        );
        let bytes = cert.to_bytes();
        assert_eq!(bytes.len(), CERTIFICATE_LEN);
        assert_eq!(DeviceCertificate::from_bytes(&bytes), Ok(cert.clone()));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(DeviceCertificate::from_bytes(&b).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(DeviceCertificate::from_bytes(&bytes[..len]).is_err());
        }
        let json = serde_json::to_string(&cert).unwrap();
        assert_eq!(
            serde_json::from_str::<DeviceCertificate>(&json).unwrap(),
            cert
        );
    }

    #[test]
    fn device_list_round_trips_and_refuses_tampering() {
        let (account, device) = setup();
        let entries = [
            DeviceListEntry {
                index: DeviceIndex(1),
                device,
            },
            DeviceListEntry {
                index: DeviceIndex(4),
                device,
            },
        ];
        let list = SignedDeviceList::sign(&account, 7, &entries, Timestamp::from_unix_millis(5));
        let bytes = list.to_bytes();
        assert_eq!(SignedDeviceList::from_bytes(&bytes), Ok(list.clone()));
        assert!(list.contains(DeviceIndex(4), &device));
        assert!(!list.contains(DeviceIndex(2), &device));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SignedDeviceList::from_bytes(&b).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(SignedDeviceList::from_bytes(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn heartbeat_round_trips_and_other_account_differs() {
        let (account, _) = setup();
        let hb = PrimaryHeartbeat::sign(&account, Timestamp::from_unix_millis(77));
        let bytes = hb.to_bytes();
        assert_eq!(bytes.len(), HEARTBEAT_LEN);
        assert_eq!(PrimaryHeartbeat::from_bytes(&bytes), Ok(hb.clone()));
        let mut forged = bytes.clone();
        forged[40] ^= 0x80;
        assert!(matches!(
            PrimaryHeartbeat::from_bytes(&forged),
            Err(CertificateError::BadSignature { .. })
        ));
    }
}
