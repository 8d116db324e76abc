//! The devicelink relay: the I/O shell around the sans-IO `devicelink` core,
//! the way `quinn` wraps `quinn-proto`.
//!
//! The core decides every rule (exactly-once redemption in
//! [`devicelink::relay::Ledger`], leases, limits and forks in
//! [`devicelink::relay::Directory`]); this crate carries bytes and makes the
//! core's decisions durable:
//!
//! - [`frame`]: the small binary envelope the WebSocket transport carries
//!   (`docs/RELAY.md`), decoded totally with every size checked before
//!   anything is copied.
//! - [`store`]: the [`Store`] trait (the core's
//!   [`TokenStore`](devicelink::relay::TokenStore) plus the accounts' signed
//!   facts) with an in-memory and a SQLite implementation, and
//!   [`AccountDirectory`], which applies signed facts through the core's
//!   [`Directory`](devicelink::relay::Directory) and persists what it decided.
//!
//! - [`server`]: the network transport, an axum router with the WebSocket
//!   endpoints (`docs/RELAY.md`), one task per connection, bounded queues,
//!   a connection limit, rate limits, a sweeper and a graceful shutdown.
//! - [`code_frame`] and the `/v1/code` endpoint: linking by typed code
//!   through the core's [`CodeRendezvous`](devicelink::relay::CodeRendezvous).
//! - [`client`]: thin async clients (companion, primary) over
//!   `tokio-tungstenite` that move bytes between the relay and the core's
//!   state machines.
//!
//! The store is synchronous, like the core's `TokenStore`: the server calls
//! it from `tokio::task::spawn_blocking`.
//!
//! ```
//! use devicelink::relay::{ClientId, Ledger, LedgerConfig, SourceKey};
//! use devicelink::Timestamp;
//! use devicelink_relay::store::MemoryStore;
//!
//! let ledger = Ledger::new(MemoryStore::new(), LedgerConfig::default());
//! let token = devicelink::TokenId::from_bytes([7; 16]);
//! let now = Timestamp::from_unix_millis(1_700_000_000_000);
//! let source = SourceKey::LOCAL; // the budgets' key of the client's address
//! ledger.register(ClientId::from(1), source, token, now.saturating_add_millis(60_000), now)?;
//! # Ok::<(), devicelink::LedgerError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "client")]
pub mod client;
pub mod code_frame;
pub mod codes;
pub mod frame;
pub mod identity;
#[cfg(feature = "proxy-protocol")]
pub mod proxy_header;
#[cfg(feature = "server")]
pub mod server;
pub mod store;

pub use frame::{Frame, FrameError, FrameType, MAX_FRAME_LEN};
pub use identity::ClientSecret;
pub use store::{AccountDirectory, AccountRecord, MemoryStore, Store, StoreError};

#[cfg(feature = "sqlite")]
pub use store::SqliteStore;

#[cfg(feature = "postgres")]
pub use store::PgStore;
