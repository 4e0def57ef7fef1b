//! One supervised process plugin: handshake, calls, health pings, crash restarts with backoff.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use plugd_manifest::{ActionName, PluginName};
use plugd_protocol::{
    CallParams, EventParams, FrameReader, Hello, Initialize, Message, PROTOCOL_VERSION, RpcError,
    codes, encode_error, encode_result,
};
use plugd_runtime::{
    ActionInfo, HostCalls, Instance, InstanceSpec, InstanceStatus, Invocation, LogLevel, LogSource,
    Outcome, RuntimeError,
};
use plugd_sandbox::Prepared;
use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::{Semaphore, watch};

use crate::ProcessConfig;
use crate::conn::{Connection, RequestError, read_loop};
use crate::logs::{Tail, capture};
use crate::spawn::{Spawned, describe_exit, kill_group, spawn};

fn layer_text(status: &plugd_sandbox::LayerStatus) -> String {
    if status.detail.is_empty() {
        status.state.to_string()
    } else {
        format!("{}: {}", status.state, status.detail)
    }
}

/// A running process plugin; restarts its child after crashes.
pub(crate) struct ProcessInstance {
    shared: Arc<Shared>,
}

struct Shared {
    plugin: PluginName,
    spec: InstanceSpec,
    host: Arc<dyn HostCalls>,
    config: Arc<ProcessConfig>,
    current: RwLock<Option<Arc<Connection>>>,
    state: Mutex<State>,
    late_replies: Arc<AtomicU64>,
    concurrency: Semaphore,
    /// `Some(grace)` once a stop was requested.
    stop: watch::Sender<Option<Duration>>,
    /// `true` once the supervisor has finished.
    stopped: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    ready: bool,
    dead: bool,
    restarts: u32,
    last_error: Option<String>,
    pid: Option<u32>,
    actions: Vec<ActionInfo>,
    known_actions: Arc<HashSet<String>>,
    details: Vec<(String, String)>,
}

/// A child that completed the handshake.
struct Running {
    child: Child,
    conn: Arc<Connection>,
    tail: Arc<Tail>,
    /// Dropped after the child is reaped: kills leftovers and removes its cgroup.
    sandbox: Option<Prepared>,
}

impl Running {
    /// Why the child died, refined by what its cgroup saw (an OOM kill looks like a SIGKILL).
    fn explain(&self, how: String, limits: &plugd_manifest::Limits) -> String {
        let Some(sandbox) = &self.sandbox else {
            return how;
        };
        if sandbox.oom_killed() {
            return format!(
                "{how}: it ran out of memory (limit {} MiB); hint: raise `limits.memory`",
                limits.memory >> 20
            );
        }
        if how.contains("SIGXCPU")
            || (how.contains("SIGKILL") && sandbox.cpu_usage().is_some_and(|u| u >= limits.cpu))
        {
            return format!(
                "{how}: it used up its CPU budget ({:?}); hint: raise `limits.cpu`",
                limits.cpu
            );
        }
        how
    }
}

impl ProcessInstance {
    pub(crate) async fn start(
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
        config: Arc<ProcessConfig>,
    ) -> Result<Arc<Self>, RuntimeError> {
        let plugin = spec.manifest.name.clone();
        let concurrency = spec.manifest.limits.concurrency.max(1) as usize;
        let shared = Arc::new(Shared {
            plugin: plugin.clone(),
            spec,
            host,
            config,
            current: RwLock::new(None),
            state: Mutex::new(State::default()),
            late_replies: Arc::new(AtomicU64::new(0)),
            concurrency: Semaphore::new(concurrency),
            stop: watch::channel(None).0,
            stopped: watch::channel(false).0,
        });
        let running = shared
            .launch()
            .await
            .map_err(|reason| RuntimeError::StartFailed { plugin, reason })?;
        shared.install(&running, false);
        tokio::spawn(supervise(shared.clone(), running));
        Ok(Arc::new(ProcessInstance { shared }))
    }
}

impl Shared {
    /// Spawns a child and completes the handshake.
    async fn launch(self: &Arc<Self>) -> Result<Running, String> {
        let Spawned {
            mut child,
            socket,
            sandbox,
        } = spawn(&self.spec, &self.config)?;
        let layers: Vec<(String, String)> = sandbox
            .iter()
            .flat_map(|s| s.layers())
            .map(|l| (format!("sandbox.{}", l.layer), layer_text(l)))
            .collect();
        let pid = child.id().unwrap_or(0);
        let tail = Arc::new(Tail::default());
        if let Some(stdout) = child.stdout.take() {
            let (host, limits) = (self.host.clone(), self.config.logs.clone());
            tokio::spawn(capture(stdout, LogSource::Stdout, host, limits, None));
        }
        if let Some(stderr) = child.stderr.take() {
            let (host, limits) = (self.host.clone(), self.config.logs.clone());
            tokio::spawn(capture(
                stderr,
                LogSource::Stderr,
                host,
                limits,
                Some(tail.clone()),
            ));
        }
        let (read_half, mut write_half) = socket.into_split();
        let mut reader = FrameReader::new(BufReader::new(read_half), self.config.max_frame);

        let timeout = self.config.start_timeout;
        let hello = tokio::select! {
            frame = tokio::time::timeout(timeout, reader.next_frame()) => match frame {
                Err(_) => Err(format!("it did not say `hello` within {timeout:?}; hint: is it built with a plugd SDK, and does it use fd 3?")),
                Ok(Err(e)) => Err(format!("its handshake failed: {e}")),
                Ok(Ok(None)) => {
                    // Usually the child is exiting: report how, with its last words.
                    match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
                        Ok(Ok(status)) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err(with_tail(format!("it {} before saying `hello`", describe_exit(status)), &tail))
                        }
                        _ => Err("it closed its protocol socket before saying `hello`".to_owned()),
                    }
                }
                Ok(Ok(Some(frame))) => parse_hello(frame),
            },
            status = child.wait() => {
                // Give the stderr reader a moment to collect the last words.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let how = status.map(describe_exit).unwrap_or_else(|e| format!("could not be waited for: {e}"));
                Err(with_tail(format!("it {how} before saying `hello`"), &tail))
            }
        };
        let (hello_id, hello) = match hello {
            Ok(h) => h,
            Err(reason) => {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
                return Err(reason);
            }
        };

        let mut frame = Vec::with_capacity(512);
        if hello.protocol != PROTOCOL_VERSION {
            let message = format!(
                "Protocol {} is not supported; this host speaks {PROTOCOL_VERSION}",
                hello.protocol
            );
            let data = Some(serde_json::json!({ "supported": [PROTOCOL_VERSION] }));
            encode_error(
                &mut frame,
                hello_id,
                &RpcError {
                    code: codes::PROTOCOL_REFUSED,
                    message,
                    data,
                },
            );
            let _ = write_half.write_all(&frame).await;
            kill_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
            return Err(format!(
                "it speaks protocol {} but this host speaks {PROTOCOL_VERSION}; hint: use an SDK that speaks protocol {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }

        let manifest = &self.spec.manifest;
        let data_dir = self.spec.data_dir.to_string_lossy();
        let init = Initialize {
            protocol: PROTOCOL_VERSION,
            plugin: manifest.name.as_str(),
            version: manifest.version.to_string(),
            params: &self.spec.params,
            data_dir: &data_dir,
            services: manifest
                .permissions
                .services
                .iter()
                .map(|s| s.as_str())
                .collect(),
        };
        encode_result(&mut frame, hello_id, &init);
        if let Err(e) = write_half.write_all(&frame).await {
            kill_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
            return Err(format!(
                "it closed its protocol socket during the handshake: {e}"
            ));
        }

        let actions = match hello.actions {
            Some(announced) => {
                let mut actions = Vec::with_capacity(announced.len());
                for a in announced {
                    match ActionName::new(a.name.clone()) {
                        Ok(name) => actions.push(ActionInfo {
                            name,
                            description: a.description,
                        }),
                        Err(e) => self.host.log(
                            LogSource::Runtime,
                            LogLevel::Warn,
                            &format!("Ignored announced action `{}`: {e}", a.name),
                        ),
                    }
                }
                actions
            }
            None => manifest
                .actions
                .iter()
                .map(|a| ActionInfo {
                    name: a.name.clone(),
                    description: a.description.clone(),
                })
                .collect(),
        };
        {
            let mut state = self.state.lock();
            state.known_actions =
                Arc::new(actions.iter().map(|a| a.name.as_str().to_owned()).collect());
            state.actions = actions;
        }

        let conn = Connection::new(write_half, self.late_replies.clone());
        tokio::spawn(read_loop(
            conn.clone(),
            reader,
            self.host.clone(),
            self.plugin.clone(),
        ));
        self.state.lock().details = layers;
        Ok(Running {
            child,
            conn,
            tail,
            sandbox,
        })
    }

    /// Publishes a child that completed its handshake. `restarted` counts it as a restart, in
    /// the same critical section, so no reader sees the new pid with the old restart count.
    fn install(&self, running: &Running, restarted: bool) {
        *self.current.write() = Some(running.conn.clone());
        let mut state = self.state.lock();
        state.ready = true;
        state.pid = running.child.id();
        if restarted {
            state.restarts += 1;
        }
    }

    fn uninstall(&self, reason: &str) {
        *self.current.write() = None;
        let mut state = self.state.lock();
        state.ready = false;
        state.pid = None;
        state.last_error = Some(reason.to_owned());
    }

    fn not_running(&self) -> RuntimeError {
        let state = self.state.lock();
        let reason = if state.dead {
            format!(
                "it crashed too often and was given up ({})",
                state.last_error.as_deref().unwrap_or("no reason recorded")
            )
        } else if *self.stopped.borrow() || self.stop.borrow().is_some() {
            "it was stopped".to_owned()
        } else {
            format!(
                "it is restarting after a crash ({})",
                state.last_error.as_deref().unwrap_or("no reason recorded")
            )
        };
        RuntimeError::NotRunning {
            plugin: self.plugin.clone(),
            reason,
        }
    }
}

fn parse_hello(frame: &[u8]) -> Result<(u64, Hello), String> {
    match Message::decode(frame) {
        Ok(Message::Request { id, method, params }) if method == "hello" => {
            serde_json::from_str::<Hello>(params.get())
                .map(|h| (id, h))
                .map_err(|e| format!("its `hello` is malformed: {e}"))
        }
        Ok(Message::Request { method, .. } | Message::Notification { method, .. }) => {
            Err(format!("it sent `{method}` before `hello`"))
        }
        Ok(Message::Response { .. }) => Err("it sent a response before `hello`".to_owned()),
        Err(e) => Err(format!("it sent garbage instead of `hello`: {e}")),
    }
}

fn with_tail(reason: String, tail: &Tail) -> String {
    match tail.summary() {
        Some(lines) => format!("{reason}; last stderr: {lines}"),
        None => reason,
    }
}

/// Watches one child after another: waits for a crash, a failed ping or a stop; restarts with
/// backoff; gives up after too many crashes in the window.
async fn supervise(shared: Arc<Shared>, mut running: Running) {
    let policy = shared.config.restart.clone();
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut backoff = policy.initial_backoff;
    let mut stop_rx = shared.stop.subscribe();
    loop {
        let outcome = watch_child(&shared, &mut running, &mut stop_rx).await;
        let reason = match outcome {
            Watch::Stop(grace) => {
                shutdown(&shared, running, grace).await;
                break;
            }
            Watch::Crashed(reason) => reason,
        };
        let reason = with_tail(reason, &running.tail);
        running.conn.close(format!("it crashed: {reason}"));
        shared.uninstall(&reason);
        shared.host.log(
            LogSource::Runtime,
            LogLevel::Error,
            &format!("Plugin crashed: {reason}"),
        );

        // Restart loop: back off, relaunch, give up after too many crashes.
        loop {
            let now = Instant::now();
            crashes.push_back(now);
            while crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.window)
            {
                crashes.pop_front();
            }
            if crashes.len() as u32 > policy.max_crashes {
                let mut state = shared.state.lock();
                state.dead = true;
                let last = state.last_error.clone().unwrap_or_default();
                state.last_error = Some(format!(
                    "crashed {} times within {:?}, gave up; last crash: {last}",
                    crashes.len(),
                    policy.window
                ));
                drop(state);
                shared.stopped.send_replace(true);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_requested(&mut stop_rx) => {
                    shared.stopped.send_replace(true);
                    return;
                }
            }
            backoff = (backoff * 2).min(policy.max_backoff);
            match shared.launch().await {
                Ok(next) => {
                    running = next;
                    shared.install(&running, true);
                    shared
                        .host
                        .log(LogSource::Runtime, LogLevel::Info, "Plugin restarted");
                    break;
                }
                Err(reason) => {
                    shared.state.lock().last_error = Some(format!("restart failed: {reason}"));
                    shared.host.log(
                        LogSource::Runtime,
                        LogLevel::Error,
                        &format!("Plugin restart failed: {reason}"),
                    );
                }
            }
        }
        // A child that stays up for a whole window earns back the short backoff.
        if crashes.back().is_some_and(|t| t.elapsed() > policy.window) {
            backoff = policy.initial_backoff;
        }
    }
    shared.stopped.send_replace(true);
}

/// Resolves with the grace period once a stop is requested.
async fn stop_requested(stop_rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop_rx.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or(Duration::ZERO),
        Err(_) => Duration::ZERO,
    }
}

use crate::conn::STREAM_ENDED;

enum Watch {
    Stop(Duration),
    Crashed(String),
}

async fn watch_child(
    shared: &Shared,
    running: &mut Running,
    stop_rx: &mut watch::Receiver<Option<Duration>>,
) -> Watch {
    let ping_every = shared.config.ping_interval;
    let ping_timeout = shared.config.ping_timeout;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            grace = stop_requested(stop_rx) => return Watch::Stop(grace),
            status = running.child.wait() => {
                // Let the stderr reader collect the last lines before we read the tail.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Watch::Crashed(match status {
                    Ok(s) => running.explain(format!("it {}", describe_exit(s)), &shared.spec.manifest.limits),
                    Err(e) => format!("it could not be waited for: {e}"),
                });
            }
            reason = running.conn.closed() => {
                // A closed or broken stream usually means the child is exiting: prefer its exit
                // status as the reason. A protocol violation kills it at once.
                if reason.starts_with(STREAM_ENDED)
                    && let Ok(Ok(status)) =
                        tokio::time::timeout(Duration::from_secs(2), running.child.wait()).await
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Watch::Crashed(running.explain(format!("it {}", describe_exit(status)), &shared.spec.manifest.limits));
                }
                kill_group(running.child.id().unwrap_or(0), libc::SIGKILL);
                let _ = running.child.wait().await;
                return Watch::Crashed(reason);
            }
            _ = ticker.tick() => {
                match running.conn.request("ping", &serde_json::json!({}), ping_timeout).await {
                    Ok(_) => {}
                    Err(RequestError::Timeout) => {
                        let reason = format!("it did not answer the health ping within {ping_timeout:?} and was killed");
                        // Name the reason before the kill, so callers in flight see it rather
                        // than the broken stream the kill causes.
                        running.conn.close(reason.clone());
                        kill_group(running.child.id().unwrap_or(0), libc::SIGKILL);
                        let _ = running.child.wait().await;
                        return Watch::Crashed(reason);
                    }
                    Err(RequestError::Closed(reason)) => {
                        kill_group(running.child.id().unwrap_or(0), libc::SIGKILL);
                        let _ = running.child.wait().await;
                        return Watch::Crashed(reason);
                    }
                }
            }
        }
    }
}

/// Asks the child to shut down (protocol `shutdown`), waits at most `grace`, then sends SIGTERM
/// to its process group and, a moment later, SIGKILL; the sandbox's cgroup catches anything that
/// left the group when `running` is dropped.
async fn shutdown(shared: &Shared, mut running: Running, grace: Duration) {
    /// How long SIGTERM gets before SIGKILL.
    const TERM_GRACE: Duration = Duration::from_millis(500);
    *shared.current.write() = None;
    shared.state.lock().ready = false;
    let pid = running.child.id().unwrap_or(0);
    let _ = running
        .conn
        .notify("shutdown", &serde_json::json!({}))
        .await;
    if tokio::time::timeout(grace, running.child.wait())
        .await
        .is_err()
    {
        kill_group(pid, libc::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, running.child.wait())
            .await
            .is_err()
        {
            kill_group(pid, libc::SIGKILL);
            let _ = running.child.wait().await;
        }
    }
    // Reap anything the child left behind in its group.
    kill_group(pid, libc::SIGKILL);
    if let Some(sandbox) = &running.sandbox {
        sandbox.kill_all();
    }
    running.conn.close("it was stopped".to_owned());
    shared.state.lock().pid = None;
}

#[async_trait]
impl Instance for ProcessInstance {
    async fn call(&self, invocation: Invocation) -> Result<Outcome, RuntimeError> {
        let shared = &*self.shared;
        let action = invocation.action.as_str();
        let conn = shared
            .current
            .read()
            .clone()
            .ok_or_else(|| shared.not_running())?;
        let known = shared.state.lock().known_actions.clone();
        if !known.is_empty() && !known.contains(action) {
            return Err(RuntimeError::UnknownAction {
                plugin: shared.plugin.clone(),
                action: action.to_owned(),
            });
        }
        let timeout = invocation
            .timeout
            .unwrap_or(shared.spec.manifest.limits.call_timeout);
        let started = Instant::now();
        let timed_out = || RuntimeError::Timeout {
            plugin: shared.plugin.clone(),
            action: action.to_owned(),
            timeout,
        };
        // Waiting for a concurrency slot counts against the call's deadline.
        let _permit = match shared.concurrency.try_acquire() {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(timeout, shared.concurrency.acquire())
                .await
                .map_err(|_| timed_out())?
                .map_err(|_| shared.not_running())?,
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        let params = CallParams {
            action,
            payload: &invocation.payload,
            deadline_ms: remaining.as_millis() as u64,
        };
        match conn.request("call", &params, remaining).await {
            Ok(Ok(result)) => Ok(Outcome { result }),
            Ok(Err(error)) => Err(map_rpc_error(&shared.plugin, action, error)),
            Err(RequestError::Timeout) => Err(timed_out()),
            Err(RequestError::Closed(reason)) => Err(RuntimeError::Crashed {
                plugin: shared.plugin.clone(),
                reason,
            }),
        }
    }

    async fn event(&self, topic: &str, payload: &RawValue) -> Result<(), RuntimeError> {
        let shared = &*self.shared;
        let conn = shared
            .current
            .read()
            .clone()
            .ok_or_else(|| shared.not_running())?;
        conn.notify("event", &EventParams { topic, payload })
            .await
            .map_err(|reason| RuntimeError::Crashed {
                plugin: shared.plugin.clone(),
                reason,
            })
    }

    fn actions(&self) -> Vec<ActionInfo> {
        self.shared.state.lock().actions.clone()
    }

    fn status(&self) -> InstanceStatus {
        let state = self.shared.state.lock();
        InstanceStatus {
            ready: state.ready,
            dead: state.dead,
            restarts: state.restarts,
            last_error: state.last_error.clone(),
            pid: state.pid,
            late_replies: self.shared.late_replies.load(Ordering::Relaxed),
            details: state.details.clone(),
        }
    }

    async fn stop(&self, grace: Duration) {
        self.shared.stop.send_if_modified(|g| {
            if g.is_none() {
                *g = Some(grace);
                true
            } else {
                false
            }
        });
        self.shared.concurrency.close();
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

fn map_rpc_error(plugin: &PluginName, action: &str, error: RpcError) -> RuntimeError {
    let plugin = plugin.clone();
    let action = action.to_owned();
    match error.code {
        codes::UNKNOWN_ACTION => RuntimeError::UnknownAction { plugin, action },
        // The SDKs put the validation details into the message already (`data.errors` holds
        // them in machine-readable form).
        codes::BAD_PAYLOAD => RuntimeError::BadPayload {
            plugin,
            action,
            message: error.message,
        },
        code => {
            let data = error.data.as_ref();
            let exception = data.and_then(|d| d.get("type")).and_then(|t| t.as_str());
            // The sandbox refuses the allocation (RLIMIT_DATA) and the SDK reports it as the
            // handler's `MemoryError`: that is the memory limit, as in the wasm runtime.
            if code == codes::ACTION_FAILED && exception == Some("MemoryError") {
                return RuntimeError::LimitExceeded {
                    plugin,
                    limit: "memory".to_owned(),
                    hint: Some("raise `limits.memory` in `plugin.toml`".to_owned()),
                };
            }
            // `data.code` may be a string or a number (e.g. a host error passed through).
            let data_code = data
                .and_then(|d| d.get("code"))
                .and_then(|c| match c {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .or_else(|| exception.map(str::to_owned));
            RuntimeError::ActionFailed {
                plugin,
                action,
                message: error.message,
                code: data_code
                    .or_else(|| (code != codes::ACTION_FAILED).then(|| code.to_string())),
            }
        }
    }
}
