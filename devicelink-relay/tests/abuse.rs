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
    // Subscribing is a companion's frame.
    let sub = Frame::Subscribe {
        account: devicelink::AccountId::from_bytes([3; 32]),
        index: DeviceIndex(1),
    }
    .encode();
    send(&mut p, sub.clone()).await;
    expect_error(&mut p, codes::WRONG_FRAME).await;
    send(&mut ws, sub).await;
    expect_ack(&mut ws, FrameType::Subscribe).await;

    // Still up: health, metrics with the refusals by kind.
    assert!(http_get(&relay, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    let metrics = http_get(&relay, "/metrics").await;
    assert!(
        metrics.contains("devicelink_refusals_total{kind=\"malformed\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("devicelink_refusals_total{kind=\"unexpected\"} 4"),
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
    let mut account = account(&relay, 7);
    let mut primary = bounded(devicelink_relay::client::PrimaryClient::connect(
        &relay.base,
        relay.clock.clone(),
    ))
    .await
    .unwrap();
    bounded(primary.publish_list(account.device_list()))
        .await
        .unwrap();

    // The slow reader: subscribes, then never reads again.
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
    let sub = Frame::Subscribe {
        account: account.account_id(),
        index: DeviceIndex(1),
    }
    .encode();
    bounded(slow.send(Message::binary(sub))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.metrics.connections_open(), 2);

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
