//! Dedicated uid/gid for a child: the machine-wide allocation table and the data dir's
//! ownership.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, Uid};

use crate::SandboxError;

/// First id of the range default ids are taken from.
pub const DEFAULT_ID_BASE: u32 = 1_000_000_000;
/// Size of that range (2^24): far from login users, system users, systemd's dynamic users
/// (61184–65519) and the usual `/etc/subuid` ranges (100000 and up, 65536 per user).
pub const DEFAULT_ID_SPAN: u32 = 1 << 24;

/// The machine-wide allocation table every plugd process on the machine shares.
pub const DEFAULT_UID_TABLE: &str = "/var/lib/plugd/uids";

/// Where the search for a free id starts for `name`: `DEFAULT_ID_BASE + fnv1a(name) %
/// DEFAULT_ID_SPAN`. Only a starting point: names collide (one is found in under a second), so
/// ids are handed out by [`allocate_ids`], never by this hash alone.
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
        // Not through a symbolic link, at the root as below it.
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
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

/// How long [`allocate_ids`] waits for another plugd process holding the table lock.
const LOCK_DEADLINE: Duration = Duration::from_secs(10);

/// The `(uid, gid)` (equal) allocated to `owner` (a plugin's data dir: one per plugin name and
/// state dir) in the machine-wide table `table`, allocating a fresh one on first use.
///
/// The table is a text file of `uid<TAB>owner` lines, locked with `flock` while it is read and
/// appended to, so plugd processes running at once never hand out one id twice. A fresh id
/// is the first id from [`default_ids`]`(owner)` upwards (wrapping in the range) that is in no
/// table line, has no `/etc/passwd` (or NSS) user or group, and is no running process's uid.
/// An owner keeps its id for good (its data dir belongs to it).
pub fn allocate_ids(table: &Path, owner: &Path) -> io::Result<(u32, u32)> {
    let owner = escape(&owner.to_string_lossy());
    if let Some(dir) = table.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(table)?;
    lock(&file)?;
    let mut text = String::new();
    file.seek(io::SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    let mut taken = HashSet::new();
    for line in text.lines() {
        let Some((id, who)) = line.split_once('\t') else {
            continue;
        };
        let Ok(id) = id.parse::<u32>() else {
            continue;
        };
        if who == owner {
            return Ok((id, id));
        }
        taken.insert(id);
    }
    let running = process_uids();
    let (start, _) = default_ids(&owner);
    let offset = start - DEFAULT_ID_BASE;
    for step in 0..DEFAULT_ID_SPAN {
        let id = DEFAULT_ID_BASE + (offset + step) % DEFAULT_ID_SPAN;
        if taken.contains(&id) || running.contains(&id) || user_exists(id) || group_exists(id) {
            continue;
        }
        // One write of a whole line, appended under the lock.
        file.write_all(format!("{id}\t{owner}\n").as_bytes())?;
        file.sync_data()?;
        return Ok((id, id));
    }
    Err(io::Error::other(format!(
        "No free id left in {DEFAULT_ID_BASE}..{}",
        DEFAULT_ID_BASE + DEFAULT_ID_SPAN
    )))
}

fn lock(file: &fs::File) -> io::Result<()> {
    let deadline = Instant::now() + LOCK_DEADLINE;
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(()); // Released when `file` is closed.
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "The uid table stayed locked for 10 s; hint: another plugd process holds it",
            ));
        }
        // flock has no timed wait; the lock is held for a few milliseconds at most.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Tabs, newlines and backslashes in a path would break the line format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

/// Every real, effective, saved and fs uid of the running processes.
fn process_uids() -> HashSet<u32> {
    let mut uids = HashSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return uids;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line[4..]
                    .split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    uids
}

fn user_exists(id: u32) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter; buffers outlive the call.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result = std::ptr::null_mut();
        libc::getpwuid_r(
            id,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        !result.is_null()
    }
}

fn group_exists(id: u32) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `user_exists`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result = std::ptr::null_mut();
        libc::getgrgid_r(
            id,
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        !result.is_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_behind_a_symbolic_link_is_not_chowned() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let own = std::fs::metadata(&real).unwrap();
        use std::os::unix::fs::MetadataExt;
        match chown_tree(&link, own.uid(), own.gid()) {
            Err(SandboxError::Path { path, source }) => {
                assert_eq!(path, link);
                // `O_DIRECTORY | O_NOFOLLOW` on a link: ENOTDIR (ELOOP without `O_DIRECTORY`).
                assert!(
                    matches!(source.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)),
                    "{source}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The directory itself is chowned (to its own owner here: no root needed).
        chown_tree(&real, own.uid(), own.gid()).unwrap();
    }
}
