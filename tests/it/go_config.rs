//! Moving in from the starting design's configuration: the Go server's `config.yaml`, as it
//! is, starts the real binary against PostgreSQL and S3 (its unused keys listed once as
//! ignored); `DB_TYPE=mysql` is answered with what to do instead.

use std::time::Duration;

use testkit::pg::Cluster;
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig};
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::Role;

use crate::binary_e2e::{Gateway, gateway_command, run_within, runtime};
use crate::helpers::*;
use crate::uploads::{assert_in_bucket, wait_uploaded};

/// The fixture, its database and MinIO sections pointed at the servers the test started.
fn go_config(pg_port: u16, db_name: &str, s3_endpoint: &str, bucket: &str) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/go-server-config.yaml"))
            .expect("the fixture");
    let replaced = text
        .replacen(
            "  host: \"localhost\"\n  port: \"5432\"",
            &format!("  host: \"127.0.0.1\"\n  port: \"{pg_port}\""),
            1,
        )
        .replacen("  username: \"xiaozhi\"", "  username: \"postgres\"", 1)
        .replacen("  database: \"xiaozhi_admin\"", &format!("  database: \"{db_name}\""), 1)
        .replacen("endpoint: \"localhost:9000\"", &format!("endpoint: \"{s3_endpoint}\""), 1)
        .replacen(
            "access_key_id: \"minioadmin\"",
            &format!("access_key_id: \"{}\"", testkit::s3::ACCESS_KEY),
            1,
        )
        .replacen(
            "secret_access_key: \"minioadmin123\"",
            &format!("secret_access_key: \"{}\"", testkit::s3::SECRET_KEY),
            1,
        )
        .replacen("bucket_audio: \"xiaozhi-audio\"", &format!("bucket_audio: \"{bucket}\""), 1);
    assert_ne!(text, replaced);
    replaced
}

#[test]
fn the_go_servers_config_yaml_starts_the_gateway_on_postgres_and_s3() {
    let cluster = Cluster::start(false);
    let db_url = cluster.fresh_database();
    let db_name = db_url.rsplit('/').next().unwrap().to_owned();
    let s3 = testkit::s3::shared();
    let bucket = testkit::s3::fresh_bucket();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.yaml");
    std::fs::write(&config, go_config(cluster.port(), &db_name, &s3.endpoint, &bucket)).unwrap();
    let config = config.display().to_string();
    let env =
        [("XIAOZHI_DATA_DIR", data.path().display().to_string()), ("XIAOZHI_LOG_FORMAT", "text".into())];

    let migrate =
        run_within(gateway_command(&["--config", &config, "migrate"], &env), Duration::from_secs(20));
    assert!(migrate.status.success(), "migrate failed:\n{}", migrate.stderr);
    assert!(migrate.stdout.contains("Postgres"), "migrate used {}", migrate.stdout);

    runtime().block_on(async {
        let port = testkit::free_port();
        let mut gw = Gateway::serve_with(&["--config", &config], port, &env, data.path());
        gw.wait_ready(Duration::from_secs(20)).await;
        // Unused keys are listed once, by name; the mapped ones are not among them.
        let log = gw.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("does not use")).collect();
        assert_eq!(lines.len(), 1, "one line lists the ignored keys:\n{log}");
        for key in [
            "mqtt.broker",
            "llm.deepseek.api_key",
            "memory.postgres.host",
            "wakeup_words",
            "redis.key_prefix",
        ] {
            assert!(lines[0].contains(key), "{key} not listed as ignored: {}", lines[0]);
        }
        for key in ["database.host", "minio.endpoint", "conversation.postgres.message_retention_days"] {
            assert!(!lines[0].contains(key), "{key} is used, not ignored: {}", lines[0]);
        }

        let device_id = fresh_device_id();
        let mut dev = DeviceClient::connect(&DeviceConfig::new(
            format!("ws://127.0.0.1:{port}/xiaozhi/v1/"),
            &device_id,
        ))
        .await
        .expect("device connects");
        let reply = auto_turn(&mut dev).await;
        assert!(!reply.frames.is_empty(), "the echo was heard");

        // The turn is in the PostgreSQL database the YAML names, its clips in its bucket.
        let store = Store::connect_url(&db_url).await.unwrap();
        let mut messages = Vec::new();
        for _ in 0..100 {
            messages = store.recent_messages(&device_id, 10).await.unwrap();
            if messages.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let clips = wait_uploaded(&store, 2, Duration::from_secs(20)).await;
        assert_eq!(messages.iter().map(|m| m.role).collect::<Vec<_>>(), [Role::User, Role::Assistant]);
        assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));

        dev.tx.close().await.unwrap();
        drop(dev);
        let status = gw.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "exit status {status:?}:\n{}", gw.log());
        store.close().await;
    });
    drop(cluster);
}

#[test]
fn db_type_mysql_is_answered_with_the_import_command() {
    let data = tempfile::tempdir().unwrap();
    let env = [("DB_TYPE", "mysql".to_owned()), ("XIAOZHI_DATA_DIR", data.path().display().to_string())];
    let port = testkit::free_port();
    let serve = run_within(
        gateway_command(&["serve", "--listen", &format!("127.0.0.1:{port}")], &env),
        Duration::from_secs(10),
    );
    assert!(!serve.status.success(), "serve started on DB_TYPE=mysql");
    assert!(serve.stderr.contains("DB_TYPE"), "{}", serve.stderr);
    assert!(
        serve.stderr.contains(
            "MySQL is not a live backend; import it with `xiaozhi-gateway import mysql` and run on PostgreSQL or SQLite"
        ),
        "{}",
        serve.stderr
    );
    assert!(!serve.stderr.contains("unknown variant"), "{}", serve.stderr);

    // The same from the Go server's file.
    let config = data.path().join("config.yaml");
    std::fs::write(&config, "database:\n  type: \"mysql\"\n  host: \"db\"\n").unwrap();
    let env = [("XIAOZHI_DATA_DIR", data.path().display().to_string())];
    let migrate = run_within(
        gateway_command(&["--config", config.to_str().unwrap(), "migrate"], &env),
        Duration::from_secs(10),
    );
    assert!(!migrate.status.success());
    assert!(migrate.stderr.contains("import it with `xiaozhi-gateway import mysql`"), "{}", migrate.stderr);
}
