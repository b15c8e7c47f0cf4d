//! The admin API, as an operator uses it, with every response checked against the served
//! OpenAPI document (status documented for the operation, body valid against its schema), and
//! every operation of the document called on a live gateway.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use firmware_protocol::{ListenMode, ListenState, ServerMessage, TtsState};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xiaozhi_gateway::client::{DeviceClient, Event};
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::store::model::StoredClip;
use xiaozhi_gateway::store::queries::Table;

use crate::helpers::*;
use crate::uploads::files_under;

pub(crate) const TOKEN: &str = "admin-s3cret";

/// The operations a path item of OpenAPI 3.1 can hold.
const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Talks to `/api` and checks each answer against the OpenAPI document.
pub(crate) struct Api {
    base: String,
    token: Option<String>,
    doc: Value,
    http: reqwest::Client,
}

/// An answer as it came, before any check.
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// The `Content-Type` header ("" when absent).
    pub(crate) ctype: String,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) bytes: bytes::Bytes,
    /// The body when it is JSON, Null otherwise.
    pub(crate) json: Value,
}

impl Reply {
    /// Whether the router has no route for this method and path (as opposed to a handler
    /// answering "no such resource"): axum's 405 for a method the path does not serve, or the
    /// fallback's 404 for an unknown path, which has an empty body (src/server.rs `upgrade`
    /// answers a plain request that is not a WebSocket upgrade with a bare 404). The API's own
    /// 404s always carry a JSON `{"error": ...}` body.
    fn route_missing(&self) -> bool {
        self.status == 405 || (self.status == 404 && !self.ctype.starts_with("application/json"))
    }
}

impl Api {
    pub(crate) async fn new(app: &TestApp, token: Option<&str>) -> Api {
        let doc: Value =
            serde_json::from_str(xiaozhi_gateway::OPENAPI).expect("the OpenAPI document is JSON");
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Api { base: app.http_url(""), token: token.map(str::to_owned), doc, http }
    }

    /// Sends a request (with the token, if any); no check.
    pub(crate) async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let bytes = resp.bytes().await.unwrap();
        let json = if ctype.starts_with("application/json") {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {path}: bad JSON ({e})"))
        } else {
            Value::Null
        };
        Reply { status, ctype, headers, bytes, json }
    }

    /// Sends a request and checks the answer against the document.
    pub(crate) async fn fetch(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let reply = self.request(method.clone(), path, body).await;
        self.check(&method, path, &reply);
        reply
    }

    /// Calls the API; returns the status and the JSON body (Null when not JSON).
    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let reply = self.fetch(method, path, body).await;
        (reply.status, reply.json)
    }

    /// The documented operation for a concrete path.
    fn operation(&self, method: &Method, path: &str) -> &Value {
        let path = path.split('?').next().unwrap();
        let segs: Vec<&str> = path.split('/').collect();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            let tsegs: Vec<&str> = template.split('/').collect();
            let matches = tsegs.len() == segs.len()
                && tsegs.iter().zip(&segs).all(|(t, s)| t.starts_with('{') || t == s);
            if matches && let Some(op) = item.get(method.as_str().to_ascii_lowercase()) {
                return op;
            }
        }
        panic!("{method} {path} is not in the OpenAPI document");
    }

    /// The status is documented for the operation, the documented headers are there, and the
    /// body is what the document says: its content type, valid against its JSON schema, or
    /// empty when the document gives no content.
    fn check(&self, method: &Method, path: &str, reply: &Reply) {
        let status = reply.status;
        let op = self.operation(method, path);
        let resp = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path} answered {status}, which is not documented"));
        for name in resp.get("headers").and_then(Value::as_object).into_iter().flat_map(|h| h.keys()) {
            assert!(reply.headers.contains_key(name.as_str()), "{method} {path} {status}: no {name} header");
        }
        let Some(content) = resp.get("content") else {
            assert!(reply.bytes.is_empty(), "{method} {path} {status}: a body where none is documented");
            return;
        };
        let media = reply.ctype.split(';').next().unwrap_or("");
        let schema =
            content
                .get(media)
                .unwrap_or_else(|| panic!("{method} {path} {status}: content type {media:?} not documented"))
                ["schema"]
                .clone();
        if media != "application/json" {
            return;
        }
        let body = &reply.json;
        let validator = self.validator(&schema);
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: body does not match the schema: {errors:?}\n{body:#}"
        );
    }

    /// A validator for a schema of the document (its `$ref`s resolved against the document).
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        jsonschema::validator_for(&root).expect("schema compiles")
    }

    /// A minimal instance of a schema of the document: the required properties only, the
    /// shortest non-empty strings, the smallest numbers, the fewest array items.
    fn minimal_instance(&self, schema: &Value) -> Value {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target =
                self.doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {r}"));
            return self.minimal_instance(target);
        }
        if let Some(v) = schema.get("const") {
            return v.clone();
        }
        if let Some(v) = schema.get("enum").and_then(|e| e.get(0)) {
            return v.clone();
        }
        let ty = match &schema["type"] {
            Value::String(t) => t.as_str(),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
            _ => "object",
        };
        let num = |k: &str| schema.get(k).and_then(Value::as_u64);
        match ty {
            "object" => {
                let mut obj = serde_json::Map::new();
                for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    obj.insert(name.to_owned(), self.minimal_instance(&schema["properties"][name]));
                }
                Value::Object(obj)
            }
            "string" if schema["format"] == "uuid" => json!(uuid::Uuid::new_v4().to_string()),
            "string" => json!("x".repeat(num("minLength").unwrap_or(1).max(1) as usize)),
            "integer" | "number" => json!(schema.get("minimum").cloned().unwrap_or(json!(0))),
            "boolean" => json!(false),
            "array" => Value::Array(vec![
                self.minimal_instance(&schema["items"]);
                num("minItems").unwrap_or(0) as usize
            ]),
            "null" => Value::Null,
            other => panic!("no minimal instance for type {other:?}"),
        }
    }

    /// Every documented operation: (path template, method, operation), the path item's
    /// parameters merged into the operation's.
    fn operations(&self) -> Vec<(String, Method, Value)> {
        let mut ops = Vec::new();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                if !HTTP_METHODS.contains(&m.as_str()) {
                    continue; // parameters, summary, ...
                }
                let mut op = op.clone();
                let mut params = op["parameters"].as_array().cloned().unwrap_or_default();
                for p in item["parameters"].as_array().into_iter().flatten() {
                    if !params.iter().any(|q| q["name"] == p["name"] && q["in"] == p["in"]) {
                        params.push(p.clone());
                    }
                }
                op["parameters"] = Value::Array(params);
                ops.push((template.clone(), m.to_ascii_uppercase().parse::<Method>().unwrap(), op));
            }
        }
        ops
    }

    /// A concrete path for a template: each path parameter filled by `fill(name, schema)`.
    /// Every `{name}` must be declared as a required path parameter.
    fn concrete(template: &str, op: &Value, fill: impl Fn(&str, &Value) -> String) -> String {
        let params: Vec<&Value> =
            op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path").collect();
        let mut path = template.to_owned();
        for seg in template.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            let p = params
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{template}: {{{name}}} is not a declared path parameter"));
            assert_eq!(p["required"], true, "{template}: path parameter {name} must be required");
            path = path.replace(seg, &fill(name, &p["schema"]));
        }
        assert_eq!(
            params.len(),
            template.matches('{').count(),
            "{template}: a declared path parameter is not in the path"
        );
        path
    }

    /// The minimal valid request body an operation requires (None when it takes none),
    /// checked against the document's own schema.
    fn minimal_body(&self, op: &Value) -> Option<Value> {
        let rb = op.get("requestBody")?;
        let schema = &rb["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "request bodies are JSON: {rb}");
        let body = self.minimal_instance(schema);
        let errors: Vec<String> = self.validator(schema).iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "the generated body {body} is not valid: {errors:?}");
        Some(body)
    }
}

pub(crate) async fn app_with_token() -> TestApp {
    spawn_app_with(|s: &mut Settings| s.admin.token = Some(TOKEN.into())).await
}

/// A text turn, so that a session with two messages exists.
pub(crate) async fn text_conversation(app: &TestApp, text: &str) -> (String, uuid::Uuid) {
    let cfg = app.device();
    let mut dev = xiaozhi_gateway::client::DeviceClient::connect(&cfg).await.unwrap();
    dev.tx.listen(ListenState::Detect, None, Some(text)).await.unwrap();
    collect_reply(&mut dev.rx, Duration::from_secs(10), Duration::ZERO).await;
    let sid = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    (cfg.device_id.unwrap(), sid)
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_is_off_without_one() {
    let off = spawn_app().await;
    let api = Api::new(&off, Some(TOKEN)).await;
    let (status, body) = api.call(Method::GET, "/api/conversations", None).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("disabled"));

    let app = app_with_token().await;
    for token in [None, Some("wrong"), Some("admin-s3cre")] {
        let (status, _) = Api::new(&app, token).await.call(Method::GET, "/api/conversations", None).await;
        assert_eq!(status, 401, "token {token:?}");
    }
    let (status, body) =
        Api::new(&app, Some(TOKEN)).await.call(Method::GET, "/api/conversations", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "items": [], "next_cursor": null }));
    let (status, doc) = Api::new(&app, Some(TOKEN)).await.call(Method::GET, "/api/openapi.json", None).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
}

#[tokio::test]
async fn conversations_are_listed_page_by_page_and_read() {
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let mut sessions = Vec::new();
    let mut device = String::new();
    for i in 0..5 {
        let (d, sid) = text_conversation(&app, &format!("hello number {i}")).await;
        device = d;
        sessions.push(sid);
    }
    app.app.writer.flush().await;
    // Pages of 2, newest first, each session once.
    let mut seen = Vec::new();
    let mut path = "/api/conversations?limit=2".to_owned();
    loop {
        let (status, page) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, 200);
        assert!(page["items"].as_array().unwrap().len() <= 2);
        seen.extend(
            page["items"].as_array().unwrap().iter().map(|s| s["session_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/conversations?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    expected.reverse();
    assert_eq!(seen, expected);
    let (_, only_last) = api.call(Method::GET, &format!("/api/conversations?device_id={device}"), None).await;
    assert_eq!(only_last["items"].as_array().unwrap().len(), 1);

    let sid = sessions[0];
    let (status, s) = api.call(Method::GET, &format!("/api/conversations/{sid}"), None).await;
    assert_eq!((status, s["message_count"].as_i64()), (200, Some(2)));
    let (status, m) = api.call(Method::GET, &format!("/api/conversations/{sid}/messages"), None).await;
    assert_eq!(status, 200);
    let roles: Vec<&str> =
        m["items"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant"]);
    assert_eq!(m["items"][0]["content"], "hello number 0");

    for (path, code) in [
        ("/api/conversations?limit=0".to_owned(), 400),
        ("/api/conversations?limit=many".to_owned(), 400),
        ("/api/conversations?cursor=not-a-cursor".to_owned(), 400),
        ("/api/conversations/not-a-uuid".to_owned(), 400),
        (format!("/api/conversations/{}", uuid::Uuid::new_v4()), 404),
        (format!("/api/conversations/{}/messages", uuid::Uuid::new_v4()), 404),
        (format!("/api/audio/{}", uuid::Uuid::new_v4()), 404),
    ] {
        let (status, body) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, code, "{path}: {body}");
    }
}

/// A voice turn on a new connection; returns the connection (still open), the device id, the
/// session id and the session's clips, once they are uploaded.
pub(crate) async fn voice_conversation(app: &TestApp) -> (DeviceClient, String, uuid::Uuid, Vec<StoredClip>) {
    let cfg = app.device();
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    auto_turn(&mut dev).await;
    let sid = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    (dev, cfg.device_id.unwrap(), sid, uploaded_clips(app, sid).await)
}

/// The session's clips, once they are all uploaded (20 s at most).
async fn uploaded_clips(app: &TestApp, sid: uuid::Uuid) -> Vec<StoredClip> {
    app.app.writer.flush().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let clips = app.app.store.session_clips(sid).await.unwrap();
        if !clips.is_empty() && clips.iter().all(|c| c.upload_status == "uploaded") {
            return clips;
        }
        assert!(tokio::time::Instant::now() < deadline, "clips not uploaded: {clips:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `%XX` escapes decoded (URL paths of presigned URLs).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("a %XX escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// `url` is a SigV4 presigned GET of `bucket`/`key` on the S3 server at `endpoint` (path style),
/// valid for `expiry_secs`; returns its signature.
fn assert_presigned(url: &str, endpoint: &str, bucket: &str, key: &str, expiry_secs: u64) -> String {
    let u = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not a URL: {e}"));
    assert_eq!(u.scheme(), "http", "{url}");
    assert_eq!(format!("{}:{}", u.host_str().unwrap(), u.port().unwrap()), endpoint, "{url}");
    assert_eq!(percent_decode(u.path()), format!("/{bucket}/{key}"), "{url}");
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q.get("X-Amz-Algorithm").map(String::as_str), Some("AWS4-HMAC-SHA256"), "{url}");
    assert!(q["X-Amz-Credential"].starts_with(&format!("{}/", testkit::s3::ACCESS_KEY)), "{url}");
    assert_eq!(q["X-Amz-Expires"], expiry_secs.to_string(), "{url}");
    let sig = q["X-Amz-Signature"].clone();
    assert!(sig.len() == 64 && sig.bytes().all(|c| c.is_ascii_hexdigit()), "{url}");
    sig
}

/// Fetches a presigned URL with a plain client (no token, no gateway): 200 and the bytes.
async fn fetch_presigned(url: &str) -> bytes::Bytes {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    resp.bytes().await.unwrap()
}

/// The same presigned URL with one hex digit of its signature changed is refused by S3.
async fn assert_tampered_signature_refused(url: &str, sig: &str) {
    let first = sig.chars().next().unwrap();
    let bad = format!("{}{}", if first == '0' { '1' } else { '0' }, &sig[1..]);
    let tampered = url.replace(&format!("X-Amz-Signature={sig}"), &format!("X-Amz-Signature={bad}"));
    assert_ne!(tampered, url, "the signature is a query parameter");
    let resp = reqwest::get(&tampered).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 403, "{tampered}: {body}");
    assert!(body.contains("SignatureDoesNotMatch"), "refused for its signature: {body}");
}

/// Clips are listed with a URL that serves them and `/api/audio/{id}` serves them as the
/// backend allows: the bytes (local directory) or a redirect to a presigned URL (S3). Deleting
/// the conversation deletes the rows at once and the objects soon after.
async fn clips_and_deletion(app: TestApp, s3: Option<&'static testkit::s3::SharedS3>) {
    let storage = &app.app.settings.storage;
    let bucket = storage.bucket.clone();
    let local_root = app.app.settings.data_dir.join("objects").join(&bucket);
    let bucket_file = |k: &str| match s3 {
        Some(s3) => s3.object_path(&bucket, k),
        None => local_root.join(k),
    };
    let api = Api::new(&app, Some(TOKEN)).await;
    let (dev, _, sid, clips) = voice_conversation(&app).await;
    drop(dev);
    let (_, m) = api.call(Method::GET, &format!("/api/conversations/{sid}/messages"), None).await;
    let items = m["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    for msg in &items {
        let file_id = msg["audio_file_id"].as_str().expect("voice messages have clips");
        let clip = clips.iter().find(|c| c.file_id.to_string() == file_id).expect("the session's clip");
        assert_eq!(clip.file_type, "ogg");
        let listed = msg["audio_url"].as_str().unwrap();
        let audio = api.fetch(Method::GET, &format!("/api/audio/{file_id}"), None).await;
        let served = match s3 {
            None => {
                // Local: the gateway serves the bytes itself, at the listed URL too.
                assert_eq!(listed, format!("/api/audio/{file_id}"));
                assert_eq!(audio.status, 200);
                assert_eq!(audio.ctype, "audio/ogg");
                audio.bytes
            }
            Some(s3) => {
                // S3: a redirect to a presigned URL that a plain client can fetch, and only
                // with its signature intact; the listed URL is presigned the same way.
                assert_eq!(audio.status, 307, "an uploaded clip in S3 is served by redirect");
                assert!(audio.bytes.is_empty());
                let location = audio.headers["location"].to_str().unwrap().to_owned();
                let expiry = storage.presign_expiry_secs;
                let sig = assert_presigned(&location, &s3.endpoint, &bucket, &clip.object_key, expiry);
                assert_presigned(listed, &s3.endpoint, &bucket, &clip.object_key, expiry);
                let bytes = fetch_presigned(&location).await;
                assert_eq!(fetch_presigned(listed).await, bytes);
                assert_tampered_signature_refused(&location, &sig).await;
                bytes
            }
        };
        assert_eq!(served.len() as i64, clip.file_size);
        assert_eq!(sha256_hex(&served), clip.checksum, "the served bytes are the clip's");
        assert_eq!(&served[..4], b"OggS");
    }
    let keys: Vec<String> = clips.into_iter().map(|c| c.object_key).collect();
    assert!(keys.iter().all(|k| bucket_file(k).exists()));

    let (status, _) = api.call(Method::DELETE, &format!("/api/conversations/{sid}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = api.call(Method::GET, &format!("/api/conversations/{sid}"), None).await;
    assert_eq!(status, 404, "rows gone");
    let (status, _) = api.call(Method::DELETE, &format!("/api/conversations/{sid}"), None).await;
    assert_eq!(status, 404);
    for _ in 0..100 {
        if keys.iter().all(|k| !bucket_file(k).exists()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("objects of the deleted conversation remain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clips_are_served_and_deleted_with_their_conversation_locally() {
    clips_and_deletion(app_with_token().await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clips_are_served_and_deleted_with_their_conversation_in_s3() {
    let s3 = tokio::task::spawn_blocking(testkit::s3::shared).await.unwrap();
    let app = spawn_app_with(|s: &mut Settings| {
        s.admin.token = Some(TOKEN.into());
        crate::storage_suite::s3_settings(s);
    })
    .await;
    clips_and_deletion(app, Some(s3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_device_deletes_its_rows_and_objects_in_s3_and_nothing_else() {
    let s3 = tokio::task::spawn_blocking(testkit::s3::shared).await.unwrap();
    let app = spawn_app_with(|s: &mut Settings| {
        s.admin.token = Some(TOKEN.into());
        crate::storage_suite::s3_settings(s);
    })
    .await;
    let store = &app.app.store;
    let bucket = app.app.settings.storage.bucket.clone();
    let bucket_dir = s3.root.join(&bucket);
    let api = Api::new(&app, Some(TOKEN)).await;
    let paths = |clips: &[StoredClip]| -> BTreeSet<PathBuf> {
        clips.iter().map(|c| s3.object_path(&bucket, &c.object_key)).collect()
    };

    // Device A: two voice conversations, the second still connected; device B, meanwhile, one.
    let cfg_a = app.device();
    let a = cfg_a.device_id.clone().unwrap();
    let talk_a = tokio::spawn(async move {
        let mut first = DeviceClient::connect(&cfg_a).await.unwrap();
        auto_turn(&mut first).await;
        let first_sid = first.session_id().to_owned();
        first.tx.close().await.unwrap();
        let mut second = DeviceClient::connect(&cfg_a).await.unwrap();
        auto_turn(&mut second).await;
        assert_ne!(second.session_id(), first_sid);
        second
    });
    let (dev_b, b, sid_b, clips_b) = voice_conversation(&app).await;
    drop(dev_b);
    let mut dev_a = talk_a.await.unwrap();
    app.app.writer.flush().await;
    let clips = crate::uploads::wait_uploaded(store, 6, Duration::from_secs(20)).await;
    assert_eq!(clips.len(), 6);
    crate::uploads::assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));
    let clips_a: Vec<StoredClip> = clips.iter().filter(|c| c.device_id == a).cloned().collect();
    assert_eq!((clips_a.len(), clips_b.len()), (4, 2));
    assert!(clips_b.iter().all(|c| c.device_id == b));
    let mut everything = paths(&clips_a);
    everything.extend(paths(&clips_b));
    let in_bucket: BTreeSet<PathBuf> = files_under(&bucket_dir).into_iter().collect();
    assert_eq!(in_bucket, everything, "the bucket holds both devices' clips");
    assert_eq!(store.device_counts(&a).await.unwrap(), (2, 4, 4));
    assert_eq!(store.device_counts(&b).await.unwrap(), (1, 2, 2));
    let sessions_a: BTreeSet<uuid::Uuid> = clips_a.iter().map(|c| c.session_id).collect();
    assert_eq!(sessions_a.len(), 2);

    // Forget A (the MAC as an operator might type it, in capitals).
    let (status, body) =
        api.call(Method::DELETE, &format!("/api/devices/{}/data", a.to_ascii_uppercase()), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "device_id": a, "sessions_deleted": 2 }));
    expect_close(&mut dev_a.rx, Duration::from_secs(5)).await;

    // A's rows are gone at once, and stay gone.
    app.app.writer.flush().await;
    assert_eq!(store.device_counts(&a).await.unwrap(), (0, 0, 0));
    assert_eq!(store.count_rows(Table::Devices, Some(&a)).await.unwrap(), 0);
    for c in &clips_a {
        assert!(store.clip(c.file_id).await.unwrap().is_none());
        let (status, _) = api.call(Method::GET, &format!("/api/audio/{}", c.file_id), None).await;
        assert_eq!(status, 404);
    }
    for sid in &sessions_a {
        let (status, _) = api.call(Method::GET, &format!("/api/conversations/{sid}/messages"), None).await;
        assert_eq!(status, 404);
    }
    let (_, list) = api.call(Method::GET, &format!("/api/conversations?device_id={a}"), None).await;
    assert_eq!(list["items"], json!([]));

    // A's objects leave the bucket (deleted by the upload workers, asynchronously); B's stay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let in_bucket: BTreeSet<PathBuf> = files_under(&bucket_dir).into_iter().collect();
        let queued = store.count_rows(Table::ObjectDeletions, None).await.unwrap();
        if in_bucket == paths(&clips_b) && queued == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 15 s the bucket holds {in_bucket:#?} ({queued} deletions queued); expected only {:#?}",
            paths(&clips_b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B is untouched: rows, objects, and what the API serves.
    assert_eq!(store.device_counts(&b).await.unwrap(), (1, 2, 2));
    assert_eq!(store.session_clips(sid_b).await.unwrap(), clips_b);
    crate::uploads::assert_in_bucket(&clips_b, |k| s3.object_path(&bucket, k));
    let (_, list) = api.call(Method::GET, &format!("/api/conversations?device_id={b}"), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["session_id"], sid_b.to_string());
    assert_eq!(list["items"][0]["message_count"], 2);
    for c in &clips_b {
        let audio = api.fetch(Method::GET, &format!("/api/audio/{}", c.file_id), None).await;
        assert_eq!(audio.status, 307);
        let bytes = fetch_presigned(audio.headers["location"].to_str().unwrap()).await;
        assert_eq!(sha256_hex(&bytes), c.checksum);
    }
}

/// Every operation of the document, called on a live gateway: routed (neither the router's
/// 404 nor 405), answering a documented status with a body valid against the document; and
/// every method a documented path does not list is not routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_as_documented() {
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let ops = api.operations();
    let ids: BTreeSet<&str> = ops.iter().map(|(_, _, op)| op["operationId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), ops.len(), "operationIds are unique");

    // The detector of missing routes detects them.
    for (method, path) in [
        (Method::GET, "/api/no-such-collection".to_owned()),
        (Method::GET, format!("/api/conversations/{}/no-such-thing", uuid::Uuid::new_v4())),
        (Method::POST, "/api/conversations".to_owned()),
        (Method::PATCH, "/api/openapi.json".to_owned()),
    ] {
        let r = api.request(method.clone(), &path, None).await;
        assert!(r.route_missing(), "{method} {path}: {} {:?} {:?}", r.status, r.ctype, r.bytes);
    }

    // Resources that do not exist: a random UUID for sessions and clips, an unknown device.
    let unknown_device = fresh_device_id();
    let unknown = |name: &str, schema: &Value| -> String {
        if schema["format"] == "uuid" {
            uuid::Uuid::new_v4().to_string()
        } else if name == "device_id" {
            unknown_device.clone()
        } else {
            panic!("no plausible value for the path parameter {name}")
        }
    };
    let mut outcomes = Vec::new();
    for (template, method, op) in &ops {
        let path = Api::concrete(template, op, unknown);
        let r = api.request(method.clone(), &path, api.minimal_body(op)).await;
        assert!(
            !r.route_missing(),
            "{method} {template} is documented but not routed ({path}: {})",
            r.status
        );
        api.check(method, &path, &r);
        outcomes.push(format!("{method} {template}: {}", r.status));
    }
    eprintln!("unknown resources: {outcomes:#?}");

    // Methods a documented path does not list are not served there.
    for (template, item) in api.doc["paths"].as_object().unwrap() {
        let (_, _, op) = ops.iter().find(|(t, _, _)| t == template).unwrap();
        let path = Api::concrete(template, op, unknown);
        for m in ["get", "put", "post", "delete", "patch"] {
            if item.get(m).is_none() {
                let method: Method = m.to_ascii_uppercase().parse().unwrap();
                let r = api.request(method.clone(), &path, Some(json!({}))).await;
                assert_eq!(r.status, 405, "{method} {template} is served but not documented");
            }
        }
    }

    // Without the token every operation answers 401; with the API off, 404; both documented.
    let anonymous = Api::new(&app, None).await;
    let off = spawn_app().await;
    let disabled = Api::new(&off, Some(TOKEN)).await;
    for (template, method, op) in &ops {
        let path = Api::concrete(template, op, unknown);
        let r = anonymous.fetch(method.clone(), &path, api.minimal_body(op)).await;
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
        let r = disabled.fetch(method.clone(), &path, api.minimal_body(op)).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert!(r.json["error"].as_str().unwrap().contains("disabled"));
    }

    // Resources that exist: a device online with a voice conversation (clips uploaded) and a
    // system prompt. Every operation succeeds; the deletions come last, conversation first.
    let (dev, device, sid, clips) = voice_conversation(&app).await;
    app.app.store.set_system_prompt(&device, "You are a kind robot.").await.unwrap();
    let existing = |name: &str, _: &Value| -> String {
        match name {
            "session_id" => sid.to_string(),
            "file_id" => clips[0].file_id.to_string(),
            "device_id" => device.clone(),
            other => panic!("no existing value for the path parameter {other}"),
        }
    };
    let mut in_order: Vec<&(String, Method, Value)> = ops.iter().collect();
    in_order.sort_by_key(|(template, method, _)| (*method == Method::DELETE, template.clone()));
    let mut outcomes = Vec::new();
    for (template, method, op) in in_order {
        let path = Api::concrete(template, op, existing);
        let r = api.fetch(method.clone(), &path, api.minimal_body(op)).await;
        assert!((200..300).contains(&r.status), "{method} {path}: {} {}", r.status, r.json);
        outcomes.push(format!("{method} {template}: {}", r.status));
    }
    eprintln!("existing resources: {outcomes:#?}");
    drop(dev);
}

#[tokio::test]
async fn system_prompts_and_forgetting_a_device() {
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let (device, _) = text_conversation(&app, "remember me").await;
    app.app.writer.flush().await;
    let path = format!("/api/devices/{device}/system-prompt");
    let (status, _) = api.call(Method::GET, &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = api.call(Method::PUT, &path, Some(json!({ "prompt": "" }))).await;
    assert_eq!(status, 400);
    let (status, _) = api.call(Method::PUT, &path, Some(json!({ "wrong": "field" }))).await;
    assert_eq!(status, 400);
    let (status, body) =
        api.call(Method::PUT, &path, Some(json!({ "prompt": "You are a kind robot." }))).await;
    assert_eq!((status, body["prompt"].as_str()), (200, Some("You are a kind robot.")));
    let (_, body) = api.call(Method::GET, &path, None).await;
    assert_eq!(body["prompt"], "You are a kind robot.");

    let (status, body) = api.call(Method::DELETE, &format!("/api/devices/{device}/data"), None).await;
    assert_eq!((status, body["sessions_deleted"].as_u64()), (200, Some(1)));
    let (_, list) = api.call(Method::GET, &format!("/api/conversations?device_id={device}"), None).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    let (status, _) = api.call(Method::GET, &path, None).await;
    assert_eq!(status, 404, "the prompt went with the device");
}

#[tokio::test]
async fn say_speaks_to_an_online_device_and_refuses_offline_or_busy_ones() {
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let (status, _) =
        api.call(Method::POST, "/api/devices/aa:bb:cc:00:00:99/say", Some(json!({"text": "hi"}))).await;
    assert_eq!(status, 404, "offline device");

    let cfg = app.device();
    let device = cfg.device_id.clone().unwrap();
    let mut dev = xiaozhi_gateway::client::DeviceClient::connect(&cfg).await.unwrap();
    let say = format!("/api/devices/{device}/say");
    let (status, _) = api.call(Method::POST, &say, Some(json!({"text": "   "}))).await;
    assert_eq!(status, 400);
    let (status, body) = api.call(Method::POST, &say, Some(json!({"text": "Dinner is ready."}))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["session_id"], dev.session_id());
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(15), Duration::ZERO).await;
    assert_eq!(reply.tts_states().first(), Some(&TtsState::Start));
    assert_eq!(reply.sentences(), vec!["Dinner is ready."]);
    assert!(!reply.frames.is_empty(), "the device hears audio");
    assert_eq!(reply.tts_states().last(), Some(&TtsState::Stop));

    // Busy: a long push-to-talk reply is playing.
    let mut long = Vec::new();
    for _ in 0..3 {
        long.extend(speech_packets());
    }
    dev.tx.listen_start(ListenMode::Manual).await.unwrap();
    dev.tx.stream_audio(&long, Duration::ZERO).await.unwrap();
    dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
    loop {
        if let Event::Json(ServerMessage::Tts { state: TtsState::Start, .. }) =
            dev.rx.next_within(Duration::from_secs(10)).await.unwrap()
        {
            break;
        }
    }
    let (status, _) = api.call(Method::POST, &say, Some(json!({"text": "not now"}))).await;
    assert_eq!(status, 409);
}
