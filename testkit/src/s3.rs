//! The S3-compatible test server `s3s-fs` 0.14.1 (objects are plain files under its root
//! directory, a bucket is a directory), built once with `cargo install` into the cache
//! outside the repository and started by the test process on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{confine, free_port};

pub const VERSION: &str = "0.14.1";
pub const ACCESS_KEY: &str = "xiaozhi-test-access";
pub const SECRET_KEY: &str = "xiaozhi-test-secret-key-0123456789";

fn cache_dir() -> PathBuf {
    match std::env::var_os("XIAOZHI_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/xiaozhi-gateway"),
    }
}

/// The `s3s-fs` binary: `S3S_FS_BIN`, the cached install, or one on `PATH`; installed into
/// the cache (a few minutes, once) when none exists.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("S3S_FS_BIN") {
            return PathBuf::from(b);
        }
        let root = cache_dir().join(format!("s3s-fs-{VERSION}"));
        let cached = root.join("bin/s3s-fs");
        if cached.exists() {
            return cached;
        }
        eprintln!("testkit: installing s3s-fs {VERSION} into {} (once)", root.display());
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", &format!("s3s-fs@{VERSION}"), "--features", "binary", "--locked", "--root"])
            .arg(&root)
            .status()
            .expect("run cargo install s3s-fs");
        assert!(status.success() && cached.exists(), "cargo install s3s-fs@{VERSION} failed");
        cached
    })
    .clone()
}

/// A running `s3s-fs`.
pub struct S3Server {
    root: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::Builder::new().prefix("xz-s3-").tempdir().expect("temp dir");
        let mut s = S3Server { root, port: free_port(), child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        confine(&mut cmd, None);
        self.child = Some(crate::process::spawn(cmd).expect("start s3s-fs"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (its files stay).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `host:port`, as `MINIO_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the server keeps `bucket`/`key` on disk.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server shared by the tests of this process (each test uses its own bucket).
pub fn shared() -> &'static SharedS3 {
    static S: OnceLock<SharedS3> = OnceLock::new();
    S.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("testkit-s3".into())
            .spawn(move || {
                let server = S3Server::start();
                tx.send(SharedS3 { endpoint: server.endpoint(), root: server.root().to_owned() })
                    .expect("report");
                loop {
                    std::thread::park();
                }
                #[allow(unreachable_code)]
                drop(server);
            })
            .expect("spawn s3 thread");
        rx.recv().expect("shared s3s-fs started")
    })
}

/// Where the shared server listens and keeps its files.
pub struct SharedS3 {
    pub endpoint: String,
    pub root: PathBuf,
}

impl SharedS3 {
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }
}

/// A fresh bucket name (lower-case, S3-valid).
pub fn fresh_bucket() -> String {
    format!("xz-{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}
