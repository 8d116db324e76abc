//! The primary's side of linking by code.
//!
//! ```text
//!  Account::enter_code(typed, CodeOffer) ─► AwaitingConfirm ──CodeConfirm verifies──► Confirmed
//!   (link intent used up; CodeHello sent)        │                    (→ a PrimaryHandshake, as after a scan)
//!                                                └──CodeConfirm fails──► Failed(WrongCode)  (terminal)
//! ```

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::messages::{offer_parts, CodeHeader, CodeMessageKind, CODE_CONFIRM_LEN, CODE_HELLO_LEN};
use super::schedule::{self, ConfirmKey};
use super::text::TypedCode;
use crate::handshake::schedule::SessionKeys;
use crate::handshake::{HandshakeError, PrimaryHandshake, HEADER_LEN};
use crate::keys::AccountId;
use crate::offer::TokenId;
use crate::registry::{Account, RegistryError};
use crate::time::Timestamp;

/// The state of a code the user typed on the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeEntryState {
    /// The CodeHello was sent; waiting for the companion's CodeConfirm.
    AwaitingConfirm,
    /// The key exchange is confirmed; the handshake went on as a
    /// [`PrimaryHandshake`].
    Confirmed,
    /// The companion's confirmation did not verify: wrong code (terminal).
    WrongCode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Stage {
    AwaitingConfirm {
        keys: SessionKeys,
        confirm_key: ConfirmKey,
    },
    Confirmed,
    WrongCode,
}

/// A code typed on the phone, from the CodeHello to the companion's
/// confirmation. Created only by [`Account::enter_code`], bound to that
/// account. Persisting it ([`CodeEntry::save`]) persists session keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeEntry {
    account: AccountId,
    token: TokenId,
    #[serde(with = "crate::encoding::b64_array")]
    transcript: [u8; 32],
    #[serde(with = "crate::encoding::b64_vec")]
    hello: Vec<u8>,
    entered_at: Timestamp,
    stage: Stage,
}

impl Account {
    /// Runs the primary's half of a typed code under the open link intent
    /// (which it uses up): `typed` is what the user typed, `offer` the
    /// CodeOffer the relay gave for `typed.handle()`. Returns the entry and
    /// the CodeHello to send. Draws 64 bytes (the SPAKE2 scalar).
    ///
    /// Checks, in order (a refusal changes nothing): the link intent
    /// (`NoLinkIntent`, `LinkIntentExpired`); the offer's header, kind and
    /// size (`Malformed`, `UnexpectedCodeMessage`); its handle is the typed
    /// one (`WrongSession`); its token derives from its content and its key
    /// share is a point of the prime-order group (`Malformed`).
    pub fn enter_code<R: RngCore + CryptoRng>(
        &mut self,
        typed: &TypedCode,
        offer: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(CodeEntry, Vec<u8>), RegistryError> {
        let now = self.check_link_intent(now)?;
        let header = CodeHeader::parse(offer)?;
        if header.kind != CodeMessageKind::CodeOffer {
            return Err(HandshakeError::UnexpectedCodeMessage {
                expected: "a code offer",
                got: header.kind,
            }
            .into());
        }
        let malformed = HandshakeError::Malformed { what: "code offer" };
        let (handle, m_c) = offer_parts(offer).ok_or(malformed.clone())?;
        if handle != typed.handle().value() {
            return Err(HandshakeError::WrongSession.into());
        }
        if schedule::token_id(typed.handle(), &m_c) != header.token_id {
            return Err(malformed.into());
        }
        let (m_p, key) =
            schedule::primary_exchange(typed.code(), typed.handle(), &m_c, rng).ok_or(malformed)?;
        let th = schedule::transcript(&header.token_id, typed.handle(), &m_c, &m_p);
        let (keys, confirm_key) = schedule::derive(&key, th);
        let mut hello = Vec::with_capacity(CODE_HELLO_LEN);
        CodeHeader {
            kind: CodeMessageKind::CodeHello,
            token_id: header.token_id,
        }
        .write(&mut hello);
        hello.extend_from_slice(&m_p);
        let tag = keys.hello_tag(&hello);
        hello.extend_from_slice(tag.as_ref());
        self.use_link_intent(now);
        let entry = CodeEntry {
            account: self.account_id(),
            token: header.token_id,
            transcript: th,
            hello: hello.clone(),
            entered_at: now,
            stage: Stage::AwaitingConfirm { keys, confirm_key },
        };
        Ok((entry, hello))
    }
}

impl CodeEntry {
    /// The account that entered the code.
    pub fn account(&self) -> AccountId {
        self.account
    }

    /// The session's token id.
    pub fn token_id(&self) -> TokenId {
        self.token
    }

    /// The CodeHello, for a resend.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// The current state.
    pub fn state(&self) -> CodeEntryState {
        match self.stage {
            Stage::AwaitingConfirm { .. } => CodeEntryState::AwaitingConfirm,
            Stage::Confirmed => CodeEntryState::Confirmed,
            Stage::WrongCode => CodeEntryState::WrongCode,
        }
    }

    /// Handles the companion's CodeConfirm. On success returns the
    /// [`PrimaryHandshake`] (state `OfferScanned`), which then takes the
    /// companion's Request through [`Account::receive_request`] exactly as
    /// after a scan.
    ///
    /// Order (a refusal before step 5 changes nothing): 1 header and exact
    /// size; 2 token (`WrongSession`); 3 kind (`UnexpectedCodeMessage`); 4
    /// state (`AlreadyLinked`, `AlreadyFailed`); 5 the MAC under the
    /// confirmation key, constant time: else **`WrongCode`** (terminal,
    /// the keys are dropped).
    pub fn receive_confirm(
        &mut self,
        confirm: &[u8],
        _now: Timestamp,
    ) -> Result<PrimaryHandshake, HandshakeError> {
        CodeHeader::expect(
            confirm,
            &self.token,
            CodeMessageKind::CodeConfirm,
            "awaiting the code confirmation",
        )?;
        let Stage::AwaitingConfirm { keys, confirm_key } = &self.stage else {
            return Err(match self.stage {
                Stage::Confirmed => HandshakeError::AlreadyLinked,
                _ => HandshakeError::AlreadyFailed,
            });
        };
        let (header, tag) = confirm.split_at(HEADER_LEN);
        debug_assert_eq!(confirm.len(), CODE_CONFIRM_LEN);
        if !confirm_key.verify(header, &self.transcript, tag) {
            self.stage = Stage::WrongCode;
            return Err(HandshakeError::WrongCode);
        }
        let handshake = PrimaryHandshake::after_key_exchange(
            self.account,
            self.token,
            keys.clone(),
            self.hello.clone(),
            self.entered_at,
        );
        self.stage = Stage::Confirmed;
        Ok(handshake)
    }

    /// Saves the entry (versioned JSON; holds session keys while waiting).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("code entry", self)
    }

    /// Restores an entry saved by [`CodeEntry::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let e: CodeEntry = crate::persist::restore("code entry", bytes)?;
        let ok = CodeHeader::parse(&e.hello)
            .is_ok_and(|h| h.kind == CodeMessageKind::CodeHello && h.token_id == e.token)
            && match &e.stage {
                Stage::AwaitingConfirm { keys, .. } => keys.transcript == e.transcript,
                _ => true,
            };
        if !ok {
            return Err(crate::persist::PersistError::Inconsistent("code entry"));
        }
        Ok(e)
    }
}
