//! The device: a companion from its first offer to its linked session,
//! behind one outbox.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::Output;
use crate::certificate::{CertificateError, DeviceIndex, PrimaryHeartbeat, SignedDeviceList};
use crate::code::{is_code_message, CodeCompanion, CodeFailure, CodeHandle};
use crate::error::ErrorKind;
use crate::facts::LogoutReason;
use crate::handshake::{
    Companion, CompanionEvent, CompanionState, FailureReason, HandshakeError, JoinPrompt,
    MessageHeader, MessageKind,
};
use crate::keys::DeviceSigner;
use crate::label::DeviceLabel;
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::session::{DeviceListChange, LinkedSession, SessionError, SessionStatus};
use crate::time::Timestamp;

/// What a call on the device means for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Taken; nothing to show.
    Accepted,
    /// The phone granted the link: show the prompt (the account and the
    /// check code) and ask this device's user ([`Device::consent`] or
    /// [`Device::decline`]).
    Prompt(JoinPrompt),
    /// Linked as `index` (the Confirm is in the outbox).
    Linked {
        /// This device's index.
        index: DeviceIndex,
    },
    /// The account's list changed (devices added or removed).
    ListChanged(DeviceListChange),
    /// Another history of the account was seen (a phone restored from an
    /// old backup): tell the user; only the chained successor is accepted
    /// from now on.
    Fork {
        /// The version at which it was seen.
        version: u64,
    },
    /// This device is logged out, for good.
    LoggedOut(LogoutReason),
    /// The pairing failed; start again with a new device.
    Failed(DeviceFailure),
}

/// Why a pairing failed, flat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceFailure {
    /// A QR pairing's reason.
    Pairing(FailureReason),
    /// A typed code's reason.
    Code(CodeFailure),
}

/// Why a call on the device failed. Nothing changed (the outbox
/// included).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The handshake refused the message or the call.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The session refused a list or heartbeat.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Bytes that are not a list or heartbeat.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The saved state could not be saved or restored.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The call needs a linked device.
    #[error("this device is not linked")]
    NotLinked,
}

impl DeviceError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeviceError::Handshake(e) => e.kind(),
            DeviceError::Session(e) => e.kind(),
            DeviceError::Certificate(e) => e.kind(),
            DeviceError::Persist(e) => e.kind(),
            DeviceError::NotLinked => ErrorKind::Misuse,
        }
    }
}

#[derive(Debug, Clone)]
enum Stage {
    /// A QR offer, then its handshake.
    Qr(Box<Companion>),
    /// A typed code on screen.
    Code(Box<CodeCompanion>),
    /// Linked.
    Linked(Box<LinkedSession>),
    /// Failed.
    Failed(DeviceFailure),
}

/// A companion for a host: a QR offer or a typed code, its handshake, then
/// its linked session, with one outbox (register the offer's token, send
/// the pairing's messages, save, subscribe to the account's lists).
#[derive(Debug)]
pub struct Device {
    stage: Stage,
    policy: Policy,
    outbox: VecDeque<Output>,
    /// Whether the user was told of the session's logout.
    told_logout: bool,
}

/// The device's saved form: its part as that part's own saved state.
#[derive(Serialize, Deserialize)]
enum SavedDevice {
    Qr(crate::encoding::Bytes),
    Code(crate::encoding::Bytes),
    Linked(crate::encoding::Bytes),
    Failed(DeviceFailure),
}

impl Device {
    /// A device showing a fresh QR offer: the outbox says to register its
    /// token at the relay (again after every rotation).
    pub fn new<R: RngCore + CryptoRng>(
        signer: impl Into<DeviceSigner>,
        label: DeviceLabel,
        policy: &Policy,
        rng: &mut R,
        now: Timestamp,
    ) -> Self {
        let companion = Companion::new(signer, label, policy, rng, now);
        let mut device = Device {
            stage: Stage::Qr(Box::new(companion)),
            policy: policy.clone(),
            outbox: VecDeque::new(),
            told_logout: false,
        };
        device.register_offer();
        device
    }

    /// A device showing a typed code under the relay's `handle`: the
    /// outbox carries the CodeOffer to publish for it.
    pub fn with_code<R: RngCore + CryptoRng>(
        signer: impl Into<DeviceSigner>,
        label: DeviceLabel,
        handle: CodeHandle,
        policy: &Policy,
        rng: &mut R,
        now: Timestamp,
    ) -> Self {
        let companion = CodeCompanion::new(signer, label, handle, policy, rng, now);
        let mut outbox = VecDeque::new();
        if let Some(offer) = companion.offer_message() {
            outbox.push_back(Output::Send {
                token: companion.token_id(),
                message: offer.to_vec(),
            });
        }
        Device {
            stage: Stage::Code(Box::new(companion)),
            policy: policy.clone(),
            outbox,
            told_logout: false,
        }
    }

    /// The next thing the host must carry out, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outbox.pop_front()
    }

    /// The QR text to show while waiting for a scan.
    pub fn offer_text(&self) -> Option<String> {
        match &self.stage {
            Stage::Qr(c) => c.offer().map(|o| o.to_text()),
            _ => None,
        }
    }

    /// The typed code to show (`HHHH-CCCC-CCCC`).
    pub fn code_text(&self) -> Option<String> {
        match &self.stage {
            Stage::Code(c) => c.code_text(),
            _ => None,
        }
    }

    /// What a granted link offers, while waiting for this device's user.
    pub fn join_prompt(&self) -> Option<JoinPrompt> {
        match &self.stage {
            Stage::Qr(c) => c.join_prompt(),
            _ => None,
        }
    }

    /// The linked session, once linked.
    pub fn session(&self) -> Option<&LinkedSession> {
        match &self.stage {
            Stage::Linked(s) => Some(s),
            _ => None,
        }
    }

    /// Handles a pairing message from the phone (a Hello, CodeHello, Grant
    /// or Refusal). A message that is refused changes nothing.
    pub fn receive<R: RngCore + CryptoRng>(
        &mut self,
        message: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<DeviceEvent, DeviceError> {
        match &mut self.stage {
            Stage::Code(code) if is_code_message(message) => {
                match code.receive_hello(message, rng, now) {
                    Ok(accepted) => {
                        let token = code.token_id();
                        for message in [accepted.confirm, accepted.request] {
                            self.outbox.push_back(Output::Send { token, message });
                        }
                        self.stage = Stage::Qr(Box::new(accepted.companion));
                        Ok(DeviceEvent::Accepted)
                    }
                    Err(HandshakeError::WrongCode) => {
                        if let Some(notice) = code.wrong_code_notice() {
                            self.outbox.push_back(Output::Send {
                                token: code.token_id(),
                                message: notice.to_vec(),
                            });
                        }
                        Ok(self.fail(DeviceFailure::Code(CodeFailure::WrongCode)))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Stage::Qr(companion) => {
                let header = MessageHeader::parse(message)?;
                match header.kind {
                    MessageKind::Hello => {
                        let request = companion.receive_hello(message, rng, now)?;
                        self.outbox.push_back(Output::Send {
                            token: header.token_id,
                            message: request,
                        });
                        Ok(DeviceEvent::Accepted)
                    }
                    MessageKind::Grant | MessageKind::Refusal => {
                        match companion.receive_grant(message, now) {
                            Ok(prompt) => Ok(DeviceEvent::Prompt(prompt)),
                            Err(e) => match companion.state() {
                                CompanionState::Failed { reason, .. } => {
                                    Ok(self.fail(DeviceFailure::Pairing(reason)))
                                }
                                _ => Err(e.into()),
                            },
                        }
                    }
                    kind => Err(HandshakeError::UnexpectedMessage {
                        expected: "a hello, grant or refusal",
                        got: kind,
                    }
                    .into()),
                }
            }
            Stage::Code(_) => Err(HandshakeError::WrongState {
                state: "showing a code",
            }
            .into()),
            Stage::Linked(_) => Err(HandshakeError::AlreadyLinked.into()),
            Stage::Failed(_) => Err(HandshakeError::AlreadyFailed.into()),
        }
    }

    /// The bytes the key store signs for the Confirm (a
    /// [`DeviceSigner::KeyStore`] device), while the prompt is shown.
    pub fn confirm_to_sign(&self) -> Option<Vec<u8>> {
        match &self.stage {
            Stage::Qr(c) => c.confirm_to_sign(),
            _ => None,
        }
    }

    /// This device's user agrees: the Confirm goes to the outbox, then
    /// [`Output::Save`] and [`Output::Subscribe`]; the device is linked.
    pub fn consent(&mut self, now: Timestamp) -> Result<DeviceEvent, DeviceError> {
        self.consent_with(None, now)
    }

    /// [`Device::consent`] with the key store's signature over
    /// [`Device::confirm_to_sign`].
    pub fn consent_signed(
        &mut self,
        signature: &[u8; 64],
        now: Timestamp,
    ) -> Result<DeviceEvent, DeviceError> {
        self.consent_with(Some(signature), now)
    }

    fn consent_with(
        &mut self,
        signature: Option<&[u8; 64]>,
        now: Timestamp,
    ) -> Result<DeviceEvent, DeviceError> {
        let Stage::Qr(companion) = &mut self.stage else {
            return Err(HandshakeError::WrongState {
                state: "no join prompt",
            }
            .into());
        };
        let result = match signature {
            Some(signature) => companion.consent_signed(signature, now),
            None => companion.consent(now),
        };
        let confirm = match result {
            Ok(confirm) => confirm,
            Err(e) => {
                return match companion.state() {
                    CompanionState::Failed { reason, .. } => {
                        Ok(self.fail(DeviceFailure::Pairing(reason)))
                    }
                    _ => Err(e.into()),
                }
            }
        };
        let token = MessageHeader::parse(&confirm)?.token_id;
        let Some(session) = companion.session().cloned() else {
            return Err(HandshakeError::WrongState {
                state: "linked without a session",
            }
            .into());
        };
        let index = session.index();
        let after = session.device_list().version();
        self.stage = Stage::Linked(Box::new(session));
        self.outbox.push_back(Output::Send {
            token,
            message: confirm,
        });
        self.outbox.push_back(Output::Save);
        self.outbox.push_back(Output::Subscribe { after });
        Ok(DeviceEvent::Linked { index })
    }

    /// This device's user does not agree: the pairing ends, nothing is sent.
    pub fn decline(&mut self, now: Timestamp) -> Result<DeviceEvent, DeviceError> {
        let Stage::Qr(companion) = &mut self.stage else {
            return Err(HandshakeError::WrongState {
                state: "no join prompt",
            }
            .into());
        };
        companion.decline(now)?;
        Ok(self.fail(DeviceFailure::Pairing(FailureReason::Declined)))
    }

    /// A signed device list the relay pushed (its wire bytes). A list
    /// further ahead than a forked session may take asks the relay for the
    /// versions in between ([`Output::Subscribe`]).
    pub fn receive_list(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<DeviceEvent, DeviceError> {
        let Stage::Linked(session) = &mut self.stage else {
            return Err(DeviceError::NotLinked);
        };
        let list = SignedDeviceList::from_bytes(bytes)?;
        let fork_before = session.fork_seen();
        let held = session.device_list().version();
        let result = session.accept_device_list(&list, now);
        let fork = fork_before.is_none().then(|| session.fork_seen()).flatten();
        let result = match result {
            Err(SessionError::Certificate(CertificateError::MissingVersions { .. })) => {
                self.outbox.push_back(Output::Subscribe { after: held });
                Ok(DeviceEvent::Accepted)
            }
            Ok(change) => Ok(DeviceEvent::ListChanged(change)),
            Err(e) => Err(e),
        };
        self.settle(result, fork, now)
    }

    /// A signed heartbeat the relay pushed (its wire bytes).
    pub fn receive_heartbeat(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<DeviceEvent, DeviceError> {
        let Stage::Linked(session) = &mut self.stage else {
            return Err(DeviceError::NotLinked);
        };
        let heartbeat = PrimaryHeartbeat::from_bytes(bytes)?;
        let fork_before = session.fork_seen();
        let result = session
            .accept_heartbeat(&heartbeat, now)
            .map(|_| DeviceEvent::Accepted);
        let fork = fork_before.is_none().then(|| session.fork_seen()).flatten();
        self.settle(result, fork, now)
    }

    /// After a signed fact: a new fork mark or a logout is what the user
    /// hears (either is saved); else the fact's own outcome.
    fn settle(
        &mut self,
        result: Result<DeviceEvent, SessionError>,
        fork: Option<u64>,
        now: Timestamp,
    ) -> Result<DeviceEvent, DeviceError> {
        if let Some(version) = fork {
            self.outbox.push_back(Output::Save);
            return Ok(DeviceEvent::Fork { version });
        }
        if let Some(reason) = self.new_logout(now) {
            return Ok(DeviceEvent::LoggedOut(reason));
        }
        let event = result?;
        self.outbox.push_back(Output::Save);
        Ok(event)
    }

    /// The session's logout, the first time it is seen (saved).
    fn new_logout(&mut self, now: Timestamp) -> Option<LogoutReason> {
        let Stage::Linked(session) = &mut self.stage else {
            return None;
        };
        match session.poll(now) {
            SessionStatus::LoggedOut { reason, .. } if !self.told_logout => {
                self.told_logout = true;
                self.outbox.push_back(Output::Save);
                Some(reason)
            }
            _ => None,
        }
    }

    /// Advances time: rotates the QR offer (its new token to register),
    /// ends a pairing that timed out, or logs a session out at its lease's
    /// end. Returns what the user must hear, if anything.
    pub fn poll<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        now: Timestamp,
    ) -> Option<DeviceEvent> {
        match &mut self.stage {
            Stage::Qr(companion) => match companion.poll(rng, now)? {
                CompanionEvent::OfferRotated { .. } => {
                    self.register_offer();
                    None
                }
                CompanionEvent::Failed(reason) => Some(self.fail(DeviceFailure::Pairing(reason))),
            },
            Stage::Code(code) => {
                let failure = code.poll(now)?;
                Some(self.fail(DeviceFailure::Code(failure)))
            }
            Stage::Linked(_) => self.new_logout(now).map(DeviceEvent::LoggedOut),
            Stage::Failed(_) => None,
        }
    }

    /// When [`Device::poll`] must run next.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match &self.stage {
            Stage::Qr(c) => c.next_deadline(),
            Stage::Code(c) => c.next_deadline(),
            Stage::Linked(s) => s.next_deadline(),
            Stage::Failed(_) => None,
        }
    }

    /// Saves the device (versioned JSON; holds the device's identity
    /// secret unless a key store holds it, and a pairing's keys). The
    /// outbox is not saved: a restored linked device subscribes again.
    pub fn save(&self) -> Result<Vec<u8>, DeviceError> {
        use crate::encoding::Bytes;
        let saved = match &self.stage {
            Stage::Qr(c) => SavedDevice::Qr(Bytes(c.save()?)),
            Stage::Code(c) => SavedDevice::Code(Bytes(c.save()?)),
            Stage::Linked(s) => SavedDevice::Linked(Bytes(s.save()?)),
            Stage::Failed(f) => SavedDevice::Failed(*f),
        };
        Ok(crate::persist::save("device", &saved)?)
    }

    /// Restores a device saved by [`Device::save`] under the host's
    /// `policy`; its part is restored with that part's own checks.
    pub fn restore(bytes: &[u8], policy: &Policy) -> Result<Self, DeviceError> {
        let saved: SavedDevice = crate::persist::restore("device", bytes)?;
        let stage = match saved {
            SavedDevice::Qr(b) => Stage::Qr(Box::new(Companion::restore(&b.0)?)),
            SavedDevice::Code(b) => Stage::Code(Box::new(CodeCompanion::restore(&b.0)?)),
            SavedDevice::Linked(b) => {
                Stage::Linked(Box::new(LinkedSession::restore(&b.0, policy)?))
            }
            SavedDevice::Failed(f) => Stage::Failed(f),
        };
        let mut device = Device {
            stage,
            policy: policy.clone(),
            outbox: VecDeque::new(),
            told_logout: false,
        };
        if let Stage::Linked(session) = &device.stage {
            let after = session.device_list().version();
            device.outbox.push_back(Output::Subscribe { after });
        }
        Ok(device)
    }

    fn register_offer(&mut self) {
        if let Stage::Qr(companion) = &self.stage {
            if let (Some(offer), Some(expires_at)) = (companion.offer(), companion.next_deadline())
            {
                self.outbox.push_back(Output::Register {
                    token: offer.token_id(),
                    expires_at,
                });
            }
        }
    }

    fn fail(&mut self, failure: DeviceFailure) -> DeviceEvent {
        self.stage = Stage::Failed(failure);
        DeviceEvent::Failed(failure)
    }

    /// The host policy this device applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}
