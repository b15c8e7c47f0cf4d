//! The OTA endpoint's shapes. Devices POST their system information before every boot's first
//! connection; the answer tells them where the WebSocket is. The response type has no `mqtt`
//! field at all: a device that sees one switches to MQTT+UDP.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Firmware application info in the OTA body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Application {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Board info in the OTA body (Wi-Fi and cellular boards send different extra fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Board {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What the gateway reads from an OTA request body. Every field is optional: firmware, the
/// SDK, py-xiaozhi and browser pages all send different bodies (or none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OtaRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<Application>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<Board>,
}

impl OtaRequest {
    /// Reads whatever a body offers; anything that is not a JSON object yields an empty
    /// request (the headers still identify the device). A field of an unexpected type is
    /// skipped without losing the others.
    pub fn from_body(body: &[u8]) -> Self {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        fn field<T: serde::de::DeserializeOwned>(
            map: &serde_json::Map<String, Value>,
            key: &str,
        ) -> Option<T> {
            map.get(key).cloned().and_then(|v| serde_json::from_value(v).ok())
        }
        Self {
            mac_address: field(&map, "mac_address"),
            uuid: field(&map, "uuid"),
            chip_model_name: field(&map, "chip_model_name"),
            language: field(&map, "language"),
            application: field(&map, "application"),
            board: field(&map, "board"),
        }
    }

    pub fn firmware_version(&self) -> Option<&str> {
        self.application.as_ref()?.version.as_deref()
    }

    pub fn board_type(&self) -> Option<&str> {
        self.board.as_ref()?.kind.as_deref()
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebsocketInfo {
    pub url: String,
    /// Access token; the device prefixes `Bearer ` when it has no space.
    pub token: String,
    /// Binary protocol version the device must use.
    pub version: u8,
}

/// The server clock, used by the device to set its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTime {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Minutes east of UTC.
    pub timezone_offset: i32,
}

/// A firmware update offer (only sent when one is configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    pub version: String,
    pub url: String,
}

/// An activation challenge (only sent when activation is switched on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The OTA response. There is deliberately no `mqtt` member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaResponse {
    pub websocket: WebsocketInfo,
    pub server_time: ServerTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_body_is_read() {
        let body =
            br#"{"version":2,"language":"zh-CN","flash_size":16777216,"minimum_free_heap_size":"123456",
            "mac_address":"a0:b1:c2:d3:e4:f5","uuid":"u","chip_model_name":"esp32s3",
            "application":{"name":"xiaozhi","version":"2.4.2","elf_sha256":"x"},
            "board":{"type":"bread-compact-wifi","name":"n","rssi":-50}}"#;
        let r = OtaRequest::from_body(body);
        assert_eq!(r.firmware_version(), Some("2.4.2"));
        assert_eq!(r.board_type(), Some("bread-compact-wifi"));
        assert_eq!(r.mac_address.as_deref(), Some("a0:b1:c2:d3:e4:f5"));
    }

    #[test]
    fn any_body_is_accepted() {
        assert_eq!(OtaRequest::from_body(b""), OtaRequest::default());
        assert_eq!(OtaRequest::from_body(b"garbage"), OtaRequest::default());
        assert_eq!(OtaRequest::from_body(b"[1]"), OtaRequest::default());
        assert_eq!(OtaRequest::from_body(br#"{"board":7}"#), OtaRequest::default());
        let partly =
            OtaRequest::from_body(br#"{"mac_address":"a0:b1:c2:d3:e4:f5","board":7,"application":"x"}"#);
        assert_eq!(partly.mac_address.as_deref(), Some("a0:b1:c2:d3:e4:f5"));
        assert_eq!((partly.board, partly.application), (None, None));
    }

    #[test]
    fn response_never_has_mqtt() {
        let r = OtaResponse {
            websocket: WebsocketInfo { url: "ws://h/xiaozhi/v1/".into(), token: "t".into(), version: 1 },
            server_time: ServerTime { timestamp: 1, timezone_offset: 0 },
            firmware: None,
            activation: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("mqtt").is_none());
        assert!(v.get("firmware").is_none());
        assert!(v.get("activation").is_none());
        assert_eq!(v["websocket"]["version"], 1);
    }
}
