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

/// Between `fork` and `exec`: makes the parent's descriptor `fd` the new program's `target`
/// (`dup2`, or, when it already is `target`, clears its close-on-exec flag). Only
/// async-signal-safe calls.
///
/// # Safety
/// Call only in a `pre_exec` hook, on a descriptor that stays open until the child execs.
pub unsafe fn inherit_as(fd: libc::c_int, target: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl and dup2 on integers; the caller guarantees the descriptor is open.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(target, libc::F_GETFD);
            if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Between `fork` and `exec`: the child gets SIGKILL when the thread that spawned it dies, and
/// exits at once if `parent` is already gone (it would otherwise run orphaned). Only
/// async-signal-safe calls.
///
/// # Safety
/// Call only in a `pre_exec` hook.
pub unsafe fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl, getppid and _exit take integers only.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
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
