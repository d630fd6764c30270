//! qinsd's reply stream, read once for every dialect.
//!
//! The gRPC stream of a chat is `TextDelta`s and one `ChatDone`; a
//! [`Reply`] turns it into [`ReplyEvent`]s and decides, in one place:
//! - an event with no payload is skipped: it is one this bridge does not
//!   know (a newer qinsd's oneof member decodes as none), not the end;
//! - a delta with neither text nor tokens carries nothing and is skipped;
//! - the stream ending without `done` is an error (502);
//! - a reply qinsd cancelled is an error (503, qinsd is stopping): the text
//!   so far is not the whole reply, and no dialect may report it as a
//!   finished one (`stop`). Only qinsd's shutdown cancels a reply that
//!   someone still reads; a client that goes away reads nothing.
//!
//! After a `Done` or an `Error` the reply is over. Dropping a [`Reply`]
//! drops the gRPC call, which makes qinsd stop generating.

use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use qins_proto::v1::{
    ChatDone, ChatEvent, FinishReason, TextDelta, Timings, TokenLogprob, ToolCall, chat_event,
};
use tonic::Status;

use crate::daemon::ChatStream;
use crate::error::ApiError;

/// Why a reply ended, as every dialect sees it (each writes its own name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// The reply is a tool call ([`Finished::tool_calls`]).
    ToolCalls,
}

impl Finish {
    /// The edge's own name (`stop`, `length`, `tool_calls`): OpenAI's, which
    /// the page's `/ui` speaks too; Anthropic and ollama write their own.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of a finished reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cached ones included.
    pub prompt_tokens: u32,
    /// Prompt tokens whose K/V came from the session's cache.
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What qinsd reports when a reply ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub finish: Finish,
    pub usage: Usage,
    pub timings: Timings,
    /// The model that answered.
    pub model: String,
    /// The calls the reply made, in order (`Finish::ToolCalls`).
    pub tool_calls: Vec<ToolCall>,
    /// The stop string that ended the reply (`Finish::Stop`); None when an
    /// end-of-turn token did.
    pub stop_sequence: Option<String>,
}

/// One item of a reply.
#[derive(Debug)]
pub enum ReplyEvent {
    /// Text, and with logprobs the tokens it comes from (one may be empty).
    Delta(TextDelta),
    /// The end of a finished reply.
    Done(Finished),
    /// The end of a failed one.
    Error(ApiError),
}

/// A whole reply, read by [`Reply::collect`].
#[derive(Debug)]
pub struct Collected {
    pub text: String,
    /// With logprobs: every token of `text`, in order.
    pub logprobs: Vec<TokenLogprob>,
    pub finished: Finished,
}

/// A reply in flight (see the module comment for its rules).
pub struct Reply {
    events: BoxStream<'static, Result<ChatEvent, Status>>,
    ended: bool,
}

impl Reply {
    pub fn new(grpc: ChatStream) -> Self {
        Self::from_events(stream::unfold(grpc, |mut grpc| async move {
            let item = grpc.message().await.transpose()?;
            Some((item, grpc))
        }))
    }

    /// A reply over any event stream (qinsd's, or a test's).
    pub fn from_events(
        events: impl Stream<Item = Result<ChatEvent, Status>> + Send + 'static,
    ) -> Self {
        Self {
            events: events.boxed(),
            ended: false,
        }
    }

    /// The next item; None once a `Done` or an `Error` was returned.
    pub async fn next(&mut self) -> Option<ReplyEvent> {
        if self.ended {
            return None;
        }
        let event = loop {
            match self.events.next().await {
                None => {
                    break ReplyEvent::Error(ApiError::Upstream(
                        "the reply ended without a done event".into(),
                    ));
                }
                Some(Err(status)) => break ReplyEvent::Error(status.into()),
                Some(Ok(ChatEvent { event: None })) => continue,
                Some(Ok(ChatEvent {
                    event: Some(chat_event::Event::Delta(delta)),
                })) => {
                    if delta.text.is_empty() && delta.logprobs.is_empty() {
                        continue;
                    }
                    return Some(ReplyEvent::Delta(delta));
                }
                Some(Ok(ChatEvent {
                    event: Some(chat_event::Event::Done(done)),
                })) => break finished(done),
            }
        };
        self.ended = true;
        Some(event)
    }

    /// The whole reply, or the error that ended it.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(event) = self.next().await {
            match event {
                ReplyEvent::Delta(delta) => {
                    text.push_str(&delta.text);
                    logprobs.extend(delta.logprobs);
                }
                ReplyEvent::Done(finished) => {
                    return Ok(Collected {
                        text,
                        logprobs,
                        finished,
                    });
                }
                ReplyEvent::Error(error) => return Err(error),
            }
        }
        Err(ApiError::Upstream("the reply was already read".into()))
    }
}

/// qinsd's `done` as the end of a reply: finished, or cancelled (an error).
fn finished(done: ChatDone) -> ReplyEvent {
    let finish = match FinishReason::try_from(done.finish_reason) {
        Ok(FinishReason::Length) => Finish::Length,
        Ok(FinishReason::ToolCalls) => Finish::ToolCalls,
        Ok(FinishReason::Cancelled) => {
            return ReplyEvent::Error(ApiError::DaemonDown(
                "qinsd cancelled the reply before it finished (it is shutting down)".into(),
            ));
        }
        // STOP, and what this bridge does not know: a reply that ended with
        // `done` ended normally as far as it can tell.
        _ => Finish::Stop,
    };
    let usage = done.usage.unwrap_or_default();
    ReplyEvent::Done(Finished {
        finish,
        usage: Usage {
            prompt_tokens: usage.prompt_tokens,
            cached_prompt_tokens: usage.cached_prompt_tokens,
            completion_tokens: usage.completion_tokens,
        },
        timings: done.timings.unwrap_or_default(),
        model: done.model,
        tool_calls: done.tool_calls,
        stop_sequence: Some(done.stop_sequence).filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
pub mod testing {
    //! Replies from a list of events, for the dialects' tests.

    use super::*;
    use qins_proto::v1::Usage as ProtoUsage;

    pub fn delta(text: &str) -> Result<ChatEvent, Status> {
        Ok(ChatEvent {
            event: Some(chat_event::Event::Delta(TextDelta {
                text: text.into(),
                logprobs: Vec::new(),
            })),
        })
    }

    pub fn done(reason: FinishReason) -> Result<ChatEvent, Status> {
        Ok(ChatEvent {
            event: Some(chat_event::Event::Done(ChatDone {
                finish_reason: reason as i32,
                usage: Some(ProtoUsage {
                    prompt_tokens: 10,
                    cached_prompt_tokens: 4,
                    completion_tokens: 2,
                }),
                model: "tiny".into(),
                ..ChatDone::default()
            })),
        })
    }

    /// The end of a reply that made `calls`.
    pub fn calls_done(calls: Vec<ToolCall>) -> Result<ChatEvent, Status> {
        Ok(ChatEvent {
            event: Some(chat_event::Event::Done(ChatDone {
                finish_reason: FinishReason::ToolCalls as i32,
                tool_calls: calls,
                ..ChatDone::default()
            })),
        })
    }

    /// An event with no payload, as a newer qinsd's unknown one decodes.
    pub fn unknown() -> Result<ChatEvent, Status> {
        Ok(ChatEvent { event: None })
    }

    pub fn reply(events: Vec<Result<ChatEvent, Status>>) -> Reply {
        Reply::from_events(stream::iter(events))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[tokio::test]
    async fn events_without_payload_and_empty_deltas_are_skipped() {
        let reply = reply(vec![
            delta("He"),
            unknown(),
            delta(""),
            delta("llo"),
            done(FinishReason::Length),
        ]);
        let whole = reply.collect().await.expect("a whole reply");
        assert_eq!(whole.text, "Hello");
        assert_eq!(whole.finished.finish, Finish::Length);
        assert_eq!(whole.finished.usage.cached_prompt_tokens, 4);
        assert_eq!(whole.finished.usage.total_tokens(), 12);
        assert_eq!(whole.finished.model, "tiny");
    }

    #[tokio::test]
    async fn a_cancelled_reply_is_an_error_not_a_finish() {
        let mut reply = reply(vec![delta("Hel"), done(FinishReason::Cancelled)]);
        assert!(matches!(reply.next().await, Some(ReplyEvent::Delta(_))));
        match reply.next().await {
            Some(ReplyEvent::Error(error)) => assert_eq!(error.status().as_u16(), 503),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(reply.next().await.is_none(), "over after the error");
    }

    #[tokio::test]
    async fn finish_reasons_map_once() {
        for (reason, finish) in [
            (FinishReason::Stop, Finish::Stop),
            (FinishReason::Length, Finish::Length),
            (FinishReason::ToolCalls, Finish::ToolCalls),
            (FinishReason::Unspecified, Finish::Stop),
        ] {
            let whole = reply(vec![done(reason)]).collect().await.expect("done");
            assert_eq!(whole.finished.finish, finish, "{reason:?}");
        }
    }

    #[tokio::test]
    async fn a_stream_without_done_or_with_a_status_fails() {
        let cut = reply(vec![delta("x")]).collect().await.unwrap_err();
        assert_eq!(cut.status().as_u16(), 502);
        let refused = reply(vec![Err(Status::invalid_argument("top_p"))])
            .collect()
            .await
            .unwrap_err();
        assert_eq!(refused.status().as_u16(), 400);
    }
}
