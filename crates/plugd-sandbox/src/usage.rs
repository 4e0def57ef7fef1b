//! Disk usage of a data dir, for the host's periodic quota check.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};

/// Most entries [`dir_usage`] visits before it gives up.
const MAX_ENTRIES: u64 = 1_000_000;
/// Deepest directory level [`dir_usage`] descends to.
const MAX_DEPTH: u32 = 256;

/// Bytes actually allocated on disk under `path` (`st_blocks`, so sparse files count what they
/// use), without following symlinks, without crossing into other file systems, counting a
/// file with several hard links once. The walk is bounded: more than a million entries or 256
/// levels is an error (a plugin cannot make the host walk forever).
pub fn dir_usage(path: &Path) -> io::Result<u64> {
    let root = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&root)?;
    let mut walk = Walk {
        dev: stat.st_dev,
        entries: 0,
        linked: HashSet::new(),
    };
    Ok(stat.st_blocks as u64 * 512 + walk.dir(root, 0)?)
}

struct Walk {
    dev: u64,
    entries: u64,
    linked: HashSet<(u64, u64)>,
}

impl Walk {
    fn dir(&mut self, dir: OwnedFd, depth: u32) -> io::Result<u64> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "Directory tree is deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut total = 0;
        for entry in Dir::read_from(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(io::Error::other(format!("More than {MAX_ENTRIES} entries")));
            }
            let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Deleted while we walk.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if stat.st_dev != self.dev {
                continue;
            }
            if stat.st_nlink > 1
                && FileType::from_raw_mode(stat.st_mode) != FileType::Directory
                && !self.linked.insert((stat.st_dev, stat.st_ino))
            {
                continue;
            }
            total += stat.st_blocks as u64 * 512;
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
                    Ok(sub) => total += self.dir(sub, depth + 1)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(total)
    }
}
