//! ollama's API over qinsd, for the tools that find local models through
//! it: `GET /api/version`, `GET /api/tags`, `POST /api/show`, `GET /api/ps`,
//! `POST /api/chat`, `POST /api/generate`. Field names and shapes follow
//! ollama's `docs/api.md`; what differs is listed in TECHNICAL_SPEC.md
//! ("ollama's API").
//!
//! Choices made where qinsd and ollama differ:
//! - Names carry ollama's `:latest` tag (`smollm2:latest`); requests may
//!   name a model with or without it.
//! - qinsd keeps one model resident and qins-web does not switch it: a chat
//!   naming another model gets a 404 that says how to load it.
//! - Errors are ollama's `{"error": "message"}`, with the status codes the
//!   rest of qins-web uses.

mod chat;
mod embed;
mod models;
pub mod options;

pub use chat::{chat, generate};
pub use embed::{embed, embeddings};
pub use models::{ps, show, tags, version};

use axum::Json;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::edge::model::LATEST;
use crate::error::ApiError;

/// A failure on ollama's routes: the same status as elsewhere, ollama's body.
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(self.0.ollama_body())).into_response()
    }
}

/// A qinsd model name as ollama lists it.
fn tagged(name: &str) -> String {
    format!("{name}{LATEST}")
}

/// RFC 3339 in UTC, as ollama's `created_at` and `modified_at`.
fn rfc3339(at: OffsetDateTime) -> String {
    // Formatting a UTC time as RFC 3339 only fails for years past 9999.
    at.format(&Rfc3339).unwrap_or_default()
}

fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// Seconds since the Unix epoch (as qinsd reports times) in RFC 3339;
/// None for 0, which qinsd sends when it does not know.
fn from_unix_seconds(seconds: f64) -> Option<String> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return None;
    }
    let nanos = (seconds * 1e9) as i128;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .map(rfc3339)
}

/// Parameter counts as ollama writes them: `134.5M`, `3.8B`.
fn parameter_size(n: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("B", 1e9), ("M", 1e6), ("K", 1e3)];
    let v = n as f64;
    for (unit, scale) in UNITS {
        if v >= scale {
            return format!("{:.1}{unit}", v / scale);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes() {
        assert_eq!(tagged("tiny"), "tiny:latest");
        assert_eq!(parameter_size(134_515_008), "134.5M");
        assert_eq!(parameter_size(3_821_079_552), "3.8B");
        assert_eq!(parameter_size(40_000), "40.0K");
        assert_eq!(parameter_size(12), "12");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            from_unix_seconds(1_700_000_000.5).as_deref(),
            Some("2023-11-14T22:13:20.5Z")
        );
        assert_eq!(from_unix_seconds(0.0), None);
        assert!(now().ends_with('Z'));
    }
}
