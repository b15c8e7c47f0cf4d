//! Starting child servers that cannot outlive the test process.

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::Command;

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
