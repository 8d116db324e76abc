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
//! another session) leaves the state exactly as it was.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::messages::{
    write_refusal, DeviceLabel, MessageHeader, MessageKind, RequestBody, CONFIRM_LEN, HEADER_LEN,
    HELLO_LEN, MIN_SEALED_LEN,
};
use super::schedule::{confirm_transcript, transcript, SessionKeys, NONCE_LEN};
use super::{HandshakeError, RefusalReason, CONFIRM_LABEL, POP_LABEL};
use crate::certificate::{CertificateError, DeviceCertificate, DeviceIndex, SignedDeviceList};
use crate::keys::{AccountKey, DeviceKey};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    /// The companion's identity key (proven: it signed the transcript).
    pub device: DeviceKey,
    /// The label the companion gave itself (unproven, for display).
    pub label: DeviceLabel,
    /// The two-digit check code; the companion shows the same one.
    pub check_code: u8,
}

/// A device whose link completed (its confirmation verified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmedLink {
    /// The certificate the account issued.
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
    token: TokenId,
    keys: SessionKeys,
    #[serde(with = "crate::encoding::b64_vec")]
    hello: Vec<u8>,
    scanned_at: Timestamp,
    stage: Stage,
}

impl PrimaryHandshake {
    /// Scans a QR text: checks the offer, runs the primary's half of the key
    /// exchange and returns the handshake and the Hello to send.
    pub fn scan<R: RngCore + CryptoRng>(
        offer_text: &str,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let offer = PairingOffer::from_text(offer_text)?;
        Self::scan_offer(&offer, rng, now)
    }

    /// Like [`PrimaryHandshake::scan`], from an already parsed offer.
    pub fn scan_offer<R: RngCore + CryptoRng>(
        offer: &PairingOffer,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let secret = StaticSecret::random_from_rng(rng);
        let primary_eph = PublicKey::from(&secret).to_bytes();
        let shared = secret.diffie_hellman(&PublicKey::from(*offer.ephemeral()));
        if !shared.was_contributory() {
            // The companion's key is low-order: this offer can never work.
            return Err(HandshakeError::BadOffer(crate::offer::OfferError::WeakKey));
        }
        let token = offer.token_id();
        let th = transcript(&token, offer.ephemeral(), &primary_eph);
        let keys = SessionKeys::derive(shared.as_bytes(), offer.secret(), th);
        let mut hello = Vec::with_capacity(HELLO_LEN);
        MessageHeader {
            kind: MessageKind::Hello,
            token_id: token,
        }
        .write(&mut hello);
        hello.extend_from_slice(&offer.redemption_proof().to_bytes());
        hello.extend_from_slice(&primary_eph);
        let tag = keys.hello_tag(&hello);
        hello.extend_from_slice(tag.as_ref());
        let handshake = PrimaryHandshake {
            token,
            keys,
            hello: hello.clone(),
            scanned_at: now,
            stage: Stage::OfferScanned,
        };
        Ok((handshake, hello))
    }

    /// Saves the handshake (versioned JSON; holds the session keys).
    pub fn save(&self) -> Result<Vec<u8>, crate::persist::PersistError> {
        crate::persist::save("primary handshake", self)
    }

    /// Restores a handshake saved by [`PrimaryHandshake::save`].
    pub fn restore(bytes: &[u8]) -> Result<Self, crate::persist::PersistError> {
        let h: PrimaryHandshake = crate::persist::restore("primary handshake", bytes)?;
        match MessageHeader::parse(&h.hello) {
            Ok(hd)
                if hd.token_id == h.token
                    && h.hello.len() == HELLO_LEN
                    && !matches!(
                        &h.stage,
                        Stage::GrantSent { request, certificate, .. }
                            if certificate.device() != request.device
                    ) =>
            {
                Ok(h)
            }
            _ => Err(crate::persist::PersistError::Inconsistent(
                "primary handshake",
            )),
        }
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

    /// The two-digit check code (equal to the companion's).
    pub fn check_code(&self) -> u8 {
        self.keys.check_code
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
                    check_code: self.keys.check_code,
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

    /// Handles the companion's Request: decrypts it and checks the proof of
    /// possession of its identity key. Returns what to show the user.
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
        if request.len() < MIN_SEALED_LEN {
            return Err(HandshakeError::Malformed { what: "request" });
        }
        let (aad, sealed) = request.split_at(HEADER_LEN);
        let mut buf = sealed.to_vec();
        let plain = self
            .keys
            .open_request(aad, &mut buf)
            .ok_or(HandshakeError::AuthenticationFailed)?;
        let body = RequestBody::parse(plain)?;
        let device = DeviceKey::from_bytes(body.device);
        let mut proof_msg = Vec::with_capacity(POP_LABEL.len() + 32);
        proof_msg.extend_from_slice(POP_LABEL);
        proof_msg.extend_from_slice(&self.keys.transcript);
        if !device.verify(&proof_msg, &body.proof) {
            return Err(HandshakeError::BadSignature {
                what: "proof of possession",
            });
        }
        let owned = LinkRequestOwned {
            device,
            label: body.label,
            bytes: request.to_vec(),
        };
        let view = LinkRequest {
            device,
            label: owned.label.clone(),
            check_code: self.keys.check_code,
        };
        self.stage = Stage::RequestReceived { request: owned };
        Ok(view)
    }

    /// Grants the link: issues the device certificate for `index` and sends it
    /// with `device_list` (which must list the new device at `index`). The
    /// slot is pending until [`PrimaryHandshake::receive_confirm`] succeeds.
    ///
    /// Most hosts call [`crate::Account::grant`], which picks the index, keeps
    /// the limit and signs the list.
    pub fn grant<R: RngCore + CryptoRng>(
        &mut self,
        account: &AccountKey,
        index: DeviceIndex,
        device_list: &SignedDeviceList,
        rng: &mut R,
        now: Timestamp,
    ) -> Result<Vec<u8>, HandshakeError> {
        let Stage::RequestReceived { request } = &self.stage else {
            return Err(HandshakeError::WrongState {
                state: self.state_name(),
            });
        };
        if device_list.account() != account.account_id() {
            return Err(CertificateError::WrongAccount.into());
        }
        if index == DeviceIndex::PRIMARY || !device_list.contains(index, &request.device) {
            return Err(CertificateError::WrongDevice.into());
        }
        let certificate = DeviceCertificate::issue(account, index, request.device, now);
        let mut grant = Vec::with_capacity(HEADER_LEN + 512);
        MessageHeader {
            kind: MessageKind::Grant,
            token_id: self.token,
        }
        .write(&mut grant);
        let nonce = random_nonce(rng);
        grant.extend_from_slice(&nonce);
        let mut body = certificate.to_bytes();
        body.extend_from_slice(&device_list.to_bytes());
        if !self.keys.seal_grant(nonce, &grant[..HEADER_LEN], &mut body) {
            return Err(HandshakeError::WrongState {
                state: "sealing failed",
            });
        }
        grant.extend_from_slice(&body);
        let th2 = confirm_transcript(&self.keys.transcript, &request.bytes, &grant);
        let request = request.clone();
        self.stage = Stage::GrantSent {
            request,
            certificate,
            confirm_transcript: th2,
        };
        Ok(grant)
    }

    /// Refuses the link with `reason`, authenticated so the companion can trust
    /// it. Allowed before a grant was sent.
    pub fn refuse<R: RngCore + CryptoRng>(
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
        let mut msg = Vec::with_capacity(HEADER_LEN + 5 + 16);
        MessageHeader {
            kind: MessageKind::Refusal,
            token_id: self.token,
        }
        .write(&mut msg);
        let nonce = random_nonce(rng);
        msg.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(5 + 16);
        write_refusal(reason.into(), &mut body);
        if !self.keys.seal_grant(nonce, &msg[..HEADER_LEN], &mut body) {
            return Err(HandshakeError::WrongState {
                state: "sealing failed",
            });
        }
        msg.extend_from_slice(&body);
        self.stage = Stage::Refused { reason };
        Ok(msg)
    }

    /// Handles the companion's Confirm: its identity key's signature over the
    /// whole transcript. Only then is the device linked.
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
        if confirm.len() != CONFIRM_LEN {
            return Err(HandshakeError::Malformed { what: "confirm" });
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&confirm[HEADER_LEN..]);
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
        Ok(link)
    }
}

fn random_nonce<R: RngCore + CryptoRng>(rng: &mut R) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}
