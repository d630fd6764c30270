//! The OpenAI-compatible API: `POST /v1/chat/completions` (streaming and not)
//! and `GET /v1/models`.
//!
//! Choices made where qinsd and OpenAI differ:
//! - `model` is accepted and not checked: whatever is resident answers, and
//!   responses name the resident model. (Clients insist on sending a name.)
//! - finish reasons: stop -> "stop", length -> "length"; a cancelled reply
//!   maps to "stop" (only a client that went away cancels, so nobody reads it).
//! - every request parameter is honoured or refused with a 400 naming it
//!   (`openai_params`); `n` other than 1, tools and non-text content parts
//!   are refused. `response_format` JSON goes to qinsd's grammar-constrained
//!   decoding; a `json_schema` is enforced whether `strict` or not.
//! - logprobs are the model's own (before bias, penalties and temperature).
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
use qins_proto::v1::{
    ChatDone, ChatRequest, FinishReason, Message, ResponseFormat, Sampling, TokenLogprob,
    chat_event, response_format,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::openai_logprobs::chat_logprobs;
use super::openai_params as params;
use super::openai_tools;
use super::{ApiJson, message};
use crate::app::AppState;
use crate::daemon::ChatStream;
use crate::error::ApiError;

/// A chat completion request, read by [`ChatBody::parse`].
#[derive(Debug)]
pub struct ChatBody {
    request: ChatRequest,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
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

impl ChatBody {
    /// Reads every parameter of the body; see `openai_params` for the rules.
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        let mut sampling = Sampling::default();
        let mut messages = None;
        let (mut max_tokens, mut max_completion_tokens) = (None, None);
        let mut out = Self {
            request: ChatRequest::default(),
            stream: false,
            include_usage: false,
            logprobs: false,
        };
        let mut top_logprobs = None;
        for (name, value) in params::object(body)? {
            if params::sampling_param(&mut sampling, &name, &value)? {
                continue;
            }
            let name = name.as_str();
            match name {
                // Accepted, not checked: see the module comment.
                "model" => {
                    params::string(name, value)?;
                }
                "messages" => messages = Some(parse_messages(value)?),
                "max_tokens" => max_tokens = Some(params::uint32(name, &value)?),
                "max_completion_tokens" => {
                    max_completion_tokens = Some(params::uint32(name, &value)?)
                }
                "stream" => out.stream = params::boolean(name, &value)?,
                "stream_options" => out.include_usage = params::include_usage(value)?,
                "logprobs" => out.logprobs = params::boolean(name, &value)?,
                "top_logprobs" => top_logprobs = Some(params::uint32(name, &value)?),
                // Requests sharing a key share a qinsd session: the K/V of
                // their common prompt prefix is reused.
                "prompt_cache_key" => out.request.session_id = params::string(name, value)?,
                // End-user identifiers: qins serves its local user and keeps
                // nothing per user.
                "user" | "safety_identifier" => {
                    params::string(name, value)?;
                }
                "n" => params::one_choice(name, &value)?,
                "response_format" => out.request.response_format = response_format(&value)?,
                "tools" => out.request.tools = openai_tools::tools(&value)?,
                "tool_choice" => out.request.tool_choice = openai_tools::tool_choice(&value)?,
                // A reply makes at most one call, which either value allows.
                "parallel_tool_calls" => {
                    params::boolean(name, &value)?;
                }
                "store" => params::only(
                    name,
                    &value,
                    json!(false),
                    "qins-web does not store completions",
                )?,
                "service_tier" => {
                    if !matches!(value.as_str(), Some("auto" | "default")) {
                        return Err(params::refused(
                            name,
                            "qins has one service tier, \"default\"",
                        ));
                    }
                }
                "modalities" => {
                    params::only(name, &value, json!(["text"]), "qins replies in text")?
                }
                _ => return Err(params::refused(name, unsupported_chat_param(name))),
            }
        }
        if top_logprobs.is_some() && !out.logprobs {
            return Err(params::invalid("top_logprobs", "needs logprobs: true"));
        }
        if let Some(top) = top_logprobs {
            if u64::from(top) > params::MAX_TOP_LOGPROBS {
                return Err(params::invalid(
                    "top_logprobs",
                    &format!("must be at most {}", params::MAX_TOP_LOGPROBS),
                ));
            }
            out.request.top_logprobs = top;
        }
        out.request.logprobs = out.logprobs;
        out.request.messages =
            messages.ok_or_else(|| params::invalid("messages", "is required"))?;
        // OpenAI's newer name wins over the deprecated one.
        sampling.max_tokens = max_completion_tokens.or(max_tokens);
        out.request.sampling = Some(sampling);
        Ok(out)
    }
}

/// Why a parameter outside the honoured set is refused.
fn unsupported_chat_param(name: &str) -> &'static str {
    match name {
        "functions" | "function_call" => "the deprecated functions API; send tools",
        "audio" => "qins replies in text",
        "metadata" => "it tags stored completions, and qins-web stores none",
        "prediction" => "predicted outputs are not supported",
        "reasoning_effort" | "verbosity" => "qins has no reasoning-effort or verbosity control",
        "web_search_options" => "qins does not search the web",
        _ => "it is not a chat completion parameter qins-web knows",
    }
}

/// `response_format`: text, or JSON through qinsd's grammar-constrained
/// decoding. A `json_schema` is always enforced, `strict` or not.
fn response_format(value: &Value) -> Result<Option<ResponseFormat>, ApiError> {
    let format = match value.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => response_format::Format::JsonObject(true),
        Some("json_schema") => {
            let schema = value
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object() || s.is_boolean())
                .ok_or_else(|| {
                    params::invalid(
                        "response_format",
                        "json_schema.schema is required (a JSON schema object)",
                    )
                })?;
            response_format::Format::JsonSchema(schema.to_string())
        }
        _ => {
            return Err(params::invalid(
                "response_format",
                "type must be \"text\", \"json_object\" or \"json_schema\"",
            ));
        }
    };
    Ok(Some(ResponseFormat {
        format: Some(format),
    }))
}

/// The conversation: roles and text content; anything else a message can
/// carry is refused with its path (`messages[2].tool_calls`).
fn parse_messages(value: Value) -> Result<Vec<Message>, ApiError> {
    let Value::Array(items) = value else {
        return Err(params::invalid("messages", "must be a list of messages"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_message(i, item))
        .collect()
}

fn parse_message(index: usize, item: Value) -> Result<Message, ApiError> {
    let path = |field: &str| format!("messages[{index}].{field}");
    let mut role = None;
    let mut content = None;
    let mut tool_calls = Vec::new();
    let mut tool_call_id = String::new();
    for (name, value) in params::object(item)
        .map_err(|_| params::invalid(&format!("messages[{index}]"), "must be an object"))?
    {
        match name.as_str() {
            "role" => role = Some(params::string(&path("role"), value)?),
            "content" => {
                content = Some(serde_json::from_value::<Content>(value).map_err(|_| {
                    params::invalid(&path("content"), "must be a string or a list of parts")
                })?)
            }
            "name" => {
                return Err(params::refused(
                    &path("name"),
                    "chat templates have no place for participant names",
                ));
            }
            "tool_calls" => tool_calls = openai_tools::message_calls(&path(&name), &value)?,
            "tool_call_id" => tool_call_id = params::string(&path(&name), value)?,
            "function_call" => {
                return Err(params::refused(
                    &path(&name),
                    "the deprecated functions API; send tool_calls",
                ));
            }
            _ => return Err(params::refused(&path(&name), "unknown message field")),
        }
    }
    let role = role.ok_or_else(|| params::invalid(&path("role"), "is required"))?;
    let role = match role.as_str() {
        // OpenAI's newer name for the system role.
        "developer" => "system".to_string(),
        "function" => {
            return Err(params::refused(
                &path("role"),
                "the deprecated functions API; send tool messages",
            ));
        }
        _ => role,
    };
    Ok(Message {
        tool_calls,
        tool_call_id,
        ..message(role, content_text(content)?)
    })
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let ChatBody {
        request,
        stream,
        include_usage,
        logprobs,
    } = ChatBody::parse(body)?;
    // Streamed chunks name the model before the reply's `done` does.
    let model = state.daemon.stats().await?.model;
    let grpc = state.daemon.chat(request).await?;
    let meta = Meta {
        id: completion_id("chatcmpl"),
        created: unix_now(),
        model,
        logprobs,
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
    /// The request asked for logprobs: choices carry them, else null.
    logprobs: bool,
}

impl Meta {
    fn logprobs(&self, tokens: &[TokenLogprob]) -> Value {
        if self.logprobs {
            chat_logprobs(tokens)
        } else {
            Value::Null
        }
    }

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
        Ok(FinishReason::ToolCalls) => "tool_calls",
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

/// The reply's message: its text, or its tool calls (content null).
fn reply_message(text: String, done: &ChatDone) -> Value {
    if done.tool_calls.is_empty() {
        json!({ "role": "assistant", "content": text })
    } else {
        json!({
            "role": "assistant",
            "content": Value::Null,
            "tool_calls": openai_tools::calls_json(&done.tool_calls, false),
        })
    }
}

async fn collect(mut grpc: ChatStream, meta: Meta) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        match grpc.message().await?.and_then(|e| e.event) {
            Some(chat_event::Event::Delta(d)) => {
                text.push_str(&d.text);
                tokens.extend(d.logprobs);
            }
            Some(chat_event::Event::Done(done)) => {
                let logprobs = meta.logprobs(&tokens);
                return Ok(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": if done.model.is_empty() { meta.model } else { done.model.clone() },
                    "system_fingerprint": Value::Null,
                    "choices": [{
                        "index": 0,
                        "message": reply_message(text, &done),
                        "logprobs": logprobs,
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
                Some(chat_event::Event::Delta(d))
                    if !d.text.is_empty() || !d.logprobs.is_empty() =>
                {
                    let choice = json!([{
                        "index": 0,
                        "delta": { "content": d.text },
                        "logprobs": self.meta.logprobs(&d.logprobs),
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
                    let mut last = data(&self.with_usage(self.meta.chunk(choice)));
                    // `pending` is popped from the end.
                    self.pending = vec![Event::default().data("[DONE]")];
                    if self.include_usage {
                        let mut usage = self.meta.chunk(json!([]));
                        usage["usage"] = usage_json(&done);
                        self.pending.push(data(&usage));
                    }
                    // The calls come whole, in one delta before the finish.
                    if !done.tool_calls.is_empty() {
                        self.pending.push(last);
                        let calls = openai_tools::calls_json(&done.tool_calls, true);
                        let choice = json!([{
                            "index": 0,
                            "delta": { "tool_calls": calls },
                            "logprobs": Value::Null,
                            "finish_reason": Value::Null,
                        }]);
                        last = data(&self.with_usage(self.meta.chunk(choice)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: Value) -> String {
        match ChatBody::parse(body) {
            Err(ApiError::Param { param, .. }) => param,
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    fn user() -> Value {
        json!([{ "role": "user", "content": "hi" }])
    }

    #[test]
    fn honoured_parameters_reach_the_request() {
        let body = ChatBody::parse(json!({
            "model": "m", "messages": [
                { "role": "developer", "content": "Be brief." },
                { "role": "user", "content": [{ "type": "text", "text": "hi" }] },
                { "role": "assistant", "content": null }],
            "max_tokens": 9, "max_completion_tokens": 5, "presence_penalty": 0.5,
            "frequency_penalty": 0.25, "min_p": 0.1, "logit_bias": { "3": -100 },
            "logprobs": true, "top_logprobs": 4, "stream": true,
            "stream_options": { "include_usage": true }, "prompt_cache_key": "conv-1",
            "n": 1, "store": false, "tools": [], "tool_choice": "none",
            "response_format": { "type": "text" }, "user": "u", "seed": null,
        }))
        .expect("accepted");
        assert!(body.stream && body.include_usage && body.logprobs);
        let request = body.request;
        assert_eq!(request.messages.len(), 3);
        assert_eq!(request.messages[0].role, "system");
        assert_eq!(request.messages[1].content, "hi");
        assert_eq!(request.session_id, "conv-1");
        assert!(request.logprobs);
        assert_eq!(request.top_logprobs, 4);
        let sampling = request.sampling.expect("sampling");
        assert_eq!(sampling.max_tokens, Some(5), "max_completion_tokens wins");
        assert_eq!(sampling.presence_penalty, Some(0.5));
        assert_eq!(sampling.frequency_penalty, Some(0.25));
        assert_eq!(sampling.min_p, Some(0.1));
        assert_eq!(sampling.logit_bias.get(&3), Some(&-100.0));
        assert_eq!(sampling.seed, None);
    }

    #[test]
    fn response_formats_become_grammars() {
        let parse = |format: Value| {
            ChatBody::parse(json!({ "messages": user(), "response_format": format }))
                .expect("accepted")
                .request
                .response_format
                .and_then(|f| f.format)
        };
        assert_eq!(parse(json!({ "type": "text" })), None);
        assert_eq!(
            parse(json!({ "type": "json_object" })),
            Some(response_format::Format::JsonObject(true))
        );
        let schema = json!({ "type": "object", "properties": { "a": { "type": "integer" } } });
        let Some(response_format::Format::JsonSchema(text)) = parse(json!({
            "type": "json_schema",
            "json_schema": { "name": "x", "schema": schema, "strict": true },
        })) else {
            panic!("a schema");
        };
        assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), schema);
    }

    #[test]
    fn everything_else_is_refused_by_name() {
        let with = |name: &str, value: Value| {
            let mut body = json!({ "messages": user() });
            body[name] = value;
            body
        };
        for (name, value) in [
            ("response_format", json!({ "type": "xml" })),
            (
                "response_format",
                json!({ "type": "json_schema", "json_schema": {} }),
            ),
            ("tools", json!({ "type": "function" })),
            ("tool_choice", json!("sometimes")),
            ("n", json!(2)),
            ("store", json!(true)),
            ("audio", json!({})),
            ("reasoning_effort", json!("low")),
            ("functions", json!([])),
            ("frobnicate", json!(1)),
            ("top_logprobs", json!(2)),
            ("temperature", json!("hot")),
        ] {
            assert_eq!(param(with(name, value)), name);
        }
        let too_many = json!({ "messages": user(), "logprobs": true, "top_logprobs": 21 });
        assert_eq!(param(too_many), "top_logprobs");
        assert_eq!(param(json!({})), "messages");
        for (message, path) in [
            (
                json!({ "role": "user", "content": "x", "name": "bob" }),
                "messages[0].name",
            ),
            (
                json!({ "role": "function", "content": "x" }),
                "messages[0].role",
            ),
            (
                json!({ "role": "assistant", "tool_calls": 5 }),
                "messages[0].tool_calls",
            ),
            (
                json!({ "role": "user", "content": 5 }),
                "messages[0].content",
            ),
            (json!({ "content": "x" }), "messages[0].role"),
        ] {
            assert_eq!(param(json!({ "messages": [message] })), path);
        }
    }
}
