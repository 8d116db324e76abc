//! Writes seed inputs for every fuzz target: the known-answer vectors of
//! `tests/vectors/devicelink-v2.json` (offer texts, each message, certificate,
//! device list, heartbeat; read by key) and, from the seeded fixture run
//! (which asserts that it reproduces vector 0), saved states of every kind,
//! more signed structures (chained, forked, stale lists; heartbeats naming
//! them), a Refusal and an exported audit log with prefixes.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- OUT_DIR
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- --small fuzz/seeds
//! ```
//!
//! Writes `OUT_DIR/<target>/<name>`; `--small` writes only a handful per
//! target (what `fuzz/seeds/` keeps under version control).
//! `fuzz/seed_corpus.sh` runs it and fills `fuzz/corpus/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use devicelink_fuzz::{
    audit_log, build, flatten_vector, saved_states, signed_extras, VECTORS_JSON,
};

type Seeds = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let small = args.iter().any(|a| a == "--small");
    args.retain(|a| a != "--small");
    let [out] = args.as_slice() else {
        eprintln!("usage: seed_corpus [--small] OUT_DIR");
        std::process::exit(2);
    };
    let seeds = collect(small);
    let mut n = 0;
    for (target, files) in &seeds {
        let dir = PathBuf::from(out).join(target);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        for (name, bytes) in files {
            write(&dir.join(name), bytes);
            n += 1;
        }
    }
    println!("wrote {n} seed files under {out}");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `small`: the handful kept in `fuzz/seeds/`.
fn collect(small: bool) -> Seeds {
    let mut s: Seeds = BTreeMap::new();
    let json: serde_json::Value = serde_json::from_str(VECTORS_JSON).expect("vectors are JSON");
    let vectors = json["vectors"].as_array().expect("vectors array");
    for (i, v) in vectors.iter().enumerate() {
        if small && i > 0 {
            break;
        }
        let v = &flatten_vector(v);
        let b64 = |k: &str| {
            B64.decode(v[k].as_str().unwrap_or_else(|| panic!("vector field {k}")))
                .expect("base64")
        };
        let offer = v["offer_text"].as_str().expect("offer_text").to_string();
        let e = s.entry("offer_text").or_default();
        e.push((format!("v{i}_offer_text"), offer.clone().into_bytes()));
        e.push((format!("v{i}_offer_bytes"), b64("offer_bytes")));
        if !small {
            e.push((
                format!("v{i}_offer_lower"),
                offer.to_lowercase().into_bytes(),
            ));
            e.push((format!("v{i}_offer_short"), offer.as_bytes()[..87].to_vec()));
        }
        let e = s.entry("handshake_messages").or_default();
        for k in ["hello", "request", "grant", "confirm"] {
            e.push((format!("v{i}_{k}"), b64(k)));
        }
        let e = s.entry("signed_structures").or_default();
        for k in ["certificate", "device_list", "heartbeat"] {
            e.push((format!("v{i}_{k}"), b64(k)));
        }
    }
    s.entry("offer_text")
        .or_default()
        .push(("prefix_only".into(), b"DL:".to_vec()));

    // `build` asserts that the fixture's genuine messages are vector 0's,
    // or the seeds would no longer reach past authentication.
    let f = build();
    s.entry("handshake_messages")
        .or_default()
        .push(("fixture_refusal".into(), f.refusal.clone()));
    if !small {
        s.entry("handshake_messages")
            .or_default()
            .push(("fixture_heartbeat".into(), f.heartbeat.clone()));
    }

    let keep_signed = [
        "list_v3_listed",
        "list_v3_revoked",
        "list_v4_revoked",
        "list_v3_unchained",
        "heartbeat_15d",
        "heartbeat_needs_v3",
    ];
    for (name, bytes) in signed_extras(&f) {
        if !small || keep_signed.contains(&name.as_str()) {
            s.entry("signed_structures")
                .or_default()
                .push((name, bytes));
        }
    }

    let keep_states = [
        "account_linked",
        "companion_awaiting_grant",
        "companion_awaiting_consent",
        "companion_linked",
        "primary_awaiting_confirm",
        "session",
        "session_list_v3",
        "display_rotated",
        "directory_one",
        "ledger_redeemed",
        "phone_linked",
        "device_showing",
    ];
    for (name, bytes) in saved_states(&f) {
        if !small || keep_states.contains(&name.as_str()) {
            s.entry("persisted_state").or_default().push((name, bytes));
        }
    }

    let (log, anchor) = audit_log(&f);
    let log = log.to_json_lines().expect("export audit log");
    let lines: Vec<&str> = log.lines().collect();
    let e = s.entry("audit_log").or_default();
    e.push(("full".into(), log.clone().into_bytes()));
    e.push(("header_only".into(), format!("{}\n", lines[0]).into_bytes()));
    if let Some(cut) = lines.iter().position(|l| l.contains("\"checkpoint\"")) {
        let head = lines[..=cut].join("\n") + "\n";
        e.push(("to_first_checkpoint".into(), head.into_bytes()));
    }
    // Header and exactly the entries the signed anchor covers.
    let anchored = usize::try_from(anchor.anchor().entries).expect("entries");
    if let Some(head) = lines.get(..=anchored) {
        e.push(("to_anchor".into(), (head.join("\n") + "\n").into_bytes()));
    }
    if !small {
        for n in 2..lines.len() {
            e.push((
                format!("first_{n}_lines"),
                (lines[..n].join("\n") + "\n").into_bytes(),
            ));
        }
    }
    s
}
