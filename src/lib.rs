//! devicelink (work in progress)
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod certificate;
mod encoding;
pub mod handshake;
pub mod keys;
pub mod offer;
pub mod policy;
pub mod qr;
pub mod session;
pub mod time;
mod wire;

pub use certificate::{DeviceCertificate, DeviceIndex, PrimaryHeartbeat, SignedDeviceList};
pub use handshake::{Companion, DeviceLabel, HandshakeError, PrimaryHandshake};
pub use keys::{AccountId, AccountKey, DeviceIdentity, DeviceKey};
pub use offer::{PairingOffer, TokenId};
pub use policy::Policy;
pub use session::LinkedSession;
pub use time::Timestamp;
