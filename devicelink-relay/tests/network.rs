//! The relay on a public address, below the frames: connections counted per
//! address at accept (before HTTP), half-open requests and idle keep-alive
//! connections closed by hyper's timer, every route behind a per-address
//! request rate, client addresses believed from trusted proxies only (PROXY
//! protocol v1 and v2, X-Forwarded-For), IPv6 counted by /64, and TLS in
//! the binary with its certificate read again on SIGHUP. Each attack from
//! its own loopback address while another address is served.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use devicelink::TokenId;
use devicelink_relay::server::{AllowedOrigins, Limits, Network, Tls, TrustedProxies};
use devicelink_relay::{Frame, FrameType};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Reads what the server sends until it closes (or `wait` passes).
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(wait, s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// One request on a connection of its own; the response's head and body.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, head: &str) -> String {
    bounded(s.write_all(head.as_bytes())).await.unwrap();
    read_until_closed(&mut s, STEP).await.expect("no answer")
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: relay\r\n{extra}Connection: close\r\n\r\n")
}

fn post(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: relay\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn half_open_requests_and_idle_connections_are_closed_by_the_timer() {
    let relay = start(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    // Half a request, then nothing: closed at the header timeout.
    let mut half = tcp_from(&relay, "127.0.0.40").await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: re")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(read_until_closed(&mut half, Duration::from_secs(5))
        .await
        .is_some());
    assert!(started.elapsed() < Duration::from_secs(3));
    // Nothing at all: the same.
    let mut silent = tcp_from(&relay, "127.0.0.40").await.unwrap();
    assert!(read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .is_some());
    // A keep-alive connection after its answer, idle: closed too.
    let mut idle = tcp_from(&relay, "127.0.0.40").await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    relay.stop().await;
}

#[tokio::test]
async fn connections_are_counted_per_address_before_http() {
    let relay = start(Limits {
        max_http_connections_per_address: 5,
        header_read_timeout: Duration::from_secs(30),
        ..test_limits()
    })
    .await;
    // Five half-open requests from one address hold its five.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = tcp_from(&relay, "127.0.0.41").await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // The sixth is answered 429 at once, before its request is read.
    let sixth = tcp_from(&relay, "127.0.0.41").await.unwrap();
    let answer = request(sixth, &get("/healthz", "")).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // Another address is served.
    let other = tcp_from(&relay, "127.0.0.42").await.unwrap();
    let answer = request(other, &get("/healthz", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(relay.metrics.connections_refused_by_address() >= 1);
    drop(held);
    relay.stop().await;
}

#[tokio::test]
async fn every_route_is_behind_the_per_address_request_rate() {
    let relay = start(Limits {
        request_rate_per_address: 1,
        request_burst_per_address: 3,
        ..test_limits()
    })
    .await;
    let mut codes = Vec::new();
    for path in ["/healthz", "/", "/app.js", "/healthz"] {
        let s = tcp_from(&relay, "127.0.0.43").await.unwrap();
        let answer = request(s, &get(path, "")).await;
        codes.push(answer[9..12].to_owned());
    }
    assert_eq!(codes, ["200", "200", "200", "429"]);
    // A long-poll poll from that address is refused the same way.
    let s = tcp_from(&relay, "127.0.0.43").await.unwrap();
    let answer = request(s, &get("/v1/poll/session/00", "")).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    let s = tcp_from(&relay, "127.0.0.44").await.unwrap();
    assert!(request(s, &get("/healthz", ""))
        .await
        .starts_with("HTTP/1.1 200"));
    // On a keep-alive connection, the refusal closes it: a flood of
    // requests becomes a flood of connections, which the connection rate
    // refuses at accept.
    let mut s = tcp_from(&relay, "127.0.0.45").await.unwrap();
    let mut answers = String::new();
    for _ in 0..4 {
        let keep_alive = "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n";
        if s.write_all(keep_alive.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(text) = read_until_closed(&mut s, Duration::from_secs(5)).await {
        answers.push_str(&text);
    }
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 429").count(), 1, "{answers}");
    assert!(
        answers.to_ascii_lowercase().contains("connection: close"),
        "{answers}"
    );
    assert!(relay.metrics.requests_refused_by_address() >= 3);
    relay.stop().await;
}

fn proxied(proxies: &str) -> Network {
    Network {
        trusted_proxies: TrustedProxies::parse([proxies]).unwrap(),
        ..Network::default()
    }
}

#[tokio::test]
async fn forwarded_for_is_believed_from_a_trusted_proxy_only() {
    // One session per address; 127.0.0.50 is the trusted proxy.
    let relay = start_network(
        Limits {
            max_connections_per_address: 1,
            ..test_limits()
        },
        proxied("127.0.0.50/32"),
    )
    .await;
    let open = |from: &'static str, xff: &'static str| {
        let relay = &relay;
        async move {
            let s = tcp_from(relay, from).await.unwrap();
            let extra = if xff.is_empty() {
                String::new()
            } else {
                format!("X-Forwarded-For: {xff}\r\n")
            };
            request(s, &post("/v1/poll/companion", &extra)).await[9..12].to_owned()
        }
    };
    // Two clients behind the proxy: a session each.
    assert_eq!(open("127.0.0.50", "198.51.100.1").await, "201");
    assert_eq!(open("127.0.0.50", "198.51.100.2").await, "201");
    // The same client again: its address's one session is held.
    assert_eq!(open("127.0.0.50", "198.51.100.1").await, "429");
    // A client that writes the header itself, through the proxy (which
    // appends what it saw): the proxy's entry counts.
    assert_eq!(open("127.0.0.50", "10.9.9.9, 198.51.100.2").await, "429");
    // From anyone else the header is ignored: the peer counts.
    assert_eq!(open("127.0.0.51", "198.51.100.3").await, "201");
    assert_eq!(open("127.0.0.51", "198.51.100.4").await, "429");
    relay.stop().await;
}

fn v2_header(src: std::net::IpAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match src {
        std::net::IpAddr::V4(a) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&a.octets());
            h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
        }
        std::net::IpAddr::V6(a) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&a.octets());
            h.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            h.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        }
    }
    h
}

#[tokio::test]
async fn proxy_protocol_headers_name_the_client_and_ipv6_counts_by_64() {
    // One TCP connection per address; 127.0.0.60 is the trusted proxy.
    let relay = start_network(
        Limits {
            max_http_connections_per_address: 1,
            header_read_timeout: Duration::from_secs(30),
            ..test_limits()
        },
        proxied("127.0.0.60"),
    )
    .await;
    async fn held_open(relay: &TestRelay, header: &[u8]) -> tokio::net::TcpStream {
        let mut s = tcp_from(relay, "127.0.0.60").await.unwrap();
        s.write_all(header).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        s
    }
    async fn one_more(relay: &TestRelay, header: &[u8]) -> String {
        let mut s = tcp_from(relay, "127.0.0.60").await.unwrap();
        s.write_all(header).await.unwrap();
        let answer = request(s, &get("/healthz", "")).await;
        answer[9..12].to_owned()
    }
    // v1: a client's connection held; its second is refused; another
    // client's is served.
    let a = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n";
    let _held = held_open(&relay, a).await;
    assert_eq!(one_more(&relay, a).await, "429");
    assert_eq!(
        one_more(&relay, b"PROXY TCP4 203.0.113.8 127.0.0.1 40000 8080\r\n").await,
        "200"
    );
    // v2, IPv6: one /64 is one source, whatever the interface id.
    let one: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let _held6 = held_open(&relay, &v2_header(one)).await;
    assert_eq!(
        one_more(&relay, &v2_header("2001:db8:1:2:abcd::9".parse().unwrap())).await,
        "429"
    );
    assert_eq!(
        one_more(&relay, &v2_header("2001:db8:1:3::1".parse().unwrap())).await,
        "200"
    );
    // A malformed header from the trusted proxy: closed, no answer.
    let mut bad = tcp_from(&relay, "127.0.0.60").await.unwrap();
    bad.write_all(b"PROXY TCP4 nonsense\r\n").await.unwrap();
    assert_eq!(read_until_closed(&mut bad, STEP).await.as_deref(), Some(""));
    // A PROXY header from anyone else is not believed: it is bad HTTP.
    let s = tcp_from(&relay, "127.0.0.61").await.unwrap();
    let answer = request(
        s,
        &format!(
            "PROXY TCP4 203.0.113.9 127.0.0.1 1 2\r\n{}",
            get("/healthz", "")
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    relay.stop().await;
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it: the
/// CA's DER, the leaf's PEM chain, its key's PEM.
fn tls_material() -> (CertificateDer<'static>, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.der().clone(), leaf.pem(), key.serialize_pem())
}

fn connector(ca: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_to(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = bounded(tokio::net::TcpStream::connect(addr)).await.unwrap();
    bounded(connector(ca).connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .unwrap()
}

#[tokio::test]
async fn tls_in_the_relay_serves_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_material();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let tls = Tls::from_pem_files(dir.path().join("cert.pem"), dir.path().join("key.pem")).unwrap();
    let relay = start_network(
        test_limits(),
        Network {
            tls: Some(tls),
            ..Network::default()
        },
    )
    .await;
    // The page over https.
    let page = request(tls_to(relay.addr, &ca).await, &get("/", "")).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("devicelink"), "{page}");
    // A companion over wss: Register, Ack.
    let stream = tls_to(relay.addr, &ca).await;
    let (mut ws, _) = bounded(tokio_tungstenite::client_async(
        format!("wss://localhost:{}/v1/companion", relay.addr.port()),
        stream,
    ))
    .await
    .unwrap();
    let register = Frame::Register {
        token_id: TokenId::from_bytes([5; 16]),
        expires_at: relay.now().saturating_add(Duration::from_secs(30)),
    };
    ws.send(Message::binary(register.encode())).await.unwrap();
    let answer = loop {
        match bounded(ws.next()).await {
            Some(Ok(Message::Binary(b))) => break b.to_vec(),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        Frame::decode(&answer),
        Ok(Frame::Ack {
            of: FrameType::Register,
            changed: true
        })
    );
    // Plain HTTP on the TLS port: no answer, closed.
    let mut plain = tcp_from(&relay, "127.0.0.1").await.unwrap();
    plain
        .write_all(get("/healthz", "").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut plain, STEP)
        .await
        .unwrap_or_default();
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    relay.stop().await;
}

/// The binary with `--tls-cert`/`--tls-key` reads its certificate again on
/// SIGHUP: new connections get the new one.
#[tokio::test]
async fn the_binary_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (ca1, cert1, key1) = tls_material();
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_devicelink-relay"))
        .args(["--listen", "127.0.0.1:0", "--memory", "--tls-cert"])
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("wss://127.0.0.1:"), "{line}");
    assert!(line.contains("https://127.0.0.1:"), "{line}");
    let addr: std::net::SocketAddr = line
        .split("wss://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let healthz = |ca: CertificateDer<'static>| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        match connector(&ca)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            Ok(s) => request(s, &get("/healthz", ""))
                .await
                .starts_with("HTTP/1.1 200"),
            Err(_) => false,
        }
    };
    assert!(healthz(ca1.clone()).await);
    let (ca2, cert2, key2) = tls_material();
    assert!(
        !healthz(ca2.clone()).await,
        "the second CA is not trusted yet"
    );
    std::fs::write(&cert_path, &cert2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    bounded(async {
        while !healthz(ca2.clone()).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        !healthz(ca1).await,
        "new handshakes get the new certificate"
    );
    // A broken pair: the reload fails, the certificate in use stays.
    std::fs::write(&key_path, &key1).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(healthz(ca2).await);
    let _ = child.kill();
    let _ = child.wait();
}

/// The status line of a WebSocket handshake to `/v1/companion` sent from
/// `from` with `origin` (none: a native client).
async fn upgrade_status(relay: &TestRelay, from: &str, origin: Option<&str>) -> String {
    let mut s = tcp_from(relay, from).await.unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /v1/companion HTTP/1.1\r\nHost: relay\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    bounded(s.write_all(head.as_bytes())).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = bounded(s.read(&mut buf)).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused_and_configured_ones_served() {
    let relay = start_network(
        test_limits(),
        Network {
            allowed_origins: AllowedOrigins::parse(["https://static.example.org"]).unwrap(),
            ..Network::default()
        },
    )
    .await;
    // A page on another site cannot drive a visitor's browser at the relay.
    let evil = upgrade_status(&relay, "127.0.0.60", Some("https://evil.example")).await;
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    let evil_poll = request(
        tcp_from(&relay, "127.0.0.61").await.unwrap(),
        &post("/v1/poll/companion", "Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(evil_poll.starts_with("HTTP/1.1 403"), "{evil_poll}");
    // The configured static origin, the relay's own page and native
    // clients (no Origin) are served.
    for (from, origin) in [
        ("127.0.0.62", Some("https://static.example.org")),
        ("127.0.0.63", Some("http://relay")),
        ("127.0.0.64", None),
    ] {
        let status = upgrade_status(&relay, from, origin).await;
        assert!(status.starts_with("HTTP/1.1 101"), "{origin:?}: {status}");
    }
    // The long-poll routes answer CORS for the static origin (preflight).
    let preflight = request(
        tcp_from(&relay, "127.0.0.65").await.unwrap(),
        "OPTIONS /v1/poll/companion HTTP/1.1\r\nHost: relay\r\nOrigin: https://static.example.org\r\n\
         Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(preflight.starts_with("HTTP/1.1 200"), "{preflight}");
    assert!(
        preflight
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://static.example.org"),
        "{preflight}"
    );
    relay.stop().await;
}
