//! `POST /ui/chat`: the page's streaming chat. Replies as server-sent
//! events: `delta` `{"text"}` repeatedly, then one `done` with the finish
//! reason (`stop`, `length` or `tool_calls`), usage and timings; a failure
//! mid-reply, a reply qinsd cancelled included, is one `error` event.
//!
//! The body is `messages`, `session_id`, an optional `model` (omitted: the
//! resident one) and the sampling fields of `SAMPLING`; anything else is
//! refused by name, as in the other dialects.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, stream};
use qins_proto::v1::{ChatRequest, Sampling};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::edge::model::{self, Omitted};
use crate::edge::params::{self, SamplingField, SamplingTable};
use crate::edge::reply::{Finished, Reply, ReplyEvent};
use crate::edge::{ApiJson, message};
use crate::error::ApiError;
use crate::state::AppState;

/// The page's sampling fields, under qinsd's names.
const SAMPLING: &SamplingTable = &[
    ("temperature", SamplingField::Temperature),
    ("top_p", SamplingField::TopP),
    ("top_k", SamplingField::TopK),
    ("max_tokens", SamplingField::MaxTokens),
    ("seed", SamplingField::Seed),
    ("stop", SamplingField::Stop),
];

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (model, request) = parse(body)?;
    model::resolve(&state.daemon, model.as_deref(), Omitted::Resident).await?;
    let started = state.daemon.chat(request).await;
    let reply = Reply::new(started.map_err(|e| params::name_refused_param(e, SAMPLING, &[]))?);
    Ok(Sse::new(events(reply))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The requested model and the request.
fn parse(body: Value) -> Result<(Option<String>, ChatRequest), ApiError> {
    let mut sampling = Sampling::default();
    let mut request = ChatRequest::default();
    let mut messages = None;
    let mut model = None;
    for (name, value) in params::object(body)? {
        if params::read_sampling(SAMPLING, &mut sampling, &name, &value)? {
            continue;
        }
        match name.as_str() {
            "messages" => {
                let list: Vec<ChatMessage> = serde_json::from_value(value).map_err(|_| {
                    params::invalid("messages", "must be a list of {role, content} strings")
                })?;
                messages = Some(
                    list.into_iter()
                        .map(|m| message(m.role, m.content))
                        .collect(),
                );
            }
            "session_id" => request.session_id = params::string(&name, value)?,
            "model" => model = Some(params::string(&name, value)?),
            _ => return Err(params::refused(&name, "it is not a field of /ui/chat")),
        }
    }
    request.messages = messages.ok_or_else(|| params::invalid("messages", "is required"))?;
    request.sampling = Some(sampling);
    Ok((model, request))
}

/// The SSE events of one reply. The reply (and its gRPC call) lives inside
/// this stream: when the browser goes away (Stop, closed tab) axum drops
/// it, which makes qinsd stop generating.
fn events(reply: Reply) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(reply, |mut reply| async move {
        let event = match reply.next().await? {
            ReplyEvent::Delta(delta) => json_event("delta", &json!({ "text": delta.text })),
            ReplyEvent::Done(finished) => json_event("done", &done_json(&finished)),
            ReplyEvent::Error(error) => json_event("error", &error.body()),
        };
        Some((Ok(event), reply))
    })
}

fn json_event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn done_json(finished: &Finished) -> Value {
    let (usage, timings) = (&finished.usage, &finished.timings);
    json!({
        "finish_reason": finished.finish.as_str(),
        "model": finished.model,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        },
        "timings": {
            "queue_ms": timings.queue_ms,
            "time_to_first_token_ms": timings.time_to_first_token_ms,
            "total_ms": timings.total_ms,
            "tokens_per_second": timings.tokens_per_second,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::reply::testing::{delta, done, reply, unknown};
    use crate::edge::testing::param_of;
    use futures_util::StreamExt;
    use qins_proto::v1::FinishReason;

    fn param(body: Value) -> String {
        param_of(parse(body))
    }

    #[test]
    fn the_page_s_fields_reach_the_request_and_others_are_refused() {
        let (model, request) = parse(json!({
            "messages": [{ "role": "user", "content": "hi" }], "session_id": "s",
            "temperature": 0.5, "top_k": -1, "seed": -1, "max_tokens": 8, "stop": "x",
            "model": "tiny",
        }))
        .expect("accepted");
        assert_eq!(model.as_deref(), Some("tiny"));
        assert_eq!(request.session_id, "s");
        let sampling = request.sampling.expect("sampling");
        assert_eq!(sampling.top_k, Some(0), "negative: no limit");
        assert_eq!(sampling.seed, None, "-1: a fresh seed");
        assert_eq!(sampling.max_tokens, Some(8));
        let user = json!([{ "role": "user", "content": "hi" }]);
        assert_eq!(
            param(json!({ "messages": user, "frobnicate": 1 })),
            "frobnicate"
        );
        assert_eq!(param(json!({ "messages": user, "seed": -2 })), "seed");
        assert_eq!(param(json!({ "messages": 5 })), "messages");
        assert_eq!(param(json!({})), "messages");
    }

    async fn names(events: Vec<Result<qins_proto::v1::ChatEvent, tonic::Status>>) -> Vec<String> {
        let events: Vec<_> = super::events(reply(events)).collect().await;
        let response = Sse::new(stream::iter(events)).into_response();
        crate::edge::testing::body_lines(response)
            .await
            .into_iter()
            .filter_map(|line| line.strip_prefix("event: ").map(str::to_string))
            .collect()
    }

    #[tokio::test]
    async fn events_without_payload_are_skipped_and_cancelled_is_an_error() {
        let finished = names(vec![delta("a"), unknown(), done(FinishReason::Stop)]).await;
        assert_eq!(finished, ["delta", "done"]);
        let cancelled = names(vec![delta("a"), done(FinishReason::Cancelled)]).await;
        assert_eq!(cancelled, ["delta", "error"]);
    }
}
