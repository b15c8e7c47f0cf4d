//! Interoperability with an independent client: the PyPI package `xiaozhi-sdk` 0.5.1, driven
//! through its public API by `tests/interop/sdk_driver.py`. The interpreter comes from
//! `XIAOZHI_SDK_PYTHON`, or `scripts/python-env.sh` sets up a cached virtualenv.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::helpers::*;

fn sdk_python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(py) = std::env::var("XIAOZHI_SDK_PYTHON") {
            return py;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-env.sh");
        let out = Command::new("bash").arg(&script).output().expect("run scripts/python-env.sh");
        assert!(out.status.success(), "python-env.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().last().expect("python path").trim().to_owned()
    })
}

/// Runs the driver with `args` and returns its JSON report.
pub async fn drive(args: Vec<String>) -> Value {
    let py = sdk_python().to_owned();
    tokio::task::spawn_blocking(move || {
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk_driver.py");
        let out = Command::new(py).arg(driver).args(&args).output().expect("run the SDK driver");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap_or_else(|e| {
            panic!("driver printed no JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
        })
    })
    .await
    .unwrap()
}

pub fn speech_wav() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-16k.wav").to_owned()
}

fn assert_voice_turn(report: &Value) {
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["stt"].as_str().unwrap().contains("echo"), "{report:#}");
    let states: Vec<&str> =
        report["tts_states"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(states.first(), Some(&"start"));
    assert_eq!(states.last(), Some(&"stop"));
    // The shipped sample is ~1.3 s: about 20 packets of 60 ms, each decodable by the SDK.
    assert!(report["audio_packets"].as_u64().unwrap() >= 15, "{report:#}");
    assert_eq!(report["sdk"]["audio_decode_errors"], 0, "{report:#}");
    assert!(report["audio_decoded_samples"].as_u64().unwrap() >= 15 * 960);
}

#[tokio::test]
async fn sdk_voice_turn_direct() {
    let app = spawn_app().await;
    let report = drive(vec!["--ws-url".into(), app.ws_url(), "--wav".into(), speech_wav()]).await;
    assert_voice_turn(&report);
}

#[tokio::test]
async fn sdk_voice_turn_through_ota_with_issued_token() {
    let app = spawn_app_with(|s| s.auth.secret = Some("interop-secret".into())).await;
    let ota = app.http_url("/xiaozhi/ota/");
    let report = drive(vec!["--ota-url".into(), ota, "--wav".into(), speech_wav()]).await;
    assert_voice_turn(&report);

    // Without OTA there is no token, and the gateway refuses the SDK before the upgrade.
    let refused = drive(vec![
        "--ws-url".into(),
        app.ws_url(),
        "--text".into(),
        "hi there".into(),
        "--timeout".into(),
        "8".into(),
    ])
    .await;
    assert_eq!(refused["ok"], false, "{refused:#}");
    assert!(refused["messages"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn sdk_text_turns_direct_and_through_ota() {
    let app = spawn_app().await;
    for (flag, url) in [("--ws-url", app.ws_url()), ("--ota-url", app.http_url("/xiaozhi/ota/"))] {
        let report = drive(vec![flag.into(), url, "--text".into(), "打开客厅的灯".into()]).await;
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(report["sentences"][0], "打开客厅的灯");
        assert_eq!(report["stt"], "打开客厅的灯");
    }
}
