//! A hash-chained, signed audit trail of the account's device lifecycle: which
//! device was linked, when, by whom; when it was removed or expired, and why.
//!
//! Each entry's hash is `SHA-256("devicelink/v2 audit" || previous hash ||
//! canonical JSON of the entry's body)`, starting from 32 zero bytes.
//!
//! The account vouches for the trail without signing anything extra: every
//! device list and heartbeat it signs carries the trail's [`AuditAnchor`]
//! (entry count and head hash), which [`AuditLog::record_registry`] hands to
//! the [`Account`]. Verifying against the newest signed fact a verifier holds
//! ([`AuditLog::verify`] with a [`SignedAnchor`]) proves every entry up to
//! the anchor, detects a cut tail (fewer entries than anchored) and reports
//! the entries after it as unanchored. An optional checkpoint entry
//! ([`AuditLog::checkpoint`]) carries an account signature of its own, for
//! trails that must be closed without a list or heartbeat.
//! [`AuditLog::verify`] detects any edited, removed, reordered or inserted
//! entry. Exported as JSON Lines, one entry a line; loading takes the account
//! the verifier expects, never the one the file names.

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::certificate::DeviceIndex;
pub use crate::facts::AuditAnchor;
use crate::facts::LogoutReason;
use crate::handshake::LinkRequest;
use crate::keys::{AccountId, AccountKey, DeviceKey};
use crate::offer::TokenId;
use crate::registry::{Account, RegistryEvent};
use crate::time::Timestamp;

const AUDIT_LABEL: &[u8] = b"devicelink/v2 audit";
const CHECKPOINT_LABEL: &[u8] = b"devicelink/v2 audit checkpoint";

/// Why an audit trail failed to load or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A line is not a valid entry.
    #[error("malformed audit entry at line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// Entry `seq` is not where it should be (removed, reordered, inserted).
    #[error("audit entry {position} has sequence number {seq}: entries were removed, reordered or inserted")]
    OutOfSequence {
        /// Position in the log.
        position: u64,
        /// Sequence number found.
        seq: u64,
    },
    /// Entry `seq` does not hash to what it claims, or does not chain to its
    /// predecessor: it was edited.
    #[error("audit entry {seq} was altered (hash chain broken)")]
    BrokenChain {
        /// The entry.
        seq: u64,
    },
    /// A checkpoint's signature does not verify for the account.
    #[error("audit checkpoint {seq} has a bad signature")]
    BadCheckpoint {
        /// The checkpoint entry.
        seq: u64,
    },
    /// The log (or the anchor given) belongs to another account.
    #[error("audit trail of another account")]
    WrongAccount,
    /// The trail is shorter than what the account signed: its tail was cut.
    #[error(
        "audit trail has {have} entries but the account vouched for {anchored}: the tail was cut"
    )]
    Truncated {
        /// Entries the anchor covers.
        anchored: u64,
        /// Entries present.
        have: u64,
    },
    /// The entry at the anchor does not hash to the anchored head: the trail
    /// was rewritten (and its hashes recomputed).
    #[error("audit trail does not match the account's anchor at entry {entries}")]
    AnchorMismatch {
        /// Entries the anchor covers.
        entries: u64,
    },
    /// The event cannot be recorded (for example an offer text that does not parse).
    #[error("cannot record: {0}")]
    Record(String),
}

/// An [`AuditAnchor`] the account signed, taken from a verified device list
/// or heartbeat (the only ways to make one), with the account that signed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedAnchor {
    account: AccountId,
    anchor: AuditAnchor,
}

impl SignedAnchor {
    /// The signing account.
    pub fn account(&self) -> AccountId {
        self.account
    }
    /// The anchor.
    pub fn anchor(&self) -> AuditAnchor {
        self.anchor
    }
}

impl From<&crate::certificate::SignedDeviceList> for SignedAnchor {
    fn from(list: &crate::certificate::SignedDeviceList) -> Self {
        SignedAnchor {
            account: list.account(),
            anchor: list.audit(),
        }
    }
}

impl From<&crate::certificate::PrimaryHeartbeat> for SignedAnchor {
    fn from(hb: &crate::certificate::PrimaryHeartbeat) -> Self {
        SignedAnchor {
            account: hb.account(),
            anchor: hb.audit(),
        }
    }
}

/// What [`AuditLog::verify`] established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries in the trail (all chained and in sequence).
    pub entries: u64,
    /// Entries covered by an account signature: the anchor given, or the
    /// last signed checkpoint, whichever covers more.
    pub anchored: u64,
    /// Trailing entries no signature covers yet (recorded after the last
    /// anchor): believable only as far as the trail's keeper is.
    pub unanchored: u64,
}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// The primary (the user on the phone).
    Primary,
    /// A linked companion device.
    Companion(DeviceIndex),
    /// A device that is not linked (yet): it showed an offer or asked to link.
    NewDevice,
    /// Time: an expiry rule of the policy.
    Policy,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A companion showed an offer.
    OfferShown {
        /// Its token.
        token: TokenId,
    },
    /// The offer on screen rotated.
    OfferRotated {
        /// The retired token.
        old: TokenId,
        /// The new token.
        new: TokenId,
    },
    /// A companion asked to link (after the scan).
    LinkRequested {
        /// Its identity key.
        device: DeviceKey,
        /// Its label.
        label: String,
        /// The six-digit check code shown (a QR link), as a number; `None`
        /// for a typed-code link.
        check_code: Option<crate::handshake::CheckCode>,
    },
    /// A link was granted (slot pending).
    Granted {
        /// The new index.
        index: DeviceIndex,
        /// Its key.
        device: DeviceKey,
        /// Its label.
        label: String,
    },
    /// The companion confirmed; it is linked.
    Linked {
        /// The device.
        index: DeviceIndex,
    },
    /// A link was refused.
    Refused {
        /// Why.
        reason: String,
    },
    /// A device was logged out.
    LoggedOut {
        /// The device.
        index: DeviceIndex,
        /// Why.
        reason: LogoutReason,
    },
    /// The signed device list changed.
    DeviceListUpdated {
        /// Its version.
        version: u64,
    },
    /// The account signed the chain up to here.
    Checkpoint {
        /// Ed25519 signature (base64) over the label, this entry's sequence
        /// number, time and the previous hash.
        signature: String,
    },
}

/// One entry of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the trail, from 0.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous entry (base64; zeros for the first).
    pub prev: String,
    /// This entry's hash (base64).
    pub hash: String,
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    at: Timestamp,
    actor: Actor,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// A hash-chained audit trail for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLog {
    account: AccountId,
    entries: Vec<AuditEntry>,
    head: [u8; 32],
}

fn entry_hash(prev: &[u8; 32], body: &Body<'_>) -> Result<[u8; 32], AuditError> {
    let json = serde_json::to_vec(body).map_err(|e| AuditError::Record(e.to_string()))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(AUDIT_LABEL);
    ctx.update(prev);
    ctx.update(&json);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

fn checkpoint_message(seq: u64, at: Timestamp, prev: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_LABEL.len() + 48);
    m.extend_from_slice(CHECKPOINT_LABEL);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&at.as_unix_millis().to_be_bytes());
    m.extend_from_slice(prev);
    m
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
}

impl AuditLog {
    /// An empty trail for `account`.
    pub fn new(account: AccountId) -> Self {
        AuditLog {
            account,
            entries: Vec::new(),
            head: [0; 32],
        }
    }

    /// The account.
    pub fn account(&self) -> AccountId {
        self.account
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether the trail is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The entries, oldest first.
    pub fn entries(&self) -> &[AuditEntry] {
        &self.entries
    }

    /// Appends an event.
    pub fn append(
        &mut self,
        actor: Actor,
        event: AuditEvent,
        at: Timestamp,
    ) -> Result<&AuditEntry, AuditError> {
        let seq = u64::try_from(self.entries.len()).unwrap_or(u64::MAX);
        let hash = entry_hash(
            &self.head,
            &Body {
                seq,
                at,
                actor,
                event: &event,
            },
        )?;
        let entry = AuditEntry {
            seq,
            at,
            actor,
            event,
            prev: crate::encoding::b64(&self.head),
            hash: crate::encoding::b64(&hash),
        };
        self.head = hash;
        self.entries.push(entry);
        self.entries
            .last()
            .ok_or(AuditError::Record("append failed".into()))
    }

    /// Records that a companion showed the offer with `offer_text`.
    pub fn offer_shown(&mut self, offer_text: &str, at: Timestamp) -> Result<(), AuditError> {
        let offer = crate::offer::PairingOffer::from_text(offer_text)
            .map_err(|e| AuditError::Record(e.to_string()))?;
        self.append(
            Actor::NewDevice,
            AuditEvent::OfferShown {
                token: offer.token_id(),
            },
            at,
        )?;
        Ok(())
    }

    /// Records a companion's link request as shown to the user.
    pub fn link_requested(
        &mut self,
        request: &LinkRequest,
        at: Timestamp,
    ) -> Result<(), AuditError> {
        self.append(
            Actor::NewDevice,
            AuditEvent::LinkRequested {
                device: request.device,
                label: request.label.to_string(),
                check_code: request.check_code,
            },
            at,
        )?;
        Ok(())
    }

    /// Records a refusal (for example the limit at scan time).
    pub fn refused(&mut self, reason: &str, at: Timestamp) -> Result<(), AuditError> {
        self.append(
            Actor::Primary,
            AuditEvent::Refused {
                reason: reason.into(),
            },
            at,
        )?;
        Ok(())
    }

    /// The trail's current extent and head.
    pub fn anchor(&self) -> AuditAnchor {
        AuditAnchor {
            entries: u64::try_from(self.entries.len()).unwrap_or(u64::MAX),
            head: self.head,
        }
    }

    /// Records one registry event, attributing it.
    pub fn record(&mut self, event: &RegistryEvent) -> Result<(), AuditError> {
        let (actor, ev, at) = match event.clone() {
            RegistryEvent::Granted {
                index,
                device,
                label,
                at,
            } => (
                Actor::Primary,
                AuditEvent::Granted {
                    index,
                    device,
                    label: label.to_string(),
                },
                at,
            ),
            RegistryEvent::Refused { reason, at } => (
                Actor::Primary,
                AuditEvent::Refused {
                    reason: reason.to_string(),
                },
                at,
            ),
            RegistryEvent::Linked { index, at } => {
                (Actor::Companion(index), AuditEvent::Linked { index }, at)
            }
            RegistryEvent::LoggedOut { index, reason, at } => {
                let actor = match reason {
                    LogoutReason::Revoked | LogoutReason::Replaced => Actor::Primary,
                    _ => Actor::Policy,
                };
                (actor, AuditEvent::LoggedOut { index, reason }, at)
            }
            RegistryEvent::DeviceListUpdated { version, at } => (
                Actor::Primary,
                AuditEvent::DeviceListUpdated { version },
                at,
            ),
        };
        self.append(actor, ev, at)?;
        Ok(())
    }

    /// Settles `account` at `now`, records every event it produced since the
    /// last call, and hands the account the trail's new anchor, so the next
    /// device list and heartbeat it signs vouch for every entry so far.
    pub fn record_registry(
        &mut self,
        account: &mut Account,
        now: Timestamp,
    ) -> Result<(), AuditError> {
        if account.account_id() != self.account {
            return Err(AuditError::WrongAccount);
        }
        account.poll(now);
        for e in account.take_events() {
            self.record(&e)?;
        }
        account.anchor_audit(self.anchor());
        Ok(())
    }

    /// Appends a checkpoint signed by the account key over the chain so far.
    pub fn checkpoint(&mut self, key: &AccountKey, at: Timestamp) -> Result<(), AuditError> {
        if key.account_id() != self.account {
            return Err(AuditError::WrongAccount);
        }
        let seq = u64::try_from(self.entries.len()).unwrap_or(u64::MAX);
        let sig = key.sign(&checkpoint_message(seq, at, &self.head));
        self.append(
            Actor::Primary,
            AuditEvent::Checkpoint {
                signature: crate::encoding::b64(&sig),
            },
            at,
        )?;
        Ok(())
    }

    /// Verifies the trail for the `expected` account: the whole chain, every
    /// checkpoint signature, and, given the newest anchor the verifier holds
    /// from a signed list or heartbeat, that the trail reaches it and matches
    /// it. Reports how much of the trail a signature covers.
    pub fn verify(
        &self,
        expected: &AccountId,
        latest: Option<SignedAnchor>,
    ) -> Result<AuditReport, AuditError> {
        if *expected != self.account || latest.is_some_and(|a| a.account != *expected) {
            return Err(AuditError::WrongAccount);
        }
        let (_, checkpointed) = verify_entries(&self.entries, expected)?;
        let entries = u64::try_from(self.entries.len()).unwrap_or(u64::MAX);
        let mut anchored = checkpointed;
        if let Some(SignedAnchor { anchor, .. }) = latest {
            if anchor.entries > entries {
                return Err(AuditError::Truncated {
                    anchored: anchor.entries,
                    have: entries,
                });
            }
            let head = match anchor.entries.checked_sub(1) {
                None => Some([0u8; 32]),
                Some(last) => usize::try_from(last)
                    .ok()
                    .and_then(|i| self.entries.get(i))
                    .and_then(|e| decode32(&e.hash)),
            };
            if head != Some(anchor.head) {
                return Err(AuditError::AnchorMismatch {
                    entries: anchor.entries,
                });
            }
            anchored = anchored.max(anchor.entries);
        }
        Ok(AuditReport {
            entries,
            anchored,
            unanchored: entries - anchored,
        })
    }

    /// Exports the trail as JSON Lines (a header line, then one entry a line).
    pub fn to_json_lines(&self) -> Result<String, AuditError> {
        let mut out = serde_json::to_string(&Header {
            account: self.account,
        })
        .map_err(|e| AuditError::Record(e.to_string()))?;
        out.push('\n');
        for e in &self.entries {
            out.push_str(&serde_json::to_string(e).map_err(|e| AuditError::Record(e.to_string()))?);
            out.push('\n');
        }
        Ok(out)
    }

    /// Loads a trail exported by [`AuditLog::to_json_lines`] for the
    /// `expected` account and verifies its chain and checkpoints (the file's
    /// own account line must name `expected`: a file is never trusted to say
    /// whose it is). Check it against the newest signed anchor with
    /// [`AuditLog::verify`]. Total: any text gives a log or a typed error.
    pub fn from_json_lines(text: &str, expected: &AccountId) -> Result<Self, AuditError> {
        let mut lines = text.lines();
        let header: Header = serde_json::from_str(lines.next().unwrap_or("")).map_err(|e| {
            AuditError::Malformed {
                line: 1,
                reason: e.to_string(),
            }
        })?;
        let mut entries = Vec::new();
        for (i, line) in lines.enumerate() {
            let e: AuditEntry = serde_json::from_str(line).map_err(|e| AuditError::Malformed {
                line: i + 2,
                reason: e.to_string(),
            })?;
            // Only the canonical form is accepted: a line carrying members
            // the hash does not cover (a "note" added by whoever keeps the
            // file), other spacing or another order is refused, so what a
            // person reads is exactly what the chain vouches for.
            let canonical =
                serde_json::to_string(&e).map_err(|e| AuditError::Record(e.to_string()))?;
            if canonical != line {
                return Err(AuditError::Malformed {
                    line: i + 2,
                    reason: "not the canonical form of an entry (extra members, order or spacing)"
                        .into(),
                });
            }
            entries.push(e);
        }
        if header.account != *expected {
            return Err(AuditError::WrongAccount);
        }
        let (head, _) = verify_entries(&entries, expected)?;
        Ok(AuditLog {
            account: header.account,
            entries,
            head,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    account: AccountId,
}

fn verify_entries(
    entries: &[AuditEntry],
    account: &AccountId,
) -> Result<([u8; 32], u64), AuditError> {
    let mut head = [0u8; 32];
    let mut covered = 0u64;
    for (position, e) in (0u64..).zip(entries) {
        if e.seq != position {
            return Err(AuditError::OutOfSequence {
                position,
                seq: e.seq,
            });
        }
        let prev = decode32(&e.prev).ok_or(AuditError::BrokenChain { seq: e.seq })?;
        let claimed = decode32(&e.hash).ok_or(AuditError::BrokenChain { seq: e.seq })?;
        let body = Body {
            seq: e.seq,
            at: e.at,
            actor: e.actor,
            event: &e.event,
        };
        if prev != head || entry_hash(&head, &body)? != claimed {
            return Err(AuditError::BrokenChain { seq: e.seq });
        }
        if let AuditEvent::Checkpoint { signature } = &e.event {
            use base64::Engine;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(signature)
                .ok()
                .and_then(|v| <[u8; 64]>::try_from(v.as_slice()).ok())
                .ok_or(AuditError::BadCheckpoint { seq: e.seq })?;
            if !account.verify(&checkpoint_message(e.seq, e.at, &head), &sig) {
                return Err(AuditError::BadCheckpoint { seq: e.seq });
            }
            covered = e.seq.saturating_add(1);
        }
        head = claimed;
    }
    Ok((head, covered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn sample() -> (AccountKey, AuditLog) {
        let key = AccountKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let mut log = AuditLog::new(key.account_id());
        let t = Timestamp::from_unix_millis;
        log.append(
            Actor::Primary,
            AuditEvent::Refused {
                reason: "limit".into(),
            },
            t(1),
        )
        .unwrap();
        log.append(
            Actor::Companion(DeviceIndex(1)),
            AuditEvent::Linked {
                index: DeviceIndex(1),
            },
            t(2),
        )
        .unwrap();
        log.append(
            Actor::Primary,
            AuditEvent::LoggedOut {
                index: DeviceIndex(1),
                reason: LogoutReason::Revoked,
            },
            t(3),
        )
        .unwrap();
        log.checkpoint(&key, t(4)).unwrap();
        log.append(
            Actor::Policy,
            AuditEvent::DeviceListUpdated { version: 2 },
            t(5),
        )
        .unwrap();
        (key, log)
    }

    #[test]
    fn verifies_and_round_trips() {
        let (key, log) = sample();
        assert_eq!(
            log.verify(&key.account_id(), None),
            Ok(AuditReport {
                entries: 5,
                anchored: 4,
                unanchored: 1
            })
        );
        let text = log.to_json_lines().unwrap();
        assert_eq!(text.lines().count(), 6);
        let back = AuditLog::from_json_lines(&text, &key.account_id()).unwrap();
        assert_eq!(back, log);
    }

    fn lines(log: &AuditLog) -> Vec<String> {
        log.to_json_lines()
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn detects_edit_remove_reorder_insert() {
        let (key, log) = sample();
        let id = key.account_id();
        let l = lines(&log);
        let join = |v: Vec<String>| v.join("\n");
        // Edited: change the reason text.
        let mut edited = l.clone();
        edited[1] = edited[1].replace("limit", "other");
        assert!(matches!(
            AuditLog::from_json_lines(&join(edited), &id),
            Err(AuditError::BrokenChain { seq: 0 })
        ));
        // Edited time.
        let mut edited = l.clone();
        edited[2] = edited[2].replace("\"at\":2", "\"at\":9");
        assert!(AuditLog::from_json_lines(&join(edited), &id).is_err());
        // Removed.
        let mut removed = l.clone();
        removed.remove(2);
        assert!(matches!(
            AuditLog::from_json_lines(&join(removed), &id),
            Err(AuditError::OutOfSequence { .. })
        ));
        // Reordered.
        let mut reordered = l.clone();
        reordered.swap(1, 2);
        assert!(matches!(
            AuditLog::from_json_lines(&join(reordered), &id),
            Err(AuditError::OutOfSequence { .. })
        ));
        // Inserted (a copy of an entry).
        let mut inserted = l.clone();
        inserted.insert(2, l[2].clone());
        assert!(AuditLog::from_json_lines(&join(inserted), &id).is_err());
        // A forged checkpoint by another key.
        let (other, _) = sample();
        let _ = other;
        let key2 = AccountKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        let mut log2 = log.clone();
        log2.checkpoint(&key2, Timestamp::from_unix_millis(9))
            .unwrap_err();
        let mut forged = AuditLog::new(key2.account_id());
        forged
            .checkpoint(&key2, Timestamp::from_unix_millis(1))
            .unwrap();
        assert!(matches!(
            forged.verify(&log.account(), None),
            Err(AuditError::WrongAccount)
        ));
    }
}
