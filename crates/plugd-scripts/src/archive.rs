//! Script archives (`plugd script export` / `import`): a gzip'd tar of an index and one file per
//! version's source and lock, optionally signed (Ed25519, detached, over the index, which holds
//! every file's sha256).
//!
//! Reading is zip-slip safe: an archive whose entries are not plain files and directories with
//! relative, `..`-free paths (symlinks, hard links, devices, FIFOs, absolute paths) is refused
//! as a whole, before anything is stored; sizes and counts are bounded.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The index's path inside an archive.
const INDEX: &str = "plugd-scripts/index.json";
/// The detached signature's path.
const SIGNATURE: &str = "plugd-scripts/signature.json";
/// The `kind` of the detached signature.
pub const SIGNATURE_KIND: &str = "script-archive";
/// Largest archive accepted, unpacked.
pub const MAX_UNPACKED: u64 = 64 << 20;
/// Most entries accepted.
const MAX_ENTRIES: usize = 10_000;

/// The index: what the archive holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// [`FORMAT`].
    pub format: u32,
    /// The scripts, each with its versions.
    pub scripts: Vec<ArchivedScript>,
    /// Every other file's path → hex sha256.
    pub files: BTreeMap<String, String>,
}

/// One script in an archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedScript {
    /// Its id.
    pub id: String,
    /// The digest of the version that was current.
    pub current: String,
    /// Its versions, oldest first.
    pub versions: Vec<ArchivedVersion>,
}

/// One version in an archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedVersion {
    /// Its number where it was exported.
    pub version: u64,
    /// Its digest (checked against its source and metadata on import).
    pub digest: String,
    /// Its metadata.
    pub meta: serde_json::Value,
    /// The path of its source in the archive.
    pub source: String,
    /// The path of its lock, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
}

/// A detached signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id.
    pub key_id: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
}

/// A version to write: its record and texts.
pub struct VersionFiles<'a> {
    /// Its number.
    pub version: u64,
    /// Its digest.
    pub digest: &'a str,
    /// Its metadata.
    pub meta: &'a serde_json::Value,
    /// Its source.
    pub source: &'a str,
    /// Its lock.
    pub lock: Option<&'a str>,
}

/// Builds an archive of `scripts` (id, current digest, versions); `sign` signs its index.
pub fn write(
    scripts: &[(String, String, Vec<VersionFiles<'_>>)],
    sign: Option<&plugd_trust::SecretKey>,
) -> Result<Vec<u8>, String> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut index = Index {
        format: FORMAT,
        scripts: Vec::new(),
        files: BTreeMap::new(),
    };
    for (id, current, versions) in scripts {
        let mut archived = ArchivedScript {
            id: id.clone(),
            current: current.clone(),
            versions: Vec::new(),
        };
        for v in versions {
            let source = format!("plugd-scripts/{id}/{}.py", v.version);
            files.push((source.clone(), v.source.as_bytes().to_vec()));
            let lock = v.lock.map(|text| {
                let path = format!("plugd-scripts/{id}/{}.lock", v.version);
                files.push((path.clone(), text.as_bytes().to_vec()));
                path
            });
            archived.versions.push(ArchivedVersion {
                version: v.version,
                digest: v.digest.to_owned(),
                meta: v.meta.clone(),
                source,
                lock,
            });
        }
        index.scripts.push(archived);
    }
    for (path, bytes) in &files {
        index
            .files
            .insert(path.clone(), hex(&Sha256::digest(bytes)));
    }
    let index_bytes = serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?;
    files.insert(0, (INDEX.to_owned(), index_bytes.clone()));
    if let Some(key) = sign {
        let (key_id, signature) =
            plugd_trust::sign_detached(SIGNATURE_KIND, &Sha256::digest(&index_bytes).into(), key);
        let sig = Signature {
            key_id: key_id.to_string(),
            signature,
        };
        files.push((
            SIGNATURE.to_owned(),
            serde_json::to_vec_pretty(&sig).map_err(|e| e.to_string())?,
        ));
    }
    pack(&files)
}

/// Signs an archive made by [`write`] (replacing a signature it has): the CLI signs where the
/// key is, after the server exported.
pub fn sign(bytes: &[u8], key: &plugd_trust::SecretKey) -> Result<Vec<u8>, String> {
    let unpacked = read(bytes)?;
    let (key_id, signature) =
        plugd_trust::sign_detached(SIGNATURE_KIND, &unpacked.index_sha256, key);
    let sig = Signature {
        key_id: key_id.to_string(),
        signature,
    };
    let mut files = vec![(INDEX.to_owned(), unpacked.index_bytes.clone())];
    files.extend(unpacked.files);
    files.push((
        SIGNATURE.to_owned(),
        serde_json::to_vec_pretty(&sig).map_err(|e| e.to_string())?,
    ));
    pack(&files)
}

fn pack(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        tar.append_data(&mut header, path, bytes.as_slice())
            .map_err(|e| format!("Cannot write the archive: {e}"))?;
    }
    let gz = tar
        .into_inner()
        .map_err(|e| format!("Cannot write the archive: {e}"))?;
    gz.finish()
        .map_err(|e| format!("Cannot write the archive: {e}"))
}

/// An archive read and checked: every file matches the index.
#[derive(Debug)]
pub struct Unpacked {
    /// The index.
    pub index: Index,
    /// The sha256 of the index's exact bytes (what a signature covers).
    pub index_sha256: [u8; 32],
    /// The index's exact bytes.
    pub index_bytes: Vec<u8>,
    /// The signature, when the archive has one.
    pub signature: Option<Signature>,
    /// Every file by path.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Unpacked {
    /// A file's text.
    pub fn text(&self, path: &str) -> Result<String, String> {
        let bytes = self
            .files
            .get(path)
            .ok_or_else(|| format!("The archive lists `{path}` but does not hold it"))?;
        String::from_utf8(bytes.clone())
            .map_err(|_| format!("`{path}` in the archive is not UTF-8"))
    }
}

/// Reads an archive; refuses unsafe entries, oversize content and files that do not match the
/// index.
pub fn read(bytes: &[u8]) -> Result<Unpacked, String> {
    // The decompressed stream is capped as a whole: the tar reader buffers long-name and PAX
    // headers itself, before the per-entry checks below see them.
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_UNPACKED + (1 << 20));
    let mut tar = tar::Archive::new(gz);
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let entries = tar
        .entries()
        .map_err(|e| format!("The archive cannot be read: {e}"))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(format!("The archive has more than {MAX_ENTRIES} entries"));
        }
        let mut entry = entry.map_err(|e| format!("The archive cannot be read: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("An archive entry has an unreadable name: {e}"))?
            .into_owned();
        let shown = path.display().to_string();
        let kind = entry.header().entry_type();
        if !safe_path(&path) {
            return Err(format!(
                "The archive entry `{shown}` is an absolute path or leaves the archive (`..`); the archive was refused"
            ));
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => continue,
            other => {
                return Err(format!(
                    "The archive entry `{shown}` is a {}, not a plain file; the archive was refused",
                    match other {
                        tar::EntryType::Symlink => "symbolic link".to_owned(),
                        tar::EntryType::Link => "hard link".to_owned(),
                        tar::EntryType::Char | tar::EntryType::Block => "device file".to_owned(),
                        tar::EntryType::Fifo => "FIFO".to_owned(),
                        other => format!("{other:?}"),
                    }
                ));
            }
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        total = total.saturating_add(size);
        if total > MAX_UNPACKED {
            return Err(format!(
                "The archive unpacks to more than {} MiB; it was refused",
                MAX_UNPACKED >> 20
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(MAX_UNPACKED)
            .read_to_end(&mut data)
            .map_err(|e| format!("The archive cannot be read at `{shown}`: {e}"))?;
        let key = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str().map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/");
        if files.insert(key, data).is_some() {
            return Err(format!("The archive holds `{shown}` twice; it was refused"));
        }
    }
    let index_bytes = files
        .remove(INDEX)
        .ok_or_else(|| format!("This is not a plugd script archive: it has no `{INDEX}`"))?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| format!("The archive's index is not valid: {e}"))?;
    if index.format != FORMAT {
        return Err(format!(
            "The archive has format {}, this plugd reads format {FORMAT}; hint: export it again with this plugd's version",
            index.format
        ));
    }
    let signature = match files.remove(SIGNATURE) {
        Some(bytes) => Some(
            serde_json::from_slice::<Signature>(&bytes)
                .map_err(|e| format!("The archive's signature file is not valid: {e}"))?,
        ),
        None => None,
    };
    for (path, bytes) in &files {
        match index.files.get(path) {
            Some(sha) if *sha == hex(&Sha256::digest(bytes)) => {}
            Some(_) => {
                return Err(format!(
                    "`{path}` in the archive does not match its index (altered after export); the archive was refused"
                ));
            }
            None => {
                return Err(format!(
                    "`{path}` in the archive is not in its index (added after export); the archive was refused"
                ));
            }
        }
    }
    if let Some(missing) = index.files.keys().find(|p| !files.contains_key(*p)) {
        return Err(format!(
            "The archive's index lists `{missing}`, which it does not hold; the archive was refused"
        ));
    }
    Ok(Unpacked {
        index,
        index_sha256: Sha256::digest(&index_bytes).into(),
        index_bytes,
        signature,
        files,
    })
}

fn safe_path(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let meta = serde_json::json!({"name": "x"});
        write(
            &[(
                "x".to_owned(),
                "sha256:1".to_owned(),
                vec![VersionFiles {
                    version: 1,
                    digest: "sha256:1",
                    meta: &meta,
                    source: "print(1)\n",
                    lock: Some("# lock\n"),
                }],
            )],
            None,
        )
        .unwrap()
    }

    #[test]
    fn an_archive_reads_back() {
        let u = read(&sample()).unwrap();
        assert_eq!(
            u.index.scripts[0].versions[0].source,
            "plugd-scripts/x/1.py"
        );
        assert_eq!(u.text("plugd-scripts/x/1.py").unwrap(), "print(1)\n");
        assert_eq!(u.text("plugd-scripts/x/1.lock").unwrap(), "# lock\n");
        assert!(u.signature.is_none());
    }

    /// A tar.gz with one raw entry, bypassing the `tar` crate's own path checks.
    fn raw(name: &[u8], kind: u8, body: &[u8], link: &[u8]) -> Vec<u8> {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name);
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = kind;
        header[157..157 + link.len()].copy_from_slice(link);
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut tar = header.to_vec();
        tar.extend_from_slice(body);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
        tar.extend_from_slice(&[0u8; 1024]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn unsafe_entries_refuse_the_whole_archive() {
        let slip = read(&raw(b"../../etc/cron.d/x", b'0', b"boom", b"")).unwrap_err();
        assert!(slip.contains("leaves the archive"), "{slip}");
        let abs = read(&raw(b"/etc/passwd", b'0', b"boom", b"")).unwrap_err();
        assert!(abs.contains("absolute path"), "{abs}");
        let link = read(&raw(b"plugd-scripts/x", b'2', b"", b"/etc/shadow")).unwrap_err();
        assert!(link.contains("symbolic link"), "{link}");
        let hard = read(&raw(b"plugd-scripts/x", b'1', b"", b"/etc/shadow")).unwrap_err();
        assert!(hard.contains("hard link"), "{hard}");
        let dev = read(&raw(b"plugd-scripts/x", b'3', b"", b"")).unwrap_err();
        assert!(dev.contains("device file"), "{dev}");
        let none = read(&raw(b"a.txt", b'0', b"x", b"")).unwrap_err();
        assert!(none.contains("not a plugd script archive"), "{none}");
    }

    #[test]
    fn a_file_changed_after_export_is_refused() {
        // Re-pack the sample with one source altered.
        let u = read(&sample()).unwrap();
        let mut index = u.index.clone();
        index.files.insert(
            "plugd-scripts/x/1.py".into(),
            hex(&Sha256::digest(b"print(1)\n")),
        );
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, bytes) in [
            (INDEX, serde_json::to_vec(&index).unwrap()),
            (
                "plugd-scripts/x/1.py",
                b"import os; os.system('x')\n".to_vec(),
            ),
            ("plugd-scripts/x/1.lock", b"# lock\n".to_vec()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, bytes.as_slice()).unwrap();
        }
        let bytes = tar.into_inner().unwrap().finish().unwrap();
        let err = read(&bytes).unwrap_err();
        assert!(err.contains("does not match its index"), "{err}");
    }
}
