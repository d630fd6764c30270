//! Request guards: the Host allowlist, the optional bearer key and optional
//! CORS. Body size is limited in `app.rs` with axum's `DefaultBodyLimit`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Names a loopback bridge always answers to, with any port.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// `host[:port]` to a lowercase host without port or trailing dot; IPv6
/// literals keep their brackets (`[::1]`), bare ones get them.
pub fn normalize_host(value: &str) -> String {
    let value = value.trim().to_ascii_lowercase();
    let host = if let Some(rest) = value.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => format!("[{}]", &rest[..end]),
            None => value.clone(),
        }
    } else if value.matches(':').count() > 1 {
        // A bare IPv6 address (only possible in --allow-host).
        format!("[{value}]")
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
            _ => value.clone(),
        }
    };
    host.trim_end_matches('.').to_string()
}

pub fn host_allowed(host: &str, extra: &[String]) -> bool {
    let host = normalize_host(host);
    LOOPBACK_HOSTS.contains(&host.as_str()) || extra.contains(&host)
}

/// DNS-rebinding defense: a page on another site that re-points its name at
/// 127.0.0.1 still sends its own name as Host, and is refused here.
pub async fn check_host(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if !host_allowed(&host, &state.allowed_hosts) {
        tracing::warn!(host, "request refused: Host not allowed");
        return ApiError::HostNotAllowed(host).response_for(req.uri().path());
    }
    next.run(req).await
}

/// Requires `Authorization: Bearer KEY` (or `x-api-key: KEY`) when a key is
/// configured.
pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            // Anthropic's clients send the key as `x-api-key`.
            .or_else(|| req.headers().get("x-api-key").and_then(|h| h.to_str().ok()))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::Unauthorized.response_for(req.uri().path());
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CORS for the configured origins only; without `--cors-origin` this
/// middleware is not installed and browsers keep the same-origin rule.
/// Preflights are answered here, before the key check (browsers send them
/// without credentials).
pub async fn cors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| {
            o.to_str()
                .is_ok_and(|o| state.cors_origins.iter().any(|allowed| allowed == o))
        })
        .cloned();
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key, anthropic-version"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let none: [String; 0] = [];
        for ok in [
            "localhost",
            "localhost:7860",
            "127.0.0.1:1",
            "[::1]:7860",
            "LOCALHOST.",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:7860",
            "localhost.evil",
            "127.0.0.2",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let extra = [normalize_host("Box.lan"), normalize_host("fe80::1")];
        assert!(host_allowed("box.lan:80", &extra));
        assert!(host_allowed("[fe80::1]:7860", &extra));
    }

    #[test]
    fn keys() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
