//! The primary's side of the handshake.
//!
//! ```text
//!  scan(QR) ─► OfferScanned ──Request──► RequestReceived ──grant──► GrantSent ──Confirm──► Confirmed
//!   (Hello sent)                 (show label + check code,            (slot pending)        (slot active)
//!                                 ask the user)
//!                 └────────────── refuse ──────────────► Refused
//! ```
//!
//! Every rejected message (forged, corrupted, replayed, out of order, for
//! another session) leaves the state exactly as it was. A handshake belongs
//! to the account that scanned the offer (only [`crate::Account::scan`]
//! starts one) and no other account can grant it. Its session keys are
//! dropped (zeroized) when it reaches `Confirmed` or `Refused`.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::messages::{
    split_sealed, write_refusal, MessageHeader, MessageKind, RequestBody, CONFIRM_LEN, HEADER_LEN,
    HELLO_LEN,
};
use super::schedule::{
    check_commitment, confirm_transcript, transcript, SessionKeys, CHECK_NONCE_LEN, NONCE_LEN,
};
use super::{random_nonce, CheckCode, HandshakeError, RefusalReason, CONFIRM_LABEL};
use crate::certificate::{CertificateError, DeviceCertificate, DeviceIndex, SignedDeviceList};
use crate::keys::{AccountId, AccountKey, DeviceKey};
use crate::label::{DeviceLabel, ObservedContext};
use crate::offer::{PairingOffer, TokenId};
use crate::time::Timestamp;

/// The primary handshake's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryState {
    /// The QR code was scanned and the Hello sent; waiting for the Request.
    OfferScanned,
    /// The companion introduced itself: show [`LinkRequest`] to the user.
    RequestReceived,
    /// The grant was sent; the slot is pending until the Confirm verifies.
    GrantSent {
        /// The index assigned.
        index: DeviceIndex,
    },
    /// Confirmed: the device is linked.
    Confirmed {
        /// The index assigned.
        index: DeviceIndex,
    },
    /// The primary refused.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
}

/// What the companion asked for: show it to the user before granting.
///
/// Everything here except the check code comes from the device asking, and
/// the check code only proves that the phone and *that* device share keys:
/// an attacker who shows you their own QR code gets a matching code too. What
/// protects the user is that linking starts only from the host's own "Link a
/// device" screen ([`crate::Account::open_link_intent`]), that the prompt
/// says plainly what approving does ([`LinkRequest::prompt`]), and that the
/// companion's own user sees the account and the same code before it
/// confirms ([`crate::Companion::consent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    /// The companion's identity key (its possession is proven by the Confirm).
    pub device: DeviceKey,
    /// The label the companion gave itself (unproven, for display).
    pub label: DeviceLabel,
    /// The six-digit check code of a QR link; the companion shows the same
    /// one before its user agrees. `None` for a typed-code link (the typed
    /// code already proves both sides are the user's).
    pub check_code: Option<CheckCode>,
    /// What the host's relay observed about the device (unauthenticated).
    pub context: Option<ObservedContext>,
}

impl LinkRequest {
    /// The device's fingerprint, for people (first 8 bytes of its key, base32).
    pub fn fingerprint(&self) -> String {
        self.device.fingerprint()
    }

    /// The words a primary should show before the user approves: what the
    /// device calls itself, where it seems to be, its code and fingerprint,
    /// and what approving gives it.
    pub fn prompt(&self) -> String {
        let mut out = format!("Link \"{}\"", self.label);
        if let Some(ctx) = &self.context {
            if let Some(region) = &ctx.region {
                out.push_str(&format!(" ({region}"));
                if let Some(net) = &ctx.network {
                    out.push_str(&format!(", {net}"));
                }
                out.push(')');
            } else if let Some(net) = &ctx.network {
                out.push_str(&format!(" ({net})"));
            }
        }
        out.push_str(
            "?\nThis device will read and send messages as you until you remove it.\n\
             Only approve a device you are setting up yourself, right now, from this screen.\n",
        );
        match self.check_code {
            Some(code) => out.push_str(&format!(
                "Check code {code} (the same on both screens), device {}.",
                self.fingerprint()
            )),
            None => out.push_str(&format!("Device {}.", self.fingerprint())),
        }
        out
    }
}

/// A device whose link completed (its confirmation verified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmedLink {
    /// The certificate the account issued (its entry in the signed list).
    pub certificate: DeviceCertificate,
    /// The companion's label.
    pub label: DeviceLabel,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Stage {
    OfferScanned,
    RequestReceived {
        request: LinkRequestOwned,
    },
    GrantSent {
        request: LinkRequestOwned,
        certificate: DeviceCertificate,
        #[serde(with = "crate::encoding::b64_array")]
        confirm_transcript: [u8; 32],
    },
    Confirmed {
        link: ConfirmedLink,
    },
    Refused {
        reason: RefusalReason,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LinkRequestOwned {
    device: DeviceKey,
    label: DeviceLabel,
    #[serde(with = "crate::encoding::b64_vec")]
    bytes: Vec<u8>,
}

/// The primary (account holder) in one pairing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimaryHandshake {
    account: AccountId,
    token: TokenId,
    /// The session keys; `None` once the handshake is confirmed or refused.
    keys: Option<SessionKeys>,
    /// This side's check-code nonce `n_p`, committed to in the Hello (a QR
    /// link) and revealed in the Grant; all zero for a typed-code link.
    #[serde(with = "crate::encoding::b64_array")]
    check_nonce: [u8; CHECK_NONCE_LEN],
    /// Whether the Hello committed to `check_nonce` (a QR link).
    committed: bool,
    /// The check code, once the Request gave the companion's nonce.
    check_code: Option<CheckCode>,
    #[serde(with = "crate::encoding::b64_vec")]
    hello: Vec<u8>,
    scanned_at: Timestamp,
    context: Option<ObservedContext>,
    stage: Stage,
}

impl PrimaryHandshake {
    /// Runs the primary's half of the key exchange on a parsed offer for
    /// `account` and returns the handshake and the Hello to send. Hosts scan
    /// through [`crate::Account::scan`], which checks the link intent.
    pub(crate) fn scan_offer<R: RngCore + CryptoRng>(
        account: AccountId,
        offer: &PairingOffer,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let secret = StaticSecret::random_from_rng(&mut *rng);
        let primary_eph = PublicKey::from(&secret).to_bytes();
        let shared = secret.diffie_hellman(&PublicKey::from(*offer.ephemeral()));
        if !shared.was_contributory() {
            // The companion's key is low-order: this offer can never work.
            return Err(HandshakeError::BadOffer(crate::offer::OfferError::WeakKey));
        }
        let token = offer.token_id();
        let th = transcript(&token, offer.ephemeral(), &primary_eph);
        let keys = SessionKeys::derive(shared.as_bytes(), offer.secret(), th);
        let mut check_nonce = [0u8; CHECK_NONCE_LEN];
        rng.fill_bytes(&mut check_nonce);
        let mut hello = Vec::with_capacity(HELLO_LEN);
        MessageHeader {
            kind: MessageKind::Hello,
            token_id: token,
        }
        .write(&mut hello);
        hello.extend_from_slice(&offer.redemption_proof().to_bytes());
        hello.extend_from_slice(&primary_eph);
        hello.extend_from_slice(&check_commitment(&th, &check_nonce));
        let tag = keys.hello_tag(&hello);
        hello.extend_from_slice(tag.as_ref());
        let handshake = PrimaryHandshake {
            account,
            token,
            check_nonce,
            committed: true,
            check_code: None,
            keys: Some(keys),
            hello: hello.clone(),
            scanned_at: now,
            context: None,
            stage: Stage::OfferScanned,
        };
        Ok((handshake, hello))
    }

    /// The seam of every entry path: a handshake whose key exchange (the
    /// QR code's Hello or the typed code's PAKE, [`crate::code`]) gave
    /// `keys` for `token`; `hello` is the message that carried the primary's
    /// key share (for a resend). From here on exactly as after a scan.
    pub(crate) fn after_key_exchange(
        account: AccountId,
        token: TokenId,
        keys: SessionKeys,
        hello: Vec<u8>,
        now: Timestamp,
    ) -> Self {
        PrimaryHandshake {
            account,
            token,
            check_nonce: [0; CHECK_NONCE_LEN],
            committed: false,
            check_code: None,
            keys: Some(keys),
            hello,
            scanned_at: now,
            context: None,
            stage: Stage::OfferScanned,
        }
    }

    /// Saves the handshake (versioned JSON; holds the session keys).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("primary handshake", self)
    }

    /// Restores a handshake saved by [`PrimaryHandshake::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let h: PrimaryHandshake = crate::persist::restore("primary handshake", bytes)?;
        let terminal = matches!(h.stage, Stage::Confirmed { .. } | Stage::Refused { .. });
        let keys_ok = match &h.keys {
            Some(_) => !terminal,
            None => terminal,
        };
        // A code is known exactly from the Request on, and only for a QR link.
        let code_ok = match h.stage {
            Stage::OfferScanned => h.check_code.is_none(),
            Stage::Refused { .. } => h.committed || h.check_code.is_none(),
            _ => h.committed == h.check_code.is_some(),
        };
        // The Hello of a scan, or the CodeHello of a typed code.
        let hello_ok = match MessageHeader::parse(&h.hello) {
            Ok(hd) => hd.token_id == h.token && h.hello.len() == HELLO_LEN,
            Err(_) => crate::code::CodeHeader::parse(&h.hello).is_ok_and(|hd| {
                hd.token_id == h.token && hd.kind == crate::code::CodeMessageKind::CodeHello
            }),
        };
        let grant_ok = !matches!(
            &h.stage,
            Stage::GrantSent { request, certificate, .. }
                if certificate.device() != request.device
                    || certificate.account() != h.account
        );
        let nonce_ok = h.committed || h.check_nonce == [0; CHECK_NONCE_LEN];
        let commitment_ok = h.commitment_consistent();
        if hello_ok && keys_ok && grant_ok && code_ok && nonce_ok && commitment_ok {
            Ok(h)
        } else {
            Err(crate::persist::PersistError::Inconsistent(
                "primary handshake",
            ))
        }
    }

    /// A QR link's saved handshake (while it holds keys) still opens its
    /// Hello's commitment with its nonce, and its check code is the one its
    /// Request and nonce give; a typed code's commits to nothing.
    fn commitment_consistent(&self) -> bool {
        let qr_hello = MessageHeader::parse(&self.hello)
            .is_ok_and(|h| h.kind == MessageKind::Hello && self.hello.len() == HELLO_LEN);
        if self.committed != qr_hello {
            return false;
        }
        let Some(keys) = self.keys.as_ref().filter(|_| self.committed) else {
            return true;
        };
        let committed = self
            .hello
            .get(super::messages::HELLO_COMMITMENT_AT..HELLO_LEN - super::schedule::MAC_LEN);
        if committed != Some(&check_commitment(&keys.transcript, &self.check_nonce)[..]) {
            return false;
        }
        let request = match &self.stage {
            Stage::RequestReceived { request } | Stage::GrantSent { request, .. } => request,
            _ => return true,
        };
        let Some((aad, nonce, mut buf)) = split_sealed(&request.bytes) else {
            return false;
        };
        keys.open_request(nonce, aad, &mut buf)
            .and_then(|plain| RequestBody::parse(plain).ok())
            .is_some_and(|body| {
                self.check_code == Some(keys.check_code(&body.check_nonce, &self.check_nonce))
            })
    }

    /// The account that scanned the offer (the only one that can grant it).
    pub fn account(&self) -> AccountId {
        self.account
    }

    /// The token of the scanned offer.
    pub fn token_id(&self) -> TokenId {
        self.token
    }

    /// When the offer was scanned.
    pub fn scanned_at(&self) -> Timestamp {
        self.scanned_at
    }

    /// The Hello, for a resend.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// The six-digit check code of a QR link, once the Request arrived
    /// (the companion shows the same one before its user agrees).
    pub fn check_code(&self) -> Option<CheckCode> {
        self.check_code
    }

    /// Attaches what the host's relay observed about the companion, shown in
    /// [`LinkRequest::context`].
    pub fn observe(&mut self, context: ObservedContext) {
        self.context = Some(context);
    }

    /// The current state.
    pub fn state(&self) -> PrimaryState {
        match &self.stage {
            Stage::OfferScanned => PrimaryState::OfferScanned,
            Stage::RequestReceived { .. } => PrimaryState::RequestReceived,
            Stage::GrantSent { certificate, .. } => PrimaryState::GrantSent {
                index: certificate.index(),
            },
            Stage::Confirmed { link } => PrimaryState::Confirmed {
                index: link.certificate.index(),
            },
            Stage::Refused { reason } => PrimaryState::Refused { reason: *reason },
        }
    }

    /// The companion's request, once received.
    pub fn request(&self) -> Option<LinkRequest> {
        match &self.stage {
            Stage::RequestReceived { request } | Stage::GrantSent { request, .. } => {
                Some(LinkRequest {
                    device: request.device,
                    label: request.label.clone(),
                    check_code: self.check_code,
                    context: self.context.clone(),
                })
            }
            _ => None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.stage {
            Stage::OfferScanned => "offer scanned",
            Stage::RequestReceived { .. } => "request received",
            Stage::GrantSent { .. } => "grant sent",
            Stage::Confirmed { .. } => "confirmed",
            Stage::Refused { .. } => "refused",
        }
    }

    fn live_keys(&self) -> Result<&SessionKeys, HandshakeError> {
        self.keys.as_ref().ok_or(HandshakeError::WrongState {
            state: self.state_name(),
        })
    }

    /// Handles the companion's Request: checks its size, decrypts it and
    /// returns what to show the user.
    pub fn receive_request(
        &mut self,
        request: &[u8],
        _now: Timestamp,
    ) -> Result<LinkRequest, HandshakeError> {
        let header = MessageHeader::expect(
            request,
            &self.token,
            &[MessageKind::Request],
            self.state_name(),
        )?;
        if !matches!(self.stage, Stage::OfferScanned) {
            return Err(HandshakeError::UnexpectedMessage {
                expected: self.state_name(),
                got: header.kind,
            });
        }
        header.check_size(request)?;
        let (aad, nonce_bytes, mut buf) =
            split_sealed(request).ok_or(HandshakeError::Malformed { what: "request" })?;
        let plain = self
            .live_keys()?
            .open_request(nonce_bytes, aad, &mut buf)
            .ok_or(HandshakeError::AuthenticationFailed)?;
        let body = RequestBody::parse(plain)?;
        let check_code = self
            .committed
            .then(|| {
                self.live_keys()
                    .map(|k| k.check_code(&body.check_nonce, &self.check_nonce))
            })
            .transpose()?;
        let device = DeviceKey::from_bytes(body.device);
        let owned = LinkRequestOwned {
            device,
            label: body.label,
            bytes: request.to_vec(),
        };
        self.check_code = check_code;
        self.stage = Stage::RequestReceived { request: owned };
        self.request().ok_or(HandshakeError::WrongState {
            state: "request received",
        })
    }

    /// Grants the link: sends `device_list` (signed by `account`, naming the
    /// new device at `index`) as the device's certificate. The slot is
    /// pending until [`PrimaryHandshake::receive_confirm`] succeeds.
    /// [`crate::Account::grant`] picks the index, keeps the limit and signs.
    pub(crate) fn grant<R: RngCore + CryptoRng>(
        &mut self,
        account: &AccountKey,
        index: DeviceIndex,
        device_list: &SignedDeviceList,
        rng: &mut R,
        _now: Timestamp,
    ) -> Result<Vec<u8>, HandshakeError> {
        let Stage::RequestReceived { request } = &self.stage else {
            return Err(HandshakeError::WrongState {
                state: self.state_name(),
            });
        };
        if account.account_id() != self.account || device_list.account() != self.account {
            return Err(CertificateError::WrongAccount.into());
        }
        if !device_list.contains(index, &request.device) {
            return Err(CertificateError::WrongDevice.into());
        }
        let certificate = DeviceCertificate::from_list(device_list.clone(), index)?;
        let mut grant = Vec::with_capacity(HEADER_LEN + NONCE_LEN + 1024);
        MessageHeader {
            kind: MessageKind::Grant,
            token_id: self.token,
        }
        .write(&mut grant);
        let nonce = random_nonce(rng);
        grant.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(CHECK_NONCE_LEN + 1024);
        body.extend_from_slice(&self.check_nonce);
        body.extend_from_slice(&certificate.to_bytes());
        let keys = self.live_keys()?;
        if !keys.seal_grant(nonce, &grant[..HEADER_LEN], &mut body) {
            return Err(HandshakeError::WrongState {
                state: "sealing failed",
            });
        }
        grant.extend_from_slice(&body);
        let th2 = confirm_transcript(&keys.transcript, &request.bytes, &grant);
        let request = request.clone();
        self.stage = Stage::GrantSent {
            request,
            certificate,
            confirm_transcript: th2,
        };
        Ok(grant)
    }

    /// Refuses the link with `reason`, authenticated so the companion can trust
    /// it. Allowed before a grant was sent; the session keys are dropped.
    /// Hosts refuse through [`crate::Account::refuse`] (or
    /// [`crate::host::Phone::refuse`]), which records the refusal.
    pub(crate) fn refuse<R: RngCore + CryptoRng>(
        &mut self,
        reason: RefusalReason,
        rng: &mut R,
    ) -> Result<Vec<u8>, HandshakeError> {
        if !matches!(
            self.stage,
            Stage::OfferScanned | Stage::RequestReceived { .. }
        ) {
            return Err(HandshakeError::WrongState {
                state: self.state_name(),
            });
        }
        if matches!(reason, RefusalReason::Other { code } if code < 4) {
            // Codes 0–3 would read back as another reason.
            return Err(HandshakeError::WrongState {
                state: "refusal codes 0-3 are reserved",
            });
        }
        let mut msg = Vec::with_capacity(HEADER_LEN + NONCE_LEN + 5 + 16);
        MessageHeader {
            kind: MessageKind::Refusal,
            token_id: self.token,
        }
        .write(&mut msg);
        let nonce = random_nonce(rng);
        msg.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(5 + 16);
        write_refusal(reason.into(), &mut body);
        if !self
            .live_keys()?
            .seal_grant(nonce, &msg[..HEADER_LEN], &mut body)
        {
            return Err(HandshakeError::WrongState {
                state: "sealing failed",
            });
        }
        msg.extend_from_slice(&body);
        self.stage = Stage::Refused { reason };
        self.keys = None;
        Ok(msg)
    }

    /// Handles the companion's Confirm: its identity key's signature over the
    /// whole transcript, which proves it holds the key it asked to certify.
    /// Only then is the device linked; the session keys are dropped.
    pub fn receive_confirm(
        &mut self,
        confirm: &[u8],
        _now: Timestamp,
    ) -> Result<ConfirmedLink, HandshakeError> {
        let header = MessageHeader::expect(
            confirm,
            &self.token,
            &[MessageKind::Confirm],
            self.state_name(),
        )?;
        let Stage::GrantSent {
            request,
            certificate,
            confirm_transcript,
        } = &self.stage
        else {
            return Err(match self.stage {
                Stage::Confirmed { .. } => HandshakeError::AlreadyLinked,
                _ => HandshakeError::UnexpectedMessage {
                    expected: self.state_name(),
                    got: header.kind,
                },
            });
        };
        header.check_size(confirm)?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&confirm[HEADER_LEN..CONFIRM_LEN]);
        let mut msg = Vec::with_capacity(CONFIRM_LABEL.len() + 32);
        msg.extend_from_slice(CONFIRM_LABEL);
        msg.extend_from_slice(confirm_transcript);
        if !request.device.verify(&msg, &signature) {
            return Err(HandshakeError::BadSignature {
                what: "confirmation",
            });
        }
        let link = ConfirmedLink {
            certificate: certificate.clone(),
            label: request.label.clone(),
        };
        self.stage = Stage::Confirmed { link: link.clone() };
        self.keys = None;
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use crate::{
        Account, Companion, DeviceIdentity, DeviceLabel, HandshakeError, Policy, Timestamp,
    };

    /// The primary committed to its check-code nonce in the Hello: a Grant
    /// revealing another one (a primary steering the code after it saw the
    /// companion's nonce) is refused and changes nothing.
    #[test]
    fn a_grant_whose_nonce_breaks_the_commitment_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let now = Timestamp::from_unix_millis(1_700_000_000_000);
        let policy = Policy::default();
        let mut account = Account::generate(policy.clone(), &mut rng, now);
        let mut companion = Companion::new(
            DeviceIdentity::generate(&mut rng),
            DeviceLabel::new("c").unwrap(),
            &policy,
            &mut rng,
            now,
        );
        let text = companion.offer().unwrap().to_text();
        account.open_link_intent(now);
        let (mut primary, hello) = account.scan(&text, &mut rng, now).unwrap();
        let request = companion.receive_hello(&hello, &mut rng, now).unwrap();
        account
            .receive_request(&mut primary, &request, &mut rng, now)
            .unwrap();
        let honest = primary.check_code.unwrap();
        let mut steering = primary.clone();
        steering.check_nonce[0] ^= 1;
        let mut account2 = account.clone();
        let forged = account2.grant(&mut steering, &mut rng, now).unwrap();
        let before = companion.save().unwrap();
        assert_eq!(
            companion.receive_grant(&forged, now),
            Err(HandshakeError::AuthenticationFailed)
        );
        assert_eq!(companion.save().unwrap(), before);
        let grant = account.grant(&mut primary, &mut rng, now).unwrap();
        let join = companion.receive_grant(&grant, now).unwrap();
        assert_eq!(join.check_code, Some(honest));
    }
}
