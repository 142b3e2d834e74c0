//! The dashboard's own stylesheet, script and icon, compiled into the
//! binary: it loads nothing from elsewhere, so it works on a closed
//! network and its pages' content policy allows only this server.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `(name, content type, content)` of every asset.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    ("favicon.svg", "image/svg+xml", include_str!("assets/favicon.svg")),
];

/// The version in asset URLs, so a new binary's assets are fetched anew
/// while a browser may keep them for a day otherwise.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, content)) => asset(content_type, content),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(crate) async fn favicon() -> Response {
    let (_, content_type, content) = ASSETS[2];
    asset(content_type, content)
}

fn asset(content_type: &'static str, content: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        content,
    )
        .into_response()
}
