//! The admin API, as an operator uses it, with every response checked against the served
//! OpenAPI document (status documented for the operation, body valid against its schema).

use std::time::Duration;

use firmware_protocol::{ListenMode, ListenState, ServerMessage, TtsState};
use reqwest::Method;
use serde_json::{Value, json};
use xiaozhi_gateway::client::Event;
use xiaozhi_gateway::config::Settings;

use crate::helpers::*;

const TOKEN: &str = "admin-s3cret";

/// Talks to `/api` and checks each answer against the OpenAPI document.
struct Api {
    base: String,
    token: Option<String>,
    doc: Value,
    http: reqwest::Client,
}

impl Api {
    async fn new(app: &TestApp, token: Option<&str>) -> Api {
        let doc: Value =
            serde_json::from_str(xiaozhi_gateway::api::OPENAPI).expect("the OpenAPI document is JSON");
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Api { base: app.http_url(""), token: token.map(str::to_owned), doc, http }
    }

    /// Calls the API; returns the status and the JSON body (Null when not JSON).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let bytes = resp.bytes().await.unwrap();
        let value = if ctype.starts_with("application/json") {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {path}: bad JSON ({e})"))
        } else {
            Value::Null
        };
        self.check(&method, path, status, &ctype, &value);
        (status, value)
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

    fn check(&self, method: &Method, path: &str, status: u16, ctype: &str, body: &Value) {
        let op = self.operation(method, path);
        let resp = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path} answered {status}, which is not documented"));
        let Some(content) = resp.get("content") else { return };
        let media = ctype.split(';').next().unwrap_or("");
        let schema =
            content
                .get(media)
                .unwrap_or_else(|| panic!("{method} {path} {status}: content type {media:?} not documented"))
                ["schema"]
                .clone();
        if media != "application/json" {
            return;
        }
        let mut root = schema;
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::validator_for(&root).expect("schema compiles");
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: body does not match the schema: {errors:?}\n{body:#}"
        );
    }
}

async fn app_with_token() -> TestApp {
    spawn_app_with(|s: &mut Settings| s.admin.token = Some(TOKEN.into())).await
}

/// A text turn, so that a session with two messages exists.
async fn text_conversation(app: &TestApp, text: &str) -> (String, uuid::Uuid) {
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

/// A voice turn; returns the session id once its clips are uploaded.
async fn voice_conversation(app: &TestApp) -> uuid::Uuid {
    let mut dev = app.connect().await;
    auto_turn(&mut dev).await;
    app.app.writer.flush().await;
    for _ in 0..100 {
        if app.app.store.upload_backlog().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    uuid::Uuid::parse_str(dev.session_id()).unwrap()
}

async fn clips_and_deletion(app: TestApp, bucket_file: impl Fn(&str) -> std::path::PathBuf) {
    let api = Api::new(&app, Some(TOKEN)).await;
    let sid = voice_conversation(&app).await;
    let (_, m) = api.call(Method::GET, &format!("/api/conversations/{sid}/messages"), None).await;
    let items = m["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    for msg in &items {
        let file_id = msg["audio_file_id"].as_str().expect("voice messages have clips");
        let url = msg["audio_url"].as_str().unwrap();
        // The listed URL serves the clip: presigned straight from S3, or through the gateway.
        let full = if url.starts_with('/') { format!("{}{url}", api.base) } else { url.to_owned() };
        let mut req = reqwest::Client::new().get(&full);
        if url.starts_with('/') {
            req = req.bearer_auth(TOKEN);
        }
        let bytes = req.send().await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..4], b"OggS", "{full}");
        // /api/audio/{id}: the bytes (local) or a redirect to a presigned URL (S3).
        let (status, _) = api.call(Method::GET, &format!("/api/audio/{file_id}"), None).await;
        assert!(status == 200 || status == 307, "{status}");
    }
    let keys: Vec<String> =
        app.app.store.session_clips(sid).await.unwrap().into_iter().map(|c| c.object_key).collect();
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
    let app = app_with_token().await;
    let root = app.app.settings.data_dir.join("objects").join(&app.app.settings.storage.bucket);
    clips_and_deletion(app, move |k| root.join(k)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clips_are_served_and_deleted_with_their_conversation_in_s3() {
    let s3 = tokio::task::spawn_blocking(testkit::s3::shared).await.unwrap();
    let app = spawn_app_with(|s: &mut Settings| {
        s.admin.token = Some(TOKEN.into());
        crate::storage_suite::s3_settings(s);
    })
    .await;
    let bucket = app.app.settings.storage.bucket.clone();
    clips_and_deletion(app, move |k| s3.object_path(&bucket, k)).await;
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
