//! Writes seed inputs for every fuzz target: the known-answer vectors of
//! `tests/vectors/devicelink-v1.json` (offer texts, each message, certificate,
//! device list, heartbeat) and, from the seeded fixture run, saved states of
//! every kind, more signed structures, a Refusal and an exported audit log.
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
use devicelink_fuzz::{audit_log, build, saved_states, signed_extras};

type Seeds = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/vectors/devicelink-v1.json"
);

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
    let text = std::fs::read_to_string(VECTORS).expect("read the known-answer vectors");
    let json: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
    let vectors = json["vectors"].as_array().expect("vectors array");
    for (i, v) in vectors.iter().enumerate() {
        if small && i > 0 {
            break;
        }
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

    let f = build();
    // The fixture replays vector 0: its genuine messages must be the vector's,
    // or the seeds no longer reach past authentication.
    let v0 = &vectors[0];
    for (k, genuine) in [
        ("hello", &f.hello),
        ("request", &f.request),
        ("grant", &f.grant),
        ("confirm", &f.confirm),
        ("heartbeat", &f.heartbeat),
    ] {
        let want = B64
            .decode(v0[k].as_str().unwrap_or_default())
            .unwrap_or_default();
        if &want != genuine {
            eprintln!("warning: the fixture's {k} differs from known-answer vector 0");
        }
    }
    s.entry("handshake_messages")
        .or_default()
        .push(("fixture_refusal".into(), f.refusal.clone()));
    if !small {
        s.entry("handshake_messages")
            .or_default()
            .push(("fixture_heartbeat".into(), f.heartbeat.clone()));
    }

    let keep_signed = ["list_v3_listed", "list_v4_revoked", "heartbeat_15d"];
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
        "companion_linked",
        "primary_awaiting_confirm",
        "session",
        "display_rotated",
        "directory_one",
        "ledger_redeemed",
    ];
    for (name, bytes) in saved_states(&f) {
        if !small || keep_states.contains(&name.as_str()) {
            s.entry("persisted_state").or_default().push((name, bytes));
        }
    }

    let log = audit_log(&f).to_json_lines().expect("export audit log");
    let lines: Vec<&str> = log.lines().collect();
    let e = s.entry("audit_log").or_default();
    e.push(("full".into(), log.clone().into_bytes()));
    e.push(("header_only".into(), format!("{}\n", lines[0]).into_bytes()));
    if let Some(cut) = lines.iter().position(|l| l.contains("\"checkpoint\"")) {
        let head = lines[..=cut].join("\n") + "\n";
        e.push(("to_first_checkpoint".into(), head.into_bytes()));
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
