//! Single instance: an exclusive `flock` on `<data_dir>/outrider-agent.lock`.
//!
//! Taken before anything in the data directory is touched (a second stub
//! must not clean the first one's `run/` copies). The lock belongs to the
//! open file description, so it survives a re-exec when the fd is
//! inherited (its number travels in `OUTRIDER_LOCK_FD`).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::StubError;

/// Environment variable carrying the lock fd across a re-exec.
pub const LOCK_FD_ENV: &str = "OUTRIDER_LOCK_FD";

/// The held instance lock; released when the process exits.
#[derive(Debug)]
pub struct InstanceLock {
    fd: OwnedFd,
}

impl InstanceLock {
    /// Takes the lock, or adopts the one inherited across a re-exec.
    ///
    /// Fails with [`StubError::AlreadyRunning`] when another stub holds it.
    pub fn acquire(data_dir: &Path) -> Result<InstanceLock, StubError> {
        if let Some(fd) = inherited() {
            return Ok(InstanceLock { fd });
        }
        std::fs::create_dir_all(data_dir).map_err(StubError::io("creating directory", data_dir))?;
        let path = data_dir.join("outrider-agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StubError::io("opening", &path))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StubError::AlreadyRunning { lock: path });
            }
            return Err(StubError::Io {
                action: "locking",
                path,
                source: err,
            });
        }
        Ok(InstanceLock { fd: file.into() })
    }

    /// The fd, made inheritable, for a re-exec.
    pub fn inheritable_fd(&self) -> std::io::Result<RawFd> {
        clear_cloexec(self.fd.as_raw_fd())?;
        Ok(self.fd.as_raw_fd())
    }
}

/// The lock fd a previous image of this process passed on, if any.
fn inherited() -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(LOCK_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: `std::env::remove_var` is unsafe because other threads may
    // read the environment concurrently; this runs at startup on the main
    // thread before any other thread is spawned.
    unsafe { std::env::remove_var(LOCK_FD_ENV) };
    // SAFETY: F_GETFD only queries the fd table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // Mark it close-on-exec again: only a deliberate re-exec passes it on.
    // SAFETY: F_SETFD on a valid fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the previous image handed this fd to us alone; we own it now.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clears `FD_CLOEXEC` so `fd` survives `execve`.
pub(crate) fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD with flags 0 on an fd we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::acquire(dir.path()).unwrap();
        // A second open file description on the same file cannot lock it.
        let err = InstanceLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, StubError::AlreadyRunning { .. }), "{err:?}");
        drop(first);
        assert!(
            InstanceLock::acquire(dir.path()).is_ok(),
            "released with the fd"
        );
    }
}
