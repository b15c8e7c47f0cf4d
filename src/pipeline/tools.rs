//! The tools the model may call: two of the server's own (the time, ending the conversation)
//! and the device's MCP tools, under function-safe names.

use std::collections::HashMap;
use std::time::Duration;

use super::providers::llm::{ToolCall, ToolSpec};
use crate::conversation::{DeviceTools, VisionImage};

const TOOL_TIME: &str = "get_current_time";
const TOOL_END: &str = "end_conversation";

/// The functions offered to the model and the map from function names back to device tool
/// names (function names allow only letters, digits, `_` and `-`).
pub(super) fn specs(device: Option<&dyn DeviceTools>) -> (Vec<ToolSpec>, HashMap<String, String>) {
    let mut specs = vec![
        ToolSpec {
            name: TOOL_TIME.into(),
            description: "Current local date and time.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        },
        ToolSpec {
            name: TOOL_END.into(),
            description: "End the conversation when the user says goodbye or wants to stop.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        },
    ];
    let mut names = HashMap::new();
    for t in device.map(|d| d.tools()).unwrap_or_default() {
        let safe: String = t
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .take(64)
            .collect();
        if safe == TOOL_TIME || safe == TOOL_END || names.contains_key(&safe) {
            continue;
        }
        let parameters = if t.input_schema.is_object() {
            t.input_schema.clone()
        } else {
            serde_json::json!({"type": "object", "properties": {}})
        };
        specs.push(ToolSpec { name: safe.clone(), description: t.description.clone(), parameters });
        names.insert(safe, t.name);
    }
    (specs, names)
}

/// Runs one tool call; failures become text the model can read. Returns the result, the
/// images the device uploaded while running it, and whether the conversation should end.
pub(super) async fn run(
    call: &ToolCall,
    device: Option<&dyn DeviceTools>,
    device_names: &HashMap<String, String>,
    timeout: Duration,
) -> (String, Vec<VisionImage>, bool) {
    tracing::info!(tool = %call.name, "tool call");
    match call.name.as_str() {
        TOOL_TIME => {
            (chrono::Local::now().format("%Y-%m-%d %H:%M:%S %:z (%A)").to_string(), Vec::new(), false)
        }
        TOOL_END => ("The conversation will end after your answer; say goodbye.".into(), Vec::new(), true),
        name => match (device_names.get(name), device) {
            (Some(original), Some(client)) => {
                let args: serde_json::Value =
                    serde_json::from_str(&call.arguments_json).unwrap_or_else(|_| serde_json::json!({}));
                let result = match client.call(original, args, timeout).await {
                    Ok(text) => text,
                    Err(e) => {
                        tracing::warn!(tool = %original, error = %e, "device tool failed");
                        format!("error: {e}")
                    }
                };
                (result, client.take_images(), false)
            }
            _ => {
                tracing::warn!(tool = %name, "the model asked for a tool that does not exist");
                (format!("error: there is no tool named {name}"), Vec::new(), false)
            }
        },
    }
}
