//! `plugd`: the command-line front end. Wires the runtimes, the host and the HTTP server, and
//! talks to a running server for `list`, `status` and `call`.

mod app_service;
mod client;
mod config;
mod data;
mod doctor;
mod events;
mod lock;
mod logs;
mod migrate;
mod new;
mod output;
mod paths;
mod script;
mod sdk;
mod serve;
mod sse;
mod tasks;
mod token;
mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Examples shown by `plugd --help`.
const EXAMPLES: &str = "\
Examples:
  plugd new my-plugin --dir plugins/my-plugin    Scaffold a Python plugin
  plugd serve --plugins plugins                  Serve it on 127.0.0.1:8080 (state in ./.plugd)
  plugd dev plugins/my-plugin                    Serve one plugin, reloading it as you edit
  plugd list                                     What runs, and why not
  plugd call my-plugin hello '{\"name\":\"Ada\"}'    Call an action
  plugd status my-plugin                         Details and recent logs
  plugd logs my-plugin --follow                  Its log lines, live
  plugd reload my-plugin                         Pick up changes without a restart
  plugd restart my-plugin                        Fresh instance; clears a crash loop's `failed`
  plugd params my-plugin --set threshold=0.7     Change a setting (validated, kept in a history)
  plugd kv my-plugin                             What it stored through the host
  plugd emit image.imported '{\"path\":\"a.png\"}'  Publish an event to the subscribed plugins
  plugd events --follow                          Watch events as they are published
  plugd task submit gallery embed '{}' --wait    Run a background task, with a progress bar
  plugd tasks --watch                            Live progress of every running task
  plugd script run ./report.py --arg limit=10    Run a Python script confined, with a live bar
  plugd uninstall my-plugin                      Stop it and remove its data
  plugd keygen --out signing.key                 Then `plugd sign DIR --key signing.key`
  plugd trust add signing.key.pub                Trust it (in STATE/trust, as `serve` reads it)
  plugd doctor                                   What confines each plugin";

/// plugd — a plugin host: discover, resolve, confine and call plugins.
#[derive(Parser, Debug)]
#[command(
    name = "plugd",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = EXAMPLES
)]
struct Cli {
    /// Print machine-readable JSON instead of human output.
    #[arg(long, global = true)]
    json: bool,

    /// URL of a running `plugd serve`, for the commands that talk to one (`list`, `call`,
    /// `emit`, `tasks`, ...).
    #[arg(
        long,
        global = true,
        env = "PLUGD_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,

    /// Directory for plugd's state: plugin data, staged packages, the shipped SDK and the trust
    /// store (`STATE_DIR/trust`). Relative paths are resolved once, against the current
    /// directory.
    #[arg(long, global = true, env = "PLUGD_STATE_DIR", default_value = ".plugd")]
    state_dir: PathBuf,

    /// The trust store directory, for `serve`, `verify` and `trust` alike (default:
    /// `STATE_DIR/trust`).
    #[arg(long, global = true, env = "PLUGD_TRUST_DIR")]
    trust_dir: Option<PathBuf>,

    /// API token for the commands that talk to a server (sent as `Authorization: Bearer`).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, global = true, env = "PLUGD_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Discover the plugins in a directory, start them and serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Serve one plugin under development: its package is watched (a change is verified and
    /// swapped in without dropping a call; a broken change leaves the running version serving)
    /// and its log lines, debug included, are shown in the terminal.
    #[command(after_help = "Examples:
  plugd dev plugins/my-plugin                    Serve it on 127.0.0.1:8080, reload on save
  plugd dev . --listen 127.0.0.1:0               From inside the package, on any free port")]
    Dev(DevArgs),
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
    /// Show a plugin's log lines on a running server (its output, its SDK log calls and what
    /// the host says about it), oldest first; `--follow` keeps printing new ones.
    #[command(after_help = "Examples:
  plugd logs hello                  The last 50 lines
  plugd logs hello -n 500           The last 500 (the server keeps the last 1000 per plugin)
  plugd logs hello --follow         Then new lines as they come, until Ctrl-C
  plugd logs hello -f --json | jq   One JSON object per line")]
    Logs {
        /// Plugin name.
        name: String,
        /// How many recent lines to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines as they arrive, until Ctrl-C. With `--json`, one line object
        /// per line of output.
        #[arg(short, long)]
        follow: bool,
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
    /// Load a plugin on a running server: re-scan the plugins directory (so a new package can
    /// be loaded by name), start its missing dependencies, then start it. Does nothing if it
    /// already runs.
    Load {
        /// Plugin name.
        name: String,
    },
    /// Unload a plugin on a running server: stop its running dependants first, then the plugin.
    /// Does nothing if it is not running.
    Unload {
        /// Plugin name.
        name: String,
    },
    /// Reload a plugin from disk on a running server: verify and resolve the package as it is
    /// now and start that version; if it cannot load, the running version keeps serving.
    Reload {
        /// Plugin name.
        name: String,
    },
    /// Restart a plugin on a running server: a fresh instance from the package on disk, started
    /// beside the old one, which keeps serving until it answers. Clears a `failed` state (a
    /// crash loop that spent its restart budget) with a fresh budget.
    Restart {
        /// Plugin name.
        name: String,
    },
    /// Show a plugin's params (its settings) on a running server, with what its `[params]`
    /// schema allows; or change them (`--set`, `--reset`), or show their history.
    #[command(after_help = "Examples:
  plugd params gallery                                 Current values, types and defaults
  plugd params gallery --set batch_size=16 --set threshold=0.7
  plugd params gallery --set mode=fast                 Not JSON, so the string \"fast\"
  plugd params gallery --set threshold=null            Back to its default
  plugd params gallery --reset                         Every key back to its default
  plugd params gallery --history                       Every stored change, newest first")]
    Params {
        /// Plugin name.
        name: String,
        /// Change one key, `KEY=VALUE` (repeatable; all in one change). VALUE is parsed as JSON
        /// and falls back to a string; `null` resets the key to its default. The change is
        /// validated whole: if any value breaks the schema, nothing changes.
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Reset every key to its default.
        #[arg(long, conflicts_with_all = ["set", "history"])]
        reset: bool,
        /// Show the stored changes, newest first.
        #[arg(long, conflicts_with = "set")]
        history: bool,
        /// How many changes `--history` shows.
        #[arg(long, default_value_t = 20, requires = "history")]
        limit: usize,
    },
    /// Show a plugin's kv entries on a running server (read-only), sorted by key.
    Kv {
        /// Plugin name.
        name: String,
        /// Only keys starting with this.
        prefix: Option<String>,
        /// The most entries shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish an event on a running server: it is stored, then delivered at least once, in
    /// publish order, to every plugin that subscribes to its topic.
    #[command(after_help = "Examples:
  plugd emit image.imported '{\"path\":\"photos/a.png\"}'
  echo '{\"path\":\"b.png\"}' | plugd emit image.imported -")]
    Emit {
        /// The topic, e.g. `image.imported` (topics under `plugd.` are the host's).
        topic: String,
        /// JSON payload; `-` reads it from stdin. Defaults to `{}`.
        payload: Option<String>,
    },
    /// List the stored events of a running server (oldest first), or follow them live; show and
    /// replay dead letters (events a plugin kept failing on).
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:
  plugd events --topic 'image.*'            Stored events whose topic starts with `image.`
  plugd events --after 120 --limit 50       The 50 events after event 120
  plugd events --follow                     New events as they are published (Ctrl-C stops)
  plugd events --follow --after 120         Everything after event 120, then live
  plugd events dead --plugin gallery        Events `gallery` kept failing on
  plugd events replay gallery 57            Deliver dead letter 57 to `gallery` again"
    )]
    Events {
        #[command(subcommand)]
        command: Option<EventsCommand>,
        /// Only events whose topic matches: a topic, `prefix.*` or `*`.
        #[arg(long, value_name = "PATTERN")]
        topic: Option<String>,
        /// Only events after this seq (the first column).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// The most events listed.
        #[arg(long, default_value_t = 100, conflicts_with = "follow")]
        limit: usize,
        /// Keep printing events as they are published, until Ctrl-C (with `--after`: the stored
        /// ones after that seq first). `--json` prints one event per line.
        #[arg(long)]
        follow: bool,
    },
    /// Manage and run stand-alone Python scripts on a running server: versions, templates,
    /// archives, confined runs with live CPU and memory, and their history.
    #[command(after_help = "Examples:
  plugd script add report.py --id report       Register (checked, dependencies locked)
  plugd script run report --arg limit=10       Run it confined, with a live bar
  plugd script run ./try.py                    Run a file without registering it
  plugd script edit report report.py           A new version; `versions`, `diff`, `rollback`
  plugd script runs report                     Its history
  plugd script check report.py                 Static checks only, no server needed")]
    Script {
        #[command(subcommand)]
        command: Box<script::ScriptCommand>,
    },
    /// Store and list script templates (`{{ variable }}` placeholders with typed variables);
    /// `plugd script new ID --from NAME` makes a script from one.
    Template {
        #[command(subcommand)]
        command: script::TemplateCommand,
    },
    /// Submit, show or cancel a background task on a running server.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// List the tasks of a running server, newest first; `--watch` shows live progress bars.
    #[command(after_help = "Examples:
  plugd tasks --plugin gallery --state failed   Failed tasks of `gallery`
  plugd tasks --key index                       Tasks of one key
  plugd tasks --watch                           A bar per running task until Ctrl-C")]
    Tasks {
        /// Only this plugin's tasks.
        #[arg(long)]
        plugin: Option<String>,
        /// Only tasks in this state: queued, running, succeeded, failed or cancelled.
        #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "cancelled"])]
        state: Option<String>,
        /// Only tasks with this key.
        #[arg(long)]
        key: Option<String>,
        /// The most tasks listed.
        #[arg(long, default_value_t = 50, conflicts_with = "watch")]
        limit: usize,
        /// Instead of a table, follow the queued and running tasks live: a progress bar per
        /// running task and a line per finished one, until Ctrl-C (the tasks go on). Not on a
        /// terminal, one line per change; with `--json`, one JSON update per line.
        #[arg(long, conflicts_with = "state")]
        watch: bool,
    },
    /// Uninstall a plugin on a running server: stop its running dependants and it, and remove
    /// its data dir, kv, params and staged copies (its package in the plugins directory is never
    /// touched). It stays uninstalled across restarts until `plugd load NAME`.
    Uninstall {
        /// Plugin name.
        name: String,
        /// Keep its data dir, kv and params (a later `plugd load` finds them again).
        #[arg(long)]
        keep_data: bool,
    },
    /// Generate an Ed25519 key pair for signing plugin packages.
    Keygen {
        /// Where to write the secret key (mode 0600); the public key goes to `PATH.pub`.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Convert a package written for another plugin system (xcore `plugin.yaml`/`plugin.json`,
    /// a class-based `plugin.json`/`manifest.json`, an image-tool `__init__.py`) into a native
    /// `plugin.toml` package, listing every field dropped or changed.
    ///
    /// Without `--to` the package is converted in place (its foreign manifest is kept as
    /// `FILE.orig`); with it, the package is copied to OUT first. The code is not changed.
    #[command(after_help = "Examples:
  plugd migrate plugins/notes                         Convert in place
  plugd migrate old/notes --to plugins/notes          Convert a copy
  plugd migrate old/notes --to plugins/notes --sign ~/.plugd/key   ... and sign it")]
    Migrate {
        /// The package directory.
        dir: PathBuf,
        /// Write the converted package here (a new or empty directory) instead of in place.
        #[arg(long, value_name = "OUT")]
        to: Option<PathBuf>,
        /// Sign the converted package with this secret key.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Sign a plugin package directory (writes `plugin.sig` beside the manifest).
    Sign {
        /// The package directory.
        dir: PathBuf,
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify a package's signature; exits non-zero if verification fails.
    Verify {
        /// The package directory.
        dir: PathBuf,
        /// Verify against this public key instead of the trust store.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also fail for unsigned packages.
        #[arg(long)]
        strict: bool,
    },
    /// Manage API tokens: on the state dir's store (works before the server runs; a running
    /// server sees a new token at once), or on a running server with `--remote`.
    #[command(after_help = "Examples:
  plugd token create --name admin --scope admin            The first token, before `plugd serve`
  plugd token create --name ci --scope 'call:hello' --scope read --expires 30d
  plugd token create --name grafana --scope read --remote  Through the server (needs PLUGD_TOKEN)
  plugd token list
  plugd token revoke ci

Scopes: admin, read (listings, status, logs, params, events, tasks, metrics), call:PLUGIN,
call:PLUGIN/ACTION, call:*, events:publish, tasks:submit, params:write, kv:read, scripts:run,
http:PLUGIN, http:*.")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        /// Act on the running server at `--server` (with an admin `PLUGD_TOKEN`) instead of the
        /// state dir's store.
        #[arg(long, global = true)]
        remote: bool,
    },
    /// Manage the trust store (the public keys whose signatures are trusted).
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Report which confinement layers this kernel provides and what each running plugin got.
    Doctor,
    /// Remove, on a running server, the staged package copies and compiled code that no running
    /// plugin uses (the server also does this at start and after each reload).
    Gc,
    /// Resolve a package's Python requirements (`[python] requirements` in `plugin.toml`, or
    /// `requirements.txt`) with `uv` into `DIR/requirements.lock`: exact versions and hashes,
    /// wheels only, headed by the hash of the requirements it was made from. `serve` installs
    /// from it without resolving; `serve --strict` requires it. Sign the package afterwards.
    #[command(after_help = "Examples:
  plugd lock plugins/my-plugin                         Pin from PyPI
  plugd lock plugins/my-plugin --index-url URL         Pin from another index
  plugd lock plugins/my-plugin --no-index --find-links wheels/")]
    Lock {
        /// The package directory.
        dir: PathBuf,
        #[command(flatten)]
        python: lock::PythonArgs,
    },
    /// Print a shell completion script for plugd.
    #[command(after_help = "Examples:
  plugd completions bash > /etc/bash_completion.d/plugd
  plugd completions zsh > \"${fpath[1]}/_plugd\"
  plugd completions fish > ~/.config/fish/completions/plugd.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Create a new plugin from a template.
    New {
        /// Plugin name (lower-case letters, digits, `-`, `_`); also the directory created.
        name: String,
        /// Language of the plugin: `python` is a process plugin; `js`, `c` and `python-wasm`
        /// are WebAssembly plugins, built with `examples/plugins/build.sh DIR` from a checkout.
        #[arg(long, value_enum, default_value_t = Lang::Python)]
        lang: Lang,
        /// Directory to create the plugin in (default: `./NAME`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum EventsCommand {
    /// List dead letters, newest first: events a subscriber's handler kept failing on.
    Dead {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// The most listed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Deliver a dead letter again, to that plugin alone, after the events already waiting for it.
    Replay {
        /// The plugin.
        plugin: String,
        /// The event's seq, as `plugd events dead` shows it.
        seq: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Submit a task to a plugin's queue. With `--wait`, show its progress and exit with its
    /// outcome: 0 succeeded (the result is printed), 3 failed, 4 cancelled (the error goes to
    /// stderr); 1 when plugd cannot be reached or refuses the task.
    #[command(after_help = "Examples:
  plugd task submit gallery embed '{\"path\":\"a.png\"}' --key index
  plugd task submit gallery embed '{\"path\":\"b.png\"}' --priority --wait
  plugd task submit gallery embed '{\"path\":\"a.png\"}' --key index --dedupe")]
    Submit {
        /// The plugin that runs it.
        plugin: String,
        /// The task name (a handler the plugin registered, e.g. `@plugin.task("embed")`).
        task: String,
        /// JSON payload; `-` reads it from stdin. Defaults to `{}`.
        payload: Option<String>,
        /// Group the task under a key (for `--dedupe` and the plugin's `after_last` hook).
        #[arg(long)]
        key: Option<String>,
        /// Run it before the plugin's normal tasks.
        #[arg(long)]
        priority: bool,
        /// If a task with this `--key` is already queued, return it instead of adding another.
        #[arg(long, requires = "key")]
        dedupe: bool,
        /// Runs before a retryable failure is final (1 to 20; default 3).
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Wait for the task to finish, with a progress bar; exit 0 succeeded, 3 failed,
        /// 4 cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// Show a task: state, attempts, progress, timings, payload, result or error.
    Show {
        /// The task id.
        id: u64,
    },
    /// Cancel a task: a queued one at once; a running one is asked to stop, and the answer
    /// comes once its run is over (saying whether the handler stopped).
    Cancel {
        /// The task id.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// A name for it, unique among tokens (who or what uses it).
        #[arg(long)]
        name: String,
        /// What it may do (repeatable): admin, read, call:PLUGIN[/ACTION], events:publish,
        /// tasks:submit, params:write, kv:read, scripts:run, http:PLUGIN.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. `30d`, `2w`, `12h`; without it the token never expires.
        #[arg(long, value_name = "DURATION", value_parser = token::parse_expires)]
        expires: Option<std::time::Duration>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token by id or name.
    Revoke {
        /// The token's id or name, as `plugd token list` shows them.
        #[arg(value_name = "ID|NAME")]
        which: String,
    },
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Trust a public key (`KEY.pub` from `plugd keygen`).
    Add {
        /// The public key file.
        key: PathBuf,
    },
    /// List the trusted keys.
    List,
    /// Stop trusting a key.
    Remove {
        /// The key id, as `plugd trust list` shows it.
        key_id: String,
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
    /// Watch the plugins directory: a package added is loaded, a package changed is reloaded
    /// (blue/green: verified, started beside the running version, then swapped in; a broken
    /// change leaves the running version serving), a package removed is unloaded. Debounced;
    /// editor temp files, `__pycache__` and `.git` are ignored. Off by default, so a build writing
    /// into a production checkout never reloads anything.
    #[arg(long, env = "PLUGD_WATCH")]
    watch: bool,
    /// Watch by polling every MS milliseconds instead of with inotify (file systems without
    /// inotify, e.g. some network mounts); implies `--watch`. Without it plugd falls back to
    /// polling every 500 ms by itself when inotify cannot watch (limit reached).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    watch_poll: Option<u64>,
    /// How long a package must stay unchanged before the watcher reloads it, in milliseconds
    /// (a `git checkout` of many files becomes one reload per plugin).
    #[arg(long, value_name = "MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    watch_debounce: u64,
    /// Development mode: `--watch`, and every plugin log line, debug included, in the terminal.
    #[arg(long)]
    dev: bool,
    /// Refuse unsigned packages and packages signed by keys not in the trust store, and plugins
    /// whose sandbox layers are not all available on this kernel.
    #[arg(long, env = "PLUGD_STRICT")]
    strict: bool,
    /// Run plugin processes without the kernel sandbox (development only).
    #[arg(long, conflicts_with = "strict")]
    no_sandbox: bool,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body: usize,
    /// The longest any HTTP request may take, in seconds (a safety net above each plugin's own
    /// `limits.call_timeout`); past it the client gets 504 `request_timeout`.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    request_timeout: u64,
    /// Let a plugin whose manifest has `[http] expose = PORT` be reached on that TCP port
    /// (repeatable). plugd listens on it (on `--expose-bind`) and forwards to the plugin's HTTP
    /// side, under the API's auth (scope `http:NAME`); untrusted plugins are never exposed.
    #[arg(long = "allow-expose", value_name = "PORT")]
    allow_expose: Vec<u16>,
    /// Expose plugin NAME (its manifest must have `[http] expose`) on PORT instead of the port its
    /// manifest asks for (repeatable); implies `--allow-expose PORT`.
    #[arg(long = "expose", value_name = "NAME=PORT", value_parser = parse_expose)]
    expose: Vec<(String, u16)>,
    /// The address exposed ports listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    expose_bind: std::net::IpAddr,
    /// Largest request body forwarded to a plugin's HTTP side (`/plugins/NAME/...`, mounts,
    /// exposed ports), in bytes; larger bodies get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    http_max_body: u64,
    /// How long a plugin's HTTP side may take to send its response headers, in seconds; then the
    /// client gets 504 `plugin_timeout`. Streaming bodies (SSE, downloads) and WebSockets are
    /// not cut by it.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    http_timeout: u64,
    /// Extra environment for every plugin process, `KEY=VALUE` (repeatable). Plugins otherwise
    /// get a clean environment: `PATH`, `LANG`, the `PLUGD_*` variables and what their
    /// manifest's `permissions.env` lists.
    #[arg(long = "child-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    child_env: Vec<(String, String)>,
    /// Log filter (`info`, `debug`, `plugd=debug,...`); `RUST_LOG` also works. Every HTTP
    /// request is logged with `tower_http=debug` (or `debug`).
    #[arg(long, env = "PLUGD_LOG", default_value = "info")]
    log: String,
    /// How the log on stderr is written: `text` for people (coloured on a terminal), `json` for
    /// a log collector (one object per line: timestamp, level, target, fields, and the spans it
    /// happened in, e.g. a call's `plugin` and `action`).
    #[arg(long, value_enum, env = "PLUGD_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The host's configuration file, `plugd.toml`: the most a plugin of each trust level may
    /// have (`[ceilings.untrusted]`, `[ceilings.trusted]`: memory, cpu, call_timeout, concurrency,
    /// disk, storage), application services (`[services.NAME]`: `url`, `timeout`) that
    /// trusted plugins call with `app:NAME`, and the bounds of events and tasks (`[durable]`:
    /// `retention`, `event_backlog`, `task_queue`; the flags of the same names win). Without it
    /// the built-in ceilings and defaults apply.
    #[arg(long, env = "PLUGD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// How far an acknowledged write to the store (`STATE/plugd.db`: kv, params) survives:
    /// `process` survives a killed plugd; `full` also survives power loss (an fsync per group
    /// of commits, slower).
    #[arg(long, value_enum, env = "PLUGD_DURABILITY", default_value_t = Durability::Process)]
    durability: Durability,
    /// How many kv commits each plugin can undo.
    #[arg(long, value_name = "N", default_value_t = 100)]
    undo_depth: usize,
    /// How long finished tasks, delivered events, dead letters and script runs are kept: a duration like
    /// `7d`, `12h` or `30m`; `0` keeps them forever. Default `7d` (or `retention` in the config
    /// file's `[durable]`).
    #[arg(long, value_name = "DURATION", value_parser = config::parse_retention)]
    retention: Option<std::time::Duration>,
    /// Events a subscribing plugin may have waiting before publishing to it is refused (429
    /// `overloaded`). Default 10000 (or `event_backlog` in `[durable]`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    event_backlog: Option<u64>,
    /// Queued tasks a plugin may have before a submit is refused (429 `overloaded`). Default
    /// 10000 (or `task_queue` in `[durable]`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    task_queue: Option<u64>,
    /// Script runs at once (`plugd script run`); more wait in a queue of 1000. Default: the
    /// number of cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_runs: Option<u64>,
    /// How plugins' Python dependencies are installed (`uv`, the index).
    #[command(flatten)]
    python: lock::PythonArgs,
    /// When API requests need a token (`plugd token create`): `auto` as soon as one token
    /// exists; `required` always. Default: `auto` on a loopback `--listen` address, `required`
    /// on any other.
    #[arg(long, value_enum, env = "PLUGD_AUTH")]
    auth: Option<AuthArg>,
    /// Serve `/metrics` without a token (for a Prometheus scraper on a trusted network).
    #[arg(long, conflicts_with = "no_metrics")]
    metrics_public: bool,
    /// Record no metrics: `/metrics` answers 404 `metrics_disabled` (see docs/metrics.md).
    #[arg(long, env = "PLUGD_NO_METRICS")]
    no_metrics: bool,
}

/// `--auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AuthArg {
    /// A token is needed as soon as one exists.
    Auto,
    /// A token is always needed.
    Required,
}

/// `plugd dev`: the options of `serve` that make sense for one plugin.
#[derive(clap::Args, Debug)]
struct DevArgs {
    /// The plugin's package directory (with `plugin.toml` or `plugin.json`).
    dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port and prints it).
    #[arg(long, env = "PLUGD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Run the plugin's process without the kernel sandbox.
    #[arg(long)]
    no_sandbox: bool,
    /// Refuse the package unless it is signed by a trusted key, as `serve --strict` would.
    #[arg(long, conflicts_with = "no_sandbox")]
    strict: bool,
    /// Extra environment for the plugin process, `KEY=VALUE` (repeatable).
    #[arg(long = "child-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    child_env: Vec<(String, String)>,
    /// Watch by polling every MS milliseconds instead of with inotify.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    watch_poll: Option<u64>,
    /// The host's configuration file (`plugd.toml`), as for `serve`.
    #[arg(long, env = "PLUGD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Parses `serve`'s arguments alone, for `plugd dev` to start from `serve`'s defaults.
#[derive(Parser, Debug)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `--durability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Durability {
    /// Survives a killed plugd (WAL, `synchronous=NORMAL`).
    Process,
    /// Also survives power loss (the WAL is fsynced at every group commit).
    Full,
}

/// Languages `plugd new` can scaffold.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Lang {
    /// A process plugin using the plugd Python SDK.
    Python,
    /// A wasm plugin in JavaScript, built with componentize-js.
    Js,
    /// A wasm plugin in freestanding C, built with zig cc and wasm-tools.
    C,
    /// A wasm plugin in Python, built with componentize-py.
    PythonWasm,
}

fn parse_expose(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=PORT, like `client-manager=10001`"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` in `{s}` is not a TCP port (1 to 65535)"))?;
    plugd_manifest::PluginName::new(name).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), port))
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not `KEY=VALUE`")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A client command piped into `head` should end quietly when the pipe closes, as other
    // Unix tools do, instead of panicking in `println!`. The server keeps Rust's default
    // (SIGPIPE ignored), so a client that hangs up is an error on that socket, not a kill.
    if !matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        // SAFETY: restoring the default disposition of one signal at start, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Some(token) = cli
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let _ = client::TOKEN.set(token.to_owned());
    }
    let result = paths::Paths::resolve(&cli.state_dir, cli.trust_dir.as_deref())
        .and_then(|paths| run(cli, paths));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, paths: paths::Paths) -> anyhow::Result<ExitCode> {
    let trust_dir = &paths.trust_dir;
    match cli.command {
        Command::Serve(args) => serve::run(*args, paths.clone()),
        Command::Dev(dev) => {
            let (args, paths) = serve::dev_args(dev, paths)?;
            serve::run(args, paths)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "plugd", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::List => client::list(&cli.server, cli.json),
        Command::Status { name, logs } => {
            client::status(&cli.server, name.as_deref(), logs, cli.json)
        }
        Command::Logs {
            name,
            lines,
            follow,
        } => logs::run(
            &cli.server,
            &logs::LogsArgs {
                name: &name,
                lines,
                follow,
                as_json: cli.json,
            },
        ),
        Command::Call {
            plugin,
            action,
            payload,
        } => client::call(&cli.server, &plugin, &action, payload.as_deref(), cli.json),
        Command::Load { name } => client::lifecycle(&cli.server, &name, "load", cli.json),
        Command::Unload { name } => client::lifecycle(&cli.server, &name, "unload", cli.json),
        Command::Reload { name } => client::lifecycle(&cli.server, &name, "reload", cli.json),
        Command::Restart { name } => client::lifecycle(&cli.server, &name, "restart", cli.json),
        Command::Params {
            name,
            set,
            reset,
            history,
            limit,
        } => {
            let op = if history {
                data::ParamsOp::History { limit }
            } else if reset {
                data::ParamsOp::Reset
            } else if !set.is_empty() {
                data::ParamsOp::Set(set)
            } else {
                data::ParamsOp::Show
            };
            data::params(&cli.server, &name, op, cli.json)
        }
        Command::Kv {
            name,
            prefix,
            limit,
        } => data::kv(
            &cli.server,
            &name,
            prefix.as_deref().unwrap_or(""),
            limit.max(1),
            cli.json,
        ),
        Command::Emit { topic, payload } => {
            events::emit(&cli.server, &topic, payload.as_deref(), cli.json)
        }
        Command::Events {
            command,
            topic,
            after,
            limit,
            follow,
        } => match command {
            Some(EventsCommand::Dead { plugin, limit }) => {
                events::dead(&cli.server, plugin.as_deref(), limit.max(1), cli.json)
            }
            Some(EventsCommand::Replay { plugin, seq }) => {
                events::replay(&cli.server, &plugin, seq, cli.json)
            }
            None => {
                let filter = events::Filter {
                    topic: topic.as_deref(),
                    after,
                    limit: limit.max(1),
                };
                if follow {
                    events::follow(&cli.server, &filter, cli.json)
                } else {
                    events::history(&cli.server, &filter, cli.json)
                }
            }
        },
        Command::Script { command } => script::script(&cli.server, *command, cli.json),
        Command::Template { command } => script::template(&cli.server, command, cli.json),
        Command::Task { command } => match command {
            TaskCommand::Submit {
                plugin,
                task,
                payload,
                key,
                priority,
                dedupe,
                max_attempts,
                wait,
            } => tasks::submit(
                &cli.server,
                &tasks::Submit {
                    plugin: &plugin,
                    task: &task,
                    payload: payload.as_deref(),
                    key: key.as_deref(),
                    priority,
                    dedupe,
                    max_attempts,
                },
                wait,
                cli.json,
            ),
            TaskCommand::Show { id } => tasks::show(&cli.server, id, cli.json),
            TaskCommand::Cancel { id } => tasks::cancel(&cli.server, id, cli.json),
        },
        Command::Tasks {
            plugin,
            state,
            key,
            limit,
            watch,
        } => {
            if watch {
                tasks::watch(&cli.server, plugin.as_deref(), key.as_deref(), cli.json)
            } else {
                tasks::list(
                    &cli.server,
                    &tasks::ListFilter {
                        plugin: plugin.as_deref(),
                        state: state.as_deref(),
                        key: key.as_deref(),
                        limit: limit.max(1),
                    },
                    cli.json,
                )
            }
        }
        Command::Uninstall { name, keep_data } => {
            data::uninstall(&cli.server, &name, keep_data, cli.json)
        }
        Command::New { name, lang, dir } => new::run(&name, lang, dir, cli.json),
        Command::Doctor => doctor::run(&cli.server, cli.json),
        Command::Gc => client::gc(&cli.server, cli.json),
        Command::Lock { dir, python } => lock::run(dir, &python, &paths, cli.json),
        Command::Keygen { out, force } => trust::keygen(&out, force, cli.json),
        Command::Sign { dir, key } => trust::sign(&dir, &key, cli.json),
        Command::Migrate { dir, to, sign } => {
            migrate::migrate(&dir, to.as_deref(), sign.as_deref(), cli.json)
        }
        Command::Verify { dir, key, strict } => {
            trust::verify(&dir, key.as_deref(), trust_dir, strict, cli.json)
        }
        Command::Token { command, remote } => {
            let target = if remote {
                token::Target::Remote(&cli.server)
            } else {
                token::Target::Offline(&paths)
            };
            match command {
                TokenCommand::Create {
                    name,
                    scopes,
                    expires,
                } => token::create(target, &name, &scopes, expires, cli.json),
                TokenCommand::List => token::list(target, cli.json),
                TokenCommand::Revoke { which } => token::revoke(target, &which, cli.json),
            }
        }
        Command::Trust { command } => match command {
            TrustCommand::Add { key } => trust::add(trust_dir, &key, cli.json),
            TrustCommand::List => trust::list(trust_dir, cli.json),
            TrustCommand::Remove { key_id } => trust::remove(trust_dir, &key_id, cli.json),
        },
    }
}

#[cfg(test)]
mod tests {
    /// Every subcommand's arguments are consistent (clap checks this only when the subcommand
    /// is used, e.g. a positional named like the global `--version`).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
