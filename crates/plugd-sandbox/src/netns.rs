//! The one shared empty network namespace of this host process, created on first use.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

static SHARED: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// The raw fd of the shared empty network namespace; it stays open for the life of the process.
///
/// Creating and destroying network namespaces is slow in the kernel (the cleanup is deferred
/// and serialised), so every child granted no network joins the same one. It holds only a
/// loopback interface that is left down, so nothing, not even 127.0.0.1, is reachable, and
/// the children in it cannot talk to each other over IP either.
pub(crate) fn shared_empty() -> Result<RawFd, String> {
    SHARED
        .get_or_init(create)
        .as_ref()
        .map(AsRawFd::as_raw_fd)
        .map_err(Clone::clone)
}

fn create() -> Result<OwnedFd, String> {
    // `unshare(CLONE_NEWNET)` moves only the calling thread, so do it on a thread of its own
    // that exits right after: the namespace lives on through the returned fd.
    let thread = std::thread::Builder::new()
        .name("plugd-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: unshare only changes the namespaces of this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            std::fs::File::open("/proc/thread-self/ns/net")
                .map(OwnedFd::from)
                .and_then(crate::fds::lift)
        });
    let result = thread
        .map_err(|e| format!("Cannot start the network namespace thread: {e}"))?
        .join()
        .map_err(|_| "The network namespace thread panicked".to_owned())?;
    result.map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("Cannot create a network namespace: {e}; hint: run plugd as root (or with `CAP_SYS_ADMIN`)")
        }
        _ => format!("Cannot create a network namespace: {e}"),
    })
}
