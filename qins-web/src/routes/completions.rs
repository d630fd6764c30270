//! OpenAI's legacy text completion API, `POST /v1/completions`: the prompt
//! is continued as raw text, without the chat template (qinsd's
//! `ChatRequest.prompt`), streamed or not.
//!
//! Where it differs from OpenAI: one prompt string per request (a list of
//! one is accepted; token-id prompts and `suffix` are refused), one choice
//! (`n` and `best_of` 1), `echo` only without `logprobs` (prompt logprobs
//! are not computed). `max_tokens` defaults to 16, as OpenAI's does.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use qins_proto::v1::{ChatDone, ChatRequest, FinishReason, Sampling, TokenLogprob, chat_event};
use serde_json::{Value, json};

use super::ApiJson;
use super::openai::{completion_id, unix_now};
use super::openai_logprobs::completion_logprobs;
use super::openai_params as params;
use crate::app::AppState;
use crate::daemon::ChatStream;
use crate::error::ApiError;

/// OpenAI's default when `max_tokens` is unset.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// A completion request, read by [`CompletionBody::parse`].
#[derive(Debug)]
struct CompletionBody {
    request: ChatRequest,
    stream: bool,
    include_usage: bool,
    /// `logprobs` was given (the number of alternatives is in the request).
    logprobs: bool,
    /// The prompt, when `echo` puts it before the completion.
    echo: Option<String>,
}

impl CompletionBody {
    fn parse(body: Value) -> Result<Self, ApiError> {
        let mut sampling = Sampling {
            max_tokens: Some(DEFAULT_MAX_TOKENS),
            ..Sampling::default()
        };
        let mut out = Self {
            request: ChatRequest::default(),
            stream: false,
            include_usage: false,
            logprobs: false,
            echo: None,
        };
        let mut prompt = None;
        let mut echo = false;
        for (name, value) in params::object(body)? {
            if params::sampling_param(&mut sampling, &name, &value)? {
                continue;
            }
            let name = name.as_str();
            match name {
                "model" => {
                    params::string(name, value)?;
                }
                "prompt" => prompt = Some(prompt_text(value)?),
                "max_tokens" => sampling.max_tokens = Some(params::uint32(name, &value)?),
                "stream" => out.stream = params::boolean(name, &value)?,
                "stream_options" => out.include_usage = params::include_usage(value)?,
                "logprobs" => {
                    let top = params::uint32(name, &value)?;
                    if u64::from(top) > params::MAX_TOP_LOGPROBS {
                        return Err(params::invalid(
                            name,
                            &format!("must be at most {}", params::MAX_TOP_LOGPROBS),
                        ));
                    }
                    out.logprobs = true;
                    out.request.logprobs = true;
                    out.request.top_logprobs = top;
                }
                "echo" => echo = params::boolean(name, &value)?,
                "user" => {
                    params::string(name, value)?;
                }
                "n" | "best_of" => params::one_choice(name, &value)?,
                "suffix" => {
                    return Err(params::refused(name, "fill-in-the-middle is not supported"));
                }
                _ => {
                    return Err(params::refused(
                        name,
                        "it is not a completion parameter qins-web knows",
                    ));
                }
            }
        }
        let prompt = prompt.ok_or_else(|| params::invalid("prompt", "is required"))?;
        if prompt.is_empty() {
            return Err(params::invalid("prompt", "must not be empty"));
        }
        if echo && out.logprobs {
            return Err(params::refused(
                "echo",
                "with logprobs it needs the prompt's logprobs, which qins does not compute",
            ));
        }
        out.echo = echo.then(|| prompt.clone());
        out.request.prompt = prompt;
        out.request.sampling = Some(sampling);
        Ok(out)
    }
}

/// `prompt`: a string, or a list of exactly one string.
fn prompt_text(value: Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Array(mut items) if items.len() == 1 && items[0].is_string() => {
            params::string("prompt", items.remove(0))
        }
        Value::Array(items) if items.iter().all(Value::is_string) => Err(params::refused(
            "prompt",
            "one prompt per request (a list of one string is accepted)",
        )),
        _ => Err(params::refused(
            "prompt",
            "token-id prompts are not supported; send text",
        )),
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let body = CompletionBody::parse(body)?;
    let model = state.daemon.stats().await?.model;
    let grpc = state.daemon.chat(body.request).await?;
    let shape = Shape {
        id: completion_id("cmpl"),
        created: unix_now(),
        model,
        logprobs: body.logprobs,
        offset: body.echo.as_deref().map_or(0, |p| p.chars().count()),
    };
    if body.stream {
        let events = stream(grpc, shape, body.echo, body.include_usage);
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        Ok(Json(collect(grpc, shape, body.echo.unwrap_or_default()).await?).into_response())
    }
}

/// What every response object of one completion shares.
struct Shape {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    /// Characters before the next token's text (the echoed prompt, then
    /// the text so far): `text_offset` of the legacy logprobs.
    offset: usize,
}

impl Shape {
    fn object(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        })
    }

    fn choice(&mut self, text: &str, tokens: &[TokenLogprob], finish: Value) -> Value {
        let logprobs = if self.logprobs {
            let (value, end) = completion_logprobs(tokens, self.offset);
            self.offset = end;
            value
        } else {
            Value::Null
        };
        json!([{ "text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish }])
    }
}

fn finish_reason(done: &ChatDone) -> &'static str {
    match FinishReason::try_from(done.finish_reason) {
        Ok(FinishReason::Length) => "length",
        _ => "stop",
    }
}

fn usage(done: &ChatDone) -> Value {
    let usage = done.usage.unwrap_or_default();
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

async fn collect(
    mut grpc: ChatStream,
    mut shape: Shape,
    mut text: String,
) -> Result<Value, ApiError> {
    let mut tokens = Vec::new();
    loop {
        match grpc.message().await?.and_then(|e| e.event) {
            Some(chat_event::Event::Delta(d)) => {
                text.push_str(&d.text);
                tokens.extend(d.logprobs);
            }
            Some(chat_event::Event::Done(done)) => {
                let choices = shape.choice(&text, &tokens, json!(finish_reason(&done)));
                let mut object = shape.object(choices);
                object["usage"] = usage(&done);
                return Ok(object);
            }
            None => {
                return Err(ApiError::Upstream(
                    "the reply ended without a done event".into(),
                ));
            }
        }
    }
}

/// The stream's state between gRPC events.
struct Streaming {
    grpc: ChatStream,
    shape: Shape,
    /// The prompt, sent as the first chunk's text when echoed.
    echo: Option<String>,
    include_usage: bool,
    finished: bool,
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// Text chunks, the finish chunk, the usage chunk if asked for, `[DONE]`.
/// An error ends the stream with OpenAI's error object as data.
fn stream(
    grpc: ChatStream,
    shape: Shape,
    echo: Option<String>,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = Streaming {
        grpc,
        shape,
        echo,
        include_usage,
        finished: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let events = st.next_events().await;
        Some((futures_util::stream::iter(events.into_iter().map(Ok)), st))
    })
    .flatten()
}

impl Streaming {
    fn chunk(&mut self, text: &str, tokens: &[TokenLogprob], finish: Value) -> Value {
        let choices = self.shape.choice(text, tokens, finish);
        let mut chunk = self.shape.object(choices);
        // OpenAI sends `"usage": null` on every chunk when usage was asked for.
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    async fn next_events(&mut self) -> Vec<Event> {
        if let Some(prompt) = self.echo.take() {
            // The prompt's characters are already in `offset`.
            let choices = json!([{ "text": prompt, "index": 0, "logprobs": Value::Null,
                                   "finish_reason": Value::Null }]);
            let mut chunk = self.shape.object(choices);
            if self.include_usage {
                chunk["usage"] = Value::Null;
            }
            return vec![data(&chunk)];
        }
        loop {
            let event = match self.grpc.message().await {
                Ok(Some(ev)) => ev.event,
                Ok(None) => {
                    self.finished = true;
                    let e = ApiError::Upstream("the reply ended without a done event".into());
                    return vec![data(&e.body())];
                }
                Err(status) => {
                    self.finished = true;
                    return vec![data(&ApiError::from(status).body())];
                }
            };
            match event {
                Some(chat_event::Event::Delta(d))
                    if !d.text.is_empty() || !d.logprobs.is_empty() =>
                {
                    return vec![data(&self.chunk(&d.text, &d.logprobs, Value::Null))];
                }
                Some(chat_event::Event::Done(done)) => {
                    self.finished = true;
                    let mut events = vec![data(&self.chunk("", &[], json!(finish_reason(&done))))];
                    if self.include_usage {
                        let mut last = self.shape.object(json!([]));
                        last["usage"] = usage(&done);
                        events.push(data(&last));
                    }
                    events.push(Event::default().data("[DONE]"));
                    return events;
                }
                Some(chat_event::Event::Delta(_)) | None => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<CompletionBody, ApiError> {
        CompletionBody::parse(body)
    }

    fn param(body: Value) -> String {
        match parse(body) {
            Err(ApiError::Param { param, .. }) => param,
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    #[test]
    fn a_prompt_becomes_a_raw_request_with_openai_defaults() {
        let body = parse(json!({ "model": "m", "prompt": ["Once"], "logprobs": 2,
                                 "temperature": 0, "user": "u", "n": 1, "best_of": 1 }))
        .expect("accepted");
        assert_eq!(body.request.prompt, "Once");
        assert!(body.request.messages.is_empty());
        assert!(body.request.logprobs);
        assert_eq!(body.request.top_logprobs, 2);
        let sampling = body.request.sampling.expect("sampling");
        assert_eq!(sampling.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(sampling.temperature, Some(0.0));
        let echoed = parse(json!({ "prompt": "Hi", "echo": true, "max_tokens": 3 })).unwrap();
        assert_eq!(echoed.echo.as_deref(), Some("Hi"));
        assert_eq!(echoed.request.sampling.unwrap().max_tokens, Some(3));
    }

    #[test]
    fn what_is_not_honoured_is_refused_by_name() {
        for (body, name) in [
            (json!({ "prompt": "x", "suffix": "y" }), "suffix"),
            (json!({ "prompt": "x", "n": 2 }), "n"),
            (json!({ "prompt": "x", "best_of": 3 }), "best_of"),
            (json!({ "prompt": [1, 2] }), "prompt"),
            (json!({ "prompt": ["a", "b"] }), "prompt"),
            (json!({ "prompt": "" }), "prompt"),
            (json!({}), "prompt"),
            (
                json!({ "prompt": "x", "echo": true, "logprobs": 1 }),
                "echo",
            ),
            (json!({ "prompt": "x", "logprobs": 21 }), "logprobs"),
            (json!({ "prompt": "x", "frobnicate": 1 }), "frobnicate"),
        ] {
            assert_eq!(param(body.clone()), name, "{body}");
        }
    }
}
