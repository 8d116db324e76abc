//! The phone: the account and its pairings in flight, behind one outbox.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::Output;
use crate::certificate::DeviceIndex;
use crate::code::{is_code_message, CodeEntry, CodeHeader, TypedCode};
use crate::error::ErrorKind;
use crate::handshake::{
    HandshakeError, LinkRequest, MessageHeader, MessageKind, PrimaryHandshake, PrimaryState,
    RefusalReason,
};
use crate::offer::TokenId;
use crate::persist::PersistError;
use crate::policy::Policy;
use crate::registry::{Account, RegistryError};
use crate::time::Timestamp;

/// Pairings a phone keeps in flight at once; a new one beyond this ends the
/// oldest (each needs the user's own link intent, so more is misuse).
pub const MAX_PAIRINGS: usize = 8;

/// What a message the phone received means for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneEvent {
    /// A companion asks to be linked: show `request.prompt()` (its label,
    /// fingerprint and check code), then [`Phone::approve`] or
    /// [`Phone::refuse`].
    Prompt {
        /// The pairing.
        token: TokenId,
        /// What the companion asked.
        request: LinkRequest,
    },
    /// The companion proved its key: it is linked as `index` (its list is
    /// in the outbox).
    Linked {
        /// The pairing.
        token: TokenId,
        /// The companion's index.
        index: DeviceIndex,
    },
    /// Refused without asking the user (no free slot): the Refusal is in
    /// the outbox, and the pairing is over.
    Refused {
        /// The pairing.
        token: TokenId,
        /// Why.
        reason: RefusalReason,
    },
    /// The typed code was right: the companion's Request comes next.
    CodeAccepted {
        /// The pairing.
        token: TokenId,
    },
    /// The typed code was wrong: the pairing is over (the companion was
    /// told by its own check).
    WrongCode {
        /// The pairing.
        token: TokenId,
    },
}

/// Why a call on the phone failed. Nothing changed (the outbox included),
/// unless the wrapped error says the pairing ended.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// No pairing in flight has this token (never started, over, or
    /// dropped for a newer one).
    #[error("no pairing in flight for this token")]
    UnknownPairing,
    /// The account refused (no link intent, device limit, unknown device…).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The handshake refused the message (forged, malformed, out of order).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The saved state could not be saved or restored.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

impl PhoneError {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PhoneError::UnknownPairing => ErrorKind::Unexpected,
            PhoneError::Registry(e) => e.kind(),
            PhoneError::Handshake(e) => e.kind(),
            PhoneError::Persist(e) => e.kind(),
        }
    }
}

#[derive(Debug, Clone)]
enum Pairing {
    Scanned(Box<PrimaryHandshake>),
    Code(Box<CodeEntry>),
}

impl Pairing {
    fn token(&self) -> TokenId {
        match self {
            Pairing::Scanned(h) => h.token_id(),
            Pairing::Code(e) => e.token_id(),
        }
    }
}

/// The primary's side of devicelink for a host: the [`Account`], the
/// pairings in flight (scanned QR codes and typed codes), and an outbox.
///
/// ```
/// use devicelink::host::{Output, Phone, PhoneEvent};
/// use devicelink::{Companion, DeviceIdentity, DeviceLabel, Policy, Timestamp};
/// use rand_chacha::rand_core::SeedableRng;
///
/// let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
/// let now = Timestamp::from_unix_millis(1_700_000_000_000);
/// let mut phone = Phone::generate(Policy::default(), &mut rng, now);
/// let mut tab = Companion::new(
///     DeviceIdentity::generate(&mut rng),
///     DeviceLabel::new("Firefox on Linux")?,
///     &Policy::default(),
///     &mut rng,
///     now,
/// );
///
/// // The user opens "Link a device" and scans the tab's QR code.
/// phone.open_link_intent(now);
/// let token = phone.scan(&tab.offer().unwrap().to_text(), &mut rng, now)?;
/// let Some(Output::Send { message: hello, .. }) = phone.poll_output() else { panic!() };
/// let request = tab.receive_hello(&hello, &mut rng, now)?;
///
/// // The phone shows the prompt; its user approves.
/// let PhoneEvent::Prompt { request: asked, .. } = phone.receive(&request, &mut rng, now)? else {
///     panic!()
/// };
/// assert!(asked.prompt().contains("Firefox on Linux"));
/// phone.approve(token, &mut rng, now)?;
/// // Save first, then publish the new list, then send the Grant.
/// assert_eq!(phone.poll_output(), Some(Output::Save));
/// assert!(matches!(phone.poll_output(), Some(Output::PublishList { .. })));
/// let Some(Output::Send { message: grant, .. }) = phone.poll_output() else { panic!() };
///
/// // The tab's user agrees; the phone hears the Confirm.
/// tab.receive_grant(&grant, now)?;
/// let confirm = tab.consent(now)?;
/// assert!(matches!(phone.receive(&confirm, &mut rng, now)?, PhoneEvent::Linked { .. }));
/// assert_eq!(phone.poll_output(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Phone {
    account: Account,
    pairings: Vec<Pairing>,
    outbox: VecDeque<Output>,
    /// The newest list version put in the outbox (or held when the phone
    /// was made).
    published: Option<u64>,
}

/// The phone's saved form: each part as its own saved state (each restored
/// with its own checks).
#[derive(Serialize, Deserialize)]
struct SavedPhone {
    #[serde(with = "crate::encoding::b64_vec")]
    account: Vec<u8>,
    handshakes: Vec<crate::encoding::Bytes>,
    codes: Vec<crate::encoding::Bytes>,
}

impl Phone {
    /// The phone of `account`. Lists it makes from now on go to the
    /// outbox (the current one is the host's already).
    pub fn new(account: Account) -> Self {
        let published = Some(account.device_list().version());
        Phone {
            account,
            pairings: Vec::new(),
            outbox: VecDeque::new(),
            published,
        }
    }

    /// A new account under `policy`, with a fresh account key.
    pub fn generate<R: RngCore + CryptoRng>(policy: Policy, rng: &mut R, now: Timestamp) -> Self {
        Phone::new(Account::generate(policy, rng, now))
    }

    /// The account (read only: every change goes through the phone, so
    /// its outputs are never missed).
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The next thing the host must carry out, oldest first; `None` when
    /// the outbox is empty. Drain it after every call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outbox.pop_front()
    }

    /// The user opened "Link a device": the next scan or typed code within
    /// the policy's window may start a pairing. Returns when it closes.
    pub fn open_link_intent(&mut self, now: Timestamp) -> Timestamp {
        self.account.open_link_intent(now)
    }

    /// Scans a companion's QR text: the Hello goes to the outbox. Returns
    /// the pairing's token.
    pub fn scan<R: RngCore + CryptoRng>(
        &mut self,
        text: &str,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<TokenId, PhoneError> {
        let (handshake, hello) = self.account.scan(text, rng, now)?;
        let token = handshake.token_id();
        self.start(Pairing::Scanned(Box::new(handshake)), hello);
        Ok(token)
    }

    /// Enters a typed code: `offer` is the CodeOffer the relay gave for
    /// its handle. The CodeHello goes to the outbox. Returns the pairing's
    /// token.
    pub fn enter_code<R: RngCore + CryptoRng>(
        &mut self,
        typed: &TypedCode,
        offer: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<TokenId, PhoneError> {
        let (entry, hello) = self.account.enter_code(typed, offer, rng, now)?;
        let token = entry.token_id();
        self.start(Pairing::Code(Box::new(entry)), hello);
        Ok(token)
    }

    fn start(&mut self, pairing: Pairing, first: Vec<u8>) {
        let token = pairing.token();
        self.pairings.retain(|p| p.token() != token);
        if self.pairings.len() >= MAX_PAIRINGS {
            self.pairings.remove(0);
        }
        self.pairings.push(pairing);
        self.outbox.push_back(Output::Send {
            token,
            message: first,
        });
    }

    fn position(&self, token: &TokenId) -> Result<usize, PhoneError> {
        self.pairings
            .iter()
            .position(|p| p.token() == *token)
            .ok_or(PhoneError::UnknownPairing)
    }

    /// Handles a message from a companion (a Request, a Confirm, a
    /// CodeConfirm), whichever pairing it belongs to. A message that is
    /// refused changes nothing.
    pub fn receive<R: RngCore + CryptoRng>(
        &mut self,
        message: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<PhoneEvent, PhoneError> {
        if is_code_message(message) {
            let token = CodeHeader::parse(message)?.token_id;
            let at = self.position(&token)?;
            let Some(Pairing::Code(entry)) = self.pairings.get_mut(at) else {
                return Err(PhoneError::UnknownPairing);
            };
            return match entry.receive_confirm(message, now) {
                Ok(handshake) => {
                    self.pairings[at] = Pairing::Scanned(Box::new(handshake));
                    Ok(PhoneEvent::CodeAccepted { token })
                }
                Err(HandshakeError::WrongCode) => {
                    self.pairings.remove(at);
                    Ok(PhoneEvent::WrongCode { token })
                }
                Err(e) => Err(e.into()),
            };
        }
        let header = MessageHeader::parse(message)?;
        let token = header.token_id;
        let at = self.position(&token)?;
        let Some(Pairing::Scanned(handshake)) = self.pairings.get_mut(at) else {
            return Err(HandshakeError::UnexpectedMessage {
                expected: "a code confirmation",
                got: header.kind,
            }
            .into());
        };
        match header.kind {
            MessageKind::Request => {
                match self.account.receive_request(handshake, message, rng, now) {
                    Ok(request) => Ok(PhoneEvent::Prompt { token, request }),
                    Err(RegistryError::Refused { reason, refusal }) => {
                        self.pairings.remove(at);
                        self.outbox.push_back(Output::Send {
                            token,
                            message: refusal,
                        });
                        Ok(PhoneEvent::Refused { token, reason })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            MessageKind::Confirm => {
                let linked = self.account.confirm(handshake, message, now)?;
                let index = linked.certificate.index();
                self.pairings.remove(at);
                self.publish_list();
                Ok(PhoneEvent::Linked { token, index })
            }
            kind => Err(HandshakeError::UnexpectedMessage {
                expected: "a request or a confirm",
                got: kind,
            }
            .into()),
        }
    }

    /// The user approved the prompt: the outbox gets [`Output::Save`], the
    /// list that names the companion (pending until its Confirm), then the
    /// Grant.
    pub fn approve<R: RngCore + CryptoRng>(
        &mut self,
        token: TokenId,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(), PhoneError> {
        let at = self.position(&token)?;
        let Some(Pairing::Scanned(handshake)) = self.pairings.get_mut(at) else {
            return Err(HandshakeError::WrongState {
                state: "no request to grant",
            }
            .into());
        };
        let grant = self.account.grant(handshake, rng, now)?;
        self.outbox.push_back(Output::Save);
        // The list before the Grant: the relay then knows the account (and
        // the new device's key) before the companion subscribes.
        self.publish_list();
        self.outbox.push_back(Output::Send {
            token,
            message: grant,
        });
        Ok(())
    }

    /// The user refused the prompt (or the check codes differ): the
    /// authenticated Refusal goes to the outbox and the pairing is over.
    pub fn refuse<R: RngCore + CryptoRng>(
        &mut self,
        token: TokenId,
        reason: RefusalReason,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(), PhoneError> {
        let at = self.position(&token)?;
        let Some(Pairing::Scanned(handshake)) = self.pairings.get_mut(at) else {
            return Err(HandshakeError::WrongState {
                state: "no request to refuse",
            }
            .into());
        };
        let refusal = self.account.refuse(handshake, reason, rng, now)?;
        self.pairings.remove(at);
        self.outbox.push_back(Output::Send {
            token,
            message: refusal,
        });
        Ok(())
    }

    /// Revokes a companion: the list without it goes to the outbox.
    pub fn revoke(&mut self, index: DeviceIndex, now: Timestamp) -> Result<(), PhoneError> {
        self.account.revoke(index, now)?;
        self.publish_list();
        Ok(())
    }

    /// The phone is active: a signed heartbeat goes to the outbox (and the
    /// list first, if the clock changed it).
    pub fn heartbeat(&mut self, now: Timestamp) {
        let heartbeat = self.account.heartbeat(now);
        self.publish_list();
        self.outbox.push_back(Output::PublishHeartbeat {
            bytes: heartbeat.to_bytes(),
        });
    }

    /// Advances time: pending companions that never confirmed lose their
    /// slot (the new list goes to the outbox), and pairings that ended are
    /// dropped.
    pub fn poll(&mut self, now: Timestamp) {
        self.account.poll(now);
        self.pairings.retain(|p| match p {
            Pairing::Scanned(h) => !matches!(
                h.state(),
                PrimaryState::Confirmed { .. } | PrimaryState::Refused { .. }
            ),
            Pairing::Code(_) => true,
        });
        self.publish_list();
    }

    /// When [`Phone::poll`] must run next.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.account.next_deadline()
    }

    /// Saves the account and its pairings in flight (versioned JSON;
    /// **secret**: the account key). The outbox is not saved: a restored
    /// phone's first output publishes its current list again (a relay that
    /// holds it already refuses the duplicate), so a list made just before
    /// a crash is not lost.
    pub fn save(&self) -> Result<Vec<u8>, PhoneError> {
        let mut saved = SavedPhone {
            account: self.account.save()?,
            handshakes: Vec::new(),
            codes: Vec::new(),
        };
        for p in &self.pairings {
            match p {
                Pairing::Scanned(h) => saved.handshakes.push(crate::encoding::Bytes(h.save()?)),
                Pairing::Code(e) => saved.codes.push(crate::encoding::Bytes(e.save()?)),
            }
        }
        Ok(crate::persist::save("phone", &saved)?)
    }

    /// Restores a phone saved by [`Phone::save`]; every part is restored
    /// with its own checks, and each pairing must belong to the account.
    pub fn restore(bytes: &[u8]) -> Result<Self, PhoneError> {
        let saved: SavedPhone = crate::persist::restore("phone", bytes)?;
        let mut phone = Phone::new(Account::restore(&saved.account)?);
        phone.published = None;
        let id = phone.account.account_id();
        let mismatch = || PersistError::Inconsistent("a pairing of another account");
        for h in &saved.handshakes {
            let h = PrimaryHandshake::restore(&h.0)?;
            if h.account() != id {
                return Err(mismatch().into());
            }
            phone.pairings.push(Pairing::Scanned(Box::new(h)));
        }
        for e in &saved.codes {
            let e = CodeEntry::restore(&e.0)?;
            if e.account() != id {
                return Err(mismatch().into());
            }
            phone.pairings.push(Pairing::Code(Box::new(e)));
        }
        if phone.pairings.len() > MAX_PAIRINGS {
            return Err(PersistError::Inconsistent("too many pairings").into());
        }
        phone.publish_list();
        Ok(phone)
    }

    /// Puts the account's list in the outbox if its version is new.
    fn publish_list(&mut self) {
        let list = self.account.device_list();
        if self.published.is_none_or(|p| list.version() > p) {
            self.published = Some(list.version());
            self.outbox.push_back(Output::PublishList {
                version: list.version(),
                bytes: list.to_bytes(),
            });
        }
    }
}
