//! Link by typed code, for when the camera cannot scan: the companion shows
//! `HHHH-CCCC-CCCC` (the relay's handle and a 40-bit code), the user types
//! it on the phone, and the two run SPAKE2 (RustCrypto's `spake2` crate) on
//! the code, confirm the key both ways, and go on with the **same**
//! Request → Grant → Confirm as the QR flow: same keys ([`SessionKeys`]
//! shape), certificates, limit, link intent, expiry and audit.
//!
//! ```text
//! companion                              relay                              primary
//!  handle ← relay (open)                                                    user opens "Link a device"
//!  code ← 5 random bytes, seed ← 32                                         (link intent, 60 s)
//!  ── CodeOffer = hdr(6) ‖ handle ‖ m_c ──► (stores it by handle)
//!  shows HHHH-CCCC-CCCC ─────────── user types it ─────────────────────────►  parse, join(handle) ─► CodeOffer
//!                         ◄──── CodeHello = hdr(7) ‖ m_p ‖ HMAC(k_h) ──────  SPAKE2, keys
//!  SPAKE2, keys, check MAC: else WrongCode (terminal)
//!  ── CodeConfirm = hdr(8) ‖ HMAC(k_c, hdr ‖ th) ─────────────────────────►  check: else WrongCode (terminal)
//!  ── Request (as §3.3) ───────────────────────────────────────────────────►  Account::receive_request …
//!                         ◄──── Grant / Refusal (as §3.4) ─────────────────
//!  ── Confirm (as §3.6) ───────────────────────────────────────────────────►  slot active
//! ```
//!
//! An attacker who sees or controls the relay gets **one online guess per
//! attempt and nothing to test offline**: SPAKE2 reveals nothing about the
//! code to a passive observer, an active one commits to one guess per
//! message it sends, and a failed confirmation ends the code on that side
//! for good. The relay counts failures and locks out
//! ([`crate::relay::CodeAttempts`]). `docs/PROTOCOL.md` §13 has the layout,
//! the key schedule and the argument.
//!
//! [`SessionKeys`]: crate::handshake
//!
//! ```
//! use devicelink::code::{CodeCompanion, TypedCode};
//! use devicelink::relay::{ClientId, CodeRelayConfig, CodeRendezvous, SourceKey};
//! use devicelink::{Account, DeviceIdentity, DeviceLabel, Policy, Timestamp};
//! use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let now = Timestamp::from_unix_millis(1_700_000_000_000);
//! let policy = Policy::default();
//! let mut relay = CodeRendezvous::new(CodeRelayConfig::from_policy(&policy));
//! let (laptop, phone) = (ClientId::from(1), ClientId::from(2));
//! let home = SourceKey::from_bytes([1; 16]); // the network source, as the relay keys it
//! let mut account = Account::generate(policy.clone(), &mut rng, now);
//!
//! // The companion gets a handle from the relay, shows a code.
//! let (handle, _) = relay.open(laptop, home, &mut rng, now)?;
//! let mut shown = CodeCompanion::new(DeviceIdentity::generate(&mut rng),
//!     DeviceLabel::new("Firefox on Linux")?, handle, &policy, &mut rng, now);
//! relay.publish(laptop, shown.offer_message().expect("showing"), now)?;
//! let text = shown.code_text().expect("showing");     // e.g. "7KQ2-M4XZ-P9RT"
//!
//! // The user types it on the phone, from its "Link a device" screen.
//! account.open_link_intent(now);
//! let typed = TypedCode::parse(&text.to_lowercase())?;
//! let offer = relay.join(typed.handle(), phone, home, Some(account.account_id()), now)?;
//! let (mut entry, hello) = account.enter_code(&typed, &offer, &mut rng, now)?;
//! relay.route(phone, &hello, now)?;
//! let accepted = shown.receive_hello(&hello, &mut rng, now)?;
//! let mut primary = entry.receive_confirm(&accepted.confirm, now)?;
//!
//! // From here on, exactly the QR flow.
//! let mut companion = accepted.companion;
//! account.receive_request(&mut primary, &accepted.request, &mut rng, now)?;
//! let grant = account.grant(&mut primary, &mut rng, now)?;
//! companion.receive_grant(&grant, now)?;
//! let confirm = companion.consent(now)?;
//! account.confirm(&mut primary, &confirm, now)?;
//! assert_eq!(account.companion_count(now), 1);
//! # Ok(())
//! # }
//! ```

mod companion;
mod messages;
mod primary;
mod schedule;
mod text;

pub use companion::{CodeAccepted, CodeCompanion, CodeFailure, CodeOfferState};
pub use messages::{
    is_code_message, CodeHeader, CodeMessageKind, CODE_CONFIRM_LEN, CODE_HELLO_LEN, CODE_OFFER_LEN,
    PAKE_MESSAGE_LEN,
};
pub use primary::{CodeEntry, CodeEntryState};
pub use text::{
    CodeHandle, CodeTextError, LinkCode, TypedCode, CODE_LEN, CODE_SYMBOLS, HANDLE_BITS,
    HANDLE_SYMBOLS, MAX_TYPED_LEN,
};

pub(crate) use messages::offer_parts;
pub(crate) use schedule::token_id;
