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

use serde::{Deserialize, Serialize};

use crate::certificate::{
    CertificateError, DeviceCertificate, DeviceIndex, PrimaryHeartbeat, SignedDeviceList,
};
use crate::handshake::DeviceLabel;
use crate::keys::{AccountId, DeviceIdentity, DeviceKey};
use crate::policy::Policy;
use crate::time::{duration_millis, Timestamp};

/// Why a device was logged out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogoutReason {
    /// The primary removed it.
    Revoked,
    /// The primary was inactive for the policy's offline limit (14 days).
    PrimaryOffline,
    /// The companion itself was idle past the policy's idle limit.
    CompanionIdle,
    /// The companion never confirmed the grant in time.
    ConfirmationTimedOut,
    /// Another device took its place (the same device re-paired).
    Replaced,
}

impl std::fmt::Display for LogoutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogoutReason::Revoked => "revoked by the primary",
            LogoutReason::PrimaryOffline => "primary offline too long",
            LogoutReason::CompanionIdle => "companion idle too long",
            LogoutReason::ConfirmationTimedOut => "confirmation timed out",
            LogoutReason::Replaced => "replaced by a new link",
        })
    }
}

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

/// A linked companion: everything it needs to work without the phone.
///
/// Persisting it persists the device's identity secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkedSession {
    identity: DeviceIdentity,
    label: DeviceLabel,
    certificate: DeviceCertificate,
    device_list: SignedDeviceList,
    linked_at: Timestamp,
    last_primary_activity: Timestamp,
    offline_limit_ms: u64,
    warn_before_ms: u64,
    logged_out: Option<LogoutReason>,
}

impl LinkedSession {
    pub(crate) fn new(
        identity: DeviceIdentity,
        label: DeviceLabel,
        certificate: DeviceCertificate,
        device_list: SignedDeviceList,
        policy: &Policy,
        now: Timestamp,
    ) -> Self {
        let last_primary_activity = certificate.issued_at().max(device_list.issued_at());
        LinkedSession {
            identity,
            label,
            certificate,
            device_list,
            linked_at: now,
            last_primary_activity,
            offline_limit_ms: duration_millis(policy.primary_offline_limit()),
            warn_before_ms: duration_millis(policy.warn_before()),
            logged_out: None,
        }
    }

    /// The account this device belongs to.
    pub fn account(&self) -> AccountId {
        self.certificate.account()
    }
    /// Saves the session (versioned JSON; holds the device's identity secret).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("linked session", self)
    }

    /// Restores a session saved by [`LinkedSession::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let s: LinkedSession = crate::persist::restore("linked session", bytes)?;
        if s.certificate.device() != s.identity.device_key()
            || s.device_list.account() != s.certificate.account()
            || s.last_primary_activity < s.certificate.issued_at().max(s.device_list.issued_at())
            || s.offline_limit_ms == 0
        {
            return Err(crate::persist::PersistError::Inconsistent("session keys"));
        }
        Ok(s)
    }

    /// This device's index in the account.
    pub fn index(&self) -> DeviceIndex {
        self.certificate.index()
    }
    /// This device's public identity key.
    pub fn device_key(&self) -> DeviceKey {
        self.identity.device_key()
    }
    /// This device's own identity (secret) key.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
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
    /// The newest instant the account signed it was active.
    pub fn last_primary_activity(&self) -> Timestamp {
        self.last_primary_activity
    }

    /// First instant at which the session is logged out for primary inactivity.
    pub fn expires_at(&self) -> Timestamp {
        self.last_primary_activity
            .saturating_add_millis(self.offline_limit_ms)
    }

    /// When to warn the user (`warn_before` ahead of [`LinkedSession::expires_at`]).
    pub fn warn_at(&self) -> Timestamp {
        self.expires_at().saturating_sub_millis(self.warn_before_ms)
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
        status
    }

    /// The next instant at which the status changes (warning, then logout).
    pub fn next_deadline(&self, now: Timestamp) -> Option<Timestamp> {
        match self.status(now) {
            SessionStatus::Linked { .. } => Some(self.warn_at()),
            SessionStatus::ExpiringSoon { expires_at } => Some(expires_at),
            SessionStatus::LoggedOut { .. } => None,
        }
    }

    fn check_live(&mut self, now: Timestamp) -> Result<(), SessionError> {
        match self.poll(now) {
            SessionStatus::LoggedOut { reason } => Err(SessionError::LoggedOut(reason)),
            _ => Ok(()),
        }
    }

    /// Applies `at` as primary activity. Activity at or after the lease's end
    /// proves the primary was silent through it: the session is logged out.
    fn extend(&mut self, at: Timestamp) -> Result<(), SessionError> {
        if at >= self.expires_at() {
            self.logged_out = Some(LogoutReason::PrimaryOffline);
            return Err(SessionError::LoggedOut(LogoutReason::PrimaryOffline));
        }
        self.last_primary_activity = self.last_primary_activity.max(at);
        Ok(())
    }

    /// Accepts a signed heartbeat from the primary: extends the lease. Refused,
    /// with nothing changed, if forged or from another account.
    pub fn accept_heartbeat(
        &mut self,
        heartbeat: &[u8],
        now: Timestamp,
    ) -> Result<SessionStatus, SessionError> {
        let hb = PrimaryHeartbeat::from_bytes(heartbeat)?;
        if hb.account() != self.account() {
            return Err(CertificateError::WrongAccount.into());
        }
        self.check_live(now)?;
        self.extend(hb.at())?;
        Ok(self.status(now))
    }

    /// Accepts a newer signed device list. If it no longer lists this device,
    /// the session is logged out with [`LogoutReason::Revoked`] (the list does
    /// not say why a device left it: revoked, replaced, idle or unconfirmed). Refused, with
    /// nothing changed, if forged, from another account, or not newer.
    pub fn accept_device_list(
        &mut self,
        list: &[u8],
        now: Timestamp,
    ) -> Result<SessionStatus, SessionError> {
        let list = SignedDeviceList::from_bytes(list)?;
        if list.account() != self.account() {
            return Err(CertificateError::WrongAccount.into());
        }
        if list.version() <= self.device_list.version() {
            return Err(CertificateError::StaleDeviceList {
                have: self.device_list.version(),
                got: list.version(),
            }
            .into());
        }
        self.check_live(now)?;
        self.extend(list.issued_at())?;
        let listed = list.contains(self.index(), &self.device_key());
        self.device_list = list;
        if !listed {
            self.logged_out = Some(LogoutReason::Revoked);
        }
        Ok(self.status(now))
    }
}
