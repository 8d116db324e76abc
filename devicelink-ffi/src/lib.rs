//! devicelink for Kotlin, Swift and Python, through UniFFI: the core's host
//! API ([`devicelink::host`]) as two objects, [`Phone`] (the account) and
//! [`Device`] (a companion), each with its outbox of [`Output`]s, and
//! [`RelayLink`], the async relay client that carries those outputs over
//! the relay's WebSocket and hands back what arrives.
//!
//! Every method takes the host's clock as `now_ms` (Unix milliseconds: a
//! test suite passes a virtual clock), draws randomness from the operating
//! system, and returns flat records and enums. Every failure is a
//! [`DevicelinkError`], one variant per error class (`ErrorKind`), which
//! each language raises as an exception carrying the class and the core's
//! message.
//!
//! The generated sources: `cargo run -p devicelink-ffi --features bindgen
//! --bin uniffi-bindgen -- generate --library <libdevicelink_ffi.so>
//! --language python|kotlin|swift --out-dir <dir>`; `scripts/test_bindings.sh`
//! builds and tests them.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::sync::{Arc, Mutex, MutexGuard};

use devicelink::code::{CodeHandle, TypedCode};
use devicelink::host;
use devicelink::{
    DeviceIdentity, DeviceIndex, DeviceLabel, DeviceListEntry, ErrorKind, Policy, RefusalReason,
    Timestamp, TokenId,
};
use rand_core::OsRng;

uniffi::setup_scaffolding!("devicelink");

/// Why a call failed: the error's class, with the core's message. Nothing
/// changed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum DevicelinkError {
    /// Bytes or text that do not decode (a message, a code, a saved state).
    #[error("malformed: {detail}")]
    Malformed {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// A MAC, signature or key confirmation did not verify.
    #[error("unauthenticated: {detail}")]
    Unauthenticated {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// Out of order, duplicated, or for another pairing.
    #[error("unexpected: {detail}")]
    Unexpected {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// Refused by a rule (the device limit, no link intent, the user).
    #[error("refused: {detail}")]
    Refused {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// Too late (a timeout, an expired offer, a logout).
    #[error("expired: {detail}")]
    Expired {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// Conflicts with what is already there.
    #[error("conflict: {detail}")]
    Conflict {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// A resource is unavailable.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
    /// A call the state does not allow (a programming error).
    #[error("misuse: {detail}")]
    Misuse {
        /// The core's message (not `message`: Kotlin's exceptions have one).
        detail: String,
    },
}

impl DevicelinkError {
    fn of(kind: ErrorKind, detail: String) -> Self {
        match kind {
            ErrorKind::Malformed => DevicelinkError::Malformed { detail },
            ErrorKind::Unauthenticated => DevicelinkError::Unauthenticated { detail },
            ErrorKind::Unexpected => DevicelinkError::Unexpected { detail },
            ErrorKind::Refused => DevicelinkError::Refused { detail },
            ErrorKind::Expired => DevicelinkError::Expired { detail },
            ErrorKind::Conflict => DevicelinkError::Conflict { detail },
            ErrorKind::Unavailable => DevicelinkError::Unavailable { detail },
            _ => DevicelinkError::Misuse { detail },
        }
    }

    fn malformed(what: &str) -> Self {
        DevicelinkError::Malformed {
            detail: what.to_owned(),
        }
    }
}

impl From<host::PhoneError> for DevicelinkError {
    fn from(e: host::PhoneError) -> Self {
        DevicelinkError::of(e.kind(), e.to_string())
    }
}

impl From<host::DeviceError> for DevicelinkError {
    fn from(e: host::DeviceError) -> Self {
        DevicelinkError::of(e.kind(), e.to_string())
    }
}

/// Something the host must carry out, oldest first (see the core's
/// `host::Output`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Output {
    /// Save the state now (`save()`), before carrying out anything after it.
    Save,
    /// Send a pairing message to the other device through the relay.
    Send {
        /// The pairing's token (16 bytes).
        token: Vec<u8>,
        /// The message.
        message: Vec<u8>,
    },
    /// Publish the account's signed list (every version, once, in order).
    PublishList {
        /// Its version.
        version: u64,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Publish a signed heartbeat.
    PublishHeartbeat {
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Register the QR offer's token at the relay until `expires_at_ms`.
    Register {
        /// The token (16 bytes).
        token: Vec<u8>,
        /// Unix milliseconds.
        expires_at_ms: u64,
    },
    /// Subscribe to the account's lists after version `after`.
    Subscribe {
        /// The version the device holds.
        after: u64,
    },
}

impl From<host::Output> for Output {
    fn from(o: host::Output) -> Self {
        match o {
            host::Output::Save => Output::Save,
            host::Output::Send { token, message } => Output::Send {
                token: token.to_bytes().to_vec(),
                message,
            },
            host::Output::PublishList { version, bytes } => Output::PublishList { version, bytes },
            host::Output::PublishHeartbeat { bytes } => Output::PublishHeartbeat { bytes },
            host::Output::Register { token, expires_at } => Output::Register {
                token: token.to_bytes().to_vec(),
                expires_at_ms: expires_at.as_unix_millis(),
            },
            host::Output::Subscribe { after } => Output::Subscribe { after },
        }
    }
}

/// A device of the account, as its signed list names it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceInfo {
    /// Its index (1 for the first companion).
    pub index: u32,
    /// Its label (chosen by that device: show it as text).
    pub label: String,
    /// Its key's fingerprint.
    pub fingerprint: String,
    /// When the phone linked it (Unix milliseconds, the phone's clock).
    pub linked_at_ms: u64,
}

impl From<&DeviceListEntry> for DeviceInfo {
    fn from(e: &DeviceListEntry) -> Self {
        DeviceInfo {
            index: e.index.0,
            label: e.label.as_str().to_owned(),
            fingerprint: e.device.fingerprint(),
            linked_at_ms: e.linked_at.as_unix_millis(),
        }
    }
}

/// What the phone shows before its user approves a companion.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LinkPrompt {
    /// The pairing's token, for `approve` and `refuse`.
    pub token: Vec<u8>,
    /// The label the companion gave itself.
    pub label: String,
    /// The companion's key fingerprint.
    pub fingerprint: String,
    /// The six-digit check code of a QR link ("012 345"); none for a typed
    /// code.
    pub check_code: Option<String>,
    /// The words to show.
    pub text: String,
}

/// What a message meant for the phone's user.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum PhoneEvent {
    /// Ask the user: `approve` or `refuse`.
    Prompt {
        /// What to show.
        prompt: LinkPrompt,
    },
    /// The companion is linked as `index`.
    Linked {
        /// The pairing's token.
        token: Vec<u8>,
        /// Its index.
        index: u32,
    },
    /// Refused without asking (the account is full); the Refusal is in the
    /// outbox.
    Refused {
        /// The pairing's token.
        token: Vec<u8>,
        /// Why, for people.
        reason: String,
    },
    /// The typed code was right: the Request comes next.
    CodeAccepted {
        /// The pairing's token.
        token: Vec<u8>,
    },
    /// The typed code was wrong: the pairing is over.
    WrongCode {
        /// The pairing's token.
        token: Vec<u8>,
    },
}

impl From<host::PhoneEvent> for PhoneEvent {
    fn from(e: host::PhoneEvent) -> Self {
        let bytes = |t: TokenId| t.to_bytes().to_vec();
        match e {
            host::PhoneEvent::Prompt { token, request } => PhoneEvent::Prompt {
                prompt: LinkPrompt {
                    token: bytes(token),
                    label: request.label.as_str().to_owned(),
                    fingerprint: request.fingerprint(),
                    check_code: request.check_code.map(|c| c.to_string()),
                    text: request.prompt(),
                },
            },
            host::PhoneEvent::Linked { token, index } => PhoneEvent::Linked {
                token: bytes(token),
                index: index.0,
            },
            host::PhoneEvent::Refused { token, reason } => PhoneEvent::Refused {
                token: bytes(token),
                reason: reason.to_string(),
            },
            host::PhoneEvent::CodeAccepted { token } => PhoneEvent::CodeAccepted {
                token: bytes(token),
            },
            host::PhoneEvent::WrongCode { token } => PhoneEvent::WrongCode {
                token: bytes(token),
            },
        }
    }
}

/// What a companion shows before its user agrees to join.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct JoinPrompt {
    /// The account's fingerprint (the phone shows the same).
    pub account_fingerprint: String,
    /// The index the account gave this device.
    pub index: u32,
    /// The six-digit check code of a QR link; none for a typed code.
    pub check_code: Option<String>,
    /// The words to show.
    pub text: String,
}

/// What a call meant for the companion's user.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum DeviceEvent {
    /// Taken; nothing to show.
    Accepted,
    /// Ask the user: `consent` or `decline`.
    Prompt {
        /// What to show.
        prompt: JoinPrompt,
    },
    /// Linked as `index`.
    Linked {
        /// This device's index.
        index: u32,
    },
    /// The account's list changed.
    ListChanged {
        /// Devices added.
        added: Vec<DeviceInfo>,
        /// Devices removed.
        removed: Vec<DeviceInfo>,
    },
    /// Another history of the account was seen (a phone restored from an
    /// old backup).
    Fork {
        /// The version at which it was seen.
        version: u64,
    },
    /// Logged out for good.
    LoggedOut {
        /// Why, for people.
        reason: String,
    },
    /// The pairing failed.
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<host::DeviceEvent> for DeviceEvent {
    fn from(e: host::DeviceEvent) -> Self {
        match e {
            host::DeviceEvent::Accepted => DeviceEvent::Accepted,
            host::DeviceEvent::Prompt(p) => DeviceEvent::Prompt {
                prompt: JoinPrompt {
                    account_fingerprint: p.account_fingerprint(),
                    index: p.index.0,
                    check_code: p.check_code.map(|c| c.to_string()),
                    text: p.prompt(),
                },
            },
            host::DeviceEvent::Linked { index } => DeviceEvent::Linked { index: index.0 },
            host::DeviceEvent::ListChanged(change) => DeviceEvent::ListChanged {
                added: change.added.iter().map(DeviceInfo::from).collect(),
                removed: change
                    .removed
                    .iter()
                    .map(|d| DeviceInfo::from(&d.entry))
                    .collect(),
            },
            host::DeviceEvent::Fork { version } => DeviceEvent::Fork { version },
            host::DeviceEvent::LoggedOut(reason) => DeviceEvent::LoggedOut {
                reason: reason.to_string(),
            },
            host::DeviceEvent::Failed(failure) => DeviceEvent::Failed {
                reason: failure_text(failure),
            },
        }
    }
}

fn failure_text(f: host::DeviceFailure) -> String {
    use devicelink::code::CodeFailure;
    use devicelink::FailureReason;
    match f {
        host::DeviceFailure::Pairing(FailureReason::Refused(r)) => format!("refused: {r}"),
        host::DeviceFailure::Pairing(FailureReason::OfferEnded(_)) => {
            "the code was not scanned in time".into()
        }
        host::DeviceFailure::Pairing(FailureReason::GrantTimedOut) => {
            "the phone did not approve in time".into()
        }
        host::DeviceFailure::Pairing(FailureReason::Cancelled)
        | host::DeviceFailure::Code(CodeFailure::Cancelled) => "cancelled".into(),
        host::DeviceFailure::Pairing(FailureReason::Declined) => "declined".into(),
        host::DeviceFailure::Pairing(FailureReason::ConsentTimedOut) => {
            "this device's user did not answer in time".into()
        }
        host::DeviceFailure::Code(CodeFailure::WrongCode) => "wrong code".into(),
        host::DeviceFailure::Code(CodeFailure::Expired) => "the code expired".into(),
    }
}

fn at(now_ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(now_ms)
}

fn token(bytes: &[u8]) -> Result<TokenId, DevicelinkError> {
    <[u8; 16]>::try_from(bytes)
        .map(TokenId::from_bytes)
        .map_err(|_| DevicelinkError::malformed("a token is 16 bytes"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The phone: an account, its pairings in flight, and its outbox. Drain
/// `poll_output` after every call.
#[derive(Debug, uniffi::Object)]
pub struct Phone {
    inner: Mutex<host::Phone>,
}

#[uniffi::export]
impl Phone {
    /// A new account with a fresh account key, under the default policy
    /// (four companions, 14 days).
    #[uniffi::constructor]
    pub fn new(now_ms: u64) -> Arc<Self> {
        let phone = host::Phone::generate(Policy::default(), &mut OsRng, at(now_ms));
        Arc::new(Phone {
            inner: Mutex::new(phone),
        })
    }

    /// A phone saved by `save` (its first output republishes its list).
    #[uniffi::constructor]
    pub fn restore(saved: Vec<u8>) -> Result<Arc<Self>, DevicelinkError> {
        let phone = host::Phone::restore(&saved)?;
        Ok(Arc::new(Phone {
            inner: Mutex::new(phone),
        }))
    }

    /// The state to keep (**secret**: it holds the account key).
    pub fn save(&self) -> Result<Vec<u8>, DevicelinkError> {
        Ok(lock(&self.inner).save()?)
    }

    /// The account's fingerprint (every companion shows the same).
    pub fn account_fingerprint(&self) -> String {
        lock(&self.inner).account().account_id().fingerprint()
    }

    /// The companions the account's newest list names.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        lock(&self.inner)
            .account()
            .device_list()
            .devices()
            .iter()
            .map(DeviceInfo::from)
            .collect()
    }

    /// The user opened "Link a device"; returns when the window closes.
    pub fn open_link_intent(&self, now_ms: u64) -> u64 {
        lock(&self.inner)
            .open_link_intent(at(now_ms))
            .as_unix_millis()
    }

    /// Scans a companion's QR text; returns the pairing's token.
    pub fn scan(&self, text: String, now_ms: u64) -> Result<Vec<u8>, DevicelinkError> {
        let token = lock(&self.inner).scan(&text, &mut OsRng, at(now_ms))?;
        Ok(token.to_bytes().to_vec())
    }

    /// Enters a typed code (`HHHH-CCCC-CCCC`) with the CodeOffer the relay
    /// gave for its handle; returns the pairing's token.
    pub fn enter_code(
        &self,
        code: String,
        offer: Vec<u8>,
        now_ms: u64,
    ) -> Result<Vec<u8>, DevicelinkError> {
        let typed = TypedCode::parse(&code)
            .map_err(|e| DevicelinkError::of(ErrorKind::Malformed, e.to_string()))?;
        let token = lock(&self.inner).enter_code(&typed, &offer, &mut OsRng, at(now_ms))?;
        Ok(token.to_bytes().to_vec())
    }

    /// A message from a companion (Request, Confirm, CodeConfirm).
    pub fn receive(&self, message: Vec<u8>, now_ms: u64) -> Result<PhoneEvent, DevicelinkError> {
        let event = lock(&self.inner).receive(&message, &mut OsRng, at(now_ms))?;
        Ok(event.into())
    }

    /// The user approved the prompt.
    pub fn approve(&self, token: Vec<u8>, now_ms: u64) -> Result<(), DevicelinkError> {
        let t = self::token(&token)?;
        Ok(lock(&self.inner).approve(t, &mut OsRng, at(now_ms))?)
    }

    /// The user refused the prompt (or the check codes differ).
    pub fn refuse(&self, token: Vec<u8>, now_ms: u64) -> Result<(), DevicelinkError> {
        let t = self::token(&token)?;
        Ok(lock(&self.inner).refuse(t, RefusalReason::Declined, &mut OsRng, at(now_ms))?)
    }

    /// Revokes companion `index`.
    pub fn revoke(&self, index: u32, now_ms: u64) -> Result<(), DevicelinkError> {
        Ok(lock(&self.inner).revoke(DeviceIndex(index), at(now_ms))?)
    }

    /// The phone is active: a signed heartbeat to publish.
    pub fn heartbeat(&self, now_ms: u64) {
        lock(&self.inner).heartbeat(at(now_ms));
    }

    /// Advances time (pending companions that never confirmed lose their
    /// slot).
    pub fn poll(&self, now_ms: u64) {
        lock(&self.inner).poll(at(now_ms));
    }

    /// When `poll` must run next (Unix milliseconds).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        lock(&self.inner)
            .next_deadline()
            .map(Timestamp::as_unix_millis)
    }

    /// The next thing to carry out, or none.
    pub fn poll_output(&self) -> Option<Output> {
        lock(&self.inner).poll_output().map(Output::from)
    }
}

/// A companion: a QR offer or a typed code, then its linked session, and
/// its outbox. Drain `poll_output` after every call.
#[derive(Debug, uniffi::Object)]
pub struct Device {
    inner: Mutex<host::Device>,
}

#[uniffi::export]
impl Device {
    /// A companion called `label` showing a fresh QR offer, with a fresh
    /// identity key.
    #[uniffi::constructor]
    pub fn new(label: String, now_ms: u64) -> Result<Arc<Self>, DevicelinkError> {
        let label =
            DeviceLabel::new(&label).map_err(|e| DevicelinkError::of(e.kind(), e.to_string()))?;
        let identity = DeviceIdentity::generate(&mut OsRng);
        let device = host::Device::new(identity, label, &Policy::default(), &mut OsRng, at(now_ms));
        Ok(Arc::new(Device {
            inner: Mutex::new(device),
        }))
    }

    /// A companion called `label` showing a typed code under the relay's
    /// `handle`.
    #[uniffi::constructor]
    pub fn with_code(
        label: String,
        handle: u32,
        now_ms: u64,
    ) -> Result<Arc<Self>, DevicelinkError> {
        let label =
            DeviceLabel::new(&label).map_err(|e| DevicelinkError::of(e.kind(), e.to_string()))?;
        let handle =
            CodeHandle::new(handle).ok_or_else(|| DevicelinkError::malformed("code handle"))?;
        let identity = DeviceIdentity::generate(&mut OsRng);
        let device = host::Device::with_code(
            identity,
            label,
            handle,
            &Policy::default(),
            &mut OsRng,
            at(now_ms),
        );
        Ok(Arc::new(Device {
            inner: Mutex::new(device),
        }))
    }

    /// A device saved by `save`.
    #[uniffi::constructor]
    pub fn restore(saved: Vec<u8>) -> Result<Arc<Self>, DevicelinkError> {
        let device = host::Device::restore(&saved, &Policy::default())?;
        Ok(Arc::new(Device {
            inner: Mutex::new(device),
        }))
    }

    /// The state to keep (**secret**: the device key and a pairing's keys).
    pub fn save(&self) -> Result<Vec<u8>, DevicelinkError> {
        Ok(lock(&self.inner).save()?)
    }

    /// The QR text to show while waiting for a scan.
    pub fn offer_text(&self) -> Option<String> {
        lock(&self.inner).offer_text()
    }

    /// The typed code to show.
    pub fn code_text(&self) -> Option<String> {
        lock(&self.inner).code_text()
    }

    /// A pairing message from the phone (Hello, CodeHello, Grant, Refusal).
    pub fn receive(&self, message: Vec<u8>, now_ms: u64) -> Result<DeviceEvent, DevicelinkError> {
        let event = lock(&self.inner).receive(&message, &mut OsRng, at(now_ms))?;
        Ok(event.into())
    }

    /// A signed list the relay pushed.
    pub fn receive_list(
        &self,
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Result<DeviceEvent, DevicelinkError> {
        Ok(lock(&self.inner).receive_list(&bytes, at(now_ms))?.into())
    }

    /// A signed heartbeat the relay pushed.
    pub fn receive_heartbeat(
        &self,
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Result<DeviceEvent, DevicelinkError> {
        Ok(lock(&self.inner)
            .receive_heartbeat(&bytes, at(now_ms))?
            .into())
    }

    /// This device's user agrees to join.
    pub fn consent(&self, now_ms: u64) -> Result<DeviceEvent, DevicelinkError> {
        Ok(lock(&self.inner).consent(at(now_ms))?.into())
    }

    /// This device's user does not agree.
    pub fn decline(&self, now_ms: u64) -> Result<DeviceEvent, DevicelinkError> {
        Ok(lock(&self.inner).decline(at(now_ms))?.into())
    }

    /// Advances time: rotation, timeouts, the lease.
    pub fn poll(&self, now_ms: u64) -> Option<DeviceEvent> {
        lock(&self.inner)
            .poll(&mut OsRng, at(now_ms))
            .map(DeviceEvent::from)
    }

    /// When `poll` must run next (Unix milliseconds).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        lock(&self.inner)
            .next_deadline()
            .map(Timestamp::as_unix_millis)
    }

    /// This device's index, once linked.
    pub fn index(&self) -> Option<u32> {
        lock(&self.inner).session().map(|s| s.index().0)
    }

    /// The account's fingerprint, once linked.
    pub fn account_fingerprint(&self) -> Option<String> {
        lock(&self.inner)
            .session()
            .map(|s| s.account().fingerprint())
    }

    /// The account's devices as the held list names them, once linked.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        lock(&self.inner)
            .session()
            .map(|s| {
                s.device_list()
                    .devices()
                    .iter()
                    .map(DeviceInfo::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next thing to carry out, or none.
    pub fn poll_output(&self) -> Option<Output> {
        lock(&self.inner).poll_output().map(Output::from)
    }
}

impl TryFrom<Output> for host::Output {
    type Error = DevicelinkError;

    fn try_from(o: Output) -> Result<Self, DevicelinkError> {
        Ok(match o {
            Output::Save => host::Output::Save,
            Output::Send { token: t, message } => host::Output::Send {
                token: token(&t)?,
                message,
            },
            Output::PublishList { version, bytes } => host::Output::PublishList { version, bytes },
            Output::PublishHeartbeat { bytes } => host::Output::PublishHeartbeat { bytes },
            Output::Register {
                token: t,
                expires_at_ms,
            } => host::Output::Register {
                token: token(&t)?,
                expires_at: at(expires_at_ms),
            },
            Output::Subscribe { after } => host::Output::Subscribe { after },
        })
    }
}

impl From<devicelink_relay::client::ClientError> for DevicelinkError {
    fn from(e: devicelink_relay::client::ClientError) -> Self {
        // Transport failures (a closed socket, a relay that went away) have
        // no core kind: they are the relay being unavailable.
        let kind = e.kind().unwrap_or(ErrorKind::Unavailable);
        DevicelinkError::of(kind, e.to_string())
    }
}

/// What the relay delivered to a [`RelayLink`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Inbound {
    /// A pairing message: give it to the role's `receive`.
    Message {
        /// The message.
        bytes: Vec<u8>,
    },
    /// A signed device list: give it to `Device::receive_list`.
    List {
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A signed heartbeat: give it to `Device::receive_heartbeat`.
    Heartbeat {
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// The relay says a device was logged out (the session's own facts
    /// decide).
    Logout {
        /// The index it named.
        index: u32,
        /// Its reason, for people.
        reason: String,
    },
}

/// One connection to a devicelink relay, for a phone or a companion: it
/// carries the role's outputs as the relay's frames and hands back what
/// arrives. Async (Python coroutines, Kotlin suspend functions, Swift
/// async).
#[derive(Debug, uniffi::Object)]
pub struct RelayLink {
    inner: tokio::sync::Mutex<devicelink_relay::client::HostLink>,
}

#[uniffi::export(async_runtime = "tokio")]
impl RelayLink {
    /// Connects to `base` (`ws://host:port`) as a phone (`phone = true`)
    /// or a companion, as a fresh relay client.
    #[uniffi::constructor]
    pub async fn connect(base: String, phone: bool) -> Result<Arc<Self>, DevicelinkError> {
        let secret = devicelink_relay::identity::ClientSecret::generate(&mut OsRng);
        let link = devicelink_relay::client::HostLink::connect(&base, phone, secret).await?;
        Ok(Arc::new(RelayLink {
            inner: tokio::sync::Mutex::new(link),
        }))
    }

    /// Carries out one of the phone's outputs (`Save` is the host's own:
    /// nothing is sent) and waits for the relay's answer.
    pub async fn carry_phone(
        &self,
        phone: Arc<Phone>,
        output: Output,
    ) -> Result<(), DevicelinkError> {
        let output = host::Output::try_from(output)?;
        let mut link = self.inner.lock().await;
        let plan = link.plan_phone(&lock(&phone.inner), &output)?;
        Ok(link.carry(plan).await?)
    }

    /// Carries out one of the device's outputs and waits for the relay's
    /// answer.
    pub async fn carry_device(
        &self,
        device: Arc<Device>,
        output: Output,
    ) -> Result<(), DevicelinkError> {
        let output = host::Output::try_from(output)?;
        let mut link = self.inner.lock().await;
        let plan = link.plan_device(&lock(&device.inner), &output)?;
        Ok(link.carry(plan).await?)
    }

    /// The next message or push, waiting at most `timeout_ms`; none if
    /// nothing came.
    pub async fn next(&self, timeout_ms: u64) -> Result<Option<Inbound>, DevicelinkError> {
        use devicelink_relay::client::HostInbound;
        let mut link = self.inner.lock().await;
        let wait = std::time::Duration::from_millis(timeout_ms);
        let Ok(inbound) = tokio::time::timeout(wait, link.next()).await else {
            return Ok(None);
        };
        Ok(Some(match inbound? {
            HostInbound::Message(bytes) => Inbound::Message { bytes },
            HostInbound::List(bytes) => Inbound::List { bytes },
            HostInbound::Heartbeat(bytes) => Inbound::Heartbeat { bytes },
            HostInbound::Logout { index, reason } => Inbound::Logout {
                index: index.0,
                reason: reason.to_string(),
            },
        }))
    }
}
