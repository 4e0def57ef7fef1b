//! `GET /metrics`: Prometheus text exposition.

/// The metrics in Prometheus text format.
pub(crate) async fn handler() -> String {
    String::new()
}
