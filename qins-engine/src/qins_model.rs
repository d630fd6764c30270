//! The engine's view of [`qins_core::model::Model`]: the QINS transformer as a
//! [`LanguageModel`].

use std::sync::atomic::AtomicBool;

use super::{EngineError, LanguageModel};
use qins_core::model::{Decoder, KvCache, Model, ModelError, SequenceCache};

impl LanguageModel for Model {
    type Cache = KvCache;

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        Model::new_cache(self, capacity)
    }

    fn cache_len(cache: &KvCache) -> usize {
        cache.len()
    }

    fn truncate_cache(cache: &mut KvCache, len: usize) {
        cache.truncate(len);
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        Decoder::forward(self, tokens, cache, cancel).map_err(engine_error)
    }

    fn decode_step(
        &self,
        token: u32,
        cache: &mut KvCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        Decoder::decode_step(self, token, cache, cancel).map_err(engine_error)
    }

    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let logits = Decoder::forward_all(self, tokens, cache, cancel).map_err(engine_error)?;
        Ok(split_rows(logits, self.config().vocab_size))
    }

    fn hidden_states(
        &self,
        sequences: &[&[u32]],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut caches: Vec<KvCache> = sequences
            .iter()
            .map(|tokens| Model::new_cache(self, tokens.len()))
            .collect();
        let mut batch: Vec<(&[u32], &mut KvCache)> =
            sequences.iter().copied().zip(caches.iter_mut()).collect();
        Decoder::hidden_states(self, &mut batch, cancel).map_err(engine_error)
    }
}

fn engine_error(error: ModelError) -> EngineError {
    match error {
        ModelError::Cancelled => EngineError::Cancelled,
        other => EngineError::Model(Box::new(other)),
    }
}

/// `forward_all`'s flat `n x vocab` logits as one row per token.
pub(crate) fn split_rows(logits: Vec<f32>, vocab: usize) -> Vec<Vec<f32>> {
    logits.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect()
}
