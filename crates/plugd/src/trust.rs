//! `plugd keygen`, `sign`, `verify` and `trust add|list|remove`: Ed25519 package signing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use plugd_trust::{
    KeyId, KeySource, Overwrite, PublicKey, SecretKey, Trust, TrustPolicy, TrustStore,
    sign_package, verify_package,
};

pub(crate) fn keygen(out: &Path, force: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate();
    let overwrite = if force {
        Overwrite::Replace
    } else {
        Overwrite::Refuse
    };
    let public = key.write(out, overwrite)?;
    if as_json {
        println!(
            "{}",
            serde_json::json!({ "key_id": key.key_id().to_string(), "secret": out, "public": public })
        );
    } else {
        println!(
            "Wrote secret key `{}` (mode 0600) and public key `{}`",
            out.display(),
            public.display()
        );
        println!("Key id: {}", key.key_id());
        println!(
            "Next: `plugd sign DIR --key {}` and, where plugins load, `plugd trust add {}`",
            out.display(),
            public.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn sign(dir: &Path, key: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let key = SecretKey::load(key)?;
    let info = sign_package(dir, &key)?;
    if as_json {
        println!(
            "{}",
            serde_json::json!({
                "plugin": info.plugin, "version": info.version.to_string(), "key_id": info.key_id.to_string(),
                "digest": info.digest.to_string(), "files": info.files, "signature": info.path,
            })
        );
    } else {
        println!(
            "Signed `{} {}` ({} files, digest {}) with key {}; wrote `{}`",
            info.plugin,
            info.version,
            info.files,
            info.digest.short(),
            info.key_id,
            info.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn verify(
    dir: &Path,
    key: Option<&Path>,
    trust_dir: &Path,
    strict: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let verification = match key {
        Some(path) => {
            let public = PublicKey::load(path)?;
            verify_package(dir, &KeySource::Key(&public))?
        }
        None => {
            let store = TrustStore::open(trust_dir)?;
            verify_package(dir, &KeySource::Store(&store))?
        }
    };
    TrustPolicy { strict }.check(&verification)?;
    let (trusted, key_id) = match &verification.trust {
        Trust::Trusted { key_id } => (true, Some(key_id.to_string())),
        Trust::Unsigned => (false, None),
    };
    if as_json {
        println!(
            "{}",
            serde_json::json!({
                "plugin": verification.plugin, "version": verification.version.to_string(),
                "digest": verification.digest.to_string(), "trusted": trusted, "key_id": key_id,
            })
        );
    } else if let Some(key_id) = key_id {
        println!(
            "OK: `{}` is signed by trusted key {key_id}",
            verification.package()
        );
    } else {
        println!(
            "Unsigned: `{}` would load as untrusted (refused with `--strict`); hint: `plugd sign`",
            verification.package()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn add(trust_dir: &Path, key: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let store = TrustStore::open(trust_dir)?;
    let id = store.add(key)?;
    if as_json {
        println!("{}", serde_json::json!({ "key_id": id.to_string() }));
    } else {
        println!(
            "Trusted key {id} (from `{}`) in `{}`",
            key.display(),
            trust_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn list(trust_dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let store = TrustStore::open(trust_dir)?;
    let keys = store.list()?;
    if as_json {
        let keys: Vec<_> = keys
            .iter()
            .map(|(id, path)| serde_json::json!({ "key_id": id.to_string(), "path": path }))
            .collect();
        println!("{}", serde_json::json!({ "keys": keys }));
    } else if keys.is_empty() {
        println!(
            "No trusted keys in `{}`; hint: `plugd trust add KEY.pub`",
            trust_dir.display()
        );
    } else {
        for (id, path) in keys {
            println!("{id}  {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn remove(trust_dir: &Path, key_id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let store = TrustStore::open(trust_dir)?;
    let id = KeyId::parse(key_id)?;
    let path: PathBuf = store
        .remove(&id)
        .with_context(|| format!("Cannot remove key `{key_id}`"))?;
    if as_json {
        println!("{}", serde_json::json!({ "removed": id.to_string() }));
    } else {
        println!("Removed key {id} (`{}`)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
