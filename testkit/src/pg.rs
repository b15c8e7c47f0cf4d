//! Throwaway PostgreSQL clusters: `initdb` into a temporary directory (as the `postgres` user
//! when running as root), trust authentication, loopback only, on a free port.
//!
//! * [`database_url`]: a fresh, uniquely named database on the shared server: the one
//!   `DATABASE_URL` names, or a cluster this process starts once.
//! * [`Cluster::start`]: a private cluster a test may stop and restart (outage tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{chown, confine, free_port, postgres_user};

/// Where the PostgreSQL 15 server binaries live.
fn bindir() -> PathBuf {
    for candidate in ["/usr/lib/postgresql/15/bin", "/usr/local/pgsql/bin"] {
        if Path::new(candidate).join("postgres").exists() {
            return PathBuf::from(candidate);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!("PostgreSQL server binaries not found (install postgresql-15)");
}

/// A PostgreSQL server running as a child of this process.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    durable: bool,
}

impl Cluster {
    /// Creates and starts a cluster. `durable: false` turns off fsync (fast tests);
    /// benchmarks use `true` for realistic commit costs.
    pub fn start(durable: bool) -> Cluster {
        let user = postgres_user();
        let dir = tempfile::Builder::new().prefix("xz-pg-").tempdir().expect("temp dir");
        chown(dir.path(), user).expect("chown cluster dir");
        let data = dir.path().join("data");
        let mut initdb = Command::new(bindir().join("initdb"));
        initdb
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        confine(&mut initdb, user);
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut cluster = Cluster { dir, port: free_port(), child: None, durable };
        cluster.start_server();
        cluster
    }

    fn start_server(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(bindir().join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"]);
        if !self.durable {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        cmd.stdout(Stdio::null()).stderr(log);
        confine(&mut cmd, postgres_user());
        self.child = Some(crate::process::spawn(cmd).expect("start postgres"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new(bindir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        panic!("postgres did not become ready:\n{log}");
    }

    /// Stops the server (fast shutdown: open connections are cut, as in an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a fresh database and returns its URL.
    pub fn fresh_database(&self) -> String {
        create_database(&self.admin_url())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

/// The admin URL of the server shared by every test of this process.
fn shared_admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            return url;
        }
        // Start the cluster from a thread that lives as long as the process, so the server's
        // parent-death signal fires only when the whole test process ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("testkit-postgres".into())
            .spawn(move || {
                let cluster = Cluster::start(false);
                tx.send(cluster.admin_url()).expect("report cluster url");
                loop {
                    std::thread::park();
                }
                #[allow(unreachable_code)]
                drop(cluster);
            })
            .expect("spawn cluster thread");
        rx.recv().expect("shared cluster started")
    })
}

/// A fresh, uniquely named database on the shared server.
pub fn database_url() -> String {
    create_database(shared_admin_url())
}

/// Creates `xz_<uuid>` through `admin_url` and returns the new database's URL.
pub fn create_database(admin_url: &str) -> String {
    let name = format!("xz_{}", uuid::Uuid::new_v4().simple());
    let out = Command::new("psql")
        .arg(admin_url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
    replace_database(admin_url, &name)
}

/// `admin_url` with its database name replaced.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_replaced() {
        assert_eq!(super::replace_database("postgres://u@h:1/postgres", "x"), "postgres://u@h:1/x");
        assert_eq!(super::replace_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            super::replace_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn a_private_cluster_starts_stops_and_restarts() {
        let mut c = Cluster::start(false);
        let url = c.fresh_database();
        let psql = |url: &str| Command::new("psql").arg(url).args(["-tAc", "select 1"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&psql(&url).stdout).trim(), "1");
        c.stop();
        assert!(!psql(&url).status.success());
        c.restart();
        assert_eq!(String::from_utf8_lossy(&psql(&url).stdout).trim(), "1");
    }
}
