// The devicelink companion page. Plain JS around the wasm `WebCompanion`
// (devicelink-web): this file owns the socket, the clock, the storage and
// the DOM; the core (in wasm) decides everything else.
//
// The device key: where the browser has Ed25519 in WebCrypto (Chrome and
// Edge 137+, Firefox 129+, Safari 17+), a non-extractable CryptoKey pair,
// kept in IndexedDB (which stores the CryptoKey object itself; its secret
// never reaches this script, the wasm or any storage as bytes). The
// companion asks for signatures (`toSign`), this page makes them with
// `crypto.subtle.sign` and hands them back (`signed`), which checks them.
// Elsewhere the companion makes its own key, and the saved session holds it.
//
// The session: localStorage, one key. It holds the signed device list and
// the device's public key (its secret too, without WebCrypto's Ed25519). A
// few KB of text, written synchronously, so the session is on disk before
// the next frame is handled.

import init, { WebCompanion } from "./pkg/devicelink_web.js";

const SESSION_KEY = "devicelink.session";
const LABEL_KEY = "devicelink.label";
const DAY_MS = 86_400_000;
const KEY_DB = "devicelink";
const KEY_STORE = "keys";
const KEY_NAME = "device";

const $ = (id) => document.getElementById(id);

let companion = null;
// { privateKey: CryptoKey (non-extractable), publicKey: Uint8Array(32) }, or
// null where the browser has no Ed25519 in WebCrypto.
let deviceKey = null;
let signing = null;
let socket = null;
let retry = 0;
let timer = 0;
let shownQr = null;
let shownPhase = null;
let firstQrAt = null;

function defaultLabel() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? "Edge"
    : /Firefox\//.test(ua) ? "Firefox"
    : /Chromium\//.test(ua) || /HeadlessChrome\//.test(ua) ? "Chromium"
    : /Chrome\//.test(ua) ? "Chrome"
    : /Safari\//.test(ua) ? "Safari" : "Browser";
  const os = /Windows/.test(ua) ? "Windows"
    : /Android/.test(ua) ? "Android"
    : /iPhone|iPad/.test(ua) ? "iOS"
    : /Mac OS X/.test(ua) ? "macOS"
    : /Linux/.test(ua) ? "Linux" : "";
  return os ? `${browser} on ${os}` : browser;
}

function label() {
  return localStorage.getItem(LABEL_KEY) || defaultLabel();
}

// Milliseconds since navigation, kept on <html data-…-ms> for the
// end-to-end test's figures (page load to first QR code).
function mark(name) {
  const key = `${name}Ms`;
  const root = document.documentElement.dataset;
  if (root[key] === undefined) root[key] = performance.now().toFixed(1);
  return Number(root[key]);
}

function status(text) {
  $("status").textContent = text;
}

// The words for something the companion threw. Its errors carry one of
// the shell's fixed sentences (shell::Problem), never text from the
// network or from storage; anything else thrown (a browser's own error)
// gets `fallback`, never its own text.
function problemText(e, fallback) {
  return e instanceof Error && e.name === "Error" && e.message ? e.message : fallback;
}

// ---- the device key -----------------------------------------------------

/** One IndexedDB request on the key store, resolved when its transaction
 * commits. */
function keyDb(mode, request) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(KEY_DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(KEY_STORE);
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction(KEY_STORE, mode);
      const req = request(tx.objectStore(KEY_STORE));
      tx.oncomplete = () => { db.close(); resolve(req.result); };
      tx.onerror = tx.onabort = () => { db.close(); reject(tx.error); };
    };
  });
}

/** A fresh non-extractable Ed25519 key pair, stored; null where WebCrypto
 * has no Ed25519 (or IndexedDB is unavailable). */
async function newDeviceKey() {
  try {
    const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const key = { privateKey: pair.privateKey, publicKey };
    await keyDb("readwrite", (store) => store.put(key, KEY_NAME));
    return key;
  } catch {
    return null;
  }
}

async function storedDeviceKey() {
  try {
    return (await keyDb("readonly", (store) => store.get(KEY_NAME))) ?? null;
  } catch {
    return null;
  }
}

/** Signs what the companion asks for, one request at a time, until it asks
 * for nothing (the Confirm's signature while the join prompt is shown, the
 * relay subscription's once linked). A signature that does not verify is
 * refused by the companion and reported. */
function signPending() {
  if (!signing) {
    signing = (async () => {
      for (let m = companion.toSign(); m !== undefined && deviceKey; m = companion.toSign()) {
        const asking = companion;
        const signature = new Uint8Array(await crypto.subtle.sign("Ed25519", deviceKey.privateKey, m));
        if (asking !== companion) continue;
        try {
          companion.signed(signature);
        } catch (e) {
          addNotice("relay-error", problemText(e, "This browser's key store could not sign."), "key-store");
          break;
        }
        update();
      }
    })().catch(() => {
      addNotice("relay-error", "This browser's key store could not sign for this device. Reload to try again.", "key-store");
    }).finally(() => { signing = null; });
  }
  return signing;
}

// ---- the companion ------------------------------------------------------

function replaceCompanion(next) {
  if (companion) companion.free();
  companion = next;
  shownQr = null;
}

async function startPairing() {
  localStorage.removeItem(SESSION_KEY);
  deviceKey = await newDeviceKey();
  pairWith(new WebCompanion(label(), deviceKey?.publicKey, Date.now()));
}

/** Shows `next`'s pairing on a fresh connection, so no answer meant for the
 * old companion's frames reaches the new one (the relay answers each frame
 * in order). */
function pairWith(next) {
  localStorage.removeItem(SESSION_KEY);
  replaceCompanion(next);
  if (socket) {
    const old = socket;
    socket = null;
    old.close();
    connect();
  }
  update();
}

/** This browser's user answers the join prompt: only "yes" sends the
 * Confirm; "no" ends the pairing and the phone's pending link times out. */
async function answer(yes) {
  // The key store's signature over the Confirm (made while the prompt was
  // shown; it is sent only now).
  if (yes) await signPending();
  try {
    if (yes) companion.consent(Date.now());
    else companion.decline(Date.now());
  } catch (e) {
    addNotice("relay-error", problemText(e, "The answer could not be sent."));
  }
  update();
}

/** "Link again" after a logout: accepts only the account this browser was
 * linked to (another account's grant is refused before anyone is asked). */
async function linkAgain() {
  localStorage.removeItem(SESSION_KEY);
  deviceKey = await newDeviceKey();
  let next;
  try {
    next = companion.linkAgain(deviceKey?.publicKey, Date.now());
  } catch {
    next = undefined;
  }
  if (next) pairWith(next);
  else await startPairing();
}

/** The saved session, with its key from IndexedDB when the key store holds
 * it (the same public key, or the session cannot sign). */
async function restoreOrStart() {
  const saved = localStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      const restored = WebCompanion.restore(saved, Date.now());
      const key = restored.usesKeyStore ? await storedDeviceKey() : null;
      const same = key && restored.devicePublicKey?.every((b, i) => b === key.publicKey[i]);
      if (restored.usesKeyStore && !same) {
        restored.free();
        addNotice("saved-state", "This browser's key for the saved link is gone. A new code is shown instead.", "key-store");
      } else {
        deviceKey = key;
        replaceCompanion(restored);
        return;
      }
    } catch (e) {
      const why = problemText(e, "The link saved in this browser could not be read or saved.");
      addNotice("saved-state", `${why} A new code is shown instead.`);
    }
  }
  await startPairing();
}

// After every event: send what the companion queued, keep what it wants
// kept, show what it has to say, redraw, and wake at its next deadline.
function update() {
  if (companion.toSign() !== undefined) signPending();
  flush();
  persist();
  for (const n of companion.takeNotices()) {
    addNotice(n.kind, n.text, n.problem);
    n.free();
  }
  render();
  schedule();
}

function flush() {
  for (let f = companion.takeFrame(); f !== undefined; f = companion.takeFrame()) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(f);
  }
}

function persist() {
  if (!companion.needsSave) return;
  const saved = companion.save();
  if (saved !== undefined) localStorage.setItem(SESSION_KEY, saved);
}

function schedule() {
  clearTimeout(timer);
  const now = Date.now();
  const deadline = companion.nextDeadline;
  // Every second for the countdown, sooner if a deadline comes first.
  let wait = 1000 - (now % 1000);
  if (deadline !== undefined) wait = Math.max(0, Math.min(wait, deadline - now));
  timer = setTimeout(() => {
    if (companion.poll(Date.now())) update();
    else { render(); schedule(); }
  }, wait);
}

// ---- the relay ----------------------------------------------------------

/** The relay: the page's own origin, or the one its
 * `<meta name="devicelink-relay">` names (a page on a separate static origin). */
function relayBase() {
  const named = document.querySelector('meta[name="devicelink-relay"]')?.content;
  return new URL(named || location.href, location.href);
}

function connect() {
  const url = new URL("v1/companion", relayBase());
  if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol === "http:") url.protocol = "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  socket = ws;
  $("connection").textContent = "Connecting to the relay…";
  ws.onopen = () => {
    retry = 0;
    mark("socketOpen");
    $("connection").textContent = "Connected to the relay.";
    // The same client on every connection: a pairing goes on where it
    // was (its code stays on screen), a linked tab subscribes again.
    companion.connected(Date.now());
    update();
  };
  ws.onmessage = (ev) => {
    if (!(ev.data instanceof ArrayBuffer)) return;
    try {
      companion.receive(new Uint8Array(ev.data), Date.now());
    } catch (e) {
      addNotice("relay-error", problemText(e, "The relay sent data this browser could not read."), "bad-frame");
    }
    update();
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    const wait = Math.min(30_000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
    retry += 1;
    $("connection").textContent = `Not connected to the relay; retrying in ${Math.ceil(wait / 1000)} s.`;
    setTimeout(connect, wait);
  };
}

// ---- the page -----------------------------------------------------------

const SECTIONS = [
  "connecting", "showing", "awaiting-approval", "awaiting-consent", "linked", "logged-out", "failed",
];

function render() {
  const now = Date.now();
  let phase = companion.phase(now);
  if (phase === "expiring-soon") phase = "linked";
  document.getElementById("app").dataset.phase = companion.phase(now);
  for (const id of SECTIONS) $(id).hidden = id !== phase;

  if (phase === "connecting") status("Preparing a code to scan…");
  if (phase === "showing") renderQr(now);
  if (phase === "awaiting-approval") status("Scanned: waiting for your phone's approval.");
  if (phase === "awaiting-consent") {
    status("Your phone approved: check the code, then answer here.");
    $("joining-account").textContent = companion.joiningAccount ?? "";
    $("consent-code").textContent = companion.checkCode ?? "";
  }
  if (phase === "linked") renderLinked(now);
  if (phase === "logged-out") {
    status("This browser is logged out.");
    $("logout-reason").textContent = companion.logoutReason(now) ?? "";
  }
  if (phase === "failed") {
    status("This browser is not linked.");
    $("failure").textContent = companion.failure ?? "";
  }
  if (phase !== shownPhase) {
    // Move focus to the new state's heading so a screen reader announces it.
    if (shownPhase !== null && phase !== "showing" && phase !== "connecting") {
      const heading = $(phase).querySelector("h2");
      if (heading) heading.focus();
    }
    shownPhase = phase;
  }
}

function renderQr(now) {
  const text = companion.qrText;
  if (text !== shownQr) {
    const svg = companion.qrSvg();
    $("qr").src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg);
    $("qr-text").textContent = text;
    shownQr = text;
    if (firstQrAt === null) firstQrAt = mark("firstQr");
  }
  const seconds = Math.max(0, Math.ceil((companion.offerExpiresAt - now) / 1000));
  const last = companion.rotation >= companion.maxRotations;
  status("Scan this code with your phone.");
  $("countdown").textContent = last
    ? `Last code: it expires in ${seconds} s. After that, reload to show a new one.`
    : `A new code in ${seconds} s.`;
}

function plural(n, unit) {
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

function renderLinked(now) {
  status("This browser is linked and works without your phone.");
  $("device-index").textContent = `#${companion.deviceIndex}`;
  $("account-fp").textContent = companion.accountFingerprint ?? "";
  $("device-fp").textContent = companion.deviceFingerprint ?? "";
  $("device-label").textContent = companion.label ?? "";
  const ends = companion.leaseExpiresAt(now);
  const lease = $("lease");
  if (ends !== undefined) {
    const left = ends - now;
    const when = left >= DAY_MS ? plural(Math.floor(left / DAY_MS), "day")
      : left >= 3_600_000 ? plural(Math.floor(left / 3_600_000), "hour")
      : plural(Math.max(1, Math.ceil(left / 60_000)), "minute");
    lease.textContent = `Expires in ${when} unless your phone comes online.`;
    lease.classList.toggle("soon", companion.phase(now) === "expiring-soon");
  }
  const list = $("devices");
  const items = [];
  for (const d of companion.devices()) {
    const li = document.createElement("li");
    const name = document.createElement("strong");
    name.textContent = d.label;
    const meta = document.createElement("span");
    meta.className = "meta";
    const linked = new Date(d.linkedAt).toLocaleString();
    meta.textContent = `#${d.index} · ${d.fingerprint} · linked ${linked}${d.thisDevice ? " · this browser" : ""}`;
    li.append(name, meta);
    items.push(li);
    d.free();
  }
  list.replaceChildren(...items);
}

// `text` is one of the shell's fixed sentences, or quotes device labels
// from the account's signed list (which exclude control and invisible
// characters); set as text, never HTML.
function addNotice(kind, text, problem) {
  const li = document.createElement("li");
  li.className = kind;
  if (problem) li.dataset.problem = problem;
  const p = document.createElement("span");
  p.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "quiet";
  close.textContent = "Dismiss";
  close.setAttribute("aria-label", `Dismiss: ${text}`);
  close.addEventListener("click", () => li.remove());
  li.append(p, close);
  $("notices").append(li);
}

function wire() {
  const input = $("label");
  input.value = label();
  $("label-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    try {
      const next = new WebCompanion(value, undefined, Date.now());
      next.free();
    } catch (e) {
      $("label-error").textContent = problemText(e, "That name cannot be used.");
      return;
    }
    $("label-error").textContent = "";
    localStorage.setItem(LABEL_KEY, value);
    startPairing();
  });
  $("relink").addEventListener("click", () => linkAgain());
  $("reload").addEventListener("click", () => startPairing());
  $("consent-yes").addEventListener("click", () => answer(true));
  $("consent-no").addEventListener("click", () => answer(false));
}

async function main() {
  try {
    // The wasm is fetched with its Subresource Integrity hash: altered
    // bytes are refused by the browser before they run.
    const integrity = document.querySelector('meta[name="devicelink-wasm-integrity"]')?.content;
    const wasmUrl = new URL("pkg/devicelink_web_bg.wasm", import.meta.url);
    await init({ module_or_path: fetch(wasmUrl, { integrity, mode: "cors", credentials: "same-origin" }) });
    mark("wasmReady");
  } catch {
    status("This browser cannot run the companion (its WebAssembly did not load).");
    return;
  }
  wire();
  await restoreOrStart();
  connect();
  update();
}

main();
