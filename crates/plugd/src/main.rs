//! `plugd`: the command-line front end. Wires the runtimes, the host and the HTTP server, and
//! talks to a running server for `list`, `status` and `call`.

mod client;
mod new;
mod output;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// plugd — a plugin host: discover, resolve, confine and call plugins.
#[derive(Parser, Debug)]
#[command(name = "plugd", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON instead of human output.
    #[arg(long, global = true)]
    json: bool,

    /// URL of a running `plugd serve`, for `list`, `status` and `call`.
    #[arg(long, global = true, env = "PLUGD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Discover the plugins in a directory, start them and serve the HTTP API.
    Serve(ServeArgs),
    /// List the plugins of a running server.
    List,
    /// Show the status of one plugin (or all) of a running server, with recent logs.
    Status {
        /// Plugin name; all plugins when omitted.
        name: Option<String>,
        /// How many recent log lines to show for one plugin.
        #[arg(long, default_value_t = 20)]
        logs: usize,
    },
    /// Call a plugin action on a running server and print its result.
    Call {
        /// Plugin name.
        plugin: String,
        /// Action name.
        action: String,
        /// JSON payload; `-` reads it from stdin. Defaults to `{}`.
        payload: Option<String>,
    },
    /// Load, unload or reload a plugin on a running server.
    #[command(name = "load")]
    Load {
        /// Plugin name.
        name: String,
    },
    /// Unload a plugin (and stop its dependants) on a running server.
    Unload {
        /// Plugin name.
        name: String,
    },
    /// Reload a plugin from disk on a running server.
    Reload {
        /// Plugin name.
        name: String,
    },
    /// Create a new plugin from a template.
    New {
        /// Plugin name (lower-case letters, digits, `-`, `_`); also the directory created.
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum, default_value_t = Lang::Python)]
        lang: Lang,
        /// Directory to create the plugin in (default: `./NAME`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory of plugin packages, one sub-directory each.
    #[arg(long, env = "PLUGD_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port and prints it).
    #[arg(long, env = "PLUGD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for plugd's state (plugin data dirs).
    #[arg(long, env = "PLUGD_STATE_DIR", default_value = ".plugd")]
    state_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Extra environment for every plugin process, `KEY=VALUE` (repeatable). Plugins otherwise
    /// get a clean environment: `PATH`, `LANG`, the `PLUGD_*` variables and what their
    /// manifest's `permissions.env` lists.
    #[arg(long = "child-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    child_env: Vec<(String, String)>,
    /// Log filter (`info`, `debug`, `plugd=debug,...`); `RUST_LOG` also works.
    #[arg(long, env = "PLUGD_LOG", default_value = "info")]
    log: String,
}

/// Languages `plugd new` can scaffold.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Lang {
    /// A process plugin using the plugd Python SDK.
    Python,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not `KEY=VALUE`")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::List => client::list(&cli.server, cli.json),
        Command::Status { name, logs } => client::status(&cli.server, name.as_deref(), logs, cli.json),
        Command::Call { plugin, action, payload } => {
            client::call(&cli.server, &plugin, &action, payload.as_deref(), cli.json)
        }
        Command::Load { name } => client::lifecycle(&cli.server, &name, "load", cli.json),
        Command::Unload { name } => client::lifecycle(&cli.server, &name, "unload", cli.json),
        Command::Reload { name } => client::lifecycle(&cli.server, &name, "reload", cli.json),
        Command::New { name, lang, dir } => new::run(&name, lang, dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
