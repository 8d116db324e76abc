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
    let (status, _, body) = http_with(relay, method, path, "", body).await;
    (status, body)
}

/// One HTTP/1.1 request with extra header lines; returns status, the
/// response head and body.
async fn http_with(
    relay: &TestRelay,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = bounded(TcpStream::connect(relay.addr)).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n{headers}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
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
    (status, head, out[split + 4..].to_vec())
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
    let account_id = account.account_id();
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
            MessageKind::Grant => {
                let join = companion.receive_grant(bytes, now).unwrap();
                assert_eq!(join.account, account_id);
                companion.consent(now).unwrap()
            }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_posts_are_taken_once_and_unacknowledged_records_come_again() {
    let relay = start(devicelink_relay::server::Limits {
        poll_wait: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let (_, id) = http(&relay, "POST", "/v1/poll/companion", b"").await;
    let id = String::from_utf8(id).unwrap();
    let path = format!("/v1/poll/session/{id}");
    let register = |n: u8| {
        Frame::Register {
            token_id: devicelink::TokenId::from_bytes([n; 16]),
            expires_at: relay.now().saturating_add(Duration::from_secs(30)),
        }
        .encode()
    };
    // Frame 1, sent twice (a retry after a lost answer): taken once, so one
    // Ack and no DuplicateToken error. Frame 3 before 2: 412.
    for _ in 0..2 {
        let (status, _, _) =
            http_with(&relay, "POST", &path, "If-Match: \"1\"\r\n", &register(1)).await;
        assert_eq!(status, 202);
    }
    let (status, _, _) =
        http_with(&relay, "POST", &path, "If-Match: \"3\"\r\n", &register(3)).await;
    assert_eq!(status, 412);
    let (status, _, _) =
        http_with(&relay, "POST", &path, "If-Match: \"2\"\r\n", &register(2)).await;
    assert_eq!(status, 202);
    // Both Acks, numbered 1 and 2; polled with "I have nothing".
    let mut got = Vec::new();
    let mut etag = String::new();
    while got.len() < 2 {
        let (status, head, body) =
            http_with(&relay, "GET", &path, "If-None-Match: \"0\"\r\n", b"").await;
        if status == 204 {
            continue;
        }
        assert_eq!(status, 200);
        etag = head
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .unwrap()
            .to_string();
        got = records(&body).0;
    }
    assert_eq!(etag, "\"2\"");
    for frame in &got {
        assert!(matches!(
            Frame::decode(frame),
            Ok(Frame::Ack {
                of: FrameType::Register,
                changed: true
            })
        ));
    }
    // The answer was "lost": asking again from 1 gives record 2 again.
    let (status, head, body) =
        http_with(&relay, "GET", &path, "If-None-Match: \"1\"\r\n", b"").await;
    assert_eq!(status, 200);
    assert!(head.contains("etag: \"2\""), "{head}");
    assert_eq!(records(&body).0, got[1..].to_vec());
    // Acknowledged: nothing more comes.
    let (status, _, _) = http_with(&relay, "GET", &path, "If-None-Match: \"2\"\r\n", b"").await;
    assert_eq!(status, 204);
    assert_eq!(relay.metrics.refusals(devicelink::ErrorKind::Conflict), 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_link_subscribe_and_hear_a_revocation_over_long_poll() {
    use devicelink::LogoutReason;
    use devicelink_relay::client::{CompanionClient, CompanionUpdate};
    let relay = start(devicelink_relay::server::Limits {
        poll_wait: Duration::from_millis(500),
        ..test_limits()
    })
    .await;
    let http_base = format!("http://{}", relay.addr);
    let mut r = rng(1600);
    let companion = Companion::new(
        DeviceIdentity::generate(&mut r),
        DeviceLabel::new("Kiosk").unwrap(),
        &Policy::default(),
        &mut r,
        relay.now(),
    );
    // Both ends over plain HTTP.
    let mut c = bounded(CompanionClient::connect(
        &http_base,
        companion,
        relay.clock.clone(),
    ))
    .await
    .unwrap();
    let mut primary = bounded(PrimaryClient::connect(&http_base, relay.clock.clone()))
        .await
        .unwrap();
    let mut account = account(&relay, 1601);
    account.open_link_intent(relay.now());
    let text = c.offer_text().unwrap();
    let mut rp = rng(1602);
    let mut rc = rng(1603);
    let (linked, outcome) = bounded(async {
        tokio::join!(
            c.link(&mut rc, |_| true),
            primary.link(&mut account, &text, &mut rp, |_| true)
        )
    })
    .await;
    let index = linked.unwrap().index();
    assert!(matches!(outcome.unwrap(), LinkOutcome::Linked(_)));
    account.revoke(index, relay.now()).unwrap();
    bounded(primary.publish_list(account.device_list()))
        .await
        .unwrap();
    let logout = bounded(async {
        loop {
            if let u @ CompanionUpdate::Logout { .. } = c.next_update().await.unwrap() {
                return u;
            }
        }
    })
    .await;
    assert!(matches!(
        logout,
        CompanionUpdate::Logout {
            reason: LogoutReason::Revoked,
            ..
        }
    ));
    c.close().await;
    primary.close().await;
    let drained = relay.stop().await;
    assert!(drained.all_closed, "{drained:?}");
}
