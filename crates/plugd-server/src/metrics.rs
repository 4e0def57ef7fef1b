//! `GET /metrics`: Prometheus text exposition.
//!
//! The server installs a Prometheus recorder as the process's global `metrics` recorder once,
//! when the first router is built (so what is counted before the first scrape is kept). The
//! host and the proxy record through the `metrics` macros; a scrape first brings the gauges that
//! are read on demand up to date ([`Host::refresh_metrics`]). Every series is listed in
//! `docs/metrics.md`.
//!
//! A process that installed another recorder first (an application embedding the server with
//! its own exporter) keeps it: `/metrics` then answers 503 `metrics_unavailable` saying why,
//! and the embedder's exporter has every series.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::error::ApiError;
use crate::routes::AppState;

/// The `Content-Type` of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Proxied requests to plugins' own HTTP servers, by plugin and status class.
pub(crate) const HTTP_PROXIED: &str = "plugd_http_proxied_requests_total";

/// How often histograms are folded and the recorder tidied when nobody scrapes (a scrape does
/// it too): values recorded between two upkeeps are held in memory until then.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Call durations: 50 µs (an in-process wasm call) to 30 s (a long call's timeout).
const CALL_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Plugin starts: 10 ms (a cached wasm module) to 5 minutes (a Python environment being built).
const LOAD_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Task runs: 1 ms to an hour.
const TASK_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The installed recorder's handle, or why there is none.
static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the global `metrics` recorder, once per process (later
/// calls return the first outcome). Never panics: when another recorder was installed first, a
/// warning is logged and the reason returned.
pub(crate) fn install() -> Result<&'static PrometheusHandle, &'static str> {
    RECORDER
        .get_or_init(|| {
            let installed = install_with(|recorder| {
                metrics::set_global_recorder(recorder).map_err(|e| e.to_string())
            });
            match &installed {
                Ok(handle) => {
                    plugd_host::describe_metrics();
                    plugd_scripts::describe_metrics();
                    metrics::describe_counter!(
                        HTTP_PROXIED,
                        "Requests forwarded to plugins' own HTTP servers, by plugin and status class"
                    );
                    metrics::describe_counter!(
                        crate::handoff::HTTP_HANDOFFS,
                        "WebSockets handed over to plugins' own HTTP servers (not relayed), by plugin"
                    );
                    spawn_upkeep(handle.clone());
                }
                Err(reason) => tracing::warn!("{reason}"),
            }
            installed
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Builds the recorder and hands it to `set` (which installs it); the handle if that worked, the
/// reason for `/metrics` otherwise.
fn install_with(
    set: impl FnOnce(PrometheusRecorder) -> Result<(), String>,
) -> Result<PrometheusHandle, String> {
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    match set(recorder) {
        Ok(()) => Ok(handle),
        Err(e) => Err(format!(
            "Metrics are not exported at `/metrics`: another metrics recorder was installed in this process first ({e}); hint: read the metrics from that recorder's exporter"
        )),
    }
}

/// The exporter's settings: histogram buckets per duration series.
fn builder() -> PrometheusBuilder {
    let buckets = [
        ("plugd_call_duration_seconds", CALL_BUCKETS),
        ("plugd_plugin_load_duration_seconds", LOAD_BUCKETS),
        ("plugd_task_duration_seconds", TASK_BUCKETS),
        ("plugd_script_run_duration_seconds", TASK_BUCKETS),
    ];
    buckets
        .into_iter()
        .fold(PrometheusBuilder::new(), |builder, (name, values)| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
                .expect("the bucket lists are not empty")
        })
}

/// Folds histograms on a thread of its own, so memory stays bounded without scrapes and
/// whatever runtime built the first router may end.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("plugd-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "cannot start the metrics upkeep thread ({e}): histograms are folded at scrapes only"
        );
    }
}

/// The metrics in Prometheus text format.
pub(crate) async fn handler(State(state): State<AppState>) -> Response {
    if !state.metrics {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "This server records no metrics (`plugd serve --no-metrics`); hint: start it without `--no-metrics`",
        )
        .into_response();
    }
    let host = state.host.clone();
    let handle = match install() {
        Ok(handle) => handle,
        Err(reason) => return unavailable(reason),
    };
    host.refresh_metrics().await;
    handle.run_upkeep();
    let body = handle.render();
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

/// The answer when this process's recorder is not ours.
fn unavailable(reason: &str) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "metrics_unavailable",
        reason,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_duration_series_has_buckets_in_increasing_order() {
        for buckets in [CALL_BUCKETS, LOAD_BUCKETS, TASK_BUCKETS] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
        assert_eq!(CALL_BUCKETS.first(), Some(&0.000_05));
        assert_eq!(CALL_BUCKETS.last(), Some(&30.0));
        // Building the exporter with them does not panic.
        let _ = builder().build_recorder();
    }

    #[tokio::test]
    async fn a_recorder_installed_by_someone_else_makes_metrics_a_503_naming_why() {
        // What `install` does when `metrics::set_global_recorder` refuses (the process's recorder
        // is not replaced: this test never touches it).
        let refused = install_with(|_| Err("attempted to set a recorder after one was set".into()));
        let reason = refused.expect_err("refused");
        assert!(
            reason.contains("another metrics recorder was installed"),
            "{reason}"
        );
        let response = unavailable(&reason);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "metrics_unavailable");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("another metrics recorder"),
            "{body}"
        );
        // Accepted: the handle renders what the recorder holds.
        let handle = install_with(|_| Ok(())).expect("accepted");
        assert_eq!(handle.render(), "");
    }
}
