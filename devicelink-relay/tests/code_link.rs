//! Linking by typed code through the real relay over loopback WebSockets
//! (`/v1/code`), with real crypto: the right code links; a mistyped code
//! ends both sides with `WrongCode`; a guesser who keeps trying the handle
//! is locked out by the relay.

mod common;

use common::*;
use devicelink::code::{CodeCompanion, CodeHandle, TypedCode};
use devicelink::{Account, DeviceIdentity, DeviceLabel, HandshakeError, LinkCode, Policy};
use devicelink_relay::code_frame::CodeFrame;
use futures_util::{SinkExt, StreamExt};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(relay: &TestRelay) -> Ws {
    let (ws, _) = bounded(tokio_tungstenite::connect_async(format!(
        "{}/v1/code",
        relay.base
    )))
    .await
    .unwrap();
    ws
}

/// Sends a frame and returns the next frame received (bytes).
async fn call(ws: &mut Ws, frame: CodeFrame<'_>) -> Vec<u8> {
    ws.send(Message::Binary(frame.encode().into()))
        .await
        .unwrap();
    next(ws).await
}

async fn send(ws: &mut Ws, frame: CodeFrame<'_>) {
    ws.send(Message::Binary(frame.encode().into()))
        .await
        .unwrap();
}

async fn next(ws: &mut Ws) -> Vec<u8> {
    loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// The payload of a Routed frame.
async fn routed(ws: &mut Ws) -> Vec<u8> {
    let b = next(ws).await;
    match CodeFrame::decode(&b).unwrap() {
        CodeFrame::Routed(m) => m.to_vec(),
        other => panic!("expected Routed, got {other:?}"),
    }
}

fn ok(bytes: &[u8]) {
    assert_eq!(
        CodeFrame::decode(bytes).unwrap(),
        CodeFrame::Ok,
        "{bytes:?}"
    );
}

/// The companion opens a session and publishes a fresh code.
async fn show(
    ws: &mut Ws,
    rng: &mut ChaCha20Rng,
    handle: Option<CodeHandle>,
) -> Result<CodeCompanion, String> {
    let handle = match handle {
        Some(h) => h,
        None => match CodeFrame::decode(&call(ws, CodeFrame::Open).await).unwrap() {
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
    let answer = call(ws, CodeFrame::Publish(shown.offer_message().unwrap())).await;
    match CodeFrame::decode(&answer).unwrap() {
        CodeFrame::Ok => Ok(shown),
        CodeFrame::Error(e) => Err(e.to_owned()),
        other => panic!("{other:?}"),
    }
}

async fn join(ws: &mut Ws, handle: CodeHandle) -> Result<Vec<u8>, String> {
    match CodeFrame::decode(&call(ws, CodeFrame::Join(handle)).await).unwrap() {
        CodeFrame::Offer(o) => Ok(o.to_vec()),
        CodeFrame::Error(e) => Err(e.to_owned()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_code_links_over_the_relay_and_a_wrong_one_ends_both_sides() {
    let relay = start(test_limits()).await;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut account = Account::generate(Policy::default(), &mut rng, T0);
    let mut laptop = connect(&relay).await;
    let mut phone = connect(&relay).await;

    // The right code.
    let mut shown = show(&mut laptop, &mut rng, None).await.unwrap();
    let typed = TypedCode::parse(&shown.code_text().unwrap()).unwrap();
    account.open_link_intent(T0);
    let offer = join(&mut phone, typed.handle()).await.unwrap();
    let (mut entry, hello) = account.enter_code(&typed, &offer, &mut rng, T0).unwrap();
    send(&mut phone, CodeFrame::Message(&hello)).await;
    let hello = routed(&mut laptop).await;
    let accepted = shown.receive_hello(&hello, &mut rng, T0).unwrap();
    send(&mut laptop, CodeFrame::Message(&accepted.confirm)).await;
    send(&mut laptop, CodeFrame::Message(&accepted.request)).await;
    let confirm = routed(&mut phone).await;
    let mut primary = entry.receive_confirm(&confirm, T0).unwrap();
    let request = routed(&mut phone).await;
    account
        .receive_request(&mut primary, &request, &mut rng, T0)
        .unwrap();
    let grant = account.grant(&mut primary, &mut rng, T0).unwrap();
    send(&mut phone, CodeFrame::Message(&grant)).await;
    let mut companion = accepted.companion;
    let confirm = companion
        .receive_grant(&routed(&mut laptop).await, T0)
        .unwrap();
    send(&mut laptop, CodeFrame::Message(&confirm)).await;
    account
        .confirm(&mut primary, &routed(&mut phone).await, T0)
        .unwrap();
    assert_eq!(account.companion_count(T0), 1);
    assert!(companion.session().unwrap().is_linked(T0));

    // A mistyped code: both sides end with WrongCode.
    let mut shown = show(&mut laptop, &mut rng, None).await.unwrap();
    let handle = shown.handle();
    let wrong = TypedCode::new(handle, LinkCode::generate(&mut rng));
    account.open_link_intent(T0);
    let offer = join(&mut phone, handle).await.unwrap();
    let (mut entry, hello) = account.enter_code(&wrong, &offer, &mut rng, T0).unwrap();
    send(&mut phone, CodeFrame::Message(&hello)).await;
    let hello = routed(&mut laptop).await;
    assert_eq!(
        shown.receive_hello(&hello, &mut rng, T0).unwrap_err(),
        HandshakeError::WrongCode
    );
    send(
        &mut laptop,
        CodeFrame::Message(shown.wrong_code_notice().unwrap()),
    )
    .await;
    assert_eq!(
        entry
            .receive_confirm(&routed(&mut phone).await, T0)
            .unwrap_err(),
        HandshakeError::WrongCode
    );
    ok(&call(&mut laptop, CodeFrame::WrongCode(shown.token_id())).await);
    assert_eq!(account.companion_count(T0), 1);

    // A guesser with the handle: each guess costs a code; after the free
    // failures the relay locks the guesser out (never the handle).
    let mut guesser = connect(&relay).await;
    let mut refused = None;
    for _ in 0..10 {
        let mut fresh = show(&mut laptop, &mut rng, Some(handle)).await.unwrap();
        let offer = match join(&mut guesser, handle).await {
            Ok(o) => o,
            Err(e) => {
                refused = Some(e);
                break;
            }
        };
        let mut mallory = Account::generate(Policy::default(), &mut rng, T0);
        mallory.open_link_intent(T0);
        let guess = TypedCode::new(handle, LinkCode::generate(&mut rng));
        let (_, hello) = mallory.enter_code(&guess, &offer, &mut rng, T0).unwrap();
        send(&mut guesser, CodeFrame::Message(&hello)).await;
        let hello = routed(&mut laptop).await;
        assert_eq!(
            fresh.receive_hello(&hello, &mut rng, T0).unwrap_err(),
            HandshakeError::WrongCode
        );
        ok(&call(&mut laptop, CodeFrame::WrongCode(fresh.token_id())).await);
    }
    let refused = refused.expect("the guesser must lock out");
    assert!(refused.contains("locked out"), "{refused}");
    relay.stop().await;
}
