//! `POST /ui/chat`: the page's streaming chat. Replies as server-sent
//! events: `delta` `{"text"}` repeatedly, then one `done` with the finish
//! reason, usage and timings; a failure mid-reply is one `error` event.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use qins_proto::v1::{ChatDone, ChatRequest, chat_event};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, SamplingParams, Stop, finish_reason_name, message};
use crate::app::AppState;
use crate::daemon::ChatStream;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    messages: Vec<ChatMessage>,
    session_id: Option<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    max_tokens: Option<u32>,
    seed: Option<u64>,
    stop: Option<Stop>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    let sampling = SamplingParams {
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        max_tokens: body.max_tokens,
        seed: body.seed,
        stop: Stop::into_vec(body.stop),
    };
    let request = ChatRequest {
        messages: body
            .messages
            .into_iter()
            .map(|m| message(m.role, m.content))
            .collect(),
        session_id: body.session_id.unwrap_or_default(),
        sampling: Some(sampling.into()),
        ..ChatRequest::default()
    };
    let stream = state.daemon.chat(request).await?;
    Ok(Sse::new(events(stream))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The SSE events of one reply. The gRPC stream lives inside this stream:
/// when the browser goes away (Stop, closed tab) axum drops it, and with it
/// the gRPC call, which makes qinsd stop generating.
fn events(grpc: ChatStream) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(Some(grpc), |grpc| async move {
        let mut grpc = grpc?;
        loop {
            let (event, more) = match grpc.message().await {
                Ok(Some(ev)) => match ev.event {
                    Some(chat_event::Event::Delta(d)) => {
                        (json_event("delta", &json!({ "text": d.text })), true)
                    }
                    Some(chat_event::Event::Done(done)) => {
                        (json_event("done", &done_json(&done)), false)
                    }
                    None => continue,
                },
                Ok(None) => {
                    let e = ApiError::Upstream("the reply ended without a done event".into());
                    (json_event("error", &e.body()), false)
                }
                Err(status) => (json_event("error", &ApiError::from(status).body()), false),
            };
            // After `done` or an error the stream ends (and the call is dropped).
            return Some((Ok(event), more.then_some(grpc)));
        }
    })
}

fn json_event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn done_json(done: &ChatDone) -> Value {
    let usage = done.usage.unwrap_or_default();
    let timings = done.timings.unwrap_or_default();
    json!({
        "finish_reason": finish_reason_name(done.finish_reason),
        "model": done.model,
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
