//! Every resource a stranger can make the relay hold is budgeted per client
//! and per address, with a reserve for sources in good standing: tested as
//! an attacker would try it, from loopback addresses of its own (127.0.0.x),
//! while a genuine user from another address is still served.
//!
//! - tokens and their tombstones (the store-wide quota was an off switch);
//! - durable accounts (a self-signed list made a permanent row);
//! - mailboxes (one client filled the shared budget; one Grant per token);
//! - a list signed past the offline limit (made the account expired for good).

mod common;

use std::time::Duration;

use common::*;
use devicelink::certificate::{DeviceListDraft, DeviceListEntry};
use devicelink::relay::AccountProof;
use devicelink::{
    Account, AccountKey, Companion, DeviceIdentity, DeviceIndex, DeviceLabel, Policy,
    PrimaryHeartbeat, SignedDeviceList, Timestamp, TokenId,
};
use devicelink_relay::server::{codes, Limits};
use devicelink_relay::{ClientSecret, Frame, FrameType, MemoryStore, Store};
use futures_util::{SinkExt, StreamExt};
use rand_chacha::ChaCha20Rng;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn send(ws: &mut Ws, frame: Frame<'_>) {
    bounded(ws.send(Message::binary(frame.encode())))
        .await
        .unwrap();
}

/// The next frame (bytes), skipping pings.
async fn next(ws: &mut Ws) -> Vec<u8> {
    loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// The answer to the last frame: `Ok(changed)` for an Ack, `Ok(true)` for
/// Routed, `Err((code, text))` for an Error.
async fn answer(ws: &mut Ws) -> Result<bool, (u16, String)> {
    loop {
        let b = next(ws).await;
        match Frame::decode(&b).unwrap() {
            Frame::Ack { changed, .. } => return Ok(changed),
            Frame::Routed { .. } => return Ok(true),
            Frame::Error { code, text } => return Err((code, text.to_owned())),
            // A message or push for this client: not an answer.
            _ => continue,
        }
    }
}

async fn call(ws: &mut Ws, frame: Frame<'_>) -> Result<bool, (u16, String)> {
    send(ws, frame).await;
    answer(ws).await
}

/// A connection from `from` identified as a fresh client.
async fn identified(
    relay: &TestRelay,
    path: &str,
    from: &str,
    rng: &mut ChaCha20Rng,
) -> (Ws, ClientSecret) {
    let mut ws = ws_from(relay, path, from).await;
    let secret = ClientSecret::generate(rng);
    assert!(call(
        &mut ws,
        Frame::Identify {
            secret: secret.clone()
        }
    )
    .await
    .is_ok());
    (ws, secret)
}

fn register(n: u64, relay: &TestRelay) -> Frame<'static> {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    Frame::Register {
        token_id: TokenId::from_bytes(b),
        expires_at: relay.now().saturating_add(Duration::from_secs(60)),
    }
}

/// A genuine pairing through the relay up to the companion's Request: the
/// companion (on `c`) registers its offer, the phone (on `p`) scans it and
/// sends the Hello, the companion answers. Returns the companion, the
/// phone's account and its handshake, waiting for the Request.
async fn pair_to_request(
    relay: &TestRelay,
    c: &mut Ws,
    p: &mut Ws,
    label: &str,
    rng: &mut ChaCha20Rng,
) -> (Companion, Account, devicelink::PrimaryHandshake) {
    let mut companion = Companion::new(
        DeviceIdentity::generate(&mut *rng),
        DeviceLabel::new(label).unwrap(),
        &Policy::default(),
        &mut *rng,
        relay.now(),
    );
    let offer = companion.offer().unwrap().clone();
    let register = Frame::Register {
        token_id: offer.token_id(),
        expires_at: companion.next_deadline().unwrap(),
    };
    assert!(call(c, register).await.is_ok());
    let mut account = Account::generate(Policy::default(), &mut *rng, relay.now());
    account.open_link_intent(relay.now());
    let (handshake, hello) = account
        .scan(&offer.to_text(), &mut *rng, relay.now())
        .unwrap();
    let hdr = |m: &[u8]| devicelink::handshake::MessageHeader::parse(m).unwrap();
    let frame = Frame::Message {
        header: hdr(&hello),
        bytes: &hello,
    };
    assert!(call(p, frame).await.is_ok());
    let routed = next(c).await;
    let Ok(Frame::Message { bytes, .. }) = Frame::decode(&routed) else {
        panic!("no Hello")
    };
    let request = companion
        .receive_hello(bytes, &mut *rng, relay.now())
        .unwrap();
    let frame = Frame::Message {
        header: hdr(&request),
        bytes: &request,
    };
    assert!(call(c, frame).await.is_ok());
    (companion, account, handshake)
}

fn quota_scope(e: &(u16, String)) -> &str {
    assert_eq!(e.0, 400, "{e:?}");
    e.1.split(['(', ',']).nth(1).unwrap_or("")
}

#[tokio::test]
async fn tokens_and_their_tombstones_are_budgeted_per_address_with_a_reserve() {
    // 6 per address, 24 in all: the last 6 kept for addresses holding none.
    let relay = start(Limits {
        max_tokens_per_address: 6,
        max_tokens: 24,
        ..test_limits()
    })
    .await;
    let mut rng = rng(40);
    let mut n = 0u64;
    let mut next_token = || {
        n += 1;
        n
    };

    // An attacker address with a fresh client per token: 6, then refused,
    // whatever client id it uses.
    let mut held = Vec::new();
    for i in 0..7 {
        let mut c = ws_from(&relay, "/v1/companion", "127.0.0.10").await;
        let r = call(&mut c, register(next_token(), &relay)).await;
        if i < 6 {
            assert!(r.is_ok(), "{r:?}");
            held.push(c);
        } else {
            assert_eq!(quota_scope(&r.unwrap_err()), "Source");
        }
    }

    // A tombstone counts until it is swept: a real pairing from a second
    // address, then five more tokens, then refused.
    let (mut c, _) = identified(&relay, "/v1/companion", "127.0.0.11", &mut rng).await;
    let (mut p, _) = identified(&relay, "/v1/primary", "127.0.0.11", &mut rng).await;
    pair_to_request(&relay, &mut c, &mut p, "attacker", &mut rng).await;
    for _ in 0..5 {
        assert!(call(&mut c, register(next_token(), &relay)).await.is_ok());
    }
    let e = call(&mut c, register(next_token(), &relay))
        .await
        .unwrap_err();
    assert!(matches!(quota_scope(&e), "Source" | "Client"), "{e:?}");

    // A third attacker address: 6 more (18 held: the reserve begins).
    let mut third = ws_from(&relay, "/v1/companion", "127.0.0.12").await;
    for _ in 0..6 {
        assert!(call(&mut third, register(next_token(), &relay))
            .await
            .is_ok());
    }
    // The reserve: a fourth attacker address gets one token (it held none),
    // then is refused by the reserve, not by its own budget.
    let mut fourth = ws_from(&relay, "/v1/companion", "127.0.0.13").await;
    assert!(call(&mut fourth, register(next_token(), &relay))
        .await
        .is_ok());
    let e = call(&mut fourth, register(next_token(), &relay))
        .await
        .unwrap_err();
    assert_eq!(quota_scope(&e), "Reserve");
    // Genuine users, each from its own address, are still served.
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let mut g = ws_from(&relay, "/v1/companion", from).await;
        assert!(call(&mut g, register(next_token(), &relay)).await.is_ok());
    }

    // The first attacker's anonymous connections end: their tokens can
    // never be redeemed and are swept at once; the address may register
    // again.
    drop(held);
    bounded(async {
        loop {
            let mut c = ws_from(&relay, "/v1/companion", "127.0.0.10").await;
            if call(&mut c, register(next_token(), &relay)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    relay.stop().await;
}

/// A first list of `key`'s account naming `devices` companions, signed at `at`.
fn first_list(
    key: &AccountKey,
    devices: u32,
    at: Timestamp,
    rng: &mut ChaCha20Rng,
) -> SignedDeviceList {
    let entries = (1..=devices)
        .map(|i| {
            DeviceListEntry::new(
                DeviceIndex(i),
                DeviceIdentity::generate(rng).device_key(),
                DeviceLabel::new("d").unwrap(),
                at,
            )
        })
        .collect();
    SignedDeviceList::sign(key, &DeviceListDraft::new(1, entries), at)
}

async fn prove(ws: &mut Ws, key: &AccountKey, secret: &ClientSecret) {
    let r = call(
        ws,
        Frame::ProveAccount {
            account: key.account_id(),
            proof: AccountProof::sign(key, secret.client_id()),
        },
    )
    .await;
    assert_eq!(r, Ok(true));
}

#[tokio::test]
async fn accounts_need_the_keys_proof_and_are_budgeted_per_address() {
    let store = MemoryStore::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = start_with(
        store.clone(),
        listener,
        Limits {
            new_accounts_per_address_per_hour: 2,
            ..test_limits()
        },
        T0,
    )
    .await;
    let mut rng = rng(41);
    let now = relay.now();

    // A self-signed list, published without a proof: nothing is kept.
    let (mut p, secret) = identified(&relay, "/v1/primary", "127.0.0.20", &mut rng).await;
    let key = AccountKey::generate(&mut rng);
    let list = first_list(&key, 2, now, &mut rng);
    let e = call(
        &mut p,
        Frame::PublishList {
            bytes: &list.to_bytes(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, codes::ACCOUNT_PROOF_NEEDED, "{e:?}");
    assert_eq!(store.account_count(), 0);
    // A proof for another account does not help.
    prove(&mut p, &AccountKey::generate(&mut rng), &secret).await;
    let e = call(
        &mut p,
        Frame::PublishList {
            bytes: &list.to_bytes(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, codes::ACCOUNT_PROOF_NEEDED);
    // With the key's proof: kept, up to the address's allowance.
    for i in 0..3 {
        let key = AccountKey::generate(&mut rng);
        prove(&mut p, &key, &secret).await;
        let list = first_list(&key, 1, now, &mut rng);
        let r = call(
            &mut p,
            Frame::PublishList {
                bytes: &list.to_bytes(),
            },
        )
        .await;
        if i < 2 {
            assert_eq!(r, Ok(true), "{i}");
        } else {
            assert_eq!(r.unwrap_err().0, codes::NEW_ACCOUNTS_RATE);
        }
    }
    assert_eq!(store.account_count(), 2);
    // Another address is served.
    let (mut q, secret_q) = identified(&relay, "/v1/primary", "127.0.0.21", &mut rng).await;
    let key_q = AccountKey::generate(&mut rng);
    prove(&mut q, &key_q, &secret_q).await;
    let empty = first_list(&key_q, 0, now, &mut rng);
    assert_eq!(
        call(
            &mut q,
            Frame::PublishList {
                bytes: &empty.to_bytes()
            }
        )
        .await,
        Ok(true)
    );
    assert_eq!(store.account_count(), 3);

    // A list signed past the offline limit, first seen now: nothing is
    // kept (it used to make the account expired for good), and the
    // genuine primary's current list and heartbeat apply afterwards.
    let (mut g, secret_g) = identified(&relay, "/v1/primary", "127.0.0.22", &mut rng).await;
    let victim = AccountKey::generate(&mut rng);
    prove(&mut g, &victim, &secret_g).await;
    let old = first_list(
        &victim,
        1,
        Timestamp::from_unix_millis(T0.as_unix_millis() - 15 * 86_400_000),
        &mut rng,
    );
    let e = call(
        &mut g,
        Frame::PublishList {
            bytes: &old.to_bytes(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 500, "{e:?}");
    assert_eq!(store.account_count(), 3);
    let current = SignedDeviceList::sign(
        &victim,
        &DeviceListDraft::after(&old, old.devices().to_vec()),
        now,
    );
    assert_eq!(
        call(
            &mut g,
            Frame::PublishList {
                bytes: &current.to_bytes()
            }
        )
        .await,
        Ok(true)
    );
    let hb = PrimaryHeartbeat::sign(&victim, &current, Default::default(), now);
    assert_eq!(
        call(
            &mut g,
            Frame::PublishHeartbeat {
                bytes: &hb.to_bytes()
            }
        )
        .await,
        Ok(true)
    );

    // An account that never listed a companion is forgotten after the
    // offline limit (the one from 127.0.0.21); the others are kept.
    relay
        .clock
        .advance(Policy::default().primary_offline_limit());
    bounded(async {
        while store.account_count() != 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(store.account(&key_q.account_id()).unwrap().is_none());
    relay.stop().await;
}

#[tokio::test]
async fn mailboxes_are_budgeted_per_address_and_hold_one_answer_per_token() {
    let relay = start(Limits {
        mailboxes_per_address: 2,
        mailbox_ttl: Duration::from_secs(30),
        ..test_limits()
    })
    .await;
    let mut rng = rng(42);
    // An attacker address's identified clients connect and leave: two get
    // a mailbox, the rest do not.
    for _ in 0..4 {
        let (ws, _) = identified(&relay, "/v1/companion", "127.0.0.30", &mut rng).await;
        drop(ws);
    }
    bounded(async {
        while relay.metrics.mailboxes_refused() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(relay.metrics.mailboxes_refused(), 2);

    // A genuine pairing from another address: the companion loses its
    // connection after its Request; the phone's Grant waits in its mailbox,
    // a second Grant for the same token does not.
    let (mut c, secret) = identified(&relay, "/v1/companion", "127.0.0.31", &mut rng).await;
    let (mut p, _) = identified(&relay, "/v1/primary", "127.0.0.32", &mut rng).await;
    let (mut companion, mut account, mut handshake) =
        pair_to_request(&relay, &mut c, &mut p, "laptop", &mut rng).await;
    let hdr = |m: &[u8]| devicelink::handshake::MessageHeader::parse(m).unwrap();
    let routed = next(&mut p).await;
    let Ok(Frame::Message { bytes, .. }) = Frame::decode(&routed) else {
        panic!("no Request")
    };
    account
        .receive_request(&mut handshake, bytes, &mut rng, relay.now())
        .unwrap();
    let grant = account
        .grant(&mut handshake, &mut rng, relay.now())
        .unwrap();
    drop(c);
    let mut routed = false;
    for _ in 0..50 {
        if relay.metrics.mailboxes_refused() == 2
            && call(
                &mut p,
                Frame::Message {
                    header: hdr(&grant),
                    bytes: &grant,
                },
            )
            .await
            .is_ok()
        {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(routed, "the first Grant waits in the mailbox");
    let e = call(
        &mut p,
        Frame::Message {
            header: hdr(&grant),
            bytes: &grant,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, codes::PEER_GONE);
    assert_eq!(relay.metrics.mailbox_refused(), 1);
    // The companion comes back and gets exactly one Grant.
    let mut back = ws_from(&relay, "/v1/companion", "127.0.0.31").await;
    send(&mut back, Frame::Identify { secret }).await;
    let mut grants = 0;
    let mut acked = false;
    while !acked || grants == 0 {
        match Frame::decode(&next(&mut back).await).unwrap() {
            Frame::Ack {
                of: FrameType::Identify,
                ..
            } => acked = true,
            Frame::Message { .. } => grants += 1,
            other => panic!("{other:?}"),
        }
    }
    companion.receive_grant(&grant, relay.now()).unwrap();
    let confirm = companion.consent(relay.now()).unwrap();
    assert!(call(
        &mut back,
        Frame::Message {
            header: hdr(&confirm),
            bytes: &confirm
        }
    )
    .await
    .is_ok());
    assert_eq!(grants, 1);
    relay.stop().await;
}

/// The status of a WebSocket upgrade to `/v1/companion` from `from`
/// (`None`: upgraded, the socket kept in `held`).
async fn upgrade_from(relay: &TestRelay, from: &str, held: &mut Vec<Ws>) -> Option<u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = bounded(socket.connect(relay.addr)).await.unwrap();
    let url = format!("{}/v1/companion", relay.base);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    match bounded(tokio_tungstenite::client_async(url, stream)).await {
        Ok((ws, _)) => {
            held.push(ws);
            None
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn sessions_leave_a_reserve_that_busy_addresses_cannot_take() {
    // 8 sessions in all, 4 an address; the last 2 kept for addresses that
    // hold none.
    let relay = start(Limits {
        max_connections: 8,
        max_connections_per_address: 4,
        ..test_limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        assert_eq!(upgrade_from(&relay, "127.0.0.51", &mut held).await, None);
    }
    assert_eq!(
        upgrade_from(&relay, "127.0.0.51", &mut held).await,
        Some(429)
    );
    for _ in 0..2 {
        assert_eq!(upgrade_from(&relay, "127.0.0.52", &mut held).await, None);
    }
    // Six open: the busy addresses are refused what is left...
    assert_eq!(
        upgrade_from(&relay, "127.0.0.52", &mut held).await,
        Some(429)
    );
    // ...which addresses holding nothing still get.
    assert_eq!(upgrade_from(&relay, "127.0.0.53", &mut held).await, None);
    assert_eq!(upgrade_from(&relay, "127.0.0.54", &mut held).await, None);
    // Full: 503 for everyone.
    assert_eq!(
        upgrade_from(&relay, "127.0.0.55", &mut held).await,
        Some(503)
    );
    relay.stop().await;
}
