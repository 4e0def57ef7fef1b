//! `plugd serve`: build the host with its runtimes, start the plugins, serve HTTP until a signal,
//! then stop the plugins in reverse order.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use plugd_host::{Host, HostConfig, PluginState};
use plugd_process::{ProcessConfig, ProcessRuntime, SandboxConfig};
use plugd_server::ServerConfig;
use plugd_wasm::{WasmConfig, WasmRuntime};

use crate::ServeArgs;

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("Invalid `--log` filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("Cannot create the state dir `{}`", args.state_dir.display()))?;
    if !args.plugins.is_dir() {
        anyhow::bail!(
            "The plugins directory `{}` does not exist; hint: pass `--plugins DIR` or create it with `plugd new NAME --dir {}/NAME`",
            args.plugins.display(),
            args.plugins.display()
        );
    }
    let sdk = crate::sdk::install(&args.state_dir)?;
    let mut config = HostConfig::new(&args.plugins, &args.state_dir);
    config.strict = args.strict;
    if let Some(dir) = &args.trust_dir {
        config.trust_dir = dir.clone();
    }
    let wasm = WasmRuntime::new(WasmConfig::new(args.state_dir.join("wasm-cache")))
        .context("Cannot start the wasm runtime")?;
    let host = Host::builder(config)
        .runtime(Arc::new(ProcessRuntime::new(process_config(&args, &sdk))))
        .runtime(Arc::new(wasm))
        .build();
    host.start().await?;
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

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "Cannot listen on `{}`; hint: pick another `--listen` address",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    // The first line on stdout is the contract with scripts and tests that start plugd on port 0.
    println!("plugd listening on http://{addr}");
    let app = plugd_server::router(
        host.clone(),
        ServerConfig {
            max_body: args.max_body,
        },
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: stopping plugins");
    host.shutdown().await;
    Ok(ExitCode::SUCCESS)
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
