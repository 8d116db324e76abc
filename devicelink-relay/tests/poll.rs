//! The HTTP long-poll fallback: a companion links over plain HTTP requests
//! (real crypto) with a WebSocket primary; bad bodies get their statuses.

mod common;

use std::time::Duration;

use common::*;
use devicelink::handshake::MessageKind;
use devicelink::{Companion, CompanionState, DeviceIdentity, DeviceLabel, Policy};
use devicelink_relay::client::{LinkOutcome, PrimaryClient};
use devicelink_relay::server::codes;
use devicelink_relay::{Frame, FrameType, MAX_FRAME_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request (`Connection: close`); returns status and body.
async fn http(relay: &TestRelay, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = bounded(TcpStream::connect(relay.addr)).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    bounded(s.write_all(head.as_bytes())).await.unwrap();
    bounded(s.write_all(body)).await.unwrap();
    let mut out = Vec::new();
    bounded(s.read_to_end(&mut out)).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    (status, out[split + 4..].to_vec())
}

/// Records of a poll body: frames, and the close code if the session ended.
fn records(body: &[u8]) -> (Vec<Vec<u8>>, Option<u16>) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= body.len() {
        let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
        at += 2;
        if len == 0 {
            return (frames, Some(u16::from_be_bytes([body[at], body[at + 1]])));
        }
        frames.push(body[at..at + len].to_vec());
        at += len;
    }
    (frames, None)
}

/// Polls until at least one frame (or a close) arrives.
async fn poll(relay: &TestRelay, id: &str) -> (Vec<Vec<u8>>, Option<u16>) {
    loop {
        let (status, body) = http(relay, "GET", &format!("/v1/poll/session/{id}"), b"").await;
        match status {
            200 => return records(&body),
            204 => continue,
            other => panic!("poll: {other}"),
        }
    }
}

async fn send(relay: &TestRelay, id: &str, frame: &[u8]) -> u16 {
    http(relay, "POST", &format!("/v1/poll/session/{id}"), frame)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_companion_links_over_long_poll() {
    let relay = start(devicelink_relay::server::Limits {
        poll_wait: Duration::from_millis(500),
        ..test_limits()
    })
    .await;
    let (status, id) = http(&relay, "POST", "/v1/poll/companion", b"").await;
    assert_eq!(status, 201);
    let id = String::from_utf8(id).unwrap();
    assert_eq!(id.len(), 32);

    let mut r = rng(1200);
    let mut companion = Companion::new(
        DeviceIdentity::generate(&mut r),
        DeviceLabel::new("Old browser").unwrap(),
        &Policy::default(),
        &mut r,
        relay.now(),
    );
    let offer = companion.offer().unwrap().clone();
    let register = Frame::Register {
        token_id: offer.token_id(),
        expires_at: companion.next_deadline().unwrap(),
    }
    .encode();
    assert_eq!(send(&relay, &id, &register).await, 202);
    let (frames, _) = poll(&relay, &id).await;
    assert_eq!(
        Frame::decode(&frames[0]),
        Ok(Frame::Ack {
            of: FrameType::Register,
            changed: true
        })
    );

    // The primary links over a WebSocket.
    let mut account = account(&relay, 1201);
    account.open_link_intent(relay.now());
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let text = offer.to_text();
    let primary_task = tokio::spawn(async move {
        let out = primary
            .link(&mut account, &text, &mut rng(1202), |_| true)
            .await;
        (account, out)
    });

    // The companion's side, by hand over HTTP.
    let mut pending: Vec<Vec<u8>> = Vec::new();
    loop {
        if pending.is_empty() {
            pending = poll(&relay, &id).await.0;
        }
        let frame = pending.remove(0);
        let Ok(Frame::Message { header, bytes }) = Frame::decode(&frame) else {
            continue; // Routed answers
        };
        let now = relay.now();
        let reply = match header.kind {
            MessageKind::Hello => companion.receive_hello(bytes, &mut r, now).unwrap(),
            MessageKind::Grant => companion.receive_grant(bytes, now).unwrap(),
            other => panic!("{other:?}"),
        };
        let header = devicelink::handshake::MessageHeader::parse(&reply).unwrap();
        let framed = Frame::Message {
            header,
            bytes: &reply,
        }
        .encode();
        assert_eq!(send(&relay, &id, &framed).await, 202);
        if companion.state() == CompanionState::Linked {
            break;
        }
    }
    let (account, out) = bounded(primary_task).await.unwrap();
    assert!(matches!(out.unwrap(), LinkOutcome::Linked(_)));
    assert_eq!(companion.session().unwrap().account(), account.account_id());

    // Bad bodies: a malformed frame gets its error and the session's close;
    // an oversized body is refused by HTTP itself.
    let (status, id2) = http(&relay, "POST", "/v1/poll/primary", b"").await;
    assert_eq!(status, 201);
    let id2 = String::from_utf8(id2).unwrap();
    assert_eq!(send(&relay, &id2, &vec![0u8; MAX_FRAME_LEN + 1]).await, 413);
    assert_eq!(send(&relay, &id2, &[0x7f]).await, 202);
    let (frames, closed) = poll(&relay, &id2).await;
    let (frames, closed) = if closed.is_none() && frames.len() == 1 {
        let (more, closed) = poll(&relay, &id2).await;
        ([frames, more].concat(), closed)
    } else {
        (frames, closed)
    };
    assert!(matches!(
        Frame::decode(&frames[0]),
        Ok(Frame::Error {
            code: codes::MALFORMED_FRAME,
            ..
        })
    ));
    assert_eq!(closed, Some(codes::CLOSE_MALFORMED));
    bounded(async {
        loop {
            let (status, _) = http(&relay, "GET", &format!("/v1/poll/session/{id2}"), b"").await;
            if status == 404 {
                break;
            }
        }
    })
    .await;
    assert_eq!(send(&relay, "00", &[1]).await, 404);
    // A DELETE ends a session.
    assert_eq!(
        http(&relay, "DELETE", &format!("/v1/poll/session/{id}"), b"")
            .await
            .0,
        204
    );
    let drained = relay.stop().await;
    assert!(drained.all_closed, "{drained:?}");
}
