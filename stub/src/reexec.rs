//! Re-executing the stub in place: same PID, fresh address space.
//!
//! The escalation of DESIGN.md §4 step 3: when an old generation will not
//! stop, leaves threads behind or stays mapped, the only way to get rid of
//! its code without losing the process is `execve(/proc/self/exe)`. What
//! must survive travels in inherited fds:
//! - the instance lock (`OUTRIDER_LOCK_FD`, see [`crate::lock`]);
//! - a [`Handover`] in a memfd (`OUTRIDER_HANDOVER_FD`): one JSON header
//!   line (which build to start, on probation or not, the generation
//!   number) followed by the raw state blob.
#![allow(unsafe_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use serde::{Deserialize, Serialize};

use crate::StubError;
use crate::lock::{InstanceLock, LOCK_FD_ENV, clear_cloexec};
use crate::state::BuildRef;

/// Environment variable carrying the handover memfd.
pub const HANDOVER_FD_ENV: &str = "OUTRIDER_HANDOVER_FD";
/// Largest state blob carried across a re-exec.
const MAX_HANDOVER_BYTES: u64 = 256 << 20;

/// What the next image of the process should do first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    /// The build to start.
    pub start: BuildRef,
    /// Whether it is on probation (a swap in progress).
    pub probation: bool,
    /// The next generation number (run copies stay unique).
    pub generation: u64,
    /// Why the re-exec happened, for the log.
    pub reason: String,
    /// The state blob for `start`.
    #[serde(skip)]
    pub state: Vec<u8>,
}

/// Replaces this process image with `program` (normally `/proc/self/exe`,
/// the running binary; after a stub self-update, the new binary's path)
/// carrying `handover`. Returns only on failure.
pub fn exec_self(program: &std::path::Path, handover: &Handover, lock: &InstanceLock) -> StubError {
    match prepare(handover, lock) {
        Ok((memfd, lock_fd)) => {
            let mut cmd = std::process::Command::new(program);
            cmd.args(std::env::args_os().skip(1))
                .env(HANDOVER_FD_ENV, memfd.as_raw_fd().to_string())
                .env(LOCK_FD_ENV, lock_fd.to_string());
            tracing::warn!(reason = %handover.reason, "re-executing the stub in place");
            let err = cmd.exec();
            StubError::Reexec(err)
        }
        Err(e) => StubError::Reexec(e),
    }
}

fn prepare(handover: &Handover, lock: &InstanceLock) -> std::io::Result<(OwnedFd, RawFd)> {
    let name = c"outrider-handover";
    // The raw system call, not glibc's wrapper: that arrived in glibc 2.27
    // and the stub is linked for 2.17 (packaging/build); the kernel call
    // exists since Linux 3.17.
    // SAFETY: memfd_create with a valid NUL-terminated name; flags 0 leave
    // the fd inheritable across exec, which is the point.
    let raw = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), 0) };
    let raw = RawFd::try_from(raw).unwrap_or(-1);
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh fd that only we hold.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(memfd.try_clone()?);
    let header = serde_json::to_string(handover).map_err(std::io::Error::other)?;
    file.write_all(header.as_bytes())?;
    file.write_all(b"\n")?;
    file.write_all(&handover.state)?;
    file.seek(SeekFrom::Start(0))?;
    clear_cloexec(memfd.as_raw_fd())?;
    let lock_fd = lock.inheritable_fd()?;
    Ok((memfd, lock_fd))
}

/// The handover left by the previous image of this process, if any.
pub fn take_handover() -> Result<Option<Handover>, StubError> {
    let Some(fd) = std::env::var(HANDOVER_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return Ok(None);
    };
    // SAFETY: runs at startup on the main thread before other threads exist.
    unsafe { std::env::remove_var(HANDOVER_FD_ENV) };
    // SAFETY: F_GETFD only queries the fd table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Ok(None);
    }
    // SAFETY: the previous image created this memfd for us alone.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_HANDOVER_BYTES)
        .read_to_end(&mut bytes)
        .map_err(StubError::Reexec)?;
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut handover: Handover = serde_json::from_slice(&bytes[..split])
        .map_err(|e| StubError::Reexec(std::io::Error::other(format!("handover header: {e}"))))?;
    handover.state = bytes.get(split + 1..).unwrap_or_default().to_vec();
    Ok(Some(handover))
}
