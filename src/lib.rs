//! # devicelink
//!
//! Link companion devices (browsers, desktops) to an account by scanning a QR
//! code, the way a phone links browsers to a messaging account:
//!
//! - a **one-time pairing offer** ([`PairingOffer`]): 88 characters of the QR
//!   alphanumeric set, QR version 4 at level M, rotating while shown
//!   ([`offer::OfferDisplay`]) and redeemable once ([`relay::Ledger`]);
//! - a **per-device key exchange** ([`handshake`]): X25519, HKDF-SHA256 keys
//!   bound to the QR secret and the transcript, ChaCha20-Poly1305, and a
//!   [`DeviceCertificate`]: the device's entry in the account's Ed25519-signed
//!   device list, so each companion holds its own keys ([`LinkedSession`]) and
//!   works without the phone. Two signatures and two verifications per link;
//! - **phishing-resistant linking**: a scan starts a link only under a
//!   short-lived link intent opened from the host's own "Link a device"
//!   screen ([`Account::open_link_intent`]), and the phone's prompt
//!   ([`LinkRequest::prompt`]) says what approving does;
//! - **linking by typed code** when the camera cannot scan ([`code`]): the
//!   companion shows `HHHH-CCCC-CCCC` (a relay-issued handle and a 40-bit
//!   code), the phone types it, SPAKE2 with key confirmation both ways
//!   feeds the same Request → Grant → Confirm; one guess per attempt, none
//!   offline, and the relay locks guessers out ([`relay::CodeAttempts`]);
//! - the **four-companion limit** and the **14-day primary-offline expiry**
//!   ([`Account`], [`Policy`]), revocation, and a signed device list that
//!   chains from version to version and that heartbeats name, so a relay
//!   can neither hide a revocation nor replay a fork;
//! - all as **sans-IO state machines**: time ([`Timestamp`]) and randomness
//!   (any `rand_core` 0.6 `CryptoRng`) are inputs; nothing reads a clock;
//! - around them: the relay's side ([`relay::Ledger`] for exactly-once tokens,
//!   [`relay::Directory`] for many accounts' leases), a hash-chained signed
//!   audit trail ([`audit::AuditLog`]), versioned persistence of every state
//!   ([`persist`]), QR rendering ([`qr`]) and a deterministic lifecycle
//!   simulator for test suites ([`sim`]).
//!
//! ## The whole flow
//!
//! ```
//! use devicelink::{Account, Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
//! use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Seeded RNG and a virtual clock: the same run every time. In production,
//! // use `rand_core::OsRng` and `Timestamp::now_from_system()`.
//! let mut rng = ChaCha20Rng::seed_from_u64(42);
//! let now = Timestamp::from_unix_millis(1_700_000_000_000);
//! let policy = Policy::default();
//!
//! // The phone holds the account.
//! let mut account = Account::generate(policy.clone(), &mut rng, now);
//!
//! // The new device shows an offer as a QR code.
//! let identity = DeviceIdentity::generate(&mut rng);
//! let label = DeviceLabel::new("Firefox on Linux")?;
//! let mut companion = Companion::new(identity, label, &policy, &mut rng, now);
//! let qr_text = companion.offer().expect("showing").to_text();
//! assert!(qr_text.starts_with("DL:") && qr_text.len() == 88);
//! let qr = devicelink::qr::OfferQr::new(&qr_text)?;
//! assert!(qr.version() <= 4);
//!
//! // The user opens "Link a device" on the phone, which scans the code and
//! // answers with a Hello (via the relay). Without the intent, a scan fails.
//! account.open_link_intent(now);
//! let (mut primary, hello) = account.scan(&qr_text, &mut rng, now)?;
//! // The companion answers with its identity key and label, encrypted.
//! let request = companion.receive_hello(&hello, &mut rng, now)?;
//! // The phone shows who is asking and the check code; the user approves.
//! let asking = account.receive_request(&mut primary, &request, &mut rng, now)?;
//! assert_eq!(asking.label.as_str(), "Firefox on Linux");
//! assert!(asking.prompt().contains("read and send messages as you"));
//! let grant = account.grant(&mut primary, &mut rng, now)?;
//! // The companion verifies its certificate and shows its own user which
//! // account it would join and the same six-digit check code.
//! let join = companion.receive_grant(&grant, now)?;
//! assert_eq!(join.account, account.account_id());
//! assert_eq!(join.check_code, asking.check_code);
//! // Only when that user agrees does the Confirm leave.
//! let confirm = companion.consent(now)?;
//! let link = account.confirm(&mut primary, &confirm, now)?;
//!
//! let session = companion.session().expect("linked");
//! assert_eq!(session.index(), link.certificate.index());
//! assert_eq!(session.account(), account.account_id());
//! assert!(session.is_linked(now));
//! assert_eq!(account.companion_count(now), 1);
//!
//! // The phone proves it is alive; the heartbeat names the device list, so a
//! // companion extends its lease only if it holds that list.
//! let later = now.saturating_add(devicelink::time::days(3));
//! let wire = account.heartbeat(later).to_bytes();
//! // The companion's host decodes what arrives (the signature is checked
//! // here: every consumer takes verified values, never raw bytes).
//! let heartbeat = devicelink::PrimaryHeartbeat::from_bytes(&wire)?;
//! let mut session = companion.into_session().expect("linked");
//! session.accept_heartbeat(&heartbeat, later)?;
//! assert_eq!(session.expires_at(), later.saturating_add(policy.primary_offline_limit()));
//! # Ok(())
//! # }
//! ```
//!
//! The crate's `README.md` has the commands, and `docs/PROTOCOL.md` the wire
//! format, the key schedule and the security argument.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod audit;
pub mod certificate;
pub mod code;
mod encoding;
pub mod error;
mod facts;
pub mod handshake;
pub mod host;
pub mod keys;
pub mod label;
pub mod offer;
pub mod persist;
pub mod policy;
pub mod qr;
pub mod registry;
pub mod relay;
pub mod session;
pub mod sim;
pub mod time;
mod wire;

pub use audit::{AuditAnchor, AuditError, AuditLog, AuditReport, SignedAnchor};
pub use certificate::{
    CertificateError, DeviceCertificate, DeviceIndex, DeviceListDraft, DeviceListEntry,
    PrimaryHeartbeat, RemovedDevice, SignedDeviceList,
};
pub use code::{CodeCompanion, CodeEntry, CodeFailure, CodeHandle, LinkCode, TypedCode};
pub use error::ErrorKind;
pub use handshake::{
    CheckCode, Companion, CompanionEvent, CompanionState, ConfirmedLink, FailureReason,
    HandshakeError, JoinPrompt, LinkRequest, MessageHeader, MessageKind, PrimaryHandshake,
    PrimaryState, RefusalReason,
};
pub use host::{
    Device, DeviceError, DeviceEvent, DeviceFailure, Output, Phone, PhoneError, PhoneEvent,
};
pub use keys::{AccountId, AccountKey, DeviceIdentity, DeviceKey, DeviceSigner};
pub use label::{DeviceLabel, DeviceLabelError, ObservedContext};
pub use offer::{OfferDisplay, OfferError, OfferState, PairingOffer, TokenError, TokenId};
pub use persist::PersistError;
pub use policy::{Policy, PolicyError};
pub use registry::{Account, DeviceState, RegistryError, RegistryEvent};
pub use relay::{
    ClientId, CodeRendezvous, Directory, DirectoryError, HelloDigest, Ledger, LedgerConfig,
    LedgerError, Routed, SubscriptionProof, TokenStore, Transition,
};
pub use session::{
    DeviceLeft, DeviceListChange, LinkedSession, LogoutReason, SessionError, SessionStatus,
};
pub use time::Timestamp;
