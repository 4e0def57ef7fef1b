//! File descriptors the child uses after `fork` live at high numbers.
//!
//! Between `fork` and `exec` a runtime moves its own descriptors into place (the process runtime
//! `dup2`s the protocol socket onto fd 3). A descriptor the sandbox prepared in the parent that
//! happened to be fd 3 would be overwritten before the sandbox uses it — seen as
//! `landlock_restrict_self` failing with `EBADFD`, once in a while, when a busy host had fd 3 free
//! at the moment a ruleset was created. Everything the child uses is therefore moved above
//! [`FLOOR`], out of reach of such plumbing.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The lowest number a prepared descriptor may have.
pub(crate) const FLOOR: libc::c_int = 64;

/// Moves `fd` to the lowest free number ≥ [`FLOOR`] (close-on-exec), closing the original.
pub(crate) fn lift(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FLOOR {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new descriptor we then own.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FLOOR) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `high` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_descriptors_move_above_the_floor_and_stay_usable() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = lift(OwnedFd::from(file)).unwrap();
        assert!(fd.as_raw_fd() >= FLOOR);
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
