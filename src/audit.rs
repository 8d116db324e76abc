//! A hash-chained, signed audit trail of the account's device lifecycle: which
//! device was linked, when, by whom; when it was removed or expired, and why.
//!
//! Each entry's hash is `SHA-256("devicelink/v1 audit" || previous hash ||
//! canonical JSON of the entry's body)`, starting from 32 zero bytes. A
//! checkpoint entry carries the account's Ed25519 signature over its own
//! position and the chain head, so the primary vouches for everything before
//! it. [`AuditLog::verify`] detects any edited, removed, reordered or inserted
//! entry; removing entries from the *end* is detected back to the last
//! checkpoint (so checkpoint often). Exported as JSON Lines, one entry a line.

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::certificate::DeviceIndex;
use crate::handshake::LinkRequest;
use crate::keys::{AccountId, AccountKey, DeviceKey};
use crate::offer::TokenId;
use crate::registry::{Account, RegistryEvent};
use crate::session::LogoutReason;
use crate::time::Timestamp;

const AUDIT_LABEL: &[u8] = b"devicelink/v1 audit";
const CHECKPOINT_LABEL: &[u8] = b"devicelink/v1 audit checkpoint";

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
    /// The log belongs to another account.
    #[error("audit trail of another account")]
    WrongAccount,
    /// The event cannot be recorded (for example an offer text that does not parse).
    #[error("cannot record: {0}")]
    Record(String),
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
        /// The check code shown.
        check_code: u8,
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

    /// Settles `account` at `now` and records every event it produced since
    /// the last call.
    pub fn record_registry(
        &mut self,
        account: &mut Account,
        now: Timestamp,
    ) -> Result<(), AuditError> {
        account.poll(now);
        for e in account.take_events() {
            self.record(&e)?;
        }
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

    /// Verifies the whole chain and every checkpoint signature against
    /// `account`. Returns the number of entries covered by the last checkpoint.
    pub fn verify(&self, account: &AccountId) -> Result<u64, AuditError> {
        if *account != self.account {
            return Err(AuditError::WrongAccount);
        }
        verify_entries(&self.entries, account).map(|(_, covered)| covered)
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

    /// Loads a trail exported by [`AuditLog::to_json_lines`] and verifies it.
    /// Total: any text gives a verified log or a typed error.
    pub fn from_json_lines(text: &str) -> Result<Self, AuditError> {
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
            entries.push(e);
        }
        let (head, _) = verify_entries(&entries, &header.account)?;
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
            covered = e.seq;
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
        assert_eq!(log.verify(&key.account_id()), Ok(3));
        let text = log.to_json_lines().unwrap();
        assert_eq!(text.lines().count(), 6);
        let back = AuditLog::from_json_lines(&text).unwrap();
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
        let (_, log) = sample();
        let l = lines(&log);
        let join = |v: Vec<String>| v.join("\n");
        // Edited: change the reason text.
        let mut edited = l.clone();
        edited[1] = edited[1].replace("limit", "other");
        assert!(matches!(
            AuditLog::from_json_lines(&join(edited)),
            Err(AuditError::BrokenChain { seq: 0 })
        ));
        // Edited time.
        let mut edited = l.clone();
        edited[2] = edited[2].replace("\"at\":2", "\"at\":9");
        assert!(AuditLog::from_json_lines(&join(edited)).is_err());
        // Removed.
        let mut removed = l.clone();
        removed.remove(2);
        assert!(matches!(
            AuditLog::from_json_lines(&join(removed)),
            Err(AuditError::OutOfSequence { .. })
        ));
        // Reordered.
        let mut reordered = l.clone();
        reordered.swap(1, 2);
        assert!(matches!(
            AuditLog::from_json_lines(&join(reordered)),
            Err(AuditError::OutOfSequence { .. })
        ));
        // Inserted (a copy of an entry).
        let mut inserted = l.clone();
        inserted.insert(2, l[2].clone());
        assert!(AuditLog::from_json_lines(&join(inserted)).is_err());
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
            forged.verify(&log.account()),
            Err(AuditError::WrongAccount)
        ));
    }
}
