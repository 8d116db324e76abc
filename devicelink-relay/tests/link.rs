//! Links through the real relay over loopback WebSockets, with real crypto:
//! four companions, the fifth refused and told so, a revocation pushed to
//! its device only, 14 virtual days that log everyone out, a corrupted
//! Hello that does not stop the genuine one, and primaries racing one QR.

mod common;

use std::time::Duration;

use common::*;
use devicelink::handshake::{MessageKind, HEADER_LEN};
use devicelink::{
    Companion, DeviceIdentity, DeviceIndex, DeviceLabel, ErrorKind, HandshakeError, LogoutReason,
    Policy, RefusalReason, SessionStatus,
};
use devicelink_relay::client::{
    ClientError, CompanionClient, CompanionUpdate, LinkOutcome, PrimaryClient,
};

/// Rounds of the race test (8 primaries, one QR each round): about 2.5 s in
/// a debug build on 2 cores.
const RACE_ROUNDS: u64 = 500;
const RACERS: usize = 8;

/// Updates `companion` receives within `wait` (stops at the first gap).
async fn updates_within(companion: &mut CompanionClient, wait: Duration) -> Vec<CompanionUpdate> {
    let mut out = Vec::new();
    while let Ok(Ok(u)) = tokio::time::timeout(wait, companion.next_update()).await {
        out.push(u);
    }
    out
}

/// Waits (bounded) for a Logout update, returning it and what came before.
async fn until_logout(companion: &mut CompanionClient) -> (CompanionUpdate, Vec<CompanionUpdate>) {
    let mut before = Vec::new();
    loop {
        let u = bounded(companion.next_update()).await.unwrap();
        if matches!(u, CompanionUpdate::Logout { .. }) {
            return (u, before);
        }
        before.push(u);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_link_the_fifth_is_refused_and_a_revocation_reaches_only_its_device() {
    let relay = start(test_limits()).await;
    let mut account = account(&relay, 1);
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut companions = Vec::new();
    for i in 0..4u64 {
        let mut c = companion(&relay, 100 + i, &format!("Laptop {i}")).await;
        let (cr, pr) = link(&relay, &mut primary, &mut account, &mut c, 200 + 10 * i).await;
        cr.unwrap();
        assert!(matches!(pr.unwrap(), LinkOutcome::Linked(_)));
        assert_eq!(c.session().unwrap().account(), account.account_id());
        companions.push(c);
    }
    assert_eq!(account.companion_count(relay.now()), 4);

    // The fifth: the primary's registry refuses, and the authenticated
    // Refusal travels through the relay to the companion.
    let mut fifth = companion(&relay, 150, "One too many").await;
    let (cr, pr) = link(&relay, &mut primary, &mut account, &mut fifth, 300).await;
    let limit = RefusalReason::DeviceLimitReached { limit: 4 };
    assert!(matches!(pr.unwrap(), LinkOutcome::Refused(r) if r == limit));
    match cr {
        Err(ClientError::Handshake(HandshakeError::Refused(r))) => assert_eq!(r, limit),
        other => panic!("the fifth companion was not told: {other:?}"),
    }

    // A heartbeat reaches everyone and keeps them linked.
    relay.clock.advance(Duration::from_secs(3600));
    let hb = account.heartbeat(relay.now());
    bounded(primary.publish_heartbeat(&hb)).await.unwrap();
    for c in &mut companions {
        let got = loop {
            match bounded(c.next_update()).await.unwrap() {
                CompanionUpdate::Heartbeat(status) => break status,
                // Lists published after later links, caught up on the way.
                CompanionUpdate::DeviceList(_) | CompanionUpdate::Ignored(_) => {}
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(got, SessionStatus::Linked { .. }));
    }

    // Revoke the third: its device hears it (the signed list and the
    // relay's logout); the others get the list and no logout.
    let victim = companions[2].session().unwrap().index();
    account.revoke(victim, relay.now()).unwrap();
    let started = tokio::time::Instant::now();
    bounded(primary.publish_list(account.device_list()))
        .await
        .unwrap();
    let (logout, before) = until_logout(&mut companions[2]).await;
    assert!(started.elapsed() < STEP);
    assert!(matches!(
        logout,
        CompanionUpdate::Logout { index, reason: LogoutReason::Revoked, status: SessionStatus::LoggedOut { reason: LogoutReason::Revoked } } if index == victim
    ));
    assert!(before.iter().any(|u| matches!(u, CompanionUpdate::DeviceList(ch) if ch.removed.iter().any(|d| d.entry.index == victim))));
    for (i, c) in companions.iter_mut().enumerate() {
        if i == 2 {
            continue;
        }
        let got = updates_within(c, Duration::from_millis(1_000)).await;
        assert!(
            got.iter()
                .any(|u| matches!(u, CompanionUpdate::DeviceList(_))),
            "companion {i} did not get the list: {got:?}"
        );
        assert!(
            !got.iter()
                .any(|u| matches!(u, CompanionUpdate::Logout { .. })),
            "companion {i} was logged out: {got:?}"
        );
        assert!(c.session().unwrap().is_linked(relay.now()));
    }
    let m = relay.metrics.render();
    assert!(
        m.contains("devicelink_messages_routed_total{kind=\"hello\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("devicelink_messages_routed_total{kind=\"refusal\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("devicelink_messages_routed_total{kind=\"confirm\"} 4"),
        "{m}"
    );
    let drained = relay.stop().await;
    assert!(drained.all_closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourteen_days_without_the_primary_log_everyone_out() {
    let relay = start(test_limits()).await;
    let mut account = account(&relay, 2);
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut companions = Vec::new();
    for i in 0..4u64 {
        let mut c = companion(&relay, 400 + i, &format!("Desktop {i}")).await;
        let (cr, pr) = link(&relay, &mut primary, &mut account, &mut c, 500 + 10 * i).await;
        cr.unwrap();
        assert!(matches!(pr.unwrap(), LinkOutcome::Linked(_)));
        companions.push(c);
    }
    // Thirteen days: nobody is logged out.
    relay.clock.advance(Duration::from_secs(13 * 86_400));
    for c in &mut companions {
        let got = updates_within(c, Duration::from_millis(200)).await;
        assert!(!got
            .iter()
            .any(|u| matches!(u, CompanionUpdate::Logout { .. })));
    }
    // Past fourteen: the sweeper pushes PrimaryOffline to every device, and
    // each session agrees from its own lease.
    relay.clock.advance(
        Policy::default().primary_offline_limit() - Duration::from_secs(13 * 86_400)
            + Duration::from_secs(1),
    );
    for c in &mut companions {
        let index = c.session().unwrap().index();
        let (logout, _) = until_logout(c).await;
        assert_eq!(
            logout,
            CompanionUpdate::Logout {
                index,
                reason: LogoutReason::PrimaryOffline,
                status: SessionStatus::LoggedOut {
                    reason: LogoutReason::PrimaryOffline
                }
            }
        );
    }
    assert!(relay.metrics.logouts_pushed() >= 4);
    // A heartbeat now revives nobody: the account settled (a new list
    // without its devices) and the relay refuses the heartbeat until that
    // list is published; the sessions stay logged out.
    let hb = account.heartbeat(relay.now());
    let err = bounded(primary.publish_heartbeat(&hb)).await.unwrap_err();
    assert!(
        matches!(err.kind(), Some(ErrorKind::Conflict | ErrorKind::Expired)),
        "{err}"
    );
    for c in &companions {
        assert!(!c.session().unwrap().is_linked(relay.now()));
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_hello_through_the_relay_never_stops_the_genuine_one() {
    let relay = start(test_limits()).await;
    let mut c = companion(&relay, 600, "Tablet").await;
    let text = c.offer_text().unwrap();
    let mut rc = rng(601);
    let link_task = async { c.link(&mut rc, |_| true).await.map(|s| s.index()) };

    let attack = async {
        let mut mallory = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
            .await
            .unwrap();
        let mut evil = account(&relay, 602);
        evil.open_link_intent(relay.now());
        let (_, hello) = evil.scan(&text, &mut rng(603), relay.now()).unwrap();
        // A flipped proof bit: the relay itself refuses (never forwarded).
        let mut bad_proof = hello.clone();
        bad_proof[HEADER_LEN] ^= 1;
        let err = bounded(mallory.send_raw_message(&bad_proof))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Unauthenticated), "{err}");
        // A flipped MAC bit: routed (the relay cannot check a MAC), refused
        // by the companion, which releases the token.
        let mut bad_mac = hello.clone();
        let last = bad_mac.len() - 1;
        bad_mac[last] ^= 1;
        assert_eq!(bad_mac[1], 1, "a Hello");
        bounded(mallory.send_raw_message(&bad_mac)).await.unwrap();
        bounded(async {
            while relay
                .metrics
                .render()
                .lines()
                .all(|l| l != "devicelink_tokens_released_total 1")
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        // Now the genuine primary.
        let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
            .await
            .unwrap();
        let mut genuine = account(&relay, 604);
        genuine.open_link_intent(relay.now());
        let out = primary
            .link(&mut genuine, &text, &mut rng(605), |_| true)
            .await
            .unwrap();
        (genuine.account_id(), out)
    };
    let (linked, (genuine, out)) = bounded(async { tokio::join!(link_task, attack) }).await;
    assert!(linked.is_ok(), "{linked:?}");
    assert!(matches!(out, LinkOutcome::Linked(_)));
    assert_eq!(c.session().unwrap().account(), genuine);
    assert_eq!(c.session().unwrap().index(), DeviceIndex(1));
    assert_eq!(relay.metrics.messages_routed(MessageKind::Hello), 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primaries_racing_one_qr_through_the_relay_link_exactly_once() {
    let relay = start(test_limits()).await;
    let mut primaries = Vec::new();
    for _ in 0..RACERS {
        primaries.push(
            bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
                .await
                .unwrap(),
        );
    }
    for round in 0..RACE_ROUNDS {
        let mut c = companion(&relay, 10_000 + round, "Raced").await;
        let text = c.offer_text().unwrap();
        let companion_task = tokio::spawn(async move {
            let r = c
                .link(&mut rng(20_000 + round), |_| true)
                .await
                .map(|s| s.account());
            (c, r)
        });
        let mut racers = Vec::new();
        for (i, mut p) in primaries.drain(..).enumerate() {
            let text = text.clone();
            let mut acct = account(&relay, 30_000 + round * 16 + i as u64);
            acct.open_link_intent(relay.now());
            racers.push(tokio::spawn(async move {
                let r = p
                    .link(
                        &mut acct,
                        &text,
                        &mut rng(40_000 + round * 16 + i as u64),
                        |_| true,
                    )
                    .await;
                (p, acct.account_id(), r)
            }));
        }
        let mut winners = Vec::new();
        for r in racers {
            let (p, id, result) = bounded(r).await.unwrap();
            primaries.push(p);
            match result {
                Ok(LinkOutcome::Linked(_)) => winners.push(id),
                Ok(other) => panic!("round {round}: {other:?}"),
                // A loser's phone is told plainly that another device took
                // the code it scanned.
                Err(e) => {
                    assert!(matches!(e, ClientError::OfferTaken), "round {round}: {e:?}");
                    assert_eq!(e.kind(), Some(ErrorKind::Conflict));
                    assert!(e.to_string().contains("already used by another device"));
                }
            }
        }
        let (c, linked_to) = bounded(companion_task).await.unwrap();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(linked_to.unwrap(), winners[0], "round {round}");
        c.close().await;
    }
    assert_eq!(
        relay.metrics.messages_routed(MessageKind::Confirm),
        RACE_ROUNDS
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_link_survives_a_restart_of_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = devicelink_relay::SqliteStore::open(&db).unwrap();
    let relay = start_with(store, listener, test_limits(), T0).await;
    let mut account = account(&relay, 8);
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut c = companion(&relay, 800, "Kept").await;
    let qr = c.offer_text().unwrap();
    let (cr, pr) = link(&relay, &mut primary, &mut account, &mut c, 801).await;
    cr.unwrap();
    assert!(matches!(pr.unwrap(), LinkOutcome::Linked(_)));
    let later = relay.now();
    primary.close().await;
    c.close().await;
    let drained = relay.stop().await;
    assert!(drained.all_closed, "{drained:?}");

    // A new relay on the same file: the account's list is there, and the
    // QR code redeemed before the restart stays redeemed.
    let store = devicelink_relay::SqliteStore::open(&db).unwrap();
    let record = devicelink_relay::Store::account(&store, &account.account_id())
        .unwrap()
        .unwrap();
    assert_eq!(record.facts.list_version(), account.device_list_version());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = start_with(store, listener, test_limits(), later).await;
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut other = common::account(&relay, 9);
    other.open_link_intent(relay.now());
    let (_, hello) = other.scan(&qr, &mut rng(802), relay.now()).unwrap();
    let err = bounded(primary.send_raw_message(&hello)).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Conflict), "{err}");
    // The directory was rebuilt: a heartbeat for the account applies.
    let hb = account.heartbeat(relay.now());
    bounded(primary.publish_heartbeat(&hb)).await.unwrap();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_companion_reconnects_after_a_restart_and_still_hears_its_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = devicelink_relay::SqliteStore::open(&db).unwrap();
    let relay = start_with(store, listener, test_limits(), T0).await;
    let mut account = account(&relay, 11);
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut c = companion(&relay, 1100, "Roaming").await;
    let (cr, pr) = link(&relay, &mut primary, &mut account, &mut c, 1101).await;
    cr.unwrap();
    assert!(matches!(pr.unwrap(), LinkOutcome::Linked(_)));
    let later = relay.now();
    relay.stop().await;
    // The companion hears the shutdown (702, then close 1001).
    loop {
        match bounded(c.next_update()).await {
            Ok(_) => {}
            Err(ClientError::Relay { code, .. }) => {
                assert_eq!(code, devicelink_relay::server::codes::SHUTTING_DOWN)
            }
            Err(ClientError::Closed { code }) => {
                assert_eq!(
                    code,
                    Some(devicelink_relay::server::codes::CLOSE_GOING_AWAY)
                );
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The relay comes back on the same address; both ends reconnect.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let store = devicelink_relay::SqliteStore::open(&db).unwrap();
    let relay = start_with(store, listener, test_limits(), later).await;
    let backoff = devicelink_relay::client::Backoff::default();
    bounded(c.reconnect(&relay.base, &backoff)).await.unwrap();
    bounded(primary.reconnect(&relay.base, &backoff))
        .await
        .unwrap();
    let index = c.session().unwrap().index();
    account.revoke(index, relay.now()).unwrap();
    bounded(primary.publish_list(account.device_list()))
        .await
        .unwrap();
    let (logout, _) = until_logout(&mut c).await;
    assert!(matches!(
        logout,
        CompanionUpdate::Logout {
            reason: LogoutReason::Revoked,
            ..
        }
    ));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_offer_is_registered_again() {
    let relay = start(test_limits()).await;
    let mut c = companion(&relay, 1300, "Slow scanner").await;
    let first = c.offer_text().unwrap();
    let waiting = tokio::spawn(async move {
        let r = c.link(&mut rng(1301), |_| true).await.map(|_| ());
        (c, r)
    });
    // Past the first offer's 60 s: the companion rotates and registers the
    // new token; the old QR code no longer reaches it.
    relay
        .clock
        .advance(Policy::default().first_offer_lifetime() + Duration::from_secs(1));
    bounded(async {
        while !relay
            .metrics
            .render()
            .lines()
            .any(|l| l == "devicelink_tokens_registered_total 2")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut stale = account(&relay, 1302);
    stale.open_link_intent(relay.now());
    let (_, hello) = stale.scan(&first, &mut rng(1303), relay.now()).unwrap();
    let err = bounded(primary.send_raw_message(&hello)).await.unwrap_err();
    // Expired, or already swept (unknown).
    assert!(
        matches!(err.kind(), Some(ErrorKind::Expired | ErrorKind::Unexpected)),
        "{err}"
    );
    waiting.abort();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_resumes_on_a_new_connection_and_gets_the_hello_sent_while_it_was_away() {
    use devicelink::handshake::MessageKind;
    use devicelink_relay::{ClientSecret, Frame};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let relay = start(test_limits()).await;
    // The companion's first connection: identifies, registers its token,
    // and drops (a network change).
    let mut r = rng(1400);
    let identity = DeviceIdentity::generate(&mut r);
    let companion = Companion::new(
        identity,
        DeviceLabel::new("Train wifi").unwrap(),
        &Policy::default(),
        &mut r,
        relay.now(),
    );
    let text = companion.offer().unwrap().to_text();
    let secret = ClientSecret::generate(&mut r);
    {
        let (mut ws, _) = bounded(tokio_tungstenite::connect_async(format!(
            "{}/v1/companion",
            relay.base
        )))
        .await
        .unwrap();
        for frame in [
            Frame::Identify {
                secret: secret.clone(),
            },
            Frame::Register {
                token_id: companion.offer().unwrap().token_id(),
                expires_at: companion.next_deadline().unwrap(),
            },
        ] {
            bounded(ws.send(Message::binary(frame.encode())))
                .await
                .unwrap();
            let answer = bounded(ws.next()).await.unwrap().unwrap().into_data();
            assert!(matches!(Frame::decode(&answer), Ok(Frame::Ack { .. })));
        }
        bounded(ws.close(None)).await.unwrap();
    }
    bounded(async {
        while relay.metrics.connections_open() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The phone scans now: its Hello is routed into the away companion's
    // mailbox (the sender hears Routed, not "not connected").
    let mut account = account(&relay, 1401);
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    account.open_link_intent(relay.now());
    let mut rp = rng(1402);
    let phone = tokio::spawn(async move {
        let r = primary.link(&mut account, &text, &mut rp, |_| true).await;
        (r, account)
    });
    bounded(async {
        while relay.metrics.mailbox_posted() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(relay.metrics.messages_routed(MessageKind::Hello), 1);
    // The companion comes back as the same client: its token is still its
    // own, the Hello is delivered, and the link completes.
    let mut c = bounded(CompanionClient::connect_as(
        &relay.base,
        companion,
        secret,
        relay.clock.clone(),
    ))
    .await
    .unwrap();
    let session = bounded(c.link(&mut rng(1403), |_| true))
        .await
        .unwrap()
        .clone();
    let (outcome, account) = bounded(phone).await.unwrap();
    assert!(matches!(outcome.unwrap(), LinkOutcome::Linked(_)));
    assert_eq!(session.account(), account.account_id());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_need_the_devices_proof_for_this_client() {
    use devicelink::relay::SubscriptionProof;
    use devicelink_relay::server::codes;
    use devicelink_relay::{ClientSecret, Frame, FrameType};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let relay = start(test_limits()).await;
    let mut account = account(&relay, 15);
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut c = companion(&relay, 1500, "Laptop").await;
    let (cr, pr) = link(&relay, &mut primary, &mut account, &mut c, 1501).await;
    cr.unwrap();
    pr.unwrap();
    let session = c.session().unwrap().clone();
    let other = {
        let mut d = companion(&relay, 1502, "Tablet").await;
        let (dr, pr) = link(&relay, &mut primary, &mut account, &mut d, 1503).await;
        dr.unwrap();
        pr.unwrap();
        d.session().unwrap().clone()
    };

    // Someone who knows the account id and the index, from another client.
    let stranger = ClientSecret::from_bytes([0x55; 32]);
    let (mut ws, _) = bounded(tokio_tungstenite::connect_async(format!(
        "{}/v1/companion",
        relay.base
    )))
    .await
    .unwrap();
    let ask = async |ws: &mut tokio_tungstenite::WebSocketStream<_>, frame: Frame<'_>| -> Vec<u8> {
        bounded(ws.send(Message::binary(frame.encode())))
            .await
            .unwrap();
        loop {
            let m = bounded(ws.next()).await.unwrap().unwrap();
            if let Message::Binary(b) = m {
                return b.to_vec();
            }
        }
    };
    let ack = ask(
        &mut ws,
        Frame::Identify {
            secret: stranger.clone(),
        },
    )
    .await;
    assert!(matches!(
        Frame::decode(&ack),
        Ok(Frame::Ack {
            of: FrameType::Identify,
            ..
        })
    ));
    let unauthenticated = codes::core_code(devicelink::ErrorKind::Unauthenticated);
    for (why, proof) in [
        // The device's genuine proof, captured, but for another client id.
        (
            "replayed",
            SubscriptionProof::sign(&session, c.secret().client_id()).unwrap(),
        ),
        // Another device's proof for this client, at this index.
        (
            "other device",
            SubscriptionProof::sign(&other, stranger.client_id()).unwrap(),
        ),
        ("garbage", SubscriptionProof::from_bytes([1; 64])),
    ] {
        let answer = ask(
            &mut ws,
            Frame::Subscribe {
                account: session.account(),
                index: session.index(),
                proof,
                after: None,
            },
        )
        .await;
        match Frame::decode(&answer) {
            Ok(Frame::Error { code, .. }) => assert_eq!(code, unauthenticated, "{why}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // Nothing reaches the stranger: a revocation goes to the device alone.
    account.revoke(session.index(), relay.now()).unwrap();
    bounded(primary.publish_list(account.device_list()))
        .await
        .unwrap();
    let (logout, _) = until_logout(&mut c).await;
    assert!(matches!(logout, CompanionUpdate::Logout { .. }));
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(
        !matches!(quiet, Ok(Some(Ok(Message::Binary(_))))),
        "{quiet:?}"
    );
    // Logged out: the client does not reconnect.
    let backoff = devicelink_relay::client::Backoff::default();
    assert!(matches!(
        c.reconnect(&relay.base, &backoff).await,
        Err(ClientError::LoggedOut {
            reason: LogoutReason::Revoked
        })
    ));
    relay.stop().await;
}

/// Protocol v2.1: a companion that subscribes naming the list version it
/// holds gets every newer version the relay keeps, in order (so a session
/// that saw a fork, and must chain, can catch up after being away); without
/// it, only the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_after_a_version_gets_every_newer_list_in_order() {
    use devicelink::relay::SubscriptionProof;
    use devicelink_relay::{ClientSecret, Frame};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let relay = start(test_limits()).await;
    let mut primary = bounded(PrimaryClient::connect(&relay.base, relay.clock.clone()))
        .await
        .unwrap();
    let mut account = account(&relay, 1600);
    let mut c = companion(&relay, 1601, "Laptop").await;
    let (cr, pr) = link(&relay, &mut primary, &mut account, &mut c, 1602).await;
    cr.unwrap();
    pr.unwrap();
    let session = c.session().unwrap().clone();
    let held = session.device_list().version();
    // While this copy is away, the account changes several times.
    for seed in [1603, 1605] {
        let mut d = companion(&relay, seed, "Other").await;
        let (dr, pr) = link(&relay, &mut primary, &mut account, &mut d, seed + 1).await;
        dr.unwrap();
        pr.unwrap();
    }
    let newest = account.device_list_version();
    assert!(newest >= held + 2, "{held} → {newest}");

    for after in [Some(held), None] {
        let secret = ClientSecret::from_bytes([0x66; 32]);
        let (mut ws, _) = bounded(tokio_tungstenite::connect_async(format!(
            "{}/v1/companion",
            relay.base
        )))
        .await
        .unwrap();
        let mut lists = Vec::new();
        for frame in [
            Frame::Identify {
                secret: secret.clone(),
            },
            Frame::Subscribe {
                account: session.account(),
                index: session.index(),
                proof: SubscriptionProof::sign(&session, secret.client_id()).unwrap(),
                after,
            },
        ] {
            bounded(ws.send(Message::binary(frame.encode())))
                .await
                .unwrap();
        }
        // Two Acks, then the lists (until the relay goes quiet).
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            let Ok(Some(Ok(Message::Binary(b)))) = next else {
                break;
            };
            if let Ok(Frame::PublishList { bytes }) = Frame::decode(&b) {
                lists.push(devicelink::SignedDeviceList::from_bytes(bytes).unwrap());
            }
        }
        let versions: Vec<u64> = lists.iter().map(|l| l.version()).collect();
        match after {
            Some(v) => {
                assert_eq!(versions, ((v + 1)..=newest).collect::<Vec<_>>());
                // They chain onto the held list, one by one.
                let mut copy = session.clone();
                for l in &lists {
                    copy.accept_device_list(l, relay.now()).unwrap();
                }
                assert_eq!(copy.device_list().version(), newest);
            }
            None => assert_eq!(versions, [newest]),
        }
        let _ = ws.close(None).await;
    }
    relay.stop().await;
}
