//! The decoder block, written once for every backend.
//!
//! A forward pass embeds the tokens, then runs each layer as
//!
//! ```text
//! normed = rms_norm(x, input_norm)
//! q, k, v = qkv(normed); rope(q, k)        (per sequence at its positions)
//! store k, v in the cache; attended = attention(q, cache)
//! x += o_proj(attended)
//! normed = rms_norm(x, post_attention_norm)
//! x += down(silu(gate(normed)) * up(normed))
//! ```
//!
//! and ends with the final norm and the head over the rows whose logits are
//! wanted. That sequence, the checks before it (tokens, vocabulary, room in
//! each cache) and the bookkeeping of the sequences sharing a pass
//! ([`Segment`]) live here; a backend supplies the operations
//! ([`BlockOps`]): the CPU [`Model`](super::Model) in this crate, the GPU
//! model in qins-gpu. What each layer's weights are (phi3's fused
//! projections, llama's separate ones) is the architecture files' business
//! (`phi3.rs`, `llama.rs`), read by both backends.

use std::fmt::Display;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::ModelError;
use super::batch::DecodeBatcher;
use super::rope::Rope;
use crate::container::config::ModelConfig;

/// How many positions a cache holds and how many of them are filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    pub len: usize,
    pub capacity: usize,
}

/// A sequence's key/value cache, whatever memory it lives in.
pub trait SequenceCache: Send {
    fn fill(&self) -> Fill;
    fn fill_mut(&mut self) -> &mut Fill;
    /// Tokens whose keys and values are cached.
    fn len(&self) -> usize {
        self.fill().len
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions the cache holds.
    fn capacity(&self) -> usize {
        self.fill().capacity
    }
    /// Counts positions `..len` as cached: the driver calls it once a pass
    /// that wrote them has succeeded.
    fn set_len(&mut self, len: usize) {
        self.fill_mut().len = len;
    }
    /// Forgets every token from `len` on (prefix reuse keeps the rest).
    fn truncate(&mut self, len: usize) {
        self.set_len(self.len().min(len));
    }
    /// A cache with no room, holding no memory (the placeholder while a
    /// sequence's cache is lent to a batched pass).
    fn empty() -> Self;
}

/// One sequence's share of a forward pass: `n` new tokens at positions
/// `start..start + n` of `cache`. Its rows follow the previous segment's.
pub struct Segment<'c, C> {
    pub cache: &'c mut C,
    pub start: usize,
    pub n: usize,
}

impl<C> Segment<'_, C> {
    pub fn positions(&self) -> Range<usize> {
        self.start..self.start + self.n
    }

    /// The segment's rotary tables (`cos`, `sin`, `n x head_dim / 2` each).
    pub fn rope_tables(&self, rope: &Rope) -> (Vec<f32>, Vec<f32>) {
        // transformers picks the longrope factors from max(position) + 1.
        rope.tables(self.positions(), self.start + self.n)
    }
}

/// The operations of the decoder block on one backend. The driver
/// ([`forward`], [`forward_batch`]) calls them in the order of the module
/// docs, on `n` rows (every segment's tokens, in order) at once, except
/// [`BlockOps::attend`], which goes one segment at a time. Layers are
/// given by index; the backend holds their weights.
pub trait BlockOps: Sync {
    type Cache: SequenceCache;
    /// The backend's error: the model's ([`ModelError`]) plus its own.
    type Error: From<ModelError> + Display + Send;
    /// One pass's activations (and whatever the backend records them in).
    type Pass;

    fn config(&self) -> &ModelConfig;

    /// Runs `pass` where the backend's operations are cheapest to start
    /// (the CPU: on a worker of its thread pool); by default, right here.
    fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        pass()
    }

    /// Embeds `tokens` (all in the vocabulary) into the pass's rows and
    /// prepares each segment's rotary tables.
    fn begin(
        &self,
        tokens: &[u32],
        segments: &[Segment<'_, Self::Cache>],
    ) -> Result<Self::Pass, Self::Error>;
    /// `normed = rms_norm(x, input_norm)`.
    fn attention_norm(&self, pass: &mut Self::Pass, layer: usize) -> Result<(), Self::Error>;
    /// `q`, `k`, `v` of every row from `normed`.
    fn project_qkv(&self, pass: &mut Self::Pass, layer: usize) -> Result<(), Self::Error>;
    /// Rotates `q` and `k` of each segment's rows at its positions.
    fn rope(
        &self,
        pass: &mut Self::Pass,
        segments: &[Segment<'_, Self::Cache>],
    ) -> Result<(), Self::Error>;
    /// Stores the keys and values of `segment`'s rows (from `row` on) in
    /// its cache and writes their attention over everything cached up to
    /// each of them into `attended`.
    fn attend(
        &self,
        pass: &mut Self::Pass,
        layer: usize,
        row: usize,
        segment: &mut Segment<'_, Self::Cache>,
    ) -> Result<(), Self::Error>;
    /// `x += o_proj(attended)`.
    fn add_attention_output(&self, pass: &mut Self::Pass, layer: usize) -> Result<(), Self::Error>;
    /// `normed = rms_norm(x, post_attention_norm)`.
    fn mlp_norm(&self, pass: &mut Self::Pass, layer: usize) -> Result<(), Self::Error>;
    /// `gate` and `up` of every row from `normed`.
    fn project_gate_up(&self, pass: &mut Self::Pass, layer: usize) -> Result<(), Self::Error>;
    /// `activated = silu(gate) * up`.
    fn silu_times_up(&self, pass: &mut Self::Pass) -> Result<(), Self::Error>;
    /// `x += down(activated)`.
    fn add_mlp_output(&self, pass: &mut Self::Pass, layer: usize) -> Result<(), Self::Error>;
    /// The layer is recorded (the GPU submits it here).
    fn end_layer(&self, _pass: &mut Self::Pass) -> Result<(), Self::Error> {
        Ok(())
    }
    /// `head(rms_norm(x, final_norm))` of `rows` (ascending), row after row.
    fn logits(&self, pass: Self::Pass, rows: &[usize]) -> Result<Vec<f32>, Self::Error>;
    /// `rms_norm(x, final_norm)` of `rows` (ascending), row after row: the
    /// hidden states the head reads (embeddings pool them). A backend that
    /// does not provide them refuses ([`ModelError::Unsupported`]).
    fn hidden(&self, pass: Self::Pass, rows: &[usize]) -> Result<Vec<f32>, Self::Error> {
        let _ = (pass, rows);
        Err(ModelError::Unsupported("final hidden states").into())
    }
}

/// A model of any backend as its callers run it: whole passes over the
/// block's sequence ([`forward`]) and decode steps batched with the other
/// sequences stepping at the same time ([`DecodeBatcher`]). A backend
/// supplies its batcher; the rest is written here once.
pub trait Decoder: BlockOps + Sized {
    fn batcher(&self) -> &DecodeBatcher<Self::Cache, Self::Error>;

    /// Runs `tokens` after the cached ones and returns the logits of the last.
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, Self::Error> {
        forward(self, tokens, cache, cancel, false)
    }

    /// Like [`Decoder::forward`] but returns the logits of every token
    /// (`tokens.len() x vocab_size`).
    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, Self::Error> {
        forward(self, tokens, cache, cancel, true)
    }

    /// One generated token after `cache`'s, run together with the steps
    /// other threads take at the same time: the logits are those of
    /// [`Decoder::forward`] up to float rounding.
    fn decode_step(
        &self,
        token: u32,
        cache: &mut Self::Cache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, Self::Error> {
        self.batcher().step(self, token, cache, cancel)
    }

    /// Forward passes [`Decoder::decode_step`] has run and the steps they
    /// served (more steps than passes: steps were batched).
    fn decode_pass_counts(&self) -> (u64, u64) {
        self.batcher().counts()
    }

    /// The final hidden states (the output of the final norm, before the
    /// head) of every token of each of `sequences`, each run after the
    /// tokens of its own cache, all in one pass:
    /// `sequences[i].len() x hidden_size` for each, in order.
    fn hidden_states(
        &self,
        sequences: &mut [(&[u32], &mut Self::Cache)],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, Self::Error> {
        hidden_states(self, sequences, cancel)
    }
}

/// Runs `tokens` after `cache`'s and returns the logits of the last, or of
/// every token (`all`: `tokens.len() x vocab_size`).
pub fn forward<B: BlockOps>(
    backend: &B,
    tokens: &[u32],
    cache: &mut B::Cache,
    cancel: &AtomicBool,
    all: bool,
) -> Result<Vec<f32>, B::Error> {
    run(
        backend,
        tokens,
        &mut [(cache, tokens.len())],
        cancel,
        Output::Logits { all },
    )
}

/// Several sequences in one pass (each after its own cache's tokens); the
/// final hidden states of every token of each, in order. Each sequence
/// attends only to its own cache, so the states are those of one pass per
/// sequence up to float rounding.
pub fn hidden_states<B: BlockOps>(
    backend: &B,
    sequences: &mut [(&[u32], &mut B::Cache)],
    cancel: &AtomicBool,
) -> Result<Vec<Vec<f32>>, B::Error> {
    let tokens: Vec<u32> = sequences
        .iter()
        .flat_map(|(tokens, _)| tokens.iter().copied())
        .collect();
    let lengths: Vec<usize> = sequences.iter().map(|(tokens, _)| tokens.len()).collect();
    let mut parts: Vec<(&mut B::Cache, usize)> = sequences
        .iter_mut()
        .map(|(tokens, cache)| (&mut **cache, tokens.len()))
        .collect();
    let hidden = run(backend, &tokens, &mut parts, cancel, Output::Hidden)?;
    let width = backend.config().hidden_size;
    let mut start = 0;
    Ok(lengths
        .iter()
        .map(|n| {
            let rows = start..start + n * width;
            start = rows.end;
            hidden[rows].to_vec()
        })
        .collect())
}

/// One new token for each of several sequences in one pass (the weights
/// are read once for all); each sequence's logits, in order. Any error
/// fails the whole pass, so callers check each step first ([`check_step`]).
pub fn forward_batch<B: BlockOps>(
    backend: &B,
    steps: &mut [(u32, &mut B::Cache)],
    cancel: &AtomicBool,
) -> Result<Vec<Vec<f32>>, B::Error> {
    let tokens: Vec<u32> = steps.iter().map(|(token, _)| *token).collect();
    let mut parts: Vec<(&mut B::Cache, usize)> = steps
        .iter_mut()
        .map(|(_, cache)| (&mut **cache, 1))
        .collect();
    let logits = run(
        backend,
        &tokens,
        &mut parts,
        cancel,
        Output::Logits { all: false },
    )?;
    let vocab = backend.config().vocab_size;
    Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
}

/// Whether one more `token` fits `cache` and is in the vocabulary.
pub fn check_step<C: SequenceCache>(
    config: &ModelConfig,
    token: u32,
    cache: &C,
) -> Result<(), ModelError> {
    check_tokens(config, &[token])?;
    check_room(cache, 1)
}

fn check_tokens(config: &ModelConfig, tokens: &[u32]) -> Result<(), ModelError> {
    match tokens.iter().find(|&&t| t as usize >= config.vocab_size) {
        Some(&t) => Err(ModelError::TokenOutOfRange(t)),
        None => Ok(()),
    }
}

fn check_room<C: SequenceCache>(cache: &C, n: usize) -> Result<(), ModelError> {
    let needed = cache.len() + n;
    if needed > cache.capacity() {
        return Err(ModelError::ContextFull {
            needed,
            capacity: cache.capacity(),
        });
    }
    Ok(())
}

/// What a pass returns.
#[derive(Clone, Copy)]
enum Output {
    /// The logits of every token (`all`) or of each segment's last.
    Logits { all: bool },
    /// The final hidden states of every token.
    Hidden,
}

/// `tokens` split into consecutive segments of one sequence each
/// (`(cache, count)`); what `output` asks for. Every check runs before any work, and the caches count
/// the new tokens only once the pass has succeeded.
fn run<B: BlockOps>(
    backend: &B,
    tokens: &[u32],
    parts: &mut [(&mut B::Cache, usize)],
    cancel: &AtomicBool,
    output: Output,
) -> Result<Vec<f32>, B::Error> {
    if tokens.is_empty() || parts.iter().any(|(_, n)| *n == 0) {
        return Err(ModelError::NoTokens.into());
    }
    debug_assert_eq!(parts.iter().map(|(_, n)| n).sum::<usize>(), tokens.len());
    check_tokens(backend.config(), tokens)?;
    let mut segments = Vec::with_capacity(parts.len());
    for (cache, n) in parts.iter_mut() {
        check_room(&**cache, *n)?;
        let start = cache.len();
        segments.push(Segment {
            cache: &mut **cache,
            start,
            n: *n,
        });
    }
    let logits =
        backend.run_pass(|| run_segments(backend, tokens, &mut segments, cancel, output))?;
    for segment in &mut segments {
        segment.cache.set_len(segment.start + segment.n);
    }
    Ok(logits)
}

fn run_segments<B: BlockOps>(
    backend: &B,
    tokens: &[u32],
    segments: &mut [Segment<'_, B::Cache>],
    cancel: &AtomicBool,
    output: Output,
) -> Result<Vec<f32>, B::Error> {
    let mut pass = backend.begin(tokens, segments)?;
    for layer in 0..backend.config().num_hidden_layers {
        if cancel.load(Ordering::Relaxed) {
            return Err(ModelError::Cancelled.into());
        }
        decoder_layer(backend, &mut pass, layer, segments)?;
    }
    match output {
        Output::Logits { all } => backend.logits(pass, &wanted_rows(segments, all)),
        Output::Hidden => backend.hidden(pass, &wanted_rows(segments, true)),
    }
}

fn decoder_layer<B: BlockOps>(
    backend: &B,
    pass: &mut B::Pass,
    layer: usize,
    segments: &mut [Segment<'_, B::Cache>],
) -> Result<(), B::Error> {
    backend.attention_norm(pass, layer)?;
    backend.project_qkv(pass, layer)?;
    backend.rope(pass, segments)?;
    let mut row = 0;
    for segment in segments.iter_mut() {
        backend.attend(pass, layer, row, segment)?;
        row += segment.n;
    }
    backend.add_attention_output(pass, layer)?;
    backend.mlp_norm(pass, layer)?;
    backend.project_gate_up(pass, layer)?;
    backend.silu_times_up(pass)?;
    backend.add_mlp_output(pass, layer)?;
    backend.end_layer(pass)
}

/// The rows whose logits a pass returns: all, or each segment's last.
fn wanted_rows<C>(segments: &[Segment<'_, C>], all: bool) -> Vec<usize> {
    let total: usize = segments.iter().map(|s| s.n).sum();
    if all {
        return (0..total).collect();
    }
    let mut end = 0;
    segments
        .iter()
        .map(|s| {
            end += s.n;
            end - 1
        })
        .collect()
}
