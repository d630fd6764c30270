//! The OpenAI-compatible API: `POST /v1/chat/completions` ([`chat`]),
//! `POST /v1/completions` ([`mod@completions`], the legacy text API) and
//! `GET /v1/models`; [`responses`] is the Responses API (`/v1/responses`). Both completion endpoints share their request members
//! ([`params::Shared`]), the reply frame ([`Meta`]), usage, finish reasons
//! and the SSE stream ([`sse`]); each renders only its own choices.
//!
//! Choices made where qinsd and OpenAI differ:
//! - `model` is accepted and not checked: whatever is resident answers.
//!   Streamed chunks name the resident model (asked before the reply
//!   starts); whole replies name the model that answered.
//! - finish reasons: `stop`, `length`, `tool_calls`. A reply qinsd cancels
//!   (it is shutting down) ends with an error, 503, not a finish reason:
//!   the text is not the whole reply.
//! - every request parameter is honoured or refused with a 400 naming it
//!   (`params`, over the edge's parameter table).
//! - logprobs are the model's own (before bias, penalties and temperature).
//! - `/v1/models` reports `created: 0`: qinsd does not track creation times.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod logprobs;
pub mod params;
pub mod responses;
pub mod tools;

pub use chat::chat_completions;
pub use completions::completions;
pub use embeddings::embeddings;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use qins_proto::v1::TextDelta;
use serde_json::{Value, json};

use crate::edge::model;
use crate::edge::reply::{Finished, Reply, ReplyEvent, Usage};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = model::listed(&state.daemon)
        .await?
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "qins",
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// `usage`, with the prompt tokens served from the session's cache.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
        "prompt_tokens_details": { "cached_tokens": usage.cached_prompt_tokens },
    })
}

/// What every object of one completion shares.
pub struct Meta {
    pub id: String,
    pub created: u64,
    /// The resident model when the request came.
    pub model: String,
}

impl Meta {
    /// `prefix`: `chatcmpl` or `cmpl`, as OpenAI's ids start.
    pub fn new(prefix: &str, model: String) -> Self {
        Self {
            id: completion_id(prefix),
            created: unix_now(),
            model,
        }
    }

    /// A response object (`object`: its OpenAI type) around `choices`.
    pub fn object(&self, object: &str, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        })
    }

    /// A whole reply: named after the model that answered, with usage.
    pub fn whole(&self, object: &str, choices: Value, finished: &Finished) -> Value {
        let mut body = self.object(object, choices);
        if !finished.model.is_empty() {
            body["model"] = json!(finished.model);
        }
        body["usage"] = usage_json(&finished.usage);
        body
    }
}

/// How an endpoint writes the `choices` of its stream's chunks; [`sse`]
/// does the rest.
pub trait Chunks: Send + 'static {
    /// Chunks before the first delta (chat: the role; completions: the
    /// echoed prompt).
    fn opening(&mut self) -> Vec<Value>;
    fn delta(&mut self, delta: &TextDelta) -> Value;
    /// The last chunks: the finish chunk, after whatever must precede it.
    fn finish(&mut self, finished: &Finished) -> Vec<Value>;
}

/// The stream of one completion: the endpoint's chunks, then the usage
/// chunk if asked for and `[DONE]`. An error ends the stream with OpenAI's
/// error object as data. Dropping the stream (the client left) drops the
/// reply, which stops qinsd.
pub fn sse<C: Chunks>(
    reply: Reply,
    meta: Meta,
    object: &'static str,
    include_usage: bool,
    mut chunks: C,
) -> Response {
    let opening = chunks.opening();
    let chunk = move |meta: &Meta, choices: Value| {
        let mut chunk = meta.object(object, choices);
        // OpenAI sends `"usage": null` on every chunk when usage was asked for.
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        data(&chunk)
    };
    let first: Vec<Event> = opening.into_iter().map(|c| chunk(&meta, c)).collect();
    let rest = stream::unfold(Some((reply, meta, chunks)), move |state| async move {
        let (mut reply, meta, mut chunks) = state?;
        let events = match reply.next().await? {
            ReplyEvent::Delta(delta) => {
                let event = chunk(&meta, chunks.delta(&delta));
                return Some((vec![event], Some((reply, meta, chunks))));
            }
            ReplyEvent::Done(finished) => {
                let mut events: Vec<Event> = chunks
                    .finish(&finished)
                    .into_iter()
                    .map(|c| chunk(&meta, c))
                    .collect();
                if include_usage {
                    let mut last = meta.object(object, json!([]));
                    last["usage"] = usage_json(&finished.usage);
                    events.push(data(&last));
                }
                events.push(Event::default().data("[DONE]"));
                events
            }
            ReplyEvent::Error(error) => vec![data(&error.body())],
        };
        Some((events, None))
    });
    let events = stream::iter(first)
        .chain(rest.flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unique within this process and unlikely to repeat across restarts;
/// ids only need to tell completions apart, not be secret.
pub fn completion_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos:x}{n:04x}")
}

/// A streamed response's `data:` payloads, for the endpoints' tests.
#[cfg(test)]
pub async fn stream_payloads(response: Response) -> Vec<String> {
    crate::edge::testing::body_lines(response)
        .await
        .into_iter()
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_names_cached_tokens() {
        let usage = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 4,
            completion_tokens: 2,
        };
        let json = usage_json(&usage);
        assert_eq!(json["total_tokens"], 12);
        assert_eq!(json["prompt_tokens_details"]["cached_tokens"], 4);
    }
}
