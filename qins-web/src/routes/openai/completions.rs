//! OpenAI's legacy text completion API, `POST /v1/completions`: the prompt
//! is continued as raw text, without the chat template (qinsd's
//! `ChatRequest.prompt`), streamed or not.
//!
//! Where it differs from OpenAI: one prompt string per request (a list of
//! one is accepted; token-id prompts and `suffix` are refused), one choice
//! (`n` and `best_of` 1), `echo` only without `logprobs` (prompt logprobs
//! are not computed). `max_tokens` defaults to 16, as OpenAI's does.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use qins_proto::v1::{ChatRequest, TextDelta, TokenLogprob};
use serde_json::{Value, json};

use super::logprobs::completion_logprobs;
use super::params::{self, Shared};
use super::{Chunks, Meta, sse};
use crate::edge::ApiJson;
use crate::edge::model::{self, Omitted};
use crate::edge::reply::{Finished, Reply};
use crate::error::ApiError;
use crate::state::AppState;

/// OpenAI's default when `max_tokens` is unset. Kept deliberately: the
/// legacy API's clients (code completion) send short requests and rely on
/// it; chat's default is the model's.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// qinsd's names of the fields completions set outside the sampling
/// table, for naming qinsd's refusals ([`params::name_refused`]).
const QINSD_NAMES: &[(&str, &str)] = &[("top_logprobs", "logprobs"), ("max_tokens", "max_tokens")];

/// A completion request, read by [`CompletionBody::parse`].
#[derive(Debug)]
struct CompletionBody {
    model: Option<String>,
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
        let mut shared = Shared::default();
        shared.sampling.max_tokens = Some(DEFAULT_MAX_TOKENS);
        let mut request = ChatRequest::default();
        let mut prompt = None;
        let mut echo = false;
        let mut logprobs = false;
        for (name, value) in params::object(body)? {
            let Some(value) = shared.read(&name, value)? else {
                continue;
            };
            let name = name.as_str();
            match name {
                "prompt" => prompt = Some(prompt_text(value)?),
                "max_tokens" => shared.sampling.max_tokens = Some(params::uint32(name, &value)?),
                // The number of alternatives (qinsd's `top_logprobs`, at most
                // its limit: its INVALID_ARGUMENT names the field).
                "logprobs" => {
                    logprobs = true;
                    request.logprobs = true;
                    request.top_logprobs = params::uint32(name, &value)?;
                }
                "echo" => echo = params::boolean(name, &value)?,
                "best_of" => params::one_choice(name, &value)?,
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
        if echo && logprobs {
            return Err(params::refused(
                "echo",
                "with logprobs it needs the prompt's logprobs, which qins does not compute",
            ));
        }
        let Shared {
            model,
            sampling,
            stream,
            include_usage,
        } = shared;
        request.sampling = Some(sampling);
        Ok(Self {
            model,
            echo: echo.then(|| prompt.clone()),
            request: ChatRequest { prompt, ..request },
            stream,
            include_usage,
            logprobs,
        })
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
    // Streamed chunks name the model before the reply's `done` does.
    let model = model::resolve(&state.daemon, body.model.as_deref(), Omitted::Refused).await?;
    let started = state.daemon.chat(body.request).await;
    let reply = Reply::new(started.map_err(|e| params::name_refused(e, QINSD_NAMES))?);
    let meta = Meta::new("cmpl", model);
    let mut choices = Choices {
        logprobs: body.logprobs,
        offset: body.echo.as_deref().map_or(0, |p| p.chars().count()),
    };
    if body.stream {
        let chunks = TextChunks {
            choices,
            echo: body.echo,
        };
        Ok(sse(
            reply,
            meta,
            "text_completion",
            body.include_usage,
            chunks,
        ))
    } else {
        let whole = reply.collect().await?;
        let text = body.echo.unwrap_or_default() + &whole.text;
        let finish = json!(whole.finished.finish.as_str());
        let choices = choices.choice(&text, &whole.logprobs, finish);
        Ok(Json(meta.whole("text_completion", choices, &whole.finished)).into_response())
    }
}

/// How one completion writes its choices.
struct Choices {
    logprobs: bool,
    /// Characters before the next token's text (the echoed prompt, then
    /// the text so far): `text_offset` of the legacy logprobs.
    offset: usize,
}

impl Choices {
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

/// Text chunks: the echoed prompt first, when asked for.
struct TextChunks {
    choices: Choices,
    /// The prompt, sent as the first chunk's text when echoed.
    echo: Option<String>,
}

impl Chunks for TextChunks {
    fn opening(&mut self) -> Vec<Value> {
        // The prompt's characters are already in `offset`.
        self.echo
            .take()
            .map(|prompt| {
                json!([{ "text": prompt, "index": 0, "logprobs": Value::Null,
                         "finish_reason": Value::Null }])
            })
            .into_iter()
            .collect()
    }

    fn delta(&mut self, delta: &TextDelta) -> Value {
        self.choices
            .choice(&delta.text, &delta.logprobs, Value::Null)
    }

    fn finish(&mut self, finished: &Finished) -> Vec<Value> {
        vec![
            self.choices
                .choice("", &[], json!(finished.finish.as_str())),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream_payloads;
    use super::*;
    use crate::edge::reply::testing::{delta, done, reply, unknown};
    use crate::edge::testing::param_of;
    use qins_proto::v1::FinishReason;

    fn parse(body: Value) -> Result<CompletionBody, ApiError> {
        CompletionBody::parse(body)
    }

    fn param(body: Value) -> String {
        param_of(parse(body))
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
            (json!({ "prompt": "x", "seed": -5 }), "seed"),
            (json!({ "prompt": "x", "frobnicate": 1 }), "frobnicate"),
        ] {
            assert_eq!(param(body.clone()), name, "{body}");
        }
    }

    #[test]
    fn limits_are_qinsd_s() {
        // Past qinsd's limit of 20: sent, for qinsd to refuse with its rule.
        let body = parse(json!({ "prompt": "x", "logprobs": 21, "top_k": -1 })).unwrap();
        assert_eq!(body.request.top_logprobs, 21);
        assert_eq!(body.request.sampling.unwrap().top_k, Some(0));
    }

    #[tokio::test]
    async fn whole_and_streamed_replies_share_usage_and_finish() {
        let choices = || Choices {
            logprobs: false,
            offset: 0,
        };
        let chunks = TextChunks {
            choices: choices(),
            echo: Some("Once".into()),
        };
        let events = vec![delta(" upon"), unknown(), done(FinishReason::Length)];
        let meta = Meta::new("cmpl", "tiny".into());
        let payloads =
            stream_payloads(sse(reply(events), meta, "text_completion", true, chunks)).await;
        let chunk = |i: usize| serde_json::from_str::<Value>(&payloads[i]).expect("JSON");
        assert_eq!(chunk(0)["choices"][0]["text"], "Once");
        assert_eq!(chunk(1)["choices"][0]["text"], " upon");
        assert_eq!(chunk(2)["choices"][0]["finish_reason"], "length");
        assert_eq!(
            chunk(3)["usage"]["prompt_tokens_details"]["cached_tokens"],
            4
        );
        assert_eq!(payloads[4], "[DONE]");
    }
}
