//! The OpenAI-compatible API: `POST /v1/chat/completions` (streaming and not)
//! and `GET /v1/models`.
//!
//! Choices made where qinsd and OpenAI differ:
//! - `model` is accepted and not checked: whatever is resident answers, and
//!   responses name the resident model. (Clients insist on sending a name.)
//! - finish reasons: stop -> "stop", length -> "length"; a cancelled reply
//!   maps to "stop" (only a client that went away cancels, so nobody reads it).
//! - `n` other than 1, tools and non-text content parts are refused (400).
//! - `/v1/models` reports `created: 0`: qinsd does not track creation times.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use qins_proto::v1::{ChatDone, ChatRequest, FinishReason, chat_event};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, SamplingParams, Stop, message};
use crate::app::AppState;
use crate::daemon::ChatStream;
use crate::error::ApiError;

// Unknown fields, `model` among them (see the module comment), are ignored.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    messages: Vec<OaMessage>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct OaMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// OpenAI content: a string, or a list of typed parts of which only text is
/// supported here.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

fn content_text(content: Option<Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => out.push_str(&text),
                    (kind, _) => {
                        return Err(ApiError::BadRequest(format!(
                            "content part type {kind:?} is not supported (text only)"
                        )));
                    }
                }
            }
            Ok(out)
        }
    }
}

impl CompletionRequest {
    fn into_chat(self) -> Result<ChatRequest, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::BadRequest("only n = 1 is supported".into()));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::BadRequest("tools are not supported".into()));
        }
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                // OpenAI's newer name for the system role.
                let role = if m.role == "developer" {
                    "system".to_string()
                } else {
                    m.role
                };
                Ok(message(role, content_text(m.content)?))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: None,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            seed: self.seed,
            stop: Stop::into_vec(self.stop),
        };
        Ok(ChatRequest {
            messages,
            session_id: String::new(),
            sampling: Some(sampling.into()),
            ..ChatRequest::default()
        })
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let stream = body.stream;
    let include_usage = body
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let request = body.into_chat()?;
    // Streamed chunks name the model before the reply's `done` does.
    let model = state.daemon.stats().await?.model;
    let grpc = state.daemon.chat(request).await?;
    let meta = Meta {
        id: completion_id(),
        created: unix_now(),
        model,
    };
    if stream {
        Ok(Sse::new(chunks(grpc, meta, include_usage))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        Ok(Json(collect(grpc, meta).await?).into_response())
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        })
    }
}

fn finish_reason(done: &ChatDone) -> &'static str {
    match FinishReason::try_from(done.finish_reason) {
        Ok(FinishReason::Length) => "length",
        _ => "stop",
    }
}

fn usage_json(done: &ChatDone) -> Value {
    let usage = done.usage.unwrap_or_default();
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cached_prompt_tokens },
    })
}

async fn collect(mut grpc: ChatStream, meta: Meta) -> Result<Value, ApiError> {
    let mut text = String::new();
    loop {
        match grpc.message().await?.and_then(|e| e.event) {
            Some(chat_event::Event::Delta(d)) => text.push_str(&d.text),
            Some(chat_event::Event::Done(done)) => {
                return Ok(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": if done.model.is_empty() { meta.model } else { done.model.clone() },
                    "system_fingerprint": Value::Null,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "logprobs": Value::Null,
                        "finish_reason": finish_reason(&done),
                    }],
                    "usage": usage_json(&done),
                }));
            }
            None => {
                return Err(ApiError::Upstream(
                    "the reply ended without a done event".into(),
                ));
            }
        }
    }
}

/// Where the chunk stream is: the role chunk goes first, then content, then
/// the finish chunk, the usage chunk if asked for, and `[DONE]`.
enum Phase {
    Start,
    Content,
    Finished,
}

struct ChunkState {
    grpc: ChatStream,
    meta: Meta,
    include_usage: bool,
    phase: Phase,
    /// Events still to send after the one just produced.
    pending: Vec<Event>,
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

fn chunks(
    grpc: ChatStream,
    meta: Meta,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = ChunkState {
        grpc,
        meta,
        include_usage,
        phase: Phase::Start,
        pending: Vec::new(),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if let Some(event) = st.pending.pop() {
            return Some((Ok(event), st));
        }
        match st.phase {
            Phase::Finished => None,
            Phase::Start => {
                st.phase = Phase::Content;
                let choice = json!([{
                    "index": 0,
                    "delta": { "role": "assistant", "content": "" },
                    "logprobs": Value::Null,
                    "finish_reason": Value::Null,
                }]);
                let chunk = st.with_usage(st.meta.chunk(choice));
                Some((Ok(data(&chunk)), st))
            }
            Phase::Content => {
                let event = st.next_content().await;
                Some((Ok(event), st))
            }
        }
    })
}

impl ChunkState {
    /// OpenAI sends `"usage": null` on every chunk when usage was asked for.
    fn with_usage(&self, mut chunk: Value) -> Value {
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    async fn next_content(&mut self) -> Event {
        loop {
            let event = match self.grpc.message().await {
                Ok(Some(ev)) => ev.event,
                Ok(None) => {
                    let e = ApiError::Upstream("the reply ended without a done event".into());
                    return self.finish_with(data(&e.body()));
                }
                Err(status) => return self.finish_with(data(&ApiError::from(status).body())),
            };
            match event {
                Some(chat_event::Event::Delta(d)) if !d.text.is_empty() => {
                    let choice = json!([{
                        "index": 0,
                        "delta": { "content": d.text },
                        "logprobs": Value::Null,
                        "finish_reason": Value::Null,
                    }]);
                    return data(&self.with_usage(self.meta.chunk(choice)));
                }
                Some(chat_event::Event::Done(done)) => {
                    let choice = json!([{
                        "index": 0,
                        "delta": {},
                        "logprobs": Value::Null,
                        "finish_reason": finish_reason(&done),
                    }]);
                    let last = data(&self.with_usage(self.meta.chunk(choice)));
                    if self.include_usage {
                        let mut usage = self.meta.chunk(json!([]));
                        usage["usage"] = usage_json(&done);
                        // `pending` is popped from the end.
                        self.pending = vec![Event::default().data("[DONE]"), data(&usage)];
                    } else {
                        self.pending = vec![Event::default().data("[DONE]")];
                    }
                    self.phase = Phase::Finished;
                    return last;
                }
                // Empty deltas carry nothing for the client.
                Some(chat_event::Event::Delta(_)) | None => continue,
            }
        }
    }

    /// An error ends the stream: OpenAI sends the error object as data.
    fn finish_with(&mut self, event: Event) -> Event {
        self.phase = Phase::Finished;
        self.pending.clear();
        event
    }
}

pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let reply = state.daemon.list_models().await?;
    let data: Vec<Value> = reply
        .models
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unique within this process and unlikely to repeat across restarts;
/// ids only need to tell completions apart, not be secret.
fn completion_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("chatcmpl-{nanos:x}{n:04x}")
}
