//! Bad input and bad manners over loopback: oversized, truncated, garbage,
//! wrong-kind and text frames each get their typed error (and, where the
//! bytes are not a frame, a typed close), the relay stays up; a client that
//! does not read is disconnected instead of buffered for; a client over its
//! rate is closed; shutdown closes every connection and drains.

mod common;

use std::time::Duration;

use common::*;
use devicelink::handshake::{MessageKind, MESSAGE_VERSION};
use devicelink::{DeviceIndex, TokenId};
use devicelink_relay::server::codes;
use devicelink_relay::{Frame, FrameType, MAX_FRAME_LEN};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn raw(relay: &TestRelay, path: &str) -> Ws {
    bounded(tokio_tungstenite::connect_async(format!(
        "{}{path}",
        relay.base
    )))
    .await
    .unwrap()
    .0
}

/// The next binary message, skipping pings.
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// Expects an error frame with `code`.
async fn expect_error(ws: &mut Ws, code: u16) {
    let bytes = next_binary(ws).await;
    match Frame::decode(&bytes) {
        Ok(Frame::Error { code: got, text }) => assert_eq!(got, code, "{text}"),
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// Expects the connection to close with `code`.
async fn expect_close(ws: &mut Ws, code: u16) {
    loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), code);
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    bounded(ws.send(Message::binary(bytes))).await.unwrap();
}

fn register(token: u8, relay: &TestRelay) -> Vec<u8> {
    Frame::Register {
        token_id: TokenId::from_bytes([token; 16]),
        expires_at: relay.now().saturating_add(Duration::from_secs(30)),
    }
    .encode()
}

async fn expect_ack(ws: &mut Ws, of: FrameType) {
    let bytes = next_binary(ws).await;
    assert_eq!(Frame::decode(&bytes), Ok(Frame::Ack { of, changed: true }));
}

async fn http_get(relay: &TestRelay, path: &str) -> String {
    let mut s = bounded(TcpStream::connect(relay.addr)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    bounded(s.write_all(req.as_bytes())).await.unwrap();
    let mut out = String::new();
    bounded(s.read_to_string(&mut out)).await.unwrap();
    out
}

async fn http_post(relay: &TestRelay, path: &str) -> String {
    let mut s = bounded(TcpStream::connect(relay.addr)).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    bounded(s.write_all(req.as_bytes())).await.unwrap();
    let mut out = String::new();
    bounded(s.read_to_string(&mut out)).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_typed_errors_and_the_relay_stays_up() {
    let relay = start(test_limits()).await;

    // Oversized: one byte over the largest frame.
    let mut ws = raw(&relay, "/v1/companion").await;
    send(&mut ws, vec![FrameType::Message as u8; MAX_FRAME_LEN + 1]).await;
    expect_error(&mut ws, codes::TOO_BIG).await;
    expect_close(&mut ws, codes::CLOSE_TOO_BIG).await;

    // Truncated: a Register one byte short.
    let mut ws = raw(&relay, "/v1/companion").await;
    let mut short = register(1, &relay);
    short.pop();
    send(&mut ws, short).await;
    expect_error(&mut ws, codes::MALFORMED_FRAME).await;
    expect_close(&mut ws, codes::CLOSE_MALFORMED).await;

    // Garbage: no frame type.
    let mut ws = raw(&relay, "/v1/primary").await;
    send(&mut ws, vec![0x7f, 0xde, 0xad]).await;
    expect_error(&mut ws, codes::MALFORMED_FRAME).await;
    expect_close(&mut ws, codes::CLOSE_MALFORMED).await;

    // Empty.
    let mut ws = raw(&relay, "/v1/primary").await;
    send(&mut ws, vec![]).await;
    expect_error(&mut ws, codes::MALFORMED_FRAME).await;
    expect_close(&mut ws, codes::CLOSE_MALFORMED).await;

    // Text instead of binary.
    let mut ws = raw(&relay, "/v1/companion").await;
    bounded(ws.send(Message::text("hello"))).await.unwrap();
    expect_error(&mut ws, codes::TEXT_MESSAGE).await;
    expect_close(&mut ws, codes::CLOSE_UNSUPPORTED).await;

    // Wrong kinds: refused, and the connection stays usable.
    let mut ws = raw(&relay, "/v1/companion").await;
    let mut hello = vec![0u8; MessageKind::Hello.size_range().0];
    hello[0] = MESSAGE_VERSION;
    hello[1] = 1;
    let mut framed = vec![FrameType::Message as u8];
    framed.extend_from_slice(&hello);
    send(&mut ws, framed.clone()).await;
    expect_error(&mut ws, codes::WRONG_KIND).await;
    let ack = Frame::Ack {
        of: FrameType::Register,
        changed: true,
    }
    .encode();
    send(&mut ws, ack).await;
    expect_error(&mut ws, codes::WRONG_FRAME).await;
    send(&mut ws, vec![FrameType::PublishHeartbeat as u8; 186]).await;
    expect_error(&mut ws, codes::WRONG_FRAME).await;
    send(&mut ws, register(2, &relay)).await;
    expect_ack(&mut ws, FrameType::Register).await;
    // The same token again: the core's refusal, as a conflict.
    send(&mut ws, register(2, &relay)).await;
    expect_error(&mut ws, codes::core_code(devicelink::ErrorKind::Conflict)).await;
    // A well-formed Hello with a bad proof from a primary: the core refuses.
    let mut p = raw(&relay, "/v1/primary").await;
    send(&mut p, framed).await;
    expect_error(
        &mut p,
        codes::core_code(devicelink::ErrorKind::Unauthenticated),
    )
    .await;
    // Subscribing is a companion's frame, and needs an identified
    // connection, then a device's proof.
    let sub = Frame::Subscribe {
        account: devicelink::AccountId::from_bytes([3; 32]),
        index: DeviceIndex(1),
        proof: devicelink::relay::SubscriptionProof::from_bytes([7; 64]),
        after: None,
    }
    .encode();
    send(&mut p, sub.clone()).await;
    expect_error(&mut p, codes::WRONG_FRAME).await;
    send(&mut ws, sub.clone()).await;
    expect_error(&mut ws, codes::NOT_IDENTIFIED).await;
    // Identify only as the first frame.
    let identify = Frame::Identify {
        secret: devicelink_relay::ClientSecret::from_bytes([9; 32]),
    }
    .encode();
    send(&mut ws, identify.clone()).await;
    expect_error(&mut ws, codes::IDENTIFY_NOT_FIRST).await;
    let mut idc = raw(&relay, "/v1/companion").await;
    send(&mut idc, identify).await;
    assert_eq!(
        Frame::decode(&next_binary(&mut idc).await),
        Ok(Frame::Ack {
            of: FrameType::Identify,
            changed: false
        })
    );
    // An unknown account's device: refused by the directory's facts.
    send(&mut idc, sub).await;
    expect_error(
        &mut idc,
        codes::core_code(devicelink::ErrorKind::Unexpected),
    )
    .await;

    // Still up: health, metrics with the refusals by kind.
    assert!(http_get(&relay, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    // /metrics shows pairing activity: not on the public listener (it has
    // one of its own, `--metrics-listen`).
    assert!(http_get(&relay, "/metrics")
        .await
        .starts_with("HTTP/1.1 404"));
    let metrics = relay.metrics.render();
    assert!(
        metrics.contains("devicelink_refusals_total{kind=\"malformed\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("devicelink_refusals_total{kind=\"unexpected\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("devicelink_refusals_total{kind=\"conflict\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("devicelink_tokens_registered_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("devicelink_store_call_seconds_count"),
        "{metrics}"
    );
    let drained = relay.stop().await;
    assert!(drained.all_closed, "{drained:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_closed() {
    let relay = start(devicelink_relay::server::Limits {
        rate_per_second: 0, // no refill: exactly the burst
        rate_burst: 3,
        ..test_limits()
    })
    .await;
    let mut ws = raw(&relay, "/v1/companion").await;
    for t in 0..3 {
        send(&mut ws, register(10 + t, &relay)).await;
        expect_ack(&mut ws, FrameType::Register).await;
    }
    send(&mut ws, register(20, &relay)).await;
    expect_error(&mut ws, codes::RATE_LIMITED).await;
    expect_close(&mut ws, codes::CLOSE_RATE_LIMITED).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed() {
    let relay = start(devicelink_relay::server::Limits {
        idle_timeout: Duration::from_millis(1_000),
        ..test_limits()
    })
    .await;
    // A raw TCP WebSocket that never reads answers no ping.
    let mut ws = raw(&relay, "/v1/companion").await;
    // Reading answers pings, so this one stays: read for a while.
    let quiet = tokio::time::timeout(Duration::from_millis(2_500), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "a client answering pings was closed: {quiet:?}"
    );
    // A client that sends nothing and reads nothing is closed.
    let mut silent = raw(&relay, "/v1/primary").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Reading now answers the pings it finds, which may meet a closed
    // socket if the relay gave up waiting for our Close: accept that, but
    // any close frame read must be 4003, and the relay counted the refusal.
    let mut closed_with = None;
    while let Some(Ok(m)) = bounded(silent.next()).await {
        match m {
            Message::Binary(b) => assert_eq!(
                Frame::decode(&b).map(|f| matches!(
                    f,
                    Frame::Error {
                        code: codes::IDLE,
                        ..
                    }
                )),
                Ok(true)
            ),
            Message::Close(f) => closed_with = f.map(|f| u16::from(f.code)),
            _ => {}
        }
    }
    assert!(
        matches!(closed_with, None | Some(codes::CLOSE_IDLE)),
        "{closed_with:?}"
    );
    assert!(relay.metrics.refusals(devicelink::ErrorKind::Expired) >= 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_instead_of_buffered_for() {
    // Small socket buffers on both ends (accepted sockets inherit the
    // listener's), so the relay's writes block soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let relay = start_on(
        listener,
        devicelink_relay::server::Limits {
            outbound_queue: 4,
            write_timeout: Duration::from_millis(500),
            ..test_limits()
        },
    )
    .await;
    // A linked companion, whose client the slow reader then becomes.
    let mut account = account(&relay, 7);
    let mut primary = bounded(devicelink_relay::client::PrimaryClient::connect(
        &relay.base,
        relay.clock.clone(),
    ))
    .await
    .unwrap();
    let mut linked = companion(&relay, 8, "laptop").await;
    let (c, p) = link(&relay, &mut primary, &mut account, &mut linked, 9).await;
    c.unwrap();
    p.unwrap();
    let secret = linked.secret().clone();
    let session = linked.session().unwrap().clone();

    // The slow reader: identifies as that client (replacing its
    // connection), subscribes with the device's proof, then never reads.
    let stream = {
        let s = TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        bounded(s.connect(relay.addr)).await.unwrap()
    };
    let (mut slow, _) = bounded(tokio_tungstenite::client_async(
        format!("{}/v1/companion", relay.base),
        MaybeTlsStream::Plain(stream),
    ))
    .await
    .unwrap();
    let identify = Frame::Identify {
        secret: secret.clone(),
    }
    .encode();
    let sub = Frame::Subscribe {
        account: account.account_id(),
        index: session.index(),
        proof: devicelink::relay::SubscriptionProof::sign(&session, secret.client_id()).unwrap(),
        after: None,
    }
    .encode();
    bounded(slow.send(Message::binary(identify))).await.unwrap();
    bounded(slow.send(Message::binary(sub))).await.unwrap();
    // The companion client's own connection was replaced.
    let replaced = bounded(async {
        loop {
            match linked.next_update().await {
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(
        matches!(
            replaced,
            devicelink_relay::client::ClientError::Closed {
                code: Some(codes::CLOSE_REPLACED)
            }
        ),
        "{replaced:?}"
    );
    drop(linked);
    // The primary and the slow reader remain.
    bounded(async {
        while relay.metrics.connections_open() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The primary keeps publishing; the relay never blocks on the reader.
    let mut sent = 0;
    while relay.metrics.slow_readers() == 0 {
        assert!(sent < 5_000, "the slow reader was never disconnected");
        relay.clock.advance(Duration::from_millis(10));
        let hb = account.heartbeat(relay.now());
        bounded(primary.publish_heartbeat(&hb)).await.unwrap();
        sent += 1;
    }
    // Its connection ends (the relay forgot it); the primary's goes on.
    bounded(async {
        while relay.metrics.connections_open() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let hb = account.heartbeat(relay.now());
    bounded(primary.publish_heartbeat(&hb)).await.unwrap();
    // What the slow reader finally reads ends (close 4002 or a reset).
    let ended = bounded(async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    if let Some(code) = ended {
        assert_eq!(code, codes::CLOSE_SLOW_READER);
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_and_drains() {
    let relay = start(test_limits()).await;
    let mut a = raw(&relay, "/v1/companion").await;
    let mut b = raw(&relay, "/v1/primary").await;
    send(&mut a, register(30, &relay)).await;
    expect_ack(&mut a, FrameType::Register).await;
    let reader = tokio::spawn(async move {
        expect_error(&mut b, codes::SHUTTING_DOWN).await;
        expect_close(&mut b, codes::CLOSE_GOING_AWAY).await;
    });
    let drained = relay.stop().await;
    assert!(drained.all_closed, "{drained:?}");
    assert_eq!(drained.still_open, 0);
    expect_error(&mut a, codes::SHUTTING_DOWN).await;
    expect_close(&mut a, codes::CLOSE_GOING_AWAY).await;
    bounded(reader).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_until_one_closes() {
    let relay = start(devicelink_relay::server::Limits {
        max_connections: 2,
        ..test_limits()
    })
    .await;
    let a = raw(&relay, "/v1/companion").await;
    let _b = raw(&relay, "/v1/primary").await;
    let third = bounded(tokio_tungstenite::connect_async(format!(
        "{}/v1/companion",
        relay.base
    )))
    .await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    drop(a);
    bounded(async {
        while relay.metrics.connections_open() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _c = raw(&relay, "/v1/companion").await;
    assert!(relay
        .metrics
        .render()
        .contains("devicelink_connections_refused_total 1"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_held_to_its_connection_cap_and_connect_rate() {
    async fn status(relay: &TestRelay, path: &str) -> Option<u16> {
        match bounded(tokio_tungstenite::connect_async(format!(
            "{}{path}",
            relay.base
        )))
        .await
        {
            Ok((ws, _)) => {
                drop(ws);
                None
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
            // Reset before any answer.
            Err(
                tokio_tungstenite::tungstenite::Error::Io(_)
                | tokio_tungstenite::tungstenite::Error::Protocol(_),
            ) => Some(RESET),
            Err(e) => panic!("{e}"),
        }
    }
    const RESET: u16 = 0;
    // At most 2 open from 127.0.0.1.
    let relay = start(devicelink_relay::server::Limits {
        max_connections_per_address: 2,
        ..test_limits()
    })
    .await;
    let a = raw(&relay, "/v1/companion").await;
    let _b = raw(&relay, "/v1/primary").await;
    assert_eq!(status(&relay, "/v1/companion").await, Some(429));
    // The typed-code endpoint and the long-poll fallback are held to the
    // same cap.
    assert_eq!(status(&relay, "/v1/code").await, Some(429));
    let poll = http_post(&relay, "/v1/poll/companion").await;
    assert!(poll.starts_with("HTTP/1.1 429"), "{poll}");
    drop(a);
    bounded(async {
        while relay.metrics.connections_open() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _c = raw(&relay, "/v1/companion").await;
    assert_eq!(relay.metrics.connections_refused_by_address(), 3);
    relay.stop().await;

    // A burst of 3 new connections, then 1 per second: without refill
    // (the test is far quicker than a second), the 4th is refused.
    let relay = start(devicelink_relay::server::Limits {
        connect_rate_per_address: 1,
        connect_burst_per_address: 3,
        ..test_limits()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(status(&relay, "/v1/primary").await, None);
    }
    // Over the rate: reset at accept, no answer (`RESET`).
    assert_eq!(status(&relay, "/v1/primary").await, Some(RESET));
    assert!(relay
        .metrics
        .render()
        .contains("devicelink_connections_refused_by_address_total 1"));
    relay.stop().await;
}

/// 20,000 registrations from one identified client on one connection,
/// pipelined (the relay's frame rate raised so that the quota, not the
/// rate, is what they meet): the per-client quota's worth are acknowledged,
/// every other one gets its typed refusal (400: the core's
/// `QuotaExceeded`), in order, and the relay stays up. The full 100,000
/// with the relay's peak RSS: `examples/relay_memory.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_registrations_from_one_client_each_get_their_answer() {
    const N: u32 = 20_000;
    let relay = start(devicelink_relay::server::Limits {
        rate_per_second: 1_000_000,
        rate_burst: 1_000_000,
        ..test_limits()
    })
    .await;
    let (mut sink, mut stream) = raw(&relay, "/v1/companion").await.split();
    let expires_at = relay.now().saturating_add(Duration::from_secs(30));
    let writer = tokio::spawn(async move {
        let identify = Frame::Identify {
            secret: devicelink_relay::ClientSecret::from_bytes([0x5a; 32]),
        };
        sink.feed(Message::binary(identify.encode())).await.unwrap();
        for i in 0..N {
            let mut id = [0xab; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let register = Frame::Register {
                token_id: TokenId::from_bytes(id),
                expires_at,
            };
            sink.feed(Message::binary(register.encode())).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    let (mut acks, mut refused) = (0u32, 0u32);
    // Identify's Ack, then one answer per Register, in order.
    for n in 0..=N {
        let bytes = loop {
            match bounded(stream.next()).await {
                Some(Ok(Message::Binary(b))) => break b,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("answer {n}: expected a frame, got {other:?}"),
            }
        };
        match Frame::decode(&bytes).unwrap() {
            Frame::Ack {
                of: FrameType::Identify,
                ..
            } if n == 0 => {}
            Frame::Ack {
                of: FrameType::Register,
                changed: true,
            } if refused == 0 => acks += 1,
            Frame::Error { code, text } => {
                assert_eq!(code, 400, "answer {n}: {text}");
                refused += 1;
            }
            other => panic!("answer {n}: {other:?}"),
        }
    }
    let _sink = bounded(writer).await.unwrap();
    let quota = u32::try_from(devicelink::LedgerConfig::default().tokens.per_client).unwrap();
    assert_eq!(acks, quota);
    assert_eq!(refused, N - quota);
    assert_eq!(
        relay.metrics.refusals(devicelink::ErrorKind::Refused),
        u64::from(N - quota)
    );

    // Still up: /healthz, and another client registers.
    assert!(http_get(&relay, "/healthz").await.ends_with("ok\n"));
    let mut other = raw(&relay, "/v1/companion").await;
    send(&mut other, register(1, &relay)).await;
    expect_ack(&mut other, FrameType::Register).await;
    relay.stop().await;
}

#[tokio::test]
async fn token_quotas_are_the_relays_limits() {
    // Two open offers per client and three tokens in all (the binary's
    // --max-tokens-per-client and --max-tokens).
    let relay = start(devicelink_relay::server::Limits {
        max_tokens_per_client: 2,
        max_tokens: 3,
        ..test_limits()
    })
    .await;
    let mut a = raw(&relay, "/v1/companion").await;
    send(&mut a, register(1, &relay)).await;
    expect_ack(&mut a, FrameType::Register).await;
    send(&mut a, register(2, &relay)).await;
    expect_ack(&mut a, FrameType::Register).await;
    send(&mut a, register(3, &relay)).await;
    expect_error(&mut a, 400).await;

    let mut b = raw(&relay, "/v1/companion").await;
    send(&mut b, register(4, &relay)).await;
    expect_ack(&mut b, FrameType::Register).await;
    // The store holds three: a fourth client's first token is refused.
    let mut c = raw(&relay, "/v1/companion").await;
    send(&mut c, register(5, &relay)).await;
    expect_error(&mut c, 400).await;
    assert_eq!(relay.metrics.refusals(devicelink::ErrorKind::Refused), 2);
    relay.stop().await;
}
