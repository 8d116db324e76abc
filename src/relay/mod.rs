//! The relay (server side): untrusted for secrecy, trusted only to route and
//! to count. It sees token ids, message headers and signed facts, never a key.
//!
//! - [`Ledger`] enforces that each pairing token is redeemed **exactly once**,
//!   behind the [`TokenStore`] trait so a durable store can take the place of
//!   the in-memory [`MemoryTokenStore`].
//! - [`Directory`] keeps many accounts' device leases from signed facts and
//!   sweeps expiries in time proportional to what expired.

mod directory;
mod ledger;

pub use directory::{Directory, DirectoryError, SweptDevice};
pub use ledger::{
    Ledger, LedgerError, MemoryTokenStore, Redemption, TokenStore, DEFAULT_SESSION_WINDOW,
};
