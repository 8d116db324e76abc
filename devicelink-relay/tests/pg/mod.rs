//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temporary
//! directory, `postgres` on a free port of 127.0.0.1 only (its Unix socket
//! in the same directory), stopped and deleted when the handle drops, also
//! when a test fails or panics.
//!
//! The server binaries come from `$DEVICELINK_PG_BIN`, else
//! `/usr/lib/postgresql/15/bin` (Debian's `postgresql-15`), else
//! `pg_config --bindir`. PostgreSQL refuses to run as root: as root the
//! harness runs its commands as the `postgres` system user
//! (`runuser -u postgres --`) and gives that user the directory.
//!
//! Without the binaries [`PgServer::start`] prints a loud `SKIPPED` line and
//! returns `None`, except when `CI` is set: then it panics, so CI never
//! skips these tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running throwaway cluster.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    /// Run commands as the `postgres` user (we are root).
    as_postgres: bool,
    databases: AtomicUsize,
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DEVICELINK_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return Some(debian);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("initdb").exists().then_some(dir)
}

fn skip_or_fail(why: &str) -> Option<PgServer> {
    if std::env::var_os("CI").is_some() {
        panic!(
            "PostgreSQL tests cannot run: {why}. CI must not skip them: install the \
             `postgresql` package (apt-get install postgresql) or set DEVICELINK_PG_BIN"
        );
    }
    eprintln!();
    eprintln!("=====================================================================");
    eprintln!("SKIPPED: PostgreSQL tests: {why}.");
    eprintln!("Install PostgreSQL 15 (apt-get install postgresql) to run them;");
    eprintln!("with CI set they fail instead of skipping.");
    eprintln!("=====================================================================");
    None
}

fn uid_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// Creates and starts a cluster, or `None` (loudly) when PostgreSQL is
    /// missing outside CI.
    pub fn start() -> Option<Self> {
        let Some(bin) = find_bin() else {
            return skip_or_fail("no PostgreSQL server binaries (initdb, pg_ctl, postgres)");
        };
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let dir = tempfile::Builder::new()
            .prefix("devicelink-pg-")
            .tempdir()
            .unwrap();
        if root {
            let (Some(uid), Some(gid)) = (uid_of("postgres", "-u"), uid_of("postgres", "-g"))
            else {
                return skip_or_fail("running as root and there is no `postgres` user");
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut server = PgServer {
            bin,
            dir,
            data,
            port: 0,
            as_postgres: root,
            databases: AtomicUsize::new(0),
        };
        let out = server
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(&server.data)
            .output()
            .unwrap();
        check("initdb", &out);
        // A free port can be taken by someone else before postgres binds
        // it: try a few.
        for attempt in 0..5 {
            server.port = free_port();
            if server.try_start() {
                return Some(server);
            }
            eprintln!(
                "postgres did not start on port {} (attempt {attempt})",
                server.port
            );
        }
        panic!("postgres did not start:\n{}", server.log());
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=300 \
             -c shared_buffers=64MB -c log_min_messages=warning",
            self.port,
            self.dir.path().display()
        );
        self.command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &options, "start"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts the server again on the same port (after [`PgServer::stop`]).
    pub fn start_again(&self) {
        for _ in 0..50 {
            if self.try_start() {
                return;
            }
            // The old postmaster may still be releasing the port.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("postgres did not start again:\n{}", self.log());
    }

    /// Stops the server (`fast`: disconnects every client, as in a
    /// restart; `immediate`: as in a crash).
    pub fn stop(&self, mode: &str) {
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(&self.data)
            .arg("stop")
            .output()
            .unwrap();
        check("pg_ctl stop", &out);
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The connection string of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL command through `psql` on database `db`; returns its
    /// output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .output()
            .unwrap();
        if !out.status.success() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("postgres log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
        check(&format!("psql {sql}"), &out);
        String::from_utf8(out.stdout).unwrap()
    }

    /// A new, empty database; returns its connection string.
    pub fn create_database(&self, prefix: &str) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Stop whatever runs on the directory, then the TempDir removes it.
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}
