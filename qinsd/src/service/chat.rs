//! `Chat`: validate, wait for a slot, then stream the reply from a blocking
//! generation thread. The client dropping its stream raises the cancel flag,
//! which the engine checks between layers and at every step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use qins_proto::v1::{
    ChatDone, ChatEvent, ChatRequest, FinishReason as ProtoFinish, ResponseFormat, Sampling,
    TextDelta, Timings, TokenLogprob as ProtoLogprob, Usage, chat_event, response_format,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::tool_reply::{ToolReply, calls_of, messages_of, tools_of};
use super::{EventStream, cancel_when_dropped, status};
use crate::scheduler::Scheduler;
use qins_engine::tools;
use qins_engine::{
    FinishReason, Finished, GenerationEvent, OutputFormat, Prompt, RequestOptions, TokenLogprob,
};

/// Deltas buffered towards a slow client before generation waits for it.
const STREAM_BUFFER: usize = 64;

pub async fn chat(
    scheduler: &Arc<Scheduler>,
    request: ChatRequest,
) -> Result<Response<EventStream<ChatEvent>>, Status> {
    let received = Instant::now();
    let (prompt, options, session_id, tool_reply) = chat_input(request)?;
    let prepared = {
        let scheduler = Arc::clone(scheduler);
        let session_id = session_id.clone();
        tokio::task::spawn_blocking(move || scheduler.prepare_chat(&prompt, &options, session_id))
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
        // Token logprobs wait for the delta that carries their text.
        let mut pending: Vec<ProtoLogprob> = Vec::new();
        let mut tool_reply = tool_reply;
        let send = |text: String, pending: &mut Vec<ProtoLogprob>| {
            let delta = chat_event::Event::Delta(TextDelta {
                text,
                logprobs: std::mem::take(pending),
            });
            tx.blocking_send(Ok(ChatEvent { event: Some(delta) }))
                .is_ok()
        };
        let result = scheduler.run_chat(&slot, prepared, Arc::clone(&cancel), |event| {
            let text = match event {
                GenerationEvent::Token(token) => {
                    pending.push(proto_logprob(token));
                    return;
                }
                GenerationEvent::Delta(text) if !text.is_empty() || !pending.is_empty() => text,
                GenerationEvent::Delta(_) | GenerationEvent::Finished(_) => return,
            };
            // A reply that may be a tool call is held back.
            let text = match tool_reply.as_mut() {
                Some(reply) => match reply.push(text) {
                    Some(text) => text,
                    None => return,
                },
                None => text,
            };
            if !send(text, &mut pending) {
                cancel.store(true, Ordering::SeqCst);
            }
        });
        drop(slot);
        let last = match result {
            Ok(finished) => {
                log_request(session_id.as_deref(), &finished, received, queue_ms);
                let mut done = done(&finished, model, queue_ms);
                if let Some(reply) = tool_reply {
                    let (calls, held) = reply.finish();
                    if !held.is_empty() {
                        send(held, &mut pending);
                    }
                    if !calls.is_empty() && finished.reason == FinishReason::Stop {
                        done.finish_reason = ProtoFinish::ToolCalls as i32;
                    }
                    done.tool_calls = calls;
                }
                Ok(ChatEvent {
                    event: Some(chat_event::Event::Done(done)),
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

/// The engine's token logprob as the proto's, with its text.
fn proto_logprob(token: TokenLogprob) -> ProtoLogprob {
    ProtoLogprob {
        id: token.id,
        text: String::from_utf8_lossy(&token.bytes).into_owned(),
        bytes: token.bytes,
        logprob: token.logprob,
        top: token.top.into_iter().map(proto_logprob).collect(),
    }
}

/// What `chat_input` makes of a request.
type ChatInput = (Prompt, RequestOptions, Option<String>, Option<ToolReply>);

/// The request's prompt and options. Only the request's shape is checked
/// here (which prompt, which combinations); value ranges are the engine's
/// one rule ([`qins_engine::GenerationRequest::validate`], through the
/// scheduler's `prepare_chat`). With tools, the conversation describes them
/// and the reply is constrained.
fn chat_input(request: ChatRequest) -> Result<ChatInput, Status> {
    let prompt = match (request.messages.is_empty(), request.prompt.is_empty()) {
        (false, false) => {
            return Err(status::invalid(
                "set messages (a chat) or prompt (a plain completion), not both",
            ));
        }
        (true, true) => {
            return Err(status::invalid(
                "messages is empty: send at least one user message (or a prompt)",
            ));
        }
        (true, false) => Prompt::Raw(request.prompt),
        (false, true) => Prompt::Messages(messages_of(request.messages)?),
    };
    let mut options = request_options(request.sampling.unwrap_or_default());
    options.lookup = request.lookup;
    options.format = output_format(request.response_format)?;
    if request.logprobs {
        options.logprobs = Some(request.top_logprobs as usize);
    } else if request.top_logprobs > 0 {
        return Err(status::invalid("top_logprobs needs logprobs = true"));
    }
    let session_id = Some(request.session_id).filter(|id| !id.is_empty());
    let (tools, choice) = tools_of(request.tools, request.tool_choice)?;
    let calls = calls_of(request.disable_parallel_tool_calls);
    let tool_reply = ToolReply::new(tools.clone(), &choice, calls);
    let prompt = match (prompt, tool_reply.is_some()) {
        (prompt, false) => prompt,
        (Prompt::Raw(_), true) => {
            return Err(status::invalid(
                "tools need a chat (messages), not a raw prompt",
            ));
        }
        (Prompt::Messages(messages), true) => {
            if options.format.is_some() {
                return Err(status::invalid(
                    "response_format cannot be combined with tools",
                ));
            }
            options.format = tools::output_format(&tools, &choice, calls);
            Prompt::Messages(tools::with_tools(messages, &tools, &choice, calls))
        }
    };
    Ok((prompt, options, session_id, tool_reply))
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
        // Ranges are checked with the others in GenerationRequest::validate.
        presence_penalty: sampling.presence_penalty,
        frequency_penalty: sampling.frequency_penalty,
        min_p: sampling.min_p,
        logit_bias: sorted_bias(sampling.logit_bias),
        logprobs: None,
        format: None,
        lookup: None,
    }
}

/// The requested JSON output, its schema parsed.
fn output_format(format: Option<ResponseFormat>) -> Result<Option<OutputFormat>, Status> {
    match format.and_then(|f| f.format) {
        None | Some(response_format::Format::JsonObject(false)) => Ok(None),
        Some(response_format::Format::JsonObject(true)) => Ok(Some(OutputFormat::JsonObject)),
        Some(response_format::Format::JsonSchema(text)) => serde_json::from_str(&text)
            .map(|schema| Some(OutputFormat::JsonSchema(schema)))
            .map_err(|e| status::invalid(format!("response_format.json_schema is not JSON: {e}"))),
    }
}

/// The bias map in id order, so the same request samples the same way.
fn sorted_bias(bias: std::collections::HashMap<u32, f32>) -> Vec<(u32, f32)> {
    let mut bias: Vec<(u32, f32)> = bias.into_iter().collect();
    bias.sort_by_key(|&(id, _)| id);
    bias
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
            draft_tokens: finished.timings.draft_tokens as u32,
            accepted_draft_tokens: finished.timings.accepted_draft_tokens as u32,
        }),
        model,
        tool_calls: Vec::new(),
        stop_sequence: finished.stop_sequence.clone().unwrap_or_default(),
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
        draft_tokens = finished.timings.draft_tokens,
        accepted_draft_tokens = finished.timings.accepted_draft_tokens,
        total_ms = received.elapsed().as_millis() as u64,
        "chat"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_messages_are_refused() {
        let error = chat_input(ChatRequest::default()).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("messages"));
    }

    #[test]
    fn a_prompt_is_a_raw_completion_and_excludes_messages() {
        let raw = ChatRequest {
            prompt: "Once upon".into(),
            logprobs: true,
            top_logprobs: 3,
            ..Default::default()
        };
        let (prompt, options, _, _) = chat_input(raw.clone()).unwrap();
        assert!(matches!(prompt, Prompt::Raw(text) if text == "Once upon"));
        assert_eq!(options.logprobs, Some(3));
        let both = ChatRequest {
            messages: vec![qins_proto::v1::Message {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
            ..raw
        };
        let error = chat_input(both).unwrap_err();
        assert!(error.message().contains("not both"), "{}", error.message());
        let top_alone = ChatRequest {
            prompt: "x".into(),
            top_logprobs: 2,
            ..Default::default()
        };
        let error = chat_input(top_alone).unwrap_err();
        assert!(
            error.message().contains("top_logprobs"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn response_formats_are_read_and_bad_schemas_refused() {
        let with = |format| ChatRequest {
            prompt: "x".into(),
            response_format: Some(ResponseFormat {
                format: Some(format),
            }),
            ..Default::default()
        };
        let (_, options, _, _) =
            chat_input(with(response_format::Format::JsonObject(true))).unwrap();
        assert_eq!(options.format, Some(OutputFormat::JsonObject));
        let schema = response_format::Format::JsonSchema(r#"{"type":"integer"}"#.into());
        let (_, options, _, _) = chat_input(with(schema)).unwrap();
        assert_eq!(
            options.format,
            Some(OutputFormat::JsonSchema(
                serde_json::json!({ "type": "integer" })
            ))
        );
        let error = chat_input(with(response_format::Format::JsonSchema("{".into()))).unwrap_err();
        assert!(
            error.message().contains("json_schema"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn tools_are_described_constrained_and_their_turns_rendered() {
        use qins_proto::v1::{Message, Tool, ToolCall};
        let request = ChatRequest {
            messages: vec![
                Message {
                    role: "user".into(),
                    content: "Weather in Paris?".into(),
                    ..Default::default()
                },
                Message {
                    role: "assistant".into(),
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city": "Paris"}"#.into(),
                    }],
                    ..Default::default()
                },
                Message {
                    role: "tool".into(),
                    content: "18 C".into(),
                    tool_call_id: "call_1".into(),
                    ..Default::default()
                },
            ],
            tools: vec![Tool {
                name: "get_weather".into(),
                description: "Weather in a city".into(),
                parameters: r#"{"type": "object"}"#.into(),
            }],
            tool_choice: "required".into(),
            ..Default::default()
        };
        let (prompt, options, _, reply) = chat_input(request.clone()).unwrap();
        let Prompt::Messages(messages) = prompt else {
            panic!("a chat");
        };
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(messages[0].content.contains("get_weather"));
        assert!(messages[2].content.contains(r#""city":"Paris""#));
        assert_eq!(messages[3].content, "Result of tool call call_1: 18 C");
        // Parallel calls by default: calls a line each, within a Lark grammar.
        assert!(messages[0].content.contains("one such object per line"));
        assert!(matches!(options.format, Some(OutputFormat::Lark(_))));
        assert!(reply.is_some());
        let one = ChatRequest {
            disable_parallel_tool_calls: true,
            ..request.clone()
        };
        let (prompt, options, _, _) = chat_input(one).unwrap();
        let Prompt::Messages(messages) = prompt else {
            panic!("a chat");
        };
        assert!(!messages[0].content.contains("per line"));
        assert!(matches!(options.format, Some(OutputFormat::JsonSchema(_))));
        for (bad, needle) in [
            (
                ChatRequest {
                    tool_choice: "nope".into(),
                    ..request.clone()
                },
                "tool_choice",
            ),
            (
                ChatRequest {
                    response_format: Some(ResponseFormat {
                        format: Some(response_format::Format::JsonObject(true)),
                    }),
                    ..request.clone()
                },
                "response_format",
            ),
            (
                ChatRequest {
                    tools: vec![Tool {
                        name: "f".into(),
                        parameters: "{".into(),
                        ..Default::default()
                    }],
                    tool_choice: String::new(),
                    ..request.clone()
                },
                "parameters",
            ),
        ] {
            let error = chat_input(bad).unwrap_err();
            assert!(error.message().contains(needle), "{}", error.message());
        }
        let none = ChatRequest {
            tool_choice: "none".into(),
            ..request
        };
        let (_, options, _, reply) = chat_input(none).unwrap();
        assert!(options.format.is_none() && reply.is_none());
    }

    #[test]
    fn sampling_extras_reach_the_options_with_the_bias_in_id_order() {
        let options = request_options(Sampling {
            presence_penalty: Some(0.5),
            frequency_penalty: Some(1.0),
            min_p: Some(0.05),
            logit_bias: [(9, 1.0), (2, -100.0)].into_iter().collect(),
            ..Default::default()
        });
        assert_eq!(options.presence_penalty, Some(0.5));
        assert_eq!(options.frequency_penalty, Some(1.0));
        assert_eq!(options.min_p, Some(0.05));
        assert_eq!(options.logit_bias, vec![(2, -100.0), (9, 1.0)]);
    }
}
