//! Budgets: how much of one resource a client, a network source and
//! everyone together may hold, and the one rule that refuses more.
//!
//! A relay on a public address meets strangers. Every resource a stranger
//! can make it hold (a token and its tombstone, a code session, a mailbox
//! byte, a long-poll session, a connection) is counted where it is created,
//! under two keys: the [`ClientId`](super::ClientId) that asked for it and
//! the [`SourceKey`] of the network source it came from (the relay's
//! transport derives it from the client's address: an IPv4 address, an IPv6
//! prefix). Client ids cost nothing, so the source is what bounds one
//! attacker; the client key keeps one client of a shared address (an office
//! behind one NAT) from taking that address's whole share.
//!
//! Above both sits a total with a **reserve**: once everyone together holds
//! `total − reserve`, only sources in good standing (holding fewer than
//! [`Budget::good_standing`]) may take more. A few busy sources can then never
//! take it all: the last `reserve` units are kept for sources that hold
//! little, which is every genuine user.
//!
//! The rule is [`Budget::check`], pure and total; the in-memory stores apply
//! it before they write, the SQL stores express the same conditions in their
//! conditional writes and name a refusal with it (as `TokenRecord::check_*`
//! names the ledger's).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The network source a request came from, as the relay's transport keys
/// it (an IPv4 address, or an IPv6 address masked to its prefix), in 16
/// opaque bytes. The core compares keys; it never interprets them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceKey(#[serde(with = "crate::encoding::b64_array")] [u8; 16]);

impl SourceKey {
    /// The source of requests made inside the process (tests, a relay that
    /// was not told an address): all of them share this one key.
    pub const LOCAL: SourceKey = SourceKey([0; 16]);

    /// A key from 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SourceKey(bytes)
    }

    /// The key's 16 bytes.
    pub const fn to_bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Debug for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceKey({self})")
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Which part of a [`Budget`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BudgetScope {
    /// What one client holds ([`Budget::per_client`]).
    Client,
    /// What one network source holds ([`Budget::per_source`]).
    Source,
    /// What everyone holds together ([`Budget::total`]).
    Total,
    /// The reserve: everyone together holds `total − reserve`, and this
    /// source holds [`Budget::good_standing`] or more.
    Reserve,
}

/// How much of one resource a client, a source and everyone together hold
/// now (before the one being asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Units the asking client holds.
    pub client: u64,
    /// Units the asking client's source holds.
    pub source: u64,
    /// Units everyone holds.
    pub total: u64,
}

/// A refusal by a [`Budget`]: which part, and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over budget ({scope:?}, limit {limit})")]
pub struct OverBudget {
    /// Which part of the budget refused.
    pub scope: BudgetScope,
    /// That part's limit (for [`BudgetScope::Reserve`], `total − reserve`).
    pub limit: u64,
}

/// The limits of one resource. Build one with [`Budget::new`] and the
/// `with_*` adjusters; every field is public for hosts that set them from
/// flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Most units one client holds.
    pub per_client: u64,
    /// Most units one source holds.
    pub per_source: u64,
    /// Most units everyone holds together.
    pub total: u64,
    /// Units of `total` kept for sources in good standing.
    pub reserve: u64,
    /// A source holding fewer units than this is in good standing and may
    /// use the reserve.
    pub good_standing: u64,
}

impl Budget {
    /// A budget of `per_client`, `per_source` and `total` units, with a
    /// quarter of `total` kept in reserve for sources holding fewer than
    /// an eighth of `per_source` (at least one).
    pub const fn new(per_client: u64, per_source: u64, total: u64) -> Self {
        let good = per_source / 8;
        Budget {
            per_client,
            per_source,
            total,
            reserve: total / 4,
            good_standing: if good == 0 { 1 } else { good },
        }
    }

    /// No limit at all (tests, tools that count but never refuse).
    pub const fn unlimited() -> Self {
        Budget {
            per_client: u64::MAX,
            per_source: u64::MAX,
            total: u64::MAX,
            reserve: 0,
            good_standing: u64::MAX,
        }
    }

    /// The same budget with `reserve` units kept for sources holding fewer
    /// than `good_standing` units.
    pub const fn with_reserve(mut self, reserve: u64, good_standing: u64) -> Self {
        self.reserve = reserve;
        self.good_standing = good_standing;
        self
    }

    /// Where the reserve begins: `total − reserve`.
    pub const fn soft_total(&self) -> u64 {
        self.total.saturating_sub(self.reserve)
    }

    /// Whether one more unit may be created by a client and source holding
    /// `held`. Checks, in order: the client's share, the source's, the
    /// total, the reserve.
    ///
    /// # Errors
    /// [`OverBudget`] naming the part that refused.
    pub fn check(&self, held: Held) -> Result<(), OverBudget> {
        let over = |scope, limit| Err(OverBudget { scope, limit });
        if held.client >= self.per_client {
            return over(BudgetScope::Client, self.per_client);
        }
        if held.source >= self.per_source {
            return over(BudgetScope::Source, self.per_source);
        }
        if held.total >= self.total {
            return over(BudgetScope::Total, self.total);
        }
        if held.total >= self.soft_total() && held.source >= self.good_standing {
            return over(BudgetScope::Reserve, self.soft_total());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(client: u64, source: u64, total: u64) -> Held {
        Held {
            client,
            source,
            total,
        }
    }

    #[test]
    fn each_part_refuses_in_order() {
        let b = Budget::new(2, 16, 100);
        assert_eq!(b.reserve, 25);
        assert_eq!(b.good_standing, 2);
        assert_eq!(b.check(held(1, 15, 74)), Ok(()));
        let scope = |h| b.check(h).map_err(|e| (e.scope, e.limit));
        assert_eq!(scope(held(2, 16, 100)), Err((BudgetScope::Client, 2)));
        assert_eq!(scope(held(1, 16, 100)), Err((BudgetScope::Source, 16)));
        assert_eq!(scope(held(1, 15, 100)), Err((BudgetScope::Total, 100)));
        assert_eq!(scope(held(1, 2, 75)), Err((BudgetScope::Reserve, 75)));
        // A source in good standing uses the reserve, up to the total.
        assert_eq!(b.check(held(1, 1, 75)), Ok(()));
        assert_eq!(b.check(held(0, 0, 99)), Ok(()));
        assert_eq!(scope(held(0, 0, 100)), Err((BudgetScope::Total, 100)));
    }

    #[test]
    fn a_few_sources_cannot_take_the_reserve() {
        // Sources take units one by one, each as much as it may: the heavy
        // ones stop at the soft total and the reserve stays for others.
        let b = Budget::new(u64::MAX, 1000, 4000);
        let mut by_source = [0u64; 8];
        let mut total = 0;
        for _ in 0..100_000 {
            for s in &mut by_source {
                if b.check(held(0, *s, total)).is_ok() {
                    *s += 1;
                    total += 1;
                }
            }
        }
        assert!(total <= b.soft_total() + 8 * b.good_standing, "{total}");
        // A newcomer is still served.
        assert_eq!(b.check(held(0, 0, total)), Ok(()));
        assert_eq!(Budget::unlimited().check(held(9, 9, 9)), Ok(()));
    }

    #[test]
    fn source_keys_print_as_hex() {
        let k = SourceKey::from_bytes([0xab; 16]);
        assert_eq!(k.to_string(), "ab".repeat(16));
        assert_eq!(
            format!("{:?}", SourceKey::LOCAL),
            format!("SourceKey({})", "00".repeat(16))
        );
    }
}
