//! Limits and lifetimes: every number the lifecycle obeys, as one validated
//! value. Defaults follow the best-known system of this kind.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::days;

/// Why a [`Policy`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A limit or lifetime that must be positive was zero.
    #[error("policy value `{field}` must be greater than zero")]
    Zero {
        /// The offending field.
        field: &'static str,
    },
    /// `max_companions` above what a signed device list can carry.
    #[error("max_companions {value} exceeds the maximum of {max}")]
    TooManyCompanions {
        /// The requested value.
        value: u32,
        /// The largest allowed value.
        max: u32,
    },
    /// `warn_before` must leave time before the logout.
    #[error("warn_before must be shorter than primary_offline_limit")]
    WarningTooEarly,
}

/// The largest `max_companions` a policy accepts (a device list entry count is
/// one byte on the wire).
pub const MAX_COMPANIONS_LIMIT: u32 = 64;

/// Limits and lifetimes of pairing and of linked devices.
///
/// Build one with [`Policy::builder`]; [`Policy::default`] is the reference
/// behaviour: 4 companions, 14 days of primary inactivity, offers of 60 s then
/// 20 s, 5 rotations, 120 s for the user to approve, 60 s to confirm, a
/// warning 2 days before logout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyBuilder", into = "PolicyBuilder")]
pub struct Policy {
    max_companions: u32,
    primary_offline_limit: Duration,
    companion_idle_limit: Option<Duration>,
    first_offer_lifetime: Duration,
    rotated_offer_lifetime: Duration,
    max_rotations: u32,
    confirmation_timeout: Duration,
    approval_timeout: Duration,
    warn_before: Duration,
    link_intent_window: Duration,
    new_device_quarantine: Option<Duration>,
    code_lifetime: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_companions: 4,
            primary_offline_limit: days(14),
            companion_idle_limit: None,
            first_offer_lifetime: Duration::from_secs(60),
            rotated_offer_lifetime: Duration::from_secs(20),
            max_rotations: 5,
            confirmation_timeout: Duration::from_secs(60),
            approval_timeout: Duration::from_secs(120),
            warn_before: days(2),
            link_intent_window: Duration::from_secs(60),
            new_device_quarantine: None,
            code_lifetime: Duration::from_secs(180),
        }
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::from(Policy::default())
    }

    /// Companions an account may have at once, pending ones included (the
    /// primary does not count). Default 4.
    pub fn max_companions(&self) -> u32 {
        self.max_companions
    }

    /// Primary inactivity after which every companion is logged out. Default 14 days.
    pub fn primary_offline_limit(&self) -> Duration {
        self.primary_offline_limit
    }

    /// Companion inactivity after which that companion is logged out; `None`
    /// (the default) disables the rule.
    pub fn companion_idle_limit(&self) -> Option<Duration> {
        self.companion_idle_limit
    }

    /// Lifetime of the first offer shown. Default 60 s.
    pub fn first_offer_lifetime(&self) -> Duration {
        self.first_offer_lifetime
    }

    /// Lifetime of each rotated offer. Default 20 s.
    pub fn rotated_offer_lifetime(&self) -> Duration {
        self.rotated_offer_lifetime
    }

    /// Rotations before the display times out and the user must reload. Default 5.
    pub fn max_rotations(&self) -> u32 {
        self.max_rotations
    }

    /// Time a granted (pending) slot waits for the companion's confirmation
    /// before it is freed. Default 60 s.
    pub fn confirmation_timeout(&self) -> Duration {
        self.confirmation_timeout
    }

    /// Time a scanned companion waits for the primary's grant (the user reads
    /// the label and check code and approves) before it gives up. Default 120 s.
    pub fn approval_timeout(&self) -> Duration {
        self.approval_timeout
    }

    /// How long before a companion's logout its warning deadline falls. Default 2 days.
    pub fn warn_before(&self) -> Duration {
        self.warn_before
    }

    /// How long a link intent ([`crate::Account::open_link_intent`], opened
    /// from the host's "Link a device" screen) allows one scan. Default 60 s.
    pub fn link_intent_window(&self) -> Duration {
        self.link_intent_window
    }

    /// How long a newly linked device counts as recently linked
    /// ([`crate::LinkedSession::recently_linked`]), so hosts can hold back
    /// history or show it apart. `None` (the default) disables it.
    pub fn new_device_quarantine(&self) -> Option<Duration> {
        self.new_device_quarantine
    }

    /// How long a typed link code ([`crate::code::CodeCompanion`]) stays
    /// valid: it expires at exactly `shown_at + code_lifetime`. Default 3
    /// minutes.
    pub fn code_lifetime(&self) -> Duration {
        self.code_lifetime
    }
}

/// Builds a validated [`Policy`]; every setter takes the knob's new value.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct PolicyBuilder {
    #[serde(default = "d_max_companions")]
    max_companions: u32,
    #[serde(default = "d_offline", with = "millis")]
    primary_offline_limit: Duration,
    #[serde(default, with = "opt_millis")]
    companion_idle_limit: Option<Duration>,
    #[serde(default = "d_first", with = "millis")]
    first_offer_lifetime: Duration,
    #[serde(default = "d_rotated", with = "millis")]
    rotated_offer_lifetime: Duration,
    #[serde(default = "d_rotations")]
    max_rotations: u32,
    #[serde(default = "d_confirm", with = "millis")]
    confirmation_timeout: Duration,
    #[serde(default = "d_approval", with = "millis")]
    approval_timeout: Duration,
    #[serde(default = "d_warn", with = "millis")]
    warn_before: Duration,
    #[serde(default = "d_intent", with = "millis")]
    link_intent_window: Duration,
    #[serde(default, with = "opt_millis")]
    new_device_quarantine: Option<Duration>,
    #[serde(default = "d_code", with = "millis")]
    code_lifetime: Duration,
}

fn d_max_companions() -> u32 {
    Policy::default().max_companions
}
fn d_offline() -> Duration {
    Policy::default().primary_offline_limit
}
fn d_first() -> Duration {
    Policy::default().first_offer_lifetime
}
fn d_rotated() -> Duration {
    Policy::default().rotated_offer_lifetime
}
fn d_rotations() -> u32 {
    Policy::default().max_rotations
}
fn d_confirm() -> Duration {
    Policy::default().confirmation_timeout
}
fn d_approval() -> Duration {
    Policy::default().approval_timeout
}
fn d_warn() -> Duration {
    Policy::default().warn_before
}
fn d_intent() -> Duration {
    Policy::default().link_intent_window
}
fn d_code() -> Duration {
    Policy::default().code_lifetime
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::time::duration_millis(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&crate::time::duration_millis(*d)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(Duration::from_millis))
    }
}

impl From<Policy> for PolicyBuilder {
    fn from(p: Policy) -> Self {
        PolicyBuilder {
            max_companions: p.max_companions,
            primary_offline_limit: p.primary_offline_limit,
            companion_idle_limit: p.companion_idle_limit,
            first_offer_lifetime: p.first_offer_lifetime,
            rotated_offer_lifetime: p.rotated_offer_lifetime,
            max_rotations: p.max_rotations,
            confirmation_timeout: p.confirmation_timeout,
            approval_timeout: p.approval_timeout,
            warn_before: p.warn_before,
            link_intent_window: p.link_intent_window,
            new_device_quarantine: p.new_device_quarantine,
            code_lifetime: p.code_lifetime,
        }
    }
}

impl TryFrom<PolicyBuilder> for Policy {
    type Error = PolicyError;
    fn try_from(b: PolicyBuilder) -> Result<Self, PolicyError> {
        b.build()
    }
}

impl PolicyBuilder {
    /// See [`Policy::max_companions`].
    pub fn max_companions(mut self, n: u32) -> Self {
        self.max_companions = n;
        self
    }
    /// See [`Policy::primary_offline_limit`].
    pub fn primary_offline_limit(mut self, d: Duration) -> Self {
        self.primary_offline_limit = d;
        self
    }
    /// See [`Policy::companion_idle_limit`].
    pub fn companion_idle_limit(mut self, d: Option<Duration>) -> Self {
        self.companion_idle_limit = d;
        self
    }
    /// See [`Policy::first_offer_lifetime`].
    pub fn first_offer_lifetime(mut self, d: Duration) -> Self {
        self.first_offer_lifetime = d;
        self
    }
    /// See [`Policy::rotated_offer_lifetime`].
    pub fn rotated_offer_lifetime(mut self, d: Duration) -> Self {
        self.rotated_offer_lifetime = d;
        self
    }
    /// See [`Policy::max_rotations`] (zero means a single, non-rotating offer).
    pub fn max_rotations(mut self, n: u32) -> Self {
        self.max_rotations = n;
        self
    }
    /// See [`Policy::confirmation_timeout`].
    pub fn confirmation_timeout(mut self, d: Duration) -> Self {
        self.confirmation_timeout = d;
        self
    }
    /// See [`Policy::approval_timeout`].
    pub fn approval_timeout(mut self, d: Duration) -> Self {
        self.approval_timeout = d;
        self
    }
    /// See [`Policy::warn_before`].
    pub fn warn_before(mut self, d: Duration) -> Self {
        self.warn_before = d;
        self
    }
    /// See [`Policy::link_intent_window`].
    pub fn link_intent_window(mut self, d: Duration) -> Self {
        self.link_intent_window = d;
        self
    }
    /// See [`Policy::new_device_quarantine`].
    pub fn new_device_quarantine(mut self, d: Option<Duration>) -> Self {
        self.new_device_quarantine = d;
        self
    }

    /// See [`Policy::code_lifetime`].
    pub fn code_lifetime(mut self, d: Duration) -> Self {
        self.code_lifetime = d;
        self
    }

    /// Validates and returns the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        let zero = |field| Err(PolicyError::Zero { field });
        if self.max_companions == 0 {
            return zero("max_companions");
        }
        if self.max_companions > MAX_COMPANIONS_LIMIT {
            return Err(PolicyError::TooManyCompanions {
                value: self.max_companions,
                max: MAX_COMPANIONS_LIMIT,
            });
        }
        for (field, d) in [
            ("primary_offline_limit", self.primary_offline_limit),
            ("first_offer_lifetime", self.first_offer_lifetime),
            ("rotated_offer_lifetime", self.rotated_offer_lifetime),
            ("confirmation_timeout", self.confirmation_timeout),
            ("approval_timeout", self.approval_timeout),
            ("link_intent_window", self.link_intent_window),
            ("code_lifetime", self.code_lifetime),
        ] {
            if crate::time::duration_millis(d) == 0 {
                return zero(field);
            }
        }
        if self
            .companion_idle_limit
            .is_some_and(|d| crate::time::duration_millis(d) == 0)
        {
            return zero("companion_idle_limit");
        }
        if self.warn_before >= self.primary_offline_limit {
            return Err(PolicyError::WarningTooEarly);
        }
        Ok(Policy {
            max_companions: self.max_companions,
            primary_offline_limit: self.primary_offline_limit,
            companion_idle_limit: self.companion_idle_limit,
            first_offer_lifetime: self.first_offer_lifetime,
            rotated_offer_lifetime: self.rotated_offer_lifetime,
            max_rotations: self.max_rotations,
            confirmation_timeout: self.confirmation_timeout,
            approval_timeout: self.approval_timeout,
            warn_before: self.warn_before,
            link_intent_window: self.link_intent_window,
            new_device_quarantine: self.new_device_quarantine,
            code_lifetime: self.code_lifetime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_system() {
        let p = Policy::default();
        assert_eq!(p.max_companions(), 4);
        assert_eq!(p.primary_offline_limit(), Duration::from_secs(14 * 86_400));
        assert_eq!(p.first_offer_lifetime(), Duration::from_secs(60));
        assert_eq!(p.rotated_offer_lifetime(), Duration::from_secs(20));
        assert_eq!(p.max_rotations(), 5);
        assert_eq!(p.companion_idle_limit(), None);
        assert_eq!(Policy::builder().build(), Ok(p));
    }

    #[test]
    fn zero_values_are_refused() {
        assert_eq!(
            Policy::builder().max_companions(0).build(),
            Err(PolicyError::Zero {
                field: "max_companions"
            })
        );
        assert_eq!(
            Policy::builder()
                .first_offer_lifetime(Duration::ZERO)
                .build(),
            Err(PolicyError::Zero {
                field: "first_offer_lifetime"
            })
        );
        assert_eq!(
            Policy::builder()
                .companion_idle_limit(Some(Duration::from_micros(10)))
                .build(),
            Err(PolicyError::Zero {
                field: "companion_idle_limit"
            })
        );
        assert!(matches!(
            Policy::builder().max_companions(1000).build(),
            Err(PolicyError::TooManyCompanions { .. })
        ));
        assert_eq!(
            Policy::builder().warn_before(days(20)).build(),
            Err(PolicyError::WarningTooEarly)
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let p = Policy::builder().max_companions(6).build().unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
        let bad = json.replace("\"max_companions\":6", "\"max_companions\":0");
        assert!(serde_json::from_str::<Policy>(&bad).is_err());
    }
}
