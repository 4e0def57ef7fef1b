//! The web dashboard at `/ui`: static assets embedded in the binary (no Node at run time), which
//! log in with a token (`POST /api/v1/session`) and then use the API with the session cookie.
//!
//! `GET /ui` redirects to `/ui/`; `GET /ui/` is the page; `GET /ui/{file}` an asset. Every answer
//! has a strict Content-Security-Policy (scripts, styles and connections from this origin only,
//! no inline code, no framing), `nosniff`, `no-referrer`, `Cache-Control: no-cache` and a strong
//! ETag (the content's SHA-256), so a reload costs a 304 per asset.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What the dashboard may load and do: everything from this origin, nothing inline or framed.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: HeaderValue,
}

/// The embedded files, `index.html` first.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        (
            "index.html",
            "text/html; charset=utf-8",
            include_str!("../ui/index.html"),
        ),
        (
            "app.js",
            "text/javascript; charset=utf-8",
            include_str!("../ui/app.js"),
        ),
        (
            "app.css",
            "text/css; charset=utf-8",
            include_str!("../ui/app.css"),
        ),
    ]
    .into_iter()
    .map(|(name, content_type, body)| {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            name,
            content_type,
            body,
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header"),
        }
    })
    .collect()
});

/// The dashboard's routes.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/ui/{*file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

/// One asset, or 304 when the client holds it, or the API's JSON 404.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("The dashboard has no file `{name}`; hint: open the dashboard at `/ui/`"),
        )
        .into_response();
    };
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == asset.etag || tag.trim() == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&HeaderValue>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn ui_redirects_to_the_page_which_is_html_under_a_strict_policy() {
        let redirect = get("/ui", None).await;
        assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(redirect.headers()[header::LOCATION], "/ui/");
        let page = get("/ui/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        let h = page.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let body = page.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            html.contains(r#"<script src="app.js" defer></script>"#),
            "{html}"
        );
        // The policy forbids inline code: the page has none.
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "{html}"
        );
    }

    #[tokio::test]
    async fn an_unchanged_asset_is_a_304_and_an_unknown_one_a_json_404() {
        let js = get("/ui/app.js", None).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let tag = js.headers()[header::ETAG].clone();
        assert!(tag.to_str().unwrap().starts_with('"'), "strong: {tag:?}");
        let again = get("/ui/app.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(
            again
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        // Another file's tag does not match.
        let css = get("/ui/app.css", Some(&tag)).await;
        assert_eq!(css.status(), StatusCode::OK);

        let missing = get("/ui/../Cargo.toml", None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let missing = get("/ui/nope.js", None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[header::CONTENT_TYPE], "application/json");
        let body = missing.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nope.js")
        );
    }

    #[test]
    fn the_assets_stay_small() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total <= 200 * 1024, "{total} bytes");
    }
}
