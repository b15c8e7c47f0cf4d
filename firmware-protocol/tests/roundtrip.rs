//! Property tests over the public API: every message the crate can build survives the wire
//! format (JSON text or binary frame) unchanged, and the framing refuses what it cannot carry.

use firmware_protocol::frame::{self, FrameError, ProtocolVersion};
use firmware_protocol::mcp::{Incoming, Request, Response, RpcError};
use firmware_protocol::ota::{Application, Board, OtaRequest, OtaResponse, ServerTime, WebsocketInfo};
use firmware_protocol::{
    AbortMessage, AudioParams, ClientHello, ClientMessage, Features, ListenMessage, ListenMode, ListenState,
    ServerHello, ServerMessage, TtsState, opus,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value};

const ALL_VERSIONS: [ProtocolVersion; 3] = [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3];

/// Any text, including control characters, quotes, backslashes and non-BMP characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".*", "[a-z_]{0,12}", Just(String::new())]
}

/// Any JSON value without floating-point numbers (see `floats_in_payloads_round_trip`, which
/// fails while serde_json is built without its `float_roundtrip` feature).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(text(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    btree_map(text(), json_value(), 0..6).prop_map(|m| m.into_iter().collect())
}

fn audio_params() -> impl Strategy<Value = AudioParams> {
    (text(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(format, sample_rate, channels, frame_duration)| AudioParams {
            format,
            sample_rate,
            channels,
            frame_duration,
        },
    )
}

fn features() -> impl Strategy<Value = Features> {
    (option::of(any::<bool>()), option::of(any::<bool>()), option::of(any::<bool>()), json_object()).prop_map(
        |(aec, mcp, glyph_push, mut other)| {
            // The named flags are fields, not extras.
            for known in ["aec", "mcp", "glyph_push"] {
                other.remove(known);
            }
            Features { aec, mcp, glyph_push, other }
        },
    )
}

fn client_hello() -> impl Strategy<Value = ClientHello> {
    (
        option::of(any::<u64>()),
        option::of(features()),
        option::of(text()),
        option::of(audio_params()),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(|(version, features, transport, audio_params, device_id, device_name)| ClientHello {
            version,
            features,
            transport,
            audio_params,
            device_id,
            device_name,
        })
}

fn listen_message() -> impl Strategy<Value = ListenMessage> {
    let state = prop_oneof![Just(ListenState::Start), Just(ListenState::Stop), Just(ListenState::Detect)];
    let mode = prop_oneof![Just(ListenMode::Auto), Just(ListenMode::Manual), Just(ListenMode::Realtime)];
    (option::of(text()), state, option::of(mode), option::of(text()))
        .prop_map(|(session_id, state, mode, text)| ListenMessage { session_id, state, mode, text })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        client_hello().prop_map(ClientMessage::Hello),
        listen_message().prop_map(ClientMessage::Listen),
        (option::of(text()), option::of(text()))
            .prop_map(|(session_id, reason)| ClientMessage::Abort(AbortMessage { session_id, reason })),
        (option::of(text()), json_object()).prop_map(|(session_id, payload)| ClientMessage::Mcp {
            session_id,
            payload: Value::Object(payload)
        }),
        json_object().prop_map(|mut m| {
            m.remove("type");
            ClientMessage::Iot(m)
        }),
        option::of(text()).prop_map(|session_id| ClientMessage::Goodbye { session_id }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let tts_state = prop_oneof![
        Just(TtsState::Start),
        Just(TtsState::SentenceStart),
        Just(TtsState::SentenceEnd),
        Just(TtsState::Stop)
    ];
    prop_oneof![
        (text(), text(), audio_params(), option::of(any::<u8>())).prop_map(
            |(transport, session_id, audio_params, version)| ServerMessage::Hello(ServerHello {
                transport,
                session_id,
                audio_params,
                version
            })
        ),
        text().prop_map(|text| ServerMessage::Stt { text }),
        (text(), option::of(text())).prop_map(|(emotion, text)| ServerMessage::Llm { emotion, text }),
        (tts_state, option::of(text())).prop_map(|(state, text)| ServerMessage::Tts { state, text }),
        json_value().prop_map(|payload| ServerMessage::Mcp { payload }),
        text().prop_map(|command| ServerMessage::System { command }),
        (text(), text(), text()).prop_map(|(status, message, emotion)| ServerMessage::Alert {
            status,
            message,
            emotion
        }),
        vec(json_value(), 0..4).prop_map(|commands| ServerMessage::Iot { commands }),
    ]
}

/// A value that is not JSON `null` (`Option<Value>` reads `null` as `None`).
fn non_null_value() -> impl Strategy<Value = Value> {
    json_value().prop_filter("not null", |v| !v.is_null())
}

proptest! {
    #[test]
    fn server_messages_round_trip(m in server_message()) {
        let json = m.to_json();
        let v: Value = serde_json::from_str(&json).unwrap();
        prop_assert!(v["type"].is_string(), "{json}");
        prop_assert_eq!(ServerMessage::parse(&json).unwrap(), m);
    }

    #[test]
    fn client_messages_round_trip(m in client_message()) {
        let json = m.to_json();
        prop_assert_eq!(ClientMessage::parse(&json).unwrap(), m);
    }

    #[test]
    fn client_hellos_round_trip(h in client_hello()) {
        let m = ClientMessage::Hello(h);
        let json = m.to_json();
        prop_assert_eq!(ClientMessage::parse(&json).unwrap(), m);
    }

    #[test]
    fn listen_messages_round_trip(l in listen_message()) {
        let m = ClientMessage::Listen(l);
        prop_assert_eq!(ClientMessage::parse(&m.to_json()).unwrap(), m);
    }

    /// The firmware builds its messages by hand: `session_id` first, numbers possibly given
    /// as strings or floats. Parsing does not depend on key order or number spelling.
    #[test]
    fn hello_numbers_may_be_spelled_any_way(version in 0u64..4, rate in 0u32..100_000, ms in 0u32..1000) {
        let text = format!(
            r#"{{"transport":"websocket","audio_params":{{"frame_duration":"{ms}","sample_rate":{rate}.0,"channels":1}},"version":"{version}","type":"hello"}}"#
        );
        let ClientMessage::Hello(h) = ClientMessage::parse(&text).unwrap() else { panic!("not a hello") };
        prop_assert_eq!(h.version, Some(version));
        let p = h.audio_params.unwrap();
        prop_assert_eq!((p.sample_rate, p.frame_duration, p.format.as_str()), (rate, ms, "opus"));
    }

    #[test]
    fn frames_round_trip_in_every_version(
        v in 0usize..3,
        ts in any::<u32>(),
        payload in vec(any::<u8>(), 0..=65_535),
    ) {
        let v = ALL_VERSIONS[v];
        let bytes = frame::encode(v, ts, &payload).unwrap();
        prop_assert_eq!(bytes.len(), v.header_len() + payload.len());
        let f = frame::decode(v, &bytes).unwrap();
        prop_assert_eq!(f.payload, &payload[..]);
        prop_assert_eq!(f.timestamp, if v == ProtocolVersion::V2 { ts } else { 0 });
        // The header states the exact size, big-endian.
        match v {
            ProtocolVersion::V1 => {}
            ProtocolVersion::V2 => prop_assert_eq!(&bytes[12..16], &(payload.len() as u32).to_be_bytes()),
            ProtocolVersion::V3 => prop_assert_eq!(&bytes[2..4], &(payload.len() as u16).to_be_bytes()),
        }
        // encode_into appends and leaves what was there.
        let mut out = vec![0xEE; 3];
        frame::encode_into(v, ts, &payload, &mut out).unwrap();
        prop_assert_eq!(&out[..3], &[0xEE; 3]);
        prop_assert_eq!(&out[3..], &bytes[..]);
    }

    #[test]
    fn v3_rejects_payloads_over_65535(extra in 1usize..70_000) {
        let payload = vec![0u8; 65_535 + extra];
        let mut out = vec![1, 2, 3];
        let err = frame::encode_into(ProtocolVersion::V3, 0, &payload, &mut out).unwrap_err();
        prop_assert_eq!(err, FrameError::PayloadTooLarge { version: 3, len: payload.len(), max: 65_535 });
        prop_assert_eq!(out, vec![1, 2, 3], "a refused frame writes nothing");
        // The versions with a 32-bit size carry it.
        for v in [ProtocolVersion::V1, ProtocolVersion::V2] {
            prop_assert_eq!(frame::encode(v, 0, &payload).unwrap().len(), v.header_len() + payload.len());
        }
    }

    /// A header whose size disagrees with the message length (one byte short or long) is
    /// refused, never guessed at.
    #[test]
    fn headers_with_wrong_sizes_are_refused(
        v in 1usize..3,
        payload in vec(any::<u8>(), 1..300),
        grow in any::<bool>(),
    ) {
        let v = ALL_VERSIONS[v];
        let mut bytes = frame::encode(v, 7, &payload).unwrap();
        if grow { bytes.push(0) } else { bytes.pop(); }
        let is_mismatch = matches!(frame::decode(v, &bytes), Err(FrameError::SizeMismatch { .. }));
        prop_assert!(is_mismatch);
    }

    #[test]
    fn opus_durations_are_whole_2_5_ms_steps(packet in vec(any::<u8>(), 0..4)) {
        match opus::packet_samples_48k(&packet) {
            Ok(samples) => {
                prop_assert!(samples > 0 && samples <= 5_760);
                prop_assert_eq!(samples % 120, 0);
                let us = opus::packet_duration_us(&packet).unwrap();
                prop_assert_eq!(us % 2_500, 0);
                prop_assert_eq!(u64::from(us) * 48, u64::from(samples) * 1_000);
            }
            Err(_) => prop_assert!(opus::packet_duration_us(&packet).is_err()),
        }
    }

    #[test]
    fn mcp_requests_round_trip(id in any::<i64>(), method in text(), params in option::of(non_null_value())) {
        let r = Request { jsonrpc: "2.0".into(), id: Some(id), method, params };
        prop_assert_eq!(Incoming::parse(&r.to_value()).unwrap(), Incoming::Request(r));
    }

    #[test]
    fn mcp_responses_round_trip(
        id in any::<i64>(),
        result in option::of(non_null_value()),
        error in option::of((option::of(any::<i64>()), text(), option::of(non_null_value()))),
    ) {
        let r = Response {
            jsonrpc: "2.0".into(),
            id,
            result,
            error: error.map(|(code, message, data)| RpcError { code, message, data }),
        };
        let v = serde_json::to_value(&r).unwrap();
        prop_assert_eq!(Incoming::parse(&v).unwrap(), Incoming::Response(r));
    }

    /// Only integer ids are accepted in responses: the firmware reads ids as `int`.
    #[test]
    fn mcp_responses_with_non_integer_ids_are_refused(id in prop_oneof![
        text().prop_map(Value::String),
        Just(Value::Null),
        Just(Value::Bool(true)),
        (1.0e19f64..1.0e300).prop_map(Value::from),
    ]) {
        let v = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {}});
        prop_assert!(Incoming::parse(&v).is_err());
    }

    #[test]
    fn ota_bodies_round_trip(
        mac in option::of(text()), uuid in option::of(text()), chip in option::of(text()),
        lang in option::of(text()),
        app in option::of((option::of(text()), option::of(text()))),
        board in option::of((option::of(text()), option::of(text()))),
    ) {
        let r = OtaRequest {
            mac_address: mac,
            uuid,
            chip_model_name: chip,
            language: lang,
            application: app.map(|(name, version)| Application { name, version }),
            board: board.map(|(kind, name)| Board { kind, name }),
        };
        prop_assert_eq!(OtaRequest::from_body(&serde_json::to_vec(&r).unwrap()), r);
    }

    #[test]
    fn ota_responses_never_carry_mqtt(
        url in text(), token in text(), version in 1u8..=3, ts in any::<i64>(), tz in any::<i32>(),
    ) {
        let r = OtaResponse {
            websocket: WebsocketInfo { url, token, version },
            server_time: ServerTime { timestamp: ts, timezone_offset: tz },
            firmware: None,
            activation: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        prop_assert!(v.get("mqtt").is_none());
        prop_assert_eq!(v["websocket"]["version"].as_u64(), Some(u64::from(version)));
        let back: OtaResponse = serde_json::from_value(v).unwrap();
        prop_assert_eq!(back, r);
    }
}

/// A float in a free-form part of a message (here an `mcp` payload) comes back exactly: the
/// workspace enables serde_json's `float_roundtrip` (the fuzz target `client_message` found
/// the drift without it; its inputs are in `fuzz/seeds/client_message/regression-*`).
#[test]
fn floats_in_payloads_round_trip() {
    let mut bits: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut drifted = Vec::new();
    for _ in 0..10_000 {
        bits ^= bits << 13;
        bits ^= bits >> 7;
        bits ^= bits << 17;
        let f = f64::from_bits(bits);
        if !f.is_finite() {
            continue;
        }
        let text = format!(r#"{{"type":"mcp","payload":{{"x":{}}}}}"#, serde_json::to_string(&f).unwrap());
        let m = ClientMessage::parse(&text).unwrap();
        if ClientMessage::parse(&m.to_json()).unwrap() != m {
            drifted.push(text);
        }
    }
    assert!(drifted.is_empty(), "{} of 10000 floats drifted, e.g. {}", drifted.len(), drifted[0]);
}
