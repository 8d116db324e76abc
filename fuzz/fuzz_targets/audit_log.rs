//! Arbitrary bytes, read as UTF-8 (lossily), as an exported audit trail.
//!
//! Property: `AuditLog::from_json_lines` is total; a log it accepts verifies
//! against its own account, and re-exports to a text that loads back to an
//! equal log (and exports identically again: the export is canonical).
#![no_main]

use devicelink::audit::AuditLog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(log) = AuditLog::from_json_lines(&text) else {
        return;
    };
    let covered = log
        .verify(&log.account())
        .expect("a loaded audit log verifies against its own account");
    assert!(covered as usize <= log.len());
    let exported = log.to_json_lines().expect("export");
    let back = AuditLog::from_json_lines(&exported).expect("own export loads");
    assert_eq!(back, log, "export/import changed the log");
    assert_eq!(back.to_json_lines().expect("export"), exported);
    assert_eq!(back.verify(&back.account()), Ok(covered));
});
