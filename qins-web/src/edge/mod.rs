//! The edge between qinsd's gRPC API and the HTTP dialects (`/ui`, OpenAI,
//! ollama): what every dialect shares, so that each one only renders.
//!
//! - [`reply`]: qinsd's reply stream as typed items ([`reply::ReplyEvent`]:
//!   delta, done, error), one [`reply::Reply::collect`] for whole replies,
//!   and the one finish-reason mapping ([`reply::Finish`]).
//! - [`params`]: the one parameter table. Every dialect reads its sampling
//!   parameters through [`params::SamplingField`] (its own names, one way to
//!   read each field) and its other members with the same readers; ranges
//!   are qinsd's (the engine's `GenerationRequest::validate`), never
//!   checked here, so its message, naming the field and the rule, is the
//!   one a user sees.
//! - [`model`]: what a request's `model` means ([`model::resolve`]: the
//!   resident model by its name, `.qins` or `:latest`, else a 404 saying
//!   how to load it) and the one model list behind every listing.
//! - [`ApiJson`], the body extractor whose rejections are [`ApiError`]s.
//!
//! # Adding a dialect
//!
//! A dialect is one module under `routes/` (a folder when it has several
//! routes) and a line per route in `app.rs`:
//! 1. Read the body with [`params::object`] (nulls are unset), each member
//!    by name: sampling ones through a table of `(name, SamplingField)`
//!    pairs with [`params::read_sampling`], the others with the readers in
//!    [`params`]; refuse anything unknown by name ([`params::refused`]).
//! 2. Resolve the requested model with [`model::resolve`] (the dialect
//!    says what an omitted one means), build a `ChatRequest`, start it
//!    with `state.daemon.chat` (a refusal of qinsd's names the dialect's
//!    parameter through
//!    [`params::name_refused_param`]) and wrap the stream in a
//!    [`reply::Reply`].
//! 3. Render: [`reply::Reply::collect`] for a whole reply, or
//!    [`reply::Reply::next`] per item for a streamed one, writing the
//!    dialect's own names for [`reply::Finish`] and its error shape for
//!    [`reply::ReplyEvent::Error`].
//!
//! Metrics need nothing: every reply is counted as its `done` goes by.

pub mod model;
pub mod params;
pub mod reply;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use qins_proto::v1::Message;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` whose rejections become [`ApiError`]s (415, 413 or 400) with the
/// JSON error body, instead of axum's plain-text ones.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::BadRequest(rejection.body_text()),
    }
}

/// A conversation message with text only.
pub fn message(role: impl Into<String>, content: impl Into<String>) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        ..Message::default()
    }
}

/// Helpers for the dialects' tests.
#[cfg(test)]
pub mod testing {
    use axum::response::Response;

    use crate::error::ApiError;

    /// The parameter a refusal names; panics on anything else.
    pub fn param_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> String {
        match result {
            Err(ApiError::Param { param, .. }) => param,
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    /// The lines of a streamed response's body.
    pub async fn body_lines(response: Response) -> Vec<String> {
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body");
        String::from_utf8_lossy(&body)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `(event name, data)` of a stream whose events are named (`event:`
    /// lines, as Anthropic's and the Responses API's are).
    pub async fn named_events(response: Response) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        let mut name = String::new();
        for line in body_lines(response).await {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                out.push((name.clone(), serde_json::from_str(data).expect("JSON")));
            }
        }
        out
    }

    /// The names of [`named_events`]' events, in order.
    pub fn event_names(events: &[(String, serde_json::Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }
}
