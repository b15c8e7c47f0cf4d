//! The device's own tools (MCP) as the brain sees them, and the images a camera tool uploads.

use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::mcp::Tool;
use serde_json::Value;

use super::BoxFuture;

/// Why a device tool call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the device reported: {0}")]
    Device(String),
    #[error("the session has ended")]
    Gone,
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// A device's tools, reachable while its session lives.
pub trait DeviceTools: Send + Sync {
    /// The tools the device listed.
    fn tools(&self) -> Vec<Tool>;

    /// Calls a tool and returns its text result.
    fn call<'a>(
        &'a self,
        name: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<String, ToolError>>;

    /// The images the device uploaded since the last call of this (the camera tool).
    fn take_images(&self) -> Vec<VisionImage>;
}

/// An image a device uploaded during a tool call, with what was asked and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionImage {
    pub data: Bytes,
    /// `jpg`, `png`, `webp` or `gif`.
    pub file_type: &'static str,
    pub question: String,
    pub answer: String,
}
