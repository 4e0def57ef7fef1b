//! Dedicated uid/gid for a child: the default derivation and the data dir's ownership.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, Uid};

use crate::SandboxError;

/// First id of the range default ids are taken from.
pub const DEFAULT_ID_BASE: u32 = 1_000_000_000;
/// Size of that range (2^24): far from login users, system users, systemd's dynamic users
/// (61184–65519) and the usual `/etc/subuid` ranges (100000 and up, 65536 per user).
pub const DEFAULT_ID_SPAN: u32 = 1 << 24;

/// The default `(uid, gid)` for a child named `name` when the host is root and the policy
/// names none: `DEFAULT_ID_BASE + fnv1a(name) % DEFAULT_ID_SPAN`, for both ids.
///
/// The value is stable across restarts and plugd versions (the data dir is owned by it), and
/// two names collide with probability 2^-24. A host that wants certainty allocates and stores
/// ids itself and passes them in [`crate::SandboxPolicy::ids`].
pub fn default_ids(name: &str) -> (u32, u32) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let id = DEFAULT_ID_BASE + hash % DEFAULT_ID_SPAN;
    (id, id)
}

/// Gives `root` and everything beneath it to `uid:gid`, never following a symlink: each step
/// is relative to an already opened directory fd, so a link planted by the plugin cannot
/// redirect the walk outside its data dir.
pub(crate) fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    let err = |source: io::Error| SandboxError::Path {
        path: root.to_owned(),
        source,
    };
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let fd = rustix::fs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    rustix::fs::fchown(&fd, uid, gid).map_err(|e| err(e.into()))?;
    walk(fd, uid, gid, 0).map_err(err)
}

fn walk(dir: OwnedFd, uid: Option<Uid>, gid: Option<Gid>, depth: u32) -> io::Result<()> {
    if depth > 256 {
        return Err(io::Error::other("Directory tree is deeper than 256 levels"));
    }
    let entries = Dir::read_from(&dir)?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        rustix::fs::chownat(&dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub = rustix::fs::openat(&dir, name, flags, Mode::empty())?;
            walk(sub, uid, gid, depth + 1)?;
        }
    }
    Ok(())
}
