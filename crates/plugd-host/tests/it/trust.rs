//! Signed packages through the host: strict mode, tampering, and the swap-after-verify race.

use plugd_host::{PluginState, TrustLevel};
use plugd_trust::{Overwrite, SecretKey, TrustStore, sign_package};

use crate::support::*;

fn trusted_key(f: &Fixture) -> SecretKey {
    let key = SecretKey::generate();
    let path = f.dir.path().join("signing.key");
    let public = key.write(&path, Overwrite::Refuse).unwrap();
    TrustStore::open(&f.dir.path().join("state/trust"))
        .unwrap()
        .add(&public)
        .unwrap();
    key
}

const ANSWER: &str = "@plugin.action()\nasync def answer(p):\n    return 'original'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_unsigned_untrusted_and_tampered_packages() {
    let f = Fixture::new();
    let key = trusted_key(&f);
    f.sdk_plugin("signed", "1.0.0", &[], "", ANSWER);
    sign_package(&f.plugins().join("signed"), &key).unwrap();
    f.sdk_plugin("unsigned", "1.0.0", &[], "", ANSWER);
    f.sdk_plugin("tampered", "1.0.0", &[], "", ANSWER);
    sign_package(&f.plugins().join("tampered"), &key).unwrap();
    std::fs::write(f.plugins().join("tampered/extra.py"), "print('sneaky')\n").unwrap();
    f.sdk_plugin("stranger", "1.0.0", &[], "", ANSWER);
    sign_package(&f.plugins().join("stranger"), &SecretKey::generate()).unwrap();

    let host = f.host_with_config(|c| c.strict = true);
    host.start().await.unwrap();
    assert_eq!(
        states(&host),
        [
            "signed running",
            "stranger failed",
            "tampered failed",
            "unsigned failed"
        ]
    );
    assert!(matches!(
        info(&host, "signed").trust,
        Some(TrustLevel::Trusted { .. })
    ));
    let reason = |n: &str| info(&host, n).reason.unwrap();
    assert!(
        reason("unsigned").contains("is not signed and strict mode is on"),
        "{}",
        reason("unsigned")
    );
    assert!(
        reason("tampered").contains("`extra.py` was added after signing"),
        "{}",
        reason("tampered")
    );
    assert!(
        reason("stranger").contains("which is not in the trust store"),
        "{}",
        reason("stranger")
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_after_verification_never_runs() {
    let f = Fixture::new();
    let key = trusted_key(&f);
    f.sdk_plugin(
        "victim",
        "1.0.0",
        &[],
        "",
        &format!("{ANSWER}@plugin.action()\nasync def crash(p):\n    os._exit(1)\n"),
    );
    sign_package(&f.plugins().join("victim"), &key).unwrap();
    let host = f.host();
    host.start().await.unwrap();
    assert_eq!(
        call(&host, "victim", "answer", "{}").await.unwrap(),
        r#"{"value":"original"}"#
    );

    // Swap the code on disk after the check, then make the plugin restart.
    let main = f.plugins().join("victim/main.py");
    let evil = std::fs::read_to_string(&main)
        .unwrap()
        .replace("'original'", "'evil'");
    std::fs::write(&main, evil).unwrap();
    let pid = info(&host, "victim").pid;
    let _ = call(&host, "victim", "crash", "{}").await;
    eventually("victim restarts", || restarted(&host, "victim", pid)).await;
    let answer = call(&host, "victim", "answer", "{}").await;
    let answer = answer.unwrap_or_else(|e| {
        panic!(
            "{e}; {:?}; log:\n{}",
            info(&host, "victim"),
            log_text(&host, "victim")
        )
    });
    assert_eq!(answer, r#"{"value":"original"}"#);

    // A reload verifies again: the swapped file is refused and the verified version keeps serving.
    let err = host.reload("victim").await.unwrap_err().to_string();
    assert!(err.contains("the running version keeps serving"), "{err}");
    assert!(err.contains("`main.py` was changed after signing"), "{err}");
    assert_eq!(info(&host, "victim").state, PluginState::Running);
    assert_eq!(
        call(&host, "victim", "answer", "{}").await.unwrap(),
        r#"{"value":"original"}"#
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_plugins_load_untrusted_with_the_narrow_capability_set() {
    let f = Fixture::new();
    // `tasks` is in the untrusted set now (scoped to the plugin itself); `http` and app services
    // are not.
    let extra = "[permissions]\nnet.connect = [\"127.0.0.1:9\"]\nenv = [\"HOME\"]\nservices = [\"kv\", \"tasks\", \"http\"]\n";
    f.sdk_plugin("loose", "1.0.0", &[], extra, "@plugin.action()\nasync def env(p):\n    return sorted(k for k in os.environ if not k.startswith('PLUGD_'))\n");
    let host = f.host();
    host.start().await.unwrap();
    let p = info(&host, "loose");
    assert_eq!(p.trust, Some(TrustLevel::Untrusted));
    assert_eq!(
        p.denials, 3,
        "net.connect, env and the http service are denied"
    );
    let log = log_text(&host, "loose");
    assert!(
        log.contains("Denied `net.connect` to `127.0.0.1:9` for untrusted plugin `loose`"),
        "{log}"
    );
    // The child sees a clean environment: the runtime's base, not the host's variables (cargo
    // runs this test with `CARGO_*` set). A `python3` shim (pyenv) may add its own.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let env: serde_json::Value =
        serde_json::from_str(&call(&host, "loose", "env", "{}").await.unwrap()).unwrap();
    let names: Vec<&str> = env["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for base in ["HOME", "LANG", "PATH", "PYTHONPATH"] {
        assert!(names.contains(&base), "{names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("CARGO") || *n == "RUST_BACKTRACE"),
        "{names:?}"
    );
    host.shutdown().await;
}
