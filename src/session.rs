//! The companion after linking: its own keys, its certificate, the account's
//! signed device list, and its lease.
//!
//! The lease is a pure function of signed facts and `now`: it ends at
//! `last primary activity + primary_offline_limit`, where the last activity is
//! the newest timestamp the account signed (certificate, device list,
//! heartbeat). The end instant itself is logged out: a session is linked on
//! `[activity, activity + limit)`. Queries ([`LinkedSession::status`],
//! [`LinkedSession::is_linked`]) are pure and record nothing; once a mutating
//! call ([`LinkedSession::poll`] or an `accept_*`) has seen the logout, it is
//! permanent, whatever the clock does next. Hosts call `poll(now)` before
//! acting on a logout.
//!
//! Device lists must chain ([`SignedDeviceList::check_successor_of`]): two
//! lists of one version, or a next version that does not name the held one
//! as its predecessor, are a fork and refused. A heartbeat extends the lease
//! only if the session holds the list the heartbeat names
//! ([`CertificateError::NeedDeviceList`] otherwise), so a relay that drops a
//! revocation cannot keep the session's view alive with heartbeats.

use serde::{Deserialize, Serialize};

use crate::certificate::{
    CertificateError, DeviceCertificate, DeviceIndex, DeviceListEntry, PrimaryHeartbeat,
    SignedDeviceList,
};
use crate::keys::{AccountId, DeviceIdentity, DeviceKey, DeviceSigner};
use crate::label::DeviceLabel;
use crate::policy::Policy;
use crate::time::{duration_millis, Timestamp};

pub use crate::facts::LogoutReason;

/// A companion's standing at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// Linked; the lease ends at `expires_at`.
    Linked {
        /// First instant at which the session is logged out.
        expires_at: Timestamp,
    },
    /// Linked but within `warn_before` of the logout: tell the user to open
    /// the primary.
    ExpiringSoon {
        /// First instant at which the session is logged out.
        expires_at: Timestamp,
    },
    /// Logged out; re-pair to continue.
    LoggedOut {
        /// Why.
        reason: LogoutReason,
    },
}

/// Why a session refused an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The update's signature, account or layout is wrong.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The session is already logged out.
    #[error("session is logged out ({0})")]
    LoggedOut(LogoutReason),
}

/// A device that left the account's list, and why (when the list says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLeft {
    /// The entry it had.
    pub entry: DeviceListEntry,
    /// Why it left, as the new list reports it; `None` when the reason was in
    /// an intermediate version this session did not see.
    pub reason: Option<LogoutReason>,
}

/// What a newer device list changed, for the user: "a new device was
/// linked — not you?", "Chrome on Windows was removed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListChange {
    /// Devices listed now that were not before (new links and re-pairs).
    pub added: Vec<DeviceListEntry>,
    /// Devices no longer listed.
    pub removed: Vec<DeviceLeft>,
    /// This session's standing after the list.
    pub status: SessionStatus,
}

/// A linked companion: everything it needs to work without the phone.
///
/// Persisting it persists the device's identity secret, unless the host's
/// key store holds it ([`DeviceSigner::KeyStore`]). A saved session
/// holds facts only (its keys, the signed certificate, list and newest
/// heartbeat, its logout and fork marks); the limits come from the host's
/// [`Policy`] at [`LinkedSession::restore`], and the lease is recomputed from
/// the signed facts, so an edited save cannot lengthen it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkedSession {
    /// The device's key: its secret (saved as `identity`), or only its
    /// public half when the host's key store holds the secret
    /// (`key_store`).
    #[serde(flatten)]
    signer: DeviceSigner,
    label: DeviceLabel,
    certificate: DeviceCertificate,
    device_list: SignedDeviceList,
    /// The newest heartbeat accepted (its `at` is primary activity).
    #[serde(default)]
    heartbeat: Option<PrimaryHeartbeat>,
    linked_at: Timestamp,
    logged_out: Option<LogoutReason>,
    /// The version at which another history of the account was seen (a
    /// fork): from then on only the chained successor is accepted.
    #[serde(default)]
    fork_seen: Option<u64>,
    /// The latest instant a mutating call settled (for `next_deadline`).
    #[serde(default)]
    settled_at: Timestamp,
    #[serde(skip)]
    limits: Limits,
}

/// The host policy's limits a session applies (never saved).
#[derive(Clone, Copy, Debug, Default)]
struct Limits {
    offline_limit_ms: u64,
    warn_before_ms: u64,
    quarantine_ms: Option<u64>,
}

impl Limits {
    fn of(policy: &Policy) -> Self {
        Limits {
            offline_limit_ms: duration_millis(policy.primary_offline_limit()),
            warn_before_ms: duration_millis(policy.warn_before()),
            quarantine_ms: policy.new_device_quarantine().map(duration_millis),
        }
    }
}

impl LinkedSession {
    pub(crate) fn new(
        signer: DeviceSigner,
        label: DeviceLabel,
        certificate: DeviceCertificate,
        device_list: SignedDeviceList,
        policy: &Policy,
        now: Timestamp,
    ) -> Self {
        LinkedSession {
            signer,
            label,
            certificate,
            device_list,
            heartbeat: None,
            linked_at: now,
            logged_out: None,
            fork_seen: None,
            settled_at: now,
            limits: Limits::of(policy),
        }
    }

    /// Applies the host's limits to a session decoded inside another saved
    /// state (a companion's): the limits are never saved.
    pub(crate) fn apply_policy(&mut self, policy: &Policy) {
        self.limits = Limits::of(policy);
    }

    /// The account this device belongs to.
    pub fn account(&self) -> AccountId {
        self.certificate.account()
    }
    /// Saves the session (versioned JSON; holds the device's identity secret
    /// unless the host's key store holds it).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("linked session", self)
    }

    /// Restores a session saved by [`LinkedSession::save`] under the host's
    /// `policy` (the limits are the host's, not the saved bytes'). The
    /// logout the signed facts imply is applied again: a save edited to drop
    /// its logout mark is still logged out if its list no longer names the
    /// device.
    pub fn restore(bytes: &[u8], policy: &Policy) -> Result<Self, crate::persist::PersistError> {
        let mut s: LinkedSession = crate::persist::restore("linked session", bytes)?;
        s.limits = Limits::of(policy);
        if s.certificate.device() != s.signer.device_key()
            || s.device_list.account() != s.certificate.account()
            || s.device_list.version() < s.certificate.device_list().version()
            || s.heartbeat.as_ref().is_some_and(|hb| {
                hb.account() != s.certificate.account()
                    || hb
                        .check_list(s.device_list.version(), &s.device_list.hash())
                        .is_err()
            })
            || s.limits.offline_limit_ms == 0
        {
            return Err(crate::persist::PersistError::Inconsistent("session keys"));
        }
        if s.logged_out.is_none() && !s.device_list.contains(s.index(), &s.device_key()) {
            s.logged_out = Some(s.removal_reason(&s.device_list.clone()));
        }
        Ok(s)
    }

    /// This device's index in the account.
    pub fn index(&self) -> DeviceIndex {
        self.certificate.index()
    }
    /// This device's public identity key.
    pub fn device_key(&self) -> DeviceKey {
        self.signer.device_key()
    }
    /// This device's own identity (secret) key; `None` when the host's key
    /// store holds it ([`DeviceSigner::KeyStore`]).
    pub fn identity(&self) -> Option<&DeviceIdentity> {
        self.signer.identity()
    }
    /// Who holds this device's signing key.
    pub fn signer(&self) -> &DeviceSigner {
        &self.signer
    }
    /// This device's label.
    pub fn label(&self) -> &DeviceLabel {
        &self.label
    }
    /// The certificate the account issued to this device.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }
    /// The newest signed device list seen.
    pub fn device_list(&self) -> &SignedDeviceList {
        &self.device_list
    }
    /// When the link completed (companion's clock).
    pub fn linked_at(&self) -> Timestamp {
        self.linked_at
    }
    /// The newest instant the account signed it was active: the newest of
    /// the certificate's, the list's and the newest heartbeat's times.
    pub fn last_primary_activity(&self) -> Timestamp {
        let signed = self
            .certificate
            .issued_at()
            .max(self.device_list.issued_at());
        self.heartbeat
            .as_ref()
            .map_or(signed, |hb| signed.max(hb.at()))
    }

    /// The version at which this session saw another signed history of its
    /// account (a phone restored from an old backup, or the account key used
    /// twice): tell the user. From then on only the chained successor of the
    /// held list is accepted (a list further ahead is
    /// [`CertificateError::MissingVersions`]: fetch the versions between).
    pub fn fork_seen(&self) -> Option<u64> {
        self.fork_seen
    }

    /// First instant at which the session is logged out for primary inactivity.
    pub fn expires_at(&self) -> Timestamp {
        self.last_primary_activity()
            .saturating_add_millis(self.limits.offline_limit_ms)
    }

    /// When to warn the user (`warn_before` ahead of [`LinkedSession::expires_at`]).
    pub fn warn_at(&self) -> Timestamp {
        self.expires_at()
            .saturating_sub_millis(self.limits.warn_before_ms)
    }

    /// The session's standing at `now`. Pure: changes nothing.
    pub fn status(&self, now: Timestamp) -> SessionStatus {
        if let Some(reason) = self.logged_out {
            return SessionStatus::LoggedOut { reason };
        }
        let expires_at = self.expires_at();
        if now >= expires_at {
            SessionStatus::LoggedOut {
                reason: LogoutReason::PrimaryOffline,
            }
        } else if now >= self.warn_at() {
            SessionStatus::ExpiringSoon { expires_at }
        } else {
            SessionStatus::Linked { expires_at }
        }
    }

    /// Whether the session is linked at `now`.
    pub fn is_linked(&self, now: Timestamp) -> bool {
        !matches!(self.status(now), SessionStatus::LoggedOut { .. })
    }

    /// Records what `now` implies (a logout is then permanent) and returns the
    /// status.
    pub fn poll(&mut self, now: Timestamp) -> SessionStatus {
        let status = self.status(now);
        if let SessionStatus::LoggedOut { reason } = status {
            self.logged_out = Some(reason);
        }
        self.settled_at = self.settled_at.max(now);
        status
    }

    /// When the host must call [`LinkedSession::poll`] next: the warning
    /// instant, then the logout, as of the last instant a mutating call
    /// settled (an instant already past means "now"). `None` once logged out.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.logged_out.is_some() {
            return None;
        }
        match self.status(self.settled_at) {
            SessionStatus::Linked { .. } => Some(self.warn_at()),
            SessionStatus::ExpiringSoon { expires_at } => Some(expires_at),
            SessionStatus::LoggedOut { .. } => Some(self.settled_at),
        }
    }

    /// Refuses when logged out at `now` (recording the logout, which is
    /// permanent); otherwise changes nothing.
    fn check_live(&mut self, now: Timestamp) -> Result<(), SessionError> {
        match self.status(now) {
            SessionStatus::LoggedOut { reason } => {
                self.logged_out = Some(reason);
                Err(SessionError::LoggedOut(reason))
            }
            _ => Ok(()),
        }
    }

    /// Activity at or after the lease's end proves the primary was silent
    /// through it: the session is logged out, whatever else the signed
    /// update says (it names a list the session lacks, or forks it).
    fn check_not_late(&mut self, at: Timestamp) -> Result<(), SessionError> {
        if at >= self.expires_at() {
            self.logged_out = Some(LogoutReason::PrimaryOffline);
            return Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline));
        }
        Ok(())
    }

    /// Records a fork seen in `result` (permanent, like the directory's).
    fn note_fork<T>(&mut self, result: Result<T, CertificateError>) -> Result<T, SessionError> {
        if let Err(CertificateError::Fork { version }) = &result {
            self.fork_seen.get_or_insert(*version);
        }
        Ok(result?)
    }

    /// Accepts a signed heartbeat from the primary: extends the lease. Refused,
    /// with nothing changed, if forged, from another account, naming a newer
    /// device list than the one held ([`CertificateError::NeedDeviceList`]:
    /// apply that list first). Another list of the held version is a
    /// [`CertificateError::Fork`], refused and remembered
    /// ([`LinkedSession::fork_seen`]). A heartbeat signed at or after the
    /// lease's end logs the session out whatever list it names.
    pub fn accept_heartbeat(
        &mut self,
        heartbeat: &PrimaryHeartbeat,
        now: Timestamp,
    ) -> Result<SessionStatus, SessionError> {
        let hb = heartbeat;
        if hb.account() != self.account() {
            return Err(CertificateError::WrongAccount.into());
        }
        self.check_live(now)?;
        self.check_not_late(hb.at())?;
        let checked = hb.check_list(self.device_list.version(), &self.device_list.hash());
        self.note_fork(checked)?;
        if self
            .heartbeat
            .as_ref()
            .is_none_or(|held| hb.at() > held.at())
        {
            self.heartbeat = Some(hb.clone());
        }
        Ok(self.poll(now))
    }

    /// Accepts a newer signed device list and returns what changed. If it no
    /// longer lists this device, the session is logged out with the reason
    /// the list gives ([`LogoutReason::Revoked`] if it gives none). Refused,
    /// with nothing changed, if forged, from another account or not newer.
    /// A fork of the held list is refused and remembered
    /// ([`LinkedSession::fork_seen`]); once one was seen, only the chained
    /// successor is accepted, and a list further ahead is
    /// [`CertificateError::MissingVersions`] (apply the versions between
    /// first). A list signed at or after the lease's end logs the session
    /// out.
    pub fn accept_device_list(
        &mut self,
        list: &SignedDeviceList,
        now: Timestamp,
    ) -> Result<DeviceListChange, SessionError> {
        if list.account() != self.account() {
            return Err(CertificateError::WrongAccount.into());
        }
        self.check_live(now)?;
        self.check_not_late(list.issued_at())?;
        let checked = list.check_successor_of(self.device_list.version(), &self.device_list.hash());
        self.note_fork(checked)?;
        let have = self.device_list.version();
        if self.fork_seen.is_some() && list.version() > have.saturating_add(1) {
            return Err(CertificateError::MissingVersions {
                have,
                got: list.version(),
            }
            .into());
        }
        let reason_of = |index: DeviceIndex| {
            list.removed()
                .iter()
                .find(|r| r.index == index)
                .map(|r| r.reason)
        };
        let added = list
            .devices()
            .iter()
            .filter(|e| !self.device_list.contains(e.index, &e.device))
            .cloned()
            .collect();
        let removed = self
            .device_list
            .devices()
            .iter()
            .filter(|e| !list.contains(e.index, &e.device))
            .map(|e| DeviceLeft {
                entry: e.clone(),
                reason: reason_of(e.index),
            })
            .collect();
        if !list.contains(self.index(), &self.device_key()) {
            self.logged_out = Some(self.removal_reason(list));
        }
        self.device_list = list.clone();
        Ok(DeviceListChange {
            added,
            removed,
            status: self.poll(now),
        })
    }

    /// Why `list` (which does not name this device) removed it.
    fn removal_reason(&self, list: &SignedDeviceList) -> LogoutReason {
        list.removed()
            .iter()
            .find(|r| r.index == self.index())
            .map_or(LogoutReason::Revoked, |r| r.reason)
    }

    /// The other devices linked within the policy's
    /// [`crate::Policy::new_device_quarantine`] before `now` (empty when the
    /// policy has none): hosts can hold back history from them or show them
    /// apart until the window ends.
    pub fn recently_linked(&self, now: Timestamp) -> Vec<&DeviceListEntry> {
        let Some(window) = self.limits.quarantine_ms else {
            return Vec::new();
        };
        self.device_list
            .devices()
            .iter()
            .filter(|e| e.index != self.index())
            .filter(|e| now < e.linked_at.saturating_add_millis(window))
            .collect()
    }
}
