//! Facts a floor below the account's signed structures, its sessions, its
//! registry and its audit trail, which all name them: the audit trail's
//! anchor (carried inside every signed device list and heartbeat) and why a
//! device was logged out (carried in a list's removals, a session's standing
//! and the trail's events). Importing nothing of those four keeps the
//! dependency graph without a circle; the types keep their old paths
//! (`audit::AuditAnchor`, `session::LogoutReason`).

use serde::{Deserialize, Serialize};

/// The audit trail's extent and head at a moment: `entries` entries whose
/// last one hashes to `head` (zeros for an empty trail). Carried inside every
/// signed device list and heartbeat, so the account vouches for the trail
/// without a signature of its own (the audit module's `AuditLog::verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// Number of entries covered.
    pub entries: u64,
    /// Hash of the last covered entry.
    #[serde(with = "crate::encoding::b64_array")]
    pub head: [u8; 32],
}

impl AuditAnchor {
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.entries.to_be_bytes());
        out.extend_from_slice(&self.head);
    }

    pub(crate) fn read(r: &mut crate::wire::Reader<'_>) -> Result<Self, crate::wire::Truncated> {
        Ok(AuditAnchor {
            entries: r.u64()?,
            head: r.array()?,
        })
    }
}

/// Why a device was logged out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogoutReason {
    /// The primary removed it.
    Revoked,
    /// The primary was inactive for the policy's offline limit (14 days).
    PrimaryOffline,
    /// The companion itself was idle past the policy's idle limit.
    CompanionIdle,
    /// The companion never confirmed the grant in time.
    ConfirmationTimedOut,
    /// Another device took its place (the same device re-paired).
    Replaced,
}

impl std::fmt::Display for LogoutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogoutReason::Revoked => "revoked by the primary",
            LogoutReason::PrimaryOffline => "primary offline too long",
            LogoutReason::CompanionIdle => "companion idle too long",
            LogoutReason::ConfirmationTimedOut => "confirmation timed out",
            LogoutReason::Replaced => "replaced by a new link",
        })
    }
}
