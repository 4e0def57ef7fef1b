//! `plugd serve`: build the host with its runtimes, start the plugins, serve HTTP until a signal,
//! then stop the plugins in reverse order.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use plugd_host::{Host, HostConfig, PluginState, WatchConfig};
use plugd_manifest::{JSON_MANIFEST, TOML_MANIFEST};
use plugd_process::{ProcessConfig, ProcessRuntime, SandboxConfig};
use plugd_server::{Readiness, ServerConfig};
use plugd_wasm::{WasmConfig, WasmRuntime};
use tokio::sync::Notify;

use crate::ServeArgs;
use crate::paths::{Paths, absolute, untraversable_ancestor};

pub(crate) fn run(args: ServeArgs, paths: Paths) -> anyhow::Result<ExitCode> {
    // `--dev` shows every plugin log line, debug included, whatever the host's own level.
    let log = if args.dev {
        format!("{},plugd::plugin=debug", args.log)
    } else {
        args.log.clone()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log))
        .context("Invalid `--log` filter")?;
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        crate::LogFormat::Text => log
            .with_ansi(crate::output::colour(&std::io::stderr()))
            .init(),
        crate::LogFormat::Json => log
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, paths))
}

async fn serve(args: ServeArgs, paths: Paths) -> anyhow::Result<ExitCode> {
    let state_dir = &paths.state_dir;
    let plugins = absolute(&args.plugins)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("Cannot create the state dir `{}`", state_dir.display()))?;
    if !plugins.is_dir() {
        anyhow::bail!(
            "The plugins directory `{}` does not exist; hint: pass `--plugins DIR` or create it with `plugd new NAME --dir {}/NAME`",
            plugins.display(),
            args.plugins.display()
        );
    }
    // One server per state dir: two would share plugin data, sockets and the store's writer.
    let Some(state_lock) = crate::paths::ServeLock::acquire(state_dir)? else {
        anyhow::bail!(
            "Another `plugd serve` (or `plugd dev`) is using the state dir `{}`; hint: stop it, or pass another `--state-dir`",
            state_dir.display()
        );
    };
    check_reachable(&args, state_dir)?;
    // Bind before anything slow, so a busy port is reported at once and the API (health,
    // readiness, plugin states) answers while the plugins start.
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let sdk = crate::sdk::install(state_dir)?;
    let file = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => crate::config::HostFile::default(),
    };
    let mut config = HostConfig::new(&plugins, state_dir);
    config.strict = args.strict;
    config.ceilings = file.ceilings.clone();
    config.trust_dir = paths.trust_dir.clone();
    config.durability = match args.durability {
        crate::Durability::Process => plugd_store::Durability::Process,
        crate::Durability::Full => plugd_store::Durability::Full,
    };
    config.undo_depth = args.undo_depth;
    config.python = args.python.config()?;
    // A flag wins over the config file, which wins over the default.
    if let Some(retention) = args.retention.or(file.durable.retention) {
        config.retention = retention;
    }
    if let Some(n) = args.event_backlog.or(file.durable.event_backlog) {
        config.event_backlog = n;
    }
    if let Some(n) = args.task_queue.or(file.durable.task_queue) {
        config.task_queue = usize::try_from(n).unwrap_or(usize::MAX);
    }
    tracing::info!(
        plugins = %plugins.display(),
        state = %state_dir.display(),
        trust = %config.trust_dir.display(),
        "starting"
    );
    let wasm = WasmRuntime::new(WasmConfig::new(state_dir.join("wasm-cache")))
        .context("Cannot start the wasm runtime")?;
    let mut builder = Host::builder(config)
        .runtime(Arc::new(ProcessRuntime::new(process_config(&args, &sdk))))
        .runtime(Arc::new(wasm));
    for service in &file.services {
        tracing::info!(service = %service.name, url = %service.url, "offering app service");
        builder = builder.service(
            service.name.clone(),
            Arc::new(crate::app_service::HttpService::new(service)),
        );
    }
    let host = builder.build();
    let scripts = scripts_manager(&args, &paths, &host, &sdk, addr.port()).await?;
    let readiness = Readiness::pending();
    let streams = plugd_server::Shutdown::new();
    let proxy = plugd_server::Proxy::new(plugd_server::ProxyConfig {
        max_body: args.http_max_body,
        timeout: Duration::from_secs(args.http_timeout),
        ..Default::default()
    });
    let plugd_server::App {
        router: app,
        handoff,
        auth,
    } = plugd_server::app(
        host.clone(),
        ServerConfig {
            max_body: args.max_body,
            request_timeout: std::time::Duration::from_secs(args.request_timeout),
            readiness: readiness.clone(),
            shutdown: streams.clone(),
            proxy: proxy.clone(),
            auth: plugd_server::AuthConfig {
                mode: auth_mode(&args),
                metrics_public: args.metrics_public,
            },
            metrics: !args.no_metrics,
            scripts: Some(scripts),
        },
    );
    let exposed = expose(&args, &host, &proxy, &auth, &streams).await?;
    // The first line on stdout is the contract with scripts and tests that start plugd on port 0;
    // the second (`plugd ready`) says the first start wave is done.
    println!("plugd listening on http://{addr}");

    // A start that fails as a whole (e.g. the plugins dir cannot be read) stops the server.
    let start_failed = Arc::new(Notify::new());
    let start_error = Arc::new(Mutex::new(None));
    let watching = Arc::new(Mutex::new(None));
    let watch = watch_config(&args);
    tokio::spawn({
        let (host, start_failed, start_error, watching) = (
            host.clone(),
            start_failed.clone(),
            start_error.clone(),
            watching.clone(),
        );
        async move {
            match host.start().await {
                Ok(()) => {
                    report(&host);
                    // Watching begins once the first wave is up: a change made meanwhile is
                    // picked up by that start itself.
                    if let Some(config) = watch {
                        match host.watch(config) {
                            Ok(w) => {
                                tracing::info!(mode = ?w.mode(), plugins = %host.plugins_dir().display(), "watching for changes");
                                *watching.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
                            }
                            Err(e) => tracing::error!("Cannot watch the plugins directory: {e}"),
                        }
                    }
                    readiness.set_ready();
                    print_ready(&host);
                }
                Err(e) => {
                    *start_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    start_failed.notify_one();
                }
            }
        }
    });
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = start_failed.notified() => {}
        }
        // Open event and task streams never end by themselves; the graceful shutdown waits for
        // every open response.
        streams.trigger();
    };
    // WebSockets to plugins that take them are handed over before hyper reads them.
    let listener = plugd_server::HandoffListener::new(listener, handoff)?;
    // No Nagle: a proxied response is written as it streams (head, then body frames), and a
    // small write held back until the client's delayed ACK costs 40 ms.
    axum::serve(
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await?;
    for server in exposed {
        server.abort();
    }
    // `shutdown` waits for a start still in progress (each plugin start has its own deadline),
    // so no plugin is left running.
    // No reload may begin while the plugins stop.
    drop(watching.lock().unwrap_or_else(|p| p.into_inner()).take());
    tracing::info!("shutting down: stopping plugins");
    host.shutdown().await;
    if let Some(e) = start_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(anyhow::Error::new(e).context("Cannot start the plugins"));
    }
    drop(state_lock);
    Ok(ExitCode::SUCCESS)
}

/// `--auth`, defaulting to `required` off loopback.
fn auth_mode(args: &ServeArgs) -> plugd_server::AuthMode {
    match args.auth {
        Some(crate::AuthArg::Required) => plugd_server::AuthMode::Required,
        Some(crate::AuthArg::Auto) => plugd_server::AuthMode::Auto,
        None if args.listen.ip().is_loopback() => plugd_server::AuthMode::Auto,
        None => plugd_server::AuthMode::Required,
    }
}

/// Binds every port the operator lets plugins expose (`--allow-expose`, `--expose NAME=PORT`)
/// and serves each with the proxy, under the API's auth; returns the servers' tasks.
async fn expose(
    args: &ServeArgs,
    host: &Host,
    proxy: &plugd_server::Proxy,
    auth: &plugd_server::Auth,
    shutdown: &plugd_server::Shutdown,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut remap: std::collections::BTreeMap<String, u16> = std::collections::BTreeMap::new();
    for (name, port) in &args.expose {
        if let Some((other, _)) = remap.iter().find(|(_, p)| *p == port) {
            anyhow::bail!(
                "`--expose {name}={port}` and `--expose {other}={port}` give one port to two plugins; hint: pick another port for one of them"
            );
        }
        if remap.insert(name.clone(), *port).is_some() {
            anyhow::bail!("`--expose {name}=...` is given twice; hint: keep one");
        }
    }
    let mut ports: Vec<u16> = args.allow_expose.clone();
    ports.extend(remap.values().copied());
    ports.sort_unstable();
    ports.dedup();
    let mut servers = Vec::new();
    for port in ports {
        let addr = std::net::SocketAddr::new(args.expose_bind, port);
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("Cannot listen on {addr} for exposed plugins; hint: another program uses the port, or pick another with `--expose NAME=PORT`")
        })?;
        tracing::info!(%addr, "exposing plugins' HTTP on this port");
        let app = plugd_server::exposed_router(
            host.clone(),
            proxy.clone(),
            auth.clone(),
            port,
            remap.clone(),
        )
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let stop = shutdown.clone();
        servers.push(tokio::spawn(async move {
            let done = async move { stop.wait().await };
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(done)
                .await
            {
                tracing::error!(%addr, "exposed port failed: {e}");
            }
        }));
    }
    Ok(servers)
}

/// The watcher's settings, if `--watch`, `--watch-poll` or `--dev` asks for one.
fn watch_config(args: &ServeArgs) -> Option<WatchConfig> {
    if !(args.watch || args.dev || args.watch_poll.is_some()) {
        return None;
    }
    let mut config = WatchConfig::default();
    config.debounce = Duration::from_millis(args.watch_debounce);
    config.poll = args.watch_poll.map(Duration::from_millis);
    Some(config)
}

/// `plugd dev DIR`: `serve --dev` of a plugins directory holding only a link to `DIR`, kept in
/// the state dir (`STATE/dev-plugins`). A state dir inside the package (`plugd dev .` with the
/// default `./.plugd`) would become part of the package, so it moves to the temp dir.
pub(crate) fn dev_args(
    dev: crate::DevArgs,
    mut paths: Paths,
) -> anyhow::Result<(ServeArgs, Paths)> {
    let dir = absolute(&dev.dir)?;
    if !plugd_manifest::foreign::is_package(&dir) {
        anyhow::bail!(
            "`{}` is not a plugin package: it has no `{TOML_MANIFEST}` or `{JSON_MANIFEST}` (nor a foreign manifest plugd reads); hint: scaffold one with `plugd new NAME --dir {}`",
            dir.display(),
            dev.dir.display()
        );
    }
    let real = std::fs::canonicalize(&dir)
        .with_context(|| format!("Cannot resolve `{}`", dir.display()))?;
    let link_name = real
        .file_name()
        .context("The package directory has no name")?
        .to_owned();
    let state_real = std::fs::canonicalize(&paths.state_dir).unwrap_or(paths.state_dir.clone());
    if state_real.starts_with(&real) || paths.state_dir.starts_with(&real) {
        let moved = std::env::temp_dir().join("plugd-dev").join(&link_name);
        eprintln!(
            "plugd dev: the state dir `{}` is inside the package; using `{}` instead (pass `--state-dir` to choose)",
            paths.state_dir.display(),
            moved.display()
        );
        if paths.trust_dir == paths.state_dir.join("trust") {
            paths.trust_dir = moved.join("trust");
        }
        paths.state_dir = moved;
    }
    let plugins = paths.state_dir.join("dev-plugins");
    std::fs::create_dir_all(&plugins)
        .with_context(|| format!("Cannot create `{}`", plugins.display()))?;
    // Only links live here (one per `plugd dev` run); anything else is not ours to delete.
    for entry in std::fs::read_dir(&plugins)? {
        let entry = entry?;
        if entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        } else {
            anyhow::bail!(
                "`{}` holds `{}`, which is not a link `plugd dev` made; hint: remove it",
                plugins.display(),
                entry.file_name().to_string_lossy()
            );
        }
    }
    std::os::unix::fs::symlink(&real, plugins.join(&link_name)).with_context(|| {
        format!(
            "Cannot link `{}` into `{}`",
            real.display(),
            plugins.display()
        )
    })?;
    let mut args = crate::ServeOnly::try_parse_from(["plugd dev"])?.args;
    args.plugins = plugins;
    args.listen = dev.listen;
    args.no_sandbox = dev.no_sandbox;
    args.strict = dev.strict;
    args.child_env = dev.child_env;
    args.watch_poll = dev.watch_poll;
    args.config = dev.config;
    args.dev = true;
    Ok((args, paths))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "Cannot listen on `{addr}`: the address is already in use (another `plugd serve`?); hint: stop the other server or pass another address, e.g. `--listen 127.0.0.1:0` for any free port"
        ),
        Err(e) => anyhow::bail!(
            "Cannot listen on `{addr}`: {e}; hint: pass another address with `--listen HOST:PORT`"
        ),
    }
}

/// Logs how the start wave went: each plugin's state, and packages that could not be read.
fn report(host: &Host) {
    for p in host.plugins() {
        match p.state {
            PluginState::Running => tracing::info!(plugin = %p.name, "running"),
            state => {
                tracing::warn!(plugin = %p.name, %state, "{}", p.reason.as_deref().unwrap_or(""))
            }
        }
    }
    for problem in host.problems() {
        tracing::warn!(path = %problem.path.display(), "{}", problem.message);
    }
}

/// Sandboxed plugins run as their own uid (when plugd runs as root) and read their staged
/// packages, the shipped SDK and their data dirs under the state dir: a parent directory they
/// cannot traverse (a home directory of mode 0700) makes every one of them fail with `Permission
/// denied`. Say so at start, naming the directory and the fix; `--strict` refuses to start.
///
/// The plugins directory is not checked: only plugd reads it, plugins run from the staged copies.
fn check_reachable(args: &ServeArgs, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let probe = plugd_sandbox::probe();
    // With a mount namespace each plugin's root has its package, SDK and data dir bound at their
    // own paths below fresh 0755 directories: a 0700 parent on the host is no obstacle.
    if args.no_sandbox || !probe.root || probe.mount_namespace {
        return Ok(());
    }
    let Some((dir, mode)) = untraversable_ancestor(state_dir) else {
        return Ok(());
    };
    let message = format!(
        "Sandboxed plugins run as their own uid and cannot enter `{dir}` (mode {mode:04o}), which holds the state dir `{state}`, so they cannot read their packages; hint: run `chmod o+x {dir}` or pass a `--state-dir` outside `{dir}` (`--no-sandbox` for development)",
        dir = dir.display(),
        state = state_dir.display(),
    );
    if args.strict {
        anyhow::bail!("{message}");
    }
    tracing::warn!("{message}");
    Ok(())
}

/// The script manager: runs get the same child environment and sandbox as process plugins.
async fn scripts_manager(
    args: &ServeArgs,
    paths: &Paths,
    host: &Host,
    sdk: &std::path::Path,
    port: u16,
) -> anyhow::Result<plugd_scripts::Scripts> {
    let store = host
        .store()
        .await
        .context("Cannot open the store for the script manager")?
        .clone();
    let process = process_config(args, sdk);
    let mut config = plugd_scripts::ScriptsConfig::new(&paths.state_dir);
    config.base_env = process.base_env;
    config.sandbox = process.sandbox;
    config.python = args.python.config()?;
    config.trust_dir = paths.trust_dir.clone();
    config.strict = args.strict;
    if let Some(n) = args.max_runs {
        config.max_runs = n as usize;
    }
    config.retention = host.config().retention;
    // No script may be granted this server's own ports (the kernel filters by port on every
    // host, loopback included).
    config.forbidden_ports = std::iter::once(port)
        .chain(args.allow_expose.iter().copied())
        .collect();
    plugd_scripts::Scripts::open(store, config)
        .await
        .map_err(|e| anyhow::anyhow!("Cannot start the script manager: {e}"))
}

fn process_config(args: &ServeArgs, sdk: &std::path::Path) -> ProcessConfig {
    let mut config = ProcessConfig::default();
    config
        .base_env
        .push(("PYTHONPATH".into(), sdk.as_os_str().to_owned()));
    if !args.no_sandbox {
        config.sandbox = Some(SandboxConfig {
            strict: args.strict,
            ..SandboxConfig::default()
        });
    }
    for (key, value) in &args.child_env {
        config
            .base_env
            .retain(|(k, _)| k.as_os_str() != key.as_str());
        config.base_env.push((key.into(), value.into()));
    }
    config
}

/// `plugd ready: 3 running, 0 not running`: every plugin of the first start wave has started or
/// failed.
fn print_ready(host: &Host) {
    let plugins = host.plugins();
    let running = plugins
        .iter()
        .filter(|p| p.state == PluginState::Running)
        .count();
    println!(
        "plugd ready: {running} running, {} not running",
        plugins.len() - running
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
