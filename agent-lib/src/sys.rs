//! The few raw libc calls the plugin runner needs, behind safe functions.
//!
//! Invariant: every function here only touches processes the caller spawned
//! (identified by pid / process-group id) and returns owned fds, so callers
//! stay in safe Rust. Nothing here installs signal handlers. Also the
//! reactor registration of raw fds (`AsyncFd`), which tokio marks unsafe.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Opens a pidfd for `pid`: it becomes readable when the process exits.
/// Fails with `ENOSYS` on kernels older than 5.3.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd)
        .map_err(|_| io::Error::other("pidfd_open returned an out-of-range fd"))?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    // pidfds are created O_CLOEXEC by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers an owned fd with the runtime's reactor. Must be called inside
/// the runtime. Fails when the reactor refuses the fd.
pub fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` takes ownership of the `OwnedFd`, so the fd stays
    // open, refers to the same open file description, and `as_raw_fd` returns
    // the same number for the whole life of the registration.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// Waits for child `pid` to exit and reaps it (`waitpid`): for a process
/// adopted from a previous generation, which std's `Child` cannot hold.
/// `ECHILD` when it is not a child of this process.
pub fn wait_pid(pid: u32) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes only to `status`, a c_int on our stack.
        let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if rc == pid {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Asks for a receive buffer of `bytes` on a socket: `SO_RCVBUFFORCE`
/// (allowed to root, past `net.core.rmem_max`), else `SO_RCVBUF` (capped
/// by the kernel). Best effort: the socket works either way.
pub fn grow_receive_buffer(socket: &impl std::os::fd::AsRawFd, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the fd is an open socket for the call; the value is a
        // c_int on our stack with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Sends `signal` to every process in process group `pgid`. A group that no
/// longer exists is not an error.
pub fn kill_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid =
        libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pgid <= 1 {
        // -0 and -1 would signal our own group or every process we may signal.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill has no memory effects; the negative pid addresses the
    // plugin's own process group, created with process_group(0) at spawn.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Total, free and available bytes of the filesystem holding `path`
/// (`statvfs`: `f_blocks`, `f_bfree`, and `f_bavail` — what an unprivileged
/// user may still write — times `f_frsize`). Touches only that filesystem,
/// so a hung network mount elsewhere cannot block it.
#[allow(
    clippy::useless_conversion,
    reason = "statvfs field types are u32 on some targets, u64 on others"
)]
pub fn filesystem_space(path: &std::path::Path) -> io::Result<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs is plain data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` a valid,
    // writable statvfs for the duration of the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = u64::from(st.f_frsize);
    #[allow(
        clippy::useless_conversion,
        reason = "fsblkcnt_t is u32 on some targets"
    )]
    let [blocks, free, avail] = [st.f_blocks, st.f_bfree, st.f_bavail].map(u64::from);
    Ok((
        blocks.saturating_mul(frsize),
        free.saturating_mul(frsize),
        avail.saturating_mul(frsize),
    ))
}

/// True when child `pid` has exited, without reaping it (`WNOWAIT`), so its
/// pid — and thus its process-group id — stays reserved until we reap it.
pub fn has_exited(pid: u32) -> io::Result<bool> {
    let pid = libc::id_t::from(pid);
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (or left it zeroed when nothing changed);
    // si_pid is valid to read for SIGCHLD-style infos and zero otherwise.
    Ok(unsafe { info.si_pid() } != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_space_of_root_and_a_missing_path() {
        let (total, free, avail) = filesystem_space(std::path::Path::new("/")).unwrap();
        assert!(total > 0 && avail <= free && free <= total);
        let err = filesystem_space(std::path::Path::new("/no/such/dir")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn refuses_to_signal_own_or_all_groups() {
        assert!(kill_group(0, libc::SIGTERM).is_err());
        assert!(kill_group(1, libc::SIGTERM).is_err());
    }

    #[test]
    fn pidfd_and_wnowait_see_an_exited_child_without_reaping_it() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        let _fd = pidfd_open(pid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !has_exited(pid).unwrap() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Still reapable: WNOWAIT left it for us.
        assert!(child.try_wait().unwrap().unwrap().success());
    }
}
