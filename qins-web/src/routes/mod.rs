//! HTTP handlers, plus what the chat routes share: the JSON body extractor
//! and the translation into qinsd's `ChatRequest`.

pub mod chat;
pub mod completions;
pub mod health;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod openai_logprobs;
pub mod openai_params;
pub mod openai_tools;
pub mod page;
pub mod stats;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use qins_proto::v1::{FinishReason, Message, Sampling};
use serde::Deserialize;
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

/// `stop` as OpenAI takes it: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(stop: Option<Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        }
    }
}

/// Sampling settings common to both chat APIs; unset ones take the model's
/// defaults in qinsd, which also validates the ranges.
#[derive(Debug, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl From<SamplingParams> for Sampling {
    fn from(p: SamplingParams) -> Self {
        Sampling {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            max_tokens: p.max_tokens,
            seed: p.seed,
            repetition_penalty: None,
            stop: p.stop,
            ..Sampling::default()
        }
    }
}

pub fn message(role: impl Into<String>, content: impl Into<String>) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        ..Message::default()
    }
}

/// The bridge's name for a finish reason (`/ui/chat` reports it as is).
pub fn finish_reason_name(raw: i32) -> &'static str {
    match FinishReason::try_from(raw) {
        Ok(FinishReason::Stop) => "stop",
        Ok(FinishReason::Length) => "length",
        Ok(FinishReason::Cancelled) => "cancelled",
        Ok(FinishReason::ToolCalls) => "tool_calls",
        _ => "unspecified",
    }
}
