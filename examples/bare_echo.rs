//! The cheapest server the load generator can talk to, as a baseline for BENCHMARKS.md: a bare
//! WebSocket server (same axum/tungstenite stack) that answers the hello, counts uplink frames
//! after `listen start` without decoding them, and after a fixed number of frames echoes the
//! first `--speech-frames` back paced at 60 ms between `tts start` and `tts stop`. No VAD, no
//! Opus, no database, no storage: what is left is the cost of sockets and timers.
//!
//!   cargo run --release --example bare_echo -- 127.0.0.1:8100 22 10

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8100".into());
    let speech: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(22);
    let silence: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let app = Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .fallback(move |ws: WebSocketUpgrade| async move { upgrade(ws, speech, silence) });
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("bare echo on {listen}: replies after {speech}+{silence} frames");
    axum::serve(listener, app).await.expect("serve");
}

fn upgrade(ws: WebSocketUpgrade, speech: usize, silence: usize) -> Response {
    ws.on_upgrade(move |socket| session(socket, speech, silence))
}

async fn session(socket: WebSocket, speech: usize, silence: usize) {
    let (mut tx, mut rx) = socket.split();
    let mut frames: Vec<bytes::Bytes> = Vec::new();
    let mut counting = false;
    while let Some(Ok(msg)) = rx.next().await {
        match msg {
            Message::Text(t) if t.contains("\"hello\"") => {
                let hello = r#"{"type":"hello","transport":"websocket","session_id":"00000000-0000-4000-8000-000000000000","audio_params":{"format":"opus","sample_rate":24000,"channels":1,"frame_duration":60}}"#;
                if tx.send(Message::Text(hello.into())).await.is_err() {
                    return;
                }
            }
            Message::Text(t) if t.contains("\"listen\"") && t.contains("\"start\"") => {
                frames.clear();
                counting = true;
            }
            Message::Binary(b) if counting => {
                frames.push(b);
                if frames.len() == speech + silence {
                    counting = false;
                    let reply: Vec<_> = frames.drain(..speech).collect();
                    let _ = tx.send(Message::Text(r#"{"type":"tts","state":"start"}"#.into())).await;
                    let mut tick = tokio::time::interval(Duration::from_millis(60));
                    for p in reply {
                        tick.tick().await;
                        if tx.send(Message::Binary(p)).await.is_err() {
                            return;
                        }
                    }
                    tick.tick().await;
                    let _ = tx.send(Message::Text(r#"{"type":"tts","state":"stop"}"#.into())).await;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// Just the two process figures the load generator reads.
async fn metrics() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15 of /proc/self/stat (12 and 13 after the comm).
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let rss_pages: f64 = fields.get(21).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    format!(
        "process_cpu_seconds_total {}\nprocess_resident_memory_bytes {}\n",
        ticks / 100.0,
        rss_pages * 4096.0
    )
}
