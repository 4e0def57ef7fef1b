//! Where a sandboxed child starts: on its parent thread's CPU (see `Prepared::spawn_here`).
//!
//! `fork` places a new process on the idlest CPU, which on a lightly loaded host is an idle
//! one; a confined start forks three times (the supervisor X, the namespace's init Y, the plugin
//! Z), each waking an idle CPU while its parent goes to sleep. Started pinned to the parent's
//! CPU they run there in turn; each takes the host's mask back ([`unpin`]) before it waits or
//! execs, so nothing stays pinned.

use std::mem::size_of;

/// The calling thread's CPU mask: the CPUs the host may use (`taskset`, a cpuset), which the
/// children take back (read by `Sandbox::prepare`, on the thread preparing). `None` when it
/// cannot be read.
pub(crate) fn own_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: `cpu_set_t` is plain bits; the call fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// The calling thread pinned to the CPU it runs on, until dropped (its own mask back).
pub(crate) struct Pinned(libc::cpu_set_t);

impl Pinned {
    /// `None` (nothing changed) when the CPU or the mask cannot be read or set.
    pub(crate) fn here() -> Option<Pinned> {
        let own = own_affinity()?;
        // SAFETY: plain system calls on an initialised set.
        unsafe {
            let cpu = libc::sched_getcpu();
            if cpu < 0 || cpu as usize >= libc::CPU_SETSIZE as usize {
                return None;
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            (libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) == 0)
                .then_some(Pinned(own))
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: a system call reading an initialised set.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// In a child between `fork` and `exec`: gives `pid` (0: the caller) the CPU mask `affinity`,
/// if any. Async-signal-safe. The mask is the one of the thread that prepared the sandbox (the
/// host's, unless the embedder pinned that thread); should the kernel refuse it (the host's
/// cpuset changed since), every CPU is asked for, which the kernel narrows to the cpuset, so
/// nothing stays on the one CPU it started on.
pub(crate) unsafe fn unpin(pid: libc::pid_t, affinity: Option<&libc::cpu_set_t>) {
    if let Some(set) = affinity {
        // SAFETY: system calls reading initialised sets on the stack.
        unsafe {
            if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), set) != 0 {
                let mut all: libc::cpu_set_t = std::mem::zeroed();
                std::ptr::write_bytes(&mut all as *mut libc::cpu_set_t, 0xff, 1);
                libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> libc::cpu_set_t {
        own_affinity().expect("the test thread's mask")
    }

    fn same(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
        // SAFETY: comparing two initialised sets.
        unsafe { libc::CPU_EQUAL(a, b) }
    }

    #[test]
    fn pinned_holds_the_thread_to_one_cpu_and_gives_its_mask_back() {
        let before = mask();
        {
            let _pinned = Pinned::here().expect("pinning the test thread");
            let during = mask();
            // SAFETY: counting the bits of initialised sets.
            assert_eq!(unsafe { libc::CPU_COUNT(&during) }, 1);
            let cpu = unsafe { libc::sched_getcpu() };
            assert!(unsafe { libc::CPU_ISSET(cpu as usize, &during) });
        }
        assert!(same(&mask(), &before));
    }

    #[test]
    fn a_forked_child_starts_pinned_and_unpin_gives_it_the_mask() {
        let before = mask();
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills two descriptors; the child only makes system calls and `_exit`s.
        unsafe {
            assert_eq!(libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC), 0);
            let pinned = Pinned::here().expect("pinning the test thread");
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let mut counts = [0u8; 2];
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
                counts[0] = libc::CPU_COUNT(&set) as u8;
                unpin(0, Some(&before));
                libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
                counts[1] = libc::CPU_COUNT(&set) as u8;
                libc::write(pipe[1], counts.as_ptr().cast(), 2);
                libc::_exit(0);
            }
            drop(pinned);
            libc::close(pipe[1]);
            let mut counts = [0u8; 2];
            assert_eq!(libc::read(pipe[0], counts.as_mut_ptr().cast(), 2), 2);
            libc::close(pipe[0]);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert_eq!(counts, [1, libc::CPU_COUNT(&before) as u8]);
        }
    }
}
