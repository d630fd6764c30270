//! OpenAI's Responses API: `POST /v1/responses`, streamed or not, and the
//! stored responses behind `previous_response_id` (`GET` and `DELETE
//! /v1/responses/{id}`). [`request`] reads the body, [`store`] keeps the
//! responses; this module starts the chat and renders the reply through
//! the edge layer.
//!
//! Choices made where qinsd and OpenAI differ:
//! - `model` is resolved like every dialect's ([`crate::edge::model`]).
//! - `status` is `completed`, or `incomplete` with `incomplete_details.reason`
//!   `max_output_tokens` when the reply hit `max_output_tokens` or the
//!   context's end (qinsd reports both as `length`).
//! - a chain of responses (`previous_response_id`) shares a qinsd session,
//!   unless `prompt_cache_key` names one: each turn prefills only what the
//!   previous one did not.
//! - a stream that fails after it started ends with `response.failed`.

pub mod request;
pub mod store;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use qins_proto::v1::{Message, ToolCall};
use serde_json::{Map, Value, json};

use super::{completion_id, unix_now};
use crate::edge::model::{self, Omitted};
use crate::edge::reply::{Finish, Finished, Reply, ReplyEvent, Usage};
use crate::edge::{ApiJson, message};
use crate::error::ApiError;
use crate::state::AppState;
use request::{ResponsesBody, name_refused};
use store::Stored;

pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let ResponsesBody {
        model,
        mut request,
        instructions,
        input,
        previous_response_id,
        stream,
        store,
        echo,
    } = ResponsesBody::parse(body)?;
    let previous = previous_response_id
        .as_deref()
        .map(|id| previous_response(&state, id))
        .transpose()?;
    let model = model::resolve(&state.daemon, model.as_deref(), Omitted::Refused).await?;
    let mut conversation = previous
        .as_ref()
        .map(|p| p.conversation.clone())
        .unwrap_or_default();
    conversation.extend(input);
    let frame = Frame {
        id: new_id("resp"),
        created_at: unix_now(),
        model,
        echo,
    };
    if request.session_id.is_empty()
        && let Some((previous, id)) = previous.as_ref().zip(previous_response_id)
    {
        request.session_id = chain_session(previous, &id);
    }
    // Instructions are this response's own: a later one does not inherit them.
    request.messages = instructions
        .map(|text| message("system", text))
        .into_iter()
        .chain(conversation.iter().cloned())
        .collect();
    let keep = store.then(|| Keep {
        state: Arc::clone(&state),
        conversation,
        session_id: request.session_id.clone(),
    });
    let started = state.daemon.chat(request).await;
    let reply = Reply::new(started.map_err(name_refused)?);
    if stream {
        return Ok(event_stream(reply, frame, keep));
    }
    let whole = reply.collect().await?;
    let output = Output::new(whole.text, &whole.finished);
    let response = frame.finished(&output, &whole.finished);
    if let Some(keep) = keep {
        keep.store(&frame.id, &output, response.clone());
    }
    Ok(Json(response).into_response())
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.responses.get(&id) {
        Some(stored) => Ok(Json(stored.response.clone())),
        None => Err(not_stored(&id)),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a stored response.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.responses.remove(&id) {
        Ok(Json(
            json!({ "id": id, "object": "response", "deleted": true }),
        ))
    } else {
        Err(not_stored(&id))
    }
}

fn not_stored(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no stored response with id '{id}' (qins-web keeps the last {} responses sent with store: true, in memory)",
        store::STORED_RESPONSES
    ))
}

/// The response `previous_response_id` names, or OpenAI's 400 naming it.
fn previous_response(state: &AppState, id: &str) -> Result<Arc<Stored>, ApiError> {
    state.responses.get(id).ok_or_else(|| ApiError::Param {
        param: "previous_response_id".into(),
        message: format!(
            "previous response with id '{id}' not found: qins-web keeps the last {} responses \
             sent with store: true, in memory, until it restarts",
            store::STORED_RESPONSES
        ),
        code: "previous_response_not_found",
    })
}

/// The session a chain's turns share: the first continued response's id.
fn chain_session(previous: &Stored, previous_id: &str) -> String {
    if previous.session_id.is_empty() {
        previous_id.to_string()
    } else {
        previous.session_id.clone()
    }
}

/// `resp_`, `msg_` or `fc_` and a unique suffix, as OpenAI's ids look.
fn new_id(prefix: &str) -> String {
    completion_id(prefix).replacen('-', "_", 1)
}

/// What a stored response needs beyond its output.
struct Keep {
    state: Arc<AppState>,
    conversation: Vec<Message>,
    session_id: String,
}

impl Keep {
    fn store(self, id: &str, output: &Output, response: Value) {
        let mut conversation = self.conversation;
        conversation.push(Message {
            tool_calls: output.calls.iter().map(|(_, call)| call.clone()).collect(),
            ..message("assistant", output.text.clone())
        });
        self.state.responses.insert(
            id.to_string(),
            Stored {
                conversation,
                session_id: self.session_id,
                response,
            },
        );
    }
}

/// What every rendering of one response shares.
struct Frame {
    id: String,
    created_at: u64,
    /// The resident model when the request came.
    model: String,
    echo: Map<String, Value>,
}

impl Frame {
    /// The response object: `status`, `output`, and the request's members
    /// as sent (OpenAI's defaults for those that were not).
    fn object(&self, status: &str, output: Vec<Value>, usage: Option<&Usage>) -> Value {
        let mut object = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": Value::Null,
            "incomplete_details": Value::Null,
            "instructions": Value::Null,
            "max_output_tokens": Value::Null,
            "max_tool_calls": Value::Null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": Value::Null,
            "prompt_cache_key": Value::Null,
            "reasoning": { "effort": Value::Null, "summary": Value::Null },
            "safety_identifier": Value::Null,
            "service_tier": "default",
            "store": true,
            "temperature": Value::Null,
            "text": { "format": { "type": "text" } },
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": Value::Null,
            "truncation": "disabled",
            "usage": usage.map_or(Value::Null, usage_json),
            "user": Value::Null,
            "metadata": {},
        });
        for (name, value) in &self.echo {
            object[name] = value.clone();
        }
        object
    }

    /// The response of a finished reply: completed, or incomplete when it
    /// was cut at the token limit; named after the model that answered.
    fn finished(&self, output: &Output, finished: &Finished) -> Value {
        let incomplete = finished.finish == Finish::Length;
        let status = if incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let mut object = self.object(status, output.items(finished), Some(&finished.usage));
        if incomplete {
            object["incomplete_details"] = json!({ "reason": "max_output_tokens" });
        }
        if !finished.model.is_empty() {
            object["model"] = json!(finished.model);
        }
        object
    }

    /// The response of a reply that failed after its stream started.
    fn failed(&self, error: &ApiError) -> Value {
        let mut object = self.object("failed", Vec::new(), None);
        object["error"] = json!({ "code": failure_code(error), "message": error.to_string() });
        object
    }
}

/// `error.code` of a failed response, in OpenAI's names.
fn failure_code(error: &ApiError) -> &'static str {
    match error.status().as_u16() {
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_prompt",
        _ => "server_error",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": { "cached_tokens": usage.cached_prompt_tokens },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": usage.total_tokens(),
    })
}

/// A reply's output items: its text as a message (also when empty, if it
/// made no call), then a `function_call` item per call.
struct Output {
    message_id: String,
    text: String,
    /// Each call with its item's id.
    calls: Vec<(String, ToolCall)>,
}

impl Output {
    fn new(text: String, finished: &Finished) -> Self {
        Self {
            message_id: new_id("msg"),
            text,
            calls: finished
                .tool_calls
                .iter()
                .map(|call| (new_id("fc"), call.clone()))
                .collect(),
        }
    }

    fn has_message(&self) -> bool {
        !self.text.is_empty() || self.calls.is_empty()
    }

    fn items(&self, finished: &Finished) -> Vec<Value> {
        let mut items = Vec::new();
        if self.has_message() {
            items.push(self.message(item_status(finished)));
        }
        items.extend(
            self.calls
                .iter()
                .map(|(id, call)| function_call(id, call, "completed", &call.arguments)),
        );
        items
    }

    fn message(&self, status: &str) -> Value {
        json!({
            "type": "message", "id": self.message_id, "status": status, "role": "assistant",
            "content": [output_text(&self.text)],
        })
    }
}

/// The message's status: cut at the token limit, it is incomplete.
fn item_status(finished: &Finished) -> &'static str {
    match finished.finish {
        Finish::Length => "incomplete",
        Finish::Stop | Finish::ToolCalls => "completed",
    }
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

fn function_call(id: &str, call: &ToolCall, status: &str, arguments: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call.id, "name": call.name,
        "arguments": arguments, "status": status,
    })
}

/// The events of one stream, numbered in order (`sequence_number`).
struct Events {
    frame: Frame,
    sequence: u64,
}

impl Events {
    fn event(&mut self, kind: &'static str, mut data: Value) -> Event {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        Event::default().event(kind).data(data.to_string())
    }

    fn opening(&mut self) -> Vec<Event> {
        let response = self.frame.object("in_progress", Vec::new(), None);
        vec![
            self.event("response.created", json!({ "response": response })),
            self.event("response.in_progress", json!({ "response": response })),
        ]
    }

    /// The message item and its text part opened, before the first delta.
    fn open_message(&mut self, output: &Output) -> Vec<Event> {
        let mut item = output.message("in_progress");
        item["content"] = json!([]);
        vec![
            self.event(
                "response.output_item.added",
                json!({ "output_index": 0, "item": item }),
            ),
            self.event(
                "response.content_part.added",
                json!({ "item_id": output.message_id, "output_index": 0, "content_index": 0,
                        "part": output_text("") }),
            ),
        ]
    }

    fn text_delta(&mut self, output: &Output, delta: &str) -> Event {
        self.event(
            "response.output_text.delta",
            json!({ "item_id": output.message_id, "output_index": 0, "content_index": 0,
                    "delta": delta, "logprobs": [] }),
        )
    }

    /// The events after the last delta: the message closed (opened first
    /// when the reply has neither text nor calls), each call as a
    /// `function_call` item with its arguments in one delta, and the end.
    /// Also returns the finished response object.
    fn closing(
        &mut self,
        message_open: bool,
        output: &Output,
        finished: &Finished,
    ) -> (Vec<Event>, Value) {
        let mut events = Vec::new();
        if output.has_message() {
            if !message_open {
                events.extend(self.open_message(output));
            }
            let id = &output.message_id;
            events.push(self.event(
                "response.output_text.done",
                json!({ "item_id": id, "output_index": 0, "content_index": 0,
                        "text": output.text, "logprobs": [] }),
            ));
            events.push(self.event(
                "response.content_part.done",
                json!({ "item_id": id, "output_index": 0, "content_index": 0,
                        "part": output_text(&output.text) }),
            ));
            events.push(self.event(
                "response.output_item.done",
                json!({ "output_index": 0, "item": output.message(item_status(finished)) }),
            ));
        }
        let first_call = usize::from(output.has_message());
        for (index, (id, call)) in (first_call..).zip(&output.calls) {
            events.push(self.event(
                "response.output_item.added",
                json!({ "output_index": index,
                        "item": function_call(id, call, "in_progress", "") }),
            ));
            events.push(self.event(
                "response.function_call_arguments.delta",
                json!({ "item_id": id, "output_index": index, "delta": call.arguments }),
            ));
            events.push(self.event(
                "response.function_call_arguments.done",
                json!({ "item_id": id, "output_index": index, "name": call.name,
                        "arguments": call.arguments }),
            ));
            events.push(self.event(
                "response.output_item.done",
                json!({ "output_index": index,
                        "item": function_call(id, call, "completed", &call.arguments) }),
            ));
        }
        let response = self.frame.finished(output, finished);
        let kind = match response["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        events.push(self.event(kind, json!({ "response": response })));
        (events, response)
    }
}

/// A stream's state between replies' items.
struct Streaming {
    reply: Reply,
    events: Events,
    /// The text so far, in the message item's `Output`.
    output: Output,
    message_open: bool,
    keep: Option<Keep>,
}

/// The Responses event sequence: `response.created`, `response.in_progress`,
/// the message item (`output_item.added`, `content_part.added`, one
/// `output_text.delta` per delta, `output_text.done`, `content_part.done`,
/// `output_item.done`), a `function_call` item per call
/// (`output_item.added`, `function_call_arguments.delta` and `.done`,
/// `output_item.done`), then `response.completed` or `response.incomplete`.
/// An error ends it with `response.failed`. Dropping the stream drops the
/// reply, which stops qinsd.
fn event_stream(reply: Reply, frame: Frame, keep: Option<Keep>) -> Response {
    let mut events = Events { frame, sequence: 0 };
    let opening = events.opening();
    let output = Output {
        message_id: new_id("msg"),
        text: String::new(),
        calls: Vec::new(),
    };
    let state = Streaming {
        reply,
        events,
        output,
        message_open: false,
        keep,
    };
    let rest = stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        let out = match s.reply.next().await? {
            ReplyEvent::Delta(delta) => {
                let mut out = Vec::new();
                // Tokens without text (logprobs) open nothing.
                if !delta.text.is_empty() {
                    if !s.message_open {
                        out.extend(s.events.open_message(&s.output));
                        s.message_open = true;
                    }
                    s.output.text.push_str(&delta.text);
                    out.push(s.events.text_delta(&s.output, &delta.text));
                }
                return Some((out, Some(s)));
            }
            ReplyEvent::Done(finished) => {
                s.output.calls = Output::new(String::new(), &finished).calls;
                let (out, response) = s.events.closing(s.message_open, &s.output, &finished);
                if let Some(keep) = s.keep.take() {
                    keep.store(&s.events.frame.id, &s.output, response);
                }
                out
            }
            ReplyEvent::Error(error) => {
                let response = s.events.frame.failed(&error);
                vec![
                    s.events
                        .event("response.failed", json!({ "response": response })),
                ]
            }
        };
        Some((out, None))
    });
    let events = stream::iter(opening)
        .chain(rest.flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::reply::testing::{calls_done, delta, done, reply};
    use crate::edge::testing::{event_names as names, named_events as events};
    use qins_proto::v1::FinishReason;

    fn frame() -> Frame {
        let mut echo = Map::new();
        echo.insert("instructions".into(), json!("Be brief."));
        Frame {
            id: "resp_1".into(),
            created_at: 7,
            model: "tiny".into(),
            echo,
        }
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: r#"{"a":1}"#.into(),
        }
    }

    /// Every event names its type and numbers itself in order.
    fn assert_numbered(events: &[(String, Value)]) {
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i, "{name}");
        }
    }

    #[tokio::test]
    async fn a_text_reply_streams_the_responses_sequence() {
        let response = event_stream(
            reply(vec![delta("He"), delta("llo"), done(FinishReason::Stop)]),
            frame(),
            None,
        );
        let events = events(response).await;
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_numbered(&events);
        let created = &events[0].1["response"];
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["instructions"], "Be brief.");
        assert_eq!(created["output"], json!([]));
        let item_id = events[2].1["item"]["id"].as_str().expect("item id");
        assert!(item_id.starts_with("msg_"), "{item_id}");
        assert_eq!(events[4].1["delta"], "He");
        assert_eq!(events[4].1["item_id"], item_id);
        assert_eq!(events[6].1["text"], "Hello");
        assert_eq!(events[8].1["item"]["status"], "completed");
        let completed = &events[9].1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(completed["output"][0]["id"], item_id);
        assert_eq!(completed["usage"]["input_tokens"], 10);
        assert_eq!(
            completed["usage"]["input_tokens_details"]["cached_tokens"],
            4
        );
        assert_eq!(completed["usage"]["total_tokens"], 12);
    }

    #[tokio::test]
    async fn a_reply_cut_at_the_limit_is_incomplete() {
        let events = events(event_stream(
            reply(vec![delta("Hi"), done(FinishReason::Length)]),
            frame(),
            None,
        ))
        .await;
        let (name, last) = events.last().expect("an event");
        assert_eq!(name, "response.incomplete");
        assert_eq!(last["response"]["status"], "incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    }

    #[tokio::test]
    async fn calls_stream_as_function_call_items() {
        let calls = vec![call("call_1", "f"), call("call_2", "g")];
        let events = events(event_stream(reply(vec![calls_done(calls)]), frame(), None)).await;
        let per_call = [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ];
        let expected: Vec<&str> = ["response.created", "response.in_progress"]
            .into_iter()
            .chain(per_call)
            .chain(per_call)
            .chain(["response.completed"])
            .collect();
        assert_eq!(names(&events), expected);
        assert_numbered(&events);
        let added = &events[2].1;
        assert_eq!(added["output_index"], 0);
        assert_eq!(added["item"]["type"], "function_call");
        assert_eq!(added["item"]["call_id"], "call_1");
        assert_eq!(added["item"]["arguments"], "");
        assert_eq!(events[3].1["delta"], r#"{"a":1}"#);
        assert_eq!(events[4].1["arguments"], r#"{"a":1}"#);
        assert_eq!(events[6].1["output_index"], 1);
        assert_eq!(events[6].1["item"]["name"], "g");
        let output = &events[10].1["response"]["output"];
        assert_eq!(output.as_array().map(Vec::len), Some(2), "no empty message");
        assert_eq!(output[1]["call_id"], "call_2");
        assert!(
            output[0]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("fc_"))
        );
    }

    #[tokio::test]
    async fn an_empty_reply_still_has_its_message() {
        let events = events(event_stream(
            reply(vec![done(FinishReason::Stop)]),
            frame(),
            None,
        ))
        .await;
        assert_eq!(events.len(), 8, "{:?}", names(&events));
        assert_eq!(events[4].0, "response.output_text.done");
        assert_eq!(events[4].1["text"], "");
        assert_eq!(events[7].1["response"]["output"][0]["type"], "message");
    }

    #[tokio::test]
    async fn a_failed_reply_ends_with_response_failed() {
        let events = events(event_stream(
            reply(vec![delta("Hi"), done(FinishReason::Cancelled)]),
            frame(),
            None,
        ))
        .await;
        let (name, last) = events.last().expect("an event");
        assert_eq!(name, "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["code"], "server_error");
        assert!(names(&events).iter().all(|n| *n != "response.completed"));
    }

    #[test]
    fn whole_responses_list_the_message_then_the_calls() {
        let finished = Finished {
            finish: Finish::ToolCalls,
            usage: Usage::default(),
            timings: Default::default(),
            model: "tiny".into(),
            tool_calls: vec![call("call_1", "f")],
            stop_sequence: None,
        };
        let output = Output::new("Let me look.".into(), &finished);
        let response = frame().finished(&output, &finished);
        assert_eq!(response["object"], "response");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["output"][0]["type"], "message");
        assert_eq!(response["output"][0]["role"], "assistant");
        assert_eq!(
            response["output"][0]["content"][0]["annotations"],
            json!([])
        );
        assert_eq!(response["output"][1]["type"], "function_call");
        assert_eq!(response["output"][1]["status"], "completed");
        assert_eq!(
            response["usage"]["output_tokens_details"]["reasoning_tokens"],
            0
        );
        assert!(response["incomplete_details"].is_null());
        let calls_only = Output::new(String::new(), &finished).items(&finished);
        assert_eq!(calls_only.len(), 1);
    }

    #[test]
    fn chains_share_the_first_response_s_session() {
        let first = Stored {
            conversation: Vec::new(),
            session_id: String::new(),
            response: Value::Null,
        };
        assert_eq!(chain_session(&first, "resp_1"), "resp_1");
        let second = Stored {
            session_id: "resp_1".into(),
            ..first
        };
        assert_eq!(chain_session(&second, "resp_2"), "resp_1");
    }
}
