//! The browser companion as plain Rust: the core's [`Companion`] (while
//! pairing) or [`LinkedSession`] (once linked), driven by relay frames and
//! `now`, with the frames to send kept in an outbox.
//!
//! This is the thin I/O-free shell the JS class ([`crate::WebCompanion`])
//! wraps; it is plain Rust so that it is tested natively too. It decides no
//! rule: the offer's rotation, the handshake, the lease and the logout are
//! the core's answers, and the relay's frames are
//! [`devicelink_relay::frame`]'s. What it keeps itself is transport
//! bookkeeping, like the relay's own async client
//! (`devicelink_relay::client`): which of its frames the relay has not
//! answered yet (the relay answers each one, in order), and which token the
//! relay has acknowledged (the QR code is shown only once the relay knows
//! its token).

use std::collections::VecDeque;

use devicelink::handshake::{CompanionEvent, FailureReason, MessageHeader, MessageKind};
use devicelink::offer::OfferState;
use devicelink::qr::{ImageStyle, OfferQr, QrError};
use devicelink::relay::{HelloDigest, SubscriptionProof};
use devicelink::{
    CertificateError, Companion, CompanionState, DeviceIdentity, DeviceIndex, DeviceKey,
    DeviceLabel, DeviceLabelError, DeviceListEntry, DeviceSigner, ErrorKind, HandshakeError,
    LinkedSession, LogoutReason, PersistError, Policy, PrimaryHeartbeat, RefusalReason,
    SessionError, SessionStatus, SignedDeviceList, Timestamp, TokenId,
};
use devicelink_relay::codes;
use devicelink_relay::frame::{Frame, FrameError, FrameType};
use devicelink_relay::identity::ClientSecret;
use rand_core::{CryptoRng, RngCore};

/// Why a call on the browser companion failed. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The device name is not a valid label.
    #[error("device name: {0}")]
    Label(#[from] DeviceLabelError),
    /// The saved state could not be saved or restored.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The relay sent bytes that are not a frame.
    #[error("bad frame from the relay: {0}")]
    Frame(#[from] FrameError),
    /// The QR code could not be drawn.
    #[error(transparent)]
    Qr(#[from] QrError),
    /// The handshake could not build a message (the core's refusal).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The browser's key store gave a signature that does not verify under
    /// this device's key, or none was asked for.
    #[error("the key store's signature does not verify")]
    Signature,
}

/// What the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// An offer exists but the relay has not acknowledged its token yet:
    /// the QR code is not shown (a scan would find no token).
    Connecting,
    /// The QR code is on screen, rotating.
    Showing,
    /// Scanned: waiting for the phone's approval.
    AwaitingApproval,
    /// Granted: the page shows which account this browser would join and
    /// the check code its phone must show, and asks its user to agree
    /// ([`BrowserCompanion::consent`]) or not ([`BrowserCompanion::decline`]).
    /// Nothing is confirmed before.
    AwaitingConsent,
    /// Linked, lease running.
    Linked,
    /// Linked, within the policy's warning window before the lease ends.
    ExpiringSoon,
    /// Logged out (revoked, primary offline…): re-pair to continue.
    LoggedOut,
    /// The pairing ended without a link (timed out, refused, cancelled).
    Failed,
}

impl Phase {
    /// A stable lower-case name for the page (`data-phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Showing => "showing",
            Phase::AwaitingApproval => "awaiting-approval",
            Phase::AwaitingConsent => "awaiting-consent",
            Phase::Linked => "linked",
            Phase::ExpiringSoon => "expiring-soon",
            Phase::LoggedOut => "logged-out",
            Phase::Failed => "failed",
        }
    }
}

/// Something to tell the user once (the page shows it as a notice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The account's signed list names a device this session had not seen:
    /// "a new device was linked — not you?".
    DeviceAdded(DeviceListEntry),
    /// A device left the account's list (with the list's reason, if it
    /// gives one).
    DeviceRemoved {
        /// The entry it had.
        entry: DeviceListEntry,
        /// Why, when the list says.
        reason: Option<LogoutReason>,
    },
    /// The relay refused one of this companion's frames. The relay's text
    /// is not kept: its code picks the class, and the page shows the
    /// class's fixed sentence ([`Problem::sentence`]).
    RelayError {
        /// The relay's code (`docs/RELAY.md` §3.3).
        code: u16,
        /// What the page tells the user ([`Problem::from_relay_code`]).
        problem: Problem,
    },
    /// The relay says this device was logged out but the session's signed
    /// facts do not (yet): the relay's word alone logs nobody out.
    RelayLogout {
        /// The relay's reason.
        reason: LogoutReason,
    },
    /// Another signed history of the account reached this browser (a phone
    /// restored from an old backup, or its key used twice): refused, and
    /// from now on only lists that continue this browser's history are
    /// accepted ([`LinkedSession::fork_seen`], kept across reloads).
    Fork {
        /// The list version at which the histories differ.
        version: u64,
    },
}

impl Notice {
    /// A stable lower-case name for the page (the notice's class):
    /// `"device-added"`, `"device-removed"`, `"relay-error"`,
    /// `"relay-logout"` or `"fork"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::DeviceAdded(_) => "device-added",
            Notice::DeviceRemoved { .. } => "device-removed",
            Notice::RelayError { .. } => "relay-error",
            Notice::RelayLogout { .. } => "relay-logout",
            Notice::Fork { .. } => "fork",
        }
    }

    /// The problem a relay refusal is, if this notice is one.
    pub fn problem(&self) -> Option<Problem> {
        match self {
            Notice::RelayError { problem, .. } => Some(*problem),
            _ => None,
        }
    }

    /// The words the page shows. Fixed sentences, and device labels, which
    /// come from the account's signed list and are [`DeviceLabel`]s (no
    /// control, bidirectional, zero-width or separator characters): no
    /// other text from the network.
    pub fn text(&self) -> String {
        match self {
            Notice::DeviceAdded(e) => format!(
                "A new device was linked: \u{201c}{}\u{201d} (#{}). Not you? Remove it from your phone.",
                e.label, e.index.0
            ),
            Notice::DeviceRemoved { entry, reason } => match reason {
                Some(r) => format!(
                    "\u{201c}{}\u{201d} (#{}) was logged out: {}.",
                    entry.label,
                    entry.index.0,
                    other_logout_text(*r)
                ),
                None => format!(
                    "\u{201c}{}\u{201d} (#{}) was logged out.",
                    entry.label, entry.index.0
                ),
            },
            Notice::RelayError { problem, .. } => problem.sentence().to_owned(),
            Notice::RelayLogout { reason } => format!(
                "The relay reports this device logged out ({}); the account's signed list does not say so yet.",
                other_logout_text(*reason)
            ),
            Notice::Fork { version } => format!(
                "Another copy of your phone signs for this account (a phone restored from an old \
                 backup?): its device list version {version} differs from the one this browser \
                 holds, so it was refused. Check the linked devices on your phone."
            ),
        }
    }
}

/// Why this device is logged out, for people (the page's "This browser is
/// no longer linked: …").
pub fn logout_text(r: LogoutReason) -> &'static str {
    match r {
        LogoutReason::Revoked => "your phone removed this device",
        LogoutReason::PrimaryOffline => "your phone was offline for too long (14 days)",
        LogoutReason::CompanionIdle => "this device was not used for too long",
        LogoutReason::ConfirmationTimedOut => "the link was not confirmed in time",
        LogoutReason::Replaced => "this device was linked again",
    }
}

/// Why another device (or, as the relay says, this one) was logged out.
fn other_logout_text(r: LogoutReason) -> &'static str {
    match r {
        LogoutReason::Revoked => "removed from the phone",
        LogoutReason::PrimaryOffline => "the phone was offline for too long",
        LogoutReason::CompanionIdle => "not used for too long",
        LogoutReason::ConfirmationTimedOut => "its link was not confirmed in time",
        LogoutReason::Replaced => "linked again",
    }
}

/// A class of problem the page reports, each with one fixed sentence
/// ([`Problem::sentence`]). The page never shows text it was sent: a relay's
/// error text (any UTF-8, bidirectional overrides included) is dropped and
/// its numeric code picks the class; a saved state's or a frame's defect is
/// one class each, whatever the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    /// Relay code 1xx: the relay could not read one of this browser's
    /// frames.
    RelayMalformed,
    /// Relay code 2xx: the relay could not verify one of its frames (not
    /// identified, no proof).
    RelayUnauthenticated,
    /// Relay code 3xx: a frame the relay did not expect.
    RelayUnexpected,
    /// Relay codes 401 and 402: over the relay's rate.
    RelayRateLimited,
    /// Relay code 4xx (other than the rates): refused by a rule.
    RelayRefused,
    /// Relay code 5xx: too late (a token or offer expired, idle).
    RelayExpired,
    /// Relay code 6xx: contradicts what the relay holds.
    RelayConflict,
    /// Relay code 701: the phone is not connected to the relay.
    PhoneNotConnected,
    /// Relay code 702: the relay is shutting down.
    RelayShuttingDown,
    /// Relay code 7xx (other): the relay's store is unavailable.
    RelayUnavailable,
    /// Relay code 8xx: the relay says this browser misused it.
    RelayMisuse,
    /// A relay code outside 100–899.
    RelayUnknown,
    /// The relay sent bytes that are not a frame ([`WebError::Frame`]).
    BadFrame,
    /// The saved link could not be read or written ([`WebError::Persist`]).
    SavedState,
    /// The device name is empty (or only spaces).
    LabelEmpty,
    /// The device name is over [`devicelink::label::MAX_LABEL_LEN`] bytes.
    LabelTooLong,
    /// The device name holds control or invisible characters (or is not
    /// text).
    LabelCharacters,
    /// The QR code could not be drawn ([`WebError::Qr`]).
    QrCode,
    /// The handshake could not build a message ([`WebError::Handshake`]).
    Handshake,
    /// The phone refused: the account has all the devices it allows.
    DeviceLimitReached,
    /// The phone's user declined.
    Declined,
    /// The phone found the code out of date.
    OfferStale,
    /// The phone refused for a reason this version does not know.
    PhoneRefused,
    /// The code was not scanned before the display gave up.
    NotScanned,
    /// The pairing was cancelled.
    Cancelled,
    /// The phone did not approve in time.
    ApprovalTimedOut,
    /// The browser's key store did not sign for this device (or signed
    /// with another key).
    KeyStore,
}

impl Problem {
    /// Every class, for tests and documentation.
    pub const ALL: [Problem; 27] = [
        Problem::RelayMalformed,
        Problem::RelayUnauthenticated,
        Problem::RelayUnexpected,
        Problem::RelayRateLimited,
        Problem::RelayRefused,
        Problem::RelayExpired,
        Problem::RelayConflict,
        Problem::PhoneNotConnected,
        Problem::RelayShuttingDown,
        Problem::RelayUnavailable,
        Problem::RelayMisuse,
        Problem::RelayUnknown,
        Problem::BadFrame,
        Problem::SavedState,
        Problem::LabelEmpty,
        Problem::LabelTooLong,
        Problem::LabelCharacters,
        Problem::QrCode,
        Problem::Handshake,
        Problem::DeviceLimitReached,
        Problem::Declined,
        Problem::OfferStale,
        Problem::PhoneRefused,
        Problem::NotScanned,
        Problem::Cancelled,
        Problem::ApprovalTimedOut,
        Problem::KeyStore,
    ];

    /// The class of a relay's [`Frame::Error`] code (`docs/RELAY.md` §3.3):
    /// the transport's own details where the user can act on them, else the
    /// code's kind.
    pub fn from_relay_code(code: u16) -> Problem {
        match code {
            codes::RATE_LIMITED | codes::NEW_ACCOUNTS_RATE => Problem::RelayRateLimited,
            codes::PEER_GONE => Problem::PhoneNotConnected,
            codes::SHUTTING_DOWN => Problem::RelayShuttingDown,
            _ => match codes::code_kind(code) {
                Some(ErrorKind::Malformed) => Problem::RelayMalformed,
                Some(ErrorKind::Unauthenticated) => Problem::RelayUnauthenticated,
                Some(ErrorKind::Unexpected) => Problem::RelayUnexpected,
                Some(ErrorKind::Refused) => Problem::RelayRefused,
                Some(ErrorKind::Expired) => Problem::RelayExpired,
                Some(ErrorKind::Conflict) => Problem::RelayConflict,
                Some(ErrorKind::Unavailable) => Problem::RelayUnavailable,
                Some(ErrorKind::Misuse) => Problem::RelayMisuse,
                Some(_) | None => Problem::RelayUnknown,
            },
        }
    }

    /// A stable lower-case name for the page (`data-problem`).
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::RelayMalformed => "relay-malformed",
            Problem::RelayUnauthenticated => "relay-unauthenticated",
            Problem::RelayUnexpected => "relay-unexpected",
            Problem::RelayRateLimited => "relay-rate-limited",
            Problem::RelayRefused => "relay-refused",
            Problem::RelayExpired => "relay-expired",
            Problem::RelayConflict => "relay-conflict",
            Problem::PhoneNotConnected => "phone-not-connected",
            Problem::RelayShuttingDown => "relay-shutting-down",
            Problem::RelayUnavailable => "relay-unavailable",
            Problem::RelayMisuse => "relay-misuse",
            Problem::RelayUnknown => "relay-unknown",
            Problem::BadFrame => "bad-frame",
            Problem::SavedState => "saved-state",
            Problem::LabelEmpty => "label-empty",
            Problem::LabelTooLong => "label-too-long",
            Problem::LabelCharacters => "label-characters",
            Problem::QrCode => "qr-code",
            Problem::Handshake => "handshake",
            Problem::DeviceLimitReached => "device-limit-reached",
            Problem::Declined => "declined",
            Problem::OfferStale => "offer-stale",
            Problem::PhoneRefused => "phone-refused",
            Problem::NotScanned => "not-scanned",
            Problem::Cancelled => "cancelled",
            Problem::ApprovalTimedOut => "approval-timed-out",
            Problem::KeyStore => "key-store",
        }
    }

    /// The one sentence the page shows for this class.
    pub fn sentence(self) -> &'static str {
        match self {
            Problem::RelayMalformed => "The relay could not read a message from this browser.",
            Problem::RelayUnauthenticated => {
                "The relay could not verify a message from this browser."
            }
            Problem::RelayUnexpected => {
                "The relay did not expect a message this browser sent."
            }
            Problem::RelayRateLimited => {
                "The relay is limiting how often this browser may ask. It will try again shortly."
            }
            Problem::RelayRefused => "The relay refused a request from this browser.",
            Problem::RelayExpired => "A request from this browser reached the relay too late.",
            Problem::RelayConflict => {
                "The relay already holds something that conflicts with this browser's request."
            }
            Problem::PhoneNotConnected => "Your phone is not connected to the relay right now.",
            Problem::RelayShuttingDown => {
                "The relay is restarting. This browser will reconnect."
            }
            Problem::RelayUnavailable => "The relay is unavailable right now. Try again later.",
            Problem::RelayMisuse => {
                "The relay refused a request this browser should not have sent."
            }
            Problem::RelayUnknown => {
                "The relay refused a request for a reason this page does not know."
            }
            Problem::BadFrame => "The relay sent data this browser could not read.",
            Problem::SavedState => "The link saved in this browser could not be read or saved.",
            Problem::LabelEmpty => "Enter a name for this browser.",
            Problem::LabelTooLong => "That name is too long: 64 bytes at most.",
            Problem::LabelCharacters => {
                "That name contains control or invisible characters. Use visible text only."
            }
            Problem::QrCode => "The code could not be drawn. Reload to try again.",
            Problem::Handshake => {
                "This browser could not answer your phone. Reload to try again."
            }
            Problem::DeviceLimitReached => {
                "Your account already has all the linked devices it allows. Remove one on your phone, then reload to try again."
            }
            Problem::Declined => "Linking was declined on your phone.",
            Problem::OfferStale => {
                "Your phone found the code out of date. Reload to show a new one."
            }
            Problem::PhoneRefused => "Your phone refused to link this browser.",
            Problem::NotScanned => "The code was not scanned in time. Reload to show a new one.",
            Problem::Cancelled => "Linking was cancelled.",
            Problem::ApprovalTimedOut => {
                "Your phone did not approve in time. Reload to try again."
            }
            Problem::KeyStore => {
                "This browser's key store could not sign for this device. Reload to try again."
            }
        }
    }
}

impl WebError {
    /// The class the page reports for this error: the JS error's message
    /// is its fixed sentence, never this error's own text (which may quote
    /// a saved state's contents).
    pub fn problem(&self) -> Problem {
        match self {
            WebError::Label(DeviceLabelError::Empty) => Problem::LabelEmpty,
            WebError::Label(DeviceLabelError::TooLong { .. }) => Problem::LabelTooLong,
            WebError::Label(DeviceLabelError::ControlCharacter | DeviceLabelError::NotUtf8) => {
                Problem::LabelCharacters
            }
            WebError::Persist(_) => Problem::SavedState,
            WebError::Frame(_) => Problem::BadFrame,
            WebError::Qr(_) => Problem::QrCode,
            WebError::Handshake(HandshakeError::SignatureNeeded) | WebError::Signature => {
                Problem::KeyStore
            }
            WebError::Handshake(_) => Problem::Handshake,
        }
    }
}

enum Side {
    Pairing(Box<Companion>),
    Linked(Box<LinkedSession>),
}

/// The browser companion: pairing, then linked.
pub struct BrowserCompanion {
    side: Side,
    policy: Policy,
    /// The relay client id this tab identifies as on every connection, so
    /// a pairing survives a dropped connection (its token stays this
    /// client's) and a subscription's proof names it.
    secret: ClientSecret,
    /// Types of the frames sent on this connection and not answered yet.
    awaiting: VecDeque<FrameType>,
    /// Frames to send, oldest first.
    outbox: VecDeque<Vec<u8>>,
    /// The token whose Register the relay acknowledged.
    registered: Option<TokenId>,
    /// Whether a pairing companion has had its connection.
    connected_once: bool,
    /// Whether the shell has seen the session logged out (the core keeps
    /// the logout; this only says whether the page was told).
    logged_out_seen: bool,
    /// The held list version after which this shell last asked the relay
    /// for the versions it missed (once per held version: the relay keeps
    /// 64, and a gap it cannot fill must not loop).
    asked_after: Option<u64>,
    /// The Confirm this tab's user released, until the relay routes it: a
    /// connection lost before that sends it again on the next one (the
    /// phone's confirm is idempotent), so a "yes" given while the socket
    /// was down is not lost.
    unrouted_confirm: Option<Vec<u8>>,
    /// The key store's signature over the Confirm, made while the prompt
    /// is shown (signing is not consent: it is sent only on `consent`).
    confirm_signature: Option<[u8; 64]>,
    /// The subscription proof for this tab's client id, once the key
    /// store signed it (the core signs a key it holds itself).
    subscription_proof: Option<SubscriptionProof>,
    /// A Subscribe that waits for the key store's proof.
    subscribe_waiting: bool,
    notices: Vec<Notice>,
    /// Whether the saved state is older than the session.
    dirty: bool,
}

impl std::fmt::Debug for BrowserCompanion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserCompanion")
            .field("awaiting", &self.awaiting)
            .finish_non_exhaustive()
    }
}

/// The side of the QR image in pixels: 41 modules (33 and a quiet zone of
/// 4 on each side) of 8 px.
const QR_STYLE: ImageStyle = ImageStyle {
    module_px: 8,
    quiet_zone: 4,
};

/// The device key of a new pairing: the key store's, or a fresh identity
/// this state holds.
fn signer<R: RngCore + CryptoRng>(key_store: Option<DeviceKey>, rng: &mut R) -> DeviceSigner {
    match key_store {
        Some(key) => DeviceSigner::KeyStore(key),
        None => DeviceSigner::Identity(DeviceIdentity::generate(rng)),
    }
}

impl BrowserCompanion {
    /// A new companion called `label` with a fresh offer at `now`. Its
    /// device key is `key_store`, the public half of a key the browser's
    /// key store holds (a non-extractable WebCrypto Ed25519 `CryptoKey`,
    /// which signs what [`BrowserCompanion::to_sign`] asks), or, where the
    /// browser has none, a fresh identity key this state holds (and saves).
    pub fn new<R: RngCore + CryptoRng>(
        label: &str,
        key_store: Option<DeviceKey>,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Self, WebError> {
        let label = DeviceLabel::new(label)?;
        let policy = Policy::default();
        let companion = Companion::new(signer(key_store, rng), label, &policy, rng, now);
        let secret = ClientSecret::generate(rng);
        Ok(Self::with_side(
            Side::Pairing(Box::new(companion)),
            policy,
            secret,
        ))
    }

    /// "Link again" after a logout: a fresh device key (`key_store` as at
    /// [`BrowserCompanion::new`]) and offer under the same name, that
    /// accepts a Grant only from the account this browser was linked to
    /// (any other account's Grant is refused before the user is asked).
    /// `None` unless this browser was linked.
    pub fn link_again<R: RngCore + CryptoRng>(
        &self,
        key_store: Option<DeviceKey>,
        rng: &mut R,
        now: Timestamp,
    ) -> Option<Self> {
        let Side::Linked(session) = &self.side else {
            return None;
        };
        let signer = signer(key_store, rng);
        let companion = Companion::new(signer, session.label().clone(), &self.policy, rng, now)
            .expect_account(session.account());
        let secret = ClientSecret::generate(rng);
        Some(Self::with_side(
            Side::Pairing(Box::new(companion)),
            self.policy.clone(),
            secret,
        ))
    }

    fn with_side(side: Side, policy: Policy, secret: ClientSecret) -> Self {
        BrowserCompanion {
            side,
            policy,
            secret,
            awaiting: VecDeque::new(),
            outbox: VecDeque::new(),
            registered: None,
            connected_once: false,
            logged_out_seen: false,
            asked_after: None,
            unrouted_confirm: None,
            confirm_signature: None,
            subscription_proof: None,
            subscribe_waiting: false,
            notices: Vec::new(),
            dirty: false,
        }
    }

    /// Restores a linked session saved by [`BrowserCompanion::save`] and
    /// brings it to `now` (a lease that ended while the tab was closed is
    /// a logout now).
    pub fn restore<R: RngCore + CryptoRng>(
        saved: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Self, WebError> {
        let policy = Policy::default();
        let session = LinkedSession::restore(saved, &policy)?;
        let mut me = Self::with_side(
            Side::Linked(Box::new(session)),
            policy,
            ClientSecret::generate(rng),
        );
        me.settle(now);
        Ok(me)
    }

    /// The state to keep across reloads: the linked session (versioned
    /// JSON from [`LinkedSession::save`]). It holds the device's identity
    /// secret (secret material) unless the key store holds the key: then
    /// only its public half. `None` while pairing: a reload
    /// shows a new code (a dropped connection does not: the pairing goes on
    /// when the connection is back).
    pub fn save(&mut self) -> Result<Option<Vec<u8>>, WebError> {
        let saved = match &self.side {
            Side::Pairing(_) => None,
            Side::Linked(session) => Some(session.save()?),
        };
        self.dirty = false;
        Ok(saved)
    }

    /// Whether the session changed since the last [`BrowserCompanion::save`].
    pub fn needs_save(&self) -> bool {
        self.dirty
    }

    /// A (new) connection to `/v1/companion` is open: queues what starts
    /// it: the Identify (the same client id on every connection), then the
    /// offer's Register while pairing (again after a reconnect: the relay
    /// still holds the token for this client, and its duplicate refusal is
    /// expected), or the session's list and the Subscribe once linked.
    pub fn connected(&mut self, now: Timestamp) -> Result<(), WebError> {
        self.awaiting.clear();
        self.outbox.clear();
        self.send(&Frame::Identify {
            secret: self.secret.clone(),
        });
        match &self.side {
            Side::Pairing(_) => {
                self.connected_once = true;
                self.register_offer();
                Ok(())
            }
            Side::Linked(_) => {
                self.settle(now);
                if let Some(confirm) = self.unrouted_confirm.clone() {
                    self.send_message(&confirm)?;
                }
                self.subscribe();
                Ok(())
            }
        }
    }

    /// Brings a linked session to `now` ([`LinkedSession::poll`] makes a
    /// logout permanent); returns whether it has just been seen logged out.
    fn settle(&mut self, now: Timestamp) -> bool {
        let Side::Linked(session) = &mut self.side else {
            return false;
        };
        let out = matches!(session.poll(now), SessionStatus::LoggedOut { .. });
        let news = out && !self.logged_out_seen;
        self.logged_out_seen |= out;
        self.dirty |= news;
        news
    }

    fn send(&mut self, frame: &Frame<'_>) {
        self.awaiting.push_back(frame.frame_type());
        self.outbox.push_back(frame.encode());
    }

    fn send_message(&mut self, message: &[u8]) -> Result<(), WebError> {
        let header = MessageHeader::parse(message)?;
        self.send(&Frame::Message {
            header,
            bytes: message,
        });
        Ok(())
    }

    fn register_offer(&mut self) {
        let Side::Pairing(companion) = &self.side else {
            return;
        };
        let (Some(offer), Some(expires_at)) = (companion.offer(), companion.next_deadline()) else {
            return;
        };
        let frame = Frame::Register {
            token_id: offer.token_id(),
            expires_at,
        };
        self.send(&frame);
    }

    fn subscribe(&mut self) {
        let Side::Linked(session) = &self.side else {
            return;
        };
        if self.logged_out_seen {
            // Logged out for good: nothing to hear.
            return;
        }
        // The session's own signed list first (the relay then knows this
        // device's key whoever publishes first), then the Subscribe with
        // the device's proof for this client id.
        let client = self.secret.client_id();
        let Some(proof) = self
            .subscription_proof
            .or_else(|| SubscriptionProof::sign(session, client))
        else {
            // The key store signs first (`to_sign`, then `signed`).
            self.subscribe_waiting = true;
            return;
        };
        self.subscribe_waiting = false;
        let list = session.device_list().to_bytes();
        let subscribe = Frame::Subscribe {
            account: session.account(),
            index: session.index(),
            proof,
            // Every newer version the relay keeps comes too: a session that
            // missed some (and must chain them after a fork) applies them.
            after: Some(session.device_list().version()),
        };
        self.send(&Frame::PublishList { bytes: &list });
        self.send(&subscribe);
    }

    /// The next frame to send, oldest first.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The notices gathered since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Advances time: rotates the offer (and registers the new token),
    /// ends a pairing whose display or approval wait ran out, or records a
    /// lease that ended. Returns whether anything changed.
    pub fn poll<R: RngCore + CryptoRng>(&mut self, rng: &mut R, now: Timestamp) -> bool {
        match &mut self.side {
            Side::Pairing(companion) => match companion.poll(rng, now) {
                Some(CompanionEvent::OfferRotated { .. }) => {
                    if self.connected_once {
                        self.register_offer();
                    }
                    true
                }
                Some(CompanionEvent::Failed(_)) => true,
                None => false,
            },
            Side::Linked(_) => self.settle(now),
        }
    }

    /// Handles one frame from the relay at `now`. A frame the core refuses
    /// (a forged Hello, a stale list) changes nothing; only bytes that are
    /// not a frame are an error.
    pub fn receive<R: RngCore + CryptoRng>(
        &mut self,
        bytes: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(), WebError> {
        match Frame::decode(bytes)? {
            Frame::Ack { of, .. } => {
                self.awaiting.pop_front();
                if of == FrameType::Register {
                    // Answers come in order: this Ack is for the newest
                    // Register unless another is still in flight.
                    if !self.awaiting.contains(&FrameType::Register) {
                        self.registered = self.offer_token();
                    }
                }
            }
            Frame::Routed { header } => {
                self.awaiting.pop_front();
                if header.kind == MessageKind::Confirm {
                    self.unrouted_confirm = None;
                }
            }
            // The relay's text is any UTF-8 (bidirectional overrides
            // included): it is not read, and never reaches the page.
            Frame::Error { code, .. } => {
                let of = self.awaiting.pop_front();
                if of == Some(FrameType::Message) {
                    // The relay refused the Confirm: sending it again would
                    // not help.
                    self.unrouted_confirm = None;
                }
                // Expected refusals: a Release whose reservation had lapsed
                // or moved on; a Register the relay already holds for this
                // client (after a reconnect); the session's list when the
                // relay has a newer one.
                let expected = match of {
                    Some(FrameType::Release | FrameType::PublishList) => true,
                    Some(FrameType::Register) => {
                        let held = codes::code_kind(code) == Some(ErrorKind::Conflict);
                        if held {
                            self.registered = self.offer_token();
                        }
                        held
                    }
                    _ => false,
                };
                if !expected {
                    self.notices.push(Notice::RelayError {
                        code,
                        problem: Problem::from_relay_code(code),
                    });
                }
            }
            Frame::Message { header, bytes } => self.message(header, bytes, rng, now)?,
            Frame::PublishList { bytes } => {
                let mut ask_after = None;
                if let Side::Linked(session) = &mut self.side {
                    let fork_before = session.fork_seen();
                    let held = session.device_list().version();
                    let result = SignedDeviceList::from_bytes(bytes)
                        .ok()
                        .map(|list| session.accept_device_list(&list, now));
                    // A list further ahead than a forked session may take:
                    // subscribe again after the held version, and the relay
                    // sends the versions in between (once per version).
                    let missed = matches!(
                        result,
                        Some(Err(SessionError::Certificate(
                            CertificateError::MissingVersions { .. }
                        )))
                    );
                    let accepted = result.and_then(Result::ok);
                    if let (None, Some(version)) = (fork_before, session.fork_seen()) {
                        self.notices.push(Notice::Fork { version });
                        self.dirty = true;
                    }
                    if missed && self.asked_after != Some(held) {
                        ask_after = Some(held);
                    }
                    if let Some(change) = accepted {
                        let me = session.index();
                        self.notices.extend(
                            change
                                .added
                                .into_iter()
                                .filter(|e| e.index != me)
                                .map(Notice::DeviceAdded),
                        );
                        self.notices.extend(
                            change
                                .removed
                                .into_iter()
                                .filter(|d| d.entry.index != me)
                                .map(|d| Notice::DeviceRemoved {
                                    entry: d.entry,
                                    reason: d.reason,
                                }),
                        );
                        self.dirty = true;
                    }
                }
                if let Some(held) = ask_after {
                    self.asked_after = Some(held);
                    self.subscribe();
                }
                self.settle(now);
            }
            Frame::PublishHeartbeat { bytes } => {
                if let Side::Linked(session) = &mut self.side {
                    let fork_before = session.fork_seen();
                    let accepted = PrimaryHeartbeat::from_bytes(bytes)
                        .ok()
                        .is_some_and(|hb| session.accept_heartbeat(&hb, now).is_ok());
                    if let (None, Some(version)) = (fork_before, session.fork_seen()) {
                        self.notices.push(Notice::Fork { version });
                        self.dirty = true;
                    }
                    if accepted {
                        self.dirty = true;
                    }
                }
                self.settle(now);
            }
            Frame::Logout { index, reason } => {
                let mine = self.index() == Some(index);
                if mine && !self.settle(now) && !self.logged_out_seen {
                    self.notices.push(Notice::RelayLogout { reason });
                }
            }
            // Frames only clients send: not for a companion; ignored.
            Frame::Register { .. }
            | Frame::Release { .. }
            | Frame::Subscribe { .. }
            | Frame::Identify { .. }
            | Frame::ProveAccount { .. } => {}
        }
        Ok(())
    }

    fn message<R: RngCore + CryptoRng>(
        &mut self,
        header: MessageHeader,
        message: &[u8],
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(), WebError> {
        let Side::Pairing(companion) = &mut self.side else {
            return Ok(());
        };
        match header.kind {
            MessageKind::Hello => match companion.receive_hello(message, rng, now) {
                Ok(request) => self.send_message(&request)?,
                Err(_) => {
                    // Refused by the core (forged, stale, for another
                    // offer): reopen the token so the genuine Hello can
                    // reserve it.
                    if matches!(companion.state(), CompanionState::AwaitingScan { .. }) {
                        self.send(&Frame::Release {
                            token_id: header.token_id,
                            hello: HelloDigest::of(message),
                        });
                    }
                }
            },
            MessageKind::Grant | MessageKind::Refusal => {
                // A refused Grant (forged, for another device) changes
                // nothing; an authenticated Refusal or a late grant ends
                // the pairing, which `phase` shows. A verified Grant waits
                // for this browser's user (`consent`).
                let _ = companion.receive_grant(message, now);
            }
            MessageKind::Request | MessageKind::Confirm => {}
        }
        Ok(())
    }

    fn offer_token(&self) -> Option<TokenId> {
        match &self.side {
            Side::Pairing(c) => c.offer().map(|o| o.token_id()),
            Side::Linked(_) => None,
        }
    }

    /// What the page shows at `now`.
    pub fn phase(&self, now: Timestamp) -> Phase {
        match &self.side {
            Side::Pairing(companion) => match companion.state() {
                CompanionState::AwaitingScan {
                    offer: OfferState::Showing { token_id, .. },
                } if self.registered == Some(token_id) => Phase::Showing,
                CompanionState::AwaitingScan {
                    offer: OfferState::Showing { .. } | OfferState::Redeemed { .. },
                } => Phase::Connecting,
                CompanionState::AwaitingScan { .. } | CompanionState::Failed { .. } => {
                    Phase::Failed
                }
                CompanionState::AwaitingGrant { .. } => Phase::AwaitingApproval,
                CompanionState::AwaitingConsent { .. } => Phase::AwaitingConsent,
                // Not kept: a linked companion becomes `Side::Linked`.
                CompanionState::Linked => Phase::Linked,
            },
            Side::Linked(session) => match session.status(now) {
                SessionStatus::Linked { .. } => Phase::Linked,
                SessionStatus::ExpiringSoon { .. } => Phase::ExpiringSoon,
                SessionStatus::LoggedOut { .. } => Phase::LoggedOut,
            },
        }
    }

    /// The QR text of the offer on screen, once the relay knows its token.
    pub fn qr_text(&self) -> Option<String> {
        let Side::Pairing(companion) = &self.side else {
            return None;
        };
        let offer = companion.offer()?;
        (self.registered == Some(offer.token_id())).then(|| offer.to_text())
    }

    /// The offer on screen as an SVG document (328 × 328, black on white).
    pub fn qr_svg(&self) -> Result<Option<String>, WebError> {
        match self.qr_text() {
            None => Ok(None),
            Some(text) => Ok(Some(OfferQr::new(&text)?.to_svg(&QR_STYLE))),
        }
    }

    /// The offer's rotation (0 for the first code) and the first instant
    /// it is stale, while showing.
    pub fn offer_rotation(&self) -> Option<(u32, Timestamp)> {
        match &self.side {
            Side::Pairing(c) => match c.state() {
                CompanionState::AwaitingScan {
                    offer:
                        OfferState::Showing {
                            rotation,
                            expires_at,
                            ..
                        },
                } => Some((rotation, expires_at)),
                _ => None,
            },
            Side::Linked(_) => None,
        }
    }

    /// Rotations the display makes before it gives up (the policy's).
    pub fn max_rotations(&self) -> u32 {
        self.policy.max_rotations()
    }

    /// The six-digit check code, once granted ("012 345"): the phone must
    /// show the same.
    pub fn check_code(&self) -> Option<String> {
        match &self.side {
            Side::Pairing(c) => c.check_code().map(|code| code.to_string()),
            Side::Linked(_) => None,
        }
    }

    /// The account a verified Grant would join (its fingerprint, which the
    /// phone shows too), while waiting for this browser's user.
    pub fn joining_account(&self) -> Option<String> {
        match &self.side {
            Side::Pairing(c) => c.join_prompt().map(|p| p.account_fingerprint()),
            Side::Linked(_) => None,
        }
    }

    /// Who holds this device's signing key.
    pub fn signer(&self) -> &DeviceSigner {
        match &self.side {
            Side::Pairing(c) => c.signer(),
            Side::Linked(s) => s.signer(),
        }
    }

    /// Whether the device key is the key store's (saved states then hold
    /// no secret).
    pub fn uses_key_store(&self) -> bool {
        self.signer().identity().is_none()
    }

    /// This device's public key.
    pub fn device_key(&self) -> DeviceKey {
        self.signer().device_key()
    }

    /// What the browser's key store must sign now (Ed25519), when it holds
    /// the device key: the Confirm while the join prompt is shown (signing
    /// is not consent: nothing is sent before
    /// [`BrowserCompanion::consent`]), or, once linked, the subscription
    /// proof for this tab's client id. `None` when nothing waits for it.
    pub fn to_sign(&self) -> Option<Vec<u8>> {
        match &self.side {
            Side::Pairing(c) if c.signer().identity().is_none() => self
                .confirm_signature
                .is_none()
                .then(|| c.confirm_to_sign())
                .flatten(),
            Side::Linked(s) if s.identity().is_none() && !self.logged_out_seen => self
                .subscription_proof
                .is_none()
                .then(|| SubscriptionProof::to_sign(s, self.secret.client_id())),
            Side::Pairing(_) | Side::Linked(_) => None,
        }
    }

    /// The key store's signature over [`BrowserCompanion::to_sign`]'s
    /// bytes. Checked under this device's key first: a wrong one (or one
    /// nobody asked for) is refused and changes nothing. A Subscribe that
    /// waited for it is queued.
    pub fn signed(&mut self, signature: &[u8]) -> Result<(), WebError> {
        let (Some(message), Ok(signature)) = (self.to_sign(), <[u8; 64]>::try_from(signature))
        else {
            return Err(WebError::Signature);
        };
        if !self.device_key().verify(&message, &signature) {
            return Err(WebError::Signature);
        }
        match &self.side {
            Side::Pairing(_) => self.confirm_signature = Some(signature),
            Side::Linked(_) => {
                self.subscription_proof = Some(SubscriptionProof::from_bytes(signature));
                if self.subscribe_waiting {
                    self.subscribe();
                }
            }
        }
        Ok(())
    }

    /// This browser's user agrees to join the account the Grant named (the
    /// check codes matched): the Confirm goes out and the browser is linked.
    pub fn consent(&mut self, now: Timestamp) -> Result<(), WebError> {
        let Side::Pairing(companion) = &mut self.side else {
            return Ok(());
        };
        let confirm = match &self.confirm_signature {
            Some(signature) => companion.consent_signed(signature, now)?,
            None => companion.consent(now)?,
        };
        let session = companion.session().cloned();
        self.send_message(&confirm)?;
        self.unrouted_confirm = Some(confirm);
        if let Some(session) = session {
            self.side = Side::Linked(Box::new(session));
            self.dirty = true;
            self.subscribe();
        }
        Ok(())
    }

    /// This browser's user does not agree (another account, the codes
    /// differ, or the phone showed none): nothing is sent, the pairing ends.
    pub fn decline(&mut self, now: Timestamp) -> Result<(), WebError> {
        if let Side::Pairing(companion) = &mut self.side {
            companion.decline(now)?;
        }
        Ok(())
    }

    /// Why the pairing failed, as a class ([`Problem::sentence`] is what
    /// the page shows).
    pub fn failure_problem(&self) -> Option<Problem> {
        let Side::Pairing(c) = &self.side else {
            return None;
        };
        let CompanionState::Failed { reason, .. } = c.state() else {
            return None;
        };
        Some(match reason {
            FailureReason::Refused(RefusalReason::DeviceLimitReached { .. }) => {
                Problem::DeviceLimitReached
            }
            FailureReason::Refused(RefusalReason::Declined) => Problem::Declined,
            FailureReason::Refused(RefusalReason::OfferStale) => Problem::OfferStale,
            FailureReason::Refused(RefusalReason::Other { .. }) => Problem::PhoneRefused,
            FailureReason::OfferEnded(OfferState::TimedOut { .. })
            | FailureReason::OfferEnded(OfferState::Expired { .. }) => Problem::NotScanned,
            FailureReason::OfferEnded(_) | FailureReason::Cancelled | FailureReason::Declined => {
                Problem::Cancelled
            }
            FailureReason::GrantTimedOut | FailureReason::ConsentTimedOut => {
                Problem::ApprovalTimedOut
            }
        })
    }

    /// Why the pairing failed, for people: the class's fixed sentence.
    pub fn failure(&self) -> Option<String> {
        self.failure_problem().map(|p| p.sentence().to_owned())
    }

    /// The linked session.
    pub fn session(&self) -> Option<&LinkedSession> {
        match &self.side {
            Side::Linked(s) => Some(s),
            Side::Pairing(_) => None,
        }
    }

    /// This device's index, once linked.
    pub fn index(&self) -> Option<DeviceIndex> {
        self.session().map(|s| s.index())
    }

    /// The account's fingerprint (the phone shows the same), once linked.
    pub fn account_fingerprint(&self) -> Option<String> {
        self.session().map(|s| s.account().fingerprint())
    }

    /// The account's devices as the newest signed list names them.
    pub fn devices(&self) -> &[DeviceListEntry] {
        self.session()
            .map(|s| s.device_list().devices())
            .unwrap_or_default()
    }

    /// The first instant the lease is over (unless the phone is heard
    /// from before), while linked.
    pub fn lease_expires_at(&self, now: Timestamp) -> Option<Timestamp> {
        let s = self.session()?;
        s.is_linked(now).then(|| s.expires_at())
    }

    /// Why the session is logged out, if it is.
    pub fn logout_reason(&self, now: Timestamp) -> Option<LogoutReason> {
        match self.session()?.status(now) {
            SessionStatus::LoggedOut { reason } => Some(reason),
            _ => None,
        }
    }

    /// When [`BrowserCompanion::poll`] must run next.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match &self.side {
            Side::Pairing(c) => c.next_deadline(),
            Side::Linked(s) => s.next_deadline(),
        }
    }
}
