//! One supervised process plugin: handshake, calls, health pings, crash restarts with backoff.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use plugd_manifest::{ActionName, PluginName};
use plugd_protocol::{
    CallParams, EventParams, FrameReader, Hello, InitLimits, Initialize, Message, PROTOCOL_VERSION,
    ParamsChangedParams, RpcError, TaskRunParams, codes, encode_error, encode_notification,
    encode_result,
};
use plugd_runtime::{
    ActionInfo, CallSlots, Health, HostCalls, HttpSide, Instance, InstanceSpec, InstanceStatus,
    Invocation, LogLevel, LogSource, Outcome, RuntimeError, TASK_CANCEL_GRACE, TaskRun,
};
use plugd_sandbox::Prepared;
use serde_json::value::RawValue;
use tokio::io::BufReader;
use tokio::process::Child;
use tokio::sync::{Notify, watch};

use crate::ProcessConfig;
use crate::conn::{Closed, Connection, RequestError, STREAM_ENDED, Started, read_loop};
use crate::logs::{Tail, capture};
use crate::spawn::{Spawned, describe_exit, kill_group, spawn};

/// How often the CPU time of a child is sampled while calls are in flight.
const CPU_SAMPLE: Duration = Duration::from_millis(100);
/// How long the CPU sampler goes on ticking after the last call it saw before it parks.
const CPU_LINGER: Duration = Duration::from_secs(1);

/// How long SIGKILL may take to reap a child before we stop waiting (it is in the kernel's hands
/// then; `kill_on_drop` and the cgroup clean up what is left).
const REAP_WAIT: Duration = Duration::from_secs(1);

/// Sends `signal` to the process group led by `pid`. Never signals group 0 (our own group):
/// a child that was already reaped has no pid, and nothing is sent then.
fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.filter(|&p| p > 0) {
        kill_group(pid, signal);
    }
}

/// Kills the child's group and reaps it, waiting at most [`REAP_WAIT`].
async fn kill_and_reap(child: &mut Child) {
    signal_group(child.id(), libc::SIGKILL);
    let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
}

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
    slots: CallSlots,
    cpu: CpuCalls,
    health: watch::Sender<Health>,
    /// `Some(grace)` once a stop was requested.
    stop: watch::Sender<Option<Duration>>,
    /// `true` once the supervisor has finished.
    stopped: watch::Sender<bool>,
    /// The params in force: `initialize` of every (re)started child carries them.
    params: Mutex<Params>,
    /// Held while one `params.changed` is queued, so two changes reach the child in order.
    params_send: tokio::sync::Mutex<()>,
    /// The HTTP side as the proxy reaches it: the secret of this start (`initialize.http_secret`,
    /// fixed), the current child's socket pinned at its bind (from its spawn on), and its
    /// hand-off channel when its `hello` said `http_handoff` (and its sandbox confines a handed
    /// socket). One lock: the proxy reads it on every request.
    http_side: Mutex<HttpSide>,
}

/// The plugin's current params and how often they changed since the start.
struct Params {
    version: u64,
    value: serde_json::Value,
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
    /// The restart scheduled after a crash, while it waits.
    backoff: Option<plugd_runtime::Backoff>,
}

/// A child that completed the handshake.
struct Running {
    child: Child,
    conn: Arc<Connection>,
    tail: Arc<Tail>,
    /// Dropped after the child is reaped: kills leftovers and removes its cgroup.
    sandbox: Option<Prepared>,
    /// The version of the params its `initialize` carried.
    params_version: u64,
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
        let slots = CallSlots::new(plugin.clone(), spec.manifest.limits.concurrency as usize);
        let params = Params {
            version: 0,
            value: spec.params.clone(),
        };
        // One secret per start: every child of it gets the same, so a request that reaches a
        // crashed child's replacement before its `hello` carries the secret that child checks.
        let http_secret = spec.http_socket.as_ref().map(|_| http_secret());
        let shared = Arc::new(Shared {
            plugin: plugin.clone(),
            spec,
            host,
            config,
            current: RwLock::new(None),
            state: Mutex::new(State::default()),
            late_replies: Arc::new(AtomicU64::new(0)),
            slots,
            cpu: CpuCalls::default(),
            health: watch::channel(Health::Ready).0,
            stop: watch::channel(None).0,
            stopped: watch::channel(false).0,
            params: Mutex::new(params),
            params_send: tokio::sync::Mutex::new(()),
            http_side: Mutex::new(HttpSide {
                secret: http_secret,
                ..HttpSide::default()
            }),
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
    /// Spawns a child and completes the handshake; a child whose `hello` said `on_start` is
    /// ready only once it said `started` (its hooks ran), all within the start timeout.
    async fn launch(self: &Arc<Self>) -> Result<Running, String> {
        // The previous child's hand-off channel is not used from now on.
        self.http_side.lock().handoff = None;
        let Spawned {
            mut child,
            socket,
            sandbox,
            handoff: handoff_channel,
            http_pin,
        } = spawn(&self.spec, &self.config)?;
        self.http_side.lock().socket = http_pin.map(Arc::new);
        let mut layers: Vec<(String, String)> = sandbox
            .iter()
            .flat_map(|s| s.layers())
            .map(|l| (format!("sandbox.{}", l.layer), layer_text(l)))
            .collect();
        // Unconfined (`--no-sandbox`), a handed socket changes nothing.
        let handoff_safe = sandbox.as_ref().is_none_or(Prepared::confines_handed_tcp);
        let tail = Arc::new(Tail::default());
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(capture(stdout, LogSource::Stdout, self.host.clone(), None));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(capture(
                stderr,
                LogSource::Stderr,
                self.host.clone(),
                Some(tail.clone()),
            ));
        }
        let (read_half, write_half) = socket.into_split();
        let mut reader = FrameReader::new(BufReader::new(read_half), self.config.max_frame);

        // One deadline for the whole start: the handshake and, for a child with `on_start`
        // hooks, the wait for its `started`.
        let timeout = self.config.start_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
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
                kill_and_reap(&mut child).await;
                return Err(reason);
            }
        };

        // From here on the connection's writer task owns the socket; every frame is queued
        // whole and every wait for room is bounded by the start timeout.
        let conn = Connection::new(write_half, self.late_replies.clone());
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
            let _ = conn.send_frame(frame, timeout).await;
            // Let the refusal reach the child before it is killed (it exits 3 on its own).
            let _ = tokio::time::timeout(Duration::from_millis(200), child.wait()).await;
            kill_and_reap(&mut child).await;
            conn.close(Closed::new("its protocol was refused"));
            return Err(format!(
                "it speaks protocol {} but this host speaks {PROTOCOL_VERSION}; hint: use an SDK that speaks protocol {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }

        let manifest = &self.spec.manifest;
        let data_dir = self.spec.data_dir.to_string_lossy();
        // A child started after a change gets the params in force, not those of the first start.
        let (params_version, params) = {
            let params = self.params.lock();
            (params.version, params.value.clone())
        };
        let http_secret = self.http_side.lock().secret.clone();
        let init = Initialize {
            protocol: PROTOCOL_VERSION,
            plugin: manifest.name.as_str(),
            version: manifest.version.to_string(),
            params: &params,
            data_dir: &data_dir,
            services: manifest
                .permissions
                .services
                .iter()
                .map(|s| s.as_str())
                .collect(),
            limits: init_limits(&manifest.limits),
            http_secret: http_secret.as_deref(),
        };
        encode_result(&mut frame, hello_id, &init);
        if let Err(e) = conn.send_frame(frame, timeout).await {
            kill_and_reap(&mut child).await;
            conn.close(Closed::new("its handshake failed"));
            return Err(match e {
                RequestError::Timeout => {
                    format!("it did not read the `initialize` answer within {timeout:?}")
                }
                RequestError::Closed(c) => {
                    format!(
                        "it closed its protocol socket during the handshake: {}",
                        c.reason
                    )
                }
            });
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

        // Only a plugin with a hand-off channel (an `[http]` table) can take one, and only when
        // a handed TCP socket of the host's cannot widen its network.
        let handoff = hello.http_handoff && handoff_channel.is_some();
        self.http_side.lock().handoff = handoff_channel
            .filter(|_| handoff && handoff_safe)
            .map(Arc::new);
        if handoff {
            layers.push((
                "http.handoff".into(),
                if handoff_safe {
                    "on: WebSockets are handed over, not relayed".into()
                } else {
                    "off: this kernel's Landlock (ABI < 4) cannot keep a handed-over TCP socket from connecting elsewhere; WebSockets are relayed".into()
                },
            ));
        }
        // Armed before the read loop runs, so a `started` cannot slip past it.
        let started = hello.on_start.then(|| conn.expect_started());
        tokio::spawn(read_loop(
            conn.clone(),
            reader,
            self.host.clone(),
            self.plugin.clone(),
        ));
        if let Some(started) = started {
            // The read loop serves the child's requests meanwhile (its hooks may use the host's
            // services), but nothing is sent to it before `started`: it is installed after.
            // A start that fails or is abandoned (the launch dropped by a stop) closes the
            // connection, which ends the read loop.
            let mut guard = CloseOnDrop(Some(conn.clone()));
            if let Err(reason) =
                wait_started(started, &mut child, &conn, &tail, deadline, timeout).await
            {
                kill_and_reap(&mut child).await;
                return Err(reason);
            }
            guard.0 = None;
        }
        self.state.lock().details = layers;
        Ok(Running {
            child,
            conn,
            tail,
            sandbox,
            params_version,
        })
    }

    /// Publishes a child that completed its handshake. `restarted` counts it as a restart, in
    /// the same critical section, so no reader sees the new pid with the old restart count.
    fn install(&self, running: &Running, restarted: bool) {
        {
            // Under the params lock, so a change made since the handshake either sees this
            // connection (and sends it) or is sent here; never neither.
            let params = self.params.lock();
            *self.current.write() = Some(running.conn.clone());
            if params.version != running.params_version {
                // A fresh connection's queue has room; if not, the child is broken anyway.
                running.conn.try_notify(
                    "params.changed",
                    &ParamsChangedParams {
                        params: &params.value,
                    },
                );
            }
        }
        let mut state = self.state.lock();
        state.ready = true;
        state.pid = running.child.id();
        if restarted {
            state.restarts += 1;
        }
        drop(state);
        self.health.send_replace(Health::Ready);
    }

    fn uninstall(&self, reason: &str) {
        *self.current.write() = None;
        // WebSockets go to the relay (which waits for the next child) until one says hello.
        self.http_side.lock().handoff = None;
        let mut state = self.state.lock();
        state.ready = false;
        state.pid = None;
        state.last_error = Some(reason.to_owned());
        drop(state);
        self.health.send_replace(Health::Recovering {
            reason: format!("it is restarting after a crash: {reason}"),
        });
    }

    /// Whether a child will (again) be started: neither given up nor stopping.
    fn restarting(&self) -> bool {
        !self.state.lock().dead && !*self.stopped.borrow() && self.stop.borrow().is_none()
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

/// Closes a connection when dropped, unless disarmed (`.0 = None`).
struct CloseOnDrop(Option<Arc<Connection>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.close(Closed::new("its start failed"));
        }
    }
}

/// Waits until `deadline` for the `started` of a child whose `hello` said `on_start`; ends early
/// when the child exits or its connection closes. `Err` is the reason the start fails.
async fn wait_started(
    mut started: tokio::sync::oneshot::Receiver<Started>,
    child: &mut Child,
    conn: &Connection,
    tail: &Tail,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(), String> {
    tokio::select! {
        // A `started` read before the exit below is seen wins over it.
        biased;
        outcome = tokio::time::timeout_at(deadline, &mut started) => match outcome {
            Ok(Ok(outcome)) => outcome,
            // The connection closed: usually the child is exiting; report how.
            Ok(Err(_)) => {
                let closed = conn.closed().await;
                if !closed.reason.starts_with(STREAM_ENDED) {
                    return Err(format!("{} before saying `started`", closed.reason));
                }
                match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
                    Ok(Ok(status)) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(with_tail(format!("it {} while its `on_start` ran", describe_exit(status)), tail))
                    }
                    _ => Err("it closed its protocol socket while its `on_start` ran".to_owned()),
                }
            }
            Err(_) => Err(format!(
                "its `on_start` did not finish within the start timeout ({timeout:?}); hint: make `on_start` faster (move slow work into a background task); the start timeout is the host's (`ProcessConfig::start_timeout`), not a limit of `plugin.toml`"
            )),
        },
        status = child.wait() => {
            // Let the read loop and the stderr reader catch up: a child may say why it failed
            // and exit at once.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(Err(reason)) = started.try_recv() {
                return Err(reason);
            }
            let how = status.map(describe_exit).unwrap_or_else(|e| format!("could not be waited for: {e}"));
            Err(with_tail(format!("it {how} while its `on_start` ran"), tail))
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

/// `initialize.limits` from the manifest.
fn init_limits(limits: &plugd_manifest::Limits) -> InitLimits {
    InitLimits {
        call_timeout_ms: limits.call_timeout.as_millis() as u64,
        concurrency: limits.concurrency,
        memory: limits.memory,
        cpu_ms: limits.cpu.as_millis() as u64,
    }
}

/// The calls in flight, for the CPU budget: each remembers the child's CPU time when it started
/// (filled in by the first sample after it started, so it is read only while calls run).
#[derive(Default)]
struct CpuCalls {
    calls: parking_lot::Mutex<BTreeMap<u64, Option<Duration>>>,
    next: AtomicU64,
    /// Woken when a call starts while the sampler is parked, so sampling runs only while busy.
    busy: Notify,
    /// Whether the sampler is parked (idle for [`CPU_LINGER`]): only then does a call's start
    /// wake it. While it lingers it ticks anyway, so calls in quick succession (a busy period
    /// ending and another starting at every request) wake nothing.
    parked: AtomicBool,
}

/// One call counted by [`CpuCalls`]; dropping it (however the call ends) forgets the call.
struct CpuCall<'a> {
    calls: &'a CpuCalls,
    seq: u64,
}

impl CpuCalls {
    fn enter(&self) -> CpuCall<'_> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.calls.lock().insert(seq, None);
        // After the insert (SeqCst): a sampler that parks re-checks `is_busy` after setting the
        // flag, so either it sees this call or this sees the flag.
        if self.parked.load(Ordering::SeqCst) {
            self.busy.notify_one();
        }
        CpuCall { calls: self, seq }
    }

    fn is_busy(&self) -> bool {
        !self.calls.lock().is_empty()
    }

    /// Parks the sampler unless a call is in flight (then it goes on sampling). A call that
    /// starts between the check and the wait leaves a permit in `busy`: nothing is missed.
    async fn park(&self) {
        /// Clears the flag however the wait ends (the select it is in may drop it).
        struct Unpark<'a>(&'a AtomicBool);
        impl Drop for Unpark<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.parked.store(true, Ordering::SeqCst);
        let _unpark = Unpark(&self.parked);
        if !self.is_busy() {
            self.busy.notified().await;
        }
    }

    /// With the child's CPU time `now`: how much CPU time was used since the oldest call in
    /// flight started, and how many calls are in flight.
    fn used_since_oldest(&self, now: Duration) -> (Duration, usize) {
        let mut calls = self.calls.lock();
        for baseline in calls.values_mut() {
            baseline.get_or_insert(now);
        }
        // Sequence numbers grow, so the first entry is the oldest call.
        let oldest = calls.values().next().copied().flatten().unwrap_or(now);
        (now.saturating_sub(oldest), calls.len())
    }

    fn clear(&self) {
        self.calls.lock().clear();
    }
}

impl Drop for CpuCall<'_> {
    fn drop(&mut self) {
        self.calls.calls.lock().remove(&self.seq);
    }
}

/// CPU time (user + system) the child has used: its cgroup's when the sandbox has one (it counts
/// the child's own children too), else `/proc/PID/stat` of the child.
fn cpu_time(running: &Running) -> Option<Duration> {
    if let Some(usage) = running.sandbox.as_ref().and_then(|s| s.cpu_usage()) {
        return Some(usage);
    }
    let pid = running.child.id().filter(|&p| p > 0)?;
    proc_cpu_time(pid)
}

fn proc_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After `)`: state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    let total = utime + stime;
    Some(
        Duration::from_secs(total / ticks)
            + Duration::from_nanos((total % ticks) * 1_000_000_000 / ticks),
    )
}

/// Watches one child after another: waits for a crash, a failed ping or a stop; restarts with
/// backoff; gives up after too many crashes in the window. Pushes every health change.
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
        running
            .conn
            .close(Closed::new(format!("it crashed: {reason}")));
        shared.cpu.clear();
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
                let reason = format!(
                    "crashed {} times within {:?}, gave up; last crash: {last}",
                    crashes.len(),
                    policy.window
                );
                state.last_error = Some(reason.clone());
                drop(state);
                shared.health.send_replace(Health::Dead { reason });
                shared.stopped.send_replace(true);
                return;
            }
            // Jitter (±20 %) keeps plugins that crashed together from restarting in lockstep.
            let delay = jittered(backoff);
            shared.state.lock().backoff = Some(plugd_runtime::Backoff {
                next_attempt: std::time::SystemTime::now() + delay,
                delay,
                crashes: crashes.len() as u32,
                budget: policy.max_crashes,
                window: policy.window,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop_requested(&mut stop_rx) => {
                    shared.stopped.send_replace(true);
                    return;
                }
            }
            shared.state.lock().backoff = None;
            backoff = (backoff * 2).min(policy.max_backoff);
            // A stop during the handshake drops the launch: the child is killed on drop
            // (`kill_on_drop`), its cgroup with its sandbox.
            let launched = tokio::select! {
                launched = shared.launch() => launched,
                _ = stop_requested(&mut stop_rx) => {
                    shared.stopped.send_replace(true);
                    return;
                }
            };
            match launched {
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
                    shared.health.send_replace(Health::Recovering {
                        reason: format!("its restart failed: {reason}"),
                    });
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

/// `delay` ± 20 %, uniformly.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Resolves with the grace period once a stop is requested.
async fn stop_requested(stop_rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop_rx.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or(Duration::ZERO),
        Err(_) => Duration::ZERO,
    }
}

enum Watch {
    Stop(Duration),
    Crashed(String),
}

type PingFuture = Pin<Box<dyn Future<Output = Result<(), RequestError>> + Send>>;

async fn watch_child(
    shared: &Shared,
    running: &mut Running,
    stop_rx: &mut watch::Receiver<Option<Duration>>,
) -> Watch {
    let ping_every = shared.config.ping_interval;
    let ping_timeout = shared.config.ping_timeout;
    let cpu_limit = shared.spec.manifest.limits.cpu;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu_ticker = tokio::time::interval(CPU_SAMPLE);
    cpu_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The ping runs beside the other branches, so a stop or an exit is seen while it waits.
    let mut ping: Option<PingFuture> = None;
    // When the last call was seen in flight: the sampler parks once it has been idle for
    // `CPU_LINGER`.
    let mut last_busy = tokio::time::Instant::now();
    loop {
        let busy = shared.cpu.is_busy();
        if busy {
            last_busy = tokio::time::Instant::now();
        }
        let park = !busy && last_busy.elapsed() >= CPU_LINGER;
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
            closed = running.conn.closed() => {
                // A closed or broken stream usually means the child is exiting: prefer its exit
                // status as the reason. A protocol violation kills it at once.
                if closed.reason.starts_with(STREAM_ENDED)
                    && let Ok(Ok(status)) =
                        tokio::time::timeout(Duration::from_secs(2), running.child.wait()).await
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Watch::Crashed(running.explain(format!("it {}", describe_exit(status)), &shared.spec.manifest.limits));
                }
                kill_and_reap(&mut running.child).await;
                return Watch::Crashed(closed.reason);
            }
            _ = ticker.tick(), if ping.is_none() => {
                let conn = running.conn.clone();
                ping = Some(Box::pin(async move {
                    conn.request("ping", &serde_json::json!({}), ping_timeout).await.map(|_| ())
                }));
            }
            result = async { ping.as_mut().expect("guarded by the branch condition").await }, if ping.is_some() => {
                ping = None;
                match result {
                    Ok(()) => {}
                    Err(RequestError::Timeout) => {
                        let reason = format!("it did not answer the health ping within {ping_timeout:?} and was killed");
                        // Name the reason before the kill, so callers in flight see it rather
                        // than the broken stream the kill causes.
                        running.conn.close(Closed::new(reason.clone()));
                        kill_and_reap(&mut running.child).await;
                        return Watch::Crashed(reason);
                    }
                    Err(RequestError::Closed(closed)) => {
                        kill_and_reap(&mut running.child).await;
                        return Watch::Crashed(closed.reason);
                    }
                }
            }
            // Sampling runs only while calls are in flight and for `CPU_LINGER` after; a call
            // that starts while the sampler is parked wakes it.
            () = shared.cpu.park(), if park => {}
            _ = cpu_ticker.tick(), if !park => {
                if !shared.cpu.is_busy() {
                    continue;
                }
                let Some(now) = cpu_time(running) else { continue };
                let (used, calls) = shared.cpu.used_since_oldest(now);
                let budget = cpu_limit.saturating_mul(calls.max(1) as u32);
                if calls > 0 && used > budget {
                    let reason = format!(
                        "its calls used {used:?} of CPU time, more than `limits.cpu` ({cpu_limit:?}) per call for {calls} call(s) in flight, and it was restarted"
                    );
                    running.conn.close(Closed { reason: reason.clone(), limit: Some("cpu") });
                    kill_and_reap(&mut running.child).await;
                    return Watch::Crashed(reason);
                }
            }
        }
    }
}

/// Asks the child to shut down (protocol `shutdown`, if it can be queued now), waits for most of
/// `grace`, then sends SIGTERM to its process group and, when `grace` is over, SIGKILL; the
/// sandbox's cgroup catches anything that left the group when `running` is dropped. Returns
/// within `grace` plus at most [`REAP_WAIT`], whatever the child does.
async fn shutdown(shared: &Shared, mut running: Running, grace: Duration) {
    *shared.current.write() = None;
    shared.state.lock().ready = false;
    let pid = running.child.id();
    // Never wait for room: a child that stopped reading must not delay its own stop.
    running.conn.try_notify("shutdown", &serde_json::json!({}));
    let term_share = (grace / 4).min(Duration::from_millis(500));
    let polite = grace.saturating_sub(term_share);
    if tokio::time::timeout(polite, running.child.wait())
        .await
        .is_err()
    {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(term_share, running.child.wait())
            .await
            .is_err()
        {
            kill_and_reap(&mut running.child).await;
        }
    }
    // Reap anything the child left behind in its group.
    signal_group(pid, libc::SIGKILL);
    if let Some(sandbox) = &running.sandbox {
        sandbox.kill_all();
    }
    running.conn.close(Closed::new("it was stopped"));
    shared.cpu.clear();
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
        let unknown = {
            let state = shared.state.lock();
            !state.known_actions.is_empty() && !state.known_actions.contains(action)
        };
        if unknown {
            return Err(RuntimeError::UnknownAction {
                plugin: shared.plugin.clone(),
                action: action.to_owned(),
            });
        }
        let timeout = invocation
            .timeout
            .unwrap_or(shared.spec.manifest.limits.call_timeout);
        let started = Instant::now();
        // Waiting for a slot counts against the call's deadline; saturation is `Overloaded`.
        // `biased`: a free slot is taken on the first poll, without ever subscribing to the
        // connection's close (which registers a waiter and drops it again).
        let _permit = tokio::select! {
            biased;
            permit = shared.slots.acquire(timeout) => permit?,
            closed = conn.closed() => return Err(closed_error(shared, closed)),
        };
        let _cpu = shared.cpu.enter();
        let remaining = timeout.saturating_sub(started.elapsed());
        let params = CallParams {
            action,
            payload: &invocation.payload,
            deadline_ms: remaining.as_millis() as u64,
            chain: invocation.chain.iter().map(PluginName::as_str).collect(),
        };
        match conn.call(&params, remaining).await {
            Ok(Ok(result)) => Ok(Outcome { result }),
            Ok(Err(error)) => Err(map_rpc_error(&shared.plugin, action, error)),
            Err(RequestError::Timeout) => Err(RuntimeError::Timeout {
                plugin: shared.plugin.clone(),
                action: action.to_owned(),
                timeout,
            }),
            Err(RequestError::Closed(closed)) => Err(closed_error(shared, closed)),
        }
    }

    async fn event(&self, topic: &str, payload: &RawValue) -> Result<(), RuntimeError> {
        let shared = &*self.shared;
        let conn = shared
            .current
            .read()
            .clone()
            .ok_or_else(|| shared.not_running())?;
        // An event is a request: the child answers once its handlers ran (at least once), within
        // one call timeout.
        let timeout = shared.spec.manifest.limits.call_timeout;
        match conn
            .request("event", &EventParams { topic, payload }, timeout)
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(map_rpc_error(&shared.plugin, topic, error)),
            Err(RequestError::Timeout) => Err(RuntimeError::Timeout {
                plugin: shared.plugin.clone(),
                action: format!("event `{topic}`"),
                timeout,
            }),
            Err(RequestError::Closed(closed)) => Err(closed_error(shared, closed)),
        }
    }

    async fn run_task(&self, run: TaskRun) -> Result<Outcome, RuntimeError> {
        let shared = &*self.shared;
        let conn = shared
            .current
            .read()
            .clone()
            .ok_or_else(|| shared.not_running())?;
        let params = TaskRunParams {
            id: run.id,
            task: &run.task,
            payload: &run.payload,
            key: run.key.as_deref(),
            attempt: run.attempt,
            deadline_ms: run.timeout.as_millis() as u64,
        };
        // Tasks have their own slots (the host's `limits.tasks`), not the calls' ones, and are
        // bounded by `limits.task_timeout`, not by the per-call CPU budget.
        match conn
            .task_run(&params, run.timeout, &run.cancel, TASK_CANCEL_GRACE)
            .await
        {
            Ok(Ok(result)) => Ok(Outcome { result }),
            Ok(Err(error)) => Err(map_rpc_error(&shared.plugin, &run.task, error)),
            Err(RequestError::Timeout) => Err(RuntimeError::Timeout {
                plugin: shared.plugin.clone(),
                action: run.task.clone(),
                timeout: if run.cancel.is_cancelled() {
                    TASK_CANCEL_GRACE
                } else {
                    run.timeout
                },
            }),
            Err(RequestError::Closed(closed)) => Err(closed_error(shared, closed)),
        }
    }

    async fn params_changed(&self, params: &serde_json::Value) -> Result<(), RuntimeError> {
        let shared = &*self.shared;
        // Like an event, a change waits for room in the write queue at most one call timeout.
        let wait = shared.spec.manifest.limits.call_timeout;
        let overloaded = || RuntimeError::Overloaded {
            plugin: shared.plugin.clone(),
            reason: format!(
                "it did not read its protocol socket for {wait:?}, so `params.changed` was not delivered; it gets the new params when it restarts"
            ),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let _order = tokio::time::timeout_at(deadline, shared.params_send.lock())
            .await
            .map_err(|_| overloaded())?;
        let (conn, frame) = {
            let mut stored = shared.params.lock();
            stored.version += 1;
            stored.value = params.clone();
            let conn = shared.current.read().clone();
            let mut frame = Vec::with_capacity(128);
            encode_notification(
                &mut frame,
                "params.changed",
                &ParamsChangedParams { params },
            );
            (conn, frame)
        };
        let Some(conn) = conn else {
            // Restarting: the next child's `initialize` carries the new params.
            return if shared.restarting() {
                Ok(())
            } else {
                Err(shared.not_running())
            };
        };
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.send_frame(frame, timeout).await {
            Ok(()) => Ok(()),
            // The child crashed under us: its successor gets the params in `initialize`.
            Err(RequestError::Closed(_)) if shared.restarting() => Ok(()),
            Err(RequestError::Closed(closed)) => Err(closed_error(shared, closed)),
            Err(RequestError::Timeout) => Err(overloaded()),
        }
    }

    fn actions(&self) -> Vec<ActionInfo> {
        self.shared.state.lock().actions.clone()
    }

    fn status(&self) -> InstanceStatus {
        let conn = self.shared.current.read().clone();
        let state = self.shared.state.lock();
        let mut details = state.details.clone();
        // The connection's bounded queues, so an operator (and the hostile tests) can see them.
        // Calls holding a concurrency slot now (sent to the child, not waiting for a slot).
        details.push((
            "calls.running".into(),
            self.shared.slots.in_use().to_string(),
        ));
        if let Some(conn) = conn {
            details.push(("protocol.pending".into(), conn.pending_len().to_string()));
            details.push((
                "protocol.host_requests".into(),
                conn.host_requests_in_flight().to_string(),
            ));
        }
        InstanceStatus {
            ready: state.ready,
            dead: state.dead,
            restarts: state.restarts,
            last_error: state.last_error.clone(),
            pid: state.pid,
            late_replies: self.shared.late_replies.load(Ordering::Relaxed),
            details,
            backoff: state.backoff.clone(),
        }
    }

    fn http_side(&self) -> HttpSide {
        self.shared.http_side.lock().clone()
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
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
        // The supervisor returns within `grace` plus the reap wait; the margin only guards
        // against a bug there turning into a hang of the host.
        let mut stopped = self.shared.stopped.subscribe();
        let _ = tokio::time::timeout(
            grace + REAP_WAIT + Duration::from_secs(2),
            stopped.wait_for(|s| *s),
        )
        .await;
    }
}

/// The error for a call whose connection closed under it.
fn closed_error(shared: &Shared, closed: Closed) -> RuntimeError {
    match closed.limit {
        Some(limit) => RuntimeError::LimitExceeded {
            plugin: shared.plugin.clone(),
            limit: limit.to_owned(),
            hint: Some(format!(
                "{}; raise `limits.{limit}` in `plugin.toml`",
                closed.reason
            )),
        },
        None => RuntimeError::Crashed {
            plugin: shared.plugin.clone(),
            reason: closed.reason,
        },
    }
}

fn map_rpc_error(plugin: &PluginName, action: &str, error: RpcError) -> RuntimeError {
    let plugin = plugin.clone();
    let action = action.to_owned();
    let data = error.data.as_ref();
    match error.code {
        codes::UNKNOWN_ACTION => RuntimeError::UnknownAction { plugin, action },
        // The SDKs put the validation details into the message already (`data.errors` holds
        // them in machine-readable form).
        codes::BAD_PAYLOAD => RuntimeError::BadPayload {
            plugin,
            action,
            message: error.message,
        },
        codes::CLIENT_ERROR => {
            let code = data
                .and_then(|d| d.get("code"))
                .and_then(|c| c.as_str())
                .filter(|c| !c.is_empty())
                .unwrap_or("client_error")
                .to_owned();
            // Only client statuses; 401 and 403 are reserved for the host's own auth.
            let status = data
                .and_then(|d| d.get("status"))
                .and_then(serde_json::Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (400..=499).contains(s) && *s != 401 && *s != 403)
                .unwrap_or(400);
            RuntimeError::ClientError {
                plugin,
                action,
                code,
                message: error.message,
                status,
            }
        }
        code => {
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

/// A fresh secret for a plugin's HTTP side: 32 random bytes from the OS (as API tokens are
/// made), as 64 hex digits.
fn http_secret() -> Arc<str> {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_http_secret_is_64_fresh_hex_digits() {
        let (a, b) = (http_secret(), http_secret());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    fn plugin() -> PluginName {
        PluginName::new("p").unwrap()
    }

    fn client_error(data: serde_json::Value) -> RuntimeError {
        map_rpc_error(
            &plugin(),
            "a",
            RpcError {
                code: codes::CLIENT_ERROR,
                message: "no such image".into(),
                data: Some(data),
            },
        )
    }

    #[test]
    fn client_errors_keep_code_and_a_client_status() {
        let check =
            |data: serde_json::Value, want_code: &str, want_status: u16| match client_error(data) {
                RuntimeError::ClientError {
                    code,
                    status,
                    message,
                    ..
                } => {
                    assert_eq!((code.as_str(), status), (want_code, want_status));
                    assert_eq!(message, "no such image");
                }
                other => panic!("expected a client error, got {other:?}"),
            };
        check(
            serde_json::json!({"code": "not_found", "status": 404}),
            "not_found",
            404,
        );
        check(
            serde_json::json!({"code": "nope", "status": 401}),
            "nope",
            400,
        );
        check(
            serde_json::json!({"code": "nope", "status": 403}),
            "nope",
            400,
        );
        check(
            serde_json::json!({"code": "nope", "status": 500}),
            "nope",
            400,
        );
        check(serde_json::json!({"status": 409}), "client_error", 409);
    }

    #[test]
    fn cpu_budget_counts_from_the_oldest_call_in_flight() {
        let cpu = CpuCalls::default();
        let s = Duration::from_secs;
        let first = cpu.enter();
        assert_eq!(cpu.used_since_oldest(s(10)), (s(0), 1));
        let second = cpu.enter();
        assert_eq!(cpu.used_since_oldest(s(12)), (s(2), 2));
        drop(first);
        // The second call started at the sample of 12 s.
        assert_eq!(cpu.used_since_oldest(s(15)), (s(3), 1));
        drop(second);
        assert!(!cpu.is_busy());
    }

    #[test]
    fn reads_its_own_cpu_time() {
        assert!(proc_cpu_time(std::process::id()).is_some());
    }
}
