//! `POST /v1/chat/completions`, streamed or not. The module doc of
//! `routes/openai` says where qins and OpenAI differ; `params` reads the
//! members both endpoints share.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use qins_proto::v1::{ChatRequest, Message, ResponseFormat, TextDelta, TokenLogprob};
use serde::Deserialize;
use serde_json::{Value, json};

use super::logprobs::chat_logprobs;
use super::params::{self, Shared};
use super::{Chunks, Meta, sse, tools};
use crate::edge::model::{self, Omitted};
use crate::edge::reply::{Finished, Reply};
use crate::edge::{ApiJson, message};
use crate::error::ApiError;
use crate::state::AppState;

/// qinsd's names of the fields chat sets outside the sampling table, for
/// naming qinsd's refusals ([`params::name_refused`]).
const QINSD_NAMES: &[(&str, &str)] = &[
    ("top_logprobs", "top_logprobs"),
    ("max_tokens", "max_tokens"),
];

/// A chat completion request, read by [`ChatBody::parse`].
#[derive(Debug)]
pub struct ChatBody {
    model: Option<String>,
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
        let mut shared = Shared::default();
        let mut request = ChatRequest::default();
        let mut messages = None;
        let (mut max_tokens, mut max_completion_tokens) = (None, None);
        let mut logprobs = false;
        let mut top_logprobs = None;
        for (name, value) in params::object(body)? {
            let Some(value) = shared.read(&name, value)? else {
                continue;
            };
            let name = name.as_str();
            match name {
                "messages" => messages = Some(parse_messages(value)?),
                "max_tokens" => max_tokens = Some(params::uint32(name, &value)?),
                "max_completion_tokens" => {
                    max_completion_tokens = Some(params::uint32(name, &value)?)
                }
                "logprobs" => logprobs = params::boolean(name, &value)?,
                // At most qinsd's limit: its INVALID_ARGUMENT names the field.
                "top_logprobs" => top_logprobs = Some(params::uint32(name, &value)?),
                // Requests sharing a key share a qinsd session: the K/V of
                // their common prompt prefix is reused.
                "prompt_cache_key" => request.session_id = params::string(name, value)?,
                // An end-user identifier, as `user`.
                "safety_identifier" => {
                    params::string(name, value)?;
                }
                "response_format" => request.response_format = response_format(&value)?,
                "tools" => request.tools = tools::tools(&value)?,
                "tool_choice" => request.tool_choice = tools::tool_choice(&value)?,
                // Several calls in one reply unless false (OpenAI's default).
                "parallel_tool_calls" => {
                    request.disable_parallel_tool_calls = !params::boolean(name, &value)?;
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
        if top_logprobs.is_some() && !logprobs {
            return Err(params::invalid("top_logprobs", "needs logprobs: true"));
        }
        request.logprobs = logprobs;
        request.top_logprobs = top_logprobs.unwrap_or(0);
        request.messages = messages.ok_or_else(|| params::invalid("messages", "is required"))?;
        let Shared {
            model,
            mut sampling,
            stream,
            include_usage,
        } = shared;
        // OpenAI's newer name wins over the deprecated one.
        sampling.max_tokens = max_completion_tokens.or(max_tokens);
        request.sampling = Some(sampling);
        Ok(Self {
            model,
            request,
            stream,
            include_usage,
            logprobs,
        })
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

/// `response_format`: `{"type", "json_schema": {"schema", ...}}`, read by
/// the rule the Responses API's `text.format` shares.
fn response_format(value: &Value) -> Result<Option<ResponseFormat>, ApiError> {
    let schema = value.get("json_schema").and_then(|s| s.get("schema"));
    params::output_format("response_format", value, schema, "json_schema.schema")
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
            "tool_calls" => tool_calls = tools::message_calls(&path(&name), &value)?,
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
        model,
        request,
        stream,
        include_usage,
        logprobs,
    } = ChatBody::parse(body)?;
    // Streamed chunks name the model before the reply's `done` does.
    let model = model::resolve(&state.daemon, model.as_deref(), Omitted::Refused).await?;
    let started = state.daemon.chat(request).await;
    let reply = Reply::new(started.map_err(|e| params::name_refused(e, QINSD_NAMES))?);
    let meta = Meta::new("chatcmpl", model);
    if stream {
        let chunks = ChatChunks { logprobs };
        Ok(sse(
            reply,
            meta,
            "chat.completion.chunk",
            include_usage,
            chunks,
        ))
    } else {
        let whole = reply.collect().await?;
        let choices = json!([{
            "index": 0,
            "message": reply_message(whole.text, &whole.finished),
            "logprobs": logprobs_json(logprobs, &whole.logprobs),
            "finish_reason": whole.finished.finish.as_str(),
        }]);
        Ok(Json(meta.whole("chat.completion", choices, &whole.finished)).into_response())
    }
}

/// A choice's `logprobs`: the tokens when the request asked, else null.
fn logprobs_json(asked: bool, tokens: &[TokenLogprob]) -> Value {
    if asked {
        chat_logprobs(tokens)
    } else {
        Value::Null
    }
}

/// The reply's message: its text, or its tool calls (content null).
fn reply_message(text: String, finished: &Finished) -> Value {
    if finished.tool_calls.is_empty() {
        json!({ "role": "assistant", "content": text })
    } else {
        json!({
            "role": "assistant",
            "content": Value::Null,
            "tool_calls": tools::calls_json(&finished.tool_calls, false),
        })
    }
}

/// Chat chunks: the role first, content deltas, the tool calls whole in
/// one delta before the finish chunk.
struct ChatChunks {
    logprobs: bool,
}

impl Chunks for ChatChunks {
    fn opening(&mut self) -> Vec<Value> {
        vec![json!([{
            "index": 0,
            "delta": { "role": "assistant", "content": "" },
            "logprobs": Value::Null,
            "finish_reason": Value::Null,
        }])]
    }

    fn delta(&mut self, delta: &TextDelta) -> Value {
        json!([{
            "index": 0,
            "delta": { "content": delta.text },
            "logprobs": logprobs_json(self.logprobs, &delta.logprobs),
            "finish_reason": Value::Null,
        }])
    }

    fn finish(&mut self, finished: &Finished) -> Vec<Value> {
        let mut chunks = Vec::new();
        if !finished.tool_calls.is_empty() {
            chunks.push(json!([{
                "index": 0,
                "delta": { "tool_calls": tools::calls_json(&finished.tool_calls, true) },
                "logprobs": Value::Null,
                "finish_reason": Value::Null,
            }]));
        }
        chunks.push(json!([{
            "index": 0,
            "delta": {},
            "logprobs": Value::Null,
            "finish_reason": finished.finish.as_str(),
        }]));
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream_payloads;
    use super::*;
    use crate::edge::reply::testing::{calls_done, delta, done, reply, unknown};
    use crate::edge::testing::param_of;
    use qins_proto::v1::{FinishReason, response_format};

    fn param(body: Value) -> String {
        param_of(ChatBody::parse(body))
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
    fn parallel_tool_calls_are_allowed_unless_false() {
        let disabled = |extra: Value| {
            let mut body = json!({ "messages": user() });
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            ChatBody::parse(body)
                .expect("accepted")
                .request
                .disable_parallel_tool_calls
        };
        assert!(!disabled(json!({})));
        assert!(!disabled(json!({ "parallel_tool_calls": true })));
        assert!(disabled(json!({ "parallel_tool_calls": false })));
        assert_eq!(
            param(json!({ "messages": user(), "parallel_tool_calls": "no" })),
            "parallel_tool_calls"
        );
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
        for (name, value) in [("seed", json!(-2)), ("top_k", json!("many"))] {
            assert_eq!(param(with(name, value)), name);
        }
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

    #[test]
    fn limits_are_qinsd_s_and_negative_seed_and_top_k_follow_the_table() {
        // Past qinsd's limit of 20: sent, for qinsd to refuse with its rule.
        let body = json!({ "messages": user(), "logprobs": true, "top_logprobs": 21,
                           "seed": -1, "top_k": -1 });
        let request = ChatBody::parse(body).expect("accepted").request;
        assert_eq!(request.top_logprobs, 21);
        let sampling = request.sampling.expect("sampling");
        assert_eq!(sampling.seed, None, "-1: a fresh seed");
        assert_eq!(sampling.top_k, Some(0), "negative: no limit");
    }

    fn streamed(events: Vec<Result<qins_proto::v1::ChatEvent, tonic::Status>>) -> Response {
        let meta = Meta::new("chatcmpl", "tiny".into());
        let chunks = ChatChunks { logprobs: false };
        sse(reply(events), meta, "chat.completion.chunk", true, chunks)
    }

    #[tokio::test]
    async fn a_stream_ends_with_finish_usage_and_done() {
        let payloads = stream_payloads(streamed(vec![
            delta("Hi"),
            unknown(),
            done(FinishReason::Length),
        ]))
        .await;
        let chunks: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).expect("JSON"))
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            chunks[3]["usage"]["prompt_tokens_details"]["cached_tokens"],
            4
        );
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    }

    #[tokio::test]
    async fn several_calls_stream_with_their_indexes() {
        use qins_proto::v1::ToolCall;
        let call = |id: &str, city: &str| ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: json!({ "city": city }).to_string(),
        };
        let done = calls_done(vec![call("call_a", "Paris"), call("call_b", "Rome")]);
        let payloads = stream_payloads(streamed(vec![done])).await;
        let chunks: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).expect("JSON"))
            .collect();
        let calls = &chunks[1]["choices"][0]["delta"]["tool_calls"];
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[1]["index"], 1);
        assert_eq!(calls[1]["function"]["arguments"], r#"{"city":"Rome"}"#);
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[tokio::test]
    async fn a_cancelled_reply_ends_with_an_error_not_stop() {
        let payloads =
            stream_payloads(streamed(vec![delta("Hi"), done(FinishReason::Cancelled)])).await;
        let last: Value = serde_json::from_str(payloads.last().expect("a payload")).expect("JSON");
        assert_eq!(last["error"]["code"], "qinsd_unreachable");
        assert!(
            payloads
                .iter()
                .all(|p| !p.contains("finish_reason\":\"stop"))
        );
    }
}
