//! Starting child servers that cannot outlive the test process.

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};

/// A free TCP port on 127.0.0.1 (free when asked; servers bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The uid/gid to run PostgreSQL as: it refuses to run as root.
pub(crate) fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Makes `cmd` run as `user` (when given) and receive SIGKILL when the spawning thread dies.
pub(crate) fn confine(cmd: &mut Command, user: Option<(u32, u32)>) {
    // SAFETY: only async-signal-safe calls (setgid, setuid, prctl, getppid) run in the child.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Chowns a path (recursively for a fresh directory) to `user`.
pub(crate) fn chown(path: &std::path::Path, user: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// A request to the spawner thread: the command and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns a [`confine`]d command from one thread that lives as long as the process.
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process;
/// spawned from a tokio blocking thread (which tokio ends after 10 s idle), a server would
/// die in the middle of a test.
pub(crate) fn spawn(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, tx)).map_err(io::Error::other)?;
    rx.recv().map_err(io::Error::other)?
}
