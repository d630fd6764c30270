//! The chat page and its assets, compiled into the binary (no CDN, no files
//! to install next to it), with the vendored Markdown parser and sanitizer
//! (`assets/vendor/README.md`).

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
const MARKED_JS: &str = include_str!("../../assets/vendor/marked.umd.js");
const PURIFY_JS: &str = include_str!("../../assets/vendor/purify.min.js");

/// Everything the page loads comes from this origin; inline scripts and
/// framing are off.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

pub async fn marked_js() -> Response {
    asset("text/javascript; charset=utf-8", MARKED_JS)
}

pub async fn purify_js() -> Response {
    asset("text/javascript; charset=utf-8", PURIFY_JS)
}
