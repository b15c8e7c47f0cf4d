//! The camera tool: the gateway tells the device in `initialize` where to upload and with
//! what token; the device's photo reaches a vision model, its answer goes back to the tool
//! call, and the image lands in the bucket linked to the tool's result. Bad uploads are
//! refused with a status that says why.

use std::time::Duration;

use firmware_protocol::{ServerMessage, TtsState};
use reqwest::multipart::{Form, Part};
use sha2::{Digest, Sha256};
use xiaozhi_gateway::client::{DeviceClient, Event};
use xiaozhi_gateway::store::model::Role;

use crate::brain::{spawn_brain_with, stored};
use crate::fake_openai::{ChatScript, FakeOpenAi};
use crate::helpers::reply_mcp;

/// The smallest thing that starts like a JPEG, and enough of it to be a photo-sized upload.
fn jpeg(len: usize) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0];
    b.resize(len, 0x55);
    b.extend_from_slice(&[0xFF, 0xD9]);
    b
}

/// What the gateway put in `initialize`: the upload URL and token.
async fn discover(dev: &mut DeviceClient) -> (String, String) {
    let mut vision = None;
    for _ in 0..2 {
        let Event::Json(ServerMessage::Mcp { payload }) =
            dev.rx.next_within(Duration::from_secs(5)).await.unwrap()
        else {
            panic!("expected MCP discovery")
        };
        assert!(payload["id"].is_i64(), "firmware drops MCP requests whose id is not an integer");
        let result = match payload["method"].as_str().unwrap() {
            "initialize" => {
                let v = &payload["params"]["capabilities"]["vision"];
                vision =
                    Some((v["url"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned()));
                serde_json::json!({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}}})
            }
            "tools/list" => serde_json::json!({"tools": [{
                "name": "self.camera.take_photo",
                "description": "Take a photo and explain it",
                "inputSchema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
            }]}),
            m => panic!("unexpected {m}"),
        };
        reply_mcp(dev, &payload["id"], result).await;
    }
    vision.expect("initialize offers the vision endpoint")
}

/// Uploads like the firmware's camera: multipart `question` + `file`, bearer token, Device-Id.
async fn upload(
    url: &str,
    token: Option<&str>,
    device: &str,
    question: &str,
    file: Vec<u8>,
) -> (u16, serde_json::Value) {
    let form = Form::new()
        .text("question", question.to_owned())
        .part("file", Part::bytes(file).file_name("camera.jpg").mime_str("image/jpeg").unwrap());
    let mut req = reqwest::Client::new().post(url).header("Device-Id", device).multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_is_explained_answers_the_tool_call_and_lands_in_the_bucket() {
    let s3 = tokio::task::spawn_blocking(testkit::s3::shared).await.unwrap();
    let bucket = testkit::s3::fresh_bucket();
    let fake = FakeOpenAi::start().await;
    fake.push_chat(ChatScript::tool_calls(&[(
        "call_1",
        "self_camera_take_photo",
        &["{\"question\":\"what fruit is this?\"}"],
    )]));
    fake.push_chat(ChatScript::reply(&["A red apple on a wooden table."]));
    fake.push_chat(ChatScript::reply(&["That is a red apple."]));
    let (app, _data) = spawn_brain_with(&fake, |s| {
        s.storage.endpoint = Some(s3.endpoint.clone());
        s.storage.access_key = testkit::s3::ACCESS_KEY.into();
        s.storage.secret_key = testkit::s3::SECRET_KEY.into();
        s.storage.bucket = bucket.clone();
        s.brain.vision_model = Some("fake-vision".into());
    })
    .await;
    let cfg = app.device();
    let device = cfg.device_id.clone().unwrap();
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    let (url, token) = discover(&mut dev).await;
    assert_eq!(url, format!("http://{}/mcp/vision/explain", app.addr));
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("what am I holding")).await.unwrap();

    let photo = jpeg(30_000);
    let mut sentences = Vec::new();
    let mut vision_answer = None;
    loop {
        match dev.rx.next_within(Duration::from_secs(20)).await.unwrap() {
            Event::Json(ServerMessage::Mcp { payload }) if payload["method"] == "tools/call" => {
                assert_eq!(payload["params"]["name"], "self.camera.take_photo");
                let question = payload["params"]["arguments"]["question"].as_str().unwrap().to_owned();
                let (status, body) = upload(&url, Some(&token), &device, &question, photo.clone()).await;
                assert_eq!(status, 200, "{body}");
                vision_answer = Some(body.to_string());
                let result = serde_json::json!({"content": [{"type": "text", "text": body.to_string()}], "isError": false});
                reply_mcp(&mut dev, &payload["id"], result).await;
            }
            Event::Json(ServerMessage::Tts { state: TtsState::SentenceStart, text }) => {
                sentences.push(text.unwrap())
            }
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => break,
            Event::Closed(c) => panic!("closed {c:?}"),
            _ => {}
        }
    }
    assert_eq!(sentences, vec!["That is a red apple."]);
    let answer = vision_answer.expect("the device was asked to take a photo");
    assert!(answer.contains("A red apple on a wooden table."), "{answer}");

    // The vision model saw the image and the question.
    let chats = fake.requests_to("/chat/completions");
    assert_eq!(chats.len(), 3);
    assert_eq!(chats[1].json_field("model"), "fake-vision");
    let parts = chats[1].json_field("messages")[1]["content"].as_array().unwrap().clone();
    assert_eq!(parts[0]["text"], "what fruit is this?");
    assert!(parts[1]["image_url"]["url"].as_str().unwrap().starts_with("data:image/jpeg;base64,/9j/"));
    // The model's final round heard the tool result (the vision answer).
    let last = chats[2].json_field("messages").as_array().unwrap().clone();
    assert!(last.iter().any(|m| m["role"] == "tool" && m["content"].as_str().unwrap().contains("red apple")));

    // Stored: the tool result links to the image, which is uploaded byte for byte.
    let _ = stored(&app, dev.session_id()).await;
    let session = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    let mut image = None;
    for _ in 0..200 {
        app.app.writer.flush().await;
        let clips = app.app.store.session_clips(session).await.unwrap();
        image = clips.into_iter().find(|c| c.source_type == "image" && c.upload_status == "uploaded");
        if image.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let image = image.expect("the image was uploaded");
    assert_eq!(image.file_type, "jpg");
    assert!(image.object_key.starts_with(&format!("{device}/")) && image.object_key.ends_with(".jpg"));
    let in_bucket = std::fs::read(s3.object_path(&bucket, &image.object_key)).unwrap();
    assert_eq!(Sha256::digest(&in_bucket), Sha256::digest(&photo), "the bucket holds the photo");
    let messages = app.app.store.session_messages(session).await.unwrap();
    let tool = messages.iter().find(|m| m.role == Role::Tool).unwrap();
    assert_eq!(tool.audio_file_id, Some(image.file_id));
    assert_eq!(image.message_id, tool.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_a_reason() {
    let fake = FakeOpenAi::start().await;
    let (app, _data) = spawn_brain_with(&fake, |s| s.brain.vision_max_bytes = 100_000).await;
    let cfg = app.device();
    let device = cfg.device_id.clone().unwrap();
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    let (url, token) = discover(&mut dev).await;

    let (status, body) = upload(&url, None, &device, "q", jpeg(1000)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["success"], false);
    let (status, _) = upload(&url, Some("not-a-token"), &device, "q", jpeg(1000)).await;
    assert_eq!(status, 401);
    let (status, _) = upload(&url, Some(&token), "ff:ff:ff:ff:ff:ff", "q", jpeg(1000)).await;
    assert_eq!(status, 403, "another device's token");
    let (status, body) = upload(&url, Some(&token), &device, "q", b"#!/bin/sh\nrm -rf /\n".to_vec()).await;
    assert_eq!(status, 415, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not a JPEG"));
    let (status, _) = upload(&url, Some(&token), &device, "q", jpeg(200_000)).await;
    assert_eq!(status, 413, "larger than XIAOZHI_VISION_MAX_BYTES");
    let (status, _) = upload(&url, Some(&token), &device, "q", Vec::new()).await;
    assert_eq!(status, 400, "an empty file part");
    let raw = reqwest::Client::new().post(&url).bearer_auth(&token).body("plain").send().await.unwrap();
    assert_eq!(raw.status().as_u16(), 400, "not multipart");
    assert!(fake.requests_to("/chat/completions").is_empty(), "nothing bad reached the model");

    // The vision model failing is a 502 the tool call can report.
    fake.push_chat(crate::fake_openai::ChatScript::Status(500, "gpu on fire".into()));
    let (status, body) = upload(&url, Some(&token), &device, "what is it", jpeg(1000)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["message"].as_str().unwrap().contains("gpu on fire"));

    // Once the session is over, its token uploads nothing.
    drop(dev);
    for _ in 0..50 {
        if app.app.sessions.get(&device).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = upload(&url, Some(&token), &device, "q", jpeg(1000)).await;
    assert_eq!(status, 409);
}
