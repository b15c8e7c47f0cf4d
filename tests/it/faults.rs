//! Faults on the shipped binary under load: 50 talking devices from the load generator while
//! PostgreSQL is stopped and started, the S3 server is stopped and started, and the gateway
//! is killed with SIGKILL (clips still waiting for the bucket) and started again. Afterwards
//! every turn the load generator counted has its assistant message in the database, every clip
//! row is `uploaded` and its object is in the bucket; `/readyz` said 503 while PostgreSQL
//! was away.

use std::time::{Duration, Instant};

use sqlx::Connection;
use testkit::pg::Cluster;
use testkit::s3::S3Server;
use xiaozhi_gateway::loadtest::{LoadtestArgs, Report};
use xiaozhi_gateway::store::Store;

use crate::binary_e2e::{Gateway, runtime};
use crate::uploads::{assert_in_bucket, wait_uploaded};

fn load(port: u16, devices: usize, secs: u64) -> LoadtestArgs {
    LoadtestArgs {
        url: format!("ws://127.0.0.1:{port}/xiaozhi/v1/"),
        devices,
        idle_devices: 0,
        ramp_up: 100.0,
        duration: secs,
        turns: 0,
        protocol_version: 1,
        token: None,
        wav: None,
        vad_silence_ms: 600,
        metrics_url: None,
        json: None,
        fail_on_error: false,
    }
}

/// Assistant messages in the database (from a connection of the test's own).
async fn assistant_messages(db_url: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM conversation_messages WHERE role = 'assistant'")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Polls `/readyz` until it answers `status` (true) or `limit` passes (false).
async fn readyz_becomes(port: u16, status: u16, limit: Duration) -> bool {
    // /readyz may take up to 2 s for each of its three checks while the database is away.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await
            && r.status().as_u16() == status
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn counted(report: &Report) -> usize {
    println!("{}", report.table());
    report.turns_ok
}

/// A plain `#[test]`: PostgreSQL and s3s-fs are tied to the thread that started them.
#[test]
fn database_storage_and_process_faults_under_load_lose_nothing() {
    let mut pg = Cluster::start(false);
    let db_url = pg.fresh_database();
    let db_name = db_url.rsplit('/').next().unwrap().to_owned();
    let mut s3 = S3Server::start();
    let bucket = testkit::s3::fresh_bucket();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let env = [
        ("XIAOZHI_DATA_DIR", data.path().display().to_string()),
        ("DB_TYPE", "postgres".to_owned()),
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_PORT", pg.port().to_string()),
        ("DB_USER", "postgres".to_owned()),
        ("DB_NAME", db_name),
        ("MINIO_ENDPOINT", s3.endpoint()),
        ("MINIO_ACCESS_KEY", testkit::s3::ACCESS_KEY.to_owned()),
        ("MINIO_SECRET_KEY", testkit::s3::SECRET_KEY.to_owned()),
        ("MINIO_BUCKET_AUDIO", bucket.clone()),
        // Every simulated device connects from 127.0.0.1.
        ("XIAOZHI_LIMIT_UPGRADES_PER_SEC", "0".to_owned()),
        // Retries come quickly once the bucket is back, and are not given up meanwhile.
        ("XIAOZHI_UPLOAD_BACKOFF_MAX_SECS", "2".to_owned()),
        ("XIAOZHI_UPLOAD_MAX_ATTEMPTS", "1000".to_owned()),
    ];
    let rt = runtime();
    let first_log = logs.path().join("first");
    std::fs::create_dir_all(&first_log).unwrap();
    let mut gw = Gateway::serve(port, &env, &first_log);
    rt.block_on(gw.wait_ready(Duration::from_secs(30)));

    // 50 talking devices for 30 s; PostgreSQL goes away and comes back, then the bucket.
    let first = rt.spawn(async move { xiaozhi_gateway::loadtest::run(&load(port, 50, 30)).await });
    std::thread::sleep(Duration::from_secs(5));
    pg.stop();
    let not_ready = rt.block_on(readyz_becomes(port, 503, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(3));
    pg.restart();
    assert!(not_ready, "/readyz did not say 503 while PostgreSQL was stopped:\n{}", gw.log());
    assert!(rt.block_on(readyz_becomes(port, 200, Duration::from_secs(30))), "ready again:\n{}", gw.log());
    s3.stop();
    std::thread::sleep(Duration::from_secs(6));
    s3.restart();
    let first = rt.block_on(first).unwrap().expect("the load generator ran");
    let mut turns = counted(&first);
    assert!(turns >= 50, "every device completed a turn: {:?}", first.failure_reasons);

    // The bucket goes away again; 50 more devices talk, leaving clips waiting for it; once their
    // turns are in the database the gateway is killed outright, then everything comes back.
    s3.stop();
    let second = rt.block_on(xiaozhi_gateway::loadtest::run(&load(port, 50, 12))).expect("ran");
    turns += counted(&second);
    let committed = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = assistant_messages(&db_url).await;
            if n as usize >= turns || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(committed as usize >= turns, "{committed} assistant messages for {turns} counted turns");
    let store = rt.block_on(Store::connect_url(&db_url)).unwrap();
    let pending = rt.block_on(store.upload_backlog()).unwrap().pending;
    assert!(pending > 0, "clips wait for the bucket when the gateway is killed");
    gw.kill();
    s3.restart();
    let second_log = logs.path().join("second");
    std::fs::create_dir_all(&second_log).unwrap();
    let mut gw = Gateway::serve(port, &env, &second_log);
    rt.block_on(gw.wait_ready(Duration::from_secs(30)));

    rt.block_on(async {
        assert!(
            assistant_messages(&db_url).await as usize >= turns,
            "every counted turn has its assistant message"
        );
        let clips = wait_uploaded(&store, 2 * turns, Duration::from_secs(120)).await;
        assert!(clips.len() >= 2 * turns, "{} clips for {turns} turns", clips.len());
        assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));
        store.close().await;
        gw.terminate(Duration::from_secs(30)).await;
    });
    println!("fault test: {turns} turns counted, {pending} clips pending at SIGKILL, all uploaded");
}
