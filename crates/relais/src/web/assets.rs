//! Static files of the pages, embedded in the binary (no CDN, no external call).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every asset: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("relais.css", "text/css; charset=utf-8", include_bytes!("../../web/assets/relais.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../web/assets/favicon.svg")),
    // htmx 2.0.4 (BSD Zero Clause), from the htmx.org package on npm.
    ("htmx.min.js", "text/javascript; charset=utf-8", include_bytes!("../../web/assets/htmx.min.js")),
];

/// `GET /assets/{file}`: an embedded asset, cached for a day.
pub async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    response
}
