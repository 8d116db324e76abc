//! The account's registry of companion devices, kept by the primary.
//!
//! Each device is a small state machine:
//!
//! ```text
//!  grant ─► Pending ──confirm──► Active ──revoke / primary offline / idle / replaced──► LoggedOut(reason)
//!              └──── confirmation timeout / revoke / primary offline / replaced ──────► LoggedOut(reason)
//! ```
//!
//! `LoggedOut` is terminal; a re-pair is a new device with a new index, and
//! indices are never reused. Pending and active devices hold a slot: at most
//! [`Policy::max_companions`] of them (the primary does not count).
//!
//! Expiry is a pure function of stored facts and `now`: a device's effective
//! state at `now` ([`Account::device_state`]) is computed, never timed. Every
//! mutating call first settles what `now` implies (device states at `now` are
//! the same before and after; settling records the logouts, bumps the device
//! list version and queues events), then checks its preconditions, then acts;
//! a refused call changes nothing else. Only signed facts (grants,
//! revocations, heartbeats) count as primary activity. The primary-offline boundary is exact: with the last
//! primary activity at `t`, companions are linked on `[t, t + limit)` and
//! logged out from `t + limit` on.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::certificate::{DeviceIndex, DeviceListEntry, PrimaryHeartbeat, SignedDeviceList};
use crate::handshake::{
    ConfirmedLink, DeviceLabel, HandshakeError, PrimaryHandshake, PrimaryState,
};
use crate::keys::{AccountId, AccountKey, DeviceKey};
use crate::offer::TokenId;
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::session::LogoutReason;
use crate::time::Timestamp;

/// Why the registry refused an operation. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Every companion slot is taken (pending slots count). Remove a device
    /// first.
    #[error("device limit reached: the account already has {limit} companions; remove one first")]
    DeviceLimitReached {
        /// The policy's limit.
        limit: u32,
    },
    /// No device has this index.
    #[error("no device {0}")]
    UnknownDevice(DeviceIndex),
    /// The device is already logged out (terminal).
    #[error("device {index} is already logged out ({reason})")]
    AlreadyLoggedOut {
        /// The device.
        index: DeviceIndex,
        /// Why it was logged out.
        reason: LogoutReason,
    },
    /// The pending slot's confirmation came too late; the slot was freed.
    #[error("confirmation arrived after the pending slot timed out")]
    ConfirmationTimedOut,
    /// The handshake belongs to no pending slot of this account.
    #[error("this handshake has no pending slot in this account")]
    NotPending,
    /// Every device index (u32) has been used; the account cannot link more.
    #[error("device indices exhausted")]
    IndicesExhausted,
    /// The handshake refused the message or the step.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl RegistryError {
    /// True when the link this error concerns cannot complete any more.
    pub fn is_terminal(&self) -> bool {
        match self {
            RegistryError::Handshake(e) => e.is_terminal(),
            RegistryError::ConfirmationTimedOut
            | RegistryError::NotPending
            | RegistryError::IndicesExhausted
            | RegistryError::AlreadyLoggedOut { .. } => true,
            RegistryError::DeviceLimitReached { .. } | RegistryError::UnknownDevice(_) => false,
        }
    }
}

/// A device's state in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Granted; waiting for the companion's confirmation until `deadline`.
    Pending {
        /// When the grant was sent.
        since: Timestamp,
        /// First instant at which the slot is freed if unconfirmed.
        deadline: Timestamp,
    },
    /// Linked and confirmed.
    Active {
        /// When the confirmation verified.
        since: Timestamp,
    },
    /// Logged out for good.
    LoggedOut {
        /// Why.
        reason: LogoutReason,
        /// When (for expiries, the exact deadline).
        at: Timestamp,
    },
}

impl DeviceState {
    /// Whether the device still holds a slot (pending or active).
    pub fn holds_slot(&self) -> bool {
        !matches!(self, DeviceState::LoggedOut { .. })
    }
}

/// One companion in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its index (never reused).
    pub index: DeviceIndex,
    /// Its identity key.
    pub device: DeviceKey,
    /// Its label.
    pub label: DeviceLabel,
    /// The offer token it linked through.
    pub token_id: TokenId,
    /// Last activity the primary saw from it (for the idle rule).
    pub last_seen: Timestamp,
    /// Its stored state (see [`Account::device_state`] for the state at `now`).
    pub state: DeviceState,
}

/// Something that happened in the registry, for the audit trail and for hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryEvent {
    /// A link was granted; the slot is pending.
    Granted {
        /// The new device.
        index: DeviceIndex,
        /// Its key.
        device: DeviceKey,
        /// Its label.
        label: DeviceLabel,
        /// When.
        at: Timestamp,
    },
    /// A link was refused.
    Refused {
        /// Why.
        reason: crate::handshake::RefusalReason,
        /// When.
        at: Timestamp,
    },
    /// The confirmation verified; the device is active.
    Linked {
        /// The device.
        index: DeviceIndex,
        /// When.
        at: Timestamp,
    },
    /// A device was logged out.
    LoggedOut {
        /// The device.
        index: DeviceIndex,
        /// Why.
        reason: LogoutReason,
        /// When it took effect.
        at: Timestamp,
    },
    /// The signed device list changed.
    DeviceListUpdated {
        /// Its new version.
        version: u64,
        /// When.
        at: Timestamp,
    },
}

/// The primary's registry of an account's companions: the limit, the leases,
/// revocation and the signed device list.
///
/// Persisting it (serde) persists the account's secret key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// The account id, saved beside the key so a corrupted key is detected.
    account_id: AccountId,
    key: AccountKey,
    policy: Policy,
    devices: BTreeMap<DeviceIndex, DeviceRecord>,
    /// Indices of devices holding a slot, in index order.
    live: Vec<DeviceIndex>,
    next_index: u32,
    last_primary_activity: Timestamp,
    /// Version and signing time of the current device list; the list itself
    /// is signed lazily (once per version) by [`Account::device_list`].
    list_version: u64,
    list_at: Timestamp,
    #[serde(skip)]
    signed_list: OnceLock<SignedDeviceList>,
    /// Events not yet taken by the host (persisted, so none is lost).
    events: Vec<RegistryEvent>,
}

impl Account {
    /// A new account with no companions; `now` counts as primary activity.
    pub fn new(key: AccountKey, policy: Policy, now: Timestamp) -> Self {
        Account {
            account_id: key.account_id(),
            key,
            policy,
            devices: BTreeMap::new(),
            live: Vec::new(),
            next_index: 1,
            last_primary_activity: now,
            list_version: 1,
            list_at: now,
            signed_list: OnceLock::new(),
            events: Vec::new(),
        }
    }

    /// A fresh account key from `rng` and a new registry.
    pub fn generate<R: RngCore + CryptoRng>(policy: Policy, rng: &mut R, now: Timestamp) -> Self {
        Account::new(AccountKey::generate(rng), policy, now)
    }

    /// The account's id.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }
    /// The account's key (for signing outside the registry).
    pub fn key(&self) -> &AccountKey {
        &self.key
    }
    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    /// The current signed device list: every device holding a slot (pending
    /// or active). Signed on first use after each change.
    pub fn device_list(&self) -> &SignedDeviceList {
        self.signed_list.get_or_init(|| {
            SignedDeviceList::sign(
                &self.key,
                self.list_version,
                &self.list_entries(None),
                self.list_at,
            )
        })
    }

    /// The version of the current device list.
    pub fn device_list_version(&self) -> u64 {
        self.list_version
    }

    fn list_entries(&self, extra: Option<DeviceListEntry>) -> Vec<DeviceListEntry> {
        let mut entries: Vec<DeviceListEntry> = self
            .live
            .iter()
            .filter_map(|i| self.devices.get(i))
            .filter(|r| extra.is_none_or(|e| e.device != r.device))
            .map(|r| DeviceListEntry {
                index: r.index,
                device: r.device,
            })
            .collect();
        entries.extend(extra);
        entries
    }
    /// The newest recorded primary activity.
    pub fn last_primary_activity(&self) -> Timestamp {
        self.last_primary_activity
    }
    /// The next index to be assigned.
    pub fn next_index(&self) -> DeviceIndex {
        DeviceIndex(self.next_index)
    }

    /// First instant at which every companion is logged out unless the
    /// primary is active before.
    pub fn primary_deadline(&self) -> Timestamp {
        self.last_primary_activity
            .saturating_add(self.policy.primary_offline_limit())
    }

    /// Every device ever linked, by index (stored states).
    pub fn devices(&self) -> impl Iterator<Item = &DeviceRecord> {
        self.devices.values()
    }

    /// One device's record.
    pub fn device(&self, index: DeviceIndex) -> Option<&DeviceRecord> {
        self.devices.get(&index)
    }

    /// When and why a live record would be logged out by time alone.
    fn expiry_of(&self, rec: &DeviceRecord) -> Option<(Timestamp, LogoutReason)> {
        let mut best = (self.primary_deadline(), LogoutReason::PrimaryOffline);
        let mut consider = |at: Timestamp, reason| {
            if at < best.0 {
                best = (at, reason);
            }
        };
        match rec.state {
            DeviceState::Pending { deadline, .. } => {
                consider(deadline, LogoutReason::ConfirmationTimedOut)
            }
            DeviceState::Active { .. } => {}
            DeviceState::LoggedOut { .. } => return None,
        }
        if let Some(idle) = self.policy.companion_idle_limit() {
            consider(
                rec.last_seen.saturating_add(idle),
                LogoutReason::CompanionIdle,
            );
        }
        Some(best)
    }

    /// A device's effective state at `now` (pure: stored facts and `now`).
    ///
    /// A query changes nothing: an expiry it reports becomes final once a
    /// mutating call (for example [`Account::poll`]) has seen that `now`. A
    /// host that acts on a logout should `poll(now)` first, so that a later
    /// call with an earlier clock cannot undo it.
    pub fn device_state(&self, index: DeviceIndex, now: Timestamp) -> Option<DeviceState> {
        let rec = self.devices.get(&index)?;
        Some(match self.expiry_of(rec) {
            Some((at, reason)) if now >= at => DeviceState::LoggedOut { reason, at },
            _ => rec.state,
        })
    }

    /// Devices holding a slot at `now`.
    pub fn companion_count(&self, now: Timestamp) -> u32 {
        u32::try_from(self.slot_holders(now).count()).unwrap_or(u32::MAX)
    }

    /// The devices holding a slot at `now`.
    fn slot_holders(&self, now: Timestamp) -> impl Iterator<Item = &DeviceRecord> {
        self.live
            .iter()
            .filter_map(|i| self.devices.get(i))
            .filter(move |r| {
                self.device_state(r.index, now)
                    .is_some_and(|s| s.holds_slot())
            })
    }

    /// The next instant at which some device's state changes by time alone.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.live
            .iter()
            .filter_map(|i| self.devices.get(i))
            .filter_map(|r| self.expiry_of(r).map(|(at, _)| at))
            .min()
    }

    /// Settles what `now` implies: logs out every device whose deadline has
    /// passed (with the deadline as the time) and re-signs the device list if
    /// it changed. Observationally neutral: [`Account::device_state`] gives
    /// the same answers before and after.
    pub fn poll(&mut self, now: Timestamp) {
        let mut changed = false;
        let mut still_live = Vec::with_capacity(self.live.len());
        for index in std::mem::take(&mut self.live) {
            let expiry = self.devices.get(&index).and_then(|r| self.expiry_of(r));
            match expiry {
                Some((at, reason)) if now >= at => {
                    if let Some(rec) = self.devices.get_mut(&index) {
                        rec.state = DeviceState::LoggedOut { reason, at };
                    }
                    self.events
                        .push(RegistryEvent::LoggedOut { index, reason, at });
                    changed = true;
                }
                Some(_) => still_live.push(index),
                None => {}
            }
        }
        self.live = still_live;
        if changed {
            self.resign_list(now);
        }
    }

    fn resign_list(&mut self, now: Timestamp) {
        self.list_version = self.list_version.saturating_add(1);
        // A list vouches for primary activity: sign it at the last recorded
        // activity (never later, so an expiry-driven re-sign does not extend
        // companions' leases beyond the registry's), and never earlier than
        // the previous list.
        self.list_at = self.last_primary_activity.max(self.list_at);
        self.signed_list = OnceLock::new();
        self.events.push(RegistryEvent::DeviceListUpdated {
            version: self.list_version,
            at: now,
        });
    }

    fn record_activity(&mut self, now: Timestamp) {
        self.last_primary_activity = self.last_primary_activity.max(now);
    }

    fn check_slot(
        &self,
        now: Timestamp,
        replacing: Option<&DeviceKey>,
    ) -> Result<(), RegistryError> {
        if self.next_index == u32::MAX {
            // The last index is never handed out, so indices stay unique.
            return Err(RegistryError::IndicesExhausted);
        }
        let limit = self.policy.max_companions();
        let taken = self
            .slot_holders(now)
            .filter(|r| Some(&r.device) != replacing)
            .count();
        if taken >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(RegistryError::DeviceLimitReached { limit });
        }
        Ok(())
    }

    /// Scans a companion's QR text: refuses at once with
    /// [`RegistryError::DeviceLimitReached`] if no slot is free, else starts the
    /// handshake and returns it with the Hello to send. (A host that wants the
    /// companion to learn why can call [`PrimaryHandshake::scan`] and
    /// [`PrimaryHandshake::refuse`] itself.)
    pub fn scan<R: RngCore + CryptoRng>(
        &mut self,
        offer_text: &str,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(PrimaryHandshake, Vec<u8>), RegistryError> {
        self.poll(now);
        self.check_slot(now, None)?;
        // Not recorded as primary activity: only what the account signs
        // (grants, revocations, heartbeats) extends leases, so the registry,
        // the companions and the relay agree on every deadline.
        Ok(PrimaryHandshake::scan(offer_text, rng, now)?)
    }

    /// Grants the link the user approved: assigns the next index, takes a
    /// pending slot, re-signs the device list and returns the Grant to send.
    /// A device key that is already linked replaces its old record.
    ///
    /// Persist the account ([`Account::save`]) before the Grant leaves the
    /// device: a host that crashes after sending it and restores an older
    /// save would hand the same index and list version to another device.
    pub fn grant<R: RngCore + CryptoRng>(
        &mut self,
        handshake: &mut PrimaryHandshake,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Vec<u8>, RegistryError> {
        self.poll(now);
        let request = handshake
            .request()
            .filter(|_| handshake.state() == PrimaryState::RequestReceived)
            .ok_or(HandshakeError::WrongState {
                state: "no request to grant",
            })?;
        self.check_slot(now, Some(&request.device))?;

        // Sign the would-be list and build the grant before touching our
        // state, so a failure changes nothing.
        let index = DeviceIndex(self.next_index);
        let entries = self.list_entries(Some(DeviceListEntry {
            index,
            device: request.device,
        }));
        let version = self.list_version.saturating_add(1);
        // Exactly the time `admit` → `resign_list` will record.
        let list_at = self.last_primary_activity.max(now).max(self.list_at);
        let list = SignedDeviceList::sign(&self.key, version, &entries, list_at);
        let grant = handshake.grant(&self.key, index, &list, rng, now)?;

        self.admit(request.device, request.label, handshake.token_id(), now);
        if self.list_version == version && self.list_at == list_at {
            let _ = self.signed_list.set(list);
        }
        Ok(grant)
    }

    /// The registry's half of a grant, after every check: replaces an older
    /// record of the same key, takes the next index and a pending slot,
    /// bumps the device list. Infallible.
    fn admit(
        &mut self,
        device: DeviceKey,
        label: DeviceLabel,
        token_id: TokenId,
        now: Timestamp,
    ) -> DeviceIndex {
        for i in self.live.clone() {
            if self.devices.get(&i).is_some_and(|r| r.device == device) {
                self.log_out(i, LogoutReason::Replaced, now);
            }
        }
        let index = DeviceIndex(self.next_index);
        // `check_slot` refused `u32::MAX`, so this never saturates.
        self.next_index = self.next_index.saturating_add(1);
        let deadline = now.saturating_add(self.policy.confirmation_timeout());
        self.devices.insert(
            index,
            DeviceRecord {
                index,
                device,
                label: label.clone(),
                token_id,
                last_seen: now,
                state: DeviceState::Pending {
                    since: now,
                    deadline,
                },
            },
        );
        self.live.push(index);
        self.record_activity(now);
        self.events.push(RegistryEvent::Granted {
            index,
            device,
            label,
            at: now,
        });
        self.resign_list(now);
        index
    }

    /// Lifecycle-only admission for simulations of very large populations:
    /// every registry rule of [`Account::grant`] (limit, index, pending slot,
    /// replacement, list version), without the key exchange.
    pub(crate) fn admit_without_handshake(
        &mut self,
        device: DeviceKey,
        label: DeviceLabel,
        token_id: TokenId,
        now: Timestamp,
    ) -> Result<DeviceIndex, RegistryError> {
        self.poll(now);
        self.check_slot(now, Some(&device))?;
        Ok(self.admit(device, label, token_id, now))
    }

    /// Lifecycle-only primary activity: [`Account::heartbeat`] without the
    /// signature.
    pub(crate) fn record_primary_activity(&mut self, now: Timestamp) {
        self.poll(now);
        self.record_activity(now);
    }

    /// Lifecycle-only confirmation: the registry half of [`Account::confirm`].
    pub(crate) fn confirm_without_handshake(
        &mut self,
        index: DeviceIndex,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        self.poll(now);
        self.check_pending(index, None)?;
        self.activate(index, now);
        Ok(())
    }

    fn check_pending(
        &self,
        index: DeviceIndex,
        token: Option<TokenId>,
    ) -> Result<(), RegistryError> {
        match self.devices.get(&index) {
            Some(rec) if token.is_none_or(|t| t == rec.token_id) => match rec.state {
                DeviceState::Pending { .. } => Ok(()),
                DeviceState::LoggedOut {
                    reason: LogoutReason::ConfirmationTimedOut,
                    ..
                } => Err(RegistryError::ConfirmationTimedOut),
                DeviceState::LoggedOut { reason, .. } => {
                    Err(RegistryError::AlreadyLoggedOut { index, reason })
                }
                DeviceState::Active { .. } => Err(HandshakeError::AlreadyLinked.into()),
            },
            _ => Err(RegistryError::NotPending),
        }
    }

    fn activate(&mut self, index: DeviceIndex, now: Timestamp) {
        if let Some(rec) = self.devices.get_mut(&index) {
            rec.state = DeviceState::Active { since: now };
            rec.last_seen = rec.last_seen.max(now);
        }
        self.events.push(RegistryEvent::Linked { index, at: now });
    }

    /// Refuses a link (the user declined, or no slot): returns the Refusal to
    /// send so the companion shows why.
    pub fn refuse<R: RngCore + CryptoRng>(
        &mut self,
        handshake: &mut PrimaryHandshake,
        reason: crate::handshake::RefusalReason,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Vec<u8>, RegistryError> {
        let msg = handshake.refuse(reason, rng)?;
        self.events.push(RegistryEvent::Refused { reason, at: now });
        Ok(msg)
    }

    /// Verifies the companion's Confirm: its pending slot becomes active.
    pub fn confirm(
        &mut self,
        handshake: &mut PrimaryHandshake,
        confirm: &[u8],
        now: Timestamp,
    ) -> Result<ConfirmedLink, RegistryError> {
        self.poll(now);
        let PrimaryState::GrantSent { index } = handshake.state() else {
            // Outside GrantSent the handshake refuses without changing state;
            // let it say why.
            return Err(handshake
                .receive_confirm(confirm, now)
                .err()
                .map_or(RegistryError::NotPending, RegistryError::from));
        };
        self.check_pending(index, Some(handshake.token_id()))?;
        let link = handshake.receive_confirm(confirm, now)?;
        self.activate(index, now);
        Ok(link)
    }

    fn log_out(&mut self, index: DeviceIndex, reason: LogoutReason, now: Timestamp) {
        if let Some(rec) = self.devices.get_mut(&index) {
            rec.state = DeviceState::LoggedOut { reason, at: now };
        }
        self.live.retain(|i| *i != index);
        self.events.push(RegistryEvent::LoggedOut {
            index,
            reason,
            at: now,
        });
    }

    /// Removes a companion (pending or active). Every other device is left
    /// untouched; the device list is re-signed without it.
    pub fn revoke(&mut self, index: DeviceIndex, now: Timestamp) -> Result<(), RegistryError> {
        self.poll(now);
        match self.devices.get(&index).map(|r| r.state) {
            None => Err(RegistryError::UnknownDevice(index)),
            Some(DeviceState::LoggedOut { reason, .. }) => {
                Err(RegistryError::AlreadyLoggedOut { index, reason })
            }
            Some(_) => {
                self.log_out(index, LogoutReason::Revoked, now);
                self.record_activity(now);
                self.resign_list(now);
                Ok(())
            }
        }
    }

    /// Records primary activity at `now` and returns a signed heartbeat for
    /// the companions and the relay. After the offline limit has passed, the
    /// companions are already logged out: a heartbeat revives nobody.
    pub fn heartbeat(&mut self, now: Timestamp) -> PrimaryHeartbeat {
        self.record_primary_activity(now);
        PrimaryHeartbeat::sign(&self.key, self.last_primary_activity)
    }

    /// Records activity seen from a companion (for the idle rule).
    pub fn companion_seen(
        &mut self,
        index: DeviceIndex,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        self.poll(now);
        match self.devices.get_mut(&index) {
            None => Err(RegistryError::UnknownDevice(index)),
            Some(rec) => match rec.state {
                DeviceState::LoggedOut { reason, .. } => {
                    Err(RegistryError::AlreadyLoggedOut { index, reason })
                }
                _ => {
                    rec.last_seen = rec.last_seen.max(now);
                    Ok(())
                }
            },
        }
    }

    /// Saves the registry (versioned JSON). Holds the account's secret key.
    pub fn save(&self) -> Result<Vec<u8>, PersistError> {
        crate::persist::save("account", self)
    }

    /// Restores a registry saved by [`Account::save`]; it behaves exactly as
    /// the saved one would have. Corrupted input gives a typed error.
    pub fn restore(bytes: &[u8]) -> Result<Self, PersistError> {
        let mut a: Account = crate::persist::restore("account", bytes)?;
        if a.key.account_id() != a.account_id {
            return Err(PersistError::Inconsistent(
                "account key does not match the account id",
            ));
        }
        if a.devices.keys().any(|i| i.0 == 0 || i.0 >= a.next_index)
            || a.devices.iter().any(|(i, r)| *i != r.index)
        {
            return Err(PersistError::Inconsistent("device indices"));
        }
        let live: Vec<DeviceIndex> = a
            .devices
            .values()
            .filter(|r| r.state.holds_slot())
            .map(|r| r.index)
            .collect();
        if live != a.live {
            return Err(PersistError::Inconsistent("live device set"));
        }
        let confirm = a.policy.confirmation_timeout();
        let pending_ok = a.devices.values().all(|r| match r.state {
            DeviceState::Pending { since, deadline } => deadline == since.saturating_add(confirm),
            _ => true,
        });
        if !pending_ok || a.list_at > a.last_primary_activity || a.next_index == 0 {
            return Err(PersistError::Inconsistent("device deadlines or list time"));
        }
        a.live = live;
        Ok(a)
    }

    /// Takes the events recorded since the last call (oldest first).
    pub fn take_events(&mut self) -> Vec<RegistryEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceIdentity;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn label() -> DeviceLabel {
        DeviceLabel::new("test").unwrap()
    }

    #[test]
    fn the_last_index_is_never_handed_out() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = Timestamp::from_unix_millis(1);
        let mut a = Account::generate(Policy::default(), &mut rng, now);
        a.next_index = u32::MAX - 1;
        let d1 = DeviceIdentity::generate(&mut rng).device_key();
        let d2 = DeviceIdentity::generate(&mut rng).device_key();
        let i = a
            .admit_without_handshake(d1, label(), TokenId([1; 16]), now)
            .unwrap();
        assert_eq!(i, DeviceIndex(u32::MAX - 1));
        let before = a.save().unwrap();
        assert_eq!(
            a.admit_without_handshake(d2, label(), TokenId([2; 16]), now),
            Err(RegistryError::IndicesExhausted)
        );
        assert!(RegistryError::IndicesExhausted.is_terminal());
        assert_eq!(a.save().unwrap(), before);
        assert_eq!(a.companion_count(now), 1);
    }

    #[test]
    fn scanning_is_not_primary_activity_but_granting_is() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t0 = Timestamp::from_unix_millis(1_000);
        let mut a = Account::generate(Policy::default(), &mut rng, t0);
        let d = DeviceIdentity::generate(&mut rng).device_key();
        let later = t0.saturating_add(crate::time::days(3));
        let offer = crate::offer::OfferKeys::generate(&mut rng).offer.to_text();
        a.scan(&offer, &mut rng, later).unwrap();
        assert_eq!(a.last_primary_activity(), t0);
        a.admit_without_handshake(d, label(), TokenId([1; 16]), later)
            .unwrap();
        assert_eq!(a.last_primary_activity(), later);
        assert_eq!(a.device_list().issued_at(), later);
    }
}
