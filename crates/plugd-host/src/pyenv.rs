//! Private Python environments for plugins' dependencies (`[python] requirements` or
//! `requirements.txt`), built with `uv` from a lock, keyed by the lock's hash under
//! `STATE/envs/<hash>`.
//!
//! - The requirements are normalized (stripped, blank lines and `#` comments dropped, order
//!   kept) and hashed; a lock (`requirements.lock`, `uv pip compile --generate-hashes` output)
//!   starts with `# plugd-requirements-hash: sha256:<hex>` of what it was made from, so "the lock
//!   does not match its requirements" is a plain comparison.
//! - A package without a lock gets one resolved by `uv pip compile` into
//!   `STATE/locks/<requirements hash>.lock` (reused: a second load needs no network); strict mode
//!   refuses it instead.
//! - The environment is `STATE/envs/<first 16 hex of sha256(lock bytes)>`, built in
//!   `STATE/envs/.building-<hash>-<random>` (a relocatable venv) and renamed into place, under a
//!   per-hash file lock. Wheels only (`--only-binary :all:`): no package's build code runs with
//!   the host's privileges. A cache hit spawns nothing.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use plugd_manifest::{Manifest, PluginName};
use sha2::{Digest, Sha256};

use crate::registry::TrustLevel;
use crate::{Host, HostConfig};

/// The lock file of a package, at its root.
pub const LOCK_FILE: &str = "requirements.lock";
/// The pip-style requirements file a package may ship instead of `[python] requirements`.
pub const REQUIREMENTS_FILE: &str = "requirements.txt";
/// The first line of a lock, followed by the hex sha256 of the normalized requirements.
pub const HASH_HEADER: &str = "# plugd-requirements-hash: sha256:";
/// The `uv` version the project's setup (`./dev`) installs.
pub const UV_VERSION: &str = "0.9.30";
/// Where the interpreter of every environment is looked up: the process runtime's base `PATH`
/// for children (`plugd_process::CHILD_PATH`), so an environment's `python3` is the one plugins
/// without dependencies run, and lives where the sandbox already lets them read.
const INTERPRETER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How many hex digits of the lock's sha256 name its environment.
const ENV_HASH_LEN: usize = 16;
/// The prefix of an environment being built (`.building-<hash>-<random>`).
const BUILDING: &str = ".building-";
/// The prefix of an environment's lock file (`.lock-<hash>`).
const LOCK_PREFIX: &str = ".lock-";

/// Where `uv` comes from and which package index it uses (`plugd serve --uv`, `--index-url`,
/// `--find-links`, `--no-index`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonConfig {
    /// The `uv` binary; `None` looks `uv` up on the host's `PATH`.
    pub uv: Option<PathBuf>,
    /// The package index (`uv --index-url`); `None`: uv's default (PyPI).
    pub index_url: Option<String>,
    /// Directories (or URLs) of wheels to use as well (`uv --find-links`).
    pub find_links: Vec<PathBuf>,
    /// Use no index at all, only `find_links` (`uv --no-index`).
    pub no_index: bool,
}

/// Where a package's requirements were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `[python] requirements` in the manifest.
    Manifest,
    /// `requirements.txt` at the package root.
    File,
}

/// A package's Python requirements, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirements {
    /// One requirement a line, stripped, without blank lines and comments, in order.
    pub lines: Vec<String>,
    /// Where they were written.
    pub source: Source,
}

impl Requirements {
    /// The hex sha256 of the lines joined with `\n`: what a lock's header records.
    pub fn hash(&self) -> String {
        requirements_hash(&self.lines)
    }

    /// The requirements for a message: `` `a`, `b` `` (at most five, then `...`).
    fn named(&self) -> String {
        named(&self.lines.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// A lock made by [`lock_requirements`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The whole file: the hash header, then uv's pins with their hashes.
    pub text: String,
    /// How many distributions it pins.
    pub packages: usize,
    /// The requirements hash in its header.
    pub requirements_hash: String,
}

/// Normalizes requirements text: each line stripped (and a ` #` comment after it cut), blank
/// lines and comment lines dropped, order kept.
pub fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let line = line.trim();
            // pip's inline comments need whitespace before `#` (a URL's `#sha256=` is kept).
            let cut = line
                .char_indices()
                .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with([' ', '\t'])))
                .map_or(line, |(i, _)| &line[..i]);
            cut.trim().to_owned()
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// The hex sha256 of normalized requirement lines joined with `\n`.
pub fn requirements_hash(lines: &[String]) -> String {
    hex(&Sha256::digest(lines.join("\n").as_bytes()))
}

/// The requirements hash a lock's first line records, if it has the header.
pub fn lock_header_hash(lock: &str) -> Option<&str> {
    let first = lock.lines().next()?.trim_end();
    let hash = first.strip_prefix(HASH_HEADER)?.trim();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// The Python requirements of a package (its manifest's `[python] requirements` or its
/// `requirements.txt`), or `None` when it declares none. Both at once, or pip options in the
/// file (`-r`, `--index-url`, `-e`: the operator chooses the index), are refused.
pub fn package_requirements(
    package: &Path,
    manifest_requirements: &[String],
) -> Result<Option<Requirements>, String> {
    let file = package.join(REQUIREMENTS_FILE);
    let from_file = match fs::read_to_string(&file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read `{REQUIREMENTS_FILE}`: {e}")),
    };
    match (manifest_requirements.is_empty(), from_file) {
        (true, None) => Ok(None),
        (false, Some(_)) => Err(format!(
            "it lists Python requirements both in `plugin.toml` (`[python] requirements`) and in `{REQUIREMENTS_FILE}`; hint: keep one of them"
        )),
        (false, None) => Ok(Some(Requirements {
            lines: normalize(&manifest_requirements.join("\n")),
            source: Source::Manifest,
        })),
        (true, Some(text)) => {
            let lines = normalize(&text);
            if let Some(option) = lines.iter().find(|l| l.starts_with('-')) {
                return Err(format!(
                    "its `{REQUIREMENTS_FILE}` has the option `{option}`; only requirements (like `numpy>=2`) are allowed there; hint: the operator chooses the index (`plugd serve --index-url`, `--find-links`)"
                ));
            }
            Ok(Some(Requirements {
                lines,
                source: Source::File,
            }))
        }
    }
}

/// Resolves requirements with `uv pip compile --generate-hashes --only-binary :all:` into a
/// lock (hash header first). `who` names the package in errors (e.g. ``Plugin `x` ``); uv's
/// cache is `STATE/cache/uv`. Needs the index (or `find_links`).
pub fn lock_requirements(
    state_dir: &Path,
    config: &PythonConfig,
    who: &str,
    requirements: &Requirements,
) -> Result<Lock, String> {
    // uv runs as the host: an option line (`-e DIR` builds and runs a project's code, `-r FILE`
    // reads a file, `--index-url` redirects) must never come from a package or a script.
    if let Some(line) = requirements
        .lines
        .iter()
        .find(|l| l.starts_with('-') || l.chars().any(char::is_control))
    {
        return Err(format!(
            "{who}: `{}` is not a requirement (options are the operator's: `--index-url`, `--find-links`); hint: write requirements like `numpy>=2`",
            line.escape_debug()
        ));
    }
    let uv = find_uv(config, who, requirements)?;
    let python = find_python(who)?;
    let scratch = state_dir
        .join("locks")
        .join(format!(".compile-{}", unique()));
    fs::create_dir_all(&scratch)
        .map_err(|e| format!("{who}: cannot create `{}`: {e}", scratch.display()))?;
    let result = (|| {
        let mut input = requirements.lines.join("\n");
        input.push('\n');
        fs::write(scratch.join("requirements.in"), input)
            .map_err(|e| format!("{who}: cannot write its requirements for uv: {e}"))?;
        let mut cmd = uv_command(&uv, state_dir);
        cmd.current_dir(&scratch)
            .args(["pip", "compile", "requirements.in", "--generate-hashes"])
            .args(["--no-header", "--output-file", "requirements.lock"])
            .arg("--python")
            .arg(&python);
        index_args(&mut cmd, config);
        run(cmd).map_err(|detail| {
            failure(
                who,
                "cannot resolve its Python requirements",
                requirements,
                &detail,
            )
        })?;
        let body = fs::read_to_string(scratch.join("requirements.lock"))
            .map_err(|e| format!("{who}: uv wrote no lock: {e}"))?;
        let hash = requirements.hash();
        Ok(Lock {
            packages: pins(&body).len(),
            text: format!(
                "{HASH_HEADER}{hash}\n# Pinned by plugd with uv, wheels only; do not edit: run `plugd lock DIR` again.\n{body}"
            ),
            requirements_hash: hash,
        })
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// The environment a package runs with (`None` when it has no Python requirements): checks
/// its lock against its requirements (or resolves one, cached, outside strict mode), then
/// returns `STATE/envs/<lock hash>`, building it first if it does not exist. Blocking: it may
/// run `uv` for minutes on a cold build; a cache hit touches only a few files.
pub fn prepare_env(
    config: &HostConfig,
    name: &str,
    package: &Path,
    manifest: &Manifest,
) -> Result<Option<PathBuf>, String> {
    let who = format!("Plugin `{name}`");
    let lock_path = package.join(LOCK_FILE);
    let has_lock = lock_path.is_file();
    let requirements = match package_requirements(package, &manifest.python.requirements)
        .map_err(|e| format!("{who}: {e}"))?
    {
        Some(requirements) => requirements,
        None if has_lock => Requirements {
            lines: Vec::new(),
            source: Source::Manifest,
        },
        None => return Ok(None),
    };
    let state_dir = &config.state_dir;
    let hash = requirements.hash();
    let (lock_path, lock_bytes) = if has_lock {
        let bytes =
            fs::read(&lock_path).map_err(|e| format!("{who}: cannot read `{LOCK_FILE}`: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        match lock_header_hash(&text) {
            Some(recorded) if recorded.eq_ignore_ascii_case(&hash) => {}
            Some(_) => {
                return Err(format!(
                    "{who} was refused: its lock does not match its requirements (`{LOCK_FILE}` was made from other requirements than {} in {}); hint: `plugd lock DIR` (then sign the package again)",
                    requirements.named(),
                    where_written(requirements.source),
                ));
            }
            None => {
                return Err(format!(
                    "{who} was refused: its `{LOCK_FILE}` does not start with `{HASH_HEADER}...`, so it cannot be checked against its requirements; hint: `plugd lock DIR` (then sign the package again)"
                ));
            }
        }
        (lock_path, bytes)
    } else if config.strict {
        return Err(format!(
            "{who} was refused: it has Python requirements ({}) but no `{LOCK_FILE}`, and strict mode requires a lock; hint: `plugd lock DIR`, then sign",
            requirements.named()
        ));
    } else {
        cached_lock(state_dir, &config.python, &who, &requirements, &hash)?
    };
    if requirements.lines.is_empty() {
        return Ok(None);
    }
    let env_hash = hex(&Sha256::digest(&lock_bytes))[..ENV_HASH_LEN].to_owned();
    let env = envs_dir(state_dir).join(&env_hash);
    if env.is_dir() {
        return Ok(Some(env));
    }
    build_env(
        state_dir,
        &config.python,
        &who,
        &requirements,
        &lock_path,
        &lock_bytes,
        &env_hash,
    )
    .map(Some)
}

/// The lock of `requirements`, resolved once and cached in `STATE/locks/<requirements hash>.lock`
/// (so a second script or plugin with the same requirements needs no network). `who` names
/// the owner in errors (e.g. ``Script `x` ``).
pub fn cached_lock_text(
    state_dir: &Path,
    config: &PythonConfig,
    who: &str,
    lines: &[String],
) -> Result<String, String> {
    let requirements = Requirements {
        lines: lines.to_vec(),
        source: Source::Manifest,
    };
    fs::create_dir_all(state_dir.join("locks")).map_err(|e| {
        format!(
            "{who}: cannot create `{}`: {e}",
            state_dir.join("locks").display()
        )
    })?;
    let hash = requirements.hash();
    let (_, bytes) = cached_lock(state_dir, config, who, &requirements, &hash)?;
    String::from_utf8(bytes).map_err(|_| format!("{who}: its cached lock is not UTF-8"))
}

/// The environment of a lock given as text (a script version's): `STATE/envs/<lock hash>`,
/// shared with every package and script with the same lock, built from it when missing. A
/// cache hit touches one directory.
pub fn env_for_lock(
    state_dir: &Path,
    config: &PythonConfig,
    who: &str,
    lines: &[String],
    lock_text: &str,
) -> Result<PathBuf, String> {
    let env_hash = hex(&Sha256::digest(lock_text.as_bytes()))[..ENV_HASH_LEN].to_owned();
    let env = envs_dir(state_dir).join(&env_hash);
    if env.is_dir() {
        return Ok(env);
    }
    let requirements = Requirements {
        lines: lines.to_vec(),
        source: Source::Manifest,
    };
    let dir = state_dir.join("locks");
    fs::create_dir_all(&dir)
        .map_err(|e| format!("{who}: cannot create `{}`: {e}", dir.display()))?;
    let lock_path = dir.join(format!(".env-{env_hash}-{}.lock", unique()));
    fs::write(&lock_path, lock_text)
        .map_err(|e| format!("{who}: cannot write `{}`: {e}", lock_path.display()))?;
    let built = build_env(
        state_dir,
        config,
        who,
        &requirements,
        &lock_path,
        lock_text.as_bytes(),
        &env_hash,
    );
    let _ = fs::remove_file(&lock_path);
    built
}

impl Host {
    /// The environment a staged package runs with: `None` when it needs no dependencies.
    pub(crate) async fn python_env(
        &self,
        name: &PluginName,
        package: &Path,
        manifest: &Manifest,
        trust: &TrustLevel,
    ) -> Result<Option<PathBuf>, String> {
        // The trust level changes nothing here: every package's dependencies are installed the
        // same way (wheels only, outside the sandbox, never running package code), and every
        // plugin runs its environment read-only inside its own confinement.
        let _ = trust;
        if manifest.python.requirements.is_empty()
            && !package.join(REQUIREMENTS_FILE).exists()
            && !package.join(LOCK_FILE).exists()
        {
            return Ok(None);
        }
        let config = self.inner.config.clone();
        let (name, package, manifest) = (name.to_string(), package.to_owned(), manifest.clone());
        tokio::task::spawn_blocking(move || prepare_env(&config, &name, &package, &manifest))
            .await
            .map_err(|e| format!("Preparing the Python environment failed: {e}"))?
    }
}

/// `STATE/envs`.
fn envs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("envs")
}

/// The lock resolved for requirements without one: `STATE/locks/<requirements hash>.lock`,
/// made once with `uv pip compile`.
fn cached_lock(
    state_dir: &Path,
    config: &PythonConfig,
    who: &str,
    requirements: &Requirements,
    hash: &str,
) -> Result<(PathBuf, Vec<u8>), String> {
    let path = state_dir.join("locks").join(format!("{hash}.lock"));
    if let Ok(bytes) = fs::read(&path)
        && lock_header_hash(&String::from_utf8_lossy(&bytes)) == Some(hash)
    {
        return Ok((path, bytes));
    }
    let lock = lock_requirements(state_dir, config, who, requirements)?;
    let tmp = path.with_extension(format!("lock.{}", unique()));
    fs::write(&tmp, &lock.text)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("{who}: cannot write `{}`: {e}", path.display())
        })?;
    Ok((path, lock.text.into_bytes()))
}

/// Builds `STATE/envs/<hash>` from a lock: a relocatable venv of the host's `python3`, synced
/// to the lock (wheels only, hashes required) in a `.building-*` directory, checked, made
/// readable to every plugin uid, then renamed into place. One build per hash at a time (a file
/// lock, so two hosts sharing a state dir are covered as well).
fn build_env(
    state_dir: &Path,
    config: &PythonConfig,
    who: &str,
    requirements: &Requirements,
    lock_path: &Path,
    lock_bytes: &[u8],
    hash: &str,
) -> Result<PathBuf, String> {
    let envs = envs_dir(state_dir);
    fs::create_dir_all(&envs)
        .map_err(|e| format!("{who}: cannot create `{}`: {e}", envs.display()))?;
    let env = envs.join(hash);
    let _guard = lock_hash(&envs, hash, true).map_err(|e| {
        format!(
            "{who}: cannot lock its environment `{}`: {e}",
            env.display()
        )
    })?;
    if env.is_dir() {
        // Built by someone else while this one waited for the lock.
        return Ok(env);
    }
    clean_leftovers(&envs, Some(hash));
    let uv = find_uv(config, who, requirements)?;
    let python = find_python(who)?;
    let building = envs.join(format!("{BUILDING}{hash}-{}", unique()));
    let started = std::time::Instant::now();
    let built = (|| {
        let mut venv = uv_command(&uv, state_dir);
        venv.args(["venv", "--relocatable", "--quiet", "--python"])
            .arg(&python)
            .arg(&building);
        run(venv).map_err(|detail| {
            format!(
                "{who}: cannot create its Python environment with `{}`: {detail}",
                python.display()
            )
        })?;
        let mut sync = uv_command(&uv, state_dir);
        sync.args(["pip", "sync", "--require-hashes", "--python"])
            .arg(building.join("bin").join("python3"))
            .arg(lock_path);
        index_args(&mut sync, config);
        run(sync).map_err(|detail| {
            failure(
                who,
                "cannot install its locked Python requirements",
                requirements,
                &detail,
            )
        })?;
        check_env(&building, &String::from_utf8_lossy(lock_bytes))
            .map_err(|e| format!("{who}: its Python environment is not usable: {e}"))?;
        fs::write(building.join(LOCK_FILE), lock_bytes)
            .and_then(|()| readable_by_all(&building))
            .map_err(|e| format!("{who}: cannot finish its Python environment: {e}"))?;
        match fs::rename(&building, &env) {
            // Another builder got there first (only possible if its lock file was replaced
            // under it): theirs is as good, being built from the same lock.
            Err(_) if env.is_dir() => {
                let _ = fs::remove_dir_all(&building);
                Ok(())
            }
            result => result.map_err(|e| {
                format!(
                    "{who}: cannot move its Python environment into `{}`: {e}",
                    env.display()
                )
            }),
        }
    })();
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&building);
        return Err(e);
    }
    tracing::info!(
        env = %env.display(),
        seconds = started.elapsed().as_secs_f64(),
        "built a Python environment"
    );
    Ok(env)
}

/// Checks a freshly synced environment without running any package code: its interpreter
/// starts (isolated, without `site`, so no `.pth` file runs) and every distribution the lock
/// pins has its `.dist-info`.
fn check_env(env: &Path, lock: &str) -> Result<(), String> {
    let python = env.join("bin").join("python3");
    let out = Command::new(&python)
        .args(["-I", "-S", "-c", "import sys; print(sys.version_info[0])"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}` does not run: {e}", python.display()))?;
    if !out.status.success() || out.stdout.trim_ascii() != b"3" {
        return Err(format!(
            "`{}` does not run: {}",
            python.display(),
            summary(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let mut installed = HashSet::new();
    for lib in fs::read_dir(env.join("lib")).map_err(|e| e.to_string())? {
        let site = lib.map_err(|e| e.to_string())?.path().join("site-packages");
        let Ok(entries) = fs::read_dir(&site) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = file.strip_suffix(".dist-info")
                && let Some((dist, _version)) = stem.rsplit_once('-')
            {
                installed.insert(canonical(dist));
            }
        }
    }
    let missing: Vec<String> = pins(lock)
        .into_iter()
        .filter(|pin| !installed.contains(&canonical(requirement_name(pin))))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "uv did not install {}",
            named(&missing.iter().map(String::as_str).collect::<Vec<_>>())
        ));
    }
    Ok(())
}

/// Adds read (and, for directories and executables, search) permission for everyone: plugins
/// run as their own uids and mount the environment read-only.
fn readable_by_all(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let wanted = if meta.is_dir() || mode & 0o100 != 0 {
        mode | 0o555
    } else {
        mode | 0o444
    };
    if wanted != mode {
        fs::set_permissions(root, fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            readable_by_all(&entry?.path())?;
        }
    }
    Ok(())
}

/// The pinned requirements of a lock (`name==version`), in order.
fn pins(lock: &str) -> Vec<String> {
    lock.lines()
        .filter(|line| {
            !line.is_empty() && !line.starts_with([' ', '\t', '#', '-']) && line.contains("==")
        })
        .map(|line| line.trim_end_matches('\\').trim().to_owned())
        .collect()
}

/// The distribution name a requirement starts with (`scikit-learn>=1` → `scikit-learn`).
fn requirement_name(requirement: &str) -> &str {
    let end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(requirement.len());
    &requirement[..end]
}

/// PEP 503 normalization: lower case, runs of `-`, `_`, `.` as one `-`.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Holds the per-hash lock file (`STATE/envs/.lock-<hash>`) while alive; `wait: false` fails
/// with `WouldBlock` when someone holds it.
fn lock_hash(envs: &Path, hash: &str, wait: bool) -> io::Result<File> {
    use rustix::fs::{FlockOperation, flock};
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(envs.join(format!("{LOCK_PREFIX}{hash}")))?;
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    flock(&file, op)?;
    Ok(file)
}

/// Removes what killed builds left (`.building-*`) whose hash nobody is building now (or of
/// `held`, whose lock the caller holds). Returns what went and its bytes.
fn clean_leftovers(envs: &Path, held: Option<&str>) -> (Vec<PathBuf>, u64) {
    let mut removed = (Vec::new(), 0);
    let Ok(entries) = fs::read_dir(envs) else {
        return removed;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(BUILDING) else {
            continue;
        };
        let hash = rest.split('-').next().unwrap_or_default();
        let _guard = if held == Some(hash) {
            None
        } else {
            match lock_hash(envs, hash, false) {
                Ok(guard) => Some(guard),
                // Being built right now, or a name that is not ours: leave it.
                Err(_) => continue,
            }
        };
        let path = entry.path();
        let bytes = crate::dir_usage(&path).unwrap_or(0);
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed an unfinished Python environment");
                removed.0.push(path);
                removed.1 += bytes;
            }
            Err(e) => tracing::warn!("cannot remove `{}`: {e}", path.display()),
        }
    }
    removed
}

/// Garbage collection: removes every environment under `STATE/envs` not in `keep` (and the
/// leftovers of killed builds); an environment being built is left alone. Returns what went and
/// the bytes it held (files shared with uv's cache through hard links stay in the cache).
pub(crate) fn collect_envs(
    state_dir: &Path,
    keep: &HashSet<PathBuf>,
) -> io::Result<(Vec<PathBuf>, u64)> {
    let envs = envs_dir(state_dir);
    let (mut removed, mut bytes) = clean_leftovers(&envs, None);
    let entries = match fs::read_dir(&envs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((removed, bytes)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if file.starts_with('.') || !entry.file_type()?.is_dir() || keep.contains(&path) {
            continue;
        }
        let Ok(_guard) = lock_hash(&envs, &file, false) else {
            continue;
        };
        let size = crate::dir_usage(&path).unwrap_or(0);
        fs::remove_dir_all(&path)?;
        // Its lock file stays (a few bytes): removing it could let two builders lock two files.
        removed.push(path);
        bytes += size;
    }
    Ok((removed, bytes))
}

/// `uv` with a minimal environment: `PATH`, `HOME`, its cache in `STATE/cache/uv`, no Python
/// downloads, no config files, no colour or progress bars; the proxy and CA variables pass
/// through when the host has them (an index behind a proxy needs them).
fn uv_command(uv: &Path, state_dir: &Path) -> Command {
    let mut cmd = Command::new(uv);
    cmd.env_clear()
        .env("PATH", INTERPRETER_PATH)
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| state_dir.as_os_str().to_owned()),
        )
        .env("UV_CACHE_DIR", state_dir.join("cache").join("uv"))
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("NO_COLOR", "1");
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.args(["--no-config", "--no-progress", "--color", "never"])
        .stdin(Stdio::null());
    cmd
}

/// Wheels only, and the operator's index settings.
fn index_args(cmd: &mut Command, config: &PythonConfig) {
    cmd.args(["--only-binary", ":all:"]);
    if let Some(url) = &config.index_url {
        cmd.args(["--index-url", url]);
    }
    for dir in &config.find_links {
        cmd.arg("--find-links").arg(dir);
    }
    if config.no_index {
        cmd.arg("--no-index");
    }
}

/// Runs a uv command; on failure, the summary of its stderr.
fn run(mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", cmd.get_program().to_string_lossy()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = summary(&stderr);
    Err(if text.is_empty() {
        format!("uv failed ({})", out.status)
    } else {
        format!("uv: {text}")
    })
}

/// The last lines of uv's stderr that say something, trimmed of tree drawing, on one line.
fn summary(stderr: &str) -> String {
    const MAX: usize = 600;
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches(['×', '╰', '─', '▶', '│', '├', ' '])
                .trim()
        })
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Using Python")
                && !l.starts_with("Using CPython")
                && !l.starts_with("Resolved ")
        })
        .collect();
    let joined = lines[lines.len().saturating_sub(6)..].join(" ");
    let tail = joined.trim_end_matches('.');
    if tail.chars().count() > MAX {
        let cut: String = tail.chars().take(MAX).collect();
        format!("{cut}...")
    } else {
        tail.to_owned()
    }
}

/// A uv failure as the operator sees it: the package, the requirements uv's message names (or
/// all of them), what uv said and the fix.
fn failure(who: &str, what: &str, requirements: &Requirements, detail: &str) -> String {
    let lower = detail.to_lowercase();
    let named_by_uv: Vec<&str> = requirements
        .lines
        .iter()
        .map(String::as_str)
        .filter(|r| {
            let name = requirement_name(r).to_lowercase();
            !name.is_empty() && (lower.contains(&name) || lower.contains(&canonical(&name)))
        })
        .collect();
    let reqs = if named_by_uv.is_empty() {
        requirements.named()
    } else {
        named(&named_by_uv)
    };
    format!(
        "{who} {what} ({reqs}): {detail}; hint: check each name and version exists on the index with a wheel for this Python (plugd installs wheels only, never builds from source), and the index settings (`--index-url`, `--find-links`, `--no-index`; offline, only `--find-links` and uv's cache in `STATE/cache/uv` are used)"
    )
}

/// `` `a`, `b` `` for a message (at most five, then `...`).
fn named(items: &[&str]) -> String {
    let mut out: Vec<String> = items.iter().take(5).map(|r| format!("`{r}`")).collect();
    if items.len() > 5 {
        out.push(format!("and {} more", items.len() - 5));
    }
    if out.is_empty() {
        "no requirements".to_owned()
    } else {
        out.join(", ")
    }
}

fn where_written(source: Source) -> &'static str {
    match source {
        Source::Manifest => "`[python] requirements` of `plugin.toml`",
        Source::File => "`requirements.txt`",
    }
}

/// The `uv` binary: the configured one, or `uv` on the host's `PATH`.
fn find_uv(
    config: &PythonConfig,
    who: &str,
    requirements: &Requirements,
) -> Result<PathBuf, String> {
    let hint = format!(
        "hint: install it with `python3 -m pip install uv=={UV_VERSION}` (`./dev` does), or give its path with `plugd serve --uv PATH`"
    );
    if let Some(uv) = &config.uv {
        if is_executable(uv) {
            return Ok(uv.clone());
        }
        return Err(format!(
            "{who} needs `uv` to install its Python requirements ({}), and `{}` is not an executable; {hint}",
            requirements.named(),
            uv.display()
        ));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    search(&path, "uv").ok_or_else(|| {
        format!(
            "{who} needs `uv` to install its Python requirements ({}), and `uv` is not on the PATH; {hint}",
            requirements.named()
        )
    })
}

/// The `python3` plugins without an environment run (the first on the children's `PATH`).
fn find_python(who: &str) -> Result<PathBuf, String> {
    search(&OsString::from(INTERPRETER_PATH), "python3").ok_or_else(|| {
        format!(
            "{who} needs a Python environment, and there is no `python3` in `{INTERPRETER_PATH}`; hint: install Python 3"
        )
    })
}

fn search(path: &OsString, program: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A name part no other build of this process or another one picks at the same time.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:08x}{:x}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_strips_comments_and_blank_lines_and_keeps_order() {
        let text = "\n  # a comment\nnumpy>=2  \n\n\tscikit-learn==1.5 # pinned for x\nrequests @ https://h/r.whl#sha256=ab\n#end";
        assert_eq!(
            normalize(text),
            [
                "numpy>=2",
                "scikit-learn==1.5",
                "requests @ https://h/r.whl#sha256=ab"
            ]
        );
        // The same requirements written differently hash the same; order matters.
        let a = requirements_hash(&normalize("numpy>=2\nscipy\n"));
        assert_eq!(
            a,
            requirements_hash(&normalize("# deps\n  numpy>=2\n\nscipy  # x\n"))
        );
        assert_ne!(a, requirements_hash(&normalize("scipy\nnumpy>=2\n")));
        // sha256("numpy>=2\nscipy"), joined with `\n`, no trailing newline.
        assert_eq!(
            a,
            hex(&Sha256::digest(b"numpy>=2\nscipy")),
            "the hash is of the lines joined with \\n"
        );
        assert_eq!(
            requirements_hash(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn lock_headers_parse_only_a_full_hash_on_the_first_line() {
        let hash = "a".repeat(64);
        assert_eq!(
            lock_header_hash(&format!("{HASH_HEADER}{hash}\nx==1 \\\n")),
            Some(hash.as_str())
        );
        assert_eq!(
            lock_header_hash(&format!("{HASH_HEADER}{hash}  \r\n")),
            Some(hash.as_str())
        );
        assert_eq!(
            lock_header_hash(&format!("# x\n{HASH_HEADER}{hash}\n")),
            None
        );
        assert_eq!(
            lock_header_hash(&format!("{HASH_HEADER}{}\n", &hash[1..])),
            None
        );
        assert_eq!(
            lock_header_hash(&format!("{HASH_HEADER}{}z\n", &hash[1..])),
            None
        );
        assert_eq!(lock_header_hash(""), None);
    }

    #[test]
    fn pins_names_and_summaries() {
        let lock = "# plugd-requirements-hash: sha256:00\nnumpy==2.1.0 \\\n    --hash=sha256:ab\n    # via scikit-learn\nscikit-learn==1.5.2 \\\n    --hash=sha256:cd\n";
        assert_eq!(pins(lock), ["numpy==2.1.0", "scikit-learn==1.5.2"]);
        assert_eq!(
            requirement_name("scikit-learn>=1; python_version>'3'"),
            "scikit-learn"
        );
        assert_eq!(requirement_name("Foo.Bar[x]==1"), "Foo.Bar");
        assert_eq!(canonical("Foo._Bar"), "foo-bar");
        let stderr = "Using Python 3.11.2 environment at: x\n  × No solution found when resolving dependencies:\n  ╰─▶ Because nosuchpkg was not found in the provided package locations and you require nosuchpkg==1.0, we can conclude that your requirements are unsatisfiable.\n";
        assert_eq!(
            summary(stderr),
            "No solution found when resolving dependencies: Because nosuchpkg was not found in the provided package locations and you require nosuchpkg==1.0, we can conclude that your requirements are unsatisfiable"
        );
        let reqs = Requirements {
            lines: vec!["tinydep==1.0".into(), "nosuchpkg==1.0".into()],
            source: Source::Manifest,
        };
        let msg = failure("Plugin `p`", "cannot resolve", &reqs, &summary(stderr));
        assert!(
            msg.starts_with("Plugin `p` cannot resolve (`nosuchpkg==1.0`): "),
            "{msg}"
        );
    }

    #[test]
    fn requirements_come_from_one_place() {
        let dir = std::env::temp_dir().join(format!("plugd-pyenv-{}", unique()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(package_requirements(&dir, &[]).unwrap(), None);
        let manifest = vec!["a==1".to_owned(), " # c".to_owned(), "b".to_owned()];
        assert_eq!(
            package_requirements(&dir, &manifest).unwrap().unwrap(),
            Requirements {
                lines: vec!["a==1".into(), "b".into()],
                source: Source::Manifest
            }
        );
        fs::write(dir.join(REQUIREMENTS_FILE), "a==1\n\nb # x\n").unwrap();
        let from_file = package_requirements(&dir, &[]).unwrap().unwrap();
        assert_eq!(from_file.source, Source::File);
        // The same requirements hash the same wherever they are written.
        assert_eq!(
            from_file.hash(),
            requirements_hash(&["a==1".into(), "b".into()])
        );
        let both = package_requirements(&dir, &manifest).unwrap_err();
        assert!(both.contains("both in `plugin.toml`"), "{both}");
        assert!(both.contains("`requirements.txt`"), "{both}");
        fs::write(dir.join(REQUIREMENTS_FILE), "--index-url http://evil\na\n").unwrap();
        let option = package_requirements(&dir, &[]).unwrap_err();
        assert!(option.contains("`--index-url http://evil`"), "{option}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
