//! A throwaway MariaDB server (Debian's `mariadb-server`): `mariadb-install-db` into a
//! temporary directory, `mariadbd` on a free loopback port with its socket in that directory,
//! started once per test process from a thread that lives as long as the process.
//!
//! * [`create_database`]: a fresh, uniquely named database and an account with every right
//!   on it (to load fixtures);
//! * [`read_only_url`]: an account that may only `SELECT` from that database (what an
//!   importer is given).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{confine, free_port};

/// The shared server: its port and socket.
struct Server {
    port: u16,
    socket: PathBuf,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("testkit-mariadb".into())
            .spawn(move || {
                // The directory and the child live as long as this thread: the process.
                let (_dir, server, _child) = start();
                tx.send(server).expect("report the server");
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the MariaDB thread");
        rx.recv().expect("MariaDB started")
    })
}

fn start() -> (tempfile::TempDir, Server, std::process::Child) {
    let dir = tempfile::Builder::new().prefix("xz-mariadb-").tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if root {
        install.arg("--user=root");
    }
    let out = install.output().expect("run mariadb-install-db (Debian mariadb-server)");
    assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let socket = dir.path().join("mariadb.sock");
    let mut cmd = Command::new(mariadbd());
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", dir.path().join("mariadb.pid").display()))
        .args(["--bind-address=127.0.0.1", &format!("--port={port}"), "--skip-name-resolve"])
        .args(["--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=64M", "--skip-log-bin"])
        .args(["--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"]);
    if root {
        cmd.arg("--user=root");
    }
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
    cmd.stdout(Stdio::null()).stderr(log);
    confine(&mut cmd, None);
    let child = crate::process::spawn(cmd).expect("start mariadbd");
    let server = Server { port, socket };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if sql(&server.socket, "SELECT 1").is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("mariadbd did not become ready:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, server, child)
}

fn mariadbd() -> PathBuf {
    for candidate in ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("mariadbd")
}

/// Runs statements as root over the socket.
fn sql(socket: &Path, statements: &str) -> Result<(), String> {
    let out = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-e", statements])
        .output()
        .map_err(|e| format!("run the mariadb client: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A fresh database `xz_<uuid>` with an account `<name>_rw` that has every right on it;
/// returns its `mysql://` URL.
pub fn create_database() -> String {
    let s = server();
    let name = format!("xz_{}", uuid::Uuid::new_v4().simple());
    let user = &name[..name.len().min(28)];
    sql(
        &s.socket,
        &format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci; \
             CREATE USER '{user}_rw'@'%' IDENTIFIED BY 'rw-secret'; \
             GRANT ALL ON {name}.* TO '{user}_rw'@'%';"
        ),
    )
    .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    format!("mysql://{user}_rw:rw-secret@127.0.0.1:{}/{name}", s.port)
}

/// An account that may only read the database of `url` (from [`create_database`]).
pub fn read_only_url(url: &str) -> String {
    let s = server();
    let name = url.rsplit('/').next().expect("a database name");
    let user = &name[..name.len().min(28)];
    sql(
        &s.socket,
        &format!(
            "CREATE USER IF NOT EXISTS '{user}_ro'@'%' IDENTIFIED BY 'ro-secret'; \
             GRANT SELECT ON {name}.* TO '{user}_ro'@'%';"
        ),
    )
    .unwrap_or_else(|e| panic!("create the read-only account: {e}"));
    format!("mysql://{user}_ro:ro-secret@127.0.0.1:{}/{name}", s.port)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_and_a_read_only_account() {
        let url = super::create_database();
        let ro = super::read_only_url(&url);
        let name = url.rsplit('/').next().unwrap();
        let run = |url: &str, sql: &str| {
            let rest = url.strip_prefix("mysql://").unwrap();
            let (cred, host) = rest.split_once('@').unwrap();
            let (user, pw) = cred.split_once(':').unwrap();
            let port = host.split(':').nth(1).unwrap().split('/').next().unwrap();
            std::process::Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "--default-character-set=utf8mb4",
                    "-h127.0.0.1",
                    &format!("-P{port}"),
                    &format!("-u{user}"),
                ])
                .arg(format!("-p{pw}"))
                .args([name, "-N", "-e", sql])
                .output()
                .unwrap()
        };
        let out = run(&url, "CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('你好 😊')");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = run(&ro, "SELECT x FROM t");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "你好 😊");
        assert!(!run(&ro, "INSERT INTO t VALUES ('no')").status.success(), "read-only means read-only");
    }
}
