//! The HTTP baseline: a bare axum server with one `POST /echo` route that parses the body as
//! JSON and returns it, as plugd's call route does minus the plugin call.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::value::RawValue;

pub(crate) async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // The first line on stdout is the contract with `bench/run.sh`, like `plugd serve`'s.
    println!("axum-echo listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/echo", post(echo));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn echo(body: Bytes) -> Result<Response, StatusCode> {
    // Parse and re-emit the JSON exactly as plugd's `/plugin/{name}/{action}` route does.
    let payload: Box<RawValue> =
        serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let raw: Box<str> = payload.into();
    let mut response = String::from(raw).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
