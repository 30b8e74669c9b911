//! Signals, turned into pipe writes the main loop polls (self-pipe trick).
//!
//! The stub owns SIGTERM, SIGINT and SIGHUP for the whole process; the
//! library installs no handlers (DESIGN.md §3). SIGTERM/SIGINT mean stop,
//! SIGHUP means reload — and never the default action of dying.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::StubError;

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop cleanly and exit 0.
    Stop,
    /// SIGHUP: re-read configuration.
    Reload,
}

/// The registered signal pipes.
#[derive(Debug)]
pub struct Signals {
    stop: OwnedFd,
    reload: OwnedFd,
}

impl Signals {
    /// Registers the handlers. Fails only if the OS refuses a pipe or a handler.
    pub fn install() -> Result<Signals, StubError> {
        let (stop, stop_w) = pipe().map_err(StubError::Signals)?;
        let (reload, reload_w) = pipe().map_err(StubError::Signals)?;
        let stop_w2 = stop_w.try_clone().map_err(StubError::Signals)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, stop_w)
            .map_err(StubError::Signals)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, stop_w2)
            .map_err(StubError::Signals)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_w)
            .map_err(StubError::Signals)?;
        Ok(Signals { stop, reload })
    }

    /// Pipes no signal is registered to: for tests of the supervisor shell,
    /// which must not take over the test process's signals.
    #[cfg(test)]
    pub(crate) fn unregistered() -> Signals {
        let (stop, _) = pipe().expect("a pipe for the test signals");
        let (reload, _) = pipe().expect("a pipe for the test signals");
        Signals { stop, reload }
    }

    /// Waits up to `timeout` for a signal. A stop request stays pending (the
    /// stop pipe is never drained), so every later wait also reports it.
    pub fn wait(&self, timeout: Duration) -> Option<Signal> {
        let mut fds = [
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.reload.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd structs for the
        // duration of the call; both fds are open (owned by `self`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return None;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Some(Signal::Stop);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            drain(&self.reload);
            return Some(Signal::Reload);
        }
        None
    }
}

/// A nonblocking, close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes one byte to a pipe (used to make a stop fd readable).
pub(crate) fn poke(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: writes one byte from a valid stack buffer to an open fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a valid stack buffer from an open nonblocking fd;
    // stops when the pipe is empty (read returns -1 with EAGAIN).
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poked_pipe_is_readable_and_stays_readable() {
        let (r, w) = pipe().unwrap();
        let s = Signals {
            stop: r,
            reload: pipe().unwrap().0,
        };
        assert_eq!(s.wait(Duration::from_millis(10)), None);
        poke(&w).unwrap();
        assert_eq!(s.wait(Duration::from_millis(10)), Some(Signal::Stop));
        assert_eq!(s.wait(Duration::from_millis(10)), Some(Signal::Stop));
    }
}
