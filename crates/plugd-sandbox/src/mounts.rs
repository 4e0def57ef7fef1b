//! The child's minimal root: planned in the parent as a list of operations on prepared C
//! strings, carried out in the child (own mount namespace) with plain system calls.
//!
//! Host directories that hold sockets (`/run`, `/var/run`, the host's `/tmp`, D-Bus, X11, …)
//! simply do not exist in that root, which is what closes connecting to Unix sockets by path:
//! neither Landlock (at the ABI we target) nor seccomp can see the address of a `connect`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::{SandboxError, SandboxPolicy};

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Device nodes bound from the host's `/dev`.
pub(crate) const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One step of building the root; every path is already prefixed with the mount root.
enum Op {
    /// `mount --make-rprivate /`: nothing we mount propagates back to the host.
    Private,
    Tmpfs {
        target: CString,
        flags: libc::c_ulong,
        data: CString,
    },
    /// `mkdir` 0755 (umask is 0 while the plan runs); an existing directory is fine.
    Mkdir(CString),
    /// An empty file to bind a file onto.
    Touch(CString),
    Symlink {
        target: CString,
        path: CString,
    },
    Bind {
        source: CString,
        target: CString,
        recursive: bool,
        attr: u64,
    },
    Proc(CString),
    /// Makes the root tmpfs itself read-only once everything is mounted in it.
    ReadOnly(CString),
    Pivot(CString),
}

/// What the child mounts, in order, and where it ends up.
pub(crate) struct MountPlan {
    ops: Vec<Op>,
    /// Writable tmpfs paths (after the pivot) that Landlock must allow in the child.
    pub(crate) writable: Vec<CString>,
}

impl std::fmt::Debug for MountPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MountPlan({} operations)", self.ops.len())
    }
}

/// What is mounted where, before it is turned into operations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    /// Read-only (and executable) bind of a host path at the same path.
    ReadOnly,
    /// A symlink recreated as it is on the host (e.g. `/lib -> usr/lib`).
    Link(PathBuf),
    /// The data dir: writable, `nosuid,nodev,noexec`.
    Data,
    Tmpfs(String),
    Device,
    Proc,
}

fn cstring(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Path {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"),
    })
}

fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Plans the root. `read_paths` must exist; `ids` owns `HOME`.
pub(crate) fn plan(
    policy: &SandboxPolicy,
    read_paths: &[PathBuf],
    ids: (u32, u32),
    proc: bool,
) -> Result<(MountPlan, String), SandboxError> {
    let root = &policy.mount_root;
    std::fs::create_dir_all(root).map_err(|source| SandboxError::Path {
        path: root.clone(),
        source,
    })?;
    let absolute = |p: &Path| -> Result<PathBuf, SandboxError> {
        std::path::absolute(p).map_err(|source| SandboxError::Path {
            path: p.to_owned(),
            source,
        })
    };

    let mut entries: Vec<(PathBuf, Entry)> = Vec::new();
    let mut ro: Vec<PathBuf> = Vec::new();
    for path in read_paths.iter().chain([&policy.package_dir]) {
        let path = absolute(path)?;
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && let Ok(target) = std::fs::read_link(&path) {
            // Recreate the link and make sure what it points to is there too.
            if let Ok(real) = std::fs::canonicalize(&path) {
                ro.push(real);
            }
            entries.push((path, Entry::Link(target)));
        } else {
            ro.push(path);
        }
    }
    ro.sort();
    ro.dedup();
    // A path already visible through a bound ancestor needs no mount of its own.
    let kept: Vec<PathBuf> = ro
        .iter()
        .filter(|p| !ro.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    let ro_count = kept.len();
    entries.extend(kept.into_iter().map(|p| (p, Entry::ReadOnly)));
    // Links inside a bound tree are already there.
    entries.retain(|(p, e)| !matches!(e, Entry::Link(_)) || !entries_bound(p, &ro));
    entries.push((absolute(&policy.data_dir)?, Entry::Data));
    for path in &policy.write_paths {
        entries.push((absolute(path)?, Entry::Data));
    }
    let size = policy.tmpfs_bytes;
    entries.push((
        PathBuf::from("/tmp"),
        Entry::Tmpfs(format!("mode=1777,size={size}")),
    ));
    entries.push((
        absolute(&policy.home)?,
        Entry::Tmpfs(format!("mode=0700,uid={},gid={},size={size}", ids.0, ids.1)),
    ));
    entries.push((
        PathBuf::from("/dev"),
        Entry::Tmpfs("mode=0755,size=64k".into()),
    ));
    entries.push((
        PathBuf::from("/dev/shm"),
        Entry::Tmpfs(format!("mode=1777,size={size}")),
    ));
    for device in DEVICES {
        let path = Path::new("/dev").join(device);
        if path.exists() {
            entries.push((path, Entry::Device));
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        entries.push((Path::new("/dev").join(name), Entry::Link(target.into())));
    }
    if proc {
        entries.push((PathBuf::from("/proc"), Entry::Proc));
    }
    // Parents before children, so that a mount lands inside the tmpfs mounted above it.
    entries.sort();

    let mut ops = vec![Op::Private];
    ops.push(Op::Tmpfs {
        target: cstring(root)?,
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: CString::new("mode=0755,size=1m").expect("no NUL"),
    });
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    let mut writable = Vec::new();
    for (path, entry) in &entries {
        // Intermediate directories: 0755 so that a package under a 0700 directory (e.g.
        // `/root/x`) can still be reached by the child's uid.
        let mut partial = PathBuf::from("/");
        let parent = path.parent().unwrap_or(Path::new("/"));
        for component in parent.components() {
            if let Component::Normal(c) = component {
                partial.push(c);
                if made.insert(partial.clone()) {
                    ops.push(Op::Mkdir(cstring(&under(root, &partial))?));
                }
            }
        }
        let target = cstring(&under(root, path))?;
        let source = cstring(path)?;
        let is_dir = std::fs::metadata(path).map_or(true, |m| m.is_dir());
        made.insert(path.clone());
        match entry {
            Entry::Link(link) => ops.push(Op::Symlink {
                target: cstring(link)?,
                path: target,
            }),
            Entry::ReadOnly | Entry::Data | Entry::Device => {
                ops.push(if is_dir {
                    Op::Mkdir(target.clone())
                } else {
                    Op::Touch(target.clone())
                });
                let attr = match entry {
                    Entry::ReadOnly => MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    Entry::Data => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                    _ => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
                };
                ops.push(Op::Bind {
                    source,
                    target,
                    recursive: *entry == Entry::ReadOnly,
                    attr,
                });
            }
            Entry::Tmpfs(data) => {
                ops.push(Op::Mkdir(target.clone()));
                let mut flags = libc::MS_NOSUID | libc::MS_NOEXEC;
                if path != Path::new("/dev") {
                    flags |= libc::MS_NODEV;
                    writable.push(cstring(path)?);
                }
                ops.push(Op::Tmpfs {
                    target,
                    flags,
                    data: CString::new(data.as_str()).expect("no NUL"),
                });
            }
            Entry::Proc => {
                ops.push(Op::Mkdir(target.clone()));
                ops.push(Op::Proc(target));
            }
        }
    }
    ops.push(Op::ReadOnly(cstring(root)?));
    ops.push(Op::Pivot(cstring(root)?));

    let detail = format!(
        "minimal root: {ro_count} read-only paths incl. the package, data dir `nosuid,nodev,noexec`, fresh tmpfs `/tmp`, `{}` (HOME) and `/dev/shm` ({} MiB each), `/dev` with {}{}; no host `/run` or `/tmp`",
        policy.home.display(),
        size >> 20,
        DEVICES.join(", "),
        if proc { ", own `/proc`" } else { "" },
    );
    Ok((MountPlan { ops, writable }, detail))
}

fn entries_bound(path: &Path, ro: &[PathBuf]) -> bool {
    ro.iter().any(|q| path != q && path.starts_with(q))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl MountPlan {
    /// Runs in the child, in its new mount namespace, as root. No allocation.
    pub(crate) fn run(&self) -> io::Result<()> {
        // SAFETY (every block): system calls on NUL-terminated strings owned by `self` and on
        // stack buffers that outlive the calls.
        unsafe {
            // The working directory was set by `Command` on the host's tree; keep its path to
            // enter the same path inside (a cwd left on the old root would let `..` walk out).
            let mut cwd = [0u8; 4096];
            let have_cwd = !libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null();
            let umask = libc::umask(0);
            let result = self.run_ops();
            libc::umask(umask);
            result?;
            if !have_cwd || libc::chdir(cwd.as_ptr().cast()) != 0 {
                check(libc::chdir(c"/".as_ptr()))?;
            }
        }
        Ok(())
    }

    unsafe fn run_ops(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: see `run`.
        unsafe {
            for op in &self.ops {
                match op {
                    Op::Private => check(libc::mount(
                        null,
                        c"/".as_ptr(),
                        null,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?,
                    Op::Tmpfs {
                        target,
                        flags,
                        data,
                    } => check(libc::mount(
                        c"tmpfs".as_ptr(),
                        target.as_ptr(),
                        c"tmpfs".as_ptr(),
                        *flags,
                        data.as_ptr().cast(),
                    ))?,
                    Op::Mkdir(path) => {
                        if libc::mkdir(path.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Op::Touch(path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        libc::close(fd);
                    }
                    Op::Symlink { target, path } => {
                        if libc::symlink(target.as_ptr(), path.as_ptr()) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Op::Bind {
                        source,
                        target,
                        recursive,
                        attr,
                    } => {
                        let mut flags = libc::MS_BIND;
                        if *recursive {
                            flags |= libc::MS_REC;
                        }
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            null,
                            flags,
                            std::ptr::null(),
                        ))?;
                        set_attr(target, *attr, *recursive)?;
                    }
                    // `hidepid=2` (`invisible`): processes of another uid do not exist in it,
                    // so the plugin cannot read the namespace's init (a copy of the host, with
                    // the host's command line and environment) through `/proc/1`.
                    Op::Proc(target) => check(libc::mount(
                        c"proc".as_ptr(),
                        target.as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"hidepid=2".as_ptr().cast(),
                    ))?,
                    Op::ReadOnly(target) => set_attr(
                        target,
                        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                        false,
                    )?,
                    Op::Pivot(root) => {
                        // `pivot_root(".", ".")` stacks the old root on the new one; detaching
                        // it leaves only the new root (no directory for the old one needed).
                        check(libc::chdir(root.as_ptr()))?;
                        check(
                            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
                                as libc::c_int,
                        )?;
                        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                        check(libc::chdir(c"/".as_ptr()))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sets mount flags on `target` (and, recursively, on what is mounted beneath it).
unsafe fn set_attr(target: &CString, attr: u64, recursive: bool) -> io::Result<()> {
    let attrs = MountAttr {
        attr_set: attr,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `target` is NUL-terminated and `attrs` is a valid `struct mount_attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &attrs as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // SAFETY: reads this thread's errno.
    if unsafe { *libc::__errno_location() } != libc::ENOSYS {
        return Err(io::Error::last_os_error());
    }
    // Kernels before 5.12: a remount sets the flags on the top mount only.
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND;
    for (bit, flag) in [
        (MOUNT_ATTR_RDONLY, libc::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, libc::MS_NOSUID),
        (MOUNT_ATTR_NODEV, libc::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
    ] {
        if attr & bit != 0 {
            flags |= flag;
        }
    }
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}
