//! `on_start` / `on_stop` hooks of real Python SDK plugins (the checkout's `sdk/python/src` on
//! `PYTHONPATH`): the start waits for `started`, fails with the hook's error or at the start
//! timeout, serves host services meanwhile; a slow `on_stop` ends at the stop grace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use plugd_manifest::{ActionName, Manifest};
use plugd_process::{ProcessConfig, ProcessRuntime};
use plugd_runtime::{
    HostCallError, HostCalls, Instance, InstanceSpec, Invocation, LogLevel, LogSource, Progress,
    Runtime, RuntimeError,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::{process_gone, wait_health};

fn sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/python/src")
        .canonicalize()
        .unwrap()
}

/// A host with a kv store (`kv.get`, `kv.set`) that keeps the plugin's log lines.
#[derive(Default)]
struct TestHost {
    kv: Mutex<HashMap<String, Value>>,
    logs: Mutex<Vec<String>>,
}

#[async_trait]
impl HostCalls for TestHost {
    fn log(&self, _: LogSource, _: LogLevel, message: &str) {
        self.logs.lock().push(message.to_owned());
    }
    fn progress(&self, _: Progress) {}
    async fn emit(&self, _: &str, _: Value) -> Result<(), HostCallError> {
        Err(HostCallError::Unknown("emit".to_owned()))
    }
    async fn request(&self, method: &str, params: Value) -> Result<Value, HostCallError> {
        let key = params["key"].as_str().unwrap_or_default().to_owned();
        let mut kv = self.kv.lock();
        match method {
            "kv.get" => Ok(match kv.get(&key) {
                Some(value) => json!({"found": true, "value": value}),
                None => json!({"found": false}),
            }),
            "kv.set" => {
                kv.insert(key, params["value"].clone());
                Ok(json!({"commit": kv.len()}))
            }
            other => Err(HostCallError::Unknown(other.to_owned())),
        }
    }
}

struct Started {
    dir: tempfile::TempDir,
    host: Arc<TestHost>,
    instance: Result<Arc<dyn Instance>, RuntimeError>,
    took: Duration,
}

impl Started {
    fn data(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("data").join(file)).ok()
    }

    fn pid(&self) -> u32 {
        self.data("pid")
            .expect("the plugin wrote its pid")
            .parse()
            .unwrap()
    }

    fn instance(&self) -> &dyn Instance {
        match &self.instance {
            Ok(instance) => &**instance,
            Err(e) => panic!("start: {e}"),
        }
    }

    fn error(&self) -> String {
        match &self.instance {
            Ok(_) => panic!("the start succeeded"),
            Err(e) => e.to_string(),
        }
    }
}

/// Starts an SDK plugin `lifecycle` whose `main.py` is `script` between `plugin = Plugin()` and
/// `plugin.run()` (it writes its pid to `DATA/pid` first; `put(name, text)` writes `DATA/name`).
async fn start_sdk(script: &str, tweak: impl FnOnce(&mut ProcessConfig)) -> Started {
    start_sdk_with(script, Arc::new(TestHost::default()), tweak).await
}

async fn start_sdk_with(
    script: &str,
    host: Arc<TestHost>,
    tweak: impl FnOnce(&mut ProcessConfig),
) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("pkg");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let toml = "[plugin]\nname = \"lifecycle\"\nversion = \"0.1.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n[limits]\ncall_timeout = \"5s\"\n";
    let main = format!(
        "import asyncio, os, time\nfrom plugd import Plugin\nplugin = Plugin()\nDATA = os.environ['PLUGD_DATA_DIR']\ndef put(name, text):\n    with open(os.path.join(DATA, name), 'w') as f:\n        f.write(str(text))\nput('pid', os.getpid())\n{script}\nplugin.run()\n"
    );
    std::fs::write(package.join("main.py"), main).unwrap();
    let manifest = Manifest::from_toml_str(toml).unwrap();
    let mut config = ProcessConfig::default();
    config
        .base_env
        .push(("PYTHONPATH".into(), sdk_path().into_os_string()));
    config.start_timeout = Duration::from_secs(20);
    config.restart.initial_backoff = Duration::from_millis(20);
    tweak(&mut config);
    let spec = InstanceSpec {
        manifest: Arc::new(manifest),
        package_dir: package,
        data_dir: data,
        params: json!({}),
        python_env: None,
        http_socket: None,
    };
    let started = Instant::now();
    let instance = ProcessRuntime::new(config).start(spec, host.clone()).await;
    Started {
        dir,
        host,
        instance,
        took: started.elapsed(),
    }
}

async fn call(instance: &dyn Instance, action: &str) -> Result<Value, RuntimeError> {
    let out = instance
        .call(Invocation {
            action: ActionName::new(action).unwrap(),
            payload: RawValue::from_string("null".to_owned()).unwrap(),
            timeout: Some(Duration::from_secs(5)),
            chain: Vec::new(),
        })
        .await?;
    Ok(serde_json::from_str::<Value>(out.result.get()).unwrap()["value"].take())
}

#[tokio::test]
async fn the_first_call_comes_after_on_start_also_in_a_restarted_child() {
    // The hook takes its time before it marks the plugin ready; a call the host sent before
    // `started` would see `not ready`. Each run of the hook is counted in the data dir.
    let p = start_sdk(
        r#"
state = "not ready"
@plugin.on_start
async def warm_up(p):
    global state
    await asyncio.sleep(0.5)
    runs = int(open(os.path.join(DATA, "runs")).read()) if os.path.exists(os.path.join(DATA, "runs")) else 0
    put("runs", runs + 1)
    state = "ready"

@plugin.action()
async def get(payload):
    return {"state": state, "runs": int(open(os.path.join(DATA, "runs")).read())}

@plugin.action()
async def exit(payload):
    os._exit(3)
"#,
        |_| {},
    )
    .await;
    let instance = p.instance();
    assert!(p.took >= Duration::from_millis(500), "{:?}", p.took);
    assert_eq!(
        call(instance, "get").await.unwrap(),
        json!({"state": "ready", "runs": 1})
    );

    // A crash: the new child runs its hooks again before it serves.
    let pid = p.pid();
    let err = call(instance, "exit").await.unwrap_err();
    assert_eq!(err.code(), "plugin_crashed", "{err}");
    wait_health(instance, |h| {
        *h == plugd_runtime::Health::Ready && instance.status().restarts == 1
    })
    .await;
    assert_ne!(p.pid(), pid);
    assert_eq!(
        call(instance, "get").await.unwrap(),
        json!({"state": "ready", "runs": 2})
    );
    instance.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_on_start_that_raises_fails_the_start_with_its_error() {
    let p = start_sdk(
        r#"
@plugin.on_start
def load_model():
    raise ValueError("no model in the data dir")

@plugin.action()
async def get(payload):
    return "served"
"#,
        |_| {},
    )
    .await;
    assert_eq!(
        p.error(),
        "Plugin `lifecycle` could not start: `on_start` failed: ValueError: no model in the data dir"
    );
    let code = match &p.instance {
        Err(e) => e.code().to_owned(),
        Ok(_) => unreachable!(),
    };
    assert_eq!(code, "plugin_start_failed");
    // The traceback reached the plugin's log before `started`.
    let logs = p.host.logs.lock().clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("`on_start` hook `load_model` failed") && l.contains("Traceback")),
        "{logs:?}"
    );
    assert!(process_gone(p.pid()), "the child is gone");
}

#[tokio::test]
async fn an_on_start_past_the_start_timeout_fails_the_start() {
    let p = start_sdk(
        r#"
@plugin.on_start
async def forever():
    await asyncio.sleep(3600)

@plugin.action()
async def get(payload):
    return "served"
"#,
        |c| c.start_timeout = Duration::from_secs(3),
    )
    .await;
    let error = p.error();
    assert!(
        error.starts_with(
            "Plugin `lifecycle` could not start: its `on_start` did not finish within the start timeout (3s); hint: make `on_start` faster"
        ),
        "{error}"
    );
    assert!(
        p.took >= Duration::from_secs(3) && p.took < Duration::from_secs(5),
        "{:?}",
        p.took
    );
    assert!(process_gone(p.pid()), "the child is gone");
}

#[tokio::test]
async fn on_start_may_use_host_services_before_it_is_ready() {
    let host = Arc::new(TestHost::default());
    host.kv.lock().insert("greeting".into(), json!("hi"));
    let p = start_sdk_with(
        r#"
greeting = None
@plugin.on_start
async def load(p):
    global greeting
    await p.kv.set("seen", True)
    greeting = await p.kv.get("greeting", "none")

@plugin.on_start
def load_sync(p):
    p.kv_sync.set("sync", p.kv_sync.get("seen"))

@plugin.action()
async def get(payload):
    return greeting
"#,
        host,
        |_| {},
    )
    .await;
    // What the hooks read and wrote through the host is there once the start returned.
    let instance = p.instance();
    assert_eq!(call(instance, "get").await.unwrap(), json!("hi"));
    {
        let kv = p.host.kv.lock();
        assert_eq!(kv.get("seen"), Some(&json!(true)));
        assert_eq!(kv.get("sync"), Some(&json!(true)));
    }
    instance.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn on_stop_runs_at_a_stop_and_a_slow_one_ends_at_the_grace() {
    let p = start_sdk(
        r#"
@plugin.on_stop
def remember(p):
    put("stopped", "yes")

@plugin.on_stop
def slow():
    time.sleep(3600)

@plugin.action()
async def get(payload):
    return "served"
"#,
        |_| {},
    )
    .await;
    let instance = p.instance();
    assert_eq!(call(instance, "get").await.unwrap(), json!("served"));
    let pid = p.pid();
    let grace = Duration::from_secs(2);
    let started = Instant::now();
    instance.stop(grace).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < grace + Duration::from_millis(1500),
        "stop took {took:?}"
    );
    assert_eq!(p.data("stopped").as_deref(), Some("yes"));
    assert!(process_gone(pid), "the child {pid} is gone");
}
