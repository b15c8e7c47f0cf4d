//! JSON text messages in both directions, tagged by `"type"`.
//!
//! Device → gateway messages are parsed with [`ClientMessage::parse`], which first reads only
//! the `type` and then the shape that type needs, so an unknown type, a malformed body and
//! broken JSON are three different, clearly worded errors. Unknown fields are ignored
//! everywhere; `session_id` is optional everywhere (real clients send the server's, `""`, or
//! nothing).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Audio format description carried by both hellos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioParams {
    /// Always `"opus"` in practice; kept as given.
    #[serde(default = "default_format")]
    pub format: String,
    /// Sample rate in Hz.
    #[serde(default = "default_rate", deserialize_with = "lenient_u32")]
    pub sample_rate: u32,
    /// Channel count; the protocol is mono.
    #[serde(default = "default_channels", deserialize_with = "lenient_u32")]
    pub channels: u32,
    /// Duration of one Opus packet in milliseconds.
    #[serde(default = "default_frame_ms", deserialize_with = "lenient_u32")]
    pub frame_duration: u32,
}

fn default_format() -> String {
    "opus".to_owned()
}
fn default_rate() -> u32 {
    16_000
}
fn default_channels() -> u32 {
    1
}
fn default_frame_ms() -> u32 {
    60
}

impl Default for AudioParams {
    /// What every firmware version sends uplink: Opus, 16 kHz, mono, 60 ms.
    fn default() -> Self {
        Self {
            format: default_format(),
            sample_rate: default_rate(),
            channels: default_channels(),
            frame_duration: default_frame_ms(),
        }
    }
}

impl AudioParams {
    /// Opus parameters at the given rate and frame duration.
    pub fn opus(sample_rate: u32, frame_duration: u32) -> Self {
        Self { sample_rate, frame_duration, ..Self::default() }
    }
}

/// Capabilities a client announces in its hello. Absent flags are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// The device expects the server to cancel echo (it then needs protocol v2 timestamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aec: Option<bool>,
    /// The device runs an MCP server (always true since firmware 1.8.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<bool>,
    /// Firmware 2.4+: the device can show pushed glyph bitmaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glyph_push: Option<bool>,
    /// Anything else (e.g. the SDK's `consistent_sample_rate`), kept for logging.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The first message a client sends after the upgrade.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Binary protocol version (1, 2 or 3). Missing on the browser test page.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_u64")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_none")]
    pub features: Option<Features>,
    /// `"websocket"` from devices; missing on the browser test page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Uplink audio description; missing on the browser test page (assume 16 kHz / 60 ms).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_none")]
    pub audio_params: Option<AudioParams>,
    /// Some web clients repeat their device id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

impl ClientHello {
    /// A hello as firmware 2.x sends it.
    pub fn firmware(version: u8) -> Self {
        Self {
            version: Some(u64::from(version)),
            features: Some(Features { mcp: Some(true), ..Features::default() }),
            transport: Some("websocket".to_owned()),
            audio_params: Some(AudioParams::default()),
            device_id: None,
            device_name: None,
        }
    }

    /// Whether the client announced an MCP server.
    pub fn has_mcp(&self) -> bool {
        self.features.as_ref().and_then(|f| f.mcp).unwrap_or(false)
    }
}

/// What `listen` says is happening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenState {
    /// The microphone opened; a user turn begins.
    Start,
    /// Push-to-talk released: the turn is complete.
    Stop,
    /// A wake word (or typed text) was detected; `text` carries it.
    Detect,
}

/// How the end of the user's turn is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenMode {
    /// The server detects the end of speech (the default without AEC).
    #[default]
    Auto,
    /// Push-to-talk: `listen stop` ends the turn.
    Manual,
    /// Full duplex: the microphone streams during replies; the server handles barge-in.
    Realtime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub state: ListenState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ListenMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `"wake_word_detected"` when a wake word interrupted; absent for a button press.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A message from a device (or any client) to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Hello(ClientHello),
    Listen(ListenMessage),
    Abort(AbortMessage),
    /// A JSON-RPC object from the device's MCP server (see [`crate::mcp`]).
    Mcp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        payload: Value,
    },
    /// Legacy IoT descriptors/states (firmware ≤ 1.7 with the old IoT protocol), kept raw.
    Iot(Map<String, Value>),
    /// MQTT transport only; accepted and treated as the client leaving.
    Goodbye {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
}

/// Why a text message was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed message: {0}")]
    NotJson(String),
    #[error("message has no string \"type\" field")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid {kind:?} message: {reason}")]
    Invalid { kind: String, reason: String },
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
}

impl ClientMessage {
    /// Parses one text frame from a client.
    pub fn parse(text: &str) -> Result<Self, MessageError> {
        let probe: TypeOnly<'_> = serde_json::from_str(text).map_err(|e| {
            // An object whose "type" is not a string is missing its type, not malformed.
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => MessageError::MissingType,
                _ => MessageError::NotJson(e.to_string()),
            }
        })?;
        let kind = probe.kind.ok_or(MessageError::MissingType)?;
        let invalid =
            |e: serde_json::Error| MessageError::Invalid { kind: kind.to_string(), reason: e.to_string() };
        let msg = match kind.as_ref() {
            "hello" => Self::Hello(serde_json::from_str(text).map_err(invalid)?),
            "listen" => Self::Listen(serde_json::from_str(text).map_err(invalid)?),
            "abort" => Self::Abort(serde_json::from_str(text).map_err(invalid)?),
            "mcp" => {
                #[derive(Deserialize)]
                struct Mcp {
                    #[serde(default)]
                    session_id: Option<String>,
                    payload: Value,
                }
                let m: Mcp = serde_json::from_str(text).map_err(invalid)?;
                if !m.payload.is_object() {
                    return Err(MessageError::Invalid {
                        kind: "mcp".into(),
                        reason: "payload must be a JSON object".into(),
                    });
                }
                Self::Mcp { session_id: m.session_id, payload: m.payload }
            }
            "iot" => {
                let mut map: Map<String, Value> = serde_json::from_str(text).map_err(invalid)?;
                map.remove("type");
                Self::Iot(map)
            }
            "goodbye" => {
                #[derive(Deserialize)]
                struct Goodbye {
                    #[serde(default)]
                    session_id: Option<String>,
                }
                let g: Goodbye = serde_json::from_str(text).map_err(invalid)?;
                Self::Goodbye { session_id: g.session_id }
            }
            other => return Err(MessageError::UnknownType(other.to_owned())),
        };
        Ok(msg)
    }

    /// Serialises the message as a client would send it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialise")
    }
}

/// The gateway's answer to a client hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// Must be the string `"websocket"`: firmware ignores (or crashes on) anything else.
    pub transport: String,
    /// A UUID the device echoes in its later messages.
    pub session_id: String,
    /// The real downlink format: the device sizes its decoder from it.
    pub audio_params: AudioParams,
    /// The binary protocol version in use for this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u8>,
}

/// `tts` states the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtsState {
    /// The device enters Speaking and starts accepting audio.
    Start,
    /// Subtitle for the sentence whose audio follows.
    SentenceStart,
    /// Sent by some servers after a sentence; devices ignore it.
    SentenceEnd,
    /// The reply is over (sent after the last frame's playback time).
    Stop,
}

/// A message from the gateway to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    Hello(ServerHello),
    /// What the user said (shown on the device's screen).
    Stt {
        text: String,
    },
    /// The assistant's mood; `text` is an emoji the firmware ignores.
    Llm {
        emotion: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    Tts {
        state: TtsState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// A JSON-RPC object for the device's MCP server.
    Mcp {
        payload: Value,
    },
    /// `reboot` is the only command firmware acts on.
    System {
        command: String,
    },
    /// All three fields must be strings or the firmware ignores the alert.
    Alert {
        status: String,
        message: String,
        emotion: String,
    },
    /// Legacy IoT commands for firmware ≤ 1.7.
    Iot {
        commands: Vec<Value>,
    },
}

impl ServerMessage {
    pub fn tts(state: TtsState) -> Self {
        Self::Tts { state, text: None }
    }

    pub fn sentence(text: impl Into<String>) -> Self {
        Self::Tts { state: TtsState::SentenceStart, text: Some(text.into()) }
    }

    /// Serialises the message for a text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }

    /// Serialises the message with the session's id, as the reference server sends every
    /// message (web clients take the id for their `abort` from `tts start`). The hello carries
    /// its own.
    pub fn to_json_in(&self, session_id: &str) -> String {
        if let Self::Hello(_) = self {
            return self.to_json();
        }
        let mut value = serde_json::to_value(self).expect("server messages always serialise");
        if let Value::Object(map) = &mut value {
            map.insert("session_id".into(), Value::String(session_id.to_owned()));
        }
        value.to_string()
    }

    /// Parses a server message (for clients and tests).
    pub fn parse(text: &str) -> Result<Self, MessageError> {
        serde_json::from_str(text).map_err(|e| MessageError::NotJson(e.to_string()))
    }
}

/// Accepts `2`, `2.0` or `"2"` as 2: clients are not consistent about number types.
fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => value_to_u64(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a non-negative integer, found {v}"))),
    }
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    value_to_u64(&v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("expected a small integer, found {v}")))
}

fn value_to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
        }
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn null_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_hello_parses() {
        let text = r#"{"type":"hello","version":1,"features":{"aec":true,"mcp":true,"glyph_push":true},
            "text_font":{"bundle":"noto-v1"},"transport":"websocket",
            "audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}"#;
        let ClientMessage::Hello(h) = ClientMessage::parse(text).unwrap() else { panic!() };
        assert_eq!(h.version, Some(1));
        assert!(h.has_mcp());
        assert_eq!(h.features.unwrap().aec, Some(true));
        assert_eq!(h.audio_params.unwrap(), AudioParams::default());
    }

    #[test]
    fn browser_hello_without_audio_params_parses() {
        let text = r#"{"type":"hello","device_id":"aa:bb","device_name":"web","token":"x"}"#;
        let ClientMessage::Hello(h) = ClientMessage::parse(text).unwrap() else { panic!() };
        assert_eq!(h.version, None);
        assert_eq!(h.audio_params, None);
        assert_eq!(h.device_id.as_deref(), Some("aa:bb"));
    }

    #[test]
    fn old_firmware_hello_with_spaces_and_string_numbers() {
        let text = r#"{"type": "hello", "version": "3", "transport": "websocket", "audio_params": {"format": "opus", "sample_rate": 16000.0, "channels": 1, "frame_duration": "60"}}"#;
        let ClientMessage::Hello(h) = ClientMessage::parse(text).unwrap() else { panic!() };
        assert_eq!(h.version, Some(3));
        assert_eq!(h.audio_params.unwrap().frame_duration, 60);
    }

    #[test]
    fn listen_variants() {
        let m =
            ClientMessage::parse(r#"{"session_id":"","type":"listen","state":"start","mode":"realtime"}"#)
                .unwrap();
        assert_eq!(
            m,
            ClientMessage::Listen(ListenMessage {
                session_id: Some(String::new()),
                state: ListenState::Start,
                mode: Some(ListenMode::Realtime),
                text: None
            })
        );
        let m = ClientMessage::parse(r#"{"type":"listen","state":"detect","text":"你好小智"}"#).unwrap();
        let ClientMessage::Listen(l) = m else { panic!() };
        assert_eq!(l.text.as_deref(), Some("你好小智"));
        assert_eq!(l.session_id, None);
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert!(matches!(ClientMessage::parse("{not json"), Err(MessageError::NotJson(_))));
        assert!(matches!(ClientMessage::parse("[1,2]"), Err(MessageError::NotJson(_))));
        assert_eq!(ClientMessage::parse(r#"{"state":"start"}"#), Err(MessageError::MissingType));
        assert_eq!(ClientMessage::parse(r#"{"type":7}"#), Err(MessageError::MissingType));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"dance"}"#),
            Err(MessageError::UnknownType("dance".into()))
        );
        let err = ClientMessage::parse(r#"{"type":"listen","state":"sing"}"#).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        assert!(err.to_string().contains("sing"), "{err}");
        let err = ClientMessage::parse(r#"{"type":"mcp","payload":[1]}"#).unwrap_err();
        assert!(err.to_string().contains("object"), "{err}");
    }

    #[test]
    fn abort_with_and_without_reason() {
        assert_eq!(
            ClientMessage::parse(r#"{"session_id":"s","type":"abort"}"#).unwrap(),
            ClientMessage::Abort(AbortMessage { session_id: Some("s".into()), reason: None })
        );
        let ClientMessage::Abort(a) =
            ClientMessage::parse(r#"{"type":"abort","reason":"wake_word_detected"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.reason.as_deref(), Some("wake_word_detected"));
    }

    #[test]
    fn server_messages_have_the_shapes_firmware_reads() {
        let hello = ServerMessage::Hello(ServerHello {
            transport: "websocket".into(),
            session_id: "abc".into(),
            audio_params: AudioParams::opus(24_000, 60),
            version: None,
        });
        let v: Value = serde_json::from_str(&hello.to_json()).unwrap();
        assert_eq!(v["type"], "hello");
        assert_eq!(v["transport"], "websocket");
        assert_eq!(v["audio_params"]["sample_rate"], 24_000);
        assert_eq!(v["audio_params"]["frame_duration"], 60);
        assert_eq!(
            ServerMessage::sentence("hi").to_json(),
            r#"{"type":"tts","state":"sentence_start","text":"hi"}"#
        );
        assert_eq!(ServerMessage::tts(TtsState::Stop).to_json(), r#"{"type":"tts","state":"stop"}"#);
        let v: Value = serde_json::from_str(&ServerMessage::tts(TtsState::Start).to_json_in("s-1")).unwrap();
        assert_eq!(v, serde_json::json!({"type": "tts", "state": "start", "session_id": "s-1"}));
        assert_eq!(
            ServerMessage::parse(&ServerMessage::sentence("y").to_json_in("s-1")).unwrap(),
            ServerMessage::sentence("y"),
            "clients that do not know the id still read the message"
        );
        for m in [hello, ServerMessage::Stt { text: "x".into() }, ServerMessage::sentence("y")] {
            assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), m);
        }
    }

    #[test]
    fn client_messages_round_trip() {
        let msgs = [
            ClientMessage::Hello(ClientHello::firmware(2)),
            ClientMessage::Listen(ListenMessage {
                session_id: Some("s".into()),
                state: ListenState::Stop,
                mode: None,
                text: None,
            }),
            ClientMessage::Abort(AbortMessage::default()),
            ClientMessage::Mcp { session_id: None, payload: serde_json::json!({"jsonrpc":"2.0"}) },
            ClientMessage::Goodbye { session_id: None },
        ];
        for m in msgs {
            assert_eq!(ClientMessage::parse(&m.to_json()).unwrap(), m);
        }
    }
}
