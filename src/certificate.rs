//! What the account signs: the [`SignedDeviceList`] of linked devices (whose
//! entry for a companion is that companion's [`DeviceCertificate`]) and the
//! primary's [`PrimaryHeartbeat`] (proof that it was alive at a time, bound to
//! the device list and the audit trail it had then).
//!
//! Both are binary layouts (see `docs/PROTOCOL.md`) signed with the account's
//! Ed25519 key under a distinct domain label; decoders are total and check
//! sizes before reading. Protocol v2: a link costs the account one signature
//! (the list), not three (certificate, list, and the list again on re-sign).
//!
//! Lists chain: each names the hash of its predecessor's body
//! ([`SignedDeviceList::previous`]), so a holder that sees two lists with one
//! version, or a successor that does not link to what it holds, has proof of
//! a fork ([`CertificateError::Fork`]).

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::facts::AuditAnchor;
use crate::facts::LogoutReason;
use crate::keys::{AccountId, AccountKey, DeviceKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::label::{DeviceLabel, MAX_LABEL_LEN};
use crate::time::Timestamp;
use crate::wire::Reader;

const LIST_VERSION: u8 = 2;
const HEARTBEAT_VERSION: u8 = 2;
const LIST_LABEL: &[u8] = b"devicelink/v2 device list";
const LIST_HASH_LABEL: &[u8] = b"devicelink/v2 device list hash";
const HEARTBEAT_LABEL: &[u8] = b"devicelink/v2 heartbeat";

/// Most devices one signed list names (a [`crate::Policy`] allows at most
/// 64 companions; a re-pair briefly lists one key twice).
pub const MAX_LIST_DEVICES: usize = 128;
/// Most removals one signed list reports.
pub const MAX_LIST_REMOVED: usize = 128;
/// Bytes of an encoded [`PrimaryHeartbeat`].
pub const HEARTBEAT_LEN: usize = 1 + PUBLIC_KEY_LEN + 8 + 8 + 32 + 8 + 32 + SIGNATURE_LEN;
const ENTRY_MIN_LEN: usize = 4 + PUBLIC_KEY_LEN + 8 + 1 + 1;
const ENTRY_MAX_LEN: usize = ENTRY_MIN_LEN - 1 + MAX_LABEL_LEN;
const REMOVED_LEN: usize = 4 + 1;
/// version, account, list version, issued_at, previous, audit anchor, count.
const LIST_HEADER_LEN: usize = 1 + PUBLIC_KEY_LEN + 8 + 8 + 32 + 8 + 32 + 1;
/// Bytes of an encoded list naming no device and no removal.
pub const MIN_LIST_LEN: usize = LIST_HEADER_LEN + 1 + SIGNATURE_LEN;
/// Bytes of the largest encoded list.
pub const MAX_LIST_LEN: usize =
    MIN_LIST_LEN + MAX_LIST_DEVICES * ENTRY_MAX_LEN + MAX_LIST_REMOVED * REMOVED_LEN;
/// Bytes of the smallest and largest encoded [`DeviceCertificate`].
pub(crate) const MIN_CERTIFICATE_LEN: usize = 4 + MIN_LIST_LEN + ENTRY_MIN_LEN;
pub(crate) const MAX_CERTIFICATE_LEN: usize = 4 + MAX_LIST_LEN;

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
    /// A device list older than the one already held.
    #[error("device list version {got} is older than {have}")]
    StaleDeviceList {
        /// The version held.
        have: u64,
        /// The version offered.
        got: u64,
    },
    /// Two different lists of one version, or a list that does not chain to
    /// its predecessor: the account's primary was restored from an old save
    /// (or its key is used twice). Refused; the holder keeps what it has.
    #[error("device list fork at version {version}")]
    Fork {
        /// The version at which the histories differ.
        version: u64,
    },
    /// A list more than one version ahead of the held one, where the holder
    /// needs the chain (it saw a fork): apply versions `have + 1 ..  got`
    /// first, then this one. Not a fork: versions
    /// were missed.
    #[error("device list version {got} skips versions after {have}: apply those first")]
    MissingVersions {
        /// The version held.
        have: u64,
        /// The version offered.
        got: u64,
    },
    /// A heartbeat vouches for a newer device list than the one held: apply
    /// that list (and every one before it) first.
    #[error("heartbeat needs device list version {version}")]
    NeedDeviceList {
        /// The list version the heartbeat names.
        version: u64,
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

/// One device in a [`SignedDeviceList`]: who it is, what it is called, and
/// when it was linked (so every other device can tell its user "a new device
/// was linked").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceListEntry {
    /// The device's index.
    pub index: DeviceIndex,
    /// The device's identity key.
    pub device: DeviceKey,
    /// The device's label (chosen by the device, shown to people).
    pub label: DeviceLabel,
    /// When the primary granted the link (primary's clock).
    pub linked_at: Timestamp,
}

/// A device a list no longer names, and why (relative to the previous version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemovedDevice {
    /// Its index.
    pub index: DeviceIndex,
    /// Why it left the list.
    pub reason: LogoutReason,
}

impl LogoutReason {
    /// The reason's byte in a device list's removals (`docs/PROTOCOL.md` §5.1).
    pub fn code(self) -> u8 {
        reason_code(self)
    }

    /// The reason a removal byte names, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        reason_from_code(code)
    }
}

fn reason_code(r: LogoutReason) -> u8 {
    match r {
        LogoutReason::Revoked => 1,
        LogoutReason::PrimaryOffline => 2,
        LogoutReason::CompanionIdle => 3,
        LogoutReason::ConfirmationTimedOut => 4,
        LogoutReason::Replaced => 5,
    }
}

fn reason_from_code(c: u8) -> Option<LogoutReason> {
    Some(match c {
        1 => LogoutReason::Revoked,
        2 => LogoutReason::PrimaryOffline,
        3 => LogoutReason::CompanionIdle,
        4 => LogoutReason::ConfirmationTimedOut,
        5 => LogoutReason::Replaced,
        _ => return None,
    })
}

impl DeviceListEntry {
    /// An entry for `device` at `index`, called `label`, linked at `linked_at`.
    pub fn new(
        index: DeviceIndex,
        device: DeviceKey,
        label: DeviceLabel,
        linked_at: Timestamp,
    ) -> Self {
        DeviceListEntry {
            index,
            device,
            label,
            linked_at,
        }
    }
}

/// What a device list says, before the account signs it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeviceListDraft {
    /// The list's version: one more than its predecessor's.
    pub version: u64,
    /// The body hash of the predecessor ([`SignedDeviceList::hash`]); zeros
    /// for the first list.
    pub previous: [u8; 32],
    /// The audit trail's head when the list was made.
    pub audit: AuditAnchor,
    /// Every device holding a slot.
    pub devices: Vec<DeviceListEntry>,
    /// Devices that left since the predecessor, with the reason.
    pub removed: Vec<RemovedDevice>,
}

impl DeviceListDraft {
    /// A first-of-its-history draft (no predecessor) of `version`.
    pub fn new(version: u64, devices: Vec<DeviceListEntry>) -> Self {
        DeviceListDraft {
            version,
            devices,
            ..DeviceListDraft::default()
        }
    }

    /// The draft of the version after `previous`, chained to it.
    pub fn after(previous: &SignedDeviceList, devices: Vec<DeviceListEntry>) -> Self {
        DeviceListDraft {
            version: previous.version().saturating_add(1),
            previous: previous.hash(),
            audit: previous.audit(),
            devices,
            removed: Vec::new(),
        }
    }
}

/// The account's signed list of companions holding a slot. Every change bumps
/// its version and names the previous list's hash; companions and the relay
/// refuse an older list and detect forks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::encoding::Bytes", into = "crate::encoding::Bytes")]
pub struct SignedDeviceList {
    account: AccountId,
    version: u64,
    issued_at: Timestamp,
    previous: [u8; 32],
    audit: AuditAnchor,
    devices: Vec<DeviceListEntry>,
    removed: Vec<RemovedDevice>,
    signature: [u8; SIGNATURE_LEN],
}

impl SignedDeviceList {
    /// Signs `draft` as the account's list at `now`. At most
    /// [`MAX_LIST_DEVICES`] entries and [`MAX_LIST_REMOVED`] removals are
    /// kept (a [`crate::Policy`] never needs more).
    pub fn sign(account: &AccountKey, draft: &DeviceListDraft, now: Timestamp) -> Self {
        let mut list = Self::unsigned(account.account_id(), draft, now);
        let mut msg = Vec::with_capacity(LIST_LABEL.len() + list.body_len());
        msg.extend_from_slice(LIST_LABEL);
        list.write_body(&mut msg);
        list.signature = account.sign(&msg);
        list
    }

    /// The list a draft describes, without its signature (for its hash).
    pub(crate) fn unsigned(account: AccountId, draft: &DeviceListDraft, now: Timestamp) -> Self {
        SignedDeviceList {
            account,
            version: draft.version,
            issued_at: now,
            previous: draft.previous,
            audit: draft.audit,
            devices: draft
                .devices
                .iter()
                .take(MAX_LIST_DEVICES)
                .cloned()
                .collect(),
            removed: draft
                .removed
                .iter()
                .take(MAX_LIST_REMOVED)
                .copied()
                .collect(),
            signature: [0; SIGNATURE_LEN],
        }
    }

    fn body_len(&self) -> usize {
        LIST_HEADER_LEN
            + self
                .devices
                .iter()
                .map(|e| ENTRY_MIN_LEN - 1 + e.label.as_str().len())
                .sum::<usize>()
            + 1
            + self.removed.len() * REMOVED_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.reserve(self.body_len() + SIGNATURE_LEN);
        out.push(LIST_VERSION);
        out.extend_from_slice(self.account.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.issued_at.as_unix_millis().to_be_bytes());
        out.extend_from_slice(&self.previous);
        self.audit.write(out);
        // At most MAX_LIST_DEVICES (128) entries: the count fits a byte.
        out.push(u8::try_from(self.devices.len()).unwrap_or(u8::MAX));
        for e in &self.devices {
            out.extend_from_slice(&e.index.0.to_be_bytes());
            out.extend_from_slice(e.device.as_bytes());
            out.extend_from_slice(&e.linked_at.as_unix_millis().to_be_bytes());
            let label = e.label.as_str().as_bytes();
            out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(label);
        }
        out.push(u8::try_from(self.removed.len()).unwrap_or(u8::MAX));
        for r in &self.removed {
            out.extend_from_slice(&r.index.0.to_be_bytes());
            out.push(reason_code(r.reason));
        }
    }

    /// The hash that names this list in its successor and in heartbeats:
    /// `SHA-256("devicelink/v2 device list hash" || body)`, the body being
    /// the encoding without the signature.
    pub fn hash(&self) -> [u8; 32] {
        let mut body = Vec::with_capacity(self.body_len());
        self.write_body(&mut body);
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(LIST_HASH_LABEL);
        ctx.update(&body);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
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
    /// The predecessor's [`SignedDeviceList::hash`] (zeros for the first list).
    pub fn previous(&self) -> [u8; 32] {
        self.previous
    }
    /// The audit trail's head the primary vouched for with this list.
    pub fn audit(&self) -> AuditAnchor {
        self.audit
    }
    /// The companions holding a slot.
    pub fn devices(&self) -> &[DeviceListEntry] {
        &self.devices
    }
    /// The devices removed since the previous version, with the reason.
    pub fn removed(&self) -> &[RemovedDevice] {
        &self.removed
    }
    /// The entry at `index`, if listed.
    pub fn entry(&self, index: DeviceIndex) -> Option<&DeviceListEntry> {
        self.devices.iter().find(|e| e.index == index)
    }
    /// Whether the list names `device` at `index`.
    pub fn contains(&self, index: DeviceIndex, device: &DeviceKey) -> bool {
        self.entry(index).is_some_and(|e| e.device == *device)
    }
    /// Number of distinct device keys listed (a re-pairing device is listed
    /// at its old and new index until its confirmation; it holds one slot).
    pub fn distinct_devices(&self) -> usize {
        let mut keys: Vec<&DeviceKey> = self.devices.iter().map(|e| &e.device).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    /// Checks that this list may follow `held` (the newest list the caller
    /// holds of the same account): newer, and chained to it when it is the
    /// very next version. Equal content is [`CertificateError::StaleDeviceList`].
    ///
    /// `held_hash` is the held list's [`SignedDeviceList::hash`] or a prefix
    /// of it of at least 16 bytes (a server keeping many accounts may store
    /// a 128-bit prefix; a fork then needs a second preimage of it).
    pub fn check_successor_of(
        &self,
        held_version: u64,
        held_hash: &[u8],
    ) -> Result<(), CertificateError> {
        if self.version < held_version {
            return Err(CertificateError::StaleDeviceList {
                have: held_version,
                got: self.version,
            });
        }
        if self.version == held_version {
            return Err(if hash_matches(&self.hash(), held_hash) {
                CertificateError::StaleDeviceList {
                    have: held_version,
                    got: self.version,
                }
            } else {
                CertificateError::Fork {
                    version: self.version,
                }
            });
        }
        if self.version == held_version.saturating_add(1)
            && !hash_matches(&self.previous, held_hash)
        {
            return Err(CertificateError::Fork {
                version: held_version,
            });
        }
        Ok(())
    }

    /// The wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_body(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies the account's signature. Total; the size is
    /// checked against the largest list before anything is read.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let what = "device list";
        let malformed = |_| CertificateError::Malformed { what };
        if bytes.len() < MIN_LIST_LEN || bytes.len() > MAX_LIST_LEN {
            return Err(CertificateError::Malformed { what });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8().map_err(malformed)?;
        if version != LIST_VERSION {
            return Err(CertificateError::UnsupportedVersion { what, version });
        }
        let account = AccountId::from_bytes(r.array().map_err(malformed)?);
        let list_version = r.u64().map_err(malformed)?;
        let issued_at = Timestamp::from_unix_millis(r.u64().map_err(malformed)?);
        let previous = r.array().map_err(malformed)?;
        let audit = AuditAnchor::read(&mut r).map_err(malformed)?;
        let count = usize::from(r.u8().map_err(malformed)?);
        if count > MAX_LIST_DEVICES {
            return Err(CertificateError::Malformed { what });
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            let index = DeviceIndex(r.u32().map_err(malformed)?);
            let device = DeviceKey::from_bytes(r.array().map_err(malformed)?);
            let linked_at = Timestamp::from_unix_millis(r.u64().map_err(malformed)?);
            let len = usize::from(r.u8().map_err(malformed)?);
            let label = DeviceLabel::from_wire(r.take(len).map_err(malformed)?)
                .map_err(|_| CertificateError::Malformed { what })?;
            if index == DeviceIndex::PRIMARY
                || devices.iter().any(|e: &DeviceListEntry| e.index == index)
            {
                return Err(CertificateError::Malformed { what });
            }
            devices.push(DeviceListEntry {
                index,
                device,
                label,
                linked_at,
            });
        }
        let removed_count = usize::from(r.u8().map_err(malformed)?);
        if removed_count > MAX_LIST_REMOVED {
            return Err(CertificateError::Malformed { what });
        }
        let mut removed = Vec::with_capacity(removed_count);
        for _ in 0..removed_count {
            let index = DeviceIndex(r.u32().map_err(malformed)?);
            let reason = reason_from_code(r.u8().map_err(malformed)?)
                .ok_or(CertificateError::Malformed { what })?;
            removed.push(RemovedDevice { index, reason });
        }
        let body_len = r.consumed(bytes);
        let signature = r.array().map_err(malformed)?;
        if !r.is_empty() {
            return Err(CertificateError::Malformed { what });
        }
        let body = bytes.get(..body_len).unwrap_or(&[]);
        if !account.verify(&[LIST_LABEL, body].concat(), &signature) {
            return Err(CertificateError::BadSignature { what });
        }
        Ok(SignedDeviceList {
            account,
            version: list_version,
            issued_at,
            previous,
            audit,
            devices,
            removed,
            signature,
        })
    }
}

/// A companion's certificate: its entry in a [`SignedDeviceList`], proven by
/// the list's signature. Protocol v2 has no separate certificate signature:
/// the list the primary signs anyway is the certificate.
///
/// Encoded as the 4-byte index followed by the signed list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::encoding::Bytes", into = "crate::encoding::Bytes")]
pub struct DeviceCertificate {
    index: DeviceIndex,
    list: SignedDeviceList,
}

impl DeviceCertificate {
    /// The certificate of the device at `index` in `list`, if listed.
    pub fn from_list(list: SignedDeviceList, index: DeviceIndex) -> Result<Self, CertificateError> {
        if index == DeviceIndex::PRIMARY || list.entry(index).is_none() {
            return Err(CertificateError::WrongDevice);
        }
        Ok(DeviceCertificate { index, list })
    }

    fn entry(&self) -> Option<&DeviceListEntry> {
        self.list.entry(self.index)
    }

    /// The issuing account.
    pub fn account(&self) -> AccountId {
        self.list.account()
    }
    /// The certified device's index.
    pub fn index(&self) -> DeviceIndex {
        self.index
    }
    /// The certified device identity key.
    pub fn device(&self) -> DeviceKey {
        // `from_list` and `from_bytes` checked the entry exists.
        self.entry()
            .map_or(DeviceKey::from_bytes([0; 32]), |e| e.device)
    }
    /// The certified device's label.
    pub fn label(&self) -> Option<&DeviceLabel> {
        self.entry().map(|e| &e.label)
    }
    /// When the primary granted the link (by the primary's clock).
    pub fn issued_at(&self) -> Timestamp {
        self.entry().map_or(Timestamp::EPOCH, |e| e.linked_at)
    }
    /// The signed list that carries the certificate.
    pub fn device_list(&self) -> &SignedDeviceList {
        &self.list
    }

    /// The encoding: index, then the signed list.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.index.0.to_be_bytes().to_vec();
        out.extend_from_slice(&self.list.to_bytes());
        out
    }

    /// Decodes and verifies the list's signature and the entry. Total.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let what = "device certificate";
        if bytes.len() < MIN_CERTIFICATE_LEN || bytes.len() > MAX_CERTIFICATE_LEN {
            return Err(CertificateError::Malformed { what });
        }
        let (index, list) = bytes.split_at(4);
        let mut r = Reader::new(index);
        let index = DeviceIndex(r.u32().map_err(|_| CertificateError::Malformed { what })?);
        Self::from_list(SignedDeviceList::from_bytes(list)?, index)
    }
}

/// The primary's signed statement that it was active at `at`, with the device
/// list and audit trail it held then. Companions and the relay extend leases
/// from it without trusting the relay, and a heartbeat naming a newer list
/// than the one held extends nothing until that list arrives: a relay cannot
/// hide a revocation by dropping the list and forwarding heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::encoding::Bytes", into = "crate::encoding::Bytes")]
pub struct PrimaryHeartbeat {
    account: AccountId,
    at: Timestamp,
    list_version: u64,
    list_hash: [u8; 32],
    audit: AuditAnchor,
    signature: [u8; SIGNATURE_LEN],
}

impl PrimaryHeartbeat {
    /// Signs a heartbeat at `now`, naming `list` (the account's current list)
    /// and the audit trail's head. Hosts use [`crate::Account::heartbeat`].
    pub fn sign(
        account: &AccountKey,
        list: &SignedDeviceList,
        audit: AuditAnchor,
        now: Timestamp,
    ) -> Self {
        let mut hb = PrimaryHeartbeat {
            account: account.account_id(),
            at: now,
            list_version: list.version(),
            list_hash: list.hash(),
            audit,
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
        msg.extend_from_slice(&self.list_version.to_be_bytes());
        msg.extend_from_slice(&self.list_hash);
        self.audit.write(&mut msg);
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
    /// The version of the device list the primary held.
    pub fn list_version(&self) -> u64 {
        self.list_version
    }
    /// The hash of that list ([`SignedDeviceList::hash`]).
    pub fn list_hash(&self) -> [u8; 32] {
        self.list_hash
    }
    /// The audit trail's head the primary vouched for.
    pub fn audit(&self) -> AuditAnchor {
        self.audit
    }

    /// Checks the heartbeat against the list the caller holds: it may extend
    /// a lease only if it names that list (or an older one). `held_hash` as
    /// in [`SignedDeviceList::check_successor_of`].
    pub fn check_list(&self, held_version: u64, held_hash: &[u8]) -> Result<(), CertificateError> {
        if self.list_version > held_version {
            return Err(CertificateError::NeedDeviceList {
                version: self.list_version,
            });
        }
        if self.list_version == held_version && !hash_matches(&self.list_hash, held_hash) {
            return Err(CertificateError::Fork {
                version: held_version,
            });
        }
        Ok(())
    }

    /// The fixed-size encoding.
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
            list_version: r.u64().map_err(malformed)?,
            list_hash: r.array().map_err(malformed)?,
            audit: AuditAnchor::read(&mut r).map_err(malformed)?,
            signature: r.array().map_err(malformed)?,
        };
        if !hb.account.verify(&hb.signed_message(), &hb.signature) {
            return Err(CertificateError::BadSignature { what });
        }
        Ok(hb)
    }
}

/// Whether `held` (a hash or a prefix of at least 16 bytes) names `full`.
fn hash_matches(full: &[u8; 32], held: &[u8]) -> bool {
    held.len() >= 16 && full.get(..held.len()) == Some(held)
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

    fn entry(index: u32, device: DeviceKey) -> DeviceListEntry {
        DeviceListEntry {
            index: DeviceIndex(index),
            device,
            label: DeviceLabel::new(format!("device {index}")).unwrap(),
            linked_at: Timestamp::from_unix_millis(u64::from(index)),
        }
    }

    fn draft(version: u64, devices: Vec<DeviceListEntry>) -> DeviceListDraft {
        DeviceListDraft {
            version,
            devices,
            ..DeviceListDraft::default()
        }
    }

    #[test]
    fn certificate_round_trips_and_every_bit_matters() {
        let (account, device) = setup();
        let list = SignedDeviceList::sign(
            &account,
            &draft(2, vec![entry(3, device)]),
            Timestamp::from_unix_millis(9),
        );
        let cert = DeviceCertificate::from_list(list, DeviceIndex(3)).unwrap();
        let bytes = cert.to_bytes();
        assert_eq!(DeviceCertificate::from_bytes(&bytes), Ok(cert.clone()));
        assert_eq!(cert.device(), device);
        assert_eq!(cert.issued_at(), Timestamp::from_unix_millis(3));
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
        let mut d = draft(7, vec![entry(1, device), entry(4, device)]);
        d.removed = vec![RemovedDevice {
            index: DeviceIndex(2),
            reason: LogoutReason::Revoked,
        }];
        d.previous = [5; 32];
        let list = SignedDeviceList::sign(&account, &d, Timestamp::from_unix_millis(5));
        let bytes = list.to_bytes();
        assert_eq!(SignedDeviceList::from_bytes(&bytes), Ok(list.clone()));
        assert!(list.contains(DeviceIndex(4), &device));
        assert!(!list.contains(DeviceIndex(2), &device));
        assert_eq!(list.distinct_devices(), 1);
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
    fn lists_chain_and_forks_are_typed() {
        let (account, device) = setup();
        let t = Timestamp::from_unix_millis;
        let v1 = SignedDeviceList::sign(&account, &draft(1, vec![]), t(1));
        let mut d2 = draft(2, vec![entry(1, device)]);
        d2.previous = v1.hash();
        let v2 = SignedDeviceList::sign(&account, &d2, t(2));
        assert_eq!(v2.check_successor_of(1, &v1.hash()), Ok(()));
        // Same version, other content: a fork.
        let other = SignedDeviceList::sign(&account, &draft(1, vec![entry(9, device)]), t(1));
        assert_eq!(
            other.check_successor_of(1, &v1.hash()),
            Err(CertificateError::Fork { version: 1 })
        );
        // The next version chained to another predecessor: a fork.
        let mut forked = d2.clone();
        forked.previous = other.hash();
        let forked = SignedDeviceList::sign(&account, &forked, t(2));
        assert_eq!(
            forked.check_successor_of(1, &v1.hash()),
            Err(CertificateError::Fork { version: 1 })
        );
        assert!(matches!(
            v1.check_successor_of(2, &v2.hash()),
            Err(CertificateError::StaleDeviceList { have: 2, got: 1 })
        ));
        assert!(matches!(
            v2.check_successor_of(2, &v2.hash()),
            Err(CertificateError::StaleDeviceList { .. })
        ));
    }

    #[test]
    fn heartbeat_round_trips_binds_the_list_and_other_account_differs() {
        let (account, device) = setup();
        let list = SignedDeviceList::sign(
            &account,
            &draft(3, vec![entry(1, device)]),
            Timestamp::from_unix_millis(1),
        );
        let hb = PrimaryHeartbeat::sign(
            &account,
            &list,
            AuditAnchor::default(),
            Timestamp::from_unix_millis(77),
        );
        let bytes = hb.to_bytes();
        assert_eq!(bytes.len(), HEARTBEAT_LEN);
        assert_eq!(PrimaryHeartbeat::from_bytes(&bytes), Ok(hb.clone()));
        assert_eq!(hb.check_list(3, &list.hash()), Ok(()));
        assert_eq!(
            hb.check_list(2, &[0; 32]),
            Err(CertificateError::NeedDeviceList { version: 3 })
        );
        assert_eq!(
            hb.check_list(3, &[0; 32]),
            Err(CertificateError::Fork { version: 3 })
        );
        let mut forged = bytes.clone();
        forged[40] ^= 0x80;
        assert!(matches!(
            PrimaryHeartbeat::from_bytes(&forged),
            Err(CertificateError::BadSignature { .. })
        ));
    }
}
