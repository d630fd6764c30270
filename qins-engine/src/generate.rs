//! The decode loop: prefill the prompt, then sample, stream and feed back one
//! token at a time until an end token, a stop string, the token limit, the
//! context limit, or a cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;

use super::constraint::Constraint;
use super::detokenize::StreamDecoder;
use super::logprobs::{MAX_TOP_LOGPROBS, TokenBytes, TokenLogprob, token_logprob};
use super::lookup::{Drafter, LookupMode, Verdict};
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
    /// Lookup decoding: verify drafts copied from earlier in the
    /// conversation when that pays (see [`crate::lookup`]); the reply is
    /// distributed exactly as without it. Off by default here; chat
    /// requests take it from [`crate::RequestOptions::lookup`] (unset: on).
    pub lookup: LookupMode,
    /// Generations running in the process, this one included: while it is
    /// above 1 a draft must promise more to be verified (concurrent decode
    /// steps already share one pass, see [`crate::lookup::SHARED_GAIN_MARGIN`])
    /// and no timings are measured. None: this one runs alone.
    pub active_generations: Option<Arc<AtomicUsize>>,
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
    /// Lookup decoding: tokens drafted (verified) and how many of them the
    /// reply accepted.
    pub draft_tokens: usize,
    pub accepted_draft_tokens: usize,
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
    /// Lookup decoding's state, when the request asks for it.
    drafter: Option<Drafter>,
}

/// What follows a token that was emitted but not yet run.
enum Next {
    /// The logits to sample the next token from.
    Logits(Vec<f32>),
    /// The reply ended (inside a verified draft, or on a cancel).
    Finished(FinishReason),
}

/// The outcome of verifying a draft.
enum Verified {
    /// Every drafted token was accepted: the logits after the last.
    AllAccepted(Vec<f32>),
    /// A drafted position got this other token, emitted but not yet run.
    Replaced(u32),
    Finished(FinishReason),
    /// The model cannot verify: decode plainly.
    Unsupported,
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
            drafter: Drafter::new(
                request.lookup,
                &request.prompt_tokens,
                request.active_generations.clone(),
            ),
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
            let token = self.sample(&logits, None)?.token;
            self.report_logprob(&logits, token, on_event);
            if let Some(reason) = self.emit(token, on_event)? {
                return Ok(reason);
            }
            if self.cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            logits = match self.next_logits(model, token, on_event)? {
                Next::Logits(logits) => logits,
                Next::Finished(reason) => return Ok(reason),
            };
        }
    }

    /// The logits after `token` (emitted, not yet run): one decode step,
    /// or, when a draft pays, a verification that emits the draft's
    /// accepted tokens on the way.
    fn next_logits(
        &mut self,
        model: &M,
        mut token: u32,
        on_event: &mut impl FnMut(GenerationEvent),
    ) -> Result<Next, EngineError> {
        loop {
            let draft = self.propose_draft();
            if !draft.is_empty() {
                match self.verify(model, token, &draft, on_event)? {
                    Verified::AllAccepted(logits) => return Ok(Next::Logits(logits)),
                    Verified::Replaced(next) => {
                        token = next;
                        continue;
                    }
                    Verified::Finished(reason) => return Ok(Next::Finished(reason)),
                    Verified::Unsupported => {
                        self.drafter = None;
                    }
                }
            }
            let started = Instant::now();
            return match self.session.feed(model, token, self.cancel) {
                Ok(logits) => {
                    if self.drafter.as_ref().is_some_and(Drafter::alone) {
                        self.session.verify_cost().record_step(started.elapsed());
                    }
                    Ok(Next::Logits(logits))
                }
                Err(e) => self.cancelled_or(e).map(Next::Finished),
            };
        }
    }

    /// The draft worth verifying now (empty: none), never longer than the
    /// tokens the reply may still take after the next one.
    fn propose_draft(&mut self) -> Vec<u32> {
        let Some(drafter) = &mut self.drafter else {
            return Vec::new();
        };
        let generated = self.usage.completion_tokens;
        let by_max = self
            .request
            .max_tokens
            .map_or(usize::MAX, |max| max.saturating_sub(generated));
        let by_context = self
            .session
            .capacity()
            .saturating_sub(self.usage.prompt_tokens + generated);
        let room = by_max.min(by_context).saturating_sub(1);
        drafter.propose(room, self.session.verify_cost())
    }

    /// Runs `token` and `draft` in one pass and judges the drafted
    /// positions in order, each through the same sampling, logprob, emit
    /// and stop path as a plain step; the cache is cut back to what plain
    /// decoding would hold.
    fn verify(
        &mut self,
        model: &M,
        token: u32,
        draft: &[u32],
        on_event: &mut impl FnMut(GenerationEvent),
    ) -> Result<Verified, EngineError> {
        let base = self.session.cached_tokens().len();
        let mut input = Vec::with_capacity(draft.len() + 1);
        input.push(token);
        input.extend_from_slice(draft);
        let started = Instant::now();
        let mut rows = match self.session.verify(model, &input, self.cancel) {
            Ok(rows) => rows,
            Err(EngineError::Unsupported(_)) => return Ok(Verified::Unsupported),
            Err(e) => return self.cancelled_or(e).map(Verified::Finished),
        };
        if self.drafter.as_ref().is_some_and(Drafter::alone) {
            self.session
                .verify_cost()
                .record_verify(draft.len(), started.elapsed());
        }
        let mut accepted = 0;
        for (i, &guess) in draft.iter().enumerate() {
            let verdict = self.sample(&rows[i], Some(guess))?;
            accepted += usize::from(verdict.accepted);
            self.report_logprob(&rows[i], verdict.token, on_event);
            let finished = match self.emit(verdict.token, on_event)? {
                Some(reason) => Some(reason),
                None => self.cancelled().then_some(FinishReason::Cancelled),
            };
            if finished.is_some() || !verdict.accepted {
                // Plain decoding would hold `token` and the accepted
                // positions before this one; this one is not run yet.
                self.session.roll_back(base + 1 + i);
                self.record_draft(draft.len(), accepted);
                return Ok(match finished {
                    Some(reason) => Verified::Finished(reason),
                    None => Verified::Replaced(verdict.token),
                });
            }
        }
        self.record_draft(draft.len(), accepted);
        Ok(Verified::AllAccepted(rows.pop().unwrap_or_default()))
    }

    fn record_draft(&mut self, drafted: usize, accepted: usize) {
        tracing::trace!(drafted, accepted, "lookup: verified");
        if let Some(drafter) = &mut self.drafter {
            drafter.record(drafted, accepted);
        }
    }

    /// Draws the next token (within the output grammar, if any), judging
    /// a drafted one on the way.
    fn sample(&mut self, logits: &[f32], draft: Option<u32>) -> Result<Verdict, EngineError> {
        let verdict = match &mut self.constraint {
            Some(constraint) => {
                let mut allowed = logits.to_vec();
                constraint.mask(&mut allowed)?;
                let verdict = self.sampler.sample_against(&allowed, &self.history, draft);
                if !self.request.stop_token_ids.contains(&verdict.token) {
                    constraint.accept(verdict.token)?;
                }
                verdict
            }
            None => self.sampler.sample_against(logits, &self.history, draft),
        };
        self.history.push(verdict.token);
        if let Some(drafter) = &mut self.drafter {
            drafter.push(verdict.token);
        }
        self.usage.completion_tokens += 1;
        self.first_token_at.get_or_insert_with(Instant::now);
        Ok(verdict)
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
        self.log_lookup();
        Ok(Finished {
            reason,
            stop_sequence: self.stopped_by.take(),
            tokens: self.history[self.usage.prompt_tokens..].to_vec(),
            usage: self.usage,
            timings: self.timings(),
        })
    }

    /// What lookup decoding did and what verification cost here (the
    /// daemon's debug log; `qinsd --log-level debug generate ...`).
    fn log_lookup(&mut self) {
        if let Some(drafter) = &self.drafter {
            let (drafted, accepted) = (drafter.drafted, drafter.accepted);
            tracing::debug!(
                drafted,
                accepted,
                "lookup: verification cost in decode steps: {}",
                self.session.verify_cost()
            );
        }
    }

    fn timings(&self) -> Timings {
        let now = Instant::now();
        let total = now - self.started;
        let drafted = Timings {
            draft_tokens: self.drafter.as_ref().map_or(0, |d| d.drafted),
            accepted_draft_tokens: self.drafter.as_ref().map_or(0, |d| d.accepted),
            ..Timings::default()
        };
        let Some(first) = self.first_token_at else {
            return Timings { total, ..drafted };
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
            ..drafted
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

    /// A [`run_with`] hook that sets `cancel` when the `n`th delta is sent.
    fn cancel_at_delta(n: usize, cancel: &AtomicBool) -> impl FnMut(&GenerationEvent) + '_ {
        let mut deltas = 0;
        move |event| {
            if matches!(event, GenerationEvent::Delta(_)) {
                deltas += 1;
                if deltas == n {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
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
        let out = run_with(
            &model,
            &mut session,
            &tokenizer,
            &request(&tokenizer),
            &cancel,
            cancel_at_delta(3, &cancel),
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

    // ---- Lookup decoding ----

    const LETTER_A: u32 = b'a' as u32;

    /// A model that mostly copies: after a token seen before, it favours
    /// what followed it last time, unless the history's hash says
    /// otherwise (a quarter of the time); the rest is noise seeded by the
    /// whole history, so any error in the cache changes the reply. Only
    /// the letters a-h are ever likely.
    fn copying(history: &[u32], vocab: usize) -> Vec<f32> {
        let mut logits = copying_any(history, vocab);
        for (id, logit) in logits.iter_mut().enumerate() {
            if !(LETTER_A..LETTER_A + 8).contains(&(id as u32)) {
                *logit -= 30.0;
            }
        }
        logits
    }

    /// `copying` over the whole vocabulary (JSON needs its punctuation).
    fn copying_any(history: &[u32], vocab: usize) -> Vec<f32> {
        let hash = crate::testing::history_hash(history);
        let mut rng = qins_core::rng::SplitMix64::new(hash);
        let mut logits: Vec<f32> = (0..vocab).map(|_| rng.next_normal() as f32).collect();
        if let Some((&last, earlier)) = history.split_last()
            && !hash.is_multiple_of(4)
            && let Some(at) = earlier.iter().rposition(|&t| t == last)
        {
            logits[history[at + 1] as usize] += 6.0;
        }
        logits
    }

    fn letters(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn copying_request(lookup: LookupMode, sampling: SamplingParams) -> GenerationRequest {
        GenerationRequest {
            prompt_tokens: letters("abcdefgabcdhefgabcdeabcfgh"),
            sampling,
            max_tokens: Some(60),
            lookup,
            ..GenerationRequest::default()
        }
    }

    fn lookup_run(
        request: &GenerationRequest,
    ) -> (Outcome, FakeModel, Session<FakeModel>, Tokenizer) {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::Function(copying));
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(false);
        let out = run_with(&model, &mut session, &tokenizer, request, &cancel, |_| {});
        (out, model, session, tokenizer)
    }

    #[test]
    fn greedy_lookup_gives_the_plain_reply_in_fewer_passes() {
        let plain = lookup_run(&copying_request(LookupMode::Off, SamplingParams::greedy()));
        let drafted = lookup_run(&copying_request(
            LookupMode::Always,
            SamplingParams::greedy(),
        ));
        let (plain, plain_model, plain_session, _) = plain;
        let (out, model, session, _) = drafted;
        assert_eq!(out.finished.tokens, plain.finished.tokens);
        assert_eq!(out.text(), plain.text());
        assert_eq!(out.finished.reason, FinishReason::Length);
        let t = out.finished.timings;
        // Not vacuous: drafts were verified, some accepted, some rejected.
        assert!(t.accepted_draft_tokens > 5, "{t:?}");
        assert!(t.draft_tokens > t.accepted_draft_tokens, "{t:?}");
        assert!(model.verify_calls.load(Ordering::SeqCst) > 0);
        assert!(
            model.forward_calls.load(Ordering::SeqCst)
                < plain_model.forward_calls.load(Ordering::SeqCst)
        );
        assert_eq!(plain.finished.timings.draft_tokens, 0);
        // The cache holds exactly what plain decoding left.
        assert_eq!(session.cached_tokens(), plain_session.cached_tokens());
        assert_eq!(session.cache().tokens, plain_session.cache().tokens);
    }

    #[test]
    fn a_seed_gives_the_same_sampled_reply_with_lookup_on_or_off() {
        let sampling = SamplingParams {
            temperature: 0.9,
            top_k: 5,
            repetition_penalty: 1.1,
            presence_penalty: 0.3,
            seed: Some(7),
            ..SamplingParams::default()
        };
        let (plain, ..) = lookup_run(&copying_request(LookupMode::Off, sampling.clone()));
        let (out, ..) = lookup_run(&copying_request(LookupMode::Always, sampling));
        assert_eq!(out.finished.tokens, plain.finished.tokens);
        assert!(out.finished.timings.accepted_draft_tokens > 0);
    }

    #[test]
    fn after_rejections_the_next_turn_reuses_an_exact_cache() {
        let turn1 = copying_request(LookupMode::Always, SamplingParams::greedy());
        let (reply1, model, mut session, tokenizer) = lookup_run(&turn1);
        assert!(
            reply1.finished.timings.draft_tokens > reply1.finished.timings.accepted_draft_tokens
        );
        let mut prompt2 = turn1.prompt_tokens.clone();
        prompt2.extend(&reply1.finished.tokens);
        prompt2.extend(letters("hgfabc"));
        let turn2 = GenerationRequest {
            prompt_tokens: prompt2,
            max_tokens: Some(20),
            ..turn1.clone()
        };
        let cancel = AtomicBool::new(false);
        let reply2 = run_with(&model, &mut session, &tokenizer, &turn2, &cancel, |_| {});
        let cached = turn1.prompt_tokens.len() + reply1.finished.tokens.len() - 1;
        assert_eq!(reply2.finished.usage.cached_prompt_tokens, cached);
        let fresh = FakeModel::new(model.vocab, Behaviour::Function(copying));
        let mut fresh_session = Session::new(&fresh, 256);
        let plain_turn2 = GenerationRequest {
            lookup: LookupMode::Off,
            ..turn2.clone()
        };
        let expected = run_with(
            &fresh,
            &mut fresh_session,
            &tokenizer,
            &plain_turn2,
            &cancel,
            |_| {},
        );
        assert_eq!(reply2.finished.tokens, expected.finished.tokens);
        // The next forward sees the same cache: the same logits, bitwise.
        assert_eq!(session.cached_tokens(), fresh_session.cached_tokens());
        let a = session.feed(&model, LETTER_A, &cancel).unwrap();
        let b = fresh_session.feed(&fresh, LETTER_A, &cancel).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_stop_string_inside_a_draft_cuts_there_and_rolls_back() {
        let plain_request = copying_request(LookupMode::Off, SamplingParams::greedy());
        let (plain, ..) = lookup_run(&plain_request);
        let text = plain.text();
        // A stop string from the middle of the reply.
        let stop = text[20..23].to_string();
        let stopped = |lookup| GenerationRequest {
            stop: vec![stop.clone()],
            lookup,
            ..plain_request.clone()
        };
        let (expected, _, expected_session, _) = lookup_run(&stopped(LookupMode::Off));
        let (out, _, session, _) = lookup_run(&stopped(LookupMode::Always));
        assert_eq!(out.finished.reason, FinishReason::Stop);
        assert_eq!(out.text(), expected.text());
        assert!(!out.text().contains(&stop));
        assert_eq!(out.finished.usage, expected.finished.usage);
        assert_eq!(session.cached_tokens(), expected_session.cached_tokens());
        assert!(out.finished.timings.accepted_draft_tokens > 0);
    }

    #[test]
    fn max_tokens_is_never_exceeded_by_a_draft() {
        for max in [1, 2, 3, 9, 17, 30] {
            let request = GenerationRequest {
                max_tokens: Some(max),
                ..copying_request(LookupMode::Always, SamplingParams::greedy())
            };
            let (out, _, session, _) = lookup_run(&request);
            assert_eq!(out.finished.usage.completion_tokens, max);
            assert_eq!(out.finished.reason, FinishReason::Length);
            assert_eq!(
                session.cached_tokens().len(),
                request.prompt_tokens.len() + max - 1
            );
        }
        // The context limit too.
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::Function(copying));
        let request = GenerationRequest {
            max_tokens: None,
            ..copying_request(LookupMode::Always, SamplingParams::greedy())
        };
        let capacity = request.prompt_tokens.len() + 23;
        let out = run(&model, capacity, &tokenizer, &request);
        assert_eq!(out.finished.usage.completion_tokens, 23);
    }

    #[test]
    fn logprobs_come_once_per_token_with_lookup() {
        let request = GenerationRequest {
            logprobs: Some(1),
            ..copying_request(LookupMode::Always, SamplingParams::greedy())
        };
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::Function(copying));
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(false);
        let mut ids = Vec::new();
        let mut logprobs = Vec::new();
        let finished = generate(&model, &mut session, &tokenizer, &request, &cancel, |e| {
            if let GenerationEvent::Token(t) = e {
                ids.push(t.id);
                logprobs.push(t.logprob);
            }
        })
        .unwrap();
        assert!(finished.timings.accepted_draft_tokens > 0);
        assert_eq!(ids, finished.tokens);
        // The same values as plain decoding reports.
        let plain_request = GenerationRequest {
            lookup: LookupMode::Off,
            ..request.clone()
        };
        let mut plain_session = Session::new(&model, 256);
        let mut plain = Vec::new();
        generate(
            &model,
            &mut plain_session,
            &tokenizer,
            &plain_request,
            &cancel,
            |e| {
                if let GenerationEvent::Token(t) = e {
                    plain.push(t.logprob);
                }
            },
        )
        .unwrap();
        assert_eq!(logprobs, plain);
    }

    #[test]
    fn a_cancel_inside_a_draft_stops_at_that_token() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::Function(copying));
        let request = copying_request(LookupMode::Always, SamplingParams::greedy());
        let mut session = Session::new(&model, 256);
        let cancel = AtomicBool::new(false);
        let hook = cancel_at_delta(12, &cancel);
        let out = run_with(&model, &mut session, &tokenizer, &request, &cancel, hook);
        assert_eq!(out.finished.reason, FinishReason::Cancelled);
        assert_eq!(out.finished.usage.completion_tokens, 12);
        assert!(out.finished.timings.draft_tokens > 0);
        let mut expected = request.prompt_tokens.clone();
        expected.extend(&out.finished.tokens[..11]);
        assert_eq!(session.cached_tokens(), &expected[..]);
        assert_eq!(session.cache().tokens, expected);
    }

    /// A bigram model over a, b, c: what exact next-token distributions
    /// the statistical test compares against.
    const BIGRAM: [[f32; 3]; 3] = [[0.0, 1.0, 0.5], [1.2, 0.0, 0.8], [0.3, 0.9, 0.0]];

    fn bigram(history: &[u32], vocab: usize) -> Vec<f32> {
        let mut logits = vec![f32::NEG_INFINITY; vocab];
        let last = history
            .last()
            .map_or(0, |&t| t.saturating_sub(LETTER_A) as usize);
        for (i, &l) in BIGRAM[last.min(2)].iter().enumerate() {
            logits[LETTER_A as usize + i] = l;
        }
        logits
    }

    /// p(next | last) at temperature 1 with top-k 2.
    fn bigram_probabilities(last: usize) -> [f64; 3] {
        let row = BIGRAM[last];
        let mut order = [0, 1, 2];
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut p = [0.0; 3];
        for &i in &order[..2] {
            p[i] = f64::from(row[i]).exp();
        }
        let total: f64 = p.iter().sum();
        p.map(|w| w / total)
    }

    const BIGRAM_PROMPT: &str = "abcacbab";

    fn bigram_sampling(seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    /// Pearson's chi-square of three-token counts against the bigram
    /// chain; cells of probability 0 (top-k leaves 8 of the 27) must stay
    /// empty.
    fn chi_square(counts: &[usize; 27], runs: usize) -> f64 {
        let mut cells = 0;
        let last = (BIGRAM_PROMPT.as_bytes()[BIGRAM_PROMPT.len() - 1] - b'a') as usize;
        let mut chi2 = 0.0;
        for (cell, &count) in counts.iter().enumerate() {
            let (a, b, c) = (cell / 9, cell / 3 % 3, cell % 3);
            let p = bigram_probabilities(last)[a]
                * bigram_probabilities(a)[b]
                * bigram_probabilities(b)[c];
            if p == 0.0 {
                assert_eq!(count, 0, "cell {cell} has probability 0");
                continue;
            }
            cells += 1;
            let expected = p * runs as f64;
            chi2 += (count as f64 - expected).powi(2) / expected;
        }
        assert_eq!(cells, 8);
        chi2
    }

    /// The 0.999 quantile of chi-square with 7 degrees of freedom (8 cells).
    const CHI2_7_999: f64 = 24.32;
    const RUNS: usize = 6000;

    #[test]
    fn sampled_lookup_keeps_the_models_distribution() {
        let tokenizer = byte_level_tokenizer();
        let model = FakeModel::new(tokenizer.get_vocab_size(true), Behaviour::Function(bigram));
        let cancel = AtomicBool::new(false);
        let mut counts = [0usize; 27];
        let (mut drafted, mut accepted) = (0, 0);
        for seed in 0..RUNS as u64 {
            let request = GenerationRequest {
                prompt_tokens: letters(BIGRAM_PROMPT),
                sampling: bigram_sampling(seed),
                max_tokens: Some(3),
                lookup: LookupMode::Always,
                ..GenerationRequest::default()
            };
            let mut session = Session::new(&model, 64);
            let finished =
                generate(&model, &mut session, &tokenizer, &request, &cancel, |_| {}).unwrap();
            let t: Vec<usize> = finished
                .tokens
                .iter()
                .map(|&id| (id - LETTER_A) as usize)
                .collect();
            counts[t[0] * 9 + t[1] * 3 + t[2]] += 1;
            drafted += finished.timings.draft_tokens;
            accepted += finished.timings.accepted_draft_tokens;
        }
        // Drafts were judged often, and both ways.
        assert!(drafted > RUNS / 2, "{drafted}");
        assert!(
            accepted > drafted / 5 && accepted < drafted,
            "{accepted}/{drafted}"
        );
        let chi2 = chi_square(&counts, RUNS);
        assert!(chi2 < CHI2_7_999, "chi-square {chi2}: {counts:?}");
    }

    /// The control: the same test catches a rule that accepts every draft.
    #[test]
    fn the_distribution_test_catches_an_always_accepting_rule() {
        use crate::lookup::{NgramIndex, Verdict, judge};
        let always = |_: &crate::sampling::Distribution, draft: u32, _: f64| Verdict {
            token: draft,
            accepted: true,
        };
        let count_with = |rule: &dyn Fn(&crate::sampling::Distribution, u32, f64) -> Verdict| {
            let mut counts = [0usize; 27];
            for seed in 0..RUNS as u64 {
                let mut sampler = Sampler::new(bigram_sampling(seed)).unwrap();
                let mut history = letters(BIGRAM_PROMPT);
                let mut index = NgramIndex::new(2, 3);
                index.extend(&history);
                let draw = |history: &[u32], draft: Option<u32>, sampler: &mut Sampler| {
                    let logits = bigram(history, 300);
                    let dist = sampler.distribution(&logits, history);
                    let u = qins_core::rng::SplitMix64::new(seed ^ history.len() as u64).next_f64();
                    match draft {
                        Some(d) => rule(&dist, d, u).token,
                        None => dist.pick(u),
                    }
                };
                let t1 = draw(&history, None, &mut sampler);
                history.push(t1);
                index.push(t1);
                let draft = index.draft(1).first().copied();
                let t2 = draw(&history, draft, &mut sampler);
                history.push(t2);
                let t3 = draw(&history, None, &mut sampler);
                let cell = |t: u32| (t - LETTER_A) as usize;
                counts[cell(t1) * 9 + cell(t2) * 3 + cell(t3)] += 1;
            }
            counts
        };
        let fair = count_with(&judge);
        assert!(chi_square(&fair, RUNS) < CHI2_7_999);
        let biased = count_with(&always);
        let chi2 = std::panic::catch_unwind(|| chi_square(&biased, RUNS));
        // Either a zero-probability cell filled (a panic) or a huge statistic.
        assert!(chi2.is_err() || chi2.is_ok_and(|c| c > 10.0 * CHI2_7_999));
    }

    #[test]
    fn grammar_constrained_json_with_lookup_is_the_same_reply() {
        use crate::constraint::{GrammarVocab, OutputFormat};
        let tokenizer = byte_level_tokenizer();
        let end = token_id(&tokenizer, "<|end|>");
        let vocab = tokenizer.get_vocab_size(true);
        let grammar = GrammarVocab::new(&tokenizer, vocab, &[end]).unwrap();
        // A prompt full of JSON the reply can copy from.
        let prompt = encode(
            &tokenizer,
            r#"{"a": "abc", "b": "abcabc", "c": ["ab", "abc"]} {"a": "abc", "b": "#,
        );
        let model = FakeModel::new(vocab, Behaviour::Function(copying_any));
        let run_json = |lookup| {
            let request = GenerationRequest {
                prompt_tokens: prompt.clone(),
                sampling: SamplingParams::greedy(),
                max_tokens: Some(40),
                stop_token_ids: vec![end],
                constraint: Some(grammar.constraint(&OutputFormat::JsonObject).unwrap()),
                lookup,
                ..GenerationRequest::default()
            };
            run(&model, 256, &tokenizer, &request)
        };
        let plain = run_json(LookupMode::Off);
        let out = run_json(LookupMode::Always);
        assert_eq!(out.finished.tokens, plain.finished.tokens);
        assert_eq!(out.text(), plain.text());
        assert!(out.finished.timings.accepted_draft_tokens > 0);
        if out.finished.reason == FinishReason::Stop {
            serde_json::from_str::<serde_json::Value>(&out.text()).unwrap();
        }
        assert!(out.text().starts_with('{'), "{}", out.text());
    }
}
