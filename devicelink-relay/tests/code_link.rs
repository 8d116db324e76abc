//! Linking by typed code through the real relay over loopback WebSockets
//! (`/v1/code`), with real crypto: the right code links; a mistyped code
//! ends both sides with `WrongCode`. And the endpoint as an attacker meets
//! it (from other loopback addresses than the genuine users'): scanning
//! handles is blind and slow, a joiner that gives up spends the code (the
//! companion is told) and never locks the victim's handle, lockouts bite
//! per client, per address and per proven account, and the endpoint has
//! the same frame rate, frame size, pings and idle timeout as the others.

mod common;

use std::time::Duration;

use common::*;
use devicelink::code::{CodeCompanion, CodeHandle, TypedCode};
use devicelink::relay::{AccountProof, AttemptKey};
use devicelink::{Account, DeviceIdentity, DeviceLabel, HandshakeError, LinkCode, Policy};
use devicelink_relay::code_frame::CodeFrame;
use devicelink_relay::server::{codes, source_key, Limits};
use devicelink_relay::{ClientSecret, Frame, FrameType, MAX_FRAME_LEN};
use futures_util::{SinkExt, StreamExt};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio_tungstenite::tungstenite::Message;

/// The genuine users' address, and attackers' ones.
const HOME: &str = "127.0.0.1";
const PHONE_NET: &str = "127.0.0.3";
const ATTACKER: &str = "127.0.0.66";

async fn code_ws(relay: &TestRelay, from: &str) -> Ws {
    ws_from(relay, "/v1/code", from).await
}

async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    bounded(ws.send(Message::Binary(bytes.into())))
        .await
        .unwrap();
}

async fn next(ws: &mut Ws) -> Vec<u8> {
    loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Sends a code frame and returns the answer: a code frame's bytes, or the
/// relay's error (code, text).
async fn call(ws: &mut Ws, frame: CodeFrame<'_>) -> Result<Vec<u8>, (u16, String)> {
    send(ws, frame.encode()).await;
    answer(ws).await
}

async fn answer(ws: &mut Ws) -> Result<Vec<u8>, (u16, String)> {
    let b = next(ws).await;
    match Frame::decode(&b) {
        Ok(Frame::Error { code, text }) => Err((code, text.to_owned())),
        _ => Ok(b),
    }
}

/// The payload of a Routed frame (pushed by the other side).
async fn routed(ws: &mut Ws) -> Vec<u8> {
    let b = next(ws).await;
    match CodeFrame::decode(&b).unwrap() {
        CodeFrame::Routed(m) => m.to_vec(),
        other => panic!("expected Routed, got {other:?}"),
    }
}

fn ok(answer: Result<Vec<u8>, (u16, String)>) {
    assert_eq!(CodeFrame::decode(&answer.unwrap()).unwrap(), CodeFrame::Ok);
}

/// Sends a code message; the relay answers Ok once it forwarded it.
async fn message(ws: &mut Ws, m: &[u8]) {
    ok(call(ws, CodeFrame::Message(m)).await);
}

/// The companion opens a session (unless given one) and publishes a fresh
/// code.
async fn show(ws: &mut Ws, rng: &mut ChaCha20Rng, handle: Option<CodeHandle>) -> CodeCompanion {
    let handle = match handle {
        Some(h) => h,
        None => match CodeFrame::decode(&call(ws, CodeFrame::Open).await.unwrap()).unwrap() {
            CodeFrame::Opened { handle, .. } => handle,
            other => panic!("{other:?}"),
        },
    };
    let shown = CodeCompanion::new(
        DeviceIdentity::generate(rng),
        DeviceLabel::new("Firefox on Linux").unwrap(),
        handle,
        &Policy::default(),
        rng,
        T0,
    );
    ok(call(ws, CodeFrame::Publish(shown.offer_message().unwrap())).await);
    shown
}

async fn join(ws: &mut Ws, handle: CodeHandle) -> Result<Vec<u8>, (u16, String)> {
    call(ws, CodeFrame::Join(handle))
        .await
        .map(|b| match CodeFrame::decode(&b).unwrap() {
            CodeFrame::Offer(o) => o.to_vec(),
            other => panic!("{other:?}"),
        })
}

/// Identifies the connection (its first frame) as `secret`.
async fn identify(ws: &mut Ws, secret: &ClientSecret) {
    send(
        ws,
        Frame::Identify {
            secret: secret.clone(),
        }
        .encode(),
    )
    .await;
    let b = next(ws).await;
    assert!(matches!(
        Frame::decode(&b),
        Ok(Frame::Ack {
            of: FrameType::Identify,
            ..
        })
    ));
}

#[tokio::test]
async fn a_code_links_over_the_relay_and_a_wrong_one_ends_both_sides() {
    let relay = start(test_limits()).await;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut account = Account::generate(Policy::default(), &mut rng, T0);
    let mut laptop = code_ws(&relay, HOME).await;
    let mut phone = code_ws(&relay, PHONE_NET).await;

    // The right code.
    let mut shown = show(&mut laptop, &mut rng, None).await;
    let typed = TypedCode::parse(&shown.code_text().unwrap()).unwrap();
    account.open_link_intent(T0);
    let offer = join(&mut phone, typed.handle()).await.unwrap();
    let (mut entry, hello) = account.enter_code(&typed, &offer, &mut rng, T0).unwrap();
    message(&mut phone, &hello).await;
    let hello = routed(&mut laptop).await;
    let accepted = shown.receive_hello(&hello, &mut rng, T0).unwrap();
    message(&mut laptop, &accepted.confirm).await;
    message(&mut laptop, &accepted.request).await;
    let confirm = routed(&mut phone).await;
    let mut primary = entry.receive_confirm(&confirm, T0).unwrap();
    let request = routed(&mut phone).await;
    account
        .receive_request(&mut primary, &request, &mut rng, T0)
        .unwrap();
    let grant = account.grant(&mut primary, &mut rng, T0).unwrap();
    message(&mut phone, &grant).await;
    let mut companion = accepted.companion;
    let joining = companion
        .receive_grant(&routed(&mut laptop).await, T0)
        .unwrap();
    assert_eq!(joining.check_code, None, "a typed code needs no check code");
    let confirm = companion.consent(T0).unwrap();
    message(&mut laptop, &confirm).await;
    account
        .confirm(&mut primary, &routed(&mut phone).await, T0)
        .unwrap();
    assert_eq!(account.companion_count(T0), 1);
    assert!(companion.session().unwrap().is_linked(T0));

    // A mistyped code: both sides end with WrongCode, reported by the
    // companion; the joiner (the phone) is counted, the handle is not.
    let mut shown = show(&mut laptop, &mut rng, None).await;
    let handle = shown.handle();
    let wrong = TypedCode::new(handle, LinkCode::generate(&mut rng));
    account.open_link_intent(T0);
    let offer = join(&mut phone, handle).await.unwrap();
    let (mut entry, hello) = account.enter_code(&wrong, &offer, &mut rng, T0).unwrap();
    message(&mut phone, &hello).await;
    let hello = routed(&mut laptop).await;
    assert_eq!(
        shown.receive_hello(&hello, &mut rng, T0).unwrap_err(),
        HandshakeError::WrongCode
    );
    message(&mut laptop, shown.wrong_code_notice().unwrap()).await;
    assert_eq!(
        entry
            .receive_confirm(&routed(&mut phone).await, T0)
            .unwrap_err(),
        HandshakeError::WrongCode
    );
    ok(call(&mut laptop, CodeFrame::WrongCode(shown.token_id())).await);
    assert_eq!(account.companion_count(T0), 1);
    let phone_source = source_key(PHONE_NET.parse().unwrap(), 64);
    assert_eq!(relay.code_failures(&AttemptKey::Source(phone_source)), 1);
    // The laptop shows its next code under the same handle.
    show(&mut laptop, &mut rng, Some(handle)).await;
    relay.stop().await;
}

#[tokio::test]
async fn scanning_handles_is_blind_and_slow_and_never_locks_out_the_victim() {
    let relay = start(test_limits()).await;
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut laptop = code_ws(&relay, HOME).await;
    let shown = show(&mut laptop, &mut rng, None).await;
    let handle = shown.handle();
    let unpublished =
        match CodeFrame::decode(&call(&mut laptop, CodeFrame::Open).await.unwrap()).unwrap() {
            CodeFrame::Opened { handle, .. } => handle,
            other => panic!("{other:?}"),
        };

    // The scanner, from fresh connections of one address: an unknown
    // handle, one not published yet: the same answer, and each counts.
    let mut answers = Vec::new();
    for h in [
        CodeHandle::new((handle.value() + 1) & 0xF_FFFF).unwrap(),
        unpublished,
    ] {
        let mut scanner = code_ws(&relay, ATTACKER).await;
        answers.push(join(&mut scanner, h).await.unwrap_err());
    }
    // Then it meets the victim's code: it takes the offer, and gives up
    // with a bare WrongCode (or stays silent).
    let mut scanner = code_ws(&relay, ATTACKER).await;
    join(&mut scanner, handle).await.unwrap();
    ok(call(&mut scanner, CodeFrame::WrongCode(shown.token_id())).await);
    // The victim's companion is told its code is spent.
    assert_eq!(
        CodeFrame::decode(&next(&mut laptop).await).unwrap(),
        CodeFrame::Spent(shown.token_id())
    );
    // The used code, asked again: "no such code", as any other.
    let mut scanner = code_ws(&relay, ATTACKER).await;
    answers.push(join(&mut scanner, handle).await.unwrap_err());
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "answers differ: {answers:?}"
    );
    assert_eq!(answers[0].0, 300, "{:?}", answers[0]);
    assert!(answers[0].1.contains("no such code"), "{:?}", answers[0]);
    assert_eq!(relay.metrics.code_joins_failed(), 3);
    // Four failures: the scanner's address is locked out, from any client.
    let mut scanner = code_ws(&relay, ATTACKER).await;
    let (code, text) = join(&mut scanner, unpublished).await.unwrap_err();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("locked out"), "{text}");
    let attacker = source_key(ATTACKER.parse().unwrap(), 64);
    assert_eq!(relay.code_failures(&AttemptKey::Source(attacker)), 4);

    // The victim shows a new code under the same handle (never locked),
    // and the genuine phone, from its own address, links with it.
    let mut shown = show(&mut laptop, &mut rng, Some(handle)).await;
    let typed = TypedCode::parse(&shown.code_text().unwrap()).unwrap();
    let mut account = Account::generate(Policy::default(), &mut rng, T0);
    account.open_link_intent(T0);
    let mut phone = code_ws(&relay, PHONE_NET).await;
    let offer = join(&mut phone, typed.handle()).await.unwrap();
    let (_entry, hello) = account.enter_code(&typed, &offer, &mut rng, T0).unwrap();
    message(&mut phone, &hello).await;
    let hello = routed(&mut laptop).await;
    assert!(shown.receive_hello(&hello, &mut rng, T0).is_ok());
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_joiner_spends_the_code_at_the_hello_window() {
    let relay = start(test_limits()).await;
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut laptop = code_ws(&relay, HOME).await;
    let shown = show(&mut laptop, &mut rng, None).await;
    let mut thief = code_ws(&relay, ATTACKER).await;
    join(&mut thief, shown.handle()).await.unwrap();
    // Nothing for 30 s: the sweeper spends the code and tells the laptop.
    relay.clock.advance(Duration::from_secs(30));
    assert_eq!(
        CodeFrame::decode(&next(&mut laptop).await).unwrap(),
        CodeFrame::Spent(shown.token_id())
    );
    let attacker = source_key(ATTACKER.parse().unwrap(), 64);
    assert_eq!(relay.code_failures(&AttemptKey::Source(attacker)), 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_proven_account_is_counted_and_locked_out_across_addresses() {
    let relay = start(test_limits()).await;
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let account = Account::generate(Policy::default(), &mut rng, T0);
    let secret = ClientSecret::generate(&mut rng);
    let mut laptop = code_ws(&relay, HOME).await;
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(show(&mut laptop, &mut rng, None).await.handle());
    }
    // A proof needs an identified connection.
    let mut anon = code_ws(&relay, "127.0.0.70").await;
    let proof = AccountProof::sign(account.key(), secret.client_id());
    send(
        &mut anon,
        Frame::ProveAccount {
            account: account.account_id(),
            proof,
        }
        .encode(),
    )
    .await;
    assert_eq!(
        answer(&mut anon).await.unwrap_err().0,
        codes::NOT_IDENTIFIED
    );
    // From four addresses, each a fresh identified client proving the
    // account, each joining a used handle.
    for (i, from) in ["127.0.0.71", "127.0.0.72", "127.0.0.73", "127.0.0.74"]
        .into_iter()
        .enumerate()
    {
        let mut p = code_ws(&relay, from).await;
        let s = ClientSecret::generate(&mut rng);
        identify(&mut p, &s).await;
        send(
            &mut p,
            Frame::ProveAccount {
                account: account.account_id(),
                proof: AccountProof::sign(account.key(), s.client_id()),
            }
            .encode(),
        )
        .await;
        assert!(answer(&mut p).await.is_ok());
        if i == 0 {
            // A proof for another client id is refused.
            send(
                &mut p,
                Frame::ProveAccount {
                    account: account.account_id(),
                    proof,
                }
                .encode(),
            )
            .await;
            assert_eq!(answer(&mut p).await.unwrap_err().0, 200);
        }
        let used = CodeHandle::new((handles[i].value() + 7) & 0xF_FFFF).unwrap();
        assert_eq!(join(&mut p, used).await.unwrap_err().0, 300);
    }
    assert_eq!(
        relay.code_failures(&AttemptKey::Account(account.account_id())),
        4
    );
    // The account is locked out from a fifth address too.
    let mut p = code_ws(&relay, "127.0.0.75").await;
    let s = ClientSecret::generate(&mut rng);
    identify(&mut p, &s).await;
    send(
        &mut p,
        Frame::ProveAccount {
            account: account.account_id(),
            proof: AccountProof::sign(account.key(), s.client_id()),
        }
        .encode(),
    )
    .await;
    assert!(answer(&mut p).await.is_ok());
    let (code, text) = join(&mut p, handles[0]).await.unwrap_err();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("Account"), "{text}");
    relay.stop().await;
}

#[tokio::test]
async fn the_code_endpoint_has_the_connection_machinerys_limits() {
    // Rate: a burst of 40, then 20 frames a second (the defaults).
    let relay = start(Limits {
        rate_per_second: 20,
        rate_burst: 40,
        idle_timeout: Duration::from_millis(600),
        ..test_limits()
    })
    .await;
    let mut scanner = code_ws(&relay, ATTACKER).await;
    let join = CodeFrame::Join(CodeHandle::new(5).unwrap()).encode();
    for _ in 0..5_000 {
        if scanner
            .send(Message::Binary(join.clone().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut answered = 0;
    let closed = loop {
        match bounded(scanner.next()).await {
            Some(Ok(Message::Binary(_))) => answered += 1,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed, codes::CLOSE_RATE_LIMITED);
    assert!(answered <= 45, "{answered} frames answered");
    // Size: a frame over the limit is refused with 1009.
    let mut big = code_ws(&relay, HOME).await;
    send(&mut big, vec![0x14; MAX_FRAME_LEN + 1]).await;
    let closed = loop {
        match bounded(big.next()).await {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed, codes::CLOSE_TOO_BIG);
    // Identify only first; then idle: pinged, and closed with 4003 when
    // nothing answers.
    let mut quiet = code_ws(&relay, HOME).await;
    ok(call(&mut quiet, CodeFrame::Open)
        .await
        .map(|_| CodeFrame::Ok.encode()));
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    send(
        &mut quiet,
        Frame::Identify {
            secret: ClientSecret::generate(&mut rng),
        }
        .encode(),
    )
    .await;
    assert_eq!(
        answer(&mut quiet).await.unwrap_err().0,
        codes::IDENTIFY_NOT_FIRST
    );
    let (mut pinged, mut closed) = (false, None);
    let started = std::time::Instant::now();
    // The test client's library answers pings by itself; stop reading so
    // no pong goes out, then read what came.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    while let Some(m) = bounded(quiet.next()).await {
        match m {
            Ok(Message::Ping(_)) => pinged = true,
            Ok(Message::Close(Some(f))) => {
                assert!(started.elapsed() < Duration::from_secs(5));
                let _ = closed.insert(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(pinged, "no ping on the code endpoint");
    assert_eq!(closed, Some(codes::CLOSE_IDLE));
    relay.stop().await;
}
