//! The relay (server side): untrusted for secrecy, trusted only to route and
//! to count. It sees token ids, message headers and signed facts, never a key.
//!
//! - [`Ledger`] enforces that each pairing token is redeemed **exactly once**,
//!   in two phases (a Hello reserves, the companion's Request redeems, a
//!   refused Hello is released), with per-client quotas and a clock that
//!   never runs backwards, behind the [`TokenStore`] trait so a durable store
//!   can take the place of the in-memory [`MemoryTokenStore`].
//! - [`Directory`] keeps many accounts' device leases from signed facts and
//!   sweeps expiries in time proportional to what expired.
//! - [`CodeRendezvous`] issues handles for linking by typed code, routes
//!   those sessions and counts failures ([`CodeAttempts`]: lockouts with
//!   backoff per joining client, source and account).
//! - [`Budget`] is the one rule that bounds what a client, a network
//!   source ([`SourceKey`]) and everyone together may make the relay hold
//!   (tokens and their tombstones, code sessions, and the relay crate's
//!   connections, mailboxes and sessions).

mod budget;
mod code;
mod directory;
mod ledger;
mod subscription;

pub use budget::{Budget, BudgetScope, Held, OverBudget, SourceKey};
pub use code::{
    AttemptKey, CodeAttempts, CodeRelayConfig, CodeRelayError, CodeRendezvous, CodeRouted,
    CodeSpent, LockoutPolicy, WrongCodeReported,
};
pub use directory::{
    AccountFacts, DeviceLogout, Directory, DirectoryError, FactsError, ListApplied,
};
pub use ledger::{
    ClientId, HelloDigest, Ledger, LedgerConfig, LedgerError, MemoryTokenStore, Routed,
    TokenRecord, TokenState, TokenStore, Transition, DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS_PER_CLIENT, DEFAULT_MAX_TOKENS_PER_SOURCE, DEFAULT_RESERVE_WINDOW,
    DEFAULT_SESSION_WINDOW,
};
pub use subscription::{
    AccountProof, BadSubscriptionProof, SubscriptionProof, SUBSCRIPTION_PROOF_LEN,
};
