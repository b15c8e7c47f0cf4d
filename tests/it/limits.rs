//! Rate limits and admission, measured from outside: what a flood of upgrades or OTA calls
//! from one address, or a reconnect storm from many devices, gets back (429 / 503 with
//! `Retry-After`), what `/metrics` counts, that another address and a live session carry on,
//! and that a client sending its request slowly (slow-loris) is cut off.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use xiaozhi_gateway::config::Settings;

use crate::helpers::*;

/// What an upgrade attempt got: the status and the `Retry-After` header, if any.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
}

/// A TCP connection to the gateway from `from` (any loopback address works on Linux).
async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// One WebSocket upgrade as a device would ask for it, from `from`; the socket is dropped
/// right after the answer.
async fn upgrade_from(app: &TestApp, from: IpAddr) -> Answer {
    let mut req = app.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("device-id", fresh_device_id().parse().unwrap());
    req.headers_mut().insert("client-id", uuid::Uuid::new_v4().to_string().parse().unwrap());
    let stream = tcp_from(from, app.addr).await;
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((_ws, resp)) => Answer { status: resp.status().as_u16(), retry_after: None },
        Err(tungstenite::Error::Http(resp)) => Answer {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// The value of one sample in the `/metrics` text.
async fn metric(app: &TestApp, name_and_labels: &str) -> f64 {
    let text = reqwest::get(app.http_url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics:\n{text}"))
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_beyond_an_address_rate_get_429_with_retry_after() {
    let app = spawn_app_with(|s: &mut Settings| s.limits.upgrades_per_sec = 2).await;
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(upgrade_from(&app, loopback(1)).await);
    }
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let admitted = answers.iter().filter(|a| a.status == 101).count();
    assert_eq!(refused.len() + admitted, answers.len(), "only 101 and 429: {answers:?}");
    assert!(admitted >= 2, "the burst of 2 is admitted: {answers:?}");
    assert!(!refused.is_empty(), "12 upgrades at once from one address: some are refused: {answers:?}");
    assert!(
        refused.iter().all(|a| a.retry_after.is_some_and(|s| s >= 1)),
        "Retry-After on every 429: {answers:?}"
    );
    // Another address has its own allowance.
    assert_eq!(upgrade_from(&app, loopback(2)).await.status, 101);
    assert_eq!(
        metric(&app, "xiaozhi_limited_total{limit=\"upgrades_per_address\"}").await,
        refused.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_calls_beyond_an_address_rate_get_429_with_retry_after() {
    let app = spawn_app_with(|s: &mut Settings| s.limits.ota_per_sec = 2).await;
    let client = |from: IpAddr| reqwest::Client::builder().local_address(from).build().unwrap();
    let ota = |c: reqwest::Client| {
        let url = app.http_url("/xiaozhi/ota/");
        async move { c.post(url).header("Device-Id", fresh_device_id()).body("{}").send().await.unwrap() }
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..10 {
        let resp = ota(client(loopback(1))).await;
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                let secs: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(secs >= 1);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", resp.text().await.unwrap_or_default()),
        }
    }
    assert!(ok >= 2 && refused > 0, "{ok} answered, {refused} refused");
    assert_eq!(ota(client(loopback(3))).await.status(), 200, "another address is not limited");
    assert_eq!(metric(&app, "xiaozhi_limited_total{limit=\"ota_per_address\"}").await, f64::from(refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_admitted_at_its_pace_and_live_sessions_carry_on() {
    let app = spawn_app_with(|s: &mut Settings| {
        s.limits.upgrades_per_sec = 0;
        s.limits.new_sessions_per_sec = 3;
    })
    .await;
    let mut live = app.connect().await;
    // A storm: 40 devices from 40 addresses at once.
    let storm = (0..40u8).map(|i| {
        let app = &app;
        async move { upgrade_from(app, loopback(10 + i)).await }
    });
    let answers = futures_util::future::join_all(storm).await;
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let admitted = answers.iter().filter(|a| a.status == 101).count();
    assert_eq!(refused.len() + admitted, answers.len(), "only 101 and 503: {answers:?}");
    assert!(!refused.is_empty() && admitted >= 1, "{admitted} admitted, {} refused", refused.len());
    assert!(
        refused.iter().all(|a| a.retry_after.is_some_and(|s| s >= 1)),
        "Retry-After on every 503: {answers:?}"
    );
    assert_eq!(metric(&app, "xiaozhi_limited_total{limit=\"new_sessions\"}").await, refused.len() as f64);
    // The session that was already there is answered as before.
    let reply = auto_turn(&mut live).await;
    assert!(!reply.frames.is_empty(), "the live session still gets its reply");
}

/// Reads what the gateway sends until it closes the connection (or `limit` passes: a hang).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway kept a stalled request open for {limit:?}; got {got:?}");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_headers_never_end_is_cut_off() {
    let app = spawn_app_with(|s: &mut Settings| s.limits.header_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ").await.unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    assert!(!got.contains("200 OK"), "{got}");
    // The listener still serves everyone else.
    assert_eq!(reqwest::get(app.http_url("/healthz")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_answered_with_an_error() {
    let app = spawn_app_with(|s: &mut Settings| s.limits.body_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /xiaozhi/ota/ HTTP/1.1\r\nHost: gateway\r\nDevice-Id: aa:bb:cc:dd:ee:ff\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"app",
        )
        .await
        .unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(15)).await;
    let status = got.lines().next().unwrap_or("");
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 4"), "a stalled body is refused: {got}");
    assert!(!got.contains("websocket"), "no OTA answer for half a body: {got}");
}
