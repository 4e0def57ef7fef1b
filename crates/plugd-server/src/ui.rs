//! The web dashboard at `/ui`: static assets embedded in the binary.

use axum::Router;

/// The dashboard's routes.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}
