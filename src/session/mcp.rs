//! The gateway as MCP client of the device's own MCP server (volume, lights, camera…): after
//! a hello that announces MCP, `initialize` and `tools/list` (following `nextCursor`), then
//! `tools/call` on the brain's behalf. Requests carry integer ids (firmware drops string ids);
//! responses are matched by id, unknown ids are ignored; every call has a timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use firmware_protocol::ServerMessage;
use firmware_protocol::mcp::{CallResult, Request, Response, Tool, ToolsPage};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::conversation::{BoxFuture, DeviceTools, Downlink, ToolError, VisionImage};

/// At most this many tools are offered to the model (a device listing thousands is cut).
pub const MAX_TOOLS: usize = 64;
/// At most this many uploaded images wait for one tool call's record.
const MAX_IMAGES: usize = 4;
/// At most this many `tools/list` pages are fetched.
const MAX_PAGES: usize = 16;

/// One session's MCP client.
#[derive(Debug)]
pub(crate) struct McpClient {
    tx: mpsc::Sender<Downlink>,
    /// Named in every request.
    session_id: std::sync::Arc<str>,
    next_id: AtomicI64,
    pending: Mutex<HashMap<i64, oneshot::Sender<Response>>>,
    tools: Mutex<Vec<Tool>>,
    /// Images the device uploaded to the vision endpoint during a tool call, until the brain
    /// takes them for that call's record.
    images: Mutex<Vec<VisionImage>>,
}

impl McpClient {
    pub(crate) fn new(tx: mpsc::Sender<Downlink>, session_id: std::sync::Arc<str>) -> Self {
        Self {
            tx,
            session_id,
            next_id: AtomicI64::new(1),
            pending: Mutex::new(HashMap::new()),
            tools: Mutex::new(Vec::new()),
            images: Mutex::new(Vec::new()),
        }
    }

    /// Keeps an image the device uploaded (the vision endpoint calls this).
    pub(crate) fn attach_image(&self, image: VisionImage) {
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        // A device uploads one photo per call; a runaway one does not grow memory for ever.
        if images.len() < MAX_IMAGES {
            images.push(image);
        } else {
            tracing::warn!("too many vision uploads in one call; image not kept");
        }
    }

    /// Hands a response from the device to whoever waits for it.
    pub(crate) fn on_response(&self, response: Response) {
        let waiter = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&response.id);
        match waiter {
            Some(w) => {
                let _ = w.send(response);
            }
            None => tracing::debug!(id = response.id, "MCP response to an unknown id ignored"),
        }
    }

    async fn request(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, ToolError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let payload = Request::new(id, method, params).to_value();
        let sent =
            self.tx.send(Downlink::Text(ServerMessage::Mcp { payload }.to_json_in(&self.session_id))).await;
        let outcome = match sent {
            Err(_) => Err(ToolError::Gone),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Err(_) => Err(ToolError::Timeout(timeout)),
                Ok(Err(_)) => Err(ToolError::Gone),
                Ok(Ok(r)) => match (r.error, r.result) {
                    (Some(e), _) => Err(ToolError::Device(e.message)),
                    (None, Some(v)) => Ok(v),
                    (None, None) => Err(ToolError::Malformed("neither result nor error".into())),
                },
            },
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        outcome
    }

    /// `initialize`, then `tools/list` until no `nextCursor` (bounded). Returns the tool count.
    pub(crate) async fn discover(&self, vision: Option<(&str, &str)>) -> Result<usize, ToolError> {
        let init = Request::initialize(0, vision).params.unwrap_or_default();
        self.request("initialize", init, Duration::from_secs(10)).await?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = Request::tools_list(0, cursor.as_deref()).params.unwrap_or_default();
            let page: ToolsPage =
                serde_json::from_value(self.request("tools/list", params, Duration::from_secs(10)).await?)
                    .map_err(|e| ToolError::Malformed(e.to_string()))?;
            tools.extend(page.tools);
            match page.next_cursor {
                Some(c) if tools.len() < MAX_TOOLS && Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => break,
            }
        }
        if tools.len() > MAX_TOOLS {
            tracing::warn!(
                listed = tools.len(),
                kept = MAX_TOOLS,
                "device lists too many tools; offering the first ones"
            );
            tools.truncate(MAX_TOOLS);
        }
        let n = tools.len();
        *self.tools.lock().unwrap_or_else(|e| e.into_inner()) = tools;
        Ok(n)
    }
}

impl DeviceTools for McpClient {
    fn tools(&self) -> Vec<Tool> {
        self.tools.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn call<'a>(
        &'a self,
        name: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<String, ToolError>> {
        Box::pin(async move {
            let params = serde_json::json!({ "name": name, "arguments": arguments });
            let v = self.request("tools/call", params, timeout).await?;
            let result: CallResult =
                serde_json::from_value(v).map_err(|e| ToolError::Malformed(e.to_string()))?;
            if result.is_error { Err(ToolError::Device(result.text())) } else { Ok(result.text()) }
        })
    }

    fn take_images(&self) -> Vec<VisionImage> {
        std::mem::take(&mut *self.images.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
