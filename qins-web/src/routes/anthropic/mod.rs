//! Anthropic's Messages API: `POST /v1/messages`, streamed or not, and
//! `POST /v1/messages/count_tokens`. [`request`] reads the body; this
//! module starts the chat and renders the reply through the edge layer.
//!
//! Choices made where qinsd and Anthropic differ:
//! - `model` is resolved like every dialect's ([`crate::edge::model`]): the
//!   resident model's name (or an alias), else a 404 `not_found_error`.
//! - `stop_reason`: `end_turn`, `max_tokens`, `tool_use`, and
//!   `stop_sequence` with the string that matched (qinsd's
//!   `done.stop_sequence`).
//! - several calls in one reply are several `tool_use` blocks, unless
//!   `tool_choice.disable_parallel_tool_use` (then at most one).
//! - `usage.input_tokens` excludes the prompt tokens whose K/V came from
//!   qinsd's cache (`cache_read_input_tokens`), as Anthropic counts them.
//! - count_tokens runs the prompt through qinsd with a one-token limit and
//!   reports its prompt tokens: the template, the system prompt and the
//!   tools' description included, exactly what a chat would read.
//! - errors have Anthropic's shape ([`ApiError::anthropic_body`]); the statuses are
//!   the bridge's, so a full queue is 429 and qinsd unreachable is 503
//!   (`overloaded_error`).

pub mod request;

use crate::edge::model::{self, Omitted};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use qins_proto::v1::ToolCall;
use serde_json::{Value, json};

use crate::edge::ApiJson;
use crate::edge::reply::{Finish, Finished, Reply, ReplyEvent, Usage};
use crate::error::ApiError;
use crate::routes::openai::completion_id;
use crate::state::AppState;
use request::{Endpoint, MessagesBody, name_refused};

/// An [`ApiError`] answered in Anthropic's error shape.
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(self.0.anthropic_body())).into_response()
    }
}

pub async fn messages(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, AnthropicError> {
    let ApiJson(body) = body?;
    let MessagesBody {
        model,
        request,
        stream,
    } = MessagesBody::parse(body, Endpoint::Messages)?;
    // `message_start` names the model before the reply's `done` does.
    let resident = model::resolve(&state.daemon, Some(&model), Omitted::Refused).await?;
    let started = state.daemon.chat(request).await;
    let reply = Reply::new(started.map_err(name_refused)?);
    let id = message_id();
    if stream {
        return Ok(event_stream(reply, id, resident));
    }
    let whole = reply.collect().await?;
    let model = if whole.finished.model.is_empty() {
        resident
    } else {
        whole.finished.model.clone()
    };
    let content = content_json(&whole.text, &whole.finished.tool_calls)?;
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(&whole.finished),
        "stop_sequence": whole.finished.stop_sequence,
        "usage": usage_json(&whole.finished.usage),
    }))
    .into_response())
}

pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, AnthropicError> {
    let ApiJson(body) = body?;
    let MessagesBody { model, request, .. } = MessagesBody::parse(body, Endpoint::CountTokens)?;
    model::resolve(&state.daemon, Some(&model), Omitted::Refused).await?;
    let started = state.daemon.chat(request).await;
    let whole = Reply::new(started.map_err(name_refused)?).collect().await?;
    Ok(Json(
        json!({ "input_tokens": whole.finished.usage.prompt_tokens }),
    ))
}

/// `msg_` and a unique suffix, as Anthropic's ids look.
fn message_id() -> String {
    completion_id("msg").replacen('-', "_", 1)
}

/// Anthropic's name for why a reply ended.
fn stop_reason(finished: &Finished) -> &'static str {
    match finished.finish {
        Finish::Stop if finished.stop_sequence.is_some() => "stop_sequence",
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(usage.cached_prompt_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// A whole reply's blocks: its text (even empty, when there is no call),
/// then a `tool_use` block per call.
fn content_json(text: &str, calls: &[ToolCall]) -> Result<Value, ApiError> {
    let mut blocks = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        blocks.push(json!({ "type": "text", "text": text }));
    }
    for call in calls {
        blocks.push(tool_use_block(call, arguments(call)?));
    }
    Ok(Value::Array(blocks))
}

fn tool_use_block(call: &ToolCall, input: Value) -> Value {
    json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": input })
}

/// A call's arguments as JSON; qinsd's grammar makes them an object.
fn arguments(call: &ToolCall) -> Result<Value, ApiError> {
    serde_json::from_str(&call.arguments).map_err(|e| {
        ApiError::Upstream(format!(
            "the arguments of tool call {} are not JSON: {e}",
            call.id
        ))
    })
}

fn sse_event(name: &'static str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn block_start(index: usize, block: Value) -> Event {
    sse_event(
        "content_block_start",
        json!({ "type": "content_block_start", "index": index, "content_block": block }),
    )
}

fn block_delta(index: usize, delta: Value) -> Event {
    sse_event(
        "content_block_delta",
        json!({ "type": "content_block_delta", "index": index, "delta": delta }),
    )
}

fn block_stop(index: usize) -> Event {
    sse_event(
        "content_block_stop",
        json!({ "type": "content_block_stop", "index": index }),
    )
}

/// Anthropic's event sequence: `message_start`, `ping`, the text block
/// (opened at the first delta), each call as a `tool_use` block with its
/// arguments in one `input_json_delta`, `message_delta` (stop reason and
/// usage), `message_stop`. An error ends the stream with an `error` event.
/// Keep-alives are `ping`s. Dropping the stream drops the reply, which
/// stops qinsd.
fn event_stream(reply: Reply, id: String, model: String) -> Response {
    let start = json!({ "type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": Value::Null, "stop_sequence": Value::Null,
        "usage": { "input_tokens": 0, "output_tokens": 0 },
    } });
    let opening = vec![sse_event("message_start", start), ping()];
    let rest = stream::unfold(Some((reply, false)), |state| async move {
        let (mut reply, text_open) = state?;
        let events = match reply.next().await? {
            ReplyEvent::Delta(delta) => {
                let mut events = Vec::new();
                if !text_open {
                    events.push(block_start(0, json!({ "type": "text", "text": "" })));
                }
                events.push(block_delta(
                    0,
                    json!({ "type": "text_delta", "text": delta.text }),
                ));
                return Some((events, Some((reply, true))));
            }
            ReplyEvent::Done(finished) => closing_events(text_open, &finished),
            ReplyEvent::Error(error) => vec![sse_event("error", error.anthropic_body())],
        };
        Some((events, None))
    });
    let events = stream::iter(opening)
        .chain(rest.flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().event(ping()))
        .into_response()
}

fn ping() -> Event {
    sse_event("ping", json!({ "type": "ping" }))
}

/// The events after the last delta: the text block closed (or an empty one
/// when the reply has neither text nor calls), the calls, the stop reason.
fn closing_events(text_open: bool, finished: &Finished) -> Vec<Event> {
    let mut events = Vec::new();
    if !text_open && finished.tool_calls.is_empty() {
        events.push(block_start(0, json!({ "type": "text", "text": "" })));
    }
    if text_open || finished.tool_calls.is_empty() {
        events.push(block_stop(0));
    }
    let first_call = usize::from(text_open);
    for (index, call) in (first_call..).zip(&finished.tool_calls) {
        events.push(block_start(index, tool_use_block(call, json!({}))));
        events.push(block_delta(
            index,
            json!({ "type": "input_json_delta", "partial_json": call.arguments }),
        ));
        events.push(block_stop(index));
    }
    events.push(sse_event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(finished),
                "stop_sequence": finished.stop_sequence,
            },
            "usage": usage_json(&finished.usage),
        }),
    ));
    events.push(sse_event("message_stop", json!({ "type": "message_stop" })));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::reply::testing::{calls_done, delta, done, reply};
    use crate::edge::testing::{event_names as names, named_events as events};
    use qins_proto::v1::{ChatDone, ChatEvent, FinishReason, chat_event};

    #[tokio::test]
    async fn a_text_reply_streams_anthropic_s_sequence() {
        let response = event_stream(
            reply(vec![delta("He"), delta("llo"), done(FinishReason::Length)]),
            "msg_1".into(),
            "tiny".into(),
        );
        let events = events(response).await;
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(events[0].1["message"]["model"], "tiny");
        assert_eq!(events[3].1["delta"]["text"], "He");
        let message_delta = &events[6].1;
        assert_eq!(message_delta["delta"]["stop_reason"], "max_tokens");
        assert_eq!(message_delta["usage"]["output_tokens"], 2);
        assert_eq!(
            message_delta["usage"]["input_tokens"], 6,
            "10 less 4 cached"
        );
    }

    #[tokio::test]
    async fn a_call_streams_as_a_tool_use_block() {
        let call = ChatEvent {
            event: Some(chat_event::Event::Done(ChatDone {
                finish_reason: FinishReason::ToolCalls as i32,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                }],
                ..ChatDone::default()
            })),
        };
        let events = events(event_stream(
            reply(vec![Ok(call)]),
            "msg_1".into(),
            "tiny".into(),
        ))
        .await;
        let start = &events[2].1;
        assert_eq!(start["index"], 0);
        assert_eq!(start["content_block"]["type"], "tool_use");
        assert_eq!(start["content_block"]["name"], "f");
        assert_eq!(events[3].1["delta"]["type"], "input_json_delta");
        assert_eq!(events[3].1["delta"]["partial_json"], r#"{"a":1}"#);
        assert_eq!(events[4].0, "content_block_stop");
        assert_eq!(events[5].1["delta"]["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn several_calls_stream_as_blocks_of_their_own() {
        let call = |id: &str, city: &str| ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: json!({ "city": city }).to_string(),
        };
        let done = calls_done(vec![call("call_a", "Paris"), call("call_b", "Rome")]);
        let events = events(event_stream(
            reply(vec![delta("Checking."), done]),
            "msg_1".into(),
            "tiny".into(),
        ))
        .await;
        let starts: Vec<(u64, String)> = events
            .iter()
            .filter(|(name, _)| name == "content_block_start")
            .map(|(_, data)| {
                let kind = data["content_block"]["type"].as_str().unwrap_or_default();
                (data["index"].as_u64().unwrap_or(99), kind.to_string())
            })
            .collect();
        assert_eq!(
            starts,
            [
                (0, "text".to_string()),
                (1, "tool_use".to_string()),
                (2, "tool_use".to_string())
            ]
        );
        let inputs: Vec<&Value> = events
            .iter()
            .filter(|(_, data)| data["delta"]["type"] == "input_json_delta")
            .map(|(_, data)| &data["delta"]["partial_json"])
            .collect();
        assert_eq!(inputs, [r#"{"city":"Paris"}"#, r#"{"city":"Rome"}"#]);
        let stops = events
            .iter()
            .filter(|(name, _)| name == "content_block_stop")
            .count();
        assert_eq!(stops, 3);
        let whole = content_json("", &[call("call_a", "Paris"), call("call_b", "Rome")])
            .expect("JSON arguments");
        assert_eq!(whole[1]["id"], "call_b");
        assert_eq!(whole[1]["input"]["city"], "Rome");
    }

    #[tokio::test]
    async fn a_stop_sequence_is_reported_with_the_string() {
        let stopped = ChatEvent {
            event: Some(chat_event::Event::Done(ChatDone {
                finish_reason: FinishReason::Stop as i32,
                stop_sequence: "###".into(),
                ..ChatDone::default()
            })),
        };
        let events = events(event_stream(
            reply(vec![delta("Hi"), Ok(stopped)]),
            "msg_1".into(),
            "tiny".into(),
        ))
        .await;
        let (_, message_delta) = events
            .iter()
            .find(|(name, _)| name == "message_delta")
            .expect("a message_delta");
        assert_eq!(message_delta["delta"]["stop_reason"], "stop_sequence");
        assert_eq!(message_delta["delta"]["stop_sequence"], "###");
        // An end-of-turn token: end_turn, no string.
        let events = events_of(vec![delta("Hi"), done(FinishReason::Stop)]).await;
        let (_, message_delta) = events
            .iter()
            .find(|(name, _)| name == "message_delta")
            .expect("a message_delta");
        assert_eq!(message_delta["delta"]["stop_reason"], "end_turn");
        assert!(message_delta["delta"]["stop_sequence"].is_null());
    }

    async fn events_of(items: Vec<Result<ChatEvent, tonic::Status>>) -> Vec<(String, Value)> {
        events(event_stream(reply(items), "msg_1".into(), "tiny".into())).await
    }

    #[tokio::test]
    async fn a_cancelled_reply_ends_with_an_error_event() {
        let events = events(event_stream(
            reply(vec![delta("Hi"), done(FinishReason::Cancelled)]),
            "msg_1".into(),
            "tiny".into(),
        ))
        .await;
        let (name, data) = events.last().expect("an event");
        assert_eq!(name, "error");
        assert_eq!(data["error"]["type"], "overloaded_error");
        assert!(names(&events).iter().all(|n| *n != "message_delta"));
    }

    #[test]
    fn whole_replies_list_text_then_calls() {
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: r#"{"a":1}"#.into(),
        };
        let content = content_json("", std::slice::from_ref(&call)).expect("JSON arguments");
        assert_eq!(content[0]["type"], "tool_use");
        assert_eq!(content[0]["input"]["a"], 1);
        assert_eq!(content_json("", &[]).expect("text")[0]["text"], "");
        let broken = ToolCall {
            arguments: "{".into(),
            ..call
        };
        assert!(content_json("", &[broken]).is_err());
    }

    #[test]
    fn errors_take_anthropic_s_types() {
        for (error, kind) in [
            (ApiError::BadRequest("x".into()), "invalid_request_error"),
            (ApiError::Unauthorized, "authentication_error"),
            (ApiError::NotFound("x".into()), "not_found_error"),
            (ApiError::DaemonDown("x".into()), "overloaded_error"),
            (ApiError::Upstream("x".into()), "api_error"),
        ] {
            let body = error.anthropic_body();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], kind, "{error:?}");
        }
    }
}
