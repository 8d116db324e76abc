//! The simulator's event log: [`SimEvent`], its kinds and its canonical form.

use std::fmt::{self, Write as _};

use crate::certificate::DeviceIndex;
use crate::facts::LogoutReason;
use crate::time::Timestamp;

use super::behaviour::DAY_MS;
use super::SIM_START;

/// One entry of the event log: which account, when, and what happened.
///
/// `companion` numbers are the simulator's own names for an account's
/// companion devices (0, 1, 2, … in order of first appearance; a device keeps
/// its number across re-pairs), while `index` is the [`DeviceIndex`] the
/// registry assigned to one link of that device (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEvent {
    /// The account number, from 0.
    pub account: u64,
    /// When (virtual time; the run starts at [`SIM_START`]).
    pub at: Timestamp,
    /// What happened.
    pub what: What,
}

/// Why the primary refused a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No free slot for this device's key: its Request was answered with an
    /// authenticated `DeviceLimitReached` refusal
    /// ([`RegistryError::Refused`](crate::RegistryError::Refused)).
    DeviceLimitReached,
    /// The user declined on the phone.
    Declined,
}

/// What happened (the event's payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A companion shows a fresh pairing offer (attempt 1, or a reload).
    OfferShown {
        /// The companion.
        companion: u32,
        /// 1 for the first offer, then 2, 3 for reloads.
        attempt: u32,
    },
    /// The offer on screen rotated (the display's rotation number).
    OfferRotated {
        /// The companion.
        companion: u32,
        /// The new rotation (1, 2, …).
        rotation: u32,
    },
    /// The display used up its rotations unscanned: the user must reload.
    OfferTimedOut {
        /// The companion.
        companion: u32,
    },
    /// The primary scanned the offer on screen.
    Scanned {
        /// The companion.
        companion: u32,
        /// The rotation the scanned offer belonged to.
        rotation: u32,
    },
    /// The primary refused the link.
    Refused {
        /// The companion.
        companion: u32,
        /// Why.
        reason: Refusal,
    },
    /// A second companion was scanned at the same instant while exactly one
    /// slot was free. Followed at once by one [`What::Granted`] (the winner)
    /// and one [`What::RaceLost`].
    RaceStarted {
        /// The companion scanned first.
        companion: u32,
        /// The other one.
        rival: u32,
    },
    /// The registry granted a link: the slot is pending.
    Granted {
        /// The companion.
        companion: u32,
        /// Its new index.
        index: DeviceIndex,
    },
    /// The loser of a race: its grant was refused with
    /// [`RegistryError::DeviceLimitReached`](crate::RegistryError::DeviceLimitReached).
    RaceLost {
        /// The companion.
        companion: u32,
    },
    /// The companion confirmed: the slot is active.
    Linked {
        /// The companion.
        companion: u32,
        /// Its index.
        index: DeviceIndex,
    },
    /// The primary recorded activity (a signed heartbeat in full-crypto mode).
    Heartbeat,
    /// The primary goes quiet (no activity at all) until `until`.
    PrimaryQuiet {
        /// When it comes back.
        until: Timestamp,
    },
    /// The primary is back.
    PrimaryBack,
    /// The registry logged a device out (revoked, expired or replaced).
    LoggedOut {
        /// The companion.
        companion: u32,
        /// The index that was logged out.
        index: DeviceIndex,
        /// Why.
        reason: LogoutReason,
    },
}

/// The kind of an event, for counting: one per [`What`] variant, with
/// refusals and logouts split by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// [`What::OfferShown`].
    OfferShown,
    /// [`What::OfferRotated`].
    OfferRotated,
    /// [`What::OfferTimedOut`].
    OfferTimedOut,
    /// [`What::Scanned`].
    Scanned,
    /// [`What::Refused`] with [`Refusal::DeviceLimitReached`].
    RefusedDeviceLimit,
    /// [`What::Refused`] with [`Refusal::Declined`].
    RefusedDeclined,
    /// [`What::RaceStarted`].
    RaceStarted,
    /// [`What::Granted`].
    Granted,
    /// [`What::RaceLost`].
    RaceLost,
    /// [`What::Linked`].
    Linked,
    /// [`What::Heartbeat`].
    Heartbeat,
    /// [`What::PrimaryQuiet`].
    PrimaryQuiet,
    /// [`What::PrimaryBack`].
    PrimaryBack,
    /// [`What::LoggedOut`] with [`LogoutReason::Revoked`].
    LoggedOutRevoked,
    /// [`What::LoggedOut`] with [`LogoutReason::PrimaryOffline`].
    LoggedOutPrimaryOffline,
    /// [`What::LoggedOut`] with [`LogoutReason::CompanionIdle`].
    LoggedOutIdle,
    /// [`What::LoggedOut`] with [`LogoutReason::ConfirmationTimedOut`].
    LoggedOutConfirmationTimedOut,
    /// [`What::LoggedOut`] with [`LogoutReason::Replaced`].
    LoggedOutReplaced,
}

impl EventKind {
    /// Every kind, in this order (the order of [`EventCounts::iter`]).
    pub const ALL: [EventKind; 18] = [
        EventKind::OfferShown,
        EventKind::OfferRotated,
        EventKind::OfferTimedOut,
        EventKind::Scanned,
        EventKind::RefusedDeviceLimit,
        EventKind::RefusedDeclined,
        EventKind::RaceStarted,
        EventKind::Granted,
        EventKind::RaceLost,
        EventKind::Linked,
        EventKind::Heartbeat,
        EventKind::PrimaryQuiet,
        EventKind::PrimaryBack,
        EventKind::LoggedOutRevoked,
        EventKind::LoggedOutPrimaryOffline,
        EventKind::LoggedOutIdle,
        EventKind::LoggedOutConfirmationTimedOut,
        EventKind::LoggedOutReplaced,
    ];

    /// The kind's name in the canonical log (`snake_case`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::OfferShown => "offer_shown",
            EventKind::OfferRotated => "offer_rotated",
            EventKind::OfferTimedOut => "offer_timed_out",
            EventKind::Scanned => "scanned",
            EventKind::RefusedDeviceLimit => "refused_device_limit",
            EventKind::RefusedDeclined => "refused_declined",
            EventKind::RaceStarted => "race_started",
            EventKind::Granted => "granted",
            EventKind::RaceLost => "race_lost",
            EventKind::Linked => "linked",
            EventKind::Heartbeat => "heartbeat",
            EventKind::PrimaryQuiet => "primary_quiet",
            EventKind::PrimaryBack => "primary_back",
            EventKind::LoggedOutRevoked => "logged_out_revoked",
            EventKind::LoggedOutPrimaryOffline => "logged_out_primary_offline",
            EventKind::LoggedOutIdle => "logged_out_idle",
            EventKind::LoggedOutConfirmationTimedOut => "logged_out_confirmation_timed_out",
            EventKind::LoggedOutReplaced => "logged_out_replaced",
        }
    }

    fn position(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl What {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            What::OfferShown { .. } => EventKind::OfferShown,
            What::OfferRotated { .. } => EventKind::OfferRotated,
            What::OfferTimedOut { .. } => EventKind::OfferTimedOut,
            What::Scanned { .. } => EventKind::Scanned,
            What::Refused {
                reason: Refusal::DeviceLimitReached,
                ..
            } => EventKind::RefusedDeviceLimit,
            What::Refused {
                reason: Refusal::Declined,
                ..
            } => EventKind::RefusedDeclined,
            What::RaceStarted { .. } => EventKind::RaceStarted,
            What::Granted { .. } => EventKind::Granted,
            What::RaceLost { .. } => EventKind::RaceLost,
            What::Linked { .. } => EventKind::Linked,
            What::Heartbeat => EventKind::Heartbeat,
            What::PrimaryQuiet { .. } => EventKind::PrimaryQuiet,
            What::PrimaryBack => EventKind::PrimaryBack,
            What::LoggedOut { reason, .. } => match reason {
                LogoutReason::Revoked => EventKind::LoggedOutRevoked,
                LogoutReason::PrimaryOffline => EventKind::LoggedOutPrimaryOffline,
                LogoutReason::CompanionIdle => EventKind::LoggedOutIdle,
                LogoutReason::ConfirmationTimedOut => EventKind::LoggedOutConfirmationTimedOut,
                LogoutReason::Replaced => EventKind::LoggedOutReplaced,
            },
        }
    }

    /// The companion the event concerns, if any.
    pub fn companion(&self) -> Option<u32> {
        match *self {
            What::OfferShown { companion, .. }
            | What::OfferRotated { companion, .. }
            | What::OfferTimedOut { companion }
            | What::Scanned { companion, .. }
            | What::Refused { companion, .. }
            | What::RaceStarted { companion, .. }
            | What::Granted { companion, .. }
            | What::RaceLost { companion }
            | What::Linked { companion, .. }
            | What::LoggedOut { companion, .. } => Some(companion),
            What::Heartbeat | What::PrimaryQuiet { .. } | What::PrimaryBack => None,
        }
    }
}

impl SimEvent {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        self.what.kind()
    }

    /// Appends the event's canonical line to `out`.
    ///
    /// The canonical form is one line of ASCII per event, fields separated by
    /// one space, ending in `\n`:
    ///
    /// ```text
    /// <account> <at> <kind> [<field> ...]
    /// ```
    ///
    /// `account` and `at` (Unix milliseconds) are decimal, `kind` is
    /// [`EventKind::name`], and the fields follow the variant's order in
    /// [`What`], decimal: `offer_shown <companion> <attempt>`,
    /// `offer_rotated <companion> <rotation>`, `offer_timed_out <companion>`,
    /// `scanned <companion> <rotation>`, `refused_* <companion>`,
    /// `race_started <companion> <rival>`, `granted <companion> <index>`,
    /// `race_lost <companion>`, `linked <companion> <index>`, `heartbeat`,
    /// `primary_quiet <until>`, `primary_back`, `logged_out_* <companion>
    /// <index>`. For example `17 1700003600000 linked 2 5`.
    ///
    /// The event log of a run is the concatenation of its events' lines, in
    /// log order; [`SimReport::digest`](super::SimReport::digest) is its
    /// SHA-256.
    pub fn write_canonical(&self, out: &mut String) {
        let _ = write!(
            out,
            "{} {} {}",
            self.account,
            self.at.as_unix_millis(),
            self.kind().name()
        );
        let _ = match self.what {
            What::OfferShown { companion, attempt } => write!(out, " {companion} {attempt}"),
            What::OfferRotated {
                companion,
                rotation,
            }
            | What::Scanned {
                companion,
                rotation,
            } => write!(out, " {companion} {rotation}"),
            What::OfferTimedOut { companion }
            | What::Refused { companion, .. }
            | What::RaceLost { companion } => write!(out, " {companion}"),
            What::RaceStarted { companion, rival } => write!(out, " {companion} {rival}"),
            What::Granted { companion, index }
            | What::Linked { companion, index }
            | What::LoggedOut {
                companion, index, ..
            } => write!(out, " {companion} {}", index.0),
            What::PrimaryQuiet { until } => write!(out, " {}", until.as_unix_millis()),
            What::Heartbeat | What::PrimaryBack => Ok(()),
        };
        out.push('\n');
    }

    /// The event's canonical line (see [`SimEvent::write_canonical`]).
    pub fn canonical_line(&self) -> String {
        let mut s = String::with_capacity(48);
        self.write_canonical(&mut s);
        s
    }
}

/// A virtual instant as `day D hh:mm:ss.mmm` since [`SIM_START`].
pub fn day_clock(at: Timestamp) -> String {
    let ms = at
        .as_unix_millis()
        .saturating_sub(SIM_START.as_unix_millis());
    let (d, rest) = (ms / DAY_MS, ms % DAY_MS);
    format!(
        "day {d} {:02}:{:02}:{:02}.{:03}",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// For people: `account 17, day 0 01:00:00.000: companion 2 linked as device 5`.
impl fmt::Display for SimEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account {}, {}: ", self.account, day_clock(self.at))?;
        match self.what {
            What::OfferShown { companion, attempt } => {
                write!(
                    f,
                    "companion {companion} shows an offer (attempt {attempt})"
                )
            }
            What::OfferRotated {
                companion,
                rotation,
            } => write!(f, "companion {companion}'s offer rotated ({rotation})"),
            What::OfferTimedOut { companion } => {
                write!(f, "companion {companion}'s offer timed out; reload needed")
            }
            What::Scanned {
                companion,
                rotation,
            } => write!(
                f,
                "primary scanned companion {companion}'s offer (rotation {rotation})"
            ),
            What::Refused { companion, reason } => match reason {
                Refusal::DeviceLimitReached => {
                    write!(f, "companion {companion} refused: device limit reached")
                }
                Refusal::Declined => write!(f, "companion {companion} refused: user declined"),
            },
            What::RaceStarted { companion, rival } => write!(
                f,
                "companions {companion} and {rival} race for the last slot"
            ),
            What::Granted { companion, index } => {
                write!(
                    f,
                    "companion {companion} granted as device {index} (pending)"
                )
            }
            What::RaceLost { companion } => {
                write!(
                    f,
                    "companion {companion} lost the race: device limit reached"
                )
            }
            What::Linked { companion, index } => {
                write!(f, "companion {companion} linked as device {index}")
            }
            What::Heartbeat => f.write_str("primary heartbeat"),
            What::PrimaryQuiet { until } => {
                write!(f, "primary goes quiet until {}", day_clock(until))
            }
            What::PrimaryBack => f.write_str("primary is back"),
            What::LoggedOut {
                companion,
                index,
                reason,
            } => write!(
                f,
                "companion {companion} (device {index}) logged out: {reason}"
            ),
        }
    }
}

/// How many events of each kind a run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounts([u64; EventKind::ALL.len()]);

impl EventCounts {
    /// The count of one kind.
    pub fn get(&self, kind: EventKind) -> u64 {
        self.0.get(kind.position()).copied().unwrap_or(0)
    }

    /// Every kind with its count, in [`EventKind::ALL`] order (zeros included).
    pub fn iter(&self) -> impl Iterator<Item = (EventKind, u64)> + '_ {
        EventKind::ALL.iter().map(|k| (*k, self.get(*k)))
    }

    /// All events.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn add(&mut self, kind: EventKind) {
        if let Some(c) = self.0.get_mut(kind.position()) {
            *c += 1;
        }
    }

    pub(crate) fn merge(&mut self, other: &EventCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += *b;
        }
    }
}
