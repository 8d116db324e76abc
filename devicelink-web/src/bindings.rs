//! The JS surface: [`WebCompanion`] and the small value classes it returns.
//! Methods take `nowMs` (`Date.now()`), return plain JS values, and turn
//! every failure into a `JsError` whose message is its class's fixed
//! sentence ([`Problem::sentence`]); nothing panics.
//!
//! What the page shows comes from here: fixed sentences (chosen in
//! [`crate::shell`]), numbers, fingerprints computed locally, and device
//! labels from signed lists (which are [`devicelink::DeviceLabel`]s). No
//! other text from the network (a relay's error text) reaches JS.

use devicelink::{DeviceKey, DeviceListEntry, Timestamp};
use rand_core::OsRng;
use wasm_bindgen::prelude::*;

use crate::shell::{logout_text, BrowserCompanion, Notice, Problem, WebError};

/// `Date.now()` as a [`Timestamp`]: NaN, infinities and negative values
/// read as the epoch, values past `u64::MAX` as the largest instant.
pub(crate) fn timestamp(now_ms: f64) -> Timestamp {
    // `as` saturates and maps NaN to 0.
    Timestamp::from_unix_millis(now_ms.max(0.0) as u64)
}

fn millis(t: Timestamp) -> f64 {
    t.as_unix_millis() as f64
}

/// The error the page sees: the class's fixed sentence, not `e`'s text
/// (a saved state's defect may quote its contents).
fn js(e: WebError) -> JsError {
    JsError::new(e.problem().sentence())
}

/// A key store's raw Ed25519 public key (32 bytes).
fn device_key(raw: Option<Vec<u8>>) -> Result<Option<DeviceKey>, JsError> {
    raw.map(|bytes| {
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(DeviceKey::from_bytes)
            .map_err(|_| JsError::new(Problem::KeyStore.sentence()))
    })
    .transpose()
}

/// The browser companion: shows the rotating QR code, speaks the relay's
/// frames over a WebSocket the page opens to `/v1/companion`, and, once
/// linked, holds its own keys and the account's signed device list.
///
/// The page owns the socket and the clock: it calls `connected` when the
/// socket opens, sends every `takeFrame()`, hands every binary message to
/// `receive`, calls `poll` at `nextDeadline` (and every second for the
/// countdown), and stores `save()` whenever `needsSave` is true.
#[wasm_bindgen]
pub struct WebCompanion {
    shell: BrowserCompanion,
}

#[wasm_bindgen]
impl WebCompanion {
    /// A new companion called `label` ("Chromium on Linux") with a fresh
    /// offer, using the browser's CSPRNG. `keyStore` is the raw 32-byte
    /// public key of a non-extractable WebCrypto Ed25519 key pair that
    /// signs what `toSign()` asks; without it (a browser with no Ed25519 in
    /// WebCrypto) the companion makes its own identity key, which `save()`
    /// then holds.
    #[wasm_bindgen(constructor)]
    pub fn new(
        label: &str,
        key_store: Option<Vec<u8>>,
        now_ms: f64,
    ) -> Result<WebCompanion, JsError> {
        let key = device_key(key_store)?;
        let shell = BrowserCompanion::new(label, key, &mut OsRng, timestamp(now_ms)).map_err(js)?;
        Ok(WebCompanion { shell })
    }

    /// The bytes the key store must sign now (Ed25519), or `undefined`:
    /// the Confirm while the join prompt is shown (signing is not consent:
    /// nothing is sent before `consent`), the subscription proof once
    /// linked. Hand the signature to `signed`.
    #[wasm_bindgen(js_name = toSign)]
    pub fn to_sign(&self) -> Option<Vec<u8>> {
        self.shell.to_sign()
    }

    /// The key store's 64-byte signature over `toSign()`'s bytes; checked
    /// under this device's key before it is used (a wrong one throws and
    /// changes nothing).
    pub fn signed(&mut self, signature: &[u8]) -> Result<(), JsError> {
        self.shell.signed(signature).map_err(js)
    }

    /// This device's raw Ed25519 public key (32 bytes): the page checks
    /// that the key store's key is this one.
    #[wasm_bindgen(getter, js_name = devicePublicKey)]
    pub fn device_public_key(&self) -> Vec<u8> {
        self.shell.device_key().to_bytes().to_vec()
    }

    /// Whether the device key is the key store's (no secret in `save()`).
    #[wasm_bindgen(getter, js_name = usesKeyStore)]
    pub fn uses_key_store(&self) -> bool {
        self.shell.uses_key_store()
    }

    /// Restores a linked companion from `save()`'s text.
    pub fn restore(saved: &str, now_ms: f64) -> Result<WebCompanion, JsError> {
        let shell = BrowserCompanion::restore(saved.as_bytes(), &mut OsRng, timestamp(now_ms))
            .map_err(js)?;
        Ok(WebCompanion { shell })
    }

    /// The state to keep across reloads, or `undefined` while pairing (a
    /// reload then shows a new code). With a key store it holds only the
    /// device's public key; without one it holds the identity key
    /// (**secret**: keep it only in this origin's storage).
    pub fn save(&mut self) -> Result<Option<String>, JsError> {
        match self.shell.save().map_err(js)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| JsError::new(Problem::SavedState.sentence())),
        }
    }

    /// Whether the session changed since the last `save()`.
    #[wasm_bindgen(getter, js_name = needsSave)]
    pub fn needs_save(&self) -> bool {
        self.shell.needs_save()
    }

    /// The socket to `/v1/companion` opened: queues the Identify (the same
    /// client on every connection), then the offer's Register (a pairing
    /// goes on over a new connection) or, once linked, the session's list
    /// and the Subscribe.
    pub fn connected(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.shell.connected(timestamp(now_ms)).map_err(js)
    }

    /// The next frame to send on the socket, or `undefined`.
    #[wasm_bindgen(js_name = takeFrame)]
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.shell.take_frame()
    }

    /// Handles one binary message from the relay. Throws only for bytes
    /// that are not a frame; a message the core refuses changes nothing.
    pub fn receive(&mut self, frame: &[u8], now_ms: f64) -> Result<(), JsError> {
        self.shell
            .receive(frame, &mut OsRng, timestamp(now_ms))
            .map_err(js)
    }

    /// Advances time (rotation, timeouts, the lease); true if the page
    /// should redraw.
    pub fn poll(&mut self, now_ms: f64) -> bool {
        self.shell.poll(&mut OsRng, timestamp(now_ms))
    }

    /// What happened that the user should be told once.
    #[wasm_bindgen(js_name = takeNotices)]
    pub fn take_notices(&mut self) -> Vec<WebNotice> {
        self.shell
            .take_notices()
            .into_iter()
            .map(WebNotice::from)
            .collect()
    }

    /// `"connecting"`, `"showing"`, `"awaiting-approval"`, `"linked"`,
    /// `"expiring-soon"`, `"logged-out"` or `"failed"`.
    pub fn phase(&self, now_ms: f64) -> String {
        self.shell.phase(timestamp(now_ms)).as_str().to_owned()
    }

    /// The QR text on screen (`DL:…`), once the relay knows its token.
    #[wasm_bindgen(getter, js_name = qrText)]
    pub fn qr_text(&self) -> Option<String> {
        self.shell.qr_text()
    }

    /// The QR code on screen as an SVG document (328 px square).
    #[wasm_bindgen(js_name = qrSvg)]
    pub fn qr_svg(&self) -> Result<Option<String>, JsError> {
        self.shell.qr_svg().map_err(js)
    }

    /// The offer's rotation: 0 for the first code.
    #[wasm_bindgen(getter)]
    pub fn rotation(&self) -> Option<u32> {
        self.shell.offer_rotation().map(|(r, _)| r)
    }

    /// Rotations before the display gives up (5 by default).
    #[wasm_bindgen(getter, js_name = maxRotations)]
    pub fn max_rotations(&self) -> u32 {
        self.shell.max_rotations()
    }

    /// When the code on screen goes stale (Unix ms).
    #[wasm_bindgen(getter, js_name = offerExpiresAt)]
    pub fn offer_expires_at(&self) -> Option<f64> {
        self.shell.offer_rotation().map(|(_, at)| millis(at))
    }

    /// The six-digit check code once the phone granted ("012 345"): the
    /// phone must show the same one.
    #[wasm_bindgen(getter, js_name = checkCode)]
    pub fn check_code(&self) -> Option<String> {
        self.shell.check_code()
    }

    /// The fingerprint of the account a granted link would join, while the
    /// page asks its user (phase `awaiting-consent`).
    #[wasm_bindgen(getter, js_name = joiningAccount)]
    pub fn joining_account(&self) -> Option<String> {
        self.shell.joining_account()
    }

    /// The user agrees to join that account: the Confirm is queued and the
    /// browser is linked.
    pub fn consent(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.shell.consent(timestamp(now_ms)).map_err(js)
    }

    /// The user does not agree: nothing is sent, the pairing ends.
    pub fn decline(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.shell.decline(timestamp(now_ms)).map_err(js)
    }

    /// "Link again" after a logout: a new pairing under the same name that
    /// accepts only the account this browser was linked to, with a new
    /// device key (`keyStore` as for the constructor).
    #[wasm_bindgen(js_name = linkAgain)]
    pub fn link_again(
        &self,
        key_store: Option<Vec<u8>>,
        now_ms: f64,
    ) -> Result<Option<WebCompanion>, JsError> {
        let key = device_key(key_store)?;
        Ok(self
            .shell
            .link_again(key, &mut OsRng, timestamp(now_ms))
            .map(|shell| WebCompanion { shell }))
    }

    /// Why the pairing failed, for people: one fixed sentence per class.
    #[wasm_bindgen(getter)]
    pub fn failure(&self) -> Option<String> {
        self.shell.failure()
    }

    /// This device's index (1 for the first companion), once linked.
    #[wasm_bindgen(getter, js_name = deviceIndex)]
    pub fn device_index(&self) -> Option<u32> {
        self.shell.index().map(|i| i.0)
    }

    /// This device's label, once linked.
    #[wasm_bindgen(getter)]
    pub fn label(&self) -> Option<String> {
        self.shell.session().map(|s| s.label().as_str().to_owned())
    }

    /// The account's fingerprint (the phone shows the same), once linked.
    #[wasm_bindgen(getter, js_name = accountFingerprint)]
    pub fn account_fingerprint(&self) -> Option<String> {
        self.shell.account_fingerprint()
    }

    /// This device's key fingerprint, once linked.
    #[wasm_bindgen(getter, js_name = deviceFingerprint)]
    pub fn device_fingerprint(&self) -> Option<String> {
        self.shell.session().map(|s| s.device_key().fingerprint())
    }

    /// The account's companions as its newest signed list names them.
    pub fn devices(&self) -> Vec<WebDevice> {
        let me = self.shell.index();
        self.shell
            .devices()
            .iter()
            .map(|e| WebDevice::new(e, Some(e.index) == me))
            .collect()
    }

    /// When the lease ends unless the phone is heard from (Unix ms), while
    /// linked.
    #[wasm_bindgen(js_name = leaseExpiresAt)]
    pub fn lease_expires_at(&self, now_ms: f64) -> Option<f64> {
        self.shell.lease_expires_at(timestamp(now_ms)).map(millis)
    }

    /// Why this device is logged out, for people, if it is.
    #[wasm_bindgen(js_name = logoutReason)]
    pub fn logout_reason(&self, now_ms: f64) -> Option<String> {
        self.shell
            .logout_reason(timestamp(now_ms))
            .map(|r| logout_text(r).to_owned())
    }

    /// When `poll` must run next (Unix ms).
    #[wasm_bindgen(getter, js_name = nextDeadline)]
    pub fn next_deadline(&self) -> Option<f64> {
        self.shell.next_deadline().map(millis)
    }
}

/// One device of the account.
#[wasm_bindgen]
pub struct WebDevice {
    index: u32,
    label: String,
    fingerprint: String,
    linked_at: f64,
    this_device: bool,
}

impl WebDevice {
    fn new(e: &DeviceListEntry, this_device: bool) -> Self {
        WebDevice {
            index: e.index.0,
            label: e.label.as_str().to_owned(),
            fingerprint: e.device.fingerprint(),
            linked_at: millis(e.linked_at),
            this_device,
        }
    }
}

#[wasm_bindgen]
impl WebDevice {
    /// Its index in the account.
    #[wasm_bindgen(getter)]
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Its label (chosen by that device: show it as text, never as HTML).
    #[wasm_bindgen(getter)]
    pub fn label(&self) -> String {
        self.label.clone()
    }
    /// Its key fingerprint.
    #[wasm_bindgen(getter)]
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
    /// When the phone linked it (Unix ms, the phone's clock).
    #[wasm_bindgen(getter, js_name = linkedAt)]
    pub fn linked_at(&self) -> f64 {
        self.linked_at
    }
    /// Whether it is this browser.
    #[wasm_bindgen(getter, js_name = thisDevice)]
    pub fn this_device(&self) -> bool {
        self.this_device
    }
}

/// Something to tell the user once.
#[wasm_bindgen]
pub struct WebNotice {
    kind: &'static str,
    problem: Option<&'static str>,
    text: String,
}

impl From<Notice> for WebNotice {
    fn from(n: Notice) -> Self {
        WebNotice {
            kind: n.kind(),
            problem: n.problem().map(Problem::as_str),
            text: n.text(),
        }
    }
}

#[wasm_bindgen]
impl WebNotice {
    /// `"device-added"`, `"device-removed"`, `"relay-error"` or
    /// `"relay-logout"`.
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        self.kind.to_owned()
    }
    /// A relay refusal's class (`"relay-refused"`, `"phone-not-connected"`
    /// …), or `undefined` for the other kinds.
    #[wasm_bindgen(getter)]
    pub fn problem(&self) -> Option<String> {
        self.problem.map(str::to_owned)
    }
    /// The words to show (as text, never as HTML: it quotes labels). A
    /// relay refusal is its class's fixed sentence, never the relay's text.
    #[wasm_bindgen(getter)]
    pub fn text(&self) -> String {
        self.text.clone()
    }
}
