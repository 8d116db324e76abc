//! The `devicelink-relay` binary. This step opens (and migrates) the store
//! and reports what it holds; the network transport comes next.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use devicelink::Policy;
use devicelink_relay::{AccountDirectory, SqliteStore};

/// The devicelink relay.
///
/// This build opens the SQLite store (creating and migrating it), rebuilds
/// the account directory from it and exits: the WebSocket transport that
/// will listen on `--listen` is not built yet.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on (used once the network transport lands).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "devicelink.db")]
    db: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = match SqliteStore::open(&args.db) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(db = %args.db.display(), error = %e, "cannot open the store");
            return ExitCode::FAILURE;
        }
    };
    let directory = match AccountDirectory::open(store.clone(), &Policy::default()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(db = %args.db.display(), error = %e, "cannot load the accounts");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        db = %args.db.display(),
        schema = store.schema_version().unwrap_or(0),
        accounts = directory.directory().len(),
        "store open"
    );
    tracing::warn!(listen = %args.listen, "the network transport is not built yet; exiting");
    ExitCode::SUCCESS
}
