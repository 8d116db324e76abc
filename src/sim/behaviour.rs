//! What the simulated people do, and how often.
//!
//! Every probability is in basis points (1/10 000) and is drawn from the
//! account's own behaviour RNG, in a fixed order, so a run depends only on
//! its [`SimConfig`](super::SimConfig). Times within a day are uniform over
//! the day's milliseconds.
//!
//! | When | What | Chance |
//! |---|---|---|
//! | day 0 | the user starts linking 1–3 new companions (first 12 hours) | always |
//! | each day the primary is online | it goes quiet (see [`QUIET_SHORT_BP`]) | [`QUIET_BP`] |
//! | each day the primary is online, a slot free | someone starts linking a new companion | [`LINK_BP`] |
//! | each day the primary is online, no slot free | someone tries anyway (refused) | [`LINK_FULL_BP`] |
//! | each day, per active companion | the primary revokes it | [`REVOKE_BP`] |
//! | each day, per active companion | it re-pairs with the same identity key (its old record is *replaced*) | [`REPLACE_BP`] |
//! | each day, per active companion | it is used (`Account::companion_seen`) | by usage: [`SEEN_DAILY_BP`], [`SEEN_OCCASIONAL_BP`], 0 for dormant |
//! | a new companion | its usage is daily / occasional / dormant | [`USAGE_DAILY_BP`] / [`USAGE_OCCASIONAL_BP`] / the rest |
//! | an offer is shown | nobody scans it: it rotates until the display times out | [`NEVER_SCANNED_BP`] |
//! | an offer is scanned | during rotation *k* (weights [`SCAN_ROTATION_WEIGHTS`]), at a uniform instant of that offer's lifetime | — |
//! | the display timed out | the user reloads it 5–60 s later (at most [`MAX_ATTEMPTS`] offers) | [`RELOAD_BP`] |
//! | a scan finds no free slot | refused; the user revokes the oldest companion 30–180 s later and links again 10–60 s after that | [`FREE_SLOT_BP`] |
//! | a scan finds exactly one free slot | a second new companion is scanned at the same instant: a race for the slot | [`RACE_BP`] |
//! | a scan finds a free slot (no race) | the user declines on the phone | [`DECLINE_BP`] |
//! | a grant is sent | it never reaches the companion: the pending slot times out | [`NO_CONFIRM_BP`] |
//! | a pending slot was lost that way | the user tries again 5–30 min later | [`RETRY_BP`] |
//! | otherwise | the companion confirms 0.2–3 s after the grant | — |
//! | the primary comes back after its companions were logged out for inactivity | each re-pairs within 3 days | [`REPAIR_BP`] |
//!
//! A race's winner is a fair coin. Quiet spells: [`QUIET_SHORT_BP`] are short
//! (7–43 % of the offline limit: 1–6 days by default), [`QUIET_MEDIUM_BP`]
//! medium (43–97 %: 6–13.6 days), the rest long (101–180 %: 14.1–25.2 days),
//! which logs every companion out with `PrimaryOffline`.
//!
//! **Heartbeats.** The phone is in use on every day it is online; the
//! simulator records that use as a heartbeat (`Account::heartbeat`, signed in
//! full-crypto mode) only when it decides a lease. Companions are then logged out exactly when
//! daily heartbeats would log them out (never while the phone is online; one
//! offline limit after it goes quiet for longer than that), for a fraction of
//! the signatures. While at least one companion holds a slot, the primary
//! sends one:
//! - at a random instant of a day it is online, if its last recorded
//!   activity (heartbeat, grant or revocation) is by then at least the
//!   offline limit minus two days old ([`HEARTBEAT_MARGIN_MS`]);
//! - at the instant it goes quiet, if the quiet spell would outlast the lease
//!   (so a long spell logs companions out exactly one offline limit after the
//!   phone went quiet);
//! - at the instant it comes back, if the lease ends within two days.
//!
//! (A scan is not primary activity; grants and revocations are.)
//!
//! The rule assumes an offline limit of more than two days (the daily
//! check must come before the lease ends).

use rand_chacha::rand_core::RngCore;

/// Basis points: chances are out of this.
pub const BASIS: u32 = 10_000;

/// Chance, per online day, that the primary goes quiet.
pub const QUIET_BP: u32 = 250;
/// Share of quiet spells that are short (well within the offline limit).
pub const QUIET_SHORT_BP: u32 = 5_500;
/// Share of quiet spells that are medium (almost the offline limit).
pub const QUIET_MEDIUM_BP: u32 = 2_000;

/// Chance, per online day with a free slot, that a new companion is linked.
pub const LINK_BP: u32 = 450;
/// Chance, per online day without a free slot, that a new companion tries.
pub const LINK_FULL_BP: u32 = 200;
/// Chance, per day and active companion, that the primary revokes it.
pub const REVOKE_BP: u32 = 80;
/// Chance, per day and active companion, that it re-pairs with its own key.
pub const REPLACE_BP: u32 = 30;

/// Share of companions used daily.
pub const USAGE_DAILY_BP: u32 = 7_000;
/// Share of companions used occasionally (the rest are dormant: never used
/// after linking, so the idle rule logs them out).
pub const USAGE_OCCASIONAL_BP: u32 = 2_500;
/// Chance, per day, that a daily companion is seen.
pub const SEEN_DAILY_BP: u32 = 6_000;
/// Chance, per day, that an occasional companion is seen.
pub const SEEN_OCCASIONAL_BP: u32 = 300;

/// Chance that a shown offer is never scanned.
pub const NEVER_SCANNED_BP: u32 = 1_500;
/// Relative weights of the rotation during which a scanned offer is scanned
/// (rotation 0 is the first offer); rotations beyond the policy's
/// `max_rotations` are not drawn.
pub const SCAN_ROTATION_WEIGHTS: [u32; 6] = [5_500, 2_000, 1_000, 700, 500, 300];
/// Chance that the user reloads a timed-out display.
pub const RELOAD_BP: u32 = 6_000;
/// Most offers shown in one go (the first and the reloads).
pub const MAX_ATTEMPTS: u32 = 3;
/// Chance that a user refused for lack of a slot frees one and retries.
pub const FREE_SLOT_BP: u32 = 5_000;
/// Chance of a race when exactly one slot is free at a scan.
pub const RACE_BP: u32 = 4_000;
/// Chance that the user declines a link on the phone.
pub const DECLINE_BP: u32 = 300;
/// Chance that a grant never reaches its companion.
pub const NO_CONFIRM_BP: u32 = 400;
/// Chance that the user tries again after a lost grant.
pub const RETRY_BP: u32 = 7_000;
/// Chance that a companion logged out for primary inactivity re-pairs.
pub const REPAIR_BP: u32 = 7_000;

/// A primary's daily heartbeat is due once its last activity is this close
/// to the offline limit (two days).
pub const HEARTBEAT_MARGIN_MS: u64 = 2 * DAY_MS;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// A uniform draw in `0..n` (0 when `n` is 0), by multiply-shift: exact
/// integer arithmetic, so every platform draws the same.
pub(crate) fn below<R: RngCore>(rng: &mut R, n: u64) -> u64 {
    let wide = u128::from(rng.next_u64()) * u128::from(n);
    u64::try_from(wide >> 64).unwrap_or(0)
}

/// A uniform draw in `lo..hi` (`lo` when empty).
pub(crate) fn between<R: RngCore>(rng: &mut R, lo: u64, hi: u64) -> u64 {
    lo.saturating_add(below(rng, hi.saturating_sub(lo)))
}

/// True with probability `bp / BASIS`.
pub(crate) fn chance<R: RngCore>(rng: &mut R, bp: u32) -> bool {
    below(rng, u64::from(BASIS)) < u64::from(bp)
}

/// An index drawn with the given weights (the first `n` of them).
pub(crate) fn weighted<R: RngCore>(rng: &mut R, weights: &[u32], n: usize) -> usize {
    let weights = weights.get(..n.min(weights.len())).unwrap_or(&[]);
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let mut x = below(rng, total);
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}
