//! The shipped binary, configured only through the seed deployment's environment names
//! (`DB_*` and `MINIO_*`, no `DATABASE_URL`): voice turns land linked in PostgreSQL, their
//! clips in the bucket, playable and as long as what the device sent and heard; `migrate`
//! prepares a database, and a schema newer than the binary is refused by `migrate` and at start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testkit::pg::Cluster;
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig};
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::{Role, StoredMessage};

use crate::helpers::*;
use crate::persistence::opusinfo;
use crate::uploads::{assert_in_bucket, files_under, wait_uploaded};

/// The duration of every packet the test device sends (and of the echo it hears back).
const FRAME_MS: u64 = 60;

/// A `xiaozhi-gateway` command with nothing from the test's environment but `PATH`.
pub(crate) fn gateway_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xiaozhi-gateway"));
    cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// How a command that was expected to exit did.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `cmd` to completion; panics (after killing it) if it is still running after `limit`.
pub(crate) fn run_within(mut cmd: Command, limit: Duration) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start the gateway binary");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        took: started.elapsed(),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    }
}

/// `serve` running as a child; its stderr goes to a file. Killed when dropped (a failed test).
pub(crate) struct Gateway {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    pub(crate) fn serve(port: u16, env: &[(&str, String)], log_dir: &Path) -> Gateway {
        Self::serve_with(&[], port, env, log_dir)
    }

    /// `serve` with extra arguments before it (`--config FILE`).
    pub(crate) fn serve_with(args: &[&str], port: u16, env: &[(&str, String)], log_dir: &Path) -> Gateway {
        let log = log_dir.join("gateway.log");
        let listen = format!("127.0.0.1:{port}");
        let all: Vec<&str> = args.iter().copied().chain(["serve", "--listen", &listen]).collect();
        let child = gateway_command(&all, env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the gateway binary");
        Gateway { child: Some(child), port, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `GET /readyz` to answer 200; panics if the process exits first.
    pub(crate) async fn wait_ready(&mut self, limit: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        // The test process starts no gateway of its own here, so nothing installed it yet.
        xiaozhi_gateway::install_crypto_provider();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let deadline = Instant::now() + limit;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the gateway exited with {status:?} before it was ready:\n{}", self.log());
            }
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => return,
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz not 200 within {limit:?} (last: {last}):\n{}", self.log());
    }

    /// SIGKILL: no drain, no flush, as when the machine loses power or the OOM killer strikes.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status (panics if the process is still running after `limit`).
    pub(crate) async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child by pid; it has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not exit within {limit:?} of SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain `#[test]`: the PostgreSQL cluster is started from the test's own thread, which it
/// is tied to (it dies with the thread that started it), and lives as long as the test.
#[test]
fn serve_with_the_seed_db_names_keeps_linked_turns_in_postgres() {
    let cluster = Cluster::start(false);
    let db_url = cluster.fresh_database();
    let db_name = db_url.rsplit('/').next().unwrap().to_owned();
    let s3 = testkit::s3::shared();
    let bucket = testkit::s3::fresh_bucket();
    let data = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let env = [
        ("XIAOZHI_DATA_DIR", data.path().display().to_string()),
        ("DB_TYPE", "postgres".to_owned()),
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_PORT", cluster.port().to_string()),
        ("DB_USER", "postgres".to_owned()),
        ("DB_NAME", db_name),
        ("DB_SSL_MODE", "disable".to_owned()),
        ("MINIO_ENDPOINT", s3.endpoint.clone()),
        ("MINIO_ACCESS_KEY", testkit::s3::ACCESS_KEY.to_owned()),
        ("MINIO_SECRET_KEY", testkit::s3::SECRET_KEY.to_owned()),
        ("MINIO_BUCKET_AUDIO", bucket.clone()),
    ];
    runtime().block_on(async {
        let mut gw = Gateway::serve(port, &env, data.path());
        gw.wait_ready(Duration::from_secs(20)).await;

        let device_id = fresh_device_id();
        let mut dev = DeviceClient::connect(&DeviceConfig::new(
            format!("ws://127.0.0.1:{port}/xiaozhi/v1/"),
            &device_id,
        ))
        .await
        .expect("device connects");
        let session_id = uuid::Uuid::parse_str(dev.session_id()).unwrap();
        // Per turn: packets the device sent (speech then silence), echo packets it heard.
        let mut sent = Vec::new();
        let mut heard = Vec::new();
        for _ in 0..2 {
            sent.push(spoken_turn().len() as u64);
            let reply = auto_turn(&mut dev).await;
            assert!(!reply.frames.is_empty(), "the echo was heard");
            heard.push(reply.frames.len() as u64);
        }

        let store = Store::connect_url(&db_url).await.unwrap();
        let mut messages: Vec<StoredMessage> = Vec::new();
        for _ in 0..100 {
            messages = store.session_messages(session_id).await.unwrap();
            if messages.len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sessions = store.sessions(None, None, 100).await.unwrap().items;
        assert_eq!(sessions.len(), 1, "one session row: {sessions:?}");
        assert_eq!(
            (sessions[0].session_id, sessions[0].device_id.as_str()),
            (session_id, device_id.as_str())
        );

        // The echo brain reserves two sequence numbers per turn: contiguous and in order.
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::User, Role::Assistant], "{messages:#?}");
        assert_eq!(messages.iter().map(|m| m.sequence_num).collect::<Vec<_>>(), [0, 1, 2, 3]);

        let clips = wait_uploaded(&store, 4, Duration::from_secs(20)).await;
        assert_eq!(clips.len(), 4, "a clip for each message: {clips:#?}");
        let clip_of = |m: &StoredMessage| {
            let id = m.audio_file_id.unwrap_or_else(|| panic!("a voice turn's message has audio: {m:?}"));
            let clip = clips.iter().find(|c| c.file_id == id).expect("message → clip");
            assert_eq!(clip.message_id, m.message_id, "clip → message");
            clip
        };
        for m in &messages {
            clip_of(m);
        }
        // Each clip is uploaded, and the object the bucket holds is the clip's bytes.
        assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));
        let bucket_dir = s3.root.join(&bucket);
        let objects = files_under(&bucket_dir);
        assert_eq!(objects.len(), clips.len(), "one object per clip: {objects:?}");
        for path in &objects {
            let key = path.strip_prefix(&bucket_dir).unwrap().to_str().unwrap();
            let clip =
                clips.iter().find(|c| c.object_key == key).unwrap_or_else(|| panic!("stray object {key}"));
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(bytes.len() as i64, clip.file_size, "{key}");
            assert_eq!(sha256_hex(&bytes), clip.checksum, "{key}");
        }

        // Measured by an independent tool against what the device itself sent and heard.
        for turn in 0..2 {
            let user = clip_of(&messages[2 * turn]);
            let (user_ms, warnings) =
                opusinfo(&std::fs::read(s3.object_path(&bucket, &user.object_key)).unwrap());
            assert!(warnings.is_empty(), "{warnings}");
            let sent_ms = sent[turn] * FRAME_MS;
            assert!(
                (1000..=sent_ms).contains(&user_ms),
                "turn {turn}: user clip plays {user_ms} ms; the device sent {sent_ms} ms"
            );
            let reply = clip_of(&messages[2 * turn + 1]);
            let (reply_ms, warnings) =
                opusinfo(&std::fs::read(s3.object_path(&bucket, &reply.object_key)).unwrap());
            assert!(warnings.is_empty(), "{warnings}");
            let heard_ms = heard[turn] * FRAME_MS;
            assert!(
                reply_ms.abs_diff(heard_ms) <= 60,
                "turn {turn}: reply clip plays {reply_ms} ms; the device heard {} frames ({heard_ms} ms)",
                heard[turn]
            );
        }

        dev.tx.close().await.unwrap();
        drop(dev);
        let status = gw.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "exit status {status:?} after SIGTERM:\n{}", gw.log());
        let session = store.session(session_id).await.unwrap().unwrap();
        assert_eq!(session.status, "ended");
        store.close().await;
    });
    drop(cluster);
}

#[test]
fn migrate_subcommand_and_a_newer_schema_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let env = [("DB_TYPE", "sqlite".to_owned()), ("XIAOZHI_DATA_DIR", data.path().display().to_string())];
    let known = xiaozhi_gateway::store::schema_version();

    let migrate = run_within(gateway_command(&["migrate"], &env), Duration::from_secs(20));
    assert!(migrate.status.success(), "migrate failed ({:?}):\n{}", migrate.status, migrate.stderr);
    assert!(
        migrate.stdout.contains(&format!("database schema at version {known}")),
        "stdout: {}",
        migrate.stdout
    );
    let file = data.path().join("xiaozhi.db");
    assert!(file.exists(), "the SQLite file is under XIAOZHI_DATA_DIR");
    let url = format!("sqlite://{}", file.display());
    runtime().block_on(async {
        let store = Store::connect_url(&url).await.unwrap();
        assert_eq!(store.applied_version().await.unwrap(), known);
        store.close().await;
        // A gateway from the future migrated this database.
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    });

    let port = testkit::free_port();
    let serve = run_within(
        gateway_command(&["serve", "--listen", &format!("127.0.0.1:{port}")], &env),
        Duration::from_secs(10),
    );
    assert!(!serve.status.success(), "serve started on a newer schema:\n{}", serve.stderr);
    assert!(serve.took < Duration::from_secs(5), "serve took {:?} to give up", serve.took);
    let newer = format!("the database schema is at version 9999, newer than this binary knows ({known})");
    assert!(serve.stderr.contains(&newer), "serve's stderr does not say why:\n{}", serve.stderr);

    let again = run_within(gateway_command(&["migrate"], &env), Duration::from_secs(10));
    assert!(!again.status.success(), "migrate accepted a newer schema:\n{}", again.stdout);
    assert!(again.stderr.contains(&newer), "migrate's stderr does not say why:\n{}", again.stderr);
}
