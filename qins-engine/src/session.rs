//! A conversation's K/V cache and the token ids it holds, so that a new
//! prompt sharing a prefix with the last one (the next chat turn) only runs
//! the tokens after the shared part.

use std::sync::atomic::AtomicBool;

use super::lookup::VerifyCost;
use super::{EngineError, LanguageModel};

/// Prompts are run in chunks of this many tokens: it bounds the activation
/// memory of one forward call and lets a cancel land between chunks.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

pub struct Session<M: LanguageModel> {
    cache: M::Cache,
    /// The ids whose K/V are in `cache`, in order.
    tokens: Vec<u32>,
    capacity: usize,
    prefill_chunk: usize,
    /// What verifying a draft costs here, measured over this session's
    /// replies (lookup decoding).
    verify_cost: VerifyCost,
}

/// The outcome of running a prompt.
#[derive(Clone, Debug)]
pub struct Prefill {
    /// Logits after the prompt's last token.
    pub logits: Vec<f32>,
    /// Prompt tokens whose K/V were reused from the previous request.
    pub cached_prompt_tokens: usize,
    /// Prompt tokens that were run through the model.
    pub prefilled_tokens: usize,
}

impl<M: LanguageModel> Session<M> {
    pub fn new(model: &M, capacity: usize) -> Self {
        Self {
            cache: model.new_cache(capacity),
            tokens: Vec::new(),
            capacity,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            verify_cost: VerifyCost::default(),
        }
    }

    pub fn with_prefill_chunk(mut self, chunk: usize) -> Self {
        self.prefill_chunk = chunk.max(1);
        self
    }

    /// The context size: prompt plus generated tokens may not exceed it.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn cached_tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn cache(&self) -> &M::Cache {
        &self.cache
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) {
        self.forget_after(0);
    }

    /// A prompt must leave room for at least one generated token.
    pub fn check_fits(&self, prompt_tokens: usize) -> Result<(), EngineError> {
        if prompt_tokens == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt_tokens >= self.capacity {
            return Err(EngineError::PromptTooLong {
                prompt_tokens,
                context: self.capacity,
            });
        }
        Ok(())
    }

    /// Brings the cache to exactly `prompt`, reusing the longest cached
    /// prefix, and returns the logits after its last token.
    pub fn prefill(
        &mut self,
        model: &M,
        prompt: &[u32],
        cancel: &AtomicBool,
    ) -> Result<Prefill, EngineError> {
        self.check_fits(prompt.len())?;
        // Keep at least one token to run: the logits come from a forward.
        let reused = common_prefix_len(&self.tokens, prompt).min(prompt.len() - 1);
        self.forget_after(reused);
        let mut logits = Vec::new();
        for chunk in prompt[reused..].chunks(self.prefill_chunk) {
            logits = self.run(model, chunk, cancel)?;
        }
        Ok(Prefill {
            logits,
            cached_prompt_tokens: reused,
            prefilled_tokens: prompt.len() - reused,
        })
    }

    /// Runs one generated token after the cached ones.
    pub fn feed(
        &mut self,
        model: &M,
        token: u32,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        if self.tokens.len() >= self.capacity {
            return Err(EngineError::InvalidRequest(format!(
                "the context of {} tokens is full",
                self.capacity
            )));
        }
        self.run(model, &[token], cancel)
    }

    /// Runs the last generated token and a draft after the cached ones in
    /// one pass; the logits after each of them. The caller cuts the cache
    /// back past the first rejected position ([`Session::roll_back`]).
    pub fn verify(
        &mut self,
        model: &M,
        tokens: &[u32],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if self.tokens.len() + tokens.len() > self.capacity {
            return Err(EngineError::InvalidRequest(format!(
                "a draft of {} tokens does not fit the context of {}",
                tokens.len(),
                self.capacity
            )));
        }
        let rows = model
            .forward_all(tokens, &mut self.cache, cancel)
            .inspect_err(|_| self.forget_after(self.tokens.len()))?;
        self.tokens.extend_from_slice(tokens);
        let expected = model.vocab_size();
        if rows.len() != tokens.len() {
            return Err(EngineError::InvalidRequest(format!(
                "the model gave {} rows of logits for {} tokens",
                rows.len(),
                tokens.len()
            )));
        }
        if let Some(row) = rows.iter().find(|row| row.len() != expected) {
            return Err(EngineError::LogitsSize {
                expected,
                got: row.len(),
            });
        }
        Ok(rows)
    }

    /// Keeps the first `len` cached tokens and forgets the rest (a draft's
    /// rejected positions): the cache is then exactly what running those
    /// `len` tokens would have left.
    pub fn roll_back(&mut self, len: usize) {
        self.forget_after(len.min(self.tokens.len()));
    }

    pub(crate) fn verify_cost(&mut self) -> &mut VerifyCost {
        &mut self.verify_cost
    }

    /// One forward call; on failure the cache is cut back to the tokens
    /// known to be in it, since a cancelled pass may have written part of
    /// its K/V.
    fn run(
        &mut self,
        model: &M,
        tokens: &[u32],
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        // One token is a decode step, which the model may batch with other
        // sequences' steps.
        let logits = match tokens {
            [token] => model.decode_step(*token, &mut self.cache, cancel),
            _ => model.forward(tokens, &mut self.cache, cancel),
        }
        .inspect_err(|_| self.forget_after(self.tokens.len()))?;
        self.tokens.extend_from_slice(tokens);
        if logits.len() != model.vocab_size() {
            return Err(EngineError::LogitsSize {
                expected: model.vocab_size(),
                got: logits.len(),
            });
        }
        Ok(logits)
    }

    fn forget_after(&mut self, len: usize) {
        self.tokens.truncate(len);
        M::truncate_cache(&mut self.cache, len);
    }
}

fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Behaviour, FakeModel};
    use std::sync::atomic::Ordering;

    fn model() -> FakeModel {
        FakeModel::new(50, Behaviour::HistoryHash)
    }

    #[test]
    fn a_shared_prefix_is_not_run_again() {
        let model = model();
        let cancel = AtomicBool::new(false);
        let mut session = Session::new(&model, 64);
        let first = session.prefill(&model, &[1, 2, 3, 4, 5], &cancel).unwrap();
        assert_eq!((first.cached_prompt_tokens, first.prefilled_tokens), (0, 5));
        let before = model.forwarded();
        let second = session
            .prefill(&model, &[1, 2, 3, 9, 9, 9, 9], &cancel)
            .unwrap();
        assert_eq!(second.cached_prompt_tokens, 3);
        assert_eq!(model.forwarded() - before, 4);
        let mut fresh = Session::new(&model, 64);
        let expected = fresh
            .prefill(&model, &[1, 2, 3, 9, 9, 9, 9], &cancel)
            .unwrap();
        assert_eq!(second.logits, expected.logits);
        assert_eq!(session.cached_tokens(), &[1, 2, 3, 9, 9, 9, 9]);
    }

    #[test]
    fn a_fully_cached_prompt_reruns_its_last_token() {
        let model = model();
        let cancel = AtomicBool::new(false);
        let mut session = Session::new(&model, 64);
        let first = session.prefill(&model, &[7, 8, 9], &cancel).unwrap();
        let again = session.prefill(&model, &[7, 8, 9], &cancel).unwrap();
        assert_eq!((again.cached_prompt_tokens, again.prefilled_tokens), (2, 1));
        assert_eq!(first.logits, again.logits);
        // A prompt that is a prefix of the cache cuts the cache back.
        let shorter = session.prefill(&model, &[7, 8], &cancel).unwrap();
        assert_eq!(shorter.cached_prompt_tokens, 1);
        assert_eq!(session.cached_tokens(), &[7, 8]);
    }

    #[test]
    fn chunked_prefill_matches_one_pass() {
        let model = model();
        let cancel = AtomicBool::new(false);
        let prompt: Vec<u32> = (0..40).map(|i| i % 50).collect();
        let mut chunked = Session::new(&model, 64).with_prefill_chunk(7);
        let mut whole = Session::new(&model, 64);
        let a = chunked.prefill(&model, &prompt, &cancel).unwrap();
        let b = whole.prefill(&model, &prompt, &cancel).unwrap();
        assert_eq!(a.logits, b.logits);
    }

    #[test]
    fn prompt_must_leave_room_for_one_token() {
        let model = model();
        let cancel = AtomicBool::new(false);
        let mut session = Session::new(&model, 8);
        let err = session.prefill(&model, &[1; 8], &cancel).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::PromptTooLong {
                    prompt_tokens: 8,
                    context: 8
                }
            ),
            "{err}"
        );
        assert!(session.prefill(&model, &[1; 7], &cancel).is_ok());
        assert!(matches!(
            session.prefill(&model, &[], &cancel),
            Err(EngineError::EmptyPrompt)
        ));
    }

    #[test]
    fn a_cancelled_prefill_leaves_a_consistent_cache() {
        let model = model();
        let cancel = AtomicBool::new(true);
        let mut session = Session::new(&model, 64);
        let err = session.prefill(&model, &[1, 2, 3], &cancel).unwrap_err();
        assert!(matches!(err, EngineError::Cancelled));
        assert!(session.cached_tokens().is_empty());
        cancel.store(false, Ordering::SeqCst);
        let retry = session.prefill(&model, &[1, 2, 3], &cancel).unwrap();
        assert_eq!(retry.prefilled_tokens, 3);
    }

    #[test]
    fn a_cancel_after_a_partial_write_cuts_the_cache_back() {
        let mut model = model();
        model.raise_cancel_on_call = Some(1);
        let cancel = AtomicBool::new(false);
        let mut session = Session::new(&model, 64);
        session.prefill(&model, &[1, 2], &cancel).unwrap();
        let err = session
            .prefill(&model, &[1, 2, 3, 4, 5], &cancel)
            .unwrap_err();
        assert!(matches!(err, EngineError::Cancelled));
        assert_eq!(session.cached_tokens(), &[1, 2]);
        // The model's cache got token 3 before the cancel; it must be gone.
        assert_eq!(FakeModel::cache_len(session.cache()), 2);
        cancel.store(false, Ordering::SeqCst);
        let retry = session.prefill(&model, &[1, 2, 3, 4, 5], &cancel).unwrap();
        let mut fresh = Session::new(&model, 64);
        let expected = fresh.prefill(&model, &[1, 2, 3, 4, 5], &cancel).unwrap();
        assert_eq!(retry.logits, expected.logits);
    }
}
