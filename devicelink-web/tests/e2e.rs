//! End to end, as a user sees it: the `devicelink-relay` binary (SQLite,
//! 127.0.0.1, a free port) serves the page; headless Chromium, driven over
//! WebDriver (chromedriver, fantoccini), opens it; the `phone` example
//! decodes the QR code from a screenshot, shows the check code and
//! approves; the page says "Linked as device #1" with the same check code
//! and account; a second browser (another origin, so its own storage) links
//! as #2 and the first is told; the phone revokes #1 and the page shows the
//! logout within 2 s; a reload keeps each state.
//!
//! Needs `chromium` and `chromedriver` (Debian: chromium, chromium-driver;
//! or `CHROMIUM` / `CHROMEDRIVER`). Run by `scripts/web_test.sh`:
//!
//! ```sh
//! cargo test -p devicelink-web --features e2e --test e2e -- --nocapture
//! ```
//!
//! With `DEVICELINK_SCREENSHOTS=docs/screenshots` it also writes the
//! page's states there. It prints the time from navigation to the first QR
//! code (a figure for BENCHMARKS.md, not asserted).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

type Error = Box<dyn std::error::Error>;

/// Every wait is bounded by this, except the logout (2 s, the issue's).
const STEP: Duration = Duration::from_secs(20);

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Builds (if needed) the relay binary and the phone example.
async fn build() -> Result<(PathBuf, PathBuf), Error> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "build",
            "-q",
            "-p",
            "devicelink-relay",
            "--bin",
            "devicelink-relay",
            "--example",
            "phone",
        ])
        .status()
        .await?;
    ensure(status.success(), || {
        "building the relay and the phone failed".into()
    })?;
    let debug = target_dir().join("debug");
    Ok((
        debug.join("devicelink-relay"),
        debug.join("examples").join("phone"),
    ))
}

/// Reads lines until one satisfies `done`; returns them all.
async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<Vec<String>, Error> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            println!("  | {line}");
            let stop = done(&line);
            seen.push(line);
            if stop {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(STEP, read).await {
        Ok(Ok(true)) => Ok(seen),
        Ok(Ok(false)) => Err(format!("output ended before {what}: {seen:?}").into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(format!("no {what} within {STEP:?}: {seen:?}").into()),
    }
}

fn field<'a>(lines: &'a [String], key: &str) -> Result<&'a str, Error> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .ok_or_else(|| format!("no `{key}` line in {lines:?}").into())
}

struct Phone {
    bin: PathBuf,
    relay: String,
    account: PathBuf,
}

impl Phone {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--relay")
            .arg(&self.relay)
            .arg("--account")
            .arg(&self.account)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs a command to its end; its output.
    async fn run(&self, args: &[&str]) -> Result<String, Error> {
        println!("phone {}", args.join(" "));
        let out = tokio::time::timeout(STEP, self.command(args).output()).await??;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.lines() {
            println!("  | {line}");
        }
        ensure(out.status.success(), || {
            format!("phone {args:?} failed: {text}")
        })?;
        Ok(text)
    }
}

struct Page {
    client: Client,
    /// Where every screenshot goes.
    tmp: PathBuf,
    /// Where the page's states also go (`DEVICELINK_SCREENSHOTS`).
    docs: Option<PathBuf>,
}

impl Page {
    async fn js(&self, script: &str) -> Result<Value, Error> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    async fn phase(&self) -> Result<String, Error> {
        let v = self
            .js("return document.getElementById('app').dataset.phase")
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    async fn text(&self, id: &str) -> Result<String, Error> {
        let v = self
            .client
            .execute(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : null",
                vec![json!(id)],
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().trim().to_owned())
    }

    /// Waits (bounded) until `ready` holds for the page's phase.
    async fn wait_phase(&self, want: &str, within: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        loop {
            let phase = self.phase().await?;
            if phase == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                let status = self.text("status").await.unwrap_or_default();
                return Err(format!(
                    "page still `{phase}` ({status}) after {within:?}, waiting for `{want}`"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (bounded) until element `id`'s text contains `needle`.
    async fn wait_text(&self, id: &str, needle: &str) -> Result<String, Error> {
        let start = Instant::now();
        loop {
            let text = self.text(id).await?;
            if text.contains(needle) {
                return Ok(text);
            }
            ensure(start.elapsed() < STEP, || {
                format!("#{id} is `{text}`, never `{needle}`")
            })?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A PNG of the window in the temporary directory (its path), and in
    /// the docs directory too if `for_docs`.
    async fn screenshot(&self, name: &str, for_docs: bool) -> Result<PathBuf, Error> {
        let png = self.client.screenshot().await?;
        if let (true, Some(dir)) = (for_docs, &self.docs) {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("{name}.png")), &png)?;
        }
        let path = self.tmp.join(format!("{name}.png"));
        std::fs::write(&path, &png)?;
        Ok(path)
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_chromedriver(tmp: &Path) -> Result<(Child, u16), Error> {
    let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port()?;
    let log = std::fs::File::create(tmp.join("chromedriver.log"))?;
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {bin} (install chromium-driver): {e}"))?;
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        ensure(start.elapsed() < STEP, || {
            "chromedriver did not listen".into()
        })?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, port))
}

async fn open_browser(port: u16, tmp: &Path) -> Result<Client, Error> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = tmp.join("profile");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ],
            // A phone-sized viewport: the page must work at 360 px.
            "mobileEmulation": {
                "deviceMetrics": { "width": 360, "height": 780, "pixelRatio": 1.0 }
            }
        }
    });
    let Value::Object(caps) = caps else {
        return Err("capabilities are not an object".into());
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await?)
}

/// What the page keeps of its device key: the saved session's fields, the
/// CryptoKey from IndexedDB, and what exporting its private half gives.
const KEY_STORE_PROBE: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  const saved = localStorage.getItem("devicelink.session") || "";
  const body = JSON.parse(saved.split("\n")[1]);
  const key = await new Promise((resolve, reject) => {
    const open = indexedDB.open("devicelink");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const req = open.result.transaction("keys").objectStore("keys").get("device");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    };
  });
  let exported = "exported";
  try { await crypto.subtle.exportKey("pkcs8", key.privateKey); } catch (e) { exported = e.name; }
  done({
    identity: "identity" in body,
    keyStore: body.key_store ?? null,
    extractable: key.privateKey.extractable,
    algorithm: key.privateKey.algorithm.name,
    exported,
    publicKey: btoa(String.fromCharCode(...key.publicKey)),
  });
})().catch((e) => done({ error: String(e) }));
"#;

#[tokio::test(flavor = "current_thread")]
async fn link_revoke_and_reload_in_headless_chromium() -> Result<(), Error> {
    let tmp = std::env::temp_dir().join(format!("devicelink-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let docs: Option<PathBuf> = std::env::var_os("DEVICELINK_SCREENSHOTS")
        .filter(|d| !d.is_empty())
        .map(|d| root().join(d));
    let (relay_bin, phone_bin) = build().await?;

    // A separate static origin for the page (a plain file server on its
    // own free port), which the relay is told to allow.
    let static_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let static_origin = format!("http://127.0.0.1:{static_port}");

    // The relay, on SQLite, on a free loopback port.
    let mut relay = Command::new(&relay_bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allowed-origin",
            &static_origin,
            "--db",
        ])
        .arg(tmp.join("relay.db"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.join("relay.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let mut relay_out = BufReader::new(relay.stdout.take().ok_or("no relay stdout")?).lines();
    let lines = read_until(&mut relay_out, "the relay's address", |l| {
        l.starts_with("devicelink-relay listening on ws://")
    })
    .await?;
    let addr = field(&lines, "devicelink-relay listening on ws://")?
        .split_whitespace()
        .next()
        .ok_or("no address")?
        .to_owned();
    ensure(addr.starts_with("127.0.0.1:"), || {
        format!("relay on {addr}")
    })?;
    let port = addr.rsplit(':').next().unwrap_or_default().to_owned();
    let phone = Phone {
        bin: phone_bin,
        relay: format!("ws://{addr}"),
        account: tmp.join("phone-account.json"),
    };

    let (_driver, driver_port) = start_chromedriver(&tmp).await?;
    let client = open_browser(driver_port, &tmp).await?;
    let page = Page {
        client,
        tmp: tmp.clone(),
        docs,
    };
    let url = format!("http://{addr}/");

    // Page load to the first QR code, a few times (each load is a new
    // companion; the first is cold).
    let mut loads = Vec::new();
    for _ in 0..5 {
        page.client.goto(&url).await?;
        page.wait_phase("showing", STEP).await?;
        let ms = page
            .js("return Number(document.documentElement.dataset.firstQrMs)")
            .await?;
        loads.push(ms.as_f64().ok_or("no firstQrMs")?);
    }
    let parts = page
        .js("const d = document.documentElement.dataset; return `wasm ready ${d.wasmReadyMs} ms, socket open ${d.socketOpenMs} ms, first QR ${d.firstQrMs} ms`")
        .await?;
    println!("last load: {}", parts.as_str().unwrap_or_default());
    let cold = loads[0];
    let mut warm = loads[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    println!(
        "page load to first QR on loopback: cold {cold:.0} ms, warm median {:.0} ms ({} loads)",
        warm[warm.len() / 2],
        warm.len()
    );

    // 1. The QR code, decoded from a screenshot by the phone.
    let countdown = page.text("countdown").await?;
    ensure(countdown.starts_with("A new code in"), || countdown.clone())?;
    let qr_text = page.text("qr-text").await?;
    let shot = page.screenshot("1-qr", true).await?;
    let mut link = phone
        .command(&["link", "--png", &shot.to_string_lossy()])
        .stdin(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(link.stdout.take().ok_or("no phone stdout")?).lines();
    let asked = read_until(&mut out, "the approval prompt", |l| {
        l.starts_with("approve?")
    })
    .await?;
    ensure(field(&asked, "scanned ")? == qr_text, || {
        "the phone decoded another code than the page shows".into()
    })?;
    let phone_code = field(&asked, "check code:")?.to_owned();
    let phone_account = field(&asked, "account fingerprint:")?.to_owned();
    ensure(field(&asked, "label:")? == "Chromium on Linux", || {
        format!("label {asked:?}")
    })?;

    // 2. Awaiting approval on the phone; then the page asks its own user,
    // showing the account and the same six-digit check code, and only its
    // "yes" sends the Confirm.
    page.wait_phase("awaiting-approval", STEP).await?;
    page.screenshot("2-awaiting-approval", true).await?;
    let mut stdin = link.stdin.take().ok_or("no phone stdin")?;
    stdin.write_all(b"y\n").await?;
    drop(stdin);
    page.wait_phase("awaiting-consent", STEP).await?;
    let page_code = page.text("consent-code").await?;
    ensure(page_code == phone_code && page_code.len() == 7, || {
        format!("check code: page {page_code}, phone {phone_code}")
    })?;
    let joining = page.text("joining-account").await?;
    ensure(joining == phone_account, || {
        format!("joining account: page {joining}, phone {phone_account}")
    })?;
    page.screenshot("2b-awaiting-consent", true).await?;
    page.client
        .find(Locator::Id("consent-yes"))
        .await?
        .click()
        .await?;
    let done = read_until(&mut out, "the link", |l| l.starts_with("linked as device")).await?;
    ensure(
        done.iter().any(|l| l.starts_with("linked as device #1:")),
        || format!("{done:?}"),
    )?;
    ensure(
        tokio::time::timeout(STEP, link.wait()).await??.success(),
        || "phone link failed".into(),
    )?;

    // 3. Linked as device #1, the phone's account.
    page.wait_phase("linked", STEP).await?;
    let heading = page.text("linked-h").await?;
    ensure(heading == "Linked as device #1", || heading.clone())?;
    let account = page.text("account-fp").await?;
    ensure(account == phone_account, || {
        format!("account: page {account}, phone {phone_account}")
    })?;
    let lease = page.text("lease").await?;
    ensure(
        lease.starts_with("Expires in 13 days unless your phone comes online"),
        || lease.clone(),
    )?;

    // The state survives a reload.
    page.client.refresh().await?;
    page.wait_phase("linked", STEP).await?;
    ensure(
        page.text("linked-h").await? == "Linked as device #1",
        || "after a reload".into(),
    )?;

    // The device key is a non-extractable WebCrypto Ed25519 key: the page
    // cannot export it, and the saved session holds its public half only
    // (the relay accepted the subscription it signed: the notices below
    // arrive through it).
    let key = page.client.execute_async(KEY_STORE_PROBE, vec![]).await?;
    ensure(
        key["error"].is_null()
            && key["identity"] == Value::Bool(false)
            && key["extractable"] == Value::Bool(false)
            && key["algorithm"] == "Ed25519"
            && key["exported"] == "InvalidAccessError"
            && key["keyStore"].is_string()
            && key["keyStore"] == key["publicKey"],
        || format!("key store: {key}"),
    )?;

    // 4. A second browser (another origin: its own storage) links as #2,
    // and the first is told.
    let first = page.client.window().await?;
    let second = page.client.new_window(true).await?.handle;
    page.client.switch_to_window(second.clone()).await?;
    page.client
        .goto(&format!("http://localhost:{port}/"))
        .await?;
    page.wait_phase("showing", STEP).await?;
    // It names itself with the form (a new code for the new name).
    let before = page.text("qr-text").await?;
    let input = page.client.find(Locator::Id("label")).await?;
    input.clear().await?;
    input.send_keys("Work laptop").await?;
    page.client
        .find(Locator::Css("#label-form button"))
        .await?
        .click()
        .await?;
    let start = Instant::now();
    while page.phase().await? != "showing" || page.text("qr-text").await? == before {
        ensure(start.elapsed() < STEP, || {
            "no new code after renaming".into()
        })?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let shot2 = page.screenshot("qr-second", false).await?;
    let second_link = phone
        .command(&["link", "--yes", "--png", &shot2.to_string_lossy()])
        .spawn()?;
    page.wait_phase("awaiting-consent", STEP).await?;
    page.client
        .find(Locator::Id("consent-yes"))
        .await?
        .click()
        .await?;
    let out2 = tokio::time::timeout(STEP, second_link.wait_with_output()).await??;
    let linked2 = String::from_utf8_lossy(&out2.stdout).into_owned();
    ensure(
        out2.status.success() && linked2.contains("linked as device #2: \"Work laptop\""),
        || linked2.clone(),
    )?;
    page.wait_phase("linked", STEP).await?;
    page.client.switch_to_window(first.clone()).await?;
    page.wait_text(
        "notices",
        "A new device was linked: \u{201c}Work laptop\u{201d} (#2)",
    )
    .await?;
    let devices = page
        .js("return document.querySelectorAll('#devices li').length")
        .await?;
    ensure(devices == json!(2), || format!("{devices} devices listed"))?;
    page.screenshot("3-linked", true).await?;

    // The phone proves it is alive: the page stays linked.
    let beat = phone.run(&["heartbeat"]).await?;
    ensure(beat.contains("heartbeat 1 of 1 published"), || beat.clone())?;
    ensure(page.phase().await? == "linked", || {
        "after a heartbeat".into()
    })?;

    // 5. The phone revokes #1: the page shows the logout within 2 s.
    phone.run(&["revoke", "1"]).await?;
    let took = page
        .wait_phase("logged-out", Duration::from_secs(2))
        .await?;
    println!(
        "logout shown {} ms after the revoke returned",
        took.as_millis()
    );
    let reason = page.text("logout-reason").await?;
    ensure(reason == "your phone removed this device", || {
        reason.clone()
    })?;
    page.screenshot("4-logged-out", true).await?;
    // The other browser is told, and stays linked.
    page.client.switch_to_window(second).await?;
    page.wait_text("notices", "(#1) was logged out").await?;
    ensure(page.phase().await? == "linked", || {
        "#2 logged out too".into()
    })?;
    page.client.switch_to_window(first).await?;

    // The logout survives a reload.
    page.client.refresh().await?;
    page.wait_phase("logged-out", STEP).await?;
    ensure(
        page.text("logout-reason").await? == "your phone removed this device",
        || "reason after reload".into(),
    )?;
    let list = phone.run(&["list"]).await?;
    ensure(
        list.contains("#1 \"Chromium on Linux\"") && list.contains("logged out (revoked"),
        || list.clone(),
    )?;
    ensure(list.contains("#2 ") && list.contains(": active"), || {
        list.clone()
    })?;

    // 6. The page from a separate static origin: the same files, with its
    // `<meta name="devicelink-relay">` naming the relay, served by a plain
    // file server; the relay admits that origin (`--allowed-origin`) and the
    // page shows a code. Beside it, a copy whose app.js or wasm was altered
    // by the server: Subresource Integrity stops it before it runs.
    let site = tmp.join("static");
    let www = root().join("devicelink-web/www");
    for (dir, tamper) in [
        ("good", None),
        ("bad-js", Some("app.js")),
        ("bad-wasm", Some("pkg/devicelink_web_bg.wasm")),
    ] {
        let to = site.join(dir);
        std::fs::create_dir_all(to.join("pkg"))?;
        for f in [
            "index.html",
            "app.js",
            "app.css",
            "pkg/devicelink_web.js",
            "pkg/devicelink_web_bg.wasm",
        ] {
            let mut bytes = std::fs::read(www.join(f))?;
            if f == "index.html" {
                let html = String::from_utf8(bytes)?.replace(
                    "<meta name=\"devicelink-relay\" content=\"\">",
                    &format!("<meta name=\"devicelink-relay\" content=\"ws://{addr}/\">"),
                );
                bytes = html.into_bytes();
            }
            if tamper == Some(f) {
                // What a compromised static host would serve.
                bytes.extend_from_slice(b"\n");
            }
            std::fs::write(to.join(f), bytes)?;
        }
    }
    let _files = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(static_port.to_string())
        .arg("--directory")
        .arg(&site)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", static_port))
        .await
        .is_err()
    {
        ensure(start.elapsed() < STEP, || {
            "the static file server did not start".into()
        })?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.client.goto(&format!("{static_origin}/good/")).await?;
    page.wait_phase("showing", STEP).await?;
    page.screenshot("5-static-origin", false).await?;
    for bad in ["bad-js", "bad-wasm"] {
        page.client.goto(&format!("{static_origin}/{bad}/")).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let phase = page.phase().await?;
        ensure(phase == "loading", || {
            format!("{bad}: an altered asset ran (phase {phase})")
        })?;
    }

    page.client.close().await?;
    let _ = relay.kill().await;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
