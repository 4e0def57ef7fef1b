//! `plugd script ...` and `plugd template ...`: the script manager of a running server (`check`
//! works alone: it only parses).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plugd_scripts::meta::{LimitsSpec, NetworkSpec, Overrides};
use serde_json::{Value, json};

use crate::client::{self, segment};

/// Flags that override what a script says about itself (its `[tool.plugd]` table).
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct MetaFlags {
    /// Human name.
    #[arg(long)]
    name: Option<String>,
    /// What it does.
    #[arg(long)]
    description: Option<String>,
    /// Who wrote it.
    #[arg(long)]
    author: Option<String>,
    /// A category for listings.
    #[arg(long)]
    category: Option<String>,
    /// A tag (repeat for more); replaces the script's own tags.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// A module it may import (repeat); replaces `allowed_imports`.
    #[arg(long = "allow-import", value_name = "MODULE")]
    allow_imports: Vec<String>,
    /// An absolute path it may read (repeat); replaces `allowed_paths.read`.
    #[arg(long = "read", value_name = "PATH")]
    read: Vec<PathBuf>,
    /// An absolute path it may write (repeat); replaces `allowed_paths.write`.
    #[arg(long = "write", value_name = "PATH")]
    write: Vec<PathBuf>,
    /// A `host:port` it may connect to (repeat; the kernel enforces the port); replaces
    /// `network`.
    #[arg(
        long = "network",
        value_name = "HOST:PORT",
        conflicts_with = "no_network"
    )]
    network: Vec<String>,
    /// No network at all.
    #[arg(long)]
    no_network: bool,
    /// It may not write any file.
    #[arg(long)]
    no_filesystem: bool,
    /// Memory limit, like `256MiB`.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU time limit, like `30s`.
    #[arg(long, value_name = "DURATION")]
    cpu: Option<String>,
    /// Wall-clock limit, like `5m`.
    #[arg(long, value_name = "DURATION")]
    wall: Option<String>,
    /// Output limit (stdout and stderr together), like `1MiB`.
    #[arg(long, value_name = "SIZE")]
    output: Option<String>,
    /// Most processes and threads.
    #[arg(long, value_name = "N")]
    processes: Option<u64>,
}

impl MetaFlags {
    fn overrides(&self) -> Overrides {
        let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let paths = |v: &Vec<PathBuf>| (!v.is_empty()).then(|| v.clone());
        Overrides {
            name: self.name.clone(),
            description: self.description.clone(),
            author: self.author.clone(),
            category: self.category.clone(),
            tags: some(&self.tags),
            allowed_imports: some(&self.allow_imports),
            read: paths(&self.read),
            write: paths(&self.write),
            network: if self.no_network {
                Some(NetworkSpec::Flag(false))
            } else {
                some(&self.network).map(NetworkSpec::List)
            },
            filesystem: self.no_filesystem.then_some(false),
            limits: LimitsSpec {
                memory: self.memory.clone(),
                cpu: self.cpu.clone(),
                wall: self.wall.clone(),
                output: self.output.clone(),
                processes: self.processes,
            },
        }
    }
}

/// `plugd script ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum ScriptCommand {
    /// Register a Python script: its PEP 723 block (`# /// script`) gives its metadata,
    /// dependencies, permissions and limits; flags override them. Checked statically and its
    /// dependencies locked before it is stored.
    #[command(after_help = "Examples:
  plugd script add report.py --id report --tag csv
  plugd script add fetch.py --network api.example.org:443 --memory 128MiB")]
    Add {
        /// The script file.
        file: PathBuf,
        /// Its id (default: `id` in its `[tool.plugd]` table).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        meta: MetaFlags,
    },
    /// List registered scripts.
    List {
        /// Only those with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// Id, name or description contains this.
        #[arg(long)]
        search: Option<String>,
    },
    /// Show a script: its metadata, permissions, limits and source.
    #[command(disable_version_flag = true)]
    Show {
        /// Script id.
        id: String,
        /// A version (default: the current one).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Add a version: a new file (its metadata from its block and the flags), or only changed
    /// flags (permissions, limits, tags) on the current version.
    Edit {
        /// Script id.
        id: String,
        /// The new source (omit to change only metadata).
        file: Option<PathBuf>,
        #[command(flatten)]
        meta: MetaFlags,
    },
    /// List a script's versions.
    Versions {
        /// Script id.
        id: String,
    },
    /// Show what changed between two versions.
    Diff {
        /// Script id.
        id: String,
        /// The older version.
        from: u64,
        /// The newer version.
        to: u64,
    },
    /// Make an earlier version the one runs use.
    #[command(disable_version_flag = true)]
    Rollback {
        /// Script id.
        id: String,
        /// The version.
        version: u64,
    },
    /// Remove a script and its versions (its runs stay in the history).
    Rm {
        /// Script id.
        id: String,
    },
    /// Run a script confined: its output live, a bar with progress, CPU % and memory, and the
    /// script's exit status as plugd's. TARGET is a file (has a `/` or ends in `.py`: run
    /// without registering it, still confined and recorded) or a registered id.
    #[command(
        after_help = "Examples:
  plugd script run report --arg input=/srv/in/a.csv --arg limit=10
  plugd script run ./try.py --network api.example.org:443
  plugd script run report --version 2 --json",
        disable_version_flag = true
    )]
    Run {
        /// A script id, or a file.
        target: String,
        /// A version of a registered script (default: the current one).
        #[arg(long)]
        version: Option<u64>,
        /// An argument `KEY=VALUE` (repeat); VALUE is JSON if it parses, else a string.
        #[arg(long = "arg", value_name = "KEY=VALUE")]
        args: Vec<String>,
        /// Queue it and print its id without waiting.
        #[arg(long)]
        detach: bool,
        /// For a file: flags that override its metadata.
        #[command(flatten)]
        meta: MetaFlags,
    },
    /// Check a script file statically (syntax with line:column, imports outside
    /// `allowed_imports`, literal paths outside `allowed_paths`); runs nothing, needs no server.
    Check {
        /// The script file.
        file: PathBuf,
        #[command(flatten)]
        meta: MetaFlags,
    },
    /// Recent runs, newest first (of one script, or all).
    Runs {
        /// Script id.
        id: Option<String>,
        /// The most runs listed.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// One run's record: state, timings, exit status, peak memory, CPU time, output, result.
    Status {
        /// Run id.
        run: u64,
    },
    /// Cancel a run: a queued one ends at once, a running one is killed.
    Cancel {
        /// Run id.
        run: u64,
    },
    /// Make a script from a template (`plugd template add`).
    #[command(after_help = "Example:
  plugd script new csv-report --from reader --set input_format=csv --set limit=5")]
    New {
        /// The new script's id.
        id: String,
        /// The template.
        #[arg(long)]
        from: String,
        /// A variable `KEY=VALUE` (repeat); VALUE is converted to the variable's type.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Export scripts to an archive (tar.gz), optionally signed.
    Export {
        /// Script ids (default: all).
        ids: Vec<String>,
        /// Every version (default: the current one).
        #[arg(long)]
        all_versions: bool,
        /// The archive to write.
        #[arg(short, long)]
        out: PathBuf,
        /// Sign it with this secret key (`plugd keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Import an archive made by `export`: unsafe entries refuse it, a signature must come from
    /// the server's trust store, every version is checked again.
    Import {
        /// The archive.
        file: PathBuf,
        /// Refuse it unless it is signed.
        #[arg(long)]
        require_signature: bool,
    },
}

/// `plugd template ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum TemplateCommand {
    /// Store a template: a script with `{{ variable }}` placeholders.
    #[command(after_help = "Example:
  plugd template add reader reader.py --var 'input_format:enum(csv|json):required' --var 'limit:int=10#Rows to read'")]
    Add {
        /// Its name.
        name: String,
        /// The template file.
        file: PathBuf,
        /// A variable `NAME:TYPE[:required][=DEFAULT][#DESCRIPTION]` (repeat); TYPE is string,
        /// int, float, bool or enum(a|b).
        #[arg(long = "var", value_name = "SPEC")]
        vars: Vec<String>,
        /// What it makes.
        #[arg(long, default_value = "")]
        description: String,
        /// Replace a template of the same name.
        #[arg(long)]
        replace: bool,
    },
    /// List templates.
    List,
    /// Show a template.
    Show {
        /// Its name.
        name: String,
    },
    /// Remove a template.
    Rm {
        /// Its name.
        name: String,
    },
}

fn read_file(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("Cannot read `{}`", file.display()))
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Runs one `plugd script` command.
pub(crate) fn script(
    server: &str,
    command: ScriptCommand,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        ScriptCommand::Add { file, id, meta } => {
            let body = json!({
                "id": id,
                "source": read_file(&file)?,
                "overrides": to_json(&meta.overrides()),
            });
            let added = client::json(
                server,
                "POST",
                "/api/v1/scripts",
                Some(body.to_string().as_bytes()),
            )?;
            print_added(&added, as_json, "Registered");
        }
        ScriptCommand::List {
            tag,
            category,
            search,
        } => {
            let mut query = Vec::new();
            for (k, v) in [("tag", tag), ("category", category), ("search", search)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", segment(&v)));
                }
            }
            let path = if query.is_empty() {
                "/api/v1/scripts".to_owned()
            } else {
                format!("/api/v1/scripts?{}", query.join("&"))
            };
            let list = client::get_json(server, &path)?;
            if as_json {
                crate::output::print_json(&list);
            } else {
                let scripts = list["scripts"].as_array().cloned().unwrap_or_default();
                if scripts.is_empty() {
                    println!("No scripts; add one with `plugd script add FILE --id ID`");
                }
                println!(
                    "{:<24} {:>4}  {:<12} {:<20} NAME",
                    "ID", "VER", "CATEGORY", "TAGS"
                );
                for s in scripts {
                    let m = &s["meta"];
                    println!(
                        "{:<24} {:>4}  {:<12} {:<20} {}",
                        s["id"].as_str().unwrap_or("?"),
                        format!("v{}", s["current"]),
                        m["category"].as_str().unwrap_or("-"),
                        join(&m["tags"]),
                        m["name"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        ScriptCommand::Show { id, version } => {
            let v = match version {
                Some(n) => client::get_json(
                    server,
                    &format!("/api/v1/scripts/{}/versions/{n}", segment(&id)),
                )?,
                None => client::get_json(server, &format!("/api/v1/scripts/{}", segment(&id)))?,
            };
            if as_json {
                crate::output::print_json(&v);
            } else {
                print_script(&id, &v);
            }
        }
        ScriptCommand::Edit { id, file, meta } => {
            let mut body = json!({ "overrides": to_json(&meta.overrides()) });
            if let Some(file) = file {
                body["source"] = json!(read_file(&file)?);
            } else if meta.overrides().is_empty() {
                bail!(
                    "Nothing to change; hint: give a FILE with the new source, or flags like `--tag` or `--memory`"
                );
            }
            let added = client::json(
                server,
                "PUT",
                &format!("/api/v1/scripts/{}", segment(&id)),
                Some(body.to_string().as_bytes()),
            )?;
            print_added(&added, as_json, "Updated");
        }
        ScriptCommand::Versions { id } => {
            let list = client::get_json(
                server,
                &format!("/api/v1/scripts/{}/versions", segment(&id)),
            )?;
            if as_json {
                crate::output::print_json(&list);
            } else {
                println!(
                    "{:<6} {:<9} {:<20} {:>5}  DIGEST",
                    "VER", "", "ADDED", "PKGS"
                );
                for v in list["versions"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<6} {:<9} {:<20} {:>5}  {}",
                        format!("v{}", v["version"]),
                        if v["current"].as_bool() == Some(true) {
                            "current"
                        } else {
                            ""
                        },
                        crate::output::utc(v["created_at_ms"].as_u64().unwrap_or(0)),
                        v["locked_packages"].as_u64().unwrap_or(0),
                        v["digest"]
                            .as_str()
                            .unwrap_or("?")
                            .chars()
                            .take(23)
                            .collect::<String>(),
                    );
                }
            }
        }
        ScriptCommand::Diff { id, from, to } => {
            let d = client::get_json(
                server,
                &format!("/api/v1/scripts/{}/diff?from={from}&to={to}", segment(&id)),
            )?;
            if as_json {
                crate::output::print_json(&d);
            } else {
                let text = d["diff"].as_str().unwrap_or("");
                if text.is_empty() {
                    println!("v{from} and v{to} of `{id}` are the same");
                } else {
                    print!("{text}");
                }
            }
        }
        ScriptCommand::Rollback { id, version } => {
            let body = json!({ "version": version });
            let s = client::json(
                server,
                "POST",
                &format!("/api/v1/scripts/{}/rollback", segment(&id)),
                Some(body.to_string().as_bytes()),
            )?;
            if as_json {
                crate::output::print_json(&s);
            } else {
                println!(
                    "`{id}` runs v{} now (latest v{})",
                    s["current"], s["latest"]
                );
            }
        }
        ScriptCommand::Rm { id } => {
            client::bytes(
                server,
                "DELETE",
                &format!("/api/v1/scripts/{}", segment(&id)),
                None,
                "application/json",
            )?;
            if as_json {
                crate::output::print_json(&json!({ "removed": id }));
            } else {
                println!("Removed `{id}` (its runs stay in the history)");
            }
        }
        ScriptCommand::Run {
            target,
            version,
            args,
            detach,
            meta,
        } => {
            let args = crate::data::merge_patch(&args)?;
            let is_file = target.contains('/') || target.ends_with(".py");
            let (path, body) = if is_file {
                let file = PathBuf::from(&target);
                if version.is_some() {
                    bail!("`--version` is for registered scripts; `{target}` is a file");
                }
                let name = file
                    .file_name()
                    .map_or(target.clone(), |n| n.to_string_lossy().into_owned());
                (
                    "/api/v1/runs".to_owned(),
                    json!({
                        "name": name,
                        "source": read_file(&file)?,
                        "overrides": to_json(&meta.overrides()),
                        "args": args,
                    }),
                )
            } else {
                if !meta.overrides().is_empty() {
                    bail!(
                        "Flags like `--memory` change a file run; for `{target}` use `plugd script edit {target} --memory ...` (a new version)"
                    );
                }
                (
                    format!("/api/v1/scripts/{}/runs", segment(&target)),
                    json!({ "args": args, "version": version }),
                )
            };
            let queued = client::json(server, "POST", &path, Some(body.to_string().as_bytes()))?;
            let id = queued["id"]
                .as_u64()
                .context("The server's answer has no run id")?;
            if detach {
                if as_json {
                    crate::output::print_json(&queued);
                } else {
                    println!("{id}");
                    eprintln!("Queued run {id}; follow it with `plugd script status {id}`");
                }
                return Ok(ExitCode::SUCCESS);
            }
            return follow(server, id, as_json);
        }
        ScriptCommand::Check { file, meta } => return check(&file, &meta, as_json),
        ScriptCommand::Runs { id, limit } => {
            let path = match &id {
                Some(id) => format!("/api/v1/scripts/{}/runs?limit={limit}", segment(id)),
                None => format!("/api/v1/runs?limit={limit}"),
            };
            let list = client::get_json(server, &path)?;
            if as_json {
                crate::output::print_json(&list);
            } else {
                println!(
                    "{:>6}  {:<24} {:<10} {:<20} {:>9} {:>10} {:>8}  WHO",
                    "RUN", "SCRIPT", "STATE", "STARTED", "TIME", "PEAK MEM", "CPU"
                );
                for r in list["runs"].as_array().cloned().unwrap_or_default() {
                    let label = match r["version"].as_u64() {
                        Some(v) => format!("{} v{v}", r["label"].as_str().unwrap_or("?")),
                        None => r["label"].as_str().unwrap_or("?").to_owned(),
                    };
                    println!(
                        "{:>6}  {:<24} {:<10} {:<20} {:>9} {:>10} {:>8}  {}",
                        r["id"].as_u64().unwrap_or(0),
                        label,
                        r["state"].as_str().unwrap_or("?"),
                        r["started_at_ms"]
                            .as_u64()
                            .map_or("-".into(), crate::output::utc),
                        r["duration_ms"]
                            .as_u64()
                            .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0)),
                        r["peak_rss"]
                            .as_u64()
                            .map_or("-".into(), plugd_scripts::human_bytes),
                        r["cpu_ms"]
                            .as_u64()
                            .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0)),
                        r["who"].as_str().unwrap_or("?"),
                    );
                }
            }
        }
        ScriptCommand::Status { run } => {
            let r = client::get_json(server, &format!("/api/v1/runs/{run}"))?;
            if as_json {
                crate::output::print_json(&r);
            } else {
                print_run(&r);
            }
        }
        ScriptCommand::Cancel { run } => {
            let r = client::json(server, "POST", &format!("/api/v1/runs/{run}/cancel"), None)?;
            if as_json {
                crate::output::print_json(&r);
            } else {
                println!("Cancelling run {run}");
            }
        }
        ScriptCommand::New { id, from, set } => {
            let values = crate::data::merge_patch(&set)?;
            let body = json!({ "id": id, "values": values });
            let added = client::json(
                server,
                "POST",
                &format!("/api/v1/templates/{}/instantiate", segment(&from)),
                Some(body.to_string().as_bytes()),
            )?;
            print_added(&added, as_json, &format!("Made from template `{from}`:"));
        }
        ScriptCommand::Export {
            ids,
            all_versions,
            out,
            key,
        } => {
            let key = key
                .map(|k| plugd_trust::SecretKey::load(&k).map_err(anyhow::Error::new))
                .transpose()?;
            let body = json!({ "ids": ids, "all_versions": all_versions });
            let mut bytes = client::bytes(
                server,
                "POST",
                "/api/v1/scripts/export",
                Some(body.to_string().as_bytes()),
                "application/json",
            )?;
            if let Some(key) = &key {
                bytes = plugd_scripts::archive::sign(&bytes, key).map_err(anyhow::Error::msg)?;
            }
            std::fs::write(&out, &bytes)
                .with_context(|| format!("Cannot write `{}`", out.display()))?;
            let index = plugd_scripts::archive::read(&bytes).map_err(anyhow::Error::msg)?;
            let versions: usize = index.index.scripts.iter().map(|s| s.versions.len()).sum();
            if as_json {
                crate::output::print_json(&json!({
                    "path": out,
                    "scripts": index.index.scripts.len(),
                    "versions": versions,
                    "signed_by": key.map(|k| k.key_id().to_string()),
                }));
            } else {
                println!(
                    "Wrote `{}`: {} scripts, {versions} versions{}",
                    out.display(),
                    index.index.scripts.len(),
                    key.map_or(String::new(), |k| format!(
                        ", signed with key `{}`",
                        k.key_id()
                    ))
                );
            }
        }
        ScriptCommand::Import {
            file,
            require_signature,
        } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("Cannot read `{}`", file.display()))?;
            let path = format!("/api/v1/scripts/import?require_signature={require_signature}");
            let answer = client::bytes(server, "POST", &path, Some(&bytes), "application/gzip")?;
            let report: Value =
                serde_json::from_slice(&answer).context("The server's answer is not JSON")?;
            if as_json {
                crate::output::print_json(&report);
            } else {
                match report["signed_by"].as_str() {
                    Some(key) => println!("Signed by trusted key `{key}`"),
                    None => println!("Unsigned archive"),
                }
                for s in report["scripts"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "  {}: {} new versions, runs v{}",
                        s["id"].as_str().unwrap_or("?"),
                        s["versions_added"],
                        s["current"]
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one `plugd template` command.
pub(crate) fn template(
    server: &str,
    command: TemplateCommand,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        TemplateCommand::Add {
            name,
            file,
            vars,
            description,
            replace,
        } => {
            let body = json!({
                "name": name,
                "description": description,
                "source": read_file(&file)?,
                "var_specs": vars,
                "replace": replace,
            });
            let t = client::json(
                server,
                "POST",
                "/api/v1/templates",
                Some(body.to_string().as_bytes()),
            )?;
            if as_json {
                crate::output::print_json(&t);
            } else {
                println!(
                    "Stored template `{name}` with {} variables",
                    t["vars"].as_array().map_or(0, Vec::len)
                );
            }
        }
        TemplateCommand::List => {
            let list = client::get_json(server, "/api/v1/templates")?;
            if as_json {
                crate::output::print_json(&list);
            } else {
                println!("{:<24} {:<40} DESCRIPTION", "NAME", "VARIABLES");
                for t in list["templates"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<24} {:<40} {}",
                        t["name"].as_str().unwrap_or("?"),
                        var_list(&t["vars"]),
                        t["description"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        TemplateCommand::Show { name } => {
            let t = client::get_json(server, &format!("/api/v1/templates/{}", segment(&name)))?;
            if as_json {
                crate::output::print_json(&t);
            } else {
                println!(
                    "Template `{name}`: {}",
                    t["description"].as_str().unwrap_or("")
                );
                for v in t["vars"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "  {:<16} {:<20}{}{}{}",
                        v["name"].as_str().unwrap_or("?"),
                        var_type(&v),
                        if v["required"].as_bool() == Some(true) {
                            " required"
                        } else {
                            ""
                        },
                        if v["default"].is_null() {
                            String::new()
                        } else {
                            format!(" default {}", v["default"])
                        },
                        v["description"]
                            .as_str()
                            .map_or(String::new(), |d| format!("  {d}")),
                    );
                }
                println!("\n{}", t["source"].as_str().unwrap_or(""));
            }
        }
        TemplateCommand::Rm { name } => {
            client::bytes(
                server,
                "DELETE",
                &format!("/api/v1/templates/{}", segment(&name)),
                None,
                "application/json",
            )?;
            if !as_json {
                println!("Removed template `{name}`");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn var_type(v: &Value) -> String {
    match v["type"].as_str() {
        Some("enum") => format!("enum({})", join_with(&v["choices"], "|")),
        Some(t) => t.to_owned(),
        None => "?".into(),
    }
}

fn var_list(vars: &Value) -> String {
    vars.as_array()
        .map(|a| {
            a.iter()
                .map(|v| format!("{}:{}", v["name"].as_str().unwrap_or("?"), var_type(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn join(list: &Value) -> String {
    join_with(list, ",")
}

fn join_with(list: &Value, sep: &str) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_default()
}

fn print_added(added: &Value, as_json: bool, verb: &str) {
    if as_json {
        crate::output::print_json(added);
        return;
    }
    let id = added["script"]["id"].as_str().unwrap_or("?");
    let version = &added["version"];
    if added["created"].as_bool() == Some(false) {
        println!("{verb} `{id}`: the same content as v{version}, which is current now");
    } else {
        println!("{verb} `{id}` v{version}");
    }
    for w in added["warnings"].as_array().cloned().unwrap_or_default() {
        eprintln!(
            "  warning {}:{}: {}",
            w["line"],
            w["column"],
            w["message"].as_str().unwrap_or("")
        );
    }
}

fn print_script(id: &str, v: &Value) {
    let m = &v["meta"];
    let p = &m["permissions"];
    let l = &m["limits"];
    println!(
        "{} v{} ({})",
        m["name"].as_str().unwrap_or(id),
        v["version"].as_u64().or(v["current"].as_u64()).unwrap_or(0),
        v["digest"].as_str().unwrap_or("?")
    );
    for (k, key) in [
        ("Description", "description"),
        ("Author", "author"),
        ("Category", "category"),
    ] {
        if let Some(s) = m[key].as_str() {
            println!("  {k:<13} {s}");
        }
    }
    println!("  {:<13} {}", "Tags", join(&m["tags"]));
    println!("  {:<13} {}", "Dependencies", join(&m["dependencies"]));
    println!(
        "  {:<13} {}",
        "Imports",
        if p["allowed_imports"].is_null() {
            "any".to_owned()
        } else {
            join(&p["allowed_imports"])
        }
    );
    println!(
        "  {:<13} read: {}; write: {}",
        "Paths",
        join(&p["read"]),
        join(&p["write"])
    );
    println!(
        "  {:<13} {}",
        "Network",
        if join(&p["network"]).is_empty() {
            "none".to_owned()
        } else {
            join(&p["network"])
        }
    );
    println!(
        "  {:<13} {}",
        "Files",
        if p["filesystem"].as_bool() == Some(false) {
            "no writes"
        } else {
            "work dir, /tmp and write paths"
        }
    );
    println!(
        "  {:<13} memory {}, CPU {}, wall {}, output {}, {} processes",
        "Limits",
        plugd_scripts::human_bytes(l["memory"].as_u64().unwrap_or(0)),
        plugd_scripts::human_ms(l["cpu_ms"].as_u64().unwrap_or(0)),
        plugd_scripts::human_ms(l["wall_ms"].as_u64().unwrap_or(0)),
        plugd_scripts::human_bytes(l["output"].as_u64().unwrap_or(0)),
        l["processes"]
    );
    if let Some(source) = v["source"].as_str() {
        println!("\n{source}");
    }
}

fn print_run(r: &Value) {
    println!(
        "Run {} of {}{}: {}{}",
        r["id"],
        r["label"].as_str().unwrap_or("?"),
        r["version"]
            .as_u64()
            .map_or(String::new(), |v| format!(" v{v}")),
        r["state"].as_str().unwrap_or("?"),
        r["reason"]
            .as_str()
            .map_or(String::new(), |s| format!(" ({s})")),
    );
    println!("  {:<10} {}", "Who", r["who"].as_str().unwrap_or("?"));
    println!("  {:<10} {}", "Args", r["args"]);
    if let Some(t) = r["started_at_ms"].as_u64() {
        println!("  {:<10} {}", "Started", crate::output::utc(t));
    }
    if let Some(ms) = r["duration_ms"].as_u64() {
        println!("  {:<10} {:.3} s", "Took", ms as f64 / 1000.0);
    }
    if let Some(code) = r["exit_code"].as_i64() {
        println!("  {:<10} {code}", "Exit");
    }
    if let Some(m) = r["peak_rss"].as_u64() {
        println!("  {:<10} {}", "Peak mem", plugd_scripts::human_bytes(m));
    }
    if let Some(c) = r["cpu_ms"].as_u64() {
        println!("  {:<10} {:.3} s", "CPU", c as f64 / 1000.0);
    }
    if !r["result"].is_null() {
        println!("  {:<10} {}", "Result", r["result"]);
    }
    if let Some(live) = r.get("live").filter(|l| !l.is_null()) {
        println!("  {:<10} {}", "Live", live);
    }
    let output = r["output"].as_str().unwrap_or("");
    if !output.is_empty() {
        println!("  Output ({} bytes):", r["output_bytes"]);
        for line in output.lines() {
            println!("    {line}");
        }
    }
}

/// Follows a run to its end: output as it comes, a bar on stderr (on a terminal) with its
/// progress, CPU % and memory; exits with the script's status.
fn follow(server: &str, id: u64, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut stream = client::stream(server, &format!("/api/v1/runs/{id}/stream"), None)?;
    let bar = (std::io::stderr().is_terminal() && !as_json).then(|| {
        let bar = ProgressBar::new(1000).with_style(
            ProgressStyle::with_template(
                "{spinner} run {prefix} [{bar:30}] {percent:>3}% {elapsed:>4} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(id.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let (mut cpu, mut mem, mut what) = (String::new(), String::new(), String::new());
    let mut record = Value::Null;
    loop {
        let event = match stream.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => bail!("The run's stream broke: {e}; hint: `plugd script status {id}`"),
        };
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            // What the run wrote before this stream opened (its recent output), then the rest.
            "output" | "snapshot" if !as_json => {
                let text = match event.event.as_str() {
                    "snapshot" => data["output"].as_str().unwrap_or(""),
                    _ => data["text"].as_str().unwrap_or(""),
                };
                let write = |out: &mut dyn Write| {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                };
                let print = || {
                    if data["stream"] == "stderr" {
                        write(&mut std::io::stderr());
                    } else {
                        write(&mut std::io::stdout());
                    }
                };
                match &bar {
                    Some(bar) => bar.suspend(print),
                    None => print(),
                }
            }
            "progress" => {
                if let Some(bar) = &bar {
                    bar.set_position((data["fraction"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
                }
                what = data["message"].as_str().unwrap_or("").to_owned();
            }
            "sample" => {
                cpu = format!("CPU {:>5.1}%", data["cpu_percent"].as_f64().unwrap_or(0.0));
                mem = format!(
                    "RSS {}",
                    plugd_scripts::human_bytes(data["memory"].as_u64().unwrap_or(0))
                );
            }
            "ended" => {
                record = data;
                break;
            }
            _ => {}
        }
        if let Some(bar) = &bar {
            bar.set_message(format!("{cpu} {mem} {what}"));
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if record.is_null() {
        record = client::get_json(server, &format!("/api/v1/runs/{id}"))?;
    }
    let state = record["state"].as_str().unwrap_or("?").to_owned();
    if as_json {
        crate::output::print_json(&record);
    } else {
        let mut summary = format!(
            "run {id}: {state} in {:.2} s",
            record["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
        if let Some(m) = record["peak_rss"].as_u64() {
            summary.push_str(&format!(", peak {}", plugd_scripts::human_bytes(m)));
        }
        if let Some(c) = record["cpu_ms"].as_u64() {
            summary.push_str(&format!(", CPU {:.2} s", c as f64 / 1000.0));
        }
        if let Some(reason) = record["reason"].as_str() {
            summary.push_str(&format!(" ({reason})"));
        }
        eprintln!("{summary}");
        if !record["result"].is_null() {
            println!("{}", record["result"]);
        }
    }
    Ok(match (state.as_str(), record["exit_code"].as_i64()) {
        ("succeeded", _) => ExitCode::SUCCESS,
        (_, Some(code)) if (1..=255).contains(&code) => ExitCode::from(code as u8),
        _ => ExitCode::FAILURE,
    })
}

/// `plugd script check FILE`: local, no server.
fn check(file: &Path, meta: &MetaFlags, as_json: bool) -> anyhow::Result<ExitCode> {
    let source = read_file(file)?;
    let described = plugd_scripts::meta::describe(&source).map_err(anyhow::Error::msg)?;
    let m = described
        .meta
        .apply(&meta.overrides())
        .map_err(anyhow::Error::msg)?;
    let reachable = plugd_process::SandboxConfig::default().read_paths;
    let problems = plugd_scripts::check::check(&source, &m, &reachable);
    let errors = problems
        .iter()
        .filter(|p| p.severity == plugd_scripts::check::Severity::Error)
        .count();
    if as_json {
        crate::output::print_json(&json!({ "ok": errors == 0, "meta": m, "problems": problems }));
    } else {
        for p in &problems {
            let kind = if p.severity == plugd_scripts::check::Severity::Error {
                "error"
            } else {
                "warning"
            };
            println!(
                "{}:{}:{}: {kind}: {}",
                file.display(),
                p.line,
                p.column,
                p.message
            );
        }
        if problems.is_empty() {
            println!("{}: ok", file.display());
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
