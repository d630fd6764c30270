//! `Chat`: validate, wait for a slot, then stream the reply from a blocking
//! generation thread. The client dropping its stream raises the cancel flag,
//! which the engine checks between layers and at every step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use qins_proto::v1::{
    ChatDone, ChatEvent, ChatRequest, FinishReason as ProtoFinish, Sampling, TextDelta, Timings,
    Usage, chat_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{EventStream, cancel_when_dropped, status};
use crate::scheduler::Scheduler;
use qins_engine::{ChatMessage, FinishReason, Finished, GenerationEvent, RequestOptions};

/// Deltas buffered towards a slow client before generation waits for it.
const STREAM_BUFFER: usize = 64;

pub async fn chat(
    scheduler: &Arc<Scheduler>,
    request: ChatRequest,
) -> Result<Response<EventStream<ChatEvent>>, Status> {
    let received = Instant::now();
    let (messages, options, session_id) = chat_input(request);
    let prepared = {
        let scheduler = Arc::clone(scheduler);
        let session_id = session_id.clone();
        tokio::task::spawn_blocking(move || scheduler.prepare_chat(&messages, &options, session_id))
            .await
            .map_err(status::join_error)?
            .map_err(status::from_scheduler)?
    };
    let slot = scheduler
        .acquire_slot()
        .await
        .map_err(status::from_scheduler)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = cancel_when_dropped(tx.clone(), Arc::clone(&cancel));
    let scheduler = Arc::clone(scheduler);
    tokio::task::spawn_blocking(move || {
        let model = prepared.model_name().to_string();
        let queue_ms = slot.waited.as_secs_f64() * 1e3;
        let result = scheduler.run_chat(&slot, prepared, Arc::clone(&cancel), |event| {
            if let GenerationEvent::Delta(text) = event {
                let delta = chat_event::Event::Delta(TextDelta { text });
                if tx
                    .blocking_send(Ok(ChatEvent { event: Some(delta) }))
                    .is_err()
                {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        });
        drop(slot);
        let last = match result {
            Ok(finished) => {
                log_request(session_id.as_deref(), &finished, received, queue_ms);
                Ok(ChatEvent {
                    event: Some(chat_event::Event::Done(done(&finished, model, queue_ms))),
                })
            }
            Err(error) => {
                tracing::warn!(%error, "chat failed");
                Err(status::from_scheduler(error))
            }
        };
        // The client may be gone already; nothing is left to tell it.
        let _ = tx.blocking_send(last);
        watcher.abort();
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// The request's messages and options, converted; the engine validates them
/// ([`qins_engine::GenerationRequest::validate`], through the scheduler's
/// `prepare_chat`), so every entry point refuses a value the same way.
fn chat_input(request: ChatRequest) -> (Vec<ChatMessage>, RequestOptions, Option<String>) {
    let messages = request
        .messages
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect();
    let options = request_options(request.sampling.unwrap_or_default());
    let session_id = Some(request.session_id).filter(|id| !id.is_empty());
    (messages, options, session_id)
}

fn request_options(sampling: Sampling) -> RequestOptions {
    RequestOptions {
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        top_k: sampling.top_k.map(|k| k as usize),
        max_tokens: sampling.max_tokens.map(|m| m as usize),
        seed: sampling.seed,
        repetition_penalty: sampling.repetition_penalty,
        stop: sampling.stop,
    }
}

fn done(finished: &Finished, model: String, queue_ms: f64) -> ChatDone {
    let reason = match finished.reason {
        FinishReason::Stop => ProtoFinish::Stop,
        FinishReason::Length => ProtoFinish::Length,
        FinishReason::Cancelled => ProtoFinish::Cancelled,
    };
    ChatDone {
        finish_reason: reason as i32,
        usage: Some(Usage {
            prompt_tokens: finished.usage.prompt_tokens as u32,
            cached_prompt_tokens: finished.usage.cached_prompt_tokens as u32,
            completion_tokens: finished.usage.completion_tokens as u32,
        }),
        timings: Some(Timings {
            queue_ms,
            time_to_first_token_ms: finished.timings.time_to_first_token.as_secs_f64() * 1e3,
            total_ms: finished.timings.total.as_secs_f64() * 1e3,
            tokens_per_second: finished.timings.tokens_per_second,
        }),
        model,
    }
}

/// One log line per request, with its timings.
fn log_request(session: Option<&str>, finished: &Finished, received: Instant, queue_ms: f64) {
    tracing::info!(
        session = session.unwrap_or("-"),
        finish = ?finished.reason,
        prompt_tokens = finished.usage.prompt_tokens,
        cached_tokens = finished.usage.cached_prompt_tokens,
        completion_tokens = finished.usage.completion_tokens,
        queue_ms = format!("{queue_ms:.0}"),
        ttft_ms = format!("{:.0}", finished.timings.time_to_first_token.as_secs_f64() * 1e3),
        tokens_per_second = format!("{:.1}", finished.timings.tokens_per_second),
        total_ms = received.elapsed().as_millis() as u64,
        "chat"
    );
}
