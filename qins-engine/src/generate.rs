//! The decode loop: prefill the prompt, then sample, stream and feed back one
//! token at a time until an end token, a stop string, the token limit, the
//! context limit, or a cancel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;

use super::constraint::Constraint;
use super::detokenize::StreamDecoder;
use super::logprobs::{MAX_TOP_LOGPROBS, TokenBytes, TokenLogprob, token_logprob};
use super::sampling::{Sampler, SamplingParams};
use super::session::Session;
use super::stop::{StopMatcher, StopScan};
use super::{EngineError, LanguageModel};

#[derive(Clone, Debug, Default)]
pub struct GenerationRequest {
    pub prompt_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    /// At most this many generated tokens; None runs to the context limit.
    pub max_tokens: Option<usize>,
    /// Text that ends the reply; it is not part of the output.
    pub stop: Vec<String>,
    /// Tokens that end the reply (end of turn, end of text); not output.
    pub stop_token_ids: Vec<u32>,
    /// Report each generated token's log probability (a `Token` event before
    /// the delta that carries its text) with this many alternatives; None:
    /// no `Token` events.
    pub logprobs: Option<usize>,
    /// JSON output: the grammar every drawn token must follow (its state
    /// before the first token; each run works on its own copy).
    pub constraint: Option<Constraint>,
}

impl GenerationRequest {
    /// The one rule for what a generation may ask for. Every entry point
    /// comes through it: the daemon's chats and `qinsd generate` (via
    /// [`crate::ChatModel::request`], before a slot is taken) and the decode
    /// loop itself. Clients check nothing beyond types: qinsd's message is
    /// the one a user sees.
    pub fn validate(&self) -> Result<(), EngineError> {
        self.sampling.validate()?;
        if self.max_tokens == Some(0) {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(EngineError::InvalidRequest(
                "stop strings must not be empty".into(),
            ));
        }
        if let Some(top) = self.logprobs
            && top > MAX_TOP_LOGPROBS
        {
            return Err(EngineError::InvalidRequest(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS} (got {top})"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    Delta(String),
    /// A generated token's log probability (requests with `logprobs` only;
    /// never for the end token). Its text comes in the next `Delta`, unless
    /// a stop string cuts it.
    Token(TokenLogprob),
    Finished(Finished),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    Cancelled,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose K/V came from the session's cache.
    pub cached_prompt_tokens: usize,
    /// Sampled tokens, the end token included.
    pub completion_tokens: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Prefill plus the first sample; zero when nothing was sampled.
    pub time_to_first_token: Duration,
    pub total: Duration,
    /// Decode speed: tokens after the first over the time after the first.
    pub tokens_per_second: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// The stop string that ended the reply (reason `Stop`); None when an
    /// end token or anything else did.
    pub stop_sequence: Option<String>,
    /// The generated ids, an end token included.
    pub tokens: Vec<u32>,
    pub usage: Usage,
    pub timings: Timings,
}

/// Runs `request` in `session`, streaming text through `on_event`; the last
/// event is `Finished`, which is also returned. A cancel (the flag, checked
/// every step and by the model) finishes with reason `Cancelled`; errors
/// other than cancellation are returned without a `Finished` event.
pub fn generate<M: LanguageModel>(
    model: &M,
    session: &mut Session<M>,
    tokenizer: &Tokenizer,
    request: &GenerationRequest,
    cancel: &AtomicBool,
    mut on_event: impl FnMut(GenerationEvent),
) -> Result<Finished, EngineError> {
    let mut run = Run::new(session, tokenizer, request, cancel)?;
    let reason = run.decode_loop(model, &mut on_event)?;
    let finished = run.finish(reason, &mut on_event)?;
    on_event(GenerationEvent::Finished(finished.clone()));
    Ok(finished)
}

/// The state of one request while it runs.
struct Run<'a, M: LanguageModel> {
    session: &'a mut Session<M>,
    request: &'a GenerationRequest,
    cancel: &'a AtomicBool,
    sampler: Sampler,
    decoder: StreamDecoder<'a>,
    /// Set when the request asks for log probabilities.
    token_bytes: Option<TokenBytes<'a>>,
    constraint: Option<Constraint>,
    stops: StopMatcher,
    /// Prompt and generated tokens: what the repetition penalty sees.
    history: Vec<u32>,
    usage: Usage,
    started: Instant,
    first_token_at: Option<Instant>,
    /// The stop string that ended the text: nothing after it may be emitted.
    stopped_by: Option<String>,
}

impl<'a, M: LanguageModel> Run<'a, M> {
    fn new(
        session: &'a mut Session<M>,
        tokenizer: &'a Tokenizer,
        request: &'a GenerationRequest,
        cancel: &'a AtomicBool,
    ) -> Result<Self, EngineError> {
        request.validate()?;
        session.check_fits(request.prompt_tokens.len())?;
        Ok(Self {
            session,
            request,
            cancel,
            sampler: Sampler::new(request.sampling.clone())?,
            decoder: StreamDecoder::new(tokenizer, true),
            token_bytes: request.logprobs.map(|_| TokenBytes::new(tokenizer)),
            constraint: request.constraint.clone(),
            stops: StopMatcher::new(&request.stop),
            history: request.prompt_tokens.clone(),
            usage: Usage {
                prompt_tokens: request.prompt_tokens.len(),
                ..Usage::default()
            },
            started: Instant::now(),
            first_token_at: None,
            stopped_by: None,
        })
    }

    fn decode_loop(
        &mut self,
        model: &M,
        on_event: &mut impl FnMut(GenerationEvent),
    ) -> Result<FinishReason, EngineError> {
        if self.cancelled() {
            return Ok(FinishReason::Cancelled);
        }
        let prefill = self
            .session
            .prefill(model, &self.request.prompt_tokens, self.cancel);
        let mut logits = match prefill {
            Ok(prefill) => {
                self.usage.cached_prompt_tokens = prefill.cached_prompt_tokens;
                prefill.logits
            }
            Err(e) => return self.cancelled_or(e),
        };
        loop {
            let token = self.sample(&logits)?;
            self.report_logprob(&logits, token, on_event);
            if let Some(reason) = self.emit(token, on_event)? {
                return Ok(reason);
            }
            if self.cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            logits = match self.session.feed(model, token, self.cancel) {
                Ok(logits) => logits,
                Err(e) => return self.cancelled_or(e),
            };
        }
    }

    /// Draws the next token (within the output grammar, if any).
    fn sample(&mut self, logits: &[f32]) -> Result<u32, EngineError> {
        let token = match &mut self.constraint {
            Some(constraint) => {
                let mut allowed = logits.to_vec();
                constraint.mask(&mut allowed)?;
                let token = self.sampler.sample(&allowed, &self.history);
                if !self.request.stop_token_ids.contains(&token) {
                    constraint.accept(token)?;
                }
                token
            }
            None => self.sampler.sample(logits, &self.history),
        };
        self.history.push(token);
        self.usage.completion_tokens += 1;
        self.first_token_at.get_or_insert_with(Instant::now);
        Ok(token)
    }

    /// Sends the token's log probability when the request asks for it.
    fn report_logprob(
        &self,
        logits: &[f32],
        token: u32,
        on_event: &mut impl FnMut(GenerationEvent),
    ) {
        let (Some(top), Some(bytes)) = (self.request.logprobs, &self.token_bytes) else {
            return;
        };
        if !self.request.stop_token_ids.contains(&token) {
            on_event(GenerationEvent::Token(token_logprob(
                logits, token, top, bytes,
            )));
        }
    }

    /// Streams the token's text; returns why generation ends after it, if
    /// it does.
    fn emit(
        &mut self,
        token: u32,
        on_event: &mut impl FnMut(GenerationEvent),
    ) -> Result<Option<FinishReason>, EngineError> {
        if self.request.stop_token_ids.contains(&token) {
            return Ok(Some(FinishReason::Stop));
        }
        let text = self.decoder.push(token)?;
        if self.scan(&text, on_event) {
            return Ok(Some(FinishReason::Stop));
        }
        if self.at_length_limit() {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }

    /// Passes text through the stop strings; true when one matched.
    fn scan(&mut self, text: &str, on_event: &mut impl FnMut(GenerationEvent)) -> bool {
        let released = match self.stops.push(text) {
            StopScan::Emit(released) => released,
            StopScan::Stopped { before, stop } => {
                self.stopped_by = Some(stop);
                before
            }
        };
        send_delta(released, on_event);
        self.stopped_by.is_some()
    }

    fn at_length_limit(&self) -> bool {
        let generated = self.usage.completion_tokens;
        let total = self.usage.prompt_tokens + generated;
        self.request.max_tokens.is_some_and(|max| generated >= max)
            || total >= self.session.capacity()
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// A model error caused by the cancel flag ends the request normally.
    fn cancelled_or(&self, error: EngineError) -> Result<FinishReason, EngineError> {
        if matches!(error, EngineError::Cancelled) || self.cancelled() {
            Ok(FinishReason::Cancelled)
        } else {
            Err(error)
        }
    }

    /// Releases the text still held back (an unfinished character, a
    /// partial stop string) and measures the run.
    fn finish(
        mut self,
        mut reason: FinishReason,
        on_event: &mut impl FnMut(GenerationEvent),
    ) -> Result<Finished, EngineError> {
        if self.stopped_by.is_none() {
            let tail = self.decoder.flush()?;
            if self.scan(&tail, on_event) {
                reason = FinishReason::Stop;
            } else {
                send_delta(self.stops.finish(), on_event);
                if self.request.logprobs.is_some() {
                    // Tokens without text of their own (a special token
                    // skipped in decoding) get a delta to travel with.
                    on_event(GenerationEvent::Delta(String::new()));
                }
            }
        }
        Ok(Finished {
            reason,
            stop_sequence: self.stopped_by.take(),
            tokens: self.history[self.usage.prompt_tokens..].to_vec(),
            usage: self.usage,
            timings: self.timings(),
        })
    }

    fn timings(&self) -> Timings {
        let now = Instant::now();
        let total = now - self.started;
        let Some(first) = self.first_token_at else {
            return Timings {
                total,
                ..Timings::default()
            };
        };
        let decode_time = (now - first).as_secs_f64();
        let decoded = self.usage.completion_tokens.saturating_sub(1);
        Timings {
            time_to_first_token: first - self.started,
            total,
            tokens_per_second: if decoded > 0 && decode_time > 0.0 {
                decoded as f64 / decode_time
            } else {
                0.0
            },
        }
    }
}

fn send_delta(text: String, on_event: &mut impl FnMut(GenerationEvent)) {
    if !text.is_empty() {
        on_event(GenerationEvent::Delta(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        Behaviour, FakeModel, byte_level_tokenizer, sentencepiece_tokenizer, token_id,
    };

    struct Outcome {
        deltas: Vec<String>,
        finished: Finished,
    }

    impl Outcome {
        fn text(&self) -> String {
            self.deltas.concat()
        }
    }

    fn run_with(
        model: &FakeModel,
        session: &mut Session<FakeModel>,
        tokenizer: &Tokenizer,
        request: &GenerationRequest,
        cancel: &AtomicBool,
        mut hook: impl FnMut(&GenerationEvent),
    ) -> Outcome {
        let mut events = Vec::new();
        let finished = generate(model, session, tokenizer, request, cancel, |event| {
            hook(&event);
            events.push(event);
        })
        .unwrap();
        assert_eq!(
            events.last(),
            Some(&GenerationEvent::Finished(finished.clone())),
            "Finished must be the last event"
        );
        let deltas = events
            .iter()
            .filter_map(|e| match e {
                GenerationEvent::Delta(text) => Some(text.clone()),
                GenerationEvent::Token(_) | GenerationEvent::Finished(_) => None,
            })
            .collect();
        Outcome { deltas, finished }
    }

    fn run(
        model: &FakeModel,
        capacity: usize,
        tokenizer: &Tokenizer,
        request: &GenerationRequest,
    ) -> Outcome {
        let mut session = Session::new(model, capacity);
        let cancel = AtomicBool::new(false);
        run_with(model, &mut session, tokenizer, request, &cancel, |_| {})
    }

    fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    const PROMPT: [u32; 4] = [10, 20, 30, 40];

    /// A model that replies `reply` then `<|end|>` forever.
    fn scripted(tokenizer: &Tokenizer, reply: &[u32]) -> FakeModel {
        let end = token_id(tokenizer, "<|end|>");
        let mut script = reply.to_vec();
        script.push(end);
        let behaviour = Behaviour::Script {
            prompt_len: PROMPT.len(),
            script,
            fallback: end,
        };
        FakeModel::new(tokenizer.get_vocab_size(true), behaviour)
    }

    fn request(tokenizer: &Tokenizer) -> GenerationRequest {
        GenerationRequest {
            prompt_tokens: PROMPT.to_vec(),
            sampling: SamplingParams::greedy(),
            stop_token_ids: vec![token_id(tokenizer, "<|end|>")],
            ..GenerationRequest::default()
        }
    }

    #[test]
    fn streams_the_reply_and_stops_at_the_end_token() {
        let tokenizer = byte_level_tokenizer();
        let reply = "Hello world! 你好 😀 done";
        let ids = encode(&tokenizer, reply);
        let model = scripted(&tokenizer, &ids);
        let out = run(&model, 256, &tokenizer, &request(&tokenizer));
        assert_eq!(out.text(), reply);
        assert!(out.deltas.iter().all(|d| !d.contains('\u{FFFD}')));
        assert_eq!(out.finished.reason, FinishReason::Stop);
        assert_eq!(out.finished.stop_sequence, None, "the end token stopped it");
        assert_eq!(out.finished.usage.prompt_tokens, PROMPT.len());
        assert_eq!(out.finished.usage.completion_tokens, ids.len() + 1);
        assert_eq!(&out.finished.tokens[..ids.len()], &ids[..]);
        let timings = out.finished.timings;
        assert!(timings.time_to_first_token <= timings.total);
        assert!(timings.tokens_per_second > 0.0);
    }

    #[test]
    fn logprobs_come_once_per_reply_token_before_its_text() {
        let tokenizer = byte_level_tokenizer();
        let ids = encode(&tokenizer, "Hello world");
        let model = scripted(&tokenizer, &ids);
        let req = GenerationRequest {
            logprobs: Some(2),
            ..request(&tokenizer)
        };
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(false);
        let mut events = Vec::new();
        generate(&model, &mut session, &tokenizer, &req, &cancel, |e| {
            events.push(e)
        })
        .unwrap();
        let tokens: Vec<&TokenLogprob> = events
            .iter()
            .filter_map(|e| match e {
                GenerationEvent::Token(t) => Some(t),
                _ => None,
            })
            .collect();
        // The end token is not part of the reply: no logprob for it.
        let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(got, ids);
        let text: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.clone()).collect();
        assert_eq!(text, b"Hello world");
        for t in &tokens {
            // The script gives its token logit 20 over 0s: nearly certain.
            assert!(t.logprob <= 0.0 && t.logprob > -0.01, "{t:?}");
            assert_eq!(t.top.len(), 2);
            assert_eq!(t.top[0].id, t.id);
            assert!(t.top[1].logprob < -15.0);
        }
        // Each token's event comes before the delta with its text.
        assert!(matches!(events[0], GenerationEvent::Token(_)));
        assert!(matches!(events[1], GenerationEvent::Delta(_)));
        let plain = run(&model, 256, &tokenizer, &request(&tokenizer));
        assert_eq!(plain.text(), "Hello world");
    }

    #[test]
    fn sentencepiece_reply_keeps_its_spaces() {
        let tokenizer = sentencepiece_tokenizer();
        let ids = encode(&tokenizer, "Hello world 😀 the end");
        let model = scripted(&tokenizer, &ids);
        let out = run(&model, 256, &tokenizer, &request(&tokenizer));
        assert_eq!(out.text(), "Hello world 😀 the end");
    }

    #[test]
    fn a_stop_string_across_tokens_cuts_the_text() {
        let tokenizer = byte_level_tokenizer();
        let reply = "Hello world STOP the rest";
        let ids = encode(&tokenizer, reply);
        let model = scripted(&tokenizer, &ids);
        // "d ST" spans the " world" and "STOP" tokens.
        let stop = "d ST".to_string();
        let req = GenerationRequest {
            stop: vec![stop.clone()],
            ..request(&tokenizer)
        };
        let out = run(&model, 256, &tokenizer, &req);
        assert_eq!(out.text(), &reply[..reply.find(&stop).unwrap()]);
        assert_eq!(out.finished.reason, FinishReason::Stop);
        assert_eq!(out.finished.stop_sequence, Some(stop));
        assert!(out.finished.usage.completion_tokens < ids.len());
    }

    #[test]
    fn max_tokens_finishes_with_length() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        let req = GenerationRequest {
            max_tokens: Some(7),
            stop_token_ids: vec![],
            ..request(&tokenizer)
        };
        let out = run(&model, 256, &tokenizer, &req);
        assert_eq!(out.finished.reason, FinishReason::Length);
        assert_eq!(out.finished.usage.completion_tokens, 7);
        assert_eq!(
            out.text(),
            tokenizer.decode(&out.finished.tokens, true).unwrap()
        );
    }

    #[test]
    fn the_context_limit_finishes_with_length() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        let req = GenerationRequest {
            stop_token_ids: vec![],
            ..request(&tokenizer)
        };
        let capacity = PROMPT.len() + 5;
        let out = run(&model, capacity, &tokenizer, &req);
        assert_eq!(out.finished.reason, FinishReason::Length);
        assert_eq!(out.finished.usage.completion_tokens, 5);
        assert!(model.forwarded() < capacity);
    }

    #[test]
    fn a_prompt_without_room_is_refused() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        let mut session = Session::new(&model, PROMPT.len());
        let cancel = AtomicBool::new(false);
        let result = generate(
            &model,
            &mut session,
            &tokenizer,
            &request(&tokenizer),
            &cancel,
            |_| {},
        );
        assert!(matches!(
            result,
            Err(EngineError::PromptTooLong {
                prompt_tokens: 4,
                context: 4
            })
        ));
        assert_eq!(model.forwarded(), 0);
    }

    #[test]
    fn a_cancel_between_steps_stops_at_once() {
        let tokenizer = byte_level_tokenizer();
        let ids = encode(&tokenizer, "Hello world done the you");
        let model = scripted(&tokenizer, &ids);
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(false);
        let mut deltas = 0;
        let out = run_with(
            &model,
            &mut session,
            &tokenizer,
            &request(&tokenizer),
            &cancel,
            |e| {
                if matches!(e, GenerationEvent::Delta(_)) {
                    deltas += 1;
                    if deltas == 3 {
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
            },
        );
        assert_eq!(out.finished.reason, FinishReason::Cancelled);
        assert_eq!(out.finished.usage.completion_tokens, 3);
        assert_eq!(out.text(), "Hello world done");
        // Prefill plus two fed tokens: the third was never run.
        assert_eq!(model.forward_calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_cancel_inside_the_model_finishes_cancelled() {
        let tokenizer = byte_level_tokenizer();
        let mut model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        model.raise_cancel_on_call = Some(2);
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(false);
        let req = GenerationRequest {
            stop_token_ids: vec![],
            ..request(&tokenizer)
        };
        let out = run_with(&model, &mut session, &tokenizer, &req, &cancel, |_| {});
        assert_eq!(out.finished.reason, FinishReason::Cancelled);
        // Prefill sampled token 1, feeding it gave token 2, feeding token 2 was cancelled.
        assert_eq!(out.finished.usage.completion_tokens, 2);
        let mut expected_cache = PROMPT.to_vec();
        expected_cache.push(out.finished.tokens[0]);
        assert_eq!(session.cached_tokens(), &expected_cache[..]);
    }

    #[test]
    fn an_already_cancelled_request_runs_nothing() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(true);
        let out = run_with(
            &model,
            &mut session,
            &tokenizer,
            &request(&tokenizer),
            &cancel,
            |_| {},
        );
        assert_eq!(out.finished.reason, FinishReason::Cancelled);
        assert_eq!(out.finished.usage.completion_tokens, 0);
        assert_eq!(model.forward_calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_reply() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        let sampled = |seed| GenerationRequest {
            sampling: SamplingParams {
                seed: Some(seed),
                temperature: 0.8,
                top_p: 0.95,
                ..SamplingParams::default()
            },
            max_tokens: Some(20),
            stop_token_ids: vec![],
            ..request(&tokenizer)
        };
        let a = run(&model, 256, &tokenizer, &sampled(9)).finished.tokens;
        let b = run(&model, 256, &tokenizer, &sampled(9)).finished.tokens;
        let c = run(&model, 256, &tokenizer, &sampled(10)).finished.tokens;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_second_turn_prefills_only_its_new_tokens() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::HistoryHash);
        let cancel = AtomicBool::new(false);
        let mut session = Session::new(&model, 256);
        let turn1 = GenerationRequest {
            prompt_tokens: encode(&tokenizer, "<|end|>Hello the world"),
            max_tokens: Some(6),
            ..request(&tokenizer)
        };
        let reply1 = run_with(&model, &mut session, &tokenizer, &turn1, &cancel, |_| {});
        let mut prompt2 = turn1.prompt_tokens.clone();
        prompt2.extend(&reply1.finished.tokens);
        let new_part = encode(&tokenizer, "<|end|> you done");
        prompt2.extend(&new_part);
        let turn2 = GenerationRequest {
            prompt_tokens: prompt2,
            max_tokens: Some(6),
            stop_token_ids: vec![],
            ..turn1.clone()
        };
        let before = model.forwarded();
        let reply2 = run_with(&model, &mut session, &tokenizer, &turn2, &cancel, |_| {});
        // The reply's last token was sampled but never run: it is prefilled
        // with the new part.
        let cached = turn1.prompt_tokens.len() + reply1.finished.tokens.len() - 1;
        assert_eq!(reply2.finished.usage.cached_prompt_tokens, cached);
        let fed_while_decoding = reply2.finished.usage.completion_tokens - 1;
        assert_eq!(
            model.forwarded() - before,
            new_part.len() + 1 + fed_while_decoding
        );

        let fresh_model = FakeModel::new(model.vocab, Behaviour::HistoryHash);
        let mut fresh = Session::new(&fresh_model, 256);
        let expected = run_with(
            &fresh_model,
            &mut fresh,
            &tokenizer,
            &turn2,
            &cancel,
            |_| {},
        );
        assert_eq!(expected.finished.usage.cached_prompt_tokens, 0);
        assert_eq!(reply2.finished.tokens, expected.finished.tokens);
        assert_eq!(reply2.text(), expected.text());
    }
}
