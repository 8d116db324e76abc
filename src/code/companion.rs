//! The companion's side of linking by code.
//!
//! ```text
//!  Showing ──CodeHello, confirmation verifies──► Accepted  (→ a Companion awaiting the Grant)
//!     │ └───CodeHello, confirmation fails──────► Failed(WrongCode)   (terminal)
//!     └──── now ≥ expires_at / cancel ─────────► Failed(Expired | Cancelled)
//! ```
//!
//! A message that is not a well-formed CodeHello for this code (another
//! session, another kind, a bad size, a point that is not in the group) is
//! refused with the state unchanged. A CodeHello whose key confirmation
//! fails ends the code for good: the typed code was wrong or the message was
//! altered, which nobody can tell apart, and keeping the code alive would
//! let a guesser try again. The companion then still answers with a
//! CodeConfirm (of 32 random bytes), so the phone ends too.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::messages::{
    CodeHeader, CodeMessageKind, CODE_CONFIRM_LEN, CODE_HELLO_LEN, CODE_OFFER_LEN, PAKE_MESSAGE_LEN,
};
use super::schedule::{self, PakeCache, PakeSeed};
use super::text::{CodeHandle, LinkCode};
use crate::handshake::{Companion, HandshakeError, HEADER_LEN};
use crate::keys::{AccountId, DeviceSigner};
use crate::label::DeviceLabel;
use crate::offer::TokenId;
use crate::policy::Policy;
use crate::time::Timestamp;

/// Why a code ended without a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeFailure {
    /// The key confirmation failed: the typed code was wrong (or a message
    /// was altered). Show a new code.
    WrongCode,
    /// Nobody typed the code before it expired.
    Expired,
    /// The user cancelled.
    Cancelled,
}

/// The state of a shown code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOfferState {
    /// On screen, valid until `expires_at` (exclusive).
    Showing {
        /// The first instant at which the code is refused.
        expires_at: Timestamp,
    },
    /// The phone typed it: the key exchange completed and the handshake
    /// went on as a [`Companion`].
    Accepted {
        /// When.
        at: Timestamp,
    },
    /// Ended for good.
    Failed {
        /// Why.
        reason: CodeFailure,
        /// When (for an expiry, the exact deadline).
        at: Timestamp,
    },
}

/// What a verified CodeHello gives: the companion, now waiting for the
/// Grant, and the two messages to send back in this order.
#[derive(Debug)]
pub struct CodeAccepted {
    /// The companion (state `AwaitingGrant`), from here on as after a scan.
    pub companion: Companion,
    /// The CodeConfirm (the companion's key confirmation).
    pub confirm: Vec<u8>,
    /// The Request, exactly as in the QR flow.
    pub request: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Stage {
    Showing {
        code: LinkCode,
        seed: PakeSeed,
        #[serde(with = "crate::encoding::b64_vec")]
        offer: Vec<u8>,
        expires_at: Timestamp,
    },
    Accepted {
        at: Timestamp,
    },
    Failed {
        reason: CodeFailure,
        at: Timestamp,
        /// The CodeConfirm still to send after a wrong code.
        #[serde(with = "crate::encoding::b64_vec")]
        notice: Vec<u8>,
    },
}

/// A companion showing a typed code: `HHHH-CCCC-CCCC`, the relay's handle
/// and a 40-bit code, valid for [`Policy::code_lifetime`] and usable once.
///
/// Persisting it ([`CodeCompanion::save`]) persists its identity secret
/// (unless the host's key store holds it: [`DeviceSigner`]), the
/// code and the PAKE seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeCompanion {
    /// Saved as `identity` (the secret) or `key_store` (the public key).
    #[serde(flatten)]
    signer: DeviceSigner,
    label: DeviceLabel,
    policy: Policy,
    expected_account: Option<AccountId>,
    handle: CodeHandle,
    token: TokenId,
    stage: Stage,
    #[serde(skip)]
    cache: PakeCache,
}

impl CodeCompanion {
    /// Shows a fresh code at `now` under the `handle` the relay issued
    /// ([`crate::relay::CodeRendezvous::open`]). Draws the code (5 bytes)
    /// and the PAKE seed (32 bytes). Publish [`CodeCompanion::offer_message`]
    /// at the relay, then show [`CodeCompanion::code_text`].
    pub fn new<R: RngCore + CryptoRng>(
        signer: impl Into<DeviceSigner>,
        label: DeviceLabel,
        handle: CodeHandle,
        policy: &Policy,
        rng: &mut R,
        now: Timestamp,
    ) -> Self {
        let code = LinkCode::generate(rng);
        let seed = PakeSeed::generate(rng);
        let mut cache = PakeCache::default();
        let m_c = schedule::companion_start(&code, handle, &seed, &mut cache);
        let token = schedule::token_id(handle, &m_c);
        let mut offer = Vec::with_capacity(CODE_OFFER_LEN);
        CodeHeader {
            kind: CodeMessageKind::CodeOffer,
            token_id: token,
        }
        .write(&mut offer);
        offer.extend_from_slice(&handle.to_bytes());
        offer.extend_from_slice(&m_c);
        CodeCompanion {
            signer: signer.into(),
            label,
            policy: policy.clone(),
            expected_account: None,
            handle,
            token,
            stage: Stage::Showing {
                code,
                seed,
                offer,
                expires_at: now.saturating_add(policy.code_lifetime()),
            },
            cache,
        }
    }

    /// Accept a grant only from this account (a re-pair to a known account).
    pub fn expect_account(mut self, account: AccountId) -> Self {
        self.expected_account = Some(account);
        self
    }

    /// The relay's handle of this code session.
    pub fn handle(&self) -> CodeHandle {
        self.handle
    }

    /// The session's token id (every later message carries it).
    pub fn token_id(&self) -> TokenId {
        self.token
    }

    /// The CodeOffer to publish at the relay, while showing.
    pub fn offer_message(&self) -> Option<&[u8]> {
        match &self.stage {
            Stage::Showing { offer, .. } => Some(offer),
            _ => None,
        }
    }

    /// What to show, while showing: `HHHH-CCCC-CCCC` (secret: on this
    /// device's own screen only).
    pub fn code_text(&self) -> Option<String> {
        match &self.stage {
            Stage::Showing { code, .. } => Some(format!("{}-{}", self.handle, code.to_text())),
            _ => None,
        }
    }

    /// The current state.
    pub fn state(&self) -> CodeOfferState {
        match &self.stage {
            Stage::Showing { expires_at, .. } => CodeOfferState::Showing {
                expires_at: *expires_at,
            },
            Stage::Accepted { at } => CodeOfferState::Accepted { at: *at },
            Stage::Failed { reason, at, .. } => CodeOfferState::Failed {
                reason: *reason,
                at: *at,
            },
        }
    }

    /// After a wrong code: the CodeConfirm to send anyway, so the phone ends
    /// with `WrongCode` too (32 random bytes where the MAC would be).
    pub fn wrong_code_notice(&self) -> Option<&[u8]> {
        match &self.stage {
            Stage::Failed {
                reason: CodeFailure::WrongCode,
                notice,
                ..
            } => Some(notice),
            _ => None,
        }
    }

    /// When the host must call [`CodeCompanion::poll`].
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match &self.stage {
            Stage::Showing { expires_at, .. } => Some(*expires_at),
            _ => None,
        }
    }

    /// Advances time: at `expires_at` exactly the code expires.
    pub fn poll(&mut self, now: Timestamp) -> Option<CodeFailure> {
        match &self.stage {
            Stage::Showing { expires_at, .. } if now >= *expires_at => {
                let at = *expires_at;
                self.fail(CodeFailure::Expired, at, Vec::new());
                Some(CodeFailure::Expired)
            }
            _ => None,
        }
    }

    /// Takes the code off screen (the user cancelled).
    pub fn cancel(&mut self, now: Timestamp) -> Result<(), HandshakeError> {
        match &self.stage {
            Stage::Showing { .. } => {
                self.fail(CodeFailure::Cancelled, now, Vec::new());
                Ok(())
            }
            _ => Err(self.ended()),
        }
    }

    fn fail(&mut self, reason: CodeFailure, at: Timestamp, notice: Vec<u8>) {
        self.stage = Stage::Failed { reason, at, notice };
    }

    fn ended(&self) -> HandshakeError {
        match self.stage {
            Stage::Accepted { .. } => HandshakeError::AlreadyLinked,
            _ => HandshakeError::AlreadyFailed,
        }
    }

    /// Handles the phone's CodeHello. On success the key exchange is
    /// confirmed and the handshake goes on as a [`Companion`]: send
    /// [`CodeAccepted::confirm`], then [`CodeAccepted::request`].
    ///
    /// Order of checks (a refusal before step 6 changes nothing): 1 header
    /// and exact size; 2 the token is this code's (`WrongSession`); 3 the
    /// kind is CodeHello (`UnexpectedCodeMessage`); 4 still showing
    /// (`AlreadyLinked` / `AlreadyFailed`); 5 `now < expires_at`, else the
    /// code expires (`TimedOut`, terminal); 6 the primary's SPAKE2 message
    /// is a point of the prime-order group (`Malformed`); 7 its MAC under
    /// the derived hello key, constant time: else **`WrongCode`**
    /// (terminal; [`CodeCompanion::wrong_code_notice`] is then the message
    /// to send).
    pub fn receive_hello<R: RngCore + CryptoRng>(
        &mut self,
        hello: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<CodeAccepted, HandshakeError> {
        CodeHeader::expect(
            hello,
            &self.token,
            CodeMessageKind::CodeHello,
            "showing the code",
        )?;
        let Stage::Showing {
            code,
            seed,
            offer,
            expires_at,
        } = &self.stage
        else {
            return Err(self.ended());
        };
        if now >= *expires_at {
            let at = *expires_at;
            self.fail(CodeFailure::Expired, at, Vec::new());
            return Err(HandshakeError::TimedOut {
                waiting_for: "the code",
            });
        }
        let mut m_p = [0u8; PAKE_MESSAGE_LEN];
        m_p.copy_from_slice(&hello[HEADER_LEN..HEADER_LEN + PAKE_MESSAGE_LEN]);
        let key = schedule::companion_finish(code, self.handle, seed, &mut self.cache, &m_p)
            .ok_or(HandshakeError::Malformed {
                what: "code hello key share",
            })?;
        let mut m_c = [0u8; PAKE_MESSAGE_LEN];
        m_c.copy_from_slice(&offer[CODE_OFFER_LEN - PAKE_MESSAGE_LEN..]);
        let th = schedule::transcript(&self.token, self.handle, &m_c, &m_p);
        let (keys, confirm_key) = schedule::derive(&key, th);
        let (signed, tag) = hello.split_at(CODE_HELLO_LEN - 32);
        let mut confirm = Vec::with_capacity(CODE_CONFIRM_LEN);
        CodeHeader {
            kind: CodeMessageKind::CodeConfirm,
            token_id: self.token,
        }
        .write(&mut confirm);
        if !keys.verify_hello_tag(signed, tag) {
            // One guess, used up: the code is dead on this side, and the
            // phone learns it from a confirmation it cannot verify.
            let mut noise = [0u8; 32];
            rng.fill_bytes(&mut noise);
            confirm.extend_from_slice(&noise);
            self.fail(CodeFailure::WrongCode, now, confirm);
            return Err(HandshakeError::WrongCode);
        }
        let tag = confirm_key.tag(&confirm[..HEADER_LEN], &th);
        confirm.extend_from_slice(&tag);
        let (companion, request) = Companion::after_key_exchange(
            self.signer.clone(),
            self.label.clone(),
            self.policy.clone(),
            self.expected_account,
            self.token,
            keys,
            rng,
            now,
        )?;
        self.stage = Stage::Accepted { at: now };
        Ok(CodeAccepted {
            companion,
            confirm,
            request,
        })
    }

    /// Saves the code companion (versioned JSON; secret material).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("code companion", self)
    }

    /// Restores a code companion saved by [`CodeCompanion::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let c: CodeCompanion = crate::persist::restore("code companion", bytes)?;
        let ok = match &c.stage {
            Stage::Showing {
                code, seed, offer, ..
            } => {
                let m_c = schedule::companion_message(code, c.handle, seed);
                let mut want = Vec::with_capacity(CODE_OFFER_LEN);
                CodeHeader {
                    kind: CodeMessageKind::CodeOffer,
                    token_id: c.token,
                }
                .write(&mut want);
                want.extend_from_slice(&c.handle.to_bytes());
                want.extend_from_slice(&m_c);
                schedule::token_id(c.handle, &m_c) == c.token && *offer == want
            }
            Stage::Accepted { .. } => true,
            Stage::Failed { reason, notice, .. } => match reason {
                CodeFailure::WrongCode => CodeHeader::parse(notice)
                    .is_ok_and(|h| h.kind == CodeMessageKind::CodeConfirm && h.token_id == c.token),
                _ => notice.is_empty(),
            },
        };
        if !ok {
            return Err(crate::persist::PersistError::Inconsistent("code companion"));
        }
        Ok(c)
    }
}
