//! The companion's side of the handshake.
//!
//! ```text
//!  AwaitingScan ──Hello──► AwaitingGrant ──Grant──► AwaitingConsent ──consent──► Linked
//!   (offer shown,            (sent Request)    │      (show the account          (Confirm sent,
//!    rotating)                                 │       and the check code)        holds a LinkedSession)
//!                                              │           └─ decline / timeout / cancel ─► Failed
//!                                              └─Refusal / timeout / cancel─► Failed(reason)
//!   └─ display timed out / expired / cancelled ───────────────────► Failed(reason)
//! ```
//!
//! The companion never confirms on its own: a Grant that verifies only
//! shows its user which account the device would join and the check code
//! ([`JoinPrompt`]); the Confirm leaves when that user agrees
//! ([`Companion::consent`]). Whoever photographs the QR code and races the
//! phone can win the token, but not the companion's user's consent.
//!
//! Every rejected message (forged, corrupted, replayed, out of order, for
//! another session) leaves the state exactly as it was, so it cannot kill the
//! genuine pairing. Only an authenticated Refusal from the primary, the
//! approval timeout (seen by `poll` or by a late grant), the end of the offer
//! display, or `cancel` move the companion to `Failed`.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::PublicKey;

use super::messages::{
    parse_refusal, split_sealed, MessageHeader, MessageKind, RequestBody, HEADER_LEN,
    HELLO_COMMITMENT_AT, HELLO_KEY_AT, HELLO_LEN,
};
use super::schedule::{
    check_commitment, confirm_transcript, transcript, SessionKeys, CHECK_NONCE_LEN,
};
use super::{random_nonce, CheckCode, HandshakeError, RefusalReason, CONFIRM_LABEL};
use crate::certificate::{CertificateError, DeviceCertificate, DeviceIndex};
#[cfg(doc)]
use crate::keys::DeviceIdentity;
use crate::keys::{AccountId, DeviceSigner, SIGNATURE_LEN};
use crate::label::DeviceLabel;
use crate::offer::{OfferDisplay, OfferEvent, OfferState, PairingOffer, TokenError, TokenId};
use crate::policy::Policy;
use crate::session::LinkedSession;
use crate::time::Timestamp;

/// Why a companion's pairing failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The primary refused, with its reason.
    Refused(RefusalReason),
    /// The offer display ended without a scan (its final state).
    OfferEnded(OfferState),
    /// No grant arrived within the policy's approval timeout.
    GrantTimedOut,
    /// The user cancelled while waiting for the primary's approval.
    Cancelled,
    /// This device's user did not agree to join the account the Grant named
    /// (a wrong account, a check code that did not match the phone's, or no
    /// code on the phone at all).
    Declined,
    /// This device's user did not answer within the policy's confirmation
    /// timeout (the phone gives the slot up then too).
    ConsentTimedOut,
}

/// The companion handshake's state, for display and decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompanionState {
    /// Showing the offer; waiting for a primary to scan it.
    AwaitingScan {
        /// The display's own state (rotation, expiry).
        offer: OfferState,
    },
    /// Scanned; Request sent; waiting for the primary's grant.
    AwaitingGrant {
        /// When the wait gives up.
        deadline: Timestamp,
    },
    /// Granted: show [`Companion::join_prompt`] and ask this device's user
    /// to agree ([`Companion::consent`]) or not ([`Companion::decline`]).
    AwaitingConsent {
        /// When the wait gives up.
        deadline: Timestamp,
    },
    /// Linked: [`Companion::session`] holds the session.
    Linked,
    /// Failed for good: start again with a new [`Companion`].
    Failed {
        /// Why.
        reason: FailureReason,
        /// When.
        at: Timestamp,
    },
}

/// What [`Companion::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompanionEvent {
    /// The offer on screen rotated (show the new one).
    OfferRotated {
        /// The new token.
        token_id: TokenId,
        /// The rotation number.
        rotation: u32,
    },
    /// The pairing failed (display ended, grant or consent wait timed out).
    Failed(FailureReason),
}

/// What a verified Grant offers this device: show it to the user, who
/// agrees ([`Companion::consent`]) or not ([`Companion::decline`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPrompt {
    /// The account this device would join.
    pub account: AccountId,
    /// The index the account gave this device.
    pub index: DeviceIndex,
    /// The six-digit check code of a QR link: the phone that scanned shows
    /// the same one. `None` for a typed-code link.
    pub check_code: Option<CheckCode>,
}

impl JoinPrompt {
    /// The account's fingerprint, for people.
    pub fn account_fingerprint(&self) -> String {
        self.account.fingerprint()
    }

    /// The words to show before the user agrees.
    pub fn prompt(&self) -> String {
        let mut out = format!(
            "Link this device to the account {} as device #{}?\n",
            self.account_fingerprint(),
            self.index.0
        );
        match self.check_code {
            Some(code) => out.push_str(&format!(
                "Your phone must show the check code {code}. If it shows another code, no code, \
                 or says the code was taken by another device, do not continue: someone else \
                 scanned this screen."
            )),
            None => out.push_str("Only continue if you typed the code your own phone shows."),
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Stage {
    AwaitingScan {
        display: OfferDisplay,
    },
    AwaitingGrant {
        token: TokenId,
        keys: SessionKeys,
        #[serde(with = "crate::encoding::b64_vec")]
        request: Vec<u8>,
        /// This side's check-code nonce `n_c` (sent in the Request).
        #[serde(with = "crate::encoding::b64_array")]
        check_nonce: [u8; CHECK_NONCE_LEN],
        /// The Hello's commitment to the primary's nonce (a QR link).
        #[serde(with = "crate::encoding::b64_option")]
        commitment: Option<[u8; 32]>,
        deadline: Timestamp,
    },
    /// Granted and verified; the Confirm waits for this device's user (and
    /// for its signature over `confirm_transcript`, th2).
    AwaitingConsent {
        token: TokenId,
        session: Box<LinkedSession>,
        #[serde(with = "crate::encoding::b64_array")]
        confirm_transcript: [u8; 32],
        check_code: Option<CheckCode>,
        deadline: Timestamp,
    },
    Linked {
        session: Box<LinkedSession>,
        #[serde(with = "crate::encoding::b64_vec")]
        confirm: Vec<u8>,
    },
    Failed {
        reason: FailureReason,
        at: Timestamp,
    },
}

/// The companion (new device) in a pairing: shows the offer, answers the
/// primary, verifies the certificate, and ends holding a [`LinkedSession`].
///
/// Persisting it ([`Companion::save`]) persists its identity secret and, while
/// pairing, the offer's and the session's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Companion {
    /// Saved as `identity` (the secret) or `key_store` (the public key).
    #[serde(flatten)]
    signer: DeviceSigner,
    label: DeviceLabel,
    policy: Policy,
    expected_account: Option<AccountId>,
    stage: Stage,
}

impl Companion {
    /// Starts pairing at `now`: a fresh offer on screen. `signer` is the
    /// companion's own long-term key (a [`DeviceIdentity`], or the public
    /// key of one the host's key store holds: [`DeviceSigner`]); `label` is
    /// what the primary will show.
    pub fn new<R: RngCore + CryptoRng>(
        signer: impl Into<DeviceSigner>,
        label: DeviceLabel,
        policy: &Policy,
        rng: &mut R,
        now: Timestamp,
    ) -> Self {
        Companion {
            signer: signer.into(),
            label,
            policy: policy.clone(),
            expected_account: None,
            stage: Stage::AwaitingScan {
                display: OfferDisplay::new(policy, rng, now),
            },
        }
    }

    /// Saves the companion (versioned JSON; secret material).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("companion", self)
    }

    /// Restores a companion saved by [`Companion::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let mut c: Companion = crate::persist::restore("companion", bytes)?;
        // A session inside takes the companion's policy (limits are never
        // saved).
        let policy = c.policy.clone();
        if let Stage::AwaitingConsent { session, .. } | Stage::Linked { session, .. } = &mut c.stage
        {
            session.apply_policy(&policy);
        }
        let expected_ok = |s: &LinkedSession| c.expected_account.is_none_or(|a| a == s.account());
        let ok = match &c.stage {
            Stage::AwaitingScan { display } => {
                display.check_consistent()?;
                !display.state().is_terminal()
            }
            Stage::AwaitingGrant { token, request, .. } => {
                MessageHeader::parse(request).is_ok_and(|h| h.token_id == *token)
            }
            Stage::AwaitingConsent {
                session,
                check_code,
                ..
            } => {
                session.device_key() == c.signer.device_key()
                    && expected_ok(session)
                    && check_code.is_none_or(|code| code.value() < CheckCode::MODULUS)
            }
            Stage::Linked { session, .. } => {
                session.device_key() == c.signer.device_key() && expected_ok(session)
            }
            Stage::Failed { .. } => true,
        };
        if !ok {
            return Err(crate::persist::PersistError::Inconsistent("companion"));
        }
        Ok(c)
    }

    /// Who holds this device's signing key.
    pub fn signer(&self) -> &DeviceSigner {
        &self.signer
    }

    /// Accept a grant only from this account (a re-pair to a known account).
    pub fn expect_account(mut self, account: AccountId) -> Self {
        self.expected_account = Some(account);
        self
    }

    /// The current state.
    pub fn state(&self) -> CompanionState {
        match &self.stage {
            Stage::AwaitingScan { display } => CompanionState::AwaitingScan {
                offer: display.state(),
            },
            Stage::AwaitingGrant { deadline, .. } => CompanionState::AwaitingGrant {
                deadline: *deadline,
            },
            Stage::AwaitingConsent { deadline, .. } => CompanionState::AwaitingConsent {
                deadline: *deadline,
            },
            Stage::Linked { .. } => CompanionState::Linked,
            Stage::Failed { reason, at } => CompanionState::Failed {
                reason: *reason,
                at: *at,
            },
        }
    }

    /// The offer to show, while waiting for a scan.
    pub fn offer(&self) -> Option<&PairingOffer> {
        match &self.stage {
            Stage::AwaitingScan { display } => display.offer(),
            _ => None,
        }
    }

    /// The six-digit check code once a QR link's Grant verified (the phone
    /// shows the same one).
    pub fn check_code(&self) -> Option<CheckCode> {
        match &self.stage {
            Stage::AwaitingConsent { check_code, .. } => *check_code,
            _ => None,
        }
    }

    /// What the verified Grant offers, while waiting for this device's
    /// user to agree.
    pub fn join_prompt(&self) -> Option<JoinPrompt> {
        match &self.stage {
            Stage::AwaitingConsent {
                session,
                check_code,
                ..
            } => Some(JoinPrompt {
                account: session.account(),
                index: session.index(),
                check_code: *check_code,
            }),
            _ => None,
        }
    }

    /// The bytes this device's key signs for the Confirm, while waiting
    /// for this device's user: `"devicelink/v2 confirm" ‖ th2`. A host
    /// whose key store holds the key ([`DeviceSigner::KeyStore`]) signs
    /// them there (Ed25519) and passes the signature to
    /// [`Companion::consent_signed`]. Signing is not consent: nothing is
    /// sent before that call.
    pub fn confirm_to_sign(&self) -> Option<Vec<u8>> {
        match &self.stage {
            Stage::AwaitingConsent {
                confirm_transcript, ..
            } => Some(confirm_message(confirm_transcript)),
            _ => None,
        }
    }

    /// This device's user agrees to join the account the Grant named:
    /// returns the Confirm to send, and the companion is linked. Refused
    /// (and the pairing failed, `ConsentTimedOut`) at or after the deadline;
    /// refused as [`HandshakeError::SignatureNeeded`] (nothing changed) when
    /// the host's key store holds the key: use [`Companion::consent_signed`].
    pub fn consent(&mut self, now: Timestamp) -> Result<Vec<u8>, HandshakeError> {
        let Some(message) = self.confirm_to_sign() else {
            return Err(self.wrong_state());
        };
        self.consent_deadline(now)?;
        let signature = self
            .signer
            .sign(&message)
            .ok_or(HandshakeError::SignatureNeeded)?;
        self.consent_signed(&signature, now)
    }

    /// [`Companion::consent`] with the device's signature over
    /// [`Companion::confirm_to_sign`], made by the host's key store. A
    /// signature that does not verify under this device's key is refused
    /// (`BadSignature`) and changes nothing.
    pub fn consent_signed(
        &mut self,
        signature: &[u8; SIGNATURE_LEN],
        now: Timestamp,
    ) -> Result<Vec<u8>, HandshakeError> {
        let Stage::AwaitingConsent {
            token,
            confirm_transcript,
            ..
        } = &self.stage
        else {
            return Err(self.wrong_state());
        };
        let (token, message) = (*token, confirm_message(confirm_transcript));
        self.consent_deadline(now)?;
        if !self.signer.device_key().verify(&message, signature) {
            return Err(HandshakeError::BadSignature { what: "confirm" });
        }
        let mut confirm = Vec::with_capacity(super::messages::CONFIRM_LEN);
        MessageHeader {
            kind: MessageKind::Confirm,
            token_id: token,
        }
        .write(&mut confirm);
        confirm.extend_from_slice(signature);
        let stage = std::mem::replace(
            &mut self.stage,
            Stage::Failed {
                reason: FailureReason::Declined,
                at: now,
            },
        );
        if let Stage::AwaitingConsent { session, .. } = stage {
            self.stage = Stage::Linked {
                session,
                confirm: confirm.clone(),
            };
        }
        Ok(confirm)
    }

    /// Fails the pairing (`ConsentTimedOut`) when the consent comes at or
    /// after its deadline.
    fn consent_deadline(&mut self, now: Timestamp) -> Result<(), HandshakeError> {
        if let Stage::AwaitingConsent { deadline, .. } = &self.stage {
            if now >= *deadline {
                self.stage = Stage::Failed {
                    reason: FailureReason::ConsentTimedOut,
                    at: *deadline,
                };
                return Err(HandshakeError::TimedOut {
                    waiting_for: "the user's consent",
                });
            }
        }
        Ok(())
    }

    /// This device's user does not agree: the pairing fails (`Declined`)
    /// and nothing is sent (the phone's pending slot times out).
    pub fn decline(&mut self, now: Timestamp) -> Result<(), HandshakeError> {
        if !matches!(self.stage, Stage::AwaitingConsent { .. }) {
            return Err(self.wrong_state());
        }
        self.stage = Stage::Failed {
            reason: FailureReason::Declined,
            at: now,
        };
        Ok(())
    }

    /// The linked session, once linked.
    pub fn session(&self) -> Option<&LinkedSession> {
        match &self.stage {
            Stage::Linked { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The Confirm sent when the link completed, to send again if the relay
    /// lost it (it is idempotent for the primary).
    pub fn confirm_message(&self) -> Option<&[u8]> {
        match &self.stage {
            Stage::Linked { confirm, .. } => Some(confirm),
            _ => None,
        }
    }

    /// Takes the linked session out; gives `self` back if not linked.
    pub fn into_session(self) -> Result<LinkedSession, Box<Self>> {
        match self.stage {
            Stage::Linked { session, .. } => Ok(*session),
            _ => Err(Box::new(self)),
        }
    }

    /// When the host must call [`Companion::poll`] next.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match &self.stage {
            Stage::AwaitingScan { display } => display.next_deadline(),
            Stage::AwaitingGrant { deadline, .. } | Stage::AwaitingConsent { deadline, .. } => {
                Some(*deadline)
            }
            Stage::Linked { .. } | Stage::Failed { .. } => None,
        }
    }

    /// Advances time: rotates the offer, or fails the pairing when the display
    /// ends or the grant does not come in time.
    pub fn poll<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        now: Timestamp,
    ) -> Option<CompanionEvent> {
        match &mut self.stage {
            Stage::AwaitingScan { display } => match display.poll(rng, now)? {
                OfferEvent::Rotated { rotation, new, .. } => Some(CompanionEvent::OfferRotated {
                    token_id: new,
                    rotation,
                }),
                OfferEvent::Ended(state) => {
                    let at = match state {
                        OfferState::Expired { at } | OfferState::TimedOut { at } => at,
                        _ => now,
                    };
                    let reason = FailureReason::OfferEnded(state);
                    self.stage = Stage::Failed { reason, at };
                    Some(CompanionEvent::Failed(reason))
                }
            },
            Stage::AwaitingGrant { deadline, .. } if now >= *deadline => {
                let reason = FailureReason::GrantTimedOut;
                self.stage = Stage::Failed {
                    reason,
                    at: *deadline,
                };
                Some(CompanionEvent::Failed(reason))
            }
            Stage::AwaitingConsent { deadline, .. } if now >= *deadline => {
                let reason = FailureReason::ConsentTimedOut;
                self.stage = Stage::Failed {
                    reason,
                    at: *deadline,
                };
                Some(CompanionEvent::Failed(reason))
            }
            _ => None,
        }
    }

    /// Cancels a pairing that is still waiting for a scan, for the
    /// primary's approval or for this device's user. Refused once linked or
    /// failed.
    pub fn cancel(&mut self, now: Timestamp) -> Result<(), HandshakeError> {
        match &mut self.stage {
            Stage::AwaitingScan { display } => {
                display.cancel(now)?;
                let reason = FailureReason::OfferEnded(display.state());
                self.stage = Stage::Failed { reason, at: now };
                Ok(())
            }
            Stage::AwaitingGrant { .. } | Stage::AwaitingConsent { .. } => {
                self.stage = Stage::Failed {
                    reason: FailureReason::Cancelled,
                    at: now,
                };
                Ok(())
            }
            _ => Err(self.wrong_state()),
        }
    }

    fn wrong_state(&self) -> HandshakeError {
        match &self.stage {
            Stage::Linked { .. } => HandshakeError::AlreadyLinked,
            Stage::Failed { .. } => HandshakeError::AlreadyFailed,
            Stage::AwaitingScan { .. } => HandshakeError::WrongState {
                state: "awaiting scan",
            },
            Stage::AwaitingGrant { .. } => HandshakeError::WrongState {
                state: "awaiting grant",
            },
            Stage::AwaitingConsent { .. } => HandshakeError::WrongState {
                state: "awaiting consent",
            },
        }
    }

    /// Handles the primary's Hello; returns the Request to send back.
    ///
    /// Refused (state unchanged) unless the message is for the offer on
    /// screen, still fresh, and keyed by someone who saw the QR code.
    pub fn receive_hello<R: RngCore + CryptoRng>(
        &mut self,
        hello: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Vec<u8>, HandshakeError> {
        let display = match &mut self.stage {
            Stage::AwaitingScan { display } => display,
            Stage::AwaitingGrant { token, .. } => {
                let h = MessageHeader::parse(hello)?;
                return Err(if h.token_id != *token {
                    HandshakeError::WrongSession
                } else {
                    HandshakeError::UnexpectedMessage {
                        expected: "awaiting grant",
                        got: h.kind,
                    }
                });
            }
            _ => return Err(self.wrong_state()),
        };
        let header = MessageHeader::parse(hello)?;
        if header.kind != MessageKind::Hello {
            return Err(HandshakeError::UnexpectedMessage {
                expected: "awaiting scan",
                got: header.kind,
            });
        }
        header.check_size(hello)?;
        let offer_keys = display.check(&header.token_id, now).map_err(|e| match e {
            TokenError::UnknownToken => HandshakeError::WrongSession,
            e => HandshakeError::Token(e),
        })?;
        // The relay checked the proof; the MAC below covers it too.
        // Constant time: the proof is secret until a Hello is on the wire.
        let proof_ok = header.redemption_proof(hello).is_some_and(|p| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                &p.to_bytes()[..],
                &offer_keys.offer.redemption_proof().to_bytes()[..],
            ))
        });
        if !proof_ok {
            return Err(HandshakeError::AuthenticationFailed);
        }
        let (signed, tag) = hello.split_at(HELLO_LEN - super::schedule::MAC_LEN);
        let mut primary_eph = [0u8; 32];
        primary_eph.copy_from_slice(&signed[HELLO_KEY_AT..HELLO_COMMITMENT_AT]);
        let mut commitment = [0u8; 32];
        commitment.copy_from_slice(&signed[HELLO_COMMITMENT_AT..]);
        let shared = offer_keys
            .secret
            .diffie_hellman(&PublicKey::from(primary_eph));
        if !shared.was_contributory() {
            return Err(HandshakeError::NonContributory);
        }
        let offer = &offer_keys.offer;
        let th = transcript(&header.token_id, offer.ephemeral(), &primary_eph);
        let keys = SessionKeys::derive(shared.as_bytes(), offer.secret(), th);
        if !keys.verify_hello_tag(signed, tag) {
            return Err(HandshakeError::AuthenticationFailed);
        }

        // Verified: build the Request, then commit the state change.
        let (request, check_nonce) =
            seal_request(&self.signer, &self.label, header.token_id, &keys, rng)?;
        display.redeem(now);
        self.stage = Stage::AwaitingGrant {
            token: header.token_id,
            keys,
            request: request.clone(),
            check_nonce,
            commitment: Some(commitment),
            deadline: now.saturating_add(self.policy.approval_timeout()),
        };
        Ok(request)
    }

    /// The seam of every entry path: a companion whose key exchange (the
    /// QR code's Hello or the typed code's PAKE, [`crate::code`]) gave
    /// `keys` for `token`. Seals the Request and waits for the Grant, from
    /// here on exactly as after a scan.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn after_key_exchange<R: RngCore + CryptoRng>(
        signer: DeviceSigner,
        label: DeviceLabel,
        policy: Policy,
        expected_account: Option<AccountId>,
        token: TokenId,
        keys: SessionKeys,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let (request, check_nonce) = seal_request(&signer, &label, token, &keys, rng)?;
        let deadline = now.saturating_add(policy.approval_timeout());
        let companion = Companion {
            signer,
            label,
            policy,
            expected_account,
            stage: Stage::AwaitingGrant {
                token,
                keys,
                request: request.clone(),
                check_nonce,
                commitment: None,
                deadline,
            },
        };
        Ok((companion, request))
    }

    /// Handles the primary's Grant or its authenticated Refusal (the
    /// pairing fails with [`HandshakeError::Refused`]). A Grant that
    /// verifies (its check-code nonce matches the Hello's commitment, its
    /// certificate names this device, from the expected account if one was
    /// set) returns what to show this device's user: nothing is sent until
    /// that user agrees ([`Companion::consent`], which returns the Confirm).
    pub fn receive_grant(
        &mut self,
        grant: &[u8],
        now: Timestamp,
    ) -> Result<JoinPrompt, HandshakeError> {
        let (token, keys, request, check_nonce, commitment, deadline) = match &self.stage {
            Stage::AwaitingGrant {
                token,
                keys,
                request,
                check_nonce,
                commitment,
                deadline,
            } => (token, keys, request, check_nonce, commitment, *deadline),
            Stage::AwaitingScan { display } => {
                let h = MessageHeader::parse(grant)?;
                return Err(match display.offer() {
                    Some(o) if o.token_id() == h.token_id => HandshakeError::UnexpectedMessage {
                        expected: "awaiting scan",
                        got: h.kind,
                    },
                    _ => HandshakeError::WrongSession,
                });
            }
            _ => return Err(self.wrong_state()),
        };
        let header = MessageHeader::expect(
            grant,
            token,
            &[MessageKind::Grant, MessageKind::Refusal],
            "awaiting grant",
        )?;
        if now >= deadline {
            // Terminal: record it now rather than at the next poll.
            self.stage = Stage::Failed {
                reason: FailureReason::GrantTimedOut,
                at: deadline,
            };
            return Err(HandshakeError::TimedOut {
                waiting_for: "the grant",
            });
        }
        header.check_size(grant)?;
        let (aad, nonce_bytes, mut buf) =
            split_sealed(grant).ok_or(HandshakeError::Malformed { what: "grant" })?;
        let plain = keys
            .open_grant(nonce_bytes, aad, &mut buf)
            .ok_or(HandshakeError::AuthenticationFailed)?;

        if header.kind == MessageKind::Refusal {
            let reason = parse_refusal(plain)?;
            self.stage = Stage::Failed {
                reason: FailureReason::Refused(reason),
                at: now,
            };
            return Err(HandshakeError::Refused(reason));
        }

        // The primary's check-code nonce, then the certificate (this
        // device's entry in the signed list).
        let (primary_nonce, certificate) = plain
            .split_at_checked(CHECK_NONCE_LEN)
            .ok_or(HandshakeError::Malformed { what: "grant" })?;
        let mut n_p = [0u8; CHECK_NONCE_LEN];
        n_p.copy_from_slice(primary_nonce);
        let check_code = match commitment {
            Some(c) => {
                let opened = check_commitment(&keys.transcript, &n_p);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&opened[..], &c[..])) {
                    return Err(HandshakeError::AuthenticationFailed);
                }
                Some(keys.check_code(check_nonce, &n_p))
            }
            // A typed-code link commits to nothing: its nonce is zero.
            None if n_p == [0; CHECK_NONCE_LEN] => None,
            None => return Err(HandshakeError::Malformed { what: "grant" }),
        };
        let certificate = DeviceCertificate::from_bytes(certificate)?;
        let me = self.signer.device_key();
        if certificate.device() != me {
            return Err(CertificateError::WrongDevice.into());
        }
        if self
            .expected_account
            .is_some_and(|a| a != certificate.account())
        {
            return Err(CertificateError::WrongAccount.into());
        }
        let device_list = certificate.device_list().clone();

        let th2 = confirm_transcript(&keys.transcript, request, grant);
        let session = LinkedSession::new(
            self.signer.clone(),
            self.label.clone(),
            certificate,
            device_list,
            &self.policy,
            now,
        );
        self.stage = Stage::AwaitingConsent {
            token: *token,
            session: Box::new(session),
            confirm_transcript: th2,
            check_code,
            deadline: now.saturating_add(self.policy.confirmation_timeout()),
        };
        self.join_prompt().ok_or(HandshakeError::WrongState {
            state: "awaiting consent",
        })
    }
}

/// `"devicelink/v2 confirm" ‖ th2`, what the device key signs for the
/// Confirm.
fn confirm_message(th2: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONFIRM_LABEL.len() + th2.len());
    message.extend_from_slice(CONFIRM_LABEL);
    message.extend_from_slice(th2);
    message
}

/// The Request: header, a fresh nonce, the sealed device key, label and
/// check-code nonce `n_c` (returned beside it).
fn seal_request<R: RngCore + CryptoRng>(
    signer: &DeviceSigner,
    label: &DeviceLabel,
    token: TokenId,
    keys: &SessionKeys,
    rng: &mut R,
) -> Result<(Vec<u8>, [u8; CHECK_NONCE_LEN]), HandshakeError> {
    let mut check_nonce = [0u8; CHECK_NONCE_LEN];
    rng.fill_bytes(&mut check_nonce);
    let body = RequestBody {
        device: signer.device_key().to_bytes(),
        label: label.clone(),
        check_nonce,
    };
    let mut request = Vec::with_capacity(super::messages::MAX_REQUEST_LEN);
    MessageHeader {
        kind: MessageKind::Request,
        token_id: token,
    }
    .write(&mut request);
    let nonce = random_nonce(rng);
    request.extend_from_slice(&nonce);
    let mut sealed = Vec::with_capacity(32 + 1 + 64 + CHECK_NONCE_LEN + 16);
    body.write(&mut sealed);
    if !keys.seal_request(nonce, &request[..HEADER_LEN], &mut sealed) {
        return Err(HandshakeError::WrongState {
            state: "sealing failed",
        });
    }
    request.extend_from_slice(&sealed);
    Ok((request, check_nonce))
}
