//! JSON-RPC 2.0 shapes of the device's MCP server (the gateway is the MCP client).
//!
//! Device quirks this module absorbs: request ids must be JSON integers (a string id is
//! dropped by firmware without a reply); error objects may carry only `message` (no `code`);
//! `tools/list` pages with `nextCursor` holding the name of the first tool not yet sent.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The protocol version firmware answers `initialize` with.
pub const MCP_PROTOCOL_VERSION: &str = "2024-11-05";

/// A request (or notification, without `id`) to the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub jsonrpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

impl Request {
    pub fn new(id: i64, method: &str, params: Value) -> Self {
        Self { jsonrpc: "2.0".into(), id: Some(id), method: method.into(), params: Some(params) }
    }

    /// `initialize`, optionally pointing the camera tool at a vision endpoint.
    pub fn initialize(id: i64, vision: Option<(&str, &str)>) -> Self {
        let mut capabilities = json!({});
        if let Some((url, token)) = vision {
            capabilities["vision"] = json!({ "url": url, "token": token });
        }
        Self::new(
            id,
            "initialize",
            json!({
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": capabilities,
                "clientInfo": { "name": "xiaozhi-gateway", "version": env!("CARGO_PKG_VERSION") },
            }),
        )
    }

    /// `tools/list`, continuing from `cursor` when given.
    pub fn tools_list(id: i64, cursor: Option<&str>) -> Self {
        let mut params = json!({ "withUserTools": false });
        if let Some(c) = cursor {
            params["cursor"] = json!(c);
        }
        Self::new(id, "tools/list", params)
    }

    /// `tools/call` with the tool's name and its arguments object.
    pub fn tools_call(id: i64, name: &str, arguments: Value) -> Self {
        Self::new(id, "tools/call", json!({ "name": name, "arguments": arguments }))
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("requests always serialise")
    }
}

/// The error object of a response; firmware sends only `message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A response from the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub jsonrpc: String,
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// What an `mcp` payload from the device turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Response(Response),
    /// A request or notification initiated by the device.
    Request(Request),
}

/// Why an MCP payload was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    #[error("MCP payload is not JSON-RPC 2.0: {0}")]
    NotJsonRpc(String),
    #[error("MCP response has a non-integer id {0}")]
    BadId(String),
}

impl Incoming {
    pub fn parse(payload: &Value) -> Result<Self, McpError> {
        if payload.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(McpError::NotJsonRpc("missing \"jsonrpc\":\"2.0\"".into()));
        }
        if payload.get("method").is_some() {
            return serde_json::from_value(payload.clone())
                .map(Incoming::Request)
                .map_err(|e| McpError::NotJsonRpc(e.to_string()));
        }
        match payload.get("id") {
            Some(Value::Number(n)) if n.is_i64() => {}
            Some(other) => return Err(McpError::BadId(other.to_string())),
            None => return Err(McpError::NotJsonRpc("response without id".into())),
        }
        serde_json::from_value(payload.clone())
            .map(Incoming::Response)
            .map_err(|e| McpError::NotJsonRpc(e.to_string()))
    }
}

/// One tool as listed by the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "inputSchema", default)]
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

/// The `result` of `tools/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsPage {
    #[serde(default)]
    pub tools: Vec<Tool>,
    #[serde(rename = "nextCursor", default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One content item of a `tools/call` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Firmware's non-standard image item: a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The `result` of `tools/call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    #[serde(default)]
    pub content: Vec<Content>,
    #[serde(rename = "isError", default)]
    pub is_error: bool,
}

impl CallResult {
    /// The text items joined, as an LLM would read them.
    pub fn text(&self) -> String {
        self.content.iter().filter_map(|c| c.text.as_deref()).collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_error_without_code_parses() {
        let v = json!({"jsonrpc":"2.0","id":3,"error":{"message":"Missing valid argument: volume"}});
        let Incoming::Response(r) = Incoming::parse(&v).unwrap() else { panic!() };
        assert_eq!(r.id, 3);
        assert_eq!(r.error.unwrap().message, "Missing valid argument: volume");
    }

    #[test]
    fn string_ids_and_non_rpc_are_refused() {
        assert!(matches!(
            Incoming::parse(&json!({"jsonrpc":"2.0","id":"1","result":{}})),
            Err(McpError::BadId(_))
        ));
        assert!(matches!(Incoming::parse(&json!({"id":1})), Err(McpError::NotJsonRpc(_))));
    }

    #[test]
    fn requests_use_integer_ids() {
        let r = Request::initialize(1, Some(("http://x/mcp/vision/explain", "t")));
        let v = r.to_value();
        assert!(v["id"].is_i64());
        assert_eq!(v["params"]["capabilities"]["vision"]["token"], "t");
        let v = Request::tools_list(2, Some("self.reboot")).to_value();
        assert_eq!(v["params"]["cursor"], "self.reboot");
    }

    #[test]
    fn tool_pages_and_results() {
        let page: ToolsPage = serde_json::from_value(json!({
            "tools":[{"name":"self.audio_speaker.set_volume","description":"d",
                      "inputSchema":{"type":"object","properties":{"volume":{"type":"integer","minimum":0,"maximum":100}},"required":["volume"]}}],
            "nextCursor":"self.screen.set_brightness"})).unwrap();
        assert_eq!(page.tools.len(), 1);
        assert_eq!(page.next_cursor.as_deref(), Some("self.screen.set_brightness"));
        let res: CallResult =
            serde_json::from_value(json!({"content":[{"type":"text","text":"true"}],"isError":false}))
                .unwrap();
        assert_eq!(res.text(), "true");
    }
}
