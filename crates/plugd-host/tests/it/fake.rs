//! A scriptable fake runtime: deterministic host tests without child processes or wasm.
//!
//! Plugins are real packages on disk (the host still scans, resolves, verifies and stages them)
//! whose manifests say `runtime = "process"`; the fake runtime registered for that kind answers
//! instead of a child. A test steers it through [`Script`]: which versions fail to start, gates
//! that hold calls and events, health changes, and records of what each instance saw.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use plugd_host::{Host, HostConfig};
use plugd_manifest::RuntimeKind;
use plugd_runtime::{
    ActionInfo, Health, HostCalls, Instance, InstanceSpec, InstanceStatus, Invocation, LogLevel,
    LogSource, Outcome, Progress, Runtime, RuntimeError, TaskRun,
};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, watch};

use crate::support::Fixture;

/// What the fake runtime does, shared between the test and every instance.
pub struct Script {
    /// `name@version` that fail to start.
    pub fail_start: Mutex<HashSet<String>>,
    /// Calls of action `wait`, task runs of `wait` and deliveries of topics starting with
    /// `slow.` to plugins whose name starts with `slow` hold a permit of this gate (closed by default: add permits to release them).
    pub gate: Arc<Semaphore>,
    /// Calls currently inside an instance (dropped calls must leave this at zero).
    pub live_calls: AtomicUsize,
    /// Health senders of every started instance, by `name@version#n`.
    pub health: Mutex<HashMap<String, watch::Sender<Health>>>,
    /// Events received, per plugin.
    pub events: Mutex<HashMap<String, Vec<Received>>>,
    /// Instances stopped, as `name@version#n`.
    pub stopped: Mutex<Vec<String>>,
    /// Actions an instance of `name` announces (none: it announces nothing).
    pub announce: Mutex<HashMap<String, Vec<String>>>,
    /// Every call's `(plugin, chain)` as the instance received it.
    pub chains: Mutex<Vec<(String, Vec<String>)>>,
    /// Params delivered to instances, per plugin.
    pub params: Mutex<HashMap<String, Vec<serde_json::Value>>>,
    /// Instances dropped (freed by the host).
    pub dropped: AtomicUsize,
    /// Emit errors plugins saw, per plugin.
    pub emit_errors: Mutex<HashMap<String, Vec<String>>>,
    /// Task runs, in start order: `(plugin, task, id, attempt, key)`.
    pub task_runs: Mutex<Vec<TaskRunRecord>>,
    /// Deliveries of topics starting with `fail.` that fail before one succeeds (per plugin);
    /// `u32::MAX`: always.
    pub event_failures: Mutex<HashMap<String, u32>>,
    /// Times the host asked the runtime to collect its unused compiled code.
    pub collections: AtomicUsize,
    starts: AtomicUsize,
}

/// One task run a fake instance started: `(plugin, task, id, attempt, key)`.
pub type TaskRunRecord = (String, String, u64, u32, Option<String>);

/// One event a fake instance received: `(version, topic, payload)`.
pub type Received = (String, String, String);

impl Script {
    pub fn new() -> Arc<Self> {
        Arc::new(Script {
            fail_start: Default::default(),
            collections: Default::default(),
            gate: Arc::new(Semaphore::new(0)),
            live_calls: Default::default(),
            health: Default::default(),
            events: Default::default(),
            stopped: Default::default(),
            dropped: Default::default(),
            chains: Default::default(),
            params: Default::default(),
            announce: Default::default(),
            emit_errors: Default::default(),
            task_runs: Default::default(),
            event_failures: Default::default(),
            starts: Default::default(),
        })
    }

    /// Pushes a health change to the most recent instance of `name`.
    pub fn set_health(&self, name: &str, health: Health) {
        let senders = self.health.lock();
        let (_, tx) = senders
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}@")))
            .max_by_key(|(k, _)| k.rsplit('#').next().unwrap().parse::<usize>().unwrap())
            .expect("no instance of that plugin started");
        tx.send_replace(health);
    }

    pub fn events_of(&self, name: &str) -> Vec<Received> {
        self.events.lock().get(name).cloned().unwrap_or_default()
    }
}

pub struct FakeRuntime {
    pub script: Arc<Script>,
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn collect_garbage(&self) -> Result<u64, String> {
        self.script.collections.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }

    async fn start(
        &self,
        spec: InstanceSpec,
        host: Arc<dyn HostCalls>,
    ) -> Result<Arc<dyn Instance>, RuntimeError> {
        let m = &spec.manifest;
        let key = format!("{}@{}", m.name, m.version);
        if self.script.fail_start.lock().contains(&key) {
            return Err(RuntimeError::StartFailed {
                plugin: m.name.clone(),
                reason: "the fake was told to fail".into(),
            });
        }
        let n = self.script.starts.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Health::Ready);
        let id = format!("{key}#{n}");
        self.script.health.lock().insert(id.clone(), tx);
        Ok(Arc::new(FakeInstance {
            id,
            name: m.name.to_string(),
            version: m.version.to_string(),
            script: self.script.clone(),
            health: rx,
            host,
        }))
    }
}

struct FakeInstance {
    id: String,
    name: String,
    version: String,
    script: Arc<Script>,
    health: watch::Receiver<Health>,
    host: Arc<dyn HostCalls>,
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        self.script.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts a call as live for as long as the instance holds it (also when it is dropped).
struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Instance for FakeInstance {
    async fn call(&self, invocation: Invocation) -> Result<Outcome, RuntimeError> {
        self.script.live_calls.fetch_add(1, Ordering::SeqCst);
        let chain: Vec<String> = invocation.chain.iter().map(|n| n.to_string()).collect();
        self.script
            .chains
            .lock()
            .push((self.name.clone(), chain.clone()));
        let _live = Live(&self.script.live_calls);
        match invocation.action.as_str() {
            // Held by the gate; like a real runtime, it gives up at the call's deadline.
            "wait" => {
                let gate = self.script.gate.acquire();
                match invocation.timeout {
                    Some(limit) => match tokio::time::timeout(limit, gate).await {
                        Ok(permit) => permit.unwrap().forget(),
                        Err(_) => {
                            return Err(RuntimeError::Timeout {
                                plugin: plugd_manifest::PluginName::new(&self.name).unwrap(),
                                action: "wait".into(),
                                timeout: limit,
                            });
                        }
                    },
                    None => gate.await.unwrap().forget(),
                }
            }
            // `{"lines": n, "text": "..."}`: logs the text n times through the host.
            "log" => {
                let p: serde_json::Value = serde_json::from_str(invocation.payload.get()).unwrap();
                let text = p["text"].as_str().unwrap();
                for _ in 0..p["lines"].as_u64().unwrap() {
                    self.host.log(LogSource::Plugin, LogLevel::Info, text);
                }
            }
            // `{"method": "...", "params"?: {...}}`: asks the host; answers with its result, or
            // with its error text.
            "ask" => {
                let p: serde_json::Value = serde_json::from_str(invocation.payload.get()).unwrap();
                let method = p["method"].as_str().unwrap();
                let mut params = p.get("params").cloned().unwrap_or(serde_json::json!({}));
                // Like the SDK: a `plugin.call` carries the chain of the call being handled.
                if method == "plugin.call" && params.get("context").is_none() {
                    params["context"] = serde_json::json!({ "chain": chain });
                }
                let answer = match self.host.request(method, params).await {
                    Ok(v) => v.to_string(),
                    Err(e) => serde_json::to_string(&e.to_string()).unwrap(),
                };
                return Ok(Outcome {
                    result: RawValue::from_string(answer).unwrap(),
                });
            }
            _ => {}
        }
        let result = format!(
            r#"{{"value":{},"version":"{}"}}"#,
            invocation.payload.get(),
            self.version
        );
        Ok(Outcome {
            result: RawValue::from_string(result).unwrap(),
        })
    }

    /// Tasks: `ok` returns `{"payload", "attempt"}`; `fail` fails (final); `retry` asks for a
    /// retry; `flaky` asks for a retry until attempt `payload.n`; `crash` crashes; `progress`
    /// reports 0.5 and returns; `wait` holds a gate permit until cancelled; `@after_last`
    /// returns. Every run is recorded in `task_runs`.
    async fn run_task(&self, run: TaskRun) -> Result<Outcome, RuntimeError> {
        let plugin = plugd_manifest::PluginName::new(&self.name).unwrap();
        self.script.task_runs.lock().push((
            self.name.clone(),
            run.task.clone(),
            run.id,
            run.attempt,
            run.key.clone(),
        ));
        let failed = |code: &str| {
            Err(RuntimeError::ActionFailed {
                plugin: plugin.clone(),
                action: run.task.clone(),
                message: format!("the fake task failed ({code})"),
                code: Some(code.to_owned()),
            })
        };
        let payload: serde_json::Value = serde_json::from_str(run.payload.get()).unwrap();
        match run.task.as_str() {
            "ok" | "@after_last" => {}
            "fail" => return failed("boom"),
            "retry" => return failed(plugd_runtime::TASK_RETRY),
            "flaky" if u64::from(run.attempt) < payload["n"].as_u64().unwrap_or(1) => {
                return failed(plugd_runtime::TASK_RETRY);
            }
            "flaky" => {}
            "crash" => {
                return Err(RuntimeError::Crashed {
                    plugin,
                    reason: "the fake crashed".into(),
                });
            }
            "progress" => self.host.progress(Progress {
                task: Some(run.id),
                fraction: Some(0.5),
                message: Some("half".into()),
            }),
            // Like a real runtime, it gives up at the run's deadline (`limits.task_timeout`).
            "wait" => {
                tokio::select! {
                    permit = self.script.gate.acquire() => permit.unwrap().forget(),
                    _ = run.cancel.cancelled() => return failed(plugd_runtime::TASK_CANCELLED),
                    _ = tokio::time::sleep(run.timeout) => {
                        return Err(RuntimeError::Timeout {
                            plugin,
                            action: run.task.clone(),
                            timeout: run.timeout,
                        });
                    }
                }
            }
            _ => {
                return Err(RuntimeError::UnknownAction {
                    plugin,
                    action: run.task.clone(),
                });
            }
        }
        let result = serde_json::json!({ "payload": payload, "attempt": run.attempt });
        Ok(Outcome {
            result: RawValue::from_string(result.to_string()).unwrap(),
        })
    }

    async fn event(&self, topic: &str, payload: &RawValue) -> Result<(), RuntimeError> {
        if topic.starts_with("slow.") && self.name.starts_with("slow") {
            self.script.gate.acquire().await.unwrap().forget();
        }
        if topic.starts_with("fail.") {
            let mut failures = self.script.event_failures.lock();
            let left = failures.entry(self.name.clone()).or_insert(0);
            if *left > 0 {
                *left = left.saturating_sub(if *left == u32::MAX { 0 } else { 1 });
                return Err(RuntimeError::ActionFailed {
                    plugin: plugd_manifest::PluginName::new(&self.name).unwrap(),
                    action: topic.to_owned(),
                    message: "the fake handler failed".into(),
                    code: None,
                });
            }
        }
        self.script
            .events
            .lock()
            .entry(self.name.clone())
            .or_default()
            .push((
                self.version.clone(),
                topic.to_owned(),
                payload.get().to_owned(),
            ));
        // `bounce.NAME` makes this plugin emit `bounce.OTHER` back: a loop the host must cut.
        if let Some(target) = topic.strip_prefix("bounce.")
            && target == self.name
        {
            let other = if self.name == "ping" { "pong" } else { "ping" };
            if let Err(e) = self
                .host
                .emit(&format!("bounce.{other}"), serde_json::json!({}))
                .await
            {
                self.script
                    .emit_errors
                    .lock()
                    .entry(self.name.clone())
                    .or_default()
                    .push(e.to_string());
            }
        }
        Ok(())
    }

    fn actions(&self) -> Vec<ActionInfo> {
        let announce = self.script.announce.lock();
        announce
            .get(&self.name)
            .into_iter()
            .flatten()
            .map(|a| ActionInfo {
                name: plugd_manifest::ActionName::new(a).unwrap(),
                description: String::new(),
            })
            .collect()
    }

    fn status(&self) -> InstanceStatus {
        InstanceStatus {
            ready: true,
            ..Default::default()
        }
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    async fn params_changed(&self, params: &serde_json::Value) -> Result<(), RuntimeError> {
        self.script
            .params
            .lock()
            .entry(self.name.clone())
            .or_default()
            .push(params.clone());
        Ok(())
    }

    async fn stop(&self, _grace: Duration) {
        self.script.stopped.lock().push(self.id.clone());
    }
}

impl Fixture {
    /// A plugin package for the fake runtime.
    pub fn fake_plugin(&self, name: &str, version: &str, deps: &[(&str, &str)], extra: &str) {
        self.plugin(name, version, deps, extra, "# run by the fake runtime\n");
    }

    /// A host whose only runtime is the fake one.
    pub fn fake_host(&self, script: &Arc<Script>) -> Host {
        self.fake_host_with(script, |_| {})
    }

    /// [`Fixture::fake_host`] with a tweaked configuration.
    pub fn fake_host_with(
        &self,
        script: &Arc<Script>,
        tweak: impl FnOnce(&mut HostConfig),
    ) -> Host {
        let mut config = HostConfig::new(self.plugins(), self.dir.path().join("state"));
        config.stop_grace = Duration::from_millis(100);
        config.log_lines = 2000;
        tweak(&mut config);
        Host::builder(config)
            .runtime(Arc::new(FakeRuntime {
                script: script.clone(),
            }))
            .build()
    }
}
