//! `plugd token create|list|revoke`: API tokens, on the state dir's store (offline, so the first
//! admin token exists before the server runs) or through a running server (`--remote`, with an
//! admin token).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use plugd_server::auth;
use plugd_store::{Store, StoreConfig, TokenRecord};
use serde_json::{Value, json};

use crate::paths::Paths;

/// Where the command acts.
pub(crate) enum Target<'a> {
    /// The store of this state dir.
    Offline(&'a Paths),
    /// The running server at this URL.
    Remote(&'a str),
}

/// `--expires`: `30d`, `12h`, `2w`, ... (never `0`).
pub(crate) fn parse_expires(text: &str) -> Result<Duration, String> {
    match crate::config::parse_retention(text) {
        Ok(d) if d.is_zero() => Err(format!(
            "`--expires {text}` would expire the token at once; hint: leave `--expires` out for a token that never expires"
        )),
        Ok(d) => Ok(d),
        Err(_) => Err(format!(
            "Invalid lifetime `{text}`; hint: write `30d`, `2w`, `12h` or `30m`"
        )),
    }
}

fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

async fn open(paths: &Paths) -> anyhow::Result<Store> {
    let path = paths.state_dir.join("plugd.db");
    Store::open(StoreConfig::new(&path))
        .await
        .with_context(|| format!("Cannot open the store `{}`", path.display()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn record_json(r: &TokenRecord) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "scopes": r.scopes,
        "created_at_ms": r.created_at_ms,
        "expires_at_ms": r.expires_at_ms,
        "expired": r.expires_at_ms.is_some_and(|at| at <= now_ms()),
    })
}

pub(crate) fn create(
    target: Target<'_>,
    name: &str,
    scopes: &[String],
    expires: Option<Duration>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let parsed = auth::parse_scopes(scopes).map_err(anyhow::Error::msg)?;
    let created = match target {
        Target::Offline(paths) => {
            let expires_at = expires.map(|d| now_ms().saturating_add(d.as_millis() as u64));
            let (secret, record) =
                auth::new_token(name, &parsed, expires_at).map_err(anyhow::Error::msg)?;
            std::fs::create_dir_all(&paths.state_dir).with_context(|| {
                format!(
                    "Cannot create the state dir `{}`",
                    paths.state_dir.display()
                )
            })?;
            let stored = block_on(async {
                let store = open(paths).await?;
                Ok(store.create_token(record).await?)
            })?;
            let mut value = record_json(&stored);
            value["token"] = json!(secret);
            value
        }
        Target::Remote(server) => {
            let body = json!({
                "name": name,
                "scopes": parsed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "expires_in_s": expires.map(|d| d.as_secs()),
            });
            crate::client::json(
                server,
                "POST",
                "/api/v1/tokens",
                Some(body.to_string().as_bytes()),
            )?
        }
    };
    let Some(secret) = created["token"].as_str() else {
        bail!("The server's answer has no token");
    };
    if as_json {
        println!("{created}");
    } else {
        // The secret alone on stdout, so `TOKEN=$(plugd token create ...)` works; the rest is
        // for the person reading.
        println!("{secret}");
        let expires = created["expires_at_ms"]
            .as_u64()
            .map_or("never expires".to_owned(), |ms| {
                format!("expires {}", crate::output::utc(ms))
            });
        eprintln!(
            "Created token `{}` (id {}, scopes: {}; {expires}). It is shown only this once: keep it now.\nUse it with `PLUGD_TOKEN=... plugd list`, or `Authorization: Bearer ...` on the API.",
            created["name"].as_str().unwrap_or(name),
            created["id"].as_str().unwrap_or("?"),
            scope_list(&created["scopes"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn scope_list(scopes: &Value) -> String {
    scopes
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub(crate) fn list(target: Target<'_>, as_json: bool) -> anyhow::Result<ExitCode> {
    let tokens: Vec<Value> = match target {
        Target::Offline(paths) => {
            if !paths.state_dir.join("plugd.db").exists() {
                Vec::new()
            } else {
                block_on(async { Ok(open(paths).await?.tokens().await?) })?
                    .iter()
                    .map(record_json)
                    .collect()
            }
        }
        Target::Remote(server) => crate::client::get_json(server, "/api/v1/tokens")?["tokens"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    if as_json {
        println!("{}", json!({ "tokens": tokens }));
        return Ok(ExitCode::SUCCESS);
    }
    if tokens.is_empty() {
        println!(
            "No tokens: the API answers anyone who reaches it on a loopback address; hint: `plugd token create --name admin --scope admin`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<20}  {:<19}  {:<19}  SCOPES",
        "ID", "NAME", "CREATED", "EXPIRES"
    );
    for t in &tokens {
        let expires = match t["expires_at_ms"].as_u64() {
            None => "never".to_owned(),
            Some(_) if t["expired"].as_bool() == Some(true) => "expired".to_owned(),
            Some(ms) => crate::output::utc(ms),
        };
        println!(
            "{:<12}  {:<20}  {:<19}  {:<19}  {}",
            t["id"].as_str().unwrap_or("?"),
            t["name"].as_str().unwrap_or("?"),
            t["created_at_ms"]
                .as_u64()
                .map_or("?".to_owned(), crate::output::utc),
            expires,
            scope_list(&t["scopes"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn revoke(target: Target<'_>, which: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let revoked = match target {
        Target::Offline(paths) => {
            let found = if paths.state_dir.join("plugd.db").exists() {
                block_on(async { Ok(open(paths).await?.revoke_token(which).await?) })?
            } else {
                None
            };
            let Some(record) = found else {
                bail!("No token has the id or name `{which}`; hint: `plugd token list` shows them");
            };
            if serving(paths) {
                eprintln!(
                    "note: a `plugd serve` uses this state dir; it stops accepting the token within {} s (`--remote` revokes at once)",
                    auth::REFRESH.as_secs()
                );
            }
            record_json(&record)
        }
        Target::Remote(server) => crate::client::json(
            server,
            "DELETE",
            &format!("/api/v1/tokens/{}", crate::client::segment(which)),
            None,
        )?,
    };
    if as_json {
        println!("{}", json!({ "revoked": revoked }));
    } else {
        println!(
            "Revoked token `{}` (id {})",
            revoked["name"].as_str().unwrap_or(which),
            revoked["id"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a `plugd serve` holds the state dir's lock.
fn serving(paths: &Paths) -> bool {
    crate::paths::ServeLock::held(&paths.state_dir)
}
