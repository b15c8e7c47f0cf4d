//! A simulated device built on `firmware-protocol`: connects the way firmware does (headers,
//! hello, binary framing of the negotiated version) and reports what the gateway sends. The
//! integration tests and the load generator drive the gateway through it.

use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::frame::{self, ProtocolVersion};
use firmware_protocol::{
    AbortMessage, ClientHello, ClientMessage, ListenMessage, ListenMode, ListenState, ServerHello,
    ServerMessage,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a simulated device identifies itself.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Full WebSocket URL (query string included, for browser-style credentials).
    pub url: String,
    pub device_id: Option<String>,
    pub client_id: Option<String>,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub version: ProtocolVersion,
    /// Whether to send the `Protocol-Version` header (firmware does; browsers cannot).
    pub version_header: bool,
    /// The hello to send; `None` sends the firmware hello for `version`.
    pub hello: Option<ClientHello>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

impl DeviceConfig {
    pub fn new(url: impl Into<String>, device_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            device_id: Some(device_id.into()),
            client_id: Some(uuid::Uuid::new_v4().to_string()),
            token: None,
            version: ProtocolVersion::V1,
            version_header: true,
            hello: None,
            headers: Vec::new(),
        }
    }
}

/// Why a connection or exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upgrade refused with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("WebSocket error: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("bad request: {0}")]
    Request(String),
    #[error("the gateway closed the connection ({0:?})")]
    Closed(Option<(u16, String)>),
    #[error("protocol violation by the gateway: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// Something the gateway sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Json(ServerMessage),
    /// One downlink Opus packet (header removed) and when it arrived.
    Audio {
        payload: Bytes,
        at: Instant,
    },
    /// A Close frame (code, reason), or the connection ending without one.
    Closed(Option<(u16, String)>),
}

/// The sending half of a device.
pub struct DeviceSender {
    sink: SplitSink<Ws, Message>,
    version: ProtocolVersion,
    session_id: String,
}

/// The receiving half of a device.
pub struct DeviceReceiver {
    stream: SplitStream<Ws>,
    version: ProtocolVersion,
}

/// A connected device that has exchanged hellos.
pub struct DeviceClient {
    pub tx: DeviceSender,
    pub rx: DeviceReceiver,
    pub server_hello: ServerHello,
}

/// Opens the WebSocket without sending anything (for handshake tests).
pub async fn connect_raw(
    cfg: &DeviceConfig,
) -> Result<(Ws, tungstenite::http::Response<Option<Vec<u8>>>), ClientError> {
    let mut req = cfg.url.as_str().into_client_request().map_err(|e| ClientError::Request(e.to_string()))?;
    let h = req.headers_mut();
    let mut put = |name: &str, value: &str| -> Result<(), ClientError> {
        let v = HeaderValue::from_str(value).map_err(|e| ClientError::Request(e.to_string()))?;
        h.insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ClientError::Request(e.to_string()))?,
            v,
        );
        Ok(())
    };
    if let Some(d) = &cfg.device_id {
        put("Device-Id", d)?;
    }
    if let Some(c) = &cfg.client_id {
        put("Client-Id", c)?;
    }
    if let Some(t) = &cfg.token {
        put("Authorization", &format!("Bearer {t}"))?;
    }
    if cfg.version_header {
        put("Protocol-Version", &cfg.version.number().to_string())?;
    }
    for (k, v) in &cfg.headers {
        put(k, v)?;
    }
    // Like firmware, send each message at once (no Nagle delay on small control messages).
    match tokio_tungstenite::connect_async_with_config(req, None, true).await {
        Ok(pair) => Ok(pair),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            Err(ClientError::Refused { status, body })
        }
        Err(e) => Err(e.into()),
    }
}

impl DeviceClient {
    /// Connects, sends the hello and waits (up to 10 s, as firmware does) for the server's.
    pub async fn connect(cfg: &DeviceConfig) -> Result<Self, ClientError> {
        Self::connect_timed(cfg).await.map(|(c, _)| c)
    }

    /// As [`DeviceClient::connect`], also returning when the upgrade completed (the hello
    /// exchange took the rest of the time).
    pub async fn connect_timed(cfg: &DeviceConfig) -> Result<(Self, Instant), ClientError> {
        let (ws, _) = connect_raw(cfg).await?;
        let upgraded = Instant::now();
        let (mut sink, stream) = ws.split();
        let hello = cfg.hello.clone().unwrap_or_else(|| ClientHello::firmware(cfg.version.number()));
        sink.send(Message::Text(ClientMessage::Hello(hello).to_json().into())).await?;
        let mut rx = DeviceReceiver { stream, version: cfg.version };
        // Firmware waits 10 s for the server hello, and nothing may come before it.
        let server_hello = match tokio::time::timeout(Duration::from_secs(10), rx.next_event()).await {
            Err(_) => return Err(ClientError::Timeout("server hello")),
            Ok(Ok(Event::Json(ServerMessage::Hello(h)))) => h,
            Ok(Ok(Event::Closed(c))) => return Err(ClientError::Closed(c)),
            Ok(Ok(other)) => return Err(ClientError::Protocol(format!("{other:?} before hello"))),
            Ok(Err(e)) => return Err(e),
        };
        if server_hello.transport != "websocket" {
            return Err(ClientError::Protocol(format!("hello transport {:?}", server_hello.transport)));
        }
        let tx = DeviceSender { sink, version: cfg.version, session_id: server_hello.session_id.clone() };
        Ok((Self { tx, rx, server_hello }, upgraded))
    }

    pub fn session_id(&self) -> &str {
        &self.server_hello.session_id
    }
}

impl DeviceSender {
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        self.send_text(msg.to_json()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        Ok(self.sink.send(Message::Text(text.into())).await?)
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<(), ClientError> {
        Ok(self.sink.send(Message::Binary(data.into())).await?)
    }

    pub async fn listen(
        &mut self,
        state: ListenState,
        mode: Option<ListenMode>,
        text: Option<&str>,
    ) -> Result<(), ClientError> {
        let msg = ClientMessage::Listen(ListenMessage {
            session_id: Some(self.session_id.clone()),
            state,
            mode,
            text: text.map(str::to_owned),
        });
        self.send(&msg).await
    }

    pub async fn listen_start(&mut self, mode: ListenMode) -> Result<(), ClientError> {
        self.listen(ListenState::Start, Some(mode), None).await
    }

    pub async fn abort(&mut self, reason: Option<&str>) -> Result<(), ClientError> {
        let msg = ClientMessage::Abort(AbortMessage {
            session_id: Some(self.session_id.clone()),
            reason: reason.map(str::to_owned),
        });
        self.send(&msg).await
    }

    /// Sends one Opus packet framed in the connection's protocol version.
    pub async fn audio(&mut self, packet: &[u8]) -> Result<(), ClientError> {
        let data = frame::encode(self.version, 0, packet).map_err(|e| ClientError::Request(e.to_string()))?;
        self.send_binary(data).await
    }

    /// Sends packets one per `interval` (60 ms is real time for 60 ms frames).
    pub async fn stream_audio(&mut self, packets: &[Vec<u8>], interval: Duration) -> Result<(), ClientError> {
        let start = Instant::now();
        for (i, p) in packets.iter().enumerate() {
            tokio::time::sleep_until(start + interval * i as u32).await;
            self.audio(p).await?;
        }
        Ok(())
    }

    /// Sends a Close frame.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        let frame = CloseFrame { code: 1000.into(), reason: "bye".into() };
        Ok(self.sink.send(Message::Close(Some(frame))).await?)
    }
}

impl DeviceReceiver {
    /// The next event; pings and pongs are skipped.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            let msg = match self.stream.next().await {
                None => return Ok(Event::Closed(None)),
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                    return Ok(Event::Closed(None));
                }
                Some(Err(tungstenite::Error::Protocol(_) | tungstenite::Error::Io(_))) => {
                    return Ok(Event::Closed(None));
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => m,
            };
            return match msg {
                Message::Text(t) => ServerMessage::parse(&t)
                    .map(Event::Json)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {t}"))),
                Message::Binary(b) => {
                    let at = Instant::now();
                    let f =
                        frame::decode(self.version, &b).map_err(|e| ClientError::Protocol(e.to_string()))?;
                    Ok(Event::Audio { payload: b.slice_ref(f.payload), at })
                }
                Message::Close(c) => Ok(Event::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())))),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
        }
    }

    /// The next event within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Event, ClientError> {
        tokio::time::timeout(limit, self.next_event()).await.map_err(|_| ClientError::Timeout("an event"))?
    }
}
