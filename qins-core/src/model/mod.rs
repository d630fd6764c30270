//! Transformer models running on resident QINS weights.
//!
//! `phi3.rs` and `llama.rs` map each architecture's tensors onto the shared
//! decoder block of this file; `layers.rs` holds the building blocks,
//! `attention.rs` the attention, `rope.rs` the rotary embeddings and
//! `kv_cache.rs` the preallocated cache.

mod attention;
mod batch;
mod gemm;
pub mod kv_cache;
pub mod layers;
mod llama;
mod phi3;
pub mod profile;
pub mod rope;
mod view;

use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

pub use crate::container::config::{Architecture, ModelConfig};
use attention::{attention, attention_one};
pub use batch::{BatchStep, DecodeBatcher};
pub use kv_cache::{KvCache, KvPrecision};
use layers::{Linear, rms_norm, silu_times, swiglu};
use profile::Stage;
use rope::Rope;
pub use view::LayerView;

use crate::kernels::{KernelKind, dispatch, selected_kernel};
use crate::weights::{ResidentWeights, WeightsError};

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cancelled")]
    Cancelled,
    #[error("the context is full: {needed} tokens needed, the cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {0} is outside the vocabulary")]
    TokenOutOfRange(u32),
    #[error("no tokens to run")]
    NoTokens,
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("batched decode step: {0}")]
    Batch(String),
}

/// Attention projections: fused (phi3) or separate (llama).
// One per layer and never moved: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Qkv {
    Fused(Linear),
    Separate { q: Linear, k: Linear, v: Linear },
}

/// SwiGLU projections: fused `[gate | up]` (phi3) or separate (llama).
enum GateUp {
    Fused(Linear),
    Separate { gate: Linear, up: Linear },
}

struct DecoderLayer {
    input_norm: Vec<f32>,
    qkv: Qkv,
    o_proj: Linear,
    post_attention_norm: Vec<f32>,
    gate_up: GateUp,
    down: Linear,
}

pub struct Model {
    config: ModelConfig,
    embed: Linear,
    layers: Vec<DecoderLayer>,
    norm: Vec<f32>,
    lm_head: Linear,
    rope: Rope,
    kernel: KernelKind,
    batcher: DecodeBatcher<KvCache, ModelError>,
}

impl Model {
    /// Takes the tensors the architecture needs out of `weights`, checking
    /// every shape up front (errors name the tensor).
    pub fn load(config: &ModelConfig, mut weights: ResidentWeights) -> Result<Self, ModelError> {
        let h = config.hidden_size;
        let embed = Linear::from_weight(weights.take_matrix(
            "model.embed_tokens.weight",
            config.vocab_size,
            h,
        )?);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(match config.architecture {
                Architecture::Phi3 => phi3::load_layer(&mut weights, config, i)?,
                Architecture::Llama => llama::load_layer(&mut weights, config, i)?,
            });
        }
        let norm = weights.take_vector("model.norm.weight", h)?;
        let lm_head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            Linear::from_weight(weights.take_matrix("lm_head.weight", config.vocab_size, h)?)
        };
        let choice = dispatch::kernel_choice();
        tracing::info!("QINS kernel {}: {}", choice.kernel.name(), choice.reason);
        Ok(Self {
            config: config.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope: Rope::new(config),
            kernel: selected_kernel(),
            batcher: DecodeBatcher::default(),
        })
    }

    /// Runs the QINS matrices on `kernel` from now on (by default the best
    /// this machine has, see [`selected_kernel`]). A kernel that is not
    /// available here panics at the next forward pass.
    pub fn set_kernel(&mut self, kernel: KernelKind) {
        self.kernel = kernel;
    }

    pub fn kernel(&self) -> KernelKind {
        self.kernel
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A cache for `capacity` tokens, in the precision that goes with the
    /// kernel: bf16 for a QINS model on a kernel that rounds its operands
    /// (bf16 or fixed point: activations are rounded there anyway), f32
    /// otherwise.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.config;
        // A float reference model (quality baselines) keeps an exact cache.
        let quantized = matches!(self.lm_head, Linear::Qins(_));
        let precision = if quantized && self.kernel.rounds_operands() {
            KvPrecision::Bf16
        } else {
            KvPrecision::F32
        };
        KvCache::new(
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            capacity,
            precision,
        )
    }

    /// Runs `tokens` after the cached ones and returns the logits of the last.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, ModelError> {
        self.run(tokens, cache, cancel, false)
    }

    /// Like [`Model::forward`] but returns the logits of every token
    /// (`tokens.len() x vocab_size`).
    pub fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, ModelError> {
        self.run(tokens, cache, cancel, true)
    }

    /// One generated token after `cache`'s, run together with the steps
    /// other threads take at the same time (see [`batch`]): the logits are
    /// those of [`Model::forward`] up to float rounding.
    pub fn decode_step(
        &self,
        token: u32,
        cache: &mut KvCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, ModelError> {
        self.batcher.step(self, token, cache, cancel)
    }

    /// Forward passes [`Model::decode_step`] has run and the steps they
    /// served (more steps than passes: steps were batched).
    pub fn decode_pass_counts(&self) -> (u64, u64) {
        self.batcher.counts()
    }

    /// Whether one more token fits `cache` and is in the vocabulary.
    fn check_step(&self, token: u32, cache: &KvCache) -> Result<(), ModelError> {
        if token as usize >= self.config.vocab_size {
            return Err(ModelError::TokenOutOfRange(token));
        }
        if cache.len() + 1 > cache.capacity() {
            return Err(ModelError::ContextFull {
                needed: cache.len() + 1,
                capacity: cache.capacity(),
            });
        }
        Ok(())
    }

    /// One new token for each of several sequences in a single pass: the
    /// weights are read once for all of them (see [`batch`]). Returns each
    /// sequence's logits, in order. Any error fails the whole pass, so
    /// callers check each sequence's room and token first.
    pub fn forward_batch(
        &self,
        steps: &mut [(u32, &mut KvCache)],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if steps.is_empty() {
            return Err(ModelError::NoTokens);
        }
        let tokens: Vec<u32> = steps.iter().map(|(token, _)| *token).collect();
        let mut segments = steps
            .iter_mut()
            .map(|(_, cache)| self.segment(cache, 1))
            .collect::<Result<Vec<_>, _>>()?;
        let logits = self.run_segments(&tokens, &mut segments, cancel, false)?;
        let vocab = self.config.vocab_size;
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    fn run(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        cancel: &AtomicBool,
        all: bool,
    ) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::NoTokens);
        }
        let mut segments = [self.segment(cache, tokens.len())?];
        self.run_segments(tokens, &mut segments, cancel, all)
    }

    /// `n` new tokens after `cache`'s, if they fit.
    fn segment<'c>(&self, cache: &'c mut KvCache, n: usize) -> Result<Segment<'c>, ModelError> {
        let start = cache.len();
        if start + n > cache.capacity() {
            return Err(ModelError::ContextFull {
                needed: start + n,
                capacity: cache.capacity(),
            });
        }
        // transformers picks the longrope factors from max(position) + 1.
        let (cos, sin) = profile::time(Stage::Rope, || {
            self.rope.tables(start..start + n, start + n)
        });
        Ok(Segment {
            cache,
            start,
            n,
            cos,
            sin,
        })
    }

    /// Runs `tokens`, split into consecutive segments of one sequence each,
    /// and returns the logits of every token (`all`) or of each segment's last.
    ///
    /// The pass runs on a worker of the kernels' thread pool (the global
    /// one, or the pool the caller runs in): a pass makes ~7 matrix products
    /// per layer, each split over the pool's threads, and from a worker
    /// each one is a fork-join the caller takes part in, where from outside
    /// the pool (the daemon's generation threads) each would be handed to
    /// the pool and waited for.
    fn run_segments(
        &self,
        tokens: &[u32],
        segments: &mut [Segment<'_>],
        cancel: &AtomicBool,
        all: bool,
    ) -> Result<Vec<f32>, ModelError> {
        if rayon::current_thread_index().is_some() {
            return self.run_segments_here(tokens, segments, cancel, all);
        }
        rayon::scope(|_| self.run_segments_here(tokens, segments, cancel, all))
    }

    /// [`Model::run_segments`] on the calling thread.
    fn run_segments_here(
        &self,
        tokens: &[u32],
        segments: &mut [Segment<'_>],
        cancel: &AtomicBool,
        all: bool,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let mut x = profile::time(Stage::Embed, || self.embed_tokens(tokens))?;
        for (index, layer) in self.layers.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(ModelError::Cancelled);
            }
            self.decoder_layer(layer, index, &mut x, segments)?;
        }
        let h = c.hidden_size;
        let mut rows = Vec::with_capacity(if all { x.len() } else { segments.len() * h });
        let mut offset = 0;
        for segment in segments.iter_mut() {
            segment.cache.set_len(segment.start + segment.n);
            let first = if all { offset } else { offset + segment.n - 1 };
            rows.extend_from_slice(&x[first * h..(offset + segment.n) * h]);
            offset += segment.n;
        }
        let normed = profile::time(Stage::Norm, || rms_norm(&rows, &self.norm, c.rms_norm_eps));
        profile::time(Stage::LmHead, || {
            self.lm_head.forward(&normed, rows.len() / h, self.kernel)
        })
    }

    fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let h = self.config.hidden_size;
        let mut x = vec![0.0f32; tokens.len() * h];
        for (&t, row) in tokens.iter().zip(x.chunks_mut(h)) {
            if t as usize >= self.config.vocab_size {
                return Err(ModelError::TokenOutOfRange(t));
            }
            self.embed.row(t as usize, row);
        }
        Ok(x)
    }

    /// One decoder block over the rows of every segment: the matrix
    /// products take all rows at once, rope and attention go per segment.
    fn decoder_layer(
        &self,
        layer: &DecoderLayer,
        index: usize,
        x: &mut [f32],
        segments: &mut [Segment<'_>],
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let n = x.len() / c.hidden_size;
        let normed = profile::time(Stage::Norm, || {
            rms_norm(x, &layer.input_norm, c.rms_norm_eps)
        });
        let Qkv3 { mut q, mut k, v } = profile::time(Stage::Qkv, || {
            project_qkv(&layer.qkv, &normed, n, heads * d, kv_heads * d, self.kernel)
        })?;
        let mut attended = Vec::with_capacity(q.len());
        let mut row = 0;
        for segment in segments.iter_mut() {
            let (q_rows, k_rows) = (row * heads * d, row * kv_heads * d);
            let q = &mut q[q_rows..q_rows + segment.n * heads * d];
            let k = &mut k[k_rows..k_rows + segment.n * kv_heads * d];
            let v = &v[k_rows..k_rows + segment.n * kv_heads * d];
            profile::time(Stage::Rope, || {
                rope::apply(q, heads, d, &segment.cos, &segment.sin);
                rope::apply(k, kv_heads, d, &segment.cos, &segment.sin);
            });
            attended.extend(profile::time(Stage::Attention, || {
                segment.attend(index, q, k, v, heads, kv_heads, d)
            })?);
            row += segment.n;
        }
        add_assign(
            x,
            &profile::time(Stage::OProj, || {
                layer.o_proj.forward(&attended, n, self.kernel)
            })?,
        );
        let normed = profile::time(Stage::Norm, || {
            rms_norm(x, &layer.post_attention_norm, c.rms_norm_eps)
        });
        let activated = match &layer.gate_up {
            GateUp::Fused(gate_up) => {
                let fused =
                    profile::time(Stage::GateUp, || gate_up.forward(&normed, n, self.kernel))?;
                profile::time(Stage::Swiglu, || swiglu(&fused, c.intermediate_size))
            }
            GateUp::Separate { gate, up } => {
                let [g, u] = profile::time(Stage::GateUp, || {
                    Linear::forward_many(&[gate, up], &normed, n, self.kernel)
                })?
                .try_into()
                .expect("two matrices, two outputs");
                profile::time(Stage::Swiglu, || silu_times(&g, &u))
            }
        };
        add_assign(
            x,
            &profile::time(Stage::Down, || {
                layer.down.forward(&activated, n, self.kernel)
            })?,
        );
        Ok(())
    }
}

/// One sequence's share of a forward pass: `n` new tokens at positions
/// `start..start + n` of `cache`, with their rotary tables.
struct Segment<'c> {
    cache: &'c mut KvCache,
    start: usize,
    n: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Segment<'_> {
    /// Stores the segment's keys and values in layer `index` of its cache
    /// and attends its queries over everything cached up to them.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        index: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.cache.write(index, self.start, k, v);
        let len = self.start + self.n;
        let cache = &*self.cache;
        if self.n == 1 {
            return Ok(attention_one(q, heads, d, kv_heads, |head| {
                cache.head(index, head, len)
            }));
        }
        attention(q, heads, d, kv_heads, self.start, |head| {
            cache.head(index, head, len).to_f32()
        })
    }
}

/// Queries, keys and values of `n` tokens, row-major.
struct Qkv3 {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Returns q (`n x q_dim`), k and v (`n x kv_dim`).
fn project_qkv(
    qkv: &Qkv,
    x: &[f32],
    n: usize,
    q_dim: usize,
    kv_dim: usize,
    kernel: KernelKind,
) -> Result<Qkv3, ModelError> {
    Ok(match qkv {
        Qkv::Fused(w) => {
            let fused = w.forward(x, n, kernel)?;
            let width = q_dim + 2 * kv_dim;
            let mut q = Vec::with_capacity(n * q_dim);
            let mut k = Vec::with_capacity(n * kv_dim);
            let mut v = Vec::with_capacity(n * kv_dim);
            for row in fused.chunks(width) {
                q.extend_from_slice(&row[..q_dim]);
                k.extend_from_slice(&row[q_dim..q_dim + kv_dim]);
                v.extend_from_slice(&row[q_dim + kv_dim..]);
            }
            Qkv3 { q, k, v }
        }
        Qkv::Separate { q, k, v } => {
            let [q, k, v] = Linear::forward_many(&[q, k, v], x, n, kernel)?
                .try_into()
                .expect("three matrices, three outputs");
            Qkv3 { q, k, v }
        }
    })
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests;
