//! Throwaway Redis servers (Debian's `redis-server`): one per test, on a free loopback port,
//! without persistence, killed when dropped (or when the test process dies).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{confine, free_port};

/// A Redis server running as a child of this process.
pub struct Redis {
    _dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new().prefix("xz-redis-").tempdir().expect("temp dir");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        confine(&mut cmd, None);
        let child = crate::process::spawn(cmd).expect("start redis-server (Debian redis-server)");
        let redis = Redis { _dir: dir, port, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis.pings() {
            assert!(Instant::now() < deadline, "redis-server did not answer PING on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/DB`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn starts_answers_and_stops() {
        let r = super::Redis::start();
        assert!(r.pings());
        let port = r.port();
        drop(r);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
