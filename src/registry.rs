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
//! [`Policy::max_companions`] distinct device keys (the primary does not
//! count). A device re-pairing with the key it already has keeps its slot:
//! its new index is granted beside the old one, and the old record is
//! logged out as `Replaced` only when the Confirm proves the key (so nobody
//! can evict a device by naming its public key).
//!
//! Linking starts only from the host's own "Link a device" screen: it opens a
//! short-lived, single-use link intent ([`Account::open_link_intent`]) and
//! [`Account::scan`] refuses a QR text without one
//! ([`RegistryError::NoLinkIntent`]). A phishing page that shows a real
//! offer as "scan to join the group" then meets a camera that does not link.
//!
//! Expiry is a pure function of stored facts and `now`: a device's effective
//! state at `now` ([`Account::device_state`]) is computed, never timed. Every
//! mutating call first advances the registry's clock (the largest `now` it
//! has seen: time never runs backwards inside it, so it never signs activity
//! earlier than a logout it recorded), settles what that implies (device
//! states are the same before and after; settling records the logouts, bumps
//! the device list version and queues events), then checks its
//! preconditions, then acts; a refused call changes nothing else. Only signed
//! facts (grants, revocations, heartbeats) count as primary activity. The
//! primary-offline boundary is exact: with the last primary activity at `t`,
//! companions are linked on `[t, t + limit)` and logged out from `t + limit` on.
//!
//! Every device-list version is fixed when it is made (its content, time,
//! predecessor hash, removals and audit anchor are stored) and signed on
//! first use, so a restored registry signs exactly the bytes it would have
//! signed. Persist the account ([`Account::save`]) before publishing any
//! list, grant or heartbeat it produced: a phone restored from an older save
//! would issue other content under versions already published, which
//! holders refuse as a fork.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::certificate::{
    DeviceIndex, DeviceListDraft, DeviceListEntry, PrimaryHeartbeat, RemovedDevice,
    SignedDeviceList,
};
use crate::facts::AuditAnchor;
use crate::facts::LogoutReason;
use crate::handshake::{
    ConfirmedLink, HandshakeError, LinkRequest, PrimaryHandshake, PrimaryState, RefusalReason,
};
use crate::keys::{AccountId, AccountKey, DeviceKey};
use crate::label::DeviceLabel;
use crate::offer::{PairingOffer, TokenId};
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::time::Timestamp;

/// Why the registry refused an operation. Nothing changed, except where a
/// variant says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Every companion slot is taken (pending slots count). Remove a device
    /// first.
    #[error("device limit reached: the account already has {limit} companions; remove one first")]
    DeviceLimitReached {
        /// The policy's limit.
        limit: u32,
    },
    /// The registry refused the link on its own (for example the account is
    /// full): the handshake is now refused, and `refusal` is the authenticated
    /// Refusal to send to the companion so it shows why.
    #[error("link refused: {reason}")]
    Refused {
        /// Why.
        reason: RefusalReason,
        /// The Refusal message to send to the companion.
        refusal: Vec<u8>,
    },
    /// A QR text was scanned without an open link intent: linking starts
    /// only from the host's own "Link a device" screen.
    #[error("no link intent is open: start linking from the \"Link a device\" screen")]
    NoLinkIntent,
    /// The link intent's window ended before the scan.
    #[error("the link intent expired: open \"Link a device\" again")]
    LinkIntentExpired,
    /// The handshake was started by another account.
    #[error("this handshake belongs to another account")]
    OtherAccount,
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
            | RegistryError::Refused { .. }
            | RegistryError::AlreadyLoggedOut { .. } => true,
            // The handshake is untouched: its own account can still finish it.
            RegistryError::OtherAccount
            | RegistryError::DeviceLimitReached { .. }
            | RegistryError::NoLinkIntent
            | RegistryError::LinkIntentExpired
            | RegistryError::UnknownDevice(_) => false,
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
    /// When the link was granted (its `linked_at` in the signed list).
    pub linked_at: Timestamp,
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
        reason: RefusalReason,
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

/// What one mutating call changed in the device list: the devices it
/// removed (settled expiries, a revocation, replacements) and whether it
/// added one.
struct Batch {
    removed: Vec<RemovedDevice>,
    bump: bool,
}

/// What the current device-list version says besides its devices, fixed when
/// the version was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ListVersion {
    version: u64,
    /// The signing time: the last primary activity when the version was made.
    at: Timestamp,
    #[serde(with = "crate::encoding::b64_array")]
    previous: [u8; 32],
    audit: AuditAnchor,
    removed: Vec<RemovedDevice>,
    /// This version's hash (the next version's `previous`).
    #[serde(with = "crate::encoding::b64_array")]
    hash: [u8; 32],
}

/// The primary's registry of an account's companions: the limit, the leases,
/// revocation, the signed device list and the link intent.
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
    /// The latest time at which the registry recorded a change.
    clock: Timestamp,
    /// End of the open link intent's window, if one is open.
    link_intent: Option<Timestamp>,
    /// The audit trail's head as last reported by the host's audit log.
    audit: AuditAnchor,
    /// The current device list's version and fixed content.
    list: ListVersion,
    #[serde(skip)]
    signed_list: OnceLock<SignedDeviceList>,
    /// Events not yet taken by the host (persisted, so none is lost).
    events: Vec<RegistryEvent>,
}

impl Account {
    /// A new account with no companions; `now` counts as primary activity.
    pub fn new(key: AccountKey, policy: Policy, now: Timestamp) -> Self {
        let account_id = key.account_id();
        let draft = DeviceListDraft {
            version: 1,
            ..DeviceListDraft::default()
        };
        let hash = SignedDeviceList::unsigned(account_id, &draft, now).hash();
        Account {
            account_id,
            key,
            policy,
            devices: BTreeMap::new(),
            live: Vec::new(),
            next_index: 1,
            last_primary_activity: now,
            clock: now,
            link_intent: None,
            audit: AuditAnchor::default(),
            list: ListVersion {
                version: 1,
                at: now,
                previous: [0; 32],
                audit: AuditAnchor::default(),
                removed: Vec::new(),
                hash,
            },
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
        self.signed_list
            .get_or_init(|| SignedDeviceList::sign(&self.key, &self.current_draft(), self.list.at))
    }

    /// The version of the current device list.
    pub fn device_list_version(&self) -> u64 {
        self.list.version
    }

    /// The audit anchor the next list and heartbeats will carry.
    pub fn audit_anchor(&self) -> AuditAnchor {
        self.audit
    }

    /// Records the audit trail's head, so the next signed list and heartbeat
    /// vouch for it ([`crate::AuditLog::record_registry`] calls it).
    pub fn anchor_audit(&mut self, anchor: AuditAnchor) {
        if anchor.entries >= self.audit.entries {
            self.audit = anchor;
        }
    }

    fn entries(&self, extra: Option<DeviceListEntry>) -> Vec<DeviceListEntry> {
        let mut entries: Vec<DeviceListEntry> = self
            .live
            .iter()
            .filter_map(|i| self.devices.get(i))
            .map(|r| DeviceListEntry {
                index: r.index,
                device: r.device,
                label: r.label.clone(),
                linked_at: r.linked_at,
            })
            .collect();
        entries.extend(extra);
        entries
    }

    fn current_draft(&self) -> DeviceListDraft {
        DeviceListDraft {
            version: self.list.version,
            previous: self.list.previous,
            audit: self.list.audit,
            devices: self.entries(None),
            removed: self.list.removed.clone(),
        }
    }

    /// The draft and signing time of the next version, as `resign_list` will
    /// make it after admitting `extra` (nothing else may change in between).
    fn next_draft(
        &self,
        extra: Option<DeviceListEntry>,
        removed: Vec<RemovedDevice>,
        activity: Timestamp,
    ) -> (DeviceListDraft, Timestamp) {
        let draft = DeviceListDraft {
            version: self.list.version.saturating_add(1),
            previous: self.list.hash,
            audit: self.audit,
            devices: self.entries(extra),
            removed,
        };
        // A list vouches for primary activity: sign it at the last recorded
        // activity (never later, so an expiry-driven re-sign does not extend
        // companions' leases beyond the registry's), and never earlier than
        // the previous list.
        (draft, activity.max(self.list.at))
    }

    /// The newest recorded primary activity.
    pub fn last_primary_activity(&self) -> Timestamp {
        self.last_primary_activity
    }
    /// The next index to be assigned.
    pub fn next_index(&self) -> DeviceIndex {
        DeviceIndex(self.next_index)
    }
    /// The registry's clock: the latest time at which it recorded a change.
    /// Every call acts at `max(now, clock)`, so nothing it signs or records
    /// is ever earlier than something it already recorded.
    pub fn clock(&self) -> Timestamp {
        self.clock
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

    /// Distinct companions (device keys) holding a slot at `now`.
    pub fn companion_count(&self, now: Timestamp) -> u32 {
        u32::try_from(self.slot_keys(now, None)).unwrap_or(u32::MAX)
    }

    /// Distinct device keys holding a slot at `now`, `except` one.
    fn slot_keys(&self, now: Timestamp, except: Option<&DeviceKey>) -> usize {
        let mut keys: Vec<DeviceKey> = self
            .live
            .iter()
            .filter_map(|i| self.devices.get(i))
            .filter(|r| Some(&r.device) != except)
            .filter(|r| {
                self.device_state(r.index, now)
                    .is_some_and(|s| s.holds_slot())
            })
            .map(|r| r.device)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    /// The next instant at which some device's state changes by time alone.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.live
            .iter()
            .filter_map(|i| self.devices.get(i))
            .filter_map(|r| self.expiry_of(r).map(|(at, _)| at))
            .min()
    }

    /// The time a call at `now` acts at: never before anything recorded.
    fn effective(&self, now: Timestamp) -> Timestamp {
        self.clock.max(now)
    }

    /// Records that the registry's state changed at `now` (the clock only
    /// moves forward). Refused calls change nothing, the clock included.
    fn touch(&mut self, now: Timestamp) {
        self.clock = self.clock.max(now);
    }

    /// Settles what `now` implies: logs out every device whose deadline has
    /// passed (with the deadline as the time) and bumps the device list if
    /// it changed, and records `now` on the registry's clock.
    /// Observationally neutral: [`Account::device_state`] gives the same
    /// answers before and after.
    pub fn poll(&mut self, now: Timestamp) {
        let now = self.effective(now);
        let _ = self.change(now, |_, _| Ok(()));
        self.touch(now);
    }

    /// Runs one mutating call at `now`: settles what `now` implies, runs
    /// `f`, then makes **at most one** new device-list version for all of it
    /// (the settled expiries and `f`'s own change), whether `f` succeeds or
    /// not. One call, one version: a holder that sees every list the host
    /// publishes after each call sees every version, and each version's
    /// removals carry their reasons.
    fn change<T>(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self, &mut Batch) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut batch = Batch {
            removed: self.settle(now),
            bump: false,
        };
        let out = f(self, &mut batch);
        if batch.bump || !batch.removed.is_empty() {
            self.resign_list(batch.removed, now);
        }
        out
    }

    /// Logs out every device whose deadline has passed at `now` (with the
    /// deadline as the time) and returns them, for the call's list version.
    /// Changes nothing (not even the clock) when nothing expired.
    fn settle(&mut self, now: Timestamp) -> Vec<RemovedDevice> {
        let mut removed = Vec::new();
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
                    removed.push(RemovedDevice { index, reason });
                }
                Some(_) => still_live.push(index),
                None => {}
            }
        }
        self.live = still_live;
        removed
    }

    /// Makes the next list version from the current state.
    fn resign_list(&mut self, removed: Vec<RemovedDevice>, now: Timestamp) {
        let (draft, at) = self.next_draft(None, removed, self.last_primary_activity);
        let hash = SignedDeviceList::unsigned(self.account_id, &draft, at).hash();
        self.list = ListVersion {
            version: draft.version,
            at,
            previous: draft.previous,
            audit: draft.audit,
            removed: draft.removed,
            hash,
        };
        self.signed_list = OnceLock::new();
        self.touch(now);
        self.events.push(RegistryEvent::DeviceListUpdated {
            version: self.list.version,
            at: now,
        });
    }

    fn record_activity(&mut self, now: Timestamp) {
        self.last_primary_activity = self.last_primary_activity.max(now);
        self.touch(now);
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
        if self.slot_keys(now, replacing) >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(RegistryError::DeviceLimitReached { limit });
        }
        Ok(())
    }

    fn check_handshake(&self, handshake: &PrimaryHandshake) -> Result<(), RegistryError> {
        if handshake.account() != self.account_id {
            return Err(RegistryError::OtherAccount);
        }
        Ok(())
    }

    /// Opens a link intent at `now`: the host's "Link a device" screen is
    /// showing its camera, and the next scan within the policy's
    /// [`Policy::link_intent_window`] may start a link. Returns when the
    /// window ends. Opening again restarts the window.
    pub fn open_link_intent(&mut self, now: Timestamp) -> Timestamp {
        let now = self.effective(now);
        let until = now.saturating_add(self.policy.link_intent_window());
        self.link_intent = Some(until);
        self.touch(now);
        until
    }

    /// Closes the link intent (the user left the "Link a device" screen).
    pub fn close_link_intent(&mut self) {
        self.link_intent = None;
    }

    /// Scans a companion's QR text under the open link intent (which the
    /// scan uses up) and returns the handshake and the Hello to send.
    ///
    /// Refused with [`RegistryError::NoLinkIntent`] or
    /// [`RegistryError::LinkIntentExpired`] when the host did not open an
    /// intent from its own "Link a device" screen in time: a QR code met
    /// anywhere else (a web page, a chat) must never start a link. The
    /// limit is checked when the companion's key is known
    /// ([`Account::receive_request`]), so a device that re-pairs with the key
    /// it already has is not refused.
    pub fn scan<R: RngCore + CryptoRng>(
        &mut self,
        offer_text: &str,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(PrimaryHandshake, Vec<u8>), RegistryError> {
        let now = self.check_link_intent(now)?;
        let offer = PairingOffer::from_text(offer_text).map_err(HandshakeError::from)?;
        // Not recorded as primary activity: only what the account signs
        // (grants, revocations, heartbeats) extends leases, so the registry,
        // the companions and the relay agree on every deadline.
        let scanned = PrimaryHandshake::scan_offer(self.account_id, &offer, rng, now)?;
        self.use_link_intent(now);
        Ok(scanned)
    }

    /// The link intent's checks shared by every entry path (a scan, a typed
    /// code): an intent is open and its window has not ended. Returns the
    /// time the call acts at. Changes nothing.
    pub(crate) fn check_link_intent(&self, now: Timestamp) -> Result<Timestamp, RegistryError> {
        let now = self.effective(now);
        match self.link_intent {
            None => Err(RegistryError::NoLinkIntent),
            Some(until) if now >= until => Err(RegistryError::LinkIntentExpired),
            Some(_) => Ok(now),
        }
    }

    /// Uses up the link intent after a successful entry (scan or code).
    pub(crate) fn use_link_intent(&mut self, now: Timestamp) {
        self.link_intent = None;
        self.touch(now);
    }

    /// Handles the companion's Request and returns what to show the user.
    ///
    /// If the account has no free slot for this device (a device already
    /// listed with the same key re-pairs into its own slot), the link is
    /// refused at once: [`RegistryError::Refused`] carries the authenticated
    /// Refusal (`DeviceLimitReached`) to send, so the companion shows why.
    pub fn receive_request<R: RngCore + CryptoRng>(
        &mut self,
        handshake: &mut PrimaryHandshake,
        request: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<LinkRequest, RegistryError> {
        self.check_handshake(handshake)?;
        let now = self.effective(now);
        self.change(now, |this, _| {
            let asked = handshake.receive_request(request, now)?;
            if let Err(RegistryError::DeviceLimitReached { limit }) =
                this.check_slot(now, Some(&asked.device))
            {
                let reason = RefusalReason::DeviceLimitReached { limit };
                let refusal = handshake.refuse(reason, rng)?;
                this.events.push(RegistryEvent::Refused { reason, at: now });
                this.touch(now);
                return Err(RegistryError::Refused { reason, refusal });
            }
            Ok(asked)
        })
    }

    /// Grants the link the user approved: assigns the next index, takes a
    /// pending slot, makes the next device list (which is the device's
    /// certificate) and returns the Grant to send. A device key that is
    /// already linked keeps its old record until the Confirm proves the key.
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
        self.check_handshake(handshake)?;
        let now = self.effective(now);
        let (grant, list) = self.change(now, |this, batch| {
            let request = handshake
                .request()
                .filter(|_| handshake.state() == PrimaryState::RequestReceived)
                .ok_or(HandshakeError::WrongState {
                    state: "no request to grant",
                })?;
            this.check_slot(now, Some(&request.device))?;

            // Sign the would-be list (this call's version: the settled
            // expiries and the new device) and build the grant before
            // touching our state, so a failure changes nothing more.
            let index = DeviceIndex(this.next_index);
            let entry = DeviceListEntry {
                index,
                device: request.device,
                label: request.label.clone(),
                linked_at: now,
            };
            let activity = this.last_primary_activity.max(now);
            let (draft, list_at) = this.next_draft(Some(entry), batch.removed.clone(), activity);
            let list = SignedDeviceList::sign(&this.key, &draft, list_at);
            let grant = handshake.grant(&this.key, index, &list, rng, now)?;
            this.admit(
                batch,
                request.device,
                request.label,
                handshake.token_id(),
                now,
            );
            Ok((grant, list))
        })?;
        // `change` made this very version from the same state, so the list
        // signed above is its list (checked, not assumed).
        if self.list.hash == list.hash() {
            let _ = self.signed_list.set(list);
        }
        Ok(grant)
    }

    /// The registry's half of a grant, after every check: takes the next
    /// index and a pending slot; the call's list version will name it.
    /// Infallible.
    fn admit(
        &mut self,
        batch: &mut Batch,
        device: DeviceKey,
        label: DeviceLabel,
        token_id: TokenId,
        now: Timestamp,
    ) -> DeviceIndex {
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
                linked_at: now,
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
        batch.bump = true;
        index
    }

    /// Lifecycle-only admission for simulations of very large populations:
    /// every registry rule of [`Account::grant`] (limit, index, pending slot,
    /// list version), without the key exchange.
    pub(crate) fn admit_without_handshake(
        &mut self,
        device: DeviceKey,
        label: DeviceLabel,
        token_id: TokenId,
        now: Timestamp,
    ) -> Result<DeviceIndex, RegistryError> {
        let now = self.effective(now);
        self.change(now, |this, batch| {
            this.check_slot(now, Some(&device))?;
            Ok(this.admit(batch, device, label, token_id, now))
        })
    }

    /// Lifecycle-only primary activity: [`Account::heartbeat`] without the
    /// signature.
    pub(crate) fn record_primary_activity(&mut self, now: Timestamp) {
        let now = self.effective(now);
        let _ = self.change(now, |this, _| {
            this.record_activity(now);
            Ok(())
        });
    }

    /// Lifecycle-only confirmation: the registry half of [`Account::confirm`].
    pub(crate) fn confirm_without_handshake(
        &mut self,
        index: DeviceIndex,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        let now = self.effective(now);
        self.change(now, |this, batch| {
            this.check_pending(index, None)?;
            this.activate(batch, index, now);
            Ok(())
        })
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

    /// Activates a confirmed device; its possession of the key is proven, so
    /// older records of the same key are now replaced.
    fn activate(&mut self, batch: &mut Batch, index: DeviceIndex, now: Timestamp) {
        let mut device = None;
        if let Some(rec) = self.devices.get_mut(&index) {
            rec.state = DeviceState::Active { since: now };
            rec.last_seen = rec.last_seen.max(now);
            device = Some(rec.device);
        }
        self.touch(now);
        self.events.push(RegistryEvent::Linked { index, at: now });
        let replaced: Vec<DeviceIndex> = self
            .live
            .iter()
            .copied()
            .filter(|i| *i != index)
            .filter(|i| {
                self.devices
                    .get(i)
                    .is_some_and(|r| Some(r.device) == device)
            })
            .collect();
        for i in replaced {
            self.log_out(i, LogoutReason::Replaced, now);
            batch.removed.push(RemovedDevice {
                index: i,
                reason: LogoutReason::Replaced,
            });
        }
    }

    /// Refuses a link (the user declined): returns the Refusal to send so the
    /// companion shows why.
    pub fn refuse<R: RngCore + CryptoRng>(
        &mut self,
        handshake: &mut PrimaryHandshake,
        reason: RefusalReason,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Vec<u8>, RegistryError> {
        self.check_handshake(handshake)?;
        let now = self.effective(now);
        let msg = handshake.refuse(reason, rng)?;
        self.events.push(RegistryEvent::Refused { reason, at: now });
        self.touch(now);
        Ok(msg)
    }

    /// Verifies the companion's Confirm: its pending slot becomes active, and
    /// an older record of the same device key is logged out as replaced.
    pub fn confirm(
        &mut self,
        handshake: &mut PrimaryHandshake,
        confirm: &[u8],
        now: Timestamp,
    ) -> Result<ConfirmedLink, RegistryError> {
        self.check_handshake(handshake)?;
        let now = self.effective(now);
        self.change(now, |this, batch| {
            let PrimaryState::GrantSent { index } = handshake.state() else {
                // Outside GrantSent the handshake refuses without changing
                // state; let it say why.
                return Err(handshake
                    .receive_confirm(confirm, now)
                    .err()
                    .map_or(RegistryError::NotPending, RegistryError::from));
            };
            this.check_pending(index, Some(handshake.token_id()))?;
            let link = handshake.receive_confirm(confirm, now)?;
            this.activate(batch, index, now);
            Ok(link)
        })
    }

    fn log_out(&mut self, index: DeviceIndex, reason: LogoutReason, now: Timestamp) {
        if let Some(rec) = self.devices.get_mut(&index) {
            rec.state = DeviceState::LoggedOut { reason, at: now };
        }
        self.touch(now);
        self.live.retain(|i| *i != index);
        self.events.push(RegistryEvent::LoggedOut {
            index,
            reason,
            at: now,
        });
    }

    /// Removes a companion (pending or active). Every other device is left
    /// untouched; the next device list drops it with the reason `Revoked`.
    /// Persist the account before publishing that list.
    pub fn revoke(&mut self, index: DeviceIndex, now: Timestamp) -> Result<(), RegistryError> {
        let now = self.effective(now);
        self.change(now, |this, batch| {
            match this.devices.get(&index).map(|r| r.state) {
                None => Err(RegistryError::UnknownDevice(index)),
                Some(DeviceState::LoggedOut { reason, .. }) => {
                    Err(RegistryError::AlreadyLoggedOut { index, reason })
                }
                Some(_) => {
                    this.log_out(index, LogoutReason::Revoked, now);
                    this.record_activity(now);
                    batch.removed.push(RemovedDevice {
                        index,
                        reason: LogoutReason::Revoked,
                    });
                    Ok(())
                }
            }
        })
    }

    /// Records primary activity at `now` and returns a signed heartbeat for
    /// the companions and the relay, naming the current device list and
    /// audit anchor. It is signed at the registry's clock, never earlier than
    /// anything the registry recorded, so a clock stepped back cannot
    /// produce a heartbeat that revives a device it already logged out; and
    /// after the offline limit has passed, the companions are already logged
    /// out: a heartbeat revives nobody.
    pub fn heartbeat(&mut self, now: Timestamp) -> PrimaryHeartbeat {
        self.record_primary_activity(now);
        PrimaryHeartbeat::sign(
            &self.key,
            self.device_list(),
            self.audit,
            self.last_primary_activity,
        )
    }

    /// Records activity seen from a companion (for the idle rule).
    pub fn companion_seen(
        &mut self,
        index: DeviceIndex,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        let now = self.effective(now);
        self.change(now, |this, _| match this.devices.get_mut(&index) {
            None => Err(RegistryError::UnknownDevice(index)),
            Some(rec) => match rec.state {
                DeviceState::LoggedOut { reason, .. } => {
                    Err(RegistryError::AlreadyLoggedOut { index, reason })
                }
                _ => {
                    rec.last_seen = rec.last_seen.max(now);
                    this.touch(now);
                    Ok(())
                }
            },
        })
    }

    /// Saves the registry (versioned JSON). Holds the account's secret key.
    pub fn save(&self) -> Result<Vec<u8>, PersistError> {
        crate::persist::save("account", self)
    }

    /// Restores a registry saved by [`Account::save`]; it behaves exactly as
    /// the saved one would have (and signs the same lists). Corrupted input
    /// gives a typed error.
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
        if !pending_ok
            || a.list.at > a.last_primary_activity
            || a.last_primary_activity > a.clock
            || a.next_index == 0
        {
            return Err(PersistError::Inconsistent("device deadlines or list time"));
        }
        let hash = SignedDeviceList::unsigned(a.account_id, &a.current_draft(), a.list.at).hash();
        if hash != a.list.hash {
            return Err(PersistError::Inconsistent("device list content"));
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
        a.open_link_intent(later);
        a.scan(&offer, &mut rng, later).unwrap();
        assert_eq!(a.last_primary_activity(), t0);
        a.admit_without_handshake(d, label(), TokenId([1; 16]), later)
            .unwrap();
        assert_eq!(a.last_primary_activity(), later);
        assert_eq!(a.device_list().issued_at(), later);
    }
}
