//! Counters for `GET /metrics`, in the Prometheus text format. Plain
//! atomics: no registry, no labels beyond the fixed ones written here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use devicelink::handshake::MessageKind;
use devicelink::ErrorKind;

use crate::codes::kind_number;

/// Upper bounds (seconds) of the store latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 9] = [0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

const KINDS: [(MessageKind, &str); 5] = [
    (MessageKind::Hello, "hello"),
    (MessageKind::Request, "request"),
    (MessageKind::Grant, "grant"),
    (MessageKind::Refusal, "refusal"),
    (MessageKind::Confirm, "confirm"),
];

const ERROR_KINDS: [&str; 10] = [
    "none",
    "malformed",
    "unauthenticated",
    "unexpected",
    "refused",
    "expired",
    "conflict",
    "unavailable",
    "misuse",
    "other",
];

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) tokens_registered: AtomicU64,
    pub(crate) tokens_reserved: AtomicU64,
    pub(crate) tokens_redeemed: AtomicU64,
    pub(crate) tokens_released: AtomicU64,
    pub(crate) routed: [AtomicU64; 5],
    pub(crate) refusals: [AtomicU64; 10],
    pub(crate) lists_applied: AtomicU64,
    pub(crate) heartbeats_applied: AtomicU64,
    pub(crate) logouts_pushed: AtomicU64,
    pub(crate) slow_readers: AtomicU64,
    pub(crate) connections_replaced: AtomicU64,
    pub(crate) connections_refused_address: AtomicU64,
    pub(crate) mailbox_posted: AtomicU64,
    pub(crate) mailbox_refused: AtomicU64,
    pub(crate) mailboxes_refused: AtomicU64,
    pub(crate) http_refused: AtomicU64,
    pub(crate) proxy_headers_refused: AtomicU64,
    pub(crate) tls_failed: AtomicU64,
    pub(crate) requests_refused_address: AtomicU64,
    pub(crate) code_joins_failed: AtomicU64,
    store_latency: [AtomicU64; LATENCY_BUCKETS.len()],
    store_calls: AtomicU64,
    store_micros: AtomicU64,
}

fn kind_slot(kind: MessageKind) -> usize {
    KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0)
}

impl Metrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn routed(&self, kind: MessageKind) {
        Self::inc(&self.routed[kind_slot(kind)]);
    }

    pub(crate) fn refused(&self, kind: ErrorKind) {
        Self::inc(&self.refusals[usize::from(kind_number(kind))]);
    }

    pub(crate) fn store_call(&self, took: Duration) {
        Self::inc(&self.store_calls);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.store_micros.fetch_add(micros, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.store_latency) {
            if secs <= *bound {
                Self::inc(bucket);
            }
        }
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Messages of `kind` forwarded so far.
    pub fn messages_routed(&self, kind: MessageKind) -> u64 {
        self.routed[kind_slot(kind)].load(Ordering::Relaxed)
    }

    /// Refusals of `kind` sent so far (error frames).
    pub fn refusals(&self, kind: ErrorKind) -> u64 {
        self.refusals[usize::from(kind_number(kind))].load(Ordering::Relaxed)
    }

    /// Connections closed because they did not read fast enough.
    pub fn slow_readers(&self) -> u64 {
        self.slow_readers.load(Ordering::Relaxed)
    }

    /// Connections closed because a newer one identified as the same client.
    pub fn connections_replaced(&self) -> u64 {
        self.connections_replaced.load(Ordering::Relaxed)
    }

    /// Connections refused by the per-address limits.
    pub fn connections_refused_by_address(&self) -> u64 {
        self.connections_refused_address.load(Ordering::Relaxed)
    }

    /// Frames kept in a mailbox for an identified client that was away.
    pub fn mailbox_posted(&self) -> u64 {
        self.mailbox_posted.load(Ordering::Relaxed)
    }

    /// Logout frames pushed so far.
    pub fn logouts_pushed(&self) -> u64 {
        self.logouts_pushed.load(Ordering::Relaxed)
    }

    /// Frames refused a mailbox (over a budget, or a second Grant or
    /// Refusal for one token).
    pub fn mailbox_refused(&self) -> u64 {
        self.mailbox_refused.load(Ordering::Relaxed)
    }

    /// Mailboxes not kept (over the source's or the relay's count).
    pub fn mailboxes_refused(&self) -> u64 {
        self.mailboxes_refused.load(Ordering::Relaxed)
    }

    /// HTTP requests refused by the per-address request rate.
    pub fn requests_refused_by_address(&self) -> u64 {
        self.requests_refused_address.load(Ordering::Relaxed)
    }

    /// Code joins that named no joinable code.
    pub fn code_joins_failed(&self) -> u64 {
        self.code_joins_failed.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut scalar = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        scalar(
            "devicelink_connections_open",
            "gauge",
            "WebSocket connections open.",
            get(&self.connections_open),
        );
        scalar(
            "devicelink_connections_total",
            "counter",
            "WebSocket connections accepted.",
            get(&self.connections_total),
        );
        scalar(
            "devicelink_connections_refused_total",
            "counter",
            "Upgrades refused at the connection limit.",
            get(&self.connections_refused),
        );
        scalar(
            "devicelink_tokens_registered_total",
            "counter",
            "Tokens registered.",
            get(&self.tokens_registered),
        );
        scalar(
            "devicelink_tokens_reserved_total",
            "counter",
            "Tokens reserved by a Hello.",
            get(&self.tokens_reserved),
        );
        scalar(
            "devicelink_tokens_redeemed_total",
            "counter",
            "Tokens redeemed by a Request.",
            get(&self.tokens_redeemed),
        );
        scalar(
            "devicelink_tokens_released_total",
            "counter",
            "Reservations released by the companion.",
            get(&self.tokens_released),
        );
        scalar(
            "devicelink_lists_applied_total",
            "counter",
            "Device lists applied.",
            get(&self.lists_applied),
        );
        scalar(
            "devicelink_heartbeats_applied_total",
            "counter",
            "Heartbeats applied.",
            get(&self.heartbeats_applied),
        );
        scalar(
            "devicelink_logouts_pushed_total",
            "counter",
            "Logout frames pushed.",
            get(&self.logouts_pushed),
        );
        scalar(
            "devicelink_slow_reader_closes_total",
            "counter",
            "Connections closed for not reading.",
            get(&self.slow_readers),
        );
        scalar(
            "devicelink_connections_replaced_total",
            "counter",
            "Connections replaced by a newer one of the same client.",
            get(&self.connections_replaced),
        );
        scalar(
            "devicelink_connections_refused_by_address_total",
            "counter",
            "Connections refused by the per-address limits.",
            get(&self.connections_refused_address),
        );
        scalar(
            "devicelink_mailbox_posted_total",
            "counter",
            "Frames kept for an identified client while it was away.",
            get(&self.mailbox_posted),
        );
        scalar(
            "devicelink_mailbox_refused_total",
            "counter",
            "Frames refused a mailbox (over a budget, or a second answer for one token).",
            get(&self.mailbox_refused),
        );
        scalar(
            "devicelink_mailboxes_refused_total",
            "counter",
            "Mailboxes not kept (over the address's or the relay's count).",
            get(&self.mailboxes_refused),
        );
        scalar(
            "devicelink_http_refused_total",
            "counter",
            "TCP connections closed at accept (the relay's connection limit).",
            get(&self.http_refused),
        );
        scalar(
            "devicelink_proxy_headers_refused_total",
            "counter",
            "Connections from trusted proxies closed for a bad or late PROXY header.",
            get(&self.proxy_headers_refused),
        );
        scalar(
            "devicelink_tls_handshakes_failed_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            get(&self.tls_failed),
        );
        scalar(
            "devicelink_requests_refused_by_address_total",
            "counter",
            "HTTP requests refused by the per-address request rate.",
            get(&self.requests_refused_address),
        );
        scalar(
            "devicelink_code_joins_failed_total",
            "counter",
            "Code joins that named no joinable code.",
            get(&self.code_joins_failed),
        );
        let _ = writeln!(out, "# HELP devicelink_messages_routed_total Handshake messages forwarded.\n# TYPE devicelink_messages_routed_total counter");
        for ((_, name), c) in KINDS.iter().zip(&self.routed) {
            let _ = writeln!(
                out,
                "devicelink_messages_routed_total{{kind=\"{name}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(out, "# HELP devicelink_refusals_total Error frames sent, by the core's error kind.\n# TYPE devicelink_refusals_total counter");
        for (name, c) in ERROR_KINDS.iter().zip(&self.refusals).skip(1) {
            let _ = writeln!(
                out,
                "devicelink_refusals_total{{kind=\"{name}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(out, "# HELP devicelink_store_call_seconds Latency of store calls (ledger and directory).\n# TYPE devicelink_store_call_seconds histogram");
        for (bound, c) in LATENCY_BUCKETS.iter().zip(&self.store_latency) {
            let _ = writeln!(
                out,
                "devicelink_store_call_seconds_bucket{{le=\"{bound}\"}} {}",
                get(c)
            );
        }
        let calls = get(&self.store_calls);
        let _ = writeln!(
            out,
            "devicelink_store_call_seconds_bucket{{le=\"+Inf\"}} {calls}"
        );
        let _ = writeln!(
            out,
            "devicelink_store_call_seconds_sum {}",
            get(&self.store_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "devicelink_store_call_seconds_count {calls}");
        out
    }
}
