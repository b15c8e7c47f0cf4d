//! Start-up says what it runs: the shipped binary's first log lines name the store (kind and
//! location, never the password), object storage, the brain, the authentication mode and the
//! WebSocket URL the OTA endpoint will give devices.

use std::time::Duration;

use serde_json::Value;
use testkit::pg::Cluster;

use crate::binary_e2e::{Gateway, runtime};

/// The JSON log line whose message is `message` (the binary logs JSON when not on a terminal).
fn line<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| {
            l["message"].as_str().is_some_and(|m| m == message || m.starts_with(&format!("{message}:")))
        })
        .unwrap_or_else(|| panic!("no {message:?} line in the log:\n{lines:#?}"))
}

fn parse(log: &str) -> Vec<Value> {
    log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn start_up_names_store_storage_brain_auth_and_the_ota_url() {
    let cluster = Cluster::start(false);
    let db_url = cluster.fresh_database();
    let db_name = db_url.rsplit('/').next().unwrap().to_owned();
    let s3 = testkit::s3::shared();
    let bucket = testkit::s3::fresh_bucket();
    let data = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let password = "hunter2-not-for-logs";
    let env = [
        ("XIAOZHI_DATA_DIR", data.path().display().to_string()),
        ("DB_TYPE", "postgres".to_owned()),
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_PORT", cluster.port().to_string()),
        ("DB_USER", "postgres".to_owned()),
        ("DB_PASSWORD", password.to_owned()),
        ("DB_NAME", db_name.clone()),
        ("MINIO_ENDPOINT", s3.endpoint.clone()),
        ("MINIO_ACCESS_KEY", testkit::s3::ACCESS_KEY.to_owned()),
        ("MINIO_SECRET_KEY", testkit::s3::SECRET_KEY.to_owned()),
        ("MINIO_BUCKET_AUDIO", bucket.clone()),
        ("XIAOZHI_AUTH_SECRET", "a-signing-secret".to_owned()),
        ("XIAOZHI_PUBLIC_URL", "wss://voice.example.com/xiaozhi/v1/".to_owned()),
    ];
    runtime().block_on(async {
        let mut gw = Gateway::serve(port, &env, data.path());
        gw.wait_ready(Duration::from_secs(20)).await;
        let log = gw.log();
        assert!(!log.contains(password), "the database password is in the log:\n{log}");
        assert!(!log.contains("a-signing-secret"), "the token secret is in the log:\n{log}");
        let lines = parse(&log);

        let store = line(&lines, "store");
        assert_eq!(store["kind"], "postgres");
        let location = store["location"].as_str().unwrap();
        assert!(
            location.contains(&format!("127.0.0.1:{}/{db_name}", cluster.port())),
            "store location: {location}"
        );
        let storage = line(&lines, "object storage");
        assert_eq!(storage["kind"], "s3");
        assert_eq!(storage["endpoint"], s3.endpoint.as_str());
        assert_eq!(storage["bucket"], bucket.as_str());
        assert_eq!(line(&lines, "brain")["kind"], "echo");
        assert_eq!(line(&lines, "authentication")["mode"], "signed tokens issued by OTA");
        assert_eq!(
            line(&lines, "OTA gives devices the WebSocket URL")["url"],
            "wss://voice.example.com/xiaozhi/v1/"
        );
        gw.terminate(Duration::from_secs(20)).await;
    });
    drop(cluster);
}

#[test]
fn start_up_with_the_defaults_names_sqlite_the_local_directory_and_no_authentication() {
    let data = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let env = [
        ("XIAOZHI_DATA_DIR", data.path().display().to_string()),
        ("XIAOZHI_ASR_URL", "http://127.0.0.1:9/v1".to_owned()),
        ("XIAOZHI_LLM_URL", "http://127.0.0.1:9/v1".to_owned()),
        ("XIAOZHI_LLM_MODEL", "a-chat-model".to_owned()),
    ];
    runtime().block_on(async {
        let mut gw = Gateway::serve(port, &env, data.path());
        gw.wait_ready(Duration::from_secs(20)).await;
        let lines = parse(&gw.log());
        let store = line(&lines, "store");
        assert_eq!(store["kind"], "sqlite");
        assert!(store["location"].as_str().unwrap().ends_with("xiaozhi.db"), "{store}");
        assert_eq!(line(&lines, "object storage")["kind"], "local directory");
        let brain = line(&lines, "brain");
        assert_eq!(brain["kind"], "providers");
        assert!(brain["llm"].as_str().unwrap().contains("a-chat-model"), "{brain}");
        assert_eq!(line(&lines, "authentication")["mode"], "off: any device may connect");
        let ota = line(&lines, "OTA gives devices the WebSocket URL derived from each request's Host header (set XIAOZHI_PUBLIC_URL to fix it)");
        assert_eq!(ota["url"], "ws://<Host header>/xiaozhi/v1/");
        gw.terminate(Duration::from_secs(20)).await;
    });
}
