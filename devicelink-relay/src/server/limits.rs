//! The transport's limits and budgets ([`Limits`]), one floor below
//! everything that reads them.

use std::time::Duration;

use crate::MAX_FRAME_LEN;

use super::address::DEFAULT_IPV6_PREFIX;

/// The transport's limits and budgets. Every field has a safe default; the
/// binary sets them from flags (`--help`, and `docs/RELAY.md` §3.4 with
/// `SECURITY.md`'s abuse model). "Per address" means per source: an IPv4
/// address, or an IPv6 address's first [`Limits::ipv6_prefix`] bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most sessions (WebSocket connections and long-poll sessions) open
    /// at once; more get HTTP 503.
    pub max_connections: usize,
    /// Most TCP connections open at once (HTTP, WebSocket before its
    /// upgrade); more are closed at accept.
    pub max_http_connections: usize,
    /// Largest WebSocket message accepted (at most [`MAX_FRAME_LEN`], the
    /// largest valid frame).
    pub max_frame_len: usize,
    /// A connection that sends nothing (not even a pong to the relay's
    /// pings) for this long is closed.
    pub idle_timeout: Duration,
    /// Frames per second a connection may send, on average.
    pub rate_per_second: u32,
    /// Frames a connection may send in a burst.
    pub rate_burst: u32,
    /// Frames queued for a connection before it is closed as a slow reader.
    pub outbound_queue: usize,
    /// Longest wait for one write to a socket before the connection is
    /// closed as a slow reader.
    pub write_timeout: Duration,
    /// How often the ledger and the directory are swept.
    pub sweep_interval: Duration,
    /// Most ledger entries removed per sweep.
    pub sweep_limit: usize,
    /// How long shutdown waits for connection tasks to end.
    pub shutdown_grace: Duration,
    /// Longest a long-poll `GET` waits for frames before `204`.
    pub poll_wait: Duration,
    /// How long frames for an identified client that lost its connection
    /// are kept for it (0: not at all).
    pub mailbox_ttl: Duration,
    /// Most frames kept for one such client.
    pub mailbox_frames: usize,
    /// Most bytes kept in all mailboxes together.
    pub mailbox_bytes: usize,
    /// Most bytes kept in the mailboxes of clients that were connected
    /// from one address.
    pub mailbox_bytes_per_address: u64,
    /// Most mailboxes kept for clients that were connected from one address.
    pub mailboxes_per_address: u64,
    /// Most mailboxes kept in all.
    pub mailboxes: u64,
    /// Most sessions (WebSockets, long-poll sessions) open at once from
    /// one address; more get HTTP 429.
    pub max_connections_per_address: u32,
    /// Most TCP connections open at once from one address, counted at
    /// accept before any HTTP (a half-open request holds one); more are
    /// answered 429 and closed (closed, with TLS).
    pub max_http_connections_per_address: u32,
    /// New TCP connections per second one address may open, on average
    /// (more are answered 429 at accept; 0: no limit).
    pub connect_rate_per_address: u32,
    /// New connections one address may open in a burst.
    pub connect_burst_per_address: u32,
    /// HTTP requests per second one address may send, on average (every
    /// route: the page, `/healthz`, long-poll polls; more get HTTP 429; 0:
    /// no limit).
    pub request_rate_per_address: u32,
    /// HTTP requests one address may send in a burst.
    pub request_burst_per_address: u32,
    /// Longest wait for a request's header (and for the next request on an
    /// idle keep-alive connection), for a trusted proxy's PROXY header, and
    /// for a TLS handshake.
    pub header_read_timeout: Duration,
    /// Accounts the relay did not know that one address may make it keep
    /// per hour (a first device list, after the account key's proof; 0: no
    /// limit).
    pub new_accounts_per_address_per_hour: u32,
    /// Most code sessions (`/v1/code` Open) held for one address.
    pub max_code_sessions_per_address: u64,
    /// Bytes of each WebSocket's read buffer (tungstenite's
    /// `read_buffer_size`): allocated per connection and zero-filled on its
    /// first read, so it is resident memory per open connection. A frame
    /// larger than it grows it as needed; it only caps how much one read
    /// call takes from the socket.
    pub websocket_read_buffer: usize,
    /// Most tokens (open, reserved, or redeemed until swept) one client
    /// may hold (more get `QuotaExceeded`).
    pub max_tokens_per_client: u64,
    /// Most tokens one network source (an address; an IPv6 prefix) may
    /// hold, whatever number of client ids it uses.
    pub max_tokens_per_address: u64,
    /// Most tokens the store may hold in all, tombstones included (its
    /// last quarter kept for sources holding few).
    pub max_tokens: u64,
    /// The prefix length an IPv6 address is counted by (its /64 by
    /// default: one subscriber's whole network).
    pub ipv6_prefix: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_len: MAX_FRAME_LEN,
            idle_timeout: Duration::from_secs(60),
            rate_per_second: 20,
            rate_burst: 40,
            outbound_queue: 64,
            write_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
            sweep_limit: 4096,
            shutdown_grace: Duration::from_secs(5),
            poll_wait: Duration::from_secs(25),
            mailbox_ttl: Duration::from_secs(30),
            mailbox_frames: 16,
            mailbox_bytes: 64 << 20,
            mailbox_bytes_per_address: 1 << 20,
            mailboxes_per_address: 256,
            mailboxes: 100_000,
            max_connections_per_address: 256,
            max_http_connections_per_address: 256,
            connect_rate_per_address: 20,
            connect_burst_per_address: 100,
            request_rate_per_address: 50,
            request_burst_per_address: 200,
            header_read_timeout: Duration::from_secs(10),
            new_accounts_per_address_per_hour: 10,
            max_code_sessions_per_address: 32,
            max_http_connections: 20_000,
            websocket_read_buffer: DEFAULT_WEBSOCKET_READ_BUFFER,
            max_tokens_per_client: devicelink::relay::DEFAULT_MAX_TOKENS_PER_CLIENT,
            max_tokens_per_address: devicelink::relay::DEFAULT_MAX_TOKENS_PER_SOURCE,
            max_tokens: devicelink::relay::DEFAULT_MAX_TOKENS,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

/// The default [`Limits::websocket_read_buffer`]: 512 bytes, where
/// tungstenite's own default (128 KiB) makes every open connection cost
/// 128 KiB of resident memory. Almost every frame a client sends fits in
/// one read (Register 25 bytes, Hello 99, Request at most 144, a Grant or
/// list of a few devices a few hundred); a larger one takes a read per 512
/// bytes (the largest, a 14,862-byte Grant, 29). Measured over 10,000 open
/// offers: 7,373 bytes each with 4 KiB, 3,362 with 512, 3,307 with 256;
/// replayed pairings ran no slower with 512 than with 4 KiB (less of the
/// buffer is zero-filled on each read).
pub const DEFAULT_WEBSOCKET_READ_BUFFER: usize = 512;
