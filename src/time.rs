//! Time as an input: the crate never reads a clock.
//!
//! Every operation that depends on time takes `now: Timestamp`. A host passes
//! the wall clock (`Timestamp::now_from_system` is a convenience for hosts,
//! never called inside the crate); tests and simulations pass a virtual clock.
//! Durations are [`std::time::Duration`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch (UTC).
///
/// Arithmetic saturates, so a hostile or broken clock can never make the
/// crate panic or overflow.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The largest representable instant ("never").
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_unix_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Reads the system clock. For hosts only: nothing in this crate calls it.
    /// A clock set before 1970 reads as the epoch.
    pub fn now_from_system() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(duration_millis)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        self.saturating_add_millis(duration_millis(d))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        self.saturating_sub_millis(duration_millis(d))
    }

    /// `self + ms` milliseconds, saturating at [`Timestamp::MAX`].
    pub const fn saturating_add_millis(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - ms` milliseconds, saturating at the epoch.
    pub const fn saturating_sub_millis(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later
    /// (a clock that went backwards).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `n` days as a [`Duration`].
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::MAX.saturating_add(days(1)), Timestamp::MAX);
        assert_eq!(Timestamp::EPOCH.saturating_sub(days(1)), Timestamp::EPOCH);
        let t = Timestamp::from_unix_millis(1_000);
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_unix_millis(2_000)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_unix_millis(2_500).saturating_duration_since(t),
            Duration::from_millis(1_500)
        );
        assert_eq!(t.saturating_add(Duration::MAX), Timestamp::MAX);
    }
}
