//! `POST /api/chat` and `POST /api/generate`: NDJSON streaming by default
//! (one JSON object per line, `"done": false` with the text, then one
//! `"done": true` with the counts and durations), or one object with
//! `"stream": false`.
//!
//! `format` (`"json"` or a JSON schema) goes to qinsd's grammar-constrained
//! decoding, `tools` to qinsd's tool calls (calls come in the last object's
//! `message.tool_calls`). Refused with a 400 naming the field, since qinsd
//! cannot do them yet: `think`, `logprobs`, images, generate's `suffix`,
//! `template` and `context`. Accepted and ignored: `keep_alive` (qinsd keeps its model
//! resident until `qins unload`). Unknown fields are refused too. Generate's
//! `raw: true` sends the prompt as is, without the chat template.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use qins_proto::v1::{
    ChatRequest, Message, ResponseFormat, Sampling, Tool, ToolCall, response_format,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{OllamaError, now, options};
use crate::edge::model::{self, Omitted};
use crate::edge::reply::{Finish, Finished, Reply, ReplyEvent};
use crate::edge::{ApiJson, message};
use crate::error::ApiError;
use crate::routes::openai::tools as openai_tools;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    /// Absent reads as `""`: `edge::model` says it is required.
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    /// Ignored: see the module comment.
    #[allow(dead_code)]
    keep_alive: Option<Value>,
    tools: Option<Vec<Value>>,
    think: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: String,
    images: Option<Vec<Value>>,
    tool_calls: Option<Vec<Value>>,
    tool_name: Option<String>,
    thinking: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// Absent reads as `""`: `edge::model` says it is required.
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    suffix: Option<String>,
    template: Option<String>,
    context: Option<Vec<Value>>,
    raw: Option<bool>,
    images: Option<Vec<Value>>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    /// Ignored: see the module comment.
    #[allow(dead_code)]
    keep_alive: Option<Value>,
    think: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
}

/// `/api/chat` answers with `message`, `/api/generate` with `response`.
#[derive(Clone, Copy)]
enum Shape {
    Chat,
    Generate,
}

/// A request of either route, checked and translated.
struct Turn {
    model: String,
    messages: Vec<Message>,
    /// Generate's `raw: true`: the prompt without the chat template.
    raw_prompt: Option<String>,
    tools: Vec<Tool>,
    /// `format`: JSON output through qinsd's grammar-constrained decoding.
    format: Option<ResponseFormat>,
    sampling: Sampling,
    stream: bool,
    shape: Shape,
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<ChatBody>, ApiError>,
) -> Result<Response, OllamaError> {
    let ApiJson(body) = body?;
    let turn = body.into_turn()?;
    Ok(run(&state, turn).await?)
}

pub async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<GenerateBody>, ApiError>,
) -> Result<Response, OllamaError> {
    let ApiJson(body) = body?;
    let turn = body.into_turn()?;
    Ok(run(&state, turn).await?)
}

impl ChatBody {
    fn into_turn(self) -> Result<Turn, ApiError> {
        refuse_unsupported(self.think.as_ref(), self.logprobs, self.top_logprobs)?;
        let format = output_format(self.format)?;
        // ollama's tools have OpenAI's shape; ollama has no tool_choice
        // (qinsd's `auto`).
        let tools = match self.tools {
            Some(tools) => openai_tools::tools(&Value::Array(tools))?,
            None => Vec::new(),
        };
        let messages = self
            .messages
            .into_iter()
            .map(ChatMessage::into_message)
            .collect::<Result<_, _>>()?;
        Ok(Turn {
            model: self.model,
            messages,
            raw_prompt: None,
            tools,
            format,
            sampling: options::sampling(self.options)?,
            stream: self.stream.unwrap_or(true),
            shape: Shape::Chat,
        })
    }
}

impl ChatMessage {
    fn into_message(self) -> Result<Message, ApiError> {
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(unsupported(
                "images",
                "the models qinsd runs read text only",
            ));
        }
        // ollama's calls carry arguments as an object, and no id: a result
        // names its tool instead.
        let tool_calls = self
            .tool_calls
            .unwrap_or_default()
            .iter()
            .map(|call| {
                let function = call.get("function");
                let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
                let arguments = function.and_then(|f| f.get("arguments"));
                match (name, arguments) {
                    (Some(name), Some(arguments @ Value::Object(_))) => Ok(ToolCall {
                        id: String::new(),
                        name: name.to_string(),
                        arguments: arguments.to_string(),
                    }),
                    _ => Err(ApiError::BadRequest(
                        "tool_calls: each needs function.name and function.arguments (an object)"
                            .into(),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.thinking.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported("thinking", "qinsd runs no thinking models"));
        }
        Ok(Message {
            tool_calls,
            tool_call_id: self.tool_name.unwrap_or_default(),
            ..message(self.role, self.content)
        })
    }
}

impl GenerateBody {
    fn into_turn(self) -> Result<Turn, ApiError> {
        refuse_unsupported(self.think.as_ref(), self.logprobs, self.top_logprobs)?;
        let format = output_format(self.format)?;
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported("suffix", "fill-in-the-middle is not supported"));
        }
        if self.template.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported(
                "template",
                "the model's own chat template (stored in its .qins file) is always used",
            ));
        }
        let raw = self.raw == Some(true);
        if raw && self.system.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(
                "system",
                "with raw: true the prompt is sent as is, with no place for a system message",
            ));
        }
        if self.context.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(unsupported(
                "context",
                "it is deprecated by ollama; send the conversation to /api/chat instead",
            ));
        }
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(unsupported(
                "images",
                "the models qinsd runs read text only",
            ));
        }
        // An empty prompt only asks for the model to be loaded (ollama).
        let mut messages = Vec::new();
        let mut raw_prompt = None;
        if raw {
            raw_prompt = Some(self.prompt).filter(|p| !p.is_empty());
        } else if !self.prompt.is_empty() {
            if let Some(system) = self.system.filter(|s| !s.is_empty()) {
                messages.push(message("system", system));
            }
            messages.push(message("user", self.prompt));
        }
        Ok(Turn {
            model: self.model,
            messages,
            raw_prompt,
            tools: Vec::new(),
            format,
            sampling: options::sampling(self.options)?,
            stream: self.stream.unwrap_or(true),
            shape: Shape::Generate,
        })
    }
}

fn unsupported(field: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!("{field} is not supported: {why}"))
}

/// `format`: `"json"` (a JSON object, as ollama's JSON mode) or a JSON
/// schema; `""` or null is free text.
fn output_format(format: Option<Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let format = match format {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) if s == "json" => response_format::Format::JsonObject(true),
        Some(schema @ Value::Object(_)) => response_format::Format::JsonSchema(schema.to_string()),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format must be \"json\" or a JSON schema object (got {other})"
            )));
        }
    };
    Ok(Some(ResponseFormat {
        format: Some(format),
    }))
}

/// The fields both routes share that qinsd cannot honour yet. Their "off"
/// values (`think: false`, `logprobs: false`) are accepted.
fn refuse_unsupported(
    think: Option<&Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
) -> Result<(), ApiError> {
    let off = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Bool(b)) => !b,
        Some(_) => false,
    };
    if !off(think) {
        return Err(unsupported("think", "qinsd runs no thinking models"));
    }
    if logprobs == Some(true) || top_logprobs.is_some_and(|n| n > 0) {
        return Err(unsupported(
            "logprobs",
            "qinsd does not report log probabilities yet",
        ));
    }
    Ok(())
}

async fn run(state: &AppState, turn: Turn) -> Result<Response, ApiError> {
    model::resolve(&state.daemon, Some(&turn.model), Omitted::Refused).await?;
    if turn.messages.is_empty() && turn.raw_prompt.is_none() {
        return Ok(Json(loaded(&turn)).into_response());
    }
    let request = ChatRequest {
        messages: turn.messages,
        prompt: turn.raw_prompt.unwrap_or_default(),
        tools: turn.tools,
        response_format: turn.format,
        // ollama clients resend the conversation each turn without an id;
        // qinsd prefills the whole prompt for each.
        session_id: String::new(),
        sampling: Some(turn.sampling),
        // ollama has no switch for it: a reply may make several calls
        // (disable_parallel_tool_calls false), as ollama's own do.
        ..ChatRequest::default()
    };
    let reply = Reply::new(state.daemon.chat(request).await?);
    let objects = Objects {
        model: turn.model,
        shape: turn.shape,
    };
    if turn.stream {
        let body = Body::from_stream(ndjson(reply, objects));
        Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
    } else {
        let whole = reply.collect().await?;
        Ok(Json(objects.last(&whole.text, &whole.finished)).into_response())
    }
}

/// ollama's answer to a request with nothing to generate: the model is
/// resident (qinsd always keeps it so).
fn loaded(turn: &Turn) -> Value {
    let reply = Objects {
        model: turn.model.clone(),
        shape: turn.shape,
    };
    let mut body = reply.object("");
    body["done"] = json!(true);
    body["done_reason"] = json!("load");
    body
}

/// What every object of one reply shares.
struct Objects {
    /// As the request named it (ollama echoes it).
    model: String,
    shape: Shape,
}

impl Objects {
    /// An object carrying `text`, not yet done.
    fn object(&self, text: &str) -> Value {
        let mut body = json!({ "model": self.model, "created_at": now() });
        match self.shape {
            Shape::Chat => body["message"] = json!({ "role": "assistant", "content": text }),
            Shape::Generate => body["response"] = json!(text),
        }
        body["done"] = json!(false);
        body
    }

    /// The last object: `text` (empty when the reply was streamed), the
    /// finish reason, token counts and durations in nanoseconds.
    fn last(&self, text: &str, finished: &Finished) -> Value {
        let mut body = self.object(text);
        let (usage, timings) = (&finished.usage, &finished.timings);
        let nanos = |ms: f64| (ms.max(0.0) * 1e6).round() as u64;
        body["done"] = json!(true);
        body["done_reason"] = json!(done_reason(finished.finish));
        body["total_duration"] = json!(nanos(timings.queue_ms + timings.total_ms));
        // The model is resident: nothing is loaded for a request.
        body["load_duration"] = json!(0);
        body["prompt_eval_count"] = json!(usage.prompt_tokens);
        body["prompt_eval_duration"] = json!(nanos(timings.time_to_first_token_ms));
        body["eval_count"] = json!(usage.completion_tokens);
        body["eval_duration"] = json!(nanos(timings.total_ms - timings.time_to_first_token_ms));
        if !finished.tool_calls.is_empty() {
            body["message"]["tool_calls"] = finished
                .tool_calls
                .iter()
                .map(|call| {
                    let arguments: Value =
                        serde_json::from_str(&call.arguments).unwrap_or(Value::Null);
                    json!({ "function": { "name": call.name, "arguments": arguments } })
                })
                .collect();
        }
        body
    }
}

/// ollama's name for a finish reason: a tool call is `stop`, as ollama
/// reports it.
fn done_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        Finish::Stop | Finish::ToolCalls => "stop",
    }
}

fn line(value: &Value) -> String {
    let mut line = value.to_string();
    line.push('\n');
    line
}

/// The NDJSON lines of one reply. As in the page's stream, the reply (and
/// its gRPC call) lives inside: a client that disconnects drops it, and
/// qinsd stops.
fn ndjson(reply: Reply, objects: Objects) -> impl Stream<Item = Result<String, Infallible>> {
    futures_util::stream::unfold((reply, objects), |(mut reply, objects)| async move {
        loop {
            let value = match reply.next().await? {
                // ollama's objects carry text only.
                ReplyEvent::Delta(delta) if delta.text.is_empty() => continue,
                ReplyEvent::Delta(delta) => objects.object(&delta.text),
                ReplyEvent::Done(finished) => objects.last("", &finished),
                ReplyEvent::Error(error) => error.ollama_body(),
            };
            return Some((Ok(line(&value)), (reply, objects)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::reply::Usage;
    use crate::edge::reply::testing::{delta, done, reply, unknown};
    use futures_util::StreamExt;
    use qins_proto::v1::{FinishReason, Timings};

    fn refusal(result: Result<Turn, ApiError>) -> String {
        match result {
            Err(error) if error.status().as_u16() == 400 => error.to_string(),
            Err(other) => panic!("expected a 400, got {other:?}"),
            Ok(_) => panic!("expected a 400, got a turn"),
        }
    }

    fn chat_body(extra: Value) -> ChatBody {
        let mut body =
            json!({ "model": "tiny", "messages": [{ "role": "user", "content": "hi" }] });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        serde_json::from_value(body).expect("parses")
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        for (extra, name) in [
            (json!({ "format": "yaml" }), "format"),
            (json!({ "format": 5 }), "format"),
            (json!({ "think": true }), "think"),
            (json!({ "logprobs": true }), "logprobs"),
            (json!({ "options": { "mirostat": 1 } }), "mirostat"),
        ] {
            let message = refusal(chat_body(extra).into_turn());
            assert!(message.contains(name), "{name}: {message}");
        }
        let images =
            json!({ "messages": [{ "role": "user", "content": "x", "images": ["AA=="] }] });
        assert!(refusal(chat_body(images).into_turn()).contains("images"));
        let unknown = serde_json::from_value::<ChatBody>(json!({ "model": "m", "frob": 1 }));
        assert!(unknown.expect_err("refused").to_string().contains("frob"));
    }

    #[test]
    fn tools_and_their_turns_reach_qinsd() {
        let body = chat_body(json!({
            "tools": [{ "type": "function", "function": {
                "name": "get_weather", "parameters": { "type": "object" } } }],
            "messages": [
                { "role": "user", "content": "Weather?" },
                { "role": "assistant", "content": "", "tool_calls": [
                    { "function": { "name": "get_weather", "arguments": { "city": "Paris" } } }] },
                { "role": "tool", "content": "18 C", "tool_name": "get_weather" }],
        }));
        let turn = body.into_turn().expect("accepted");
        assert_eq!(turn.tools[0].name, "get_weather");
        assert_eq!(
            turn.messages[1].tool_calls[0].arguments,
            r#"{"city":"Paris"}"#
        );
        assert_eq!(turn.messages[2].tool_call_id, "get_weather");
        let bad = chat_body(json!({ "tools": [{ "type": "function" }] }));
        assert!(matches!(bad.into_turn(), Err(ApiError::Param { .. })));
    }

    #[test]
    fn format_asks_for_json() {
        let format = |f: Value| {
            chat_body(json!({ "format": f }))
                .into_turn()
                .expect("accepted")
                .format
                .and_then(|f| f.format)
        };
        assert_eq!(
            format(json!("json")),
            Some(response_format::Format::JsonObject(true))
        );
        assert_eq!(
            format(json!({ "type": "integer" })),
            Some(response_format::Format::JsonSchema(
                r#"{"type":"integer"}"#.into()
            ))
        );
        assert_eq!(format(json!("")), None);
    }

    #[test]
    fn off_values_and_keep_alive_are_accepted() {
        let turn = chat_body(json!({
            "format": "", "think": false, "logprobs": false, "keep_alive": "5m",
            "stream": false, "options": { "temperature": 0 },
        }))
        .into_turn()
        .expect("accepted");
        assert!(!turn.stream);
        assert_eq!(turn.sampling.temperature, Some(0.0));
        assert_eq!(turn.messages.len(), 1);
        assert!(
            chat_body(json!({})).into_turn().expect("default").stream,
            "streams by default"
        );
    }

    #[test]
    fn generate_builds_system_and_user_messages() {
        let body: GenerateBody = serde_json::from_value(json!({
            "model": "tiny", "prompt": "Why?", "system": "Be brief.", "raw": false,
        }))
        .expect("parses");
        let turn = body.into_turn().expect("accepted");
        let roles: Vec<&str> = turn.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user"]);
        let empty: GenerateBody =
            serde_json::from_value(json!({ "model": "tiny" })).expect("parses");
        assert!(empty.into_turn().expect("load only").messages.is_empty());
        let raw: GenerateBody =
            serde_json::from_value(json!({ "model": "tiny", "prompt": "Once", "raw": true }))
                .expect("parses");
        let turn = raw.into_turn().expect("accepted");
        assert!(turn.messages.is_empty());
        assert_eq!(turn.raw_prompt.as_deref(), Some("Once"));
        for (extra, name) in [
            (json!({ "raw": true, "system": "Be brief." }), "system"),
            (json!({ "suffix": "end" }), "suffix"),
            (json!({ "template": "{{ .Prompt }}" }), "template"),
            (json!({ "context": [1, 2] }), "context"),
        ] {
            let mut body = json!({ "model": "tiny", "prompt": "x" });
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            let body: GenerateBody = serde_json::from_value(body).expect("parses");
            let message = refusal(body.into_turn());
            assert!(message.contains(name), "{name}: {message}");
        }
    }

    #[test]
    fn several_calls_are_listed_in_order() {
        let call = |city: &str| ToolCall {
            id: format!("call_{city}"),
            name: "get_weather".into(),
            arguments: json!({ "city": city }).to_string(),
        };
        let done = Finished {
            finish: Finish::ToolCalls,
            usage: Usage::default(),
            timings: Timings::default(),
            model: "tiny".into(),
            tool_calls: vec![call("Paris"), call("Rome")],
            stop_sequence: None,
        };
        let reply = Objects {
            model: "tiny:latest".into(),
            shape: Shape::Chat,
        };
        let last = reply.last("", &done);
        let calls = last["message"]["tool_calls"].as_array().expect("a list");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["arguments"]["city"], "Paris");
        assert_eq!(calls[1]["function"]["arguments"]["city"], "Rome");
        assert_eq!(last["done_reason"], "stop");
    }

    #[test]
    fn the_last_object_carries_counts_and_nanosecond_durations() {
        let done = Finished {
            finish: Finish::Length,
            usage: Usage {
                prompt_tokens: 26,
                cached_prompt_tokens: 0,
                completion_tokens: 8,
            },
            timings: Timings {
                queue_ms: 1.0,
                time_to_first_token_ms: 20.0,
                total_ms: 100.0,
                tokens_per_second: 87.5,
                ..Timings::default()
            },
            model: "tiny".into(),
            tool_calls: Vec::new(),
            stop_sequence: None,
        };
        let reply = Objects {
            model: "tiny:latest".into(),
            shape: Shape::Generate,
        };
        let last = reply.last("", &done);
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "length");
        assert_eq!(last["response"], "");
        assert_eq!(last["total_duration"], 101_000_000);
        assert_eq!(last["prompt_eval_count"], 26);
        assert_eq!(last["prompt_eval_duration"], 20_000_000);
        assert_eq!(last["eval_count"], 8);
        assert_eq!(last["eval_duration"], 80_000_000);
        let chat = Objects {
            model: "tiny".into(),
            shape: Shape::Chat,
        };
        assert_eq!(chat.object("Hi")["message"]["content"], "Hi");
        assert_eq!(chat.object("Hi")["done"], false);
    }

    async fn lines(events: Vec<Result<qins_proto::v1::ChatEvent, tonic::Status>>) -> Vec<Value> {
        let objects = Objects {
            model: "tiny:latest".into(),
            shape: Shape::Chat,
        };
        ndjson(reply(events), objects)
            .map(|line| serde_json::from_str(&line.expect("a line")).expect("JSON"))
            .collect()
            .await
    }

    #[tokio::test]
    async fn events_without_payload_are_skipped_and_cancelled_is_an_error() {
        let finished = lines(vec![delta("a"), unknown(), done(FinishReason::ToolCalls)]).await;
        assert_eq!(finished.len(), 2);
        assert_eq!(finished[1]["done_reason"], "stop", "a tool call is stop");
        let cancelled = lines(vec![delta("a"), done(FinishReason::Cancelled)]).await;
        assert_eq!(cancelled.len(), 2);
        assert!(cancelled[1]["error"].is_string(), "{}", cancelled[1]);
        assert!(cancelled[1].get("done_reason").is_none());
    }
}
