//! Arbitrary bytes, read as UTF-8 (lossily), as an exported audit trail of
//! the fixture's account.
//!
//! Properties:
//! - `AuditLog::from_json_lines` is total, and a log it loads belongs to the
//!   expected account (the file never decides whose it is: the same text
//!   loaded for another account is refused);
//! - a loaded log verifies on its own (chain and checkpoints), and against
//!   the fixture's signed anchor `verify` is total: `Ok` with the anchor
//!   covered, or a typed `Truncated` / `AnchorMismatch` error, nothing else;
//!   another account's verification is `WrongAccount`;
//! - the log re-exports to a text that loads back to an equal log (and
//!   exports identically again: the export is canonical).
#![no_main]

use devicelink::audit::{AuditError, AuditLog};
use devicelink::AccountId;
use devicelink_fuzz::{audit_fixture, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (_, anchor) = audit_fixture();
    let expected = f.account_id;
    let text = String::from_utf8_lossy(data);
    let Ok(log) = AuditLog::from_json_lines(&text, &expected) else {
        return;
    };
    assert_eq!(log.account(), expected, "loaded another account's trail");
    let stranger = AccountId::from_bytes([0x5a; 32]);
    assert_eq!(
        AuditLog::from_json_lines(&text, &stranger),
        Err(AuditError::WrongAccount),
        "a trail loaded for two accounts"
    );

    let entries = log.len() as u64;
    let own = log
        .verify(&expected, None)
        .expect("a loaded audit log verifies against its account");
    assert_eq!(own.entries, entries);
    assert!(own.anchored <= entries);
    assert_eq!(own.unanchored, entries - own.anchored);
    match log.verify(&expected, Some(*anchor)) {
        Ok(report) => {
            assert_eq!(report.entries, entries);
            assert!(report.anchored >= anchor.anchor().entries);
            assert!(report.anchored >= own.anchored);
            assert!(report.anchored <= entries);
            assert_eq!(report.unanchored, entries - report.anchored);
        }
        Err(AuditError::Truncated { anchored, have }) => {
            assert_eq!(anchored, anchor.anchor().entries);
            assert_eq!(have, entries);
            assert!(have < anchored);
        }
        Err(AuditError::AnchorMismatch { entries: at }) => {
            assert_eq!(at, anchor.anchor().entries);
        }
        Err(e) => panic!("verifying a loaded log against its anchor: unexpected {e:?}"),
    }
    assert_eq!(
        log.verify(&stranger, None),
        Err(AuditError::WrongAccount),
        "verified for another account"
    );

    let exported = log.to_json_lines().expect("export");
    let back = AuditLog::from_json_lines(&exported, &expected).expect("own export loads");
    assert_eq!(back, log, "export/import changed the log");
    assert_eq!(back.to_json_lines().expect("export"), exported);
    assert_eq!(back.verify(&expected, None), Ok(own));
});
