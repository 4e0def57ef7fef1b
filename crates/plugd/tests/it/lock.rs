//! `plugd lock DIR`: pins a package's Python requirements into `DIR/requirements.lock` with the
//! hash header the host checks, from wheels the test makes (`--no-index --find-links`: no
//! network); failures name the requirement and the fix.

use std::path::Path;
use std::process::Command;

use plugd_host::pyenv::{self, HASH_HEADER, LOCK_FILE};

use crate::{Expect, check, plugd, read};

/// Writes `NAME-VERSION-py3-none-any.whl` (a package with an empty `__init__.py`) into `dir`.
fn wheel(dir: &Path, name: &str, version: &str) {
    const SCRIPT: &str = r#"
import base64, hashlib, sys, zipfile
name, version, out = sys.argv[1:4]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": "",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: plugd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(text.encode())}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(f"{out}/{name}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
"#;
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("python3")
        .args(["-c", SCRIPT, name, version])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

fn package(dir: &Path, requirements_txt: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "[plugin]\nname = \"deps\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), "").unwrap();
    if let Some(text) = requirements_txt {
        std::fs::write(dir.join("requirements.txt"), text).unwrap();
    }
}

#[test]
fn lock_pins_the_requirements_with_their_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let (wheels, pkg, state) = (
        tmp.path().join("wheels"),
        tmp.path().join("pkg"),
        tmp.path().join("state"),
    );
    wheel(&wheels, "tinydep", "1.0");
    wheel(&wheels, "tinyother", "2.0");
    package(
        &pkg,
        Some("# ours\ntinydep==1.0\n\ntinyother>=2  # any 2.x\n"),
    );
    let (pkg_s, state_s, wheels_s) = (
        pkg.to_str().unwrap(),
        state.to_str().unwrap(),
        wheels.to_str().unwrap(),
    );
    let offline = ["--no-index", "--find-links", wheels_s];
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["--state-dir", state_s, "lock", pkg_s]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(offline.iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |extra: &[&'static str]| {
        let args = args(extra);
        plugd(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let lock_path = pkg.join(LOCK_FILE);
    check(
        &run(&[]),
        &Expect::Ok {
            stdout: &[
                &format!(
                    "Pinned 2 packages (from 2 requirements) into {}",
                    lock_path.display()
                ),
                "hint: sign the package again",
            ],
        },
    );
    let lock = read(&lock_path);
    let hash = pyenv::requirements_hash(&["tinydep==1.0".into(), "tinyother>=2".into()]);
    assert!(
        lock.starts_with(&format!("{HASH_HEADER}{hash}\n")),
        "{lock}"
    );
    assert!(
        lock.contains("tinydep==1.0 \\\n    --hash=sha256:"),
        "{lock}"
    );
    assert!(
        lock.contains("tinyother==2.0 \\\n    --hash=sha256:"),
        "{lock}"
    );

    // `--json` says the same for scripts.
    let json = run(&["--json"]);
    check(&json, &Expect::Ok { stdout: &[] });
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["packages"], 2);
    assert_eq!(value["requirements_hash"], format!("sha256:{hash}"));

    // A requirement that no index has: named, with uv's reason and the fix.
    std::fs::write(
        pkg.join("requirements.txt"),
        "tinydep==1.0\nnosuchpkg==1.0\n",
    )
    .unwrap();
    check(
        &run(&[]),
        &Expect::Err {
            stderr: &[
                "cannot resolve its Python requirements (`nosuchpkg==1.0`): uv: ",
                "hint: ",
            ],
        },
    );
    // The earlier lock is left as it was.
    assert_eq!(read(&lock_path), lock);

    // No uv: the fix is named.
    check(
        &run(&["--uv", "/nonexistent/uv"]),
        &Expect::Err {
            stderr: &[
                "needs `uv`",
                &format!("pip install uv=={}", pyenv::UV_VERSION),
            ],
        },
    );
}

#[test]
fn lock_without_requirements_says_where_to_put_them() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    package(&pkg, None);
    let state = tmp.path().join("state");
    check(
        &plugd(&[
            "--state-dir",
            state.to_str().unwrap(),
            "lock",
            pkg.to_str().unwrap(),
        ]),
        &Expect::Err {
            stderr: &[
                "has no Python requirements to lock",
                "[python] requirements",
            ],
        },
    );
    assert!(!pkg.join(LOCK_FILE).exists());
}
