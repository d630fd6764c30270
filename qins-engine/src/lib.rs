//! The generation engine: chat messages in, streamed text out.
//!
//! A request flows through [`template`] (messages -> prompt text), the
//! caller's tokenizer (text -> ids), [`session`] (prefix reuse over the K/V
//! cache), [`generate`] (the decode loop with [`sampling`]), and back out
//! through [`detokenize`] (ids -> UTF-8-safe deltas) and [`stop`] (stop strings
//! held back across delta boundaries).
//!
//! A model comes from its file through [`resident`] (the one opener), and
//! [`ChatModel`] adds what the engine needs to chat with it.
//!
//! The engine never names the concrete model: it runs any [`LanguageModel`].
//! [`Backend`] is the one the daemon runs: the model on the CPU or the GPU.

mod backend;
mod chat_model;
pub mod constraint;
pub mod detokenize;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod logprobs;
pub mod lookup;
mod qins_model;
pub mod resident;
pub mod sampling;
pub mod session;
pub mod stop;
pub mod template;
pub mod tools;

#[cfg(test)]
pub(crate) mod testing;

use std::sync::atomic::AtomicBool;

pub use backend::{Backend, BackendCache, Device, gpu_cache_type};
pub use chat_model::{
    ChatModel, ChatModelError, Prompt, RequestOptions, lookup_mode, resolve_options,
};
pub use constraint::OutputFormat;
pub use detokenize::StreamDecoder;
pub use embed::embed;
pub use generate::{
    FinishReason, Finished, GenerationEvent, GenerationRequest, Timings, Usage, generate,
};
pub use logprobs::{MAX_TOP_LOGPROBS, TokenLogprob};
pub use lookup::LookupMode;
pub use resident::{OpenError, ResidentModel};
pub use sampling::{Sampler, SamplingParams};
pub use session::{Prefill, Session};
pub use stop::{StopMatcher, StopScan};
pub use template::{ChatMessage, ChatTemplate, TemplateError};

/// What the engine needs from a model: a K/V cache it can grow and cut, and
/// a forward pass that returns the logits of the last token it was given.
pub trait LanguageModel: Send + Sync {
    type Cache: Send;
    fn vocab_size(&self) -> usize;
    fn new_cache(&self, capacity: usize) -> Self::Cache;
    fn cache_len(cache: &Self::Cache) -> usize;
    fn truncate_cache(cache: &mut Self::Cache, len: usize);
    /// Runs tokens after the cached ones; returns the last token's logits. Err on cancel.
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError>;
    /// Runs one generated token; a model may batch concurrent calls from
    /// different sequences into one pass. By default, `forward` of it.
    fn decode_step(
        &self,
        token: u32,
        cache: &mut Self::Cache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        self.forward(&[token], cache, cancel)
    }
    /// Runs tokens after the cached ones like [`LanguageModel::forward`] but
    /// returns the logits after each of them (`tokens.len()` rows of
    /// `vocab_size`): what lookup decoding verifies a draft with. By
    /// default refused, which keeps lookup decoding off for the model.
    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let _ = (tokens, cache, cancel);
        Err(EngineError::Unsupported(
            "lookup decoding: this model does not give the logits of every token",
        ))
    }
    /// The final hidden states (after the final norm, before the head) of
    /// every token of each of `sequences`, each from an empty cache of its
    /// own: `sequences[i].len() x hidden_size` each. By default refused.
    fn hidden_states(
        &self,
        sequences: &[&[u32]],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let _ = (sequences, cancel);
        Err(EngineError::Unsupported(
            "embeddings: this model does not give its hidden states",
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the prompt has {prompt_tokens} tokens but the context holds {context} \
         (prompt plus at least one generated token)"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    #[error(
        "input {index} has {tokens} tokens but the context holds {context}; \
         shorten it or split it"
    )]
    InputTooLong {
        index: usize,
        tokens: usize,
        context: usize,
    },
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid sampling parameter {name} = {value}: {rule}")]
    InvalidSampling {
        name: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the model returned {got} logits for a vocabulary of {expected}")]
    LogitsSize { expected: usize, got: usize },
    #[error("chat template: {0}")]
    Template(#[from] TemplateError),
    #[error("detokenizer: {0}")]
    Tokenizer(String),
    /// The output grammar failed while decoding (a bug, not the request).
    #[error("output grammar: {0}")]
    Grammar(String),
    #[error("cancelled")]
    Cancelled,
    #[error("model: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
}
